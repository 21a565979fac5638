/**
 * Registers the WGSL kernels of the named ops for the 'webgpu' backend. Shapes a program does not cover
 * (LoRA rank > 64, head size > 256, more key columns than workgroup memory holds, more than 7 inputs —
 * WebGPU's default limit is 8 storage buffers per shader, the output included) run the op's reference
 * inside the kernel instead.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { attentionReference, linearReference } from '../reference.js';
import { attentionFromKernel, attentionGeometry, KERNEL, linearFromKernel, linearGeometry, namedInputs } from '../types.js';
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

/** Inside a kernel the inputs are tensor infos; the reference ops take them as the tensors they are. */
const asTensors = (n: Record<string, tf.TensorInfo>) => n as unknown as Record<string, Tensor>;

/** An op the programs do not cover, computed by its reference (the kernel's result must be a new tensor). */
function reference(make: () => Tensor): tf.TensorInfo {
  return tf.tidy(make) as unknown as tf.TensorInfo;
}

export function registerWebGpuKernels(): void {
  registerOp(KERNEL.linear, (n, attrs, backend) => {
    const g = linearGeometry(n, attrs.gated);
    if (g.rank > 64 || Object.keys(n).length > MAX_INPUTS) {
      const t = asTensors(n);
      return reference(() => linearReference(t.x, t.kernel, linearFromKernel(t, attrs)));
    }
    const program = linearProgram(g.rows, g.inF, g.pre, g.rank, {
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
    const uniforms = [...ints(g.rows, g.inF, g.pre, g.outF, g.rank, g.rowsPerBatch, g.loraScaleRows, g.inScaleRows, g.outScaleRows), ...floats(attrs.eps, attrs.normScale)];
    const byName = { W: 'kernel', normW: 'normWeight', loraS: 'loraScale', inS: 'inScale', outS: 'outScale' };
    return run(backend, program, n, byName, uniforms, [...n.x.shape.slice(0, -1), g.outF]);
  });

  registerOp(KERNEL.attention, (n, attrs, backend) => {
    const g = attentionGeometry(n);
    const heads = attrs.numHeads;
    const d = attrs.headDim;
    if (g.p + g.lk > ATTENTION_MAX_KEYS || d > 256) {
      const t = asTensors(n);
      const { kv, options } = attentionFromKernel(t, attrs);
      return reference(() => attentionReference(t.q, kv, options));
    }
    const program = attentionProgram(g.b, g.lq, heads, d, { prefix: g.p > 0, bias: !!n.biasTable, mask: !!n.mask, causal: attrs.causal });
    const uniforms = ints(g.lq, g.lk, g.p, heads, d, g.qCols, attrs.qOffset, g.kvCols, attrs.kOffset, attrs.vOffset, g.prefixRows, g.maskRows, attrs.causalOffset);
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
