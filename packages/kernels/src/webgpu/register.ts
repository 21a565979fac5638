/**
 * Registers the WGSL kernels of the named ops for the 'webgpu' backend. Shapes a program does not cover
 * (LoRA rank > 64, head size > 256, more key columns than workgroup memory holds, more than 7 inputs —
 * WebGPU's default limit is 8 storage buffers per shader, the output included) run the op's reference
 * inside the kernel instead.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { attentionReference, linearReference } from '../reference.js';
import { KERNEL, namedInputs, type LinearOptions } from '../types.js';
import type { FusedActivation } from '../activations.js';
import { ATTENTION_MAX_KEYS, attentionProgram, cacheWriteProgram, crossEntropyProgram, linearProgram, rmsNormProgram, type Program } from './programs.js';

type Uniform = { type: 'int32' | 'float32'; data: number[] };

/** Program uniforms, one entry per scalar (tfjs lays each entry out as a scalar or vector of its length). */
const ints = (...values: number[]): Uniform[] => values.map((v) => ({ type: 'int32', data: [v] }));
const floats = (...values: number[]): Uniform[] => values.map((v) => ({ type: 'float32', data: [v] }));

/** The slice of tfjs-backend-webgpu's WebGPUBackend the kernels use. */
interface WebGpuBackend {
  runWebGPUProgram(program: Program, inputs: tf.TensorInfo[], dtype: string, uniforms?: Uniform[]): tf.TensorInfo;
}

type Attrs = Record<string, number & boolean & string>;

/** Storage buffers a shader may bind by default (maxStorageBuffersPerShaderStage), one of them the output. */
const MAX_INPUTS = 7;

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

function registerOp(name: string, run: (n: Record<string, tf.TensorInfo>, attrs: Attrs, backend: WebGpuBackend) => tf.TensorInfo): void {
  if (tf.getKernel(name, 'webgpu')) return;
  tf.registerKernel({
    kernelName: name,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const a = (attrs ?? {}) as Attrs;
      return run(namedInputs(inputs as unknown as tf.TensorInfo[], a), a, backend as unknown as WebGpuBackend);
    },
  });
}

/** Runs a program; its inputs are the named tensors in the program's variable order. */
function run(backend: WebGpuBackend, program: Program, n: Record<string, tf.TensorInfo>, byName: Record<string, string>, uniforms: Uniform[], shape?: number[]): tf.TensorInfo {
  const inputs = program.variableNames.map((v) => n[byName[v] ?? v]);
  const out = backend.runWebGPUProgram(program, inputs, 'float32', uniforms);
  if (shape) out.shape = shape; // same data, the op's own rank
  return out;
}

/** An op the programs do not cover, computed by its reference (the kernel's result must be a new tensor). */
function reference(make: () => Tensor): tf.TensorInfo {
  return tf.tidy(make) as unknown as tf.TensorInfo;
}

export function registerWebGpuKernels(): void {
  registerOp(KERNEL.linear, (n, attrs, backend) => {
    const x = n.x;
    const inF = x.shape[x.shape.length - 1];
    const pre = n.kernel.shape[1];
    const rank = n.loraA ? n.loraA.shape[1] : 0;
    const outF = attrs.gated ? pre / 2 : pre;
    const rows = size(x.shape.slice(0, -1));
    if (rank > 64 || Object.keys(n).length > MAX_INPUTS) {
      const t = n as unknown as Record<string, Tensor>;
      const o: LinearOptions = {
        norm: t.normWeight ? { weight: t.normWeight, eps: attrs.eps, scale: attrs.normScale } : undefined,
        bias: t.bias,
        residual: t.residual,
        activation: attrs.activation as FusedActivation,
        gated: attrs.gated,
        adapters: { loraA: t.loraA, loraB: t.loraB, loraScale: t.loraScale, inScale: t.inScale, outScale: t.outScale },
      };
      return reference(() => linearReference(t.x, t.kernel, o));
    }
    const program = linearProgram(rows, inF, pre, rank, {
      norm: !!n.normWeight,
      bias: !!n.bias,
      residual: !!n.residual,
      lora: !!n.loraA,
      loraScale: !!n.loraScale,
      inScale: !!n.inScale,
      outScale: !!n.outScale,
      activation: attrs.activation,
      gated: attrs.gated,
    });
    const uniforms = [
      ...ints(rows, inF, pre, outF, rank, rows / x.shape[0], n.loraScale?.shape[0] ?? 1, n.inScale?.shape[0] ?? 1, n.outScale?.shape[0] ?? 1),
      ...floats(attrs.eps, attrs.normScale),
    ];
    return run(backend, program, n, { W: 'kernel', normW: 'normWeight', loraS: 'loraScale', inS: 'inScale', outS: 'outScale' }, uniforms, [...x.shape.slice(0, -1), outF]);
  });

  registerOp(KERNEL.attention, (n, attrs, backend) => {
    const [b, lq, qCols] = n.q.shape;
    const [, lk, kvCols] = n.kv.shape;
    const heads = attrs.numHeads;
    const d = attrs.headDim;
    const p = n.prefixKeys ? n.prefixKeys.shape[2] : 0;
    if (p + lk > ATTENTION_MAX_KEYS || d > 256) {
      const t = n as unknown as Record<string, Tensor>;
      return reference(() =>
        attentionReference(t.q, { source: t.kv, kOffset: attrs.kOffset, vOffset: attrs.vOffset }, {
          numHeads: heads,
          headDim: d,
          qOffset: attrs.qOffset,
          prefix: t.prefixKeys ? { keys: t.prefixKeys, values: t.prefixValues } : undefined,
          bias: t.biasTable ? { table: t.biasTable, index: t.biasIndex } : undefined,
          mask: t.mask,
          causalOffset: attrs.causal ? attrs.causalOffset : undefined,
        }),
      );
    }
    const program = attentionProgram(b, lq, heads, d, { prefix: p > 0, bias: !!n.biasTable, mask: !!n.mask, causal: attrs.causal });
    const uniforms = ints(lq, lk, p, heads, d, qCols, attrs.qOffset, kvCols, attrs.kOffset, attrs.vOffset, n.prefixKeys?.shape[0] ?? 1, n.mask?.shape[0] ?? 1, attrs.causalOffset);
    return run(backend, program, n, { pk: 'prefixKeys', pv: 'prefixValues', table: 'biasTable', bucket: 'biasIndex' }, uniforms);
  });

  registerOp(KERNEL.cacheWrite, (n, attrs, backend) => {
    const [, capacity, c] = n.cache.shape;
    const uniforms = ints(size(n.cache.shape), capacity, c, n.source.shape[2], attrs.sourceOffset, attrs.position);
    return run(backend, cacheWriteProgram(n.cache.shape), n, {}, uniforms);
  });

  registerOp(KERNEL.rmsNorm, (n, attrs, backend) => {
    const d = n.x.shape[n.x.shape.length - 1];
    const uniforms = [...ints(d), ...floats(attrs.eps)];
    return run(backend, rmsNormProgram(n.x.shape, size(n.x.shape) / d), n, { w: 'weight' }, uniforms);
  });

  registerOp(KERNEL.crossEntropy, (n, attrs, backend) => {
    const [rows, v] = n.logits.shape;
    const uniforms = [...ints(v), ...floats(attrs.labelSmoothing)];
    return run(backend, crossEntropyProgram(rows), n, {}, uniforms);
  });
}
