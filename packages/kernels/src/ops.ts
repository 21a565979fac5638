/**
 * The named ops. Each checks its arguments, then runs the fused kernel registered under its name for the
 * active backend (see `fusedKernelActive`), or its reference made of plain tfjs ops. Gradients of the
 * fused kernels are registered in gradients.ts, so training differentiates either path.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { FUSED_ACTIVATIONS } from './activations.js';
import { fusedKernelActive } from './mode.js';
import { attentionReference, cacheWriteReference, crossEntropyReference, linearReference, rmsNormReference } from './reference.js';
import { attentionBackwardReference, linearBackwardReference, type AttentionGradient, type AttentionGradients, type LinearGradient } from './backward.js';
import { attentionToKernel, KERNEL, type KernelAttrs, linearToKernel, type AttentionOptions, type LinearOptions, type PackedKeysValues } from './types.js';

/** A named op was called with tensors that do not fit together (a bug in the caller, named precisely). */
export class KernelArgumentError extends Error {
  readonly code = 'LAYOUT_ERROR';
  constructor(op: string, message: string) {
    super(`${op}: ${message}`);
    this.name = 'KernelArgumentError';
  }
}

function check(ok: boolean, op: string, message: () => string): void {
  if (!ok) throw new KernelArgumentError(op, message());
}

function perRowOk(t: Tensor | undefined, rows: number, width: number): boolean {
  return t === undefined || (t.rank === 2 && (t.shape[0] === rows || t.shape[0] === 1) && t.shape[1] === width);
}

/**
 * Runs a fused kernel. Inputs travel as an array of the present tensors with their names in the attribute
 * `inputNames`: optional inputs are simply absent, and the registered gradient (saveAllInputs) gets exactly
 * the tensors the call had.
 */
function runFused(kernelName: string, named: Record<string, Tensor | undefined>, attrs: KernelAttrs): Tensor {
  const present = Object.entries(named).filter((e): e is [string, Tensor] => e[1] !== undefined);
  const tensors = present.map(([, t]) => t) as unknown as tf.NamedTensorMap; // an array is a map keyed '0', '1', …
  return tf.engine().runKernel(kernelName, tensors, { ...attrs, inputNames: present.map(([k]) => k) }) as Tensor;
}

/** A fused kernel with several outputs (returned in order). */
function runFusedMulti(kernelName: string, named: Record<string, Tensor | undefined>, attrs: KernelAttrs): Tensor[] {
  const out = runFused(kernelName, named, attrs) as unknown as Tensor | Tensor[];
  return Array.isArray(out) ? out : [out];
}

/** T5LayerNorm: x · rsqrt(mean(x²) + eps) · weight over the last axis. */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  check(weight.rank === 1 && weight.shape[0] === x.shape[x.rank - 1], 'rmsNorm', () => `weight [${weight.shape}] does not fit x [${x.shape}]`);
  if (fusedKernelActive(KERNEL.rmsNorm)) return runFused(KERNEL.rmsNorm, { x, weight }, { eps });
  return rmsNormReference(x, weight, eps);
}

/**
 * A projection with everything that surrounds it in a transformer block, in one op:
 * optional RMS norm of the input, the frozen kernel, the active adapters' terms (LoRA deltas, IA3 vectors,
 * per-row for BatchSplit/Parallel), bias, activation or gating, and the residual. x [..., in] → [..., out].
 */
export function linear(x: Tensor, kernel: Tensor, options: LinearOptions = {}): Tensor {
  const o = options;
  const op = 'linear';
  const inF = x.shape[x.rank - 1] as number;
  check(x.rank >= 2, op, () => `x must have rank ≥ 2, got [${x.shape}]`);
  check(kernel.rank === 2 && kernel.shape[0] === inF, op, () => `kernel [${kernel.shape}] does not take inputs of ${inF} features (x [${x.shape}])`);
  const pre = kernel.shape[1] as number;
  check(!o.gated || pre % 2 === 0, op, () => `a gated kernel needs an even number of columns, got ${pre}`);
  const outF = o.gated ? pre / 2 : pre;
  const rows = x.shape[0] as number;
  check(o.activation === undefined || (FUSED_ACTIVATIONS as readonly string[]).includes(o.activation), op, () => `unknown activation '${o.activation}'`);
  if (o.norm) check(o.norm.weight.rank === 1 && o.norm.weight.shape[0] === inF, op, () => `norm weight [${o.norm!.weight.shape}] does not fit ${inF} features`);
  if (o.bias) check(o.bias.rank === 1 && o.bias.shape[0] === pre, op, () => `bias [${o.bias!.shape}] does not fit ${pre} columns`);
  if (o.residual)
    check(
      o.residual.shape.join() === [...x.shape.slice(0, -1), outF].join(),
      op,
      () => `residual [${o.residual!.shape}] is not the result's shape [${[...x.shape.slice(0, -1), outF]}]`,
    );
  const a = o.adapters ?? {};
  check(!a.loraA === !a.loraB, op, () => 'loraA and loraB go together');
  if (a.loraA && a.loraB) {
    const r = a.loraA.shape[1] as number;
    check(a.loraA.rank === 2 && a.loraA.shape[0] === inF, op, () => `loraA [${a.loraA!.shape}] does not take ${inF} features`);
    check(
      a.loraB.rank === 2 && a.loraB.shape[0] === r && a.loraB.shape[1] === pre,
      op,
      () => `loraB [${a.loraB!.shape}] does not fit loraA [${a.loraA!.shape}] and ${pre} columns`,
    );
    check(perRowOk(a.loraScale, rows, r), op, () => `loraScale [${a.loraScale!.shape}] must be [${rows} | 1, ${r}]`);
  } else check(!a.loraScale, op, () => 'loraScale without loraA/loraB');
  check(perRowOk(a.inScale, rows, inF), op, () => `inScale [${a.inScale!.shape}] must be [${rows} | 1, ${inF}]`);
  check(perRowOk(a.outScale, rows, pre), op, () => `outScale [${a.outScale!.shape}] must be [${rows} | 1, ${pre}]`);

  if (!fusedKernelActive(KERNEL.linear)) return linearReference(x, kernel, o);
  const k = linearToKernel(x, kernel, o);
  return runFused(KERNEL.linear, k.inputs, k.attrs);
}

