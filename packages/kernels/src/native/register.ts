/**
 * Native CPU kernels for the wasm backend in Node: the named ops and tfjs's BatchMatMul run as native code
 * (a GEMM with weights packed once, OpenMP threads) directly on the tensors in the wasm heap. Loaded when
 * the addon was built (scripts/build-native.mjs); otherwise the wasm backend keeps its own
 * single-threaded XNNPACK kernels.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tf } from '@adapterkit/backend';
import { kernelMode } from '../mode.js';
import { attentionGeometry, KERNEL, linearGeometry, namedInputs } from '../types.js';
import { setNativeKernelsInfo, setNativeThreadSetter } from './info.js';

type F32 = Float32Array;

interface Addon {
  batchMatMul(a: Float32Array, b: Float32Array, out: Float32Array, batch: number, m: number, n: number, k: number, ta: boolean, tb: boolean, sa: number, sb: number): void;
  /** A frozen weight [K, N] in the GEMM's panels, freed with the returned object. */
  packWeights(w: Float32Array, k: number, n: number, transposed: boolean): object;
  linearBackward(...args: unknown[]): void;
  attentionBackward(...args: unknown[]): void;
  /** One AdamW step of n values: parameter, gradient, moments in; new parameter and moments out. */
  adamW(p: F32, g: F32, m: F32, v: F32, op: F32, om: F32, ov: F32, n: number, lr: number, b1: number, b2: number, eps: number, wd: number, bc1: number, bc2: number): void;
  rmsNorm(x: Float32Array, w: Float32Array, out: Float32Array, rows: number, d: number, eps: number): void;
  linear(...args: unknown[]): void;
  attention(...args: unknown[]): void;
  cacheWrite(cache: F32, source: F32, out: F32, b: number, capacity: number, c: number, sourceCols: number, sourceOffset: number, position: number): void;
  gather(params: Float32Array, indices: Int32Array, out: Float32Array, count: number, rowSize: number, numRows: number): number;
  crossEntropy(logits: Float32Array, labels: Int32Array, out: Float32Array, n: number, v: number, smoothing: number): void;
  info(): { threads: number; processors: number; simd: string };
  setThreads(n: number): void;
}

/** The slice of tfjs-backend-wasm's BackendWasm the kernels use. */
interface WasmBackend {
  makeOutput(shape: number[], dtype: string): tf.TensorInfo;
  /** Tensors holding this data (tfjs-core's KernelBackend.refCount). */
  refCount(dataId: object): number;
  incRef(dataId: object): void;
  disposeData(dataId: object): void;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

const ACTIVATION_CODES: Record<string, number> = { linear: 0, relu: 1, gelu: 2, gelu_new: 3, silu: 4 };

function load(): Addon | undefined {
  const path = new URL('../../build/adapterkit_kernels.node', import.meta.url);
  if (!existsSync(path)) {
    setNativeKernelsInfo({ available: false, reason: 'not built (see @adapterkit/kernels scripts/build-native.mjs)' });
    return undefined;
  }
  try {
    const addon = createRequire(import.meta.url)(path.pathname) as Addon;
    const i = addon.info();
    setNativeKernelsInfo({ available: true, threads: i.threads, simd: i.simd });
    setNativeThreadSetter((n) => addon.setThreads(n));
    return addon;
  } catch (e) {
    setNativeKernelsInfo({ available: false, reason: `failed to load: ${(e as Error).message.split('\n')[0]}` });
    return undefined;
  }
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

function register(name: string, kernelFunc: tf.KernelFunc): void {
  const previous = tf.getKernel(name, 'wasm');
  if (previous) tf.unregisterKernel(name, 'wasm');
  // keep the replaced kernel's setup (the wasm backend runs it at initialisation; the fallback needs it)
  tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc, setupFunc: previous?.setupFunc });
}

type Attrs = Record<string, number & boolean & string>;

/** Registers a named op's kernel given its inputs by name, its attributes and the wasm backend (one output or several). */
function registerFused(name: string, run: (n: Record<string, tf.TensorInfo>, attrs: Attrs, backend: WasmBackend) => tf.TensorInfo | tf.TensorInfo[]): void {
  register(name, ({ inputs, attrs, backend }) => {
    const a = (attrs ?? {}) as Attrs;
    // tfjs's kernel signature is untyped at this boundary: the ops pass an array of tensor infos, the backend is wasm's
    return run(namedInputs(inputs as unknown as tf.TensorInfo[], a), a, backend as unknown as WasmBackend);
  });
}