/**
 * Multi-head attention with a learned relative position bias: softmax(q·kᵀ + bias + mask) · v (unscaled),
 * over optional prefix keys/values and packed keys/values; causal when asked. q [B, Lq, ≥ qOffset + H·d],
 * keys/values packed [B, Lk, C] → [B, Lq, H·d] (heads merged, ready for the output projection).
 */
export function attention(q: Tensor, kv: PackedKeysValues, options: AttentionOptions): Tensor {
  const o = options;
  const op = 'attention';
  const { numHeads: h, headDim: d } = o;
  const width = h * d;
  const qOffset = o.qOffset ?? 0;
  check(q.rank === 3 && (q.shape[2] as number) >= qOffset + width, op, () => `queries must be [batch, Lq, ≥ ${qOffset + width}], got [${q.shape}]`);
  const [b, lq] = q.shape as number[];
  const s = kv.source;
  check(s.rank === 3 && s.shape[0] === b, op, () => `keys/values must be packed rows [${b}, Lk, C] (the queries' batch), got [${s.shape}]`);
  check(
    kv.kOffset >= 0 && kv.kOffset + width <= (s.shape[2] as number) && kv.vOffset >= 0 && kv.vOffset + width <= (s.shape[2] as number),
    op,
    () => `key/value columns [${kv.kOffset}, ${kv.vOffset}] + ${width} exceed the ${s.shape[2]} columns of the keys/values`,
  );
  const lk = s.shape[1] as number;
  let p = 0;
  if (o.prefix) {
    const { keys, values } = o.prefix;
    check(keys.rank === 4 && values.rank === 4, op, () => `prefix keys/values must be [batch, heads, P, d_kv], got [${keys.shape}] and [${values.shape}]`);
    check(keys.shape.join() === values.shape.join(), op, () => `prefix keys [${keys.shape}] and values [${values.shape}] differ`);
    check((keys.shape[0] === b || keys.shape[0] === 1) && keys.shape[1] === h && keys.shape[3] === d, op, () => `prefix [${keys.shape}] does not fit [${b} | 1, ${h}, P, ${d}]`);
    p = keys.shape[2] as number;
  }
  if (o.bias) {
    check(o.bias.table.rank === 2 && o.bias.table.shape[1] === h, op, () => `bias table [${o.bias!.table.shape}] must be [buckets, ${h}]`);
    check(
      o.bias.index.dtype === 'int32' && o.bias.index.shape.join() === [lq, p + lk].join(),
      op,
      () => `bias index [${o.bias!.index.shape}] (${o.bias!.index.dtype}) must be int32 [${lq}, ${p + lk}]`,
    );
  }
  if (o.mask)
    check(o.mask.rank === 2 && (o.mask.shape[0] === b || o.mask.shape[0] === 1) && o.mask.shape[1] === p + lk, op, () => `mask [${o.mask!.shape}] must be [${b} | 1, ${p + lk}]`);
  if (o.causalOffset !== undefined) check(Number.isInteger(o.causalOffset), op, () => `causalOffset must be an integer, got ${o.causalOffset}`);

  const dropping = o.dropout !== undefined && o.dropout.rate > 0;
  if (dropping || !fusedKernelActive(KERNEL.attention)) return attentionReference(q, kv, o);
  const k = attentionToKernel(q, kv, o);
  return runFused(KERNEL.attention, k.inputs, k.attrs);
}