export function registerNativeKernels(): void {
  const addon = load();
  if (!addon) return;
  const heap = (backend: WasmBackend, t: tf.TensorInfo | undefined) => (t ? (backend.typedArrayFromHeap(t) as Float32Array) : null);

  // tfjs's own BatchMatMul (every tf.matMul: gradients, adapters' small products) runs as one BLAS call
  // per batch, or one for all when the right-hand side is shared; odd broadcasts keep XNNPACK's kernel.
  const original = tf.getKernel('BatchMatMul', 'wasm');
  register('BatchMatMul', (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const ra = a.shape.length;
    const rb = b.shape.length;
    const batchA = size(a.shape.slice(0, -2));
    const batchB = size(b.shape.slice(0, -2));
    const supported = a.dtype === 'float32' && b.dtype === 'float32' && (batchA === batchB || batchA === 1 || batchB === 1) && (ra === rb || batchA === 1 || batchB === 1);
    if (!supported || kernelMode() === 'reference') return original!.kernelFunc(args);
    const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
    const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
    const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
    const outer = (batchA >= batchB ? a : b).shape.slice(0, -2);
    const batch = Math.max(batchA, batchB);
    const backend = args.backend as unknown as WasmBackend;
    const out = backend.makeOutput([...outer, m, n], 'float32');
    addon.batchMatMul(heap(backend, a)!, heap(backend, b)!, heap(backend, out)!, batch, m, n, k, transposeA, transposeB, batchA === 1 ? 0 : m * k, batchB === 1 ? 0 : k * n);
    return out;
  });

  // Embedding lookups (gather of whole rows along axis 0): row copies. tfjs-wasm's generic gather takes
  // 2.6 ms for 128 rows of a 32128 × 512 table; anything else keeps its kernel.
  const gather = tf.getKernel('GatherV2', 'wasm');
  register('GatherV2', (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    if (x.dtype !== 'float32' || indices.dtype !== 'int32' || (axis !== 0 && axis !== -x.shape.length) || batchDims !== 0 || kernelMode() === 'reference')
      return gather!.kernelFunc(args);
    const backend = args.backend as unknown as WasmBackend;
    const rowSize = size(x.shape.slice(1));
    const count = size(indices.shape);
    const out = backend.makeOutput([...indices.shape, ...x.shape.slice(1)], 'float32');
    const bad = addon.gather(heap(backend, x)!, backend.typedArrayFromHeap(indices) as Int32Array, heap(backend, out)!, count, rowSize, x.shape[0]);
    if (bad >= 0) {
      backend.disposeData(out.dataId);
      const index = (backend.typedArrayFromHeap(indices) as Int32Array)[bad];
      throw new Error(`GatherV2: the index value ${index} is not in [0, ${x.shape[0] - 1}]`);
    }
    return out;
  });

  registerFused(KERNEL.rmsNorm, (n, attrs, w) => {
    const d = n.x.shape[n.x.shape.length - 1];
    const out = w.makeOutput(n.x.shape, 'float32');
    addon.rmsNorm(heap(w, n.x)!, heap(w, n.weight)!, heap(w, out)!, size(n.x.shape) / d, d, attrs.eps);
    return out;
  });

  // Frozen kernels are packed once per tensor data (tfjs never mutates a tensor's data: a new value is a
  // new dataId), and the pack is freed when that data is garbage. Wᵀ (backward passes) at the first training step.
  const packer = (transposed: boolean) => {
    const packs = new WeakMap<object, object>();
    return (w: WasmBackend, t: tf.TensorInfo) => {
      let p = packs.get(t.dataId);
      if (!p) {
        const [rows, cols] = transposed ? [t.shape[1], t.shape[0]] : [t.shape[0], t.shape[1]];
        p = addon.packWeights(heap(w, t)!, rows, cols, transposed);
        packs.set(t.dataId, p);
      }
      return p;
    };
  };
  const packed = packer(false);
  const packedT = packer(true);
  // The operands and trailing scalars the forward and backward native kernels share, in their order.
  const adapterOperands = (w: WasmBackend, n: Record<string, tf.TensorInfo>) => [n.loraA, n.loraB, n.loraScale, n.inScale, n.outScale].map((t) => heap(w, t));
  const linearScalars = (n: Record<string, tf.TensorInfo>, attrs: Attrs) => {
    const g = linearGeometry(n, attrs.gated);
    return [
      g.rows,
      g.rowsPerBatch,
      g.inF,
      g.pre,
      g.rank,
      attrs.eps,
      attrs.normScale,
      ACTIVATION_CODES[attrs.activation],
      attrs.gated,
      g.loraScaleRows,
      g.inScaleRows,
      g.outScaleRows,
    ] as const;
  };
  const attentionOperands = (w: WasmBackend, n: Record<string, tf.TensorInfo>) =>
    [heap(w, n.prefixKeys), heap(w, n.prefixValues), heap(w, n.biasTable), n.biasIndex ? w.typedArrayFromHeap(n.biasIndex) : null, heap(w, n.mask)] as const;
  const attentionScalars = (n: Record<string, tf.TensorInfo>, attrs: Attrs) => {
    const g = attentionGeometry(n);
    const { numHeads, headDim, qOffset, kOffset, vOffset, causal, causalOffset } = attrs;
    return [g.b, g.lq, g.lk, g.p, numHeads, headDim, g.qCols, qOffset, g.kvCols, kOffset, vOffset, g.prefixRows, g.maskRows, causal, causalOffset] as const;
  };
  /** A backward kernel's outputs: one per name in `wants`, shaped like the input it is the gradient of. */
  const gradientOutputs = (w: WasmBackend, wants: string[], like: Record<string, tf.TensorInfo>) => {
    const outs = wants.map((k) => w.makeOutput(like[k].shape, 'float32'));
    const out = (k: string) => {
      const i = wants.indexOf(k);
      return i < 0 ? null : heap(w, outs[i]);
    };
    return { outs, out };
  };

  registerFused(KERNEL.linear, (n, attrs, w) => {
    const g = linearGeometry(n, attrs.gated);
    const out = w.makeOutput([...n.x.shape.slice(0, -1), g.outF], 'float32');
    addon.linear(
      heap(w, n.x),
      packed(w, n.kernel),
      heap(w, out),
      heap(w, n.normWeight),
      heap(w, n.bias),
      heap(w, n.residual),
      ...adapterOperands(w, n),
      ...linearScalars(n, attrs),
    );
    return out;
  });

  registerFused(KERNEL.linearBackward, (n, attrs, w) => {
    const wants = attrs.wants as unknown as string[]; // a string[] attribute (Attrs types the scalar ones)
    const { outs, out } = gradientOutputs(w, wants, { x: n.x, loraA: n.loraA, loraB: n.loraB, inScale: n.inScale, outScale: n.outScale, bias: n.bias });
    const grads = ['x', 'loraA', 'loraB', 'inScale', 'outScale', 'bias'].map(out);
    const operands = [heap(w, n.dy), heap(w, n.x), packed(w, n.kernel), packedT(w, n.kernel), heap(w, n.normWeight), heap(w, n.bias)] as const;
    addon.linearBackward(...operands, ...adapterOperands(w, n), ...grads, ...linearScalars(n, attrs));
    return outs;
  });

  registerFused(KERNEL.attentionBackward, (n, attrs, w) => {
    const wants = attrs.wants as unknown as string[];
    const { outs, out } = gradientOutputs(w, wants, { q: n.q, kv: n.kv, prefixKeys: n.prefixKeys, prefixValues: n.prefixValues });
    const grads = ['q', 'kv', 'prefixKeys', 'prefixValues'].map(out);
    addon.attentionBackward(heap(w, n.dy), heap(w, n.q), heap(w, n.kv), ...attentionOperands(w, n), ...grads, ...attentionScalars(n, attrs));
    return outs;
  });

  registerFused(KERNEL.adamW, (n, attrs, w) => {
    const outs = [w.makeOutput(n.p.shape, 'float32'), w.makeOutput(n.p.shape, 'float32'), w.makeOutput(n.p.shape, 'float32')];
    addon.adamW(
      heap(w, n.p)!,
      heap(w, n.g)!,
      heap(w, n.m)!,
      heap(w, n.v)!,
      heap(w, outs[0])!,
      heap(w, outs[1])!,
      heap(w, outs[2])!,
      size(n.p.shape),
      attrs.lr,
      attrs.beta1,
      attrs.beta2,
      attrs.eps,
      attrs.weightDecay,
      attrs.bc1,
      attrs.bc2,
    );
    return outs;
  });

  registerFused(KERNEL.attention, (n, attrs, w) => {
    const g = attentionGeometry(n);
    const out = w.makeOutput([g.b, g.lq, attrs.numHeads * attrs.headDim], 'float32');
    addon.attention(heap(w, n.q), heap(w, n.kv), heap(w, out), ...attentionOperands(w, n), ...attentionScalars(n, attrs));
    return out;
  });

  registerFused(KERNEL.cacheWrite, (n, attrs, w) => {
    const [b, capacity, c] = n.cache.shape;
    // A cache no other tensor shares (a decoder state's, replaced by the result every step) takes the slot in
    // place and is handed back as the result: copying it would cost O(cache) per token, O(T²) per generation.
    const inPlace = w.refCount(n.cache.dataId) === 1;
    const out = inPlace ? n.cache : w.makeOutput(n.cache.shape, 'float32');
    addon.cacheWrite(heap(w, n.cache)!, heap(w, n.source)!, heap(w, out)!, b, capacity, c, n.source.shape[2], attrs.sourceOffset, attrs.position);
    if (!inPlace) return out;
    w.incRef(n.cache.dataId);
    return { dataId: n.cache.dataId, shape: n.cache.shape, dtype: 'float32' };
  });

  registerFused(KERNEL.crossEntropy, (n, attrs, w) => {
    const [rows, v] = n.logits.shape;
    const out = w.makeOutput([rows], 'float32');
    addon.crossEntropy(heap(w, n.logits)!, w.typedArrayFromHeap(n.labels) as Int32Array, heap(w, out)!, rows, v, attrs.labelSmoothing);
    return out;
  });
}