/** A cache [B, capacity, C] with row `position` replaced by source[:, 0, sourceOffset : sourceOffset + C]. */
export function cacheWrite(cache: Tensor, source: Tensor, sourceOffset: number, position: number): Tensor {
  const op = 'cacheWrite';
  check(
    cache.rank === 3 && source.rank === 3 && source.shape[0] === cache.shape[0] && source.shape[1] === 1,
    op,
    () => `cache [${cache.shape}] and one step's source [${source.shape}] do not fit ([batch, capacity, C] and [batch, 1, ≥ C])`,
  );
  check(
    sourceOffset >= 0 && sourceOffset + (cache.shape[2] as number) <= (source.shape[2] as number),
    op,
    () => `source columns ${sourceOffset} + ${cache.shape[2]} exceed ${source.shape[2]}`,
  );
  check(Number.isInteger(position) && position >= 0 && position < (cache.shape[1] as number), op, () => `position ${position} is outside the cache's ${cache.shape[1]} slots`);
  if (fusedKernelActive(KERNEL.cacheWrite)) return runFused(KERNEL.cacheWrite, { cache, source }, { sourceOffset, position });
  return cacheWriteReference(cache, source, sourceOffset, position);
}

/** Per-token cross-entropy [N] of logits [N, V] against int32 labels [N]; label -100 is ignored (loss 0). */
export function crossEntropy(logits: Tensor, labels: Tensor, labelSmoothing = 0): Tensor {
  const op = 'crossEntropy';
  check(logits.rank === 2 && labels.rank === 1 && labels.shape[0] === logits.shape[0], op, () => `logits [${logits.shape}] and labels [${labels.shape}] must be [N, V] and [N]`);
  check(labels.dtype === 'int32', op, () => `labels must be int32, got ${labels.dtype}`);
  check(labelSmoothing >= 0 && labelSmoothing < 1, op, () => `labelSmoothing must be in [0, 1), got ${labelSmoothing}`);
  if (fusedKernelActive(KERNEL.crossEntropy)) return runFused(KERNEL.crossEntropy, { logits, labels }, { labelSmoothing });
  return crossEntropyReference(logits, labels, labelSmoothing);
}

/**
 * Gradients of `linear` w.r.t. the inputs in `wants` given dy — one kernel where a fused backward exists
 * (the registered gradient of `linear` uses it; frozen weights are never asked for).
 */
export function linearBackward(dy: Tensor, x: Tensor, kernel: Tensor, o: LinearOptions, wants: readonly LinearGradient[]): Partial<Record<LinearGradient, Tensor>> {
  if (!fusedKernelActive(KERNEL.linearBackward)) return linearBackwardReference(dy, x, kernel, o, wants);
  const k = linearToKernel(x, kernel, { ...o, residual: undefined }); // the residual's gradient is dy itself
  const outs = runFusedMulti(KERNEL.linearBackward, { dy, ...k.inputs }, { ...k.attrs, wants: [...wants] });
  return Object.fromEntries(wants.map((w, i) => [w, outs[i]]));
}

/** Gradients of `attention` w.r.t. the inputs in `wants` given dy (one kernel where a fused backward exists). */
export function attentionBackward(dy: Tensor, q: Tensor, kv: PackedKeysValues, o: AttentionOptions, wants: readonly AttentionGradient[]): AttentionGradients {
  if (!fusedKernelActive(KERNEL.attentionBackward)) return attentionBackwardReference(dy, q, kv, o, wants);
  const k = attentionToKernel(q, kv, o);
  const outs = runFusedMulti(KERNEL.attentionBackward, { dy, ...k.inputs }, { ...k.attrs, wants: [...wants] });
  return Object.fromEntries(wants.map((w, i) => [w, outs[i]]));
}

export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** This parameter's 1-based update count (bias corrections). */
  step: number;
}

/**
 * One AdamW update as torch.optim.AdamW: p ← p·(1 − lr·wd); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
 * p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε). Returns [p, m, v] (new tensors).
 */
export function adamW(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: AdamWStep): [Tensor, Tensor, Tensor] {
  const op = 'adamW';
  check(
    p.shape.join() === g.shape.join() && p.shape.join() === m.shape.join() && p.shape.join() === v.shape.join(),
    op,
    () => `parameter [${p.shape}], gradient [${g.shape}] and moments [${m.shape}], [${v.shape}] differ`,
  );
  const bc1 = 1 - s.beta1 ** s.step;
  const bc2 = 1 - s.beta2 ** s.step;
  if (fusedKernelActive(KERNEL.adamW)) {
    const [p1, m1, v1] = runFusedMulti(KERNEL.adamW, { p, g, m, v }, { lr: s.lr, beta1: s.beta1, beta2: s.beta2, eps: s.eps, weightDecay: s.weightDecay, step: s.step, bc1, bc2 });
    return [p1, m1, v1];
  }
  return tf.tidy(() => {
    const m1 = m.mul(s.beta1).add(g.mul(1 - s.beta1));
    const v1 = v.mul(s.beta2).add(g.square().mul(1 - s.beta2));
    const decayed = s.weightDecay ? p.mul(1 - s.lr * s.weightDecay) : p;
    const denom = v1.sqrt().div(Math.sqrt(bc2)).add(s.eps);
    return [decayed.sub(m1.div(denom).mul(s.lr / bc1)), m1, v1] as [Tensor, Tensor, Tensor];
  });
}
