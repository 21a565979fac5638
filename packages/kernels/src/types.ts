import type { Tensor } from '@adapterkit/backend';
import type { FusedActivation } from './activations.js';

/** Large finite negative for masked attention scores (WGSL may assume no infinities). */
export const MASK_VALUE = -1e9;

/** Kernel names, as tfjs registers kernels: one name per named op, a kernel per backend. */
export const KERNEL = {
  rmsNorm: 'AdapterkitRmsNorm',
  linear: 'AdapterkitLinear',
  attention: 'AdapterkitAttention',
  cacheWrite: 'AdapterkitCacheWrite',
  crossEntropy: 'AdapterkitCrossEntropy',
  /** Backward passes: several gradients from one kernel (outputs in the order of the `wants` attribute). */
  linearBackward: 'AdapterkitLinearBackward',
  attentionBackward: 'AdapterkitAttentionBackward',
  /** One AdamW step of a parameter: [parameter, first moment, second moment]. */
  adamW: 'AdapterkitAdamW',
} as const;
export type KernelName = (typeof KERNEL)[keyof typeof KERNEL];

/**
 * Adapter terms of one linear, as inputs of the fused kernel (all active adapters of a composition at
 * once, row ranges included — the S-LoRA/Punica shape: one down-projection for every adapter, one
 * up-projection whose per-row scales select the adapter of each row).
 *
 * With x̂ the (normalised) input: y = ((x̂ ⊙ inScale)·W) ⊙ outScale + ((x̂·loraA) ⊙ loraScale)·loraB.
 * Per-row tensors have one row per batch row (x's first axis) or a single row for all.
 */
export interface LinearAdapterInputs {
  /** LoRA down-projections of every term side by side: [in, R]. */
  loraA?: Tensor;
  /** LoRA up-projections, each in the output columns it updates (zeros elsewhere): [R, out]. */
  loraB?: Tensor;
  /** Scale of each rank column per row (the term's scaling where it covers the row, else 0): [rows | 1, R]. */
  loraScale?: Tensor;
  /** IA3 input-side vector (scales the base projection's input only): [rows | 1, in]. */
  inScale?: Tensor;
  /** IA3 output-side vector (scales the base projection's output only): [rows | 1, out]. */
  outScale?: Tensor;
}

export interface LinearOptions {
  /** RMS norm (T5LayerNorm: no mean, no bias) of the input first; `scale` multiplies the normalised input. */
  norm?: { weight: Tensor; eps: number; scale?: number };
  bias?: Tensor;
  /** Applied to the projection (after the adapter terms and bias). */
  activation?: FusedActivation;
  /** Gated feed-forward: the kernel is [in, 2·out]; the result is act(first half) ⊙ second half. */
  gated?: boolean;
  /** Added last ([..., out], the shape of the result). */
  residual?: Tensor;
  adapters?: LinearAdapterInputs;
}

/**
 * Keys and values of an attention in packed rows: [batch, time, columns], where keys occupy columns
 * [kOffset, kOffset + heads·d) and values [vOffset, vOffset + heads·d), head-major (as a projection
 * writes them). A self-attention cache, cross-attention keys/values and a fresh projection are all this.
 */
export interface PackedKeysValues {
  source: Tensor;
  kOffset: number;
  vOffset: number;
}

export interface AttentionOptions {
  numHeads: number;
  headDim: number;
  /** Column of q where the queries start (q may be a packed q|k|v projection). Default 0. */
  qOffset?: number;
  /** Prefix keys/values in the prefix layout [batch | 1, heads, P, d], attended before the real keys. */
  prefix?: { keys: Tensor; values: Tensor };
  /**
   * Relative position bias: `table` [buckets, heads] and `index` int32 [Lq, P + Lk], the bucket of each
   * (query, key column); -1 means no bias (prefix columns under adapterkit's rule).
   */
  bias?: { table: Tensor; index: Tensor };
  /** Additive mask per row and key column, [batch | 1, P + Lk] (0 or MASK_VALUE). */
  mask?: Tensor;
  /**
   * Causal attention: real key j (counted after the prefix) is visible to query i iff j ≤ i + causalOffset.
   * A cached decoding step at position t is a single query with causalOffset t over the whole cache.
   */
  causalOffset?: number;
  /** Dropout on the attention weights (training only; runs the reference path). */
  dropout?: { rate: number; seed: number };
}

/**
 * A fused kernel's inputs by name: ops pass the present tensors as an array and their names in the
 * attribute `inputNames` (see ops.ts `runFused`).
 */
export function namedInputs<T>(inputs: ArrayLike<T> | Record<string, T>, attrs: Record<string, unknown>): Record<string, T> {
  const names = attrs.inputNames as string[];
  const out: Record<string, T> = {};
  names.forEach((name, i) => (out[name] = (inputs as Record<string, T>)[i]));
  return out;
}

/** Scalar attributes of a fused kernel (tfjs's NamedAttrMap values the ops use). */
export type KernelAttrs = Record<string, number | boolean | string | string[]>;

/**
 * `linear`'s operands and options as its fused kernels take them: named tensors (absent ones undefined)
 * and scalar attributes. The one place this mapping is written; `linearFromKernel` is its inverse.
 */
export function linearToKernel(x: Tensor, kernel: Tensor, o: LinearOptions): { inputs: Record<string, Tensor | undefined>; attrs: KernelAttrs } {
  const a = o.adapters ?? {};
  return {
    inputs: {
      x,
      kernel,
      normWeight: o.norm?.weight,
      bias: o.bias,
      residual: o.residual,
      loraA: a.loraA,
      loraB: a.loraB,
      loraScale: a.loraScale,
      inScale: a.inScale,
      outScale: a.outScale,
    },
    attrs: { eps: o.norm?.eps ?? 0, normScale: o.norm?.scale ?? 1, activation: o.activation ?? 'linear', gated: o.gated ?? false },
  };
}

/** The options of a `linear` from its kernel's named inputs and attributes (gradients, reference fallbacks). */
export function linearFromKernel(n: Record<string, Tensor>, attrs: Record<string, unknown>): LinearOptions {
  return {
    norm: n.normWeight ? { weight: n.normWeight, eps: attrs.eps as number, scale: attrs.normScale as number } : undefined,
    bias: n.bias,
    residual: n.residual,
    activation: attrs.activation as FusedActivation,
    gated: attrs.gated as boolean,
    adapters: { loraA: n.loraA, loraB: n.loraB, loraScale: n.loraScale, inScale: n.inScale, outScale: n.outScale },
  };
}

/** `attention`'s operands and options as its fused kernels take them (inverse: `attentionFromKernel`). */
export function attentionToKernel(q: Tensor, kv: PackedKeysValues, o: AttentionOptions): { inputs: Record<string, Tensor | undefined>; attrs: KernelAttrs } {
  return {
    inputs: { q, kv: kv.source, prefixKeys: o.prefix?.keys, prefixValues: o.prefix?.values, biasTable: o.bias?.table, biasIndex: o.bias?.index, mask: o.mask },
    attrs: {
      numHeads: o.numHeads,
      headDim: o.headDim,
      qOffset: o.qOffset ?? 0,
      kOffset: kv.kOffset,
      vOffset: kv.vOffset,
      causal: o.causalOffset !== undefined,
      causalOffset: o.causalOffset ?? 0,
    },
  };
}

/** The keys/values and options of an `attention` from its kernel's named inputs and attributes. */
export function attentionFromKernel(n: Record<string, Tensor>, attrs: Record<string, unknown>): { kv: PackedKeysValues; options: AttentionOptions } {
  return {
    kv: { source: n.kv, kOffset: attrs.kOffset as number, vOffset: attrs.vOffset as number },
    options: {
      numHeads: attrs.numHeads as number,
      headDim: attrs.headDim as number,
      qOffset: attrs.qOffset as number,
      prefix: n.prefixKeys ? { keys: n.prefixKeys, values: n.prefixValues } : undefined,
      bias: n.biasTable ? { table: n.biasTable, index: n.biasIndex } : undefined,
      mask: n.mask,
      causalOffset: attrs.causal ? (attrs.causalOffset as number) : undefined,
    },
  };
}

/** Shapes every backend's `linear` kernel derives from its named inputs (any tensor-like with a shape). */
export function linearGeometry(n: Record<string, { shape: number[] } | undefined>, gated: boolean) {
  const x = n.x!;
  const pre = n.kernel!.shape[1] as number;
  const rows = x.shape.slice(0, -1).reduce((p, q) => p * q, 1);
  return {
    rows,
    rowsPerBatch: rows / (x.shape[0] as number),
    inF: x.shape[x.shape.length - 1] as number,
    pre,
    outF: gated ? pre / 2 : pre,
    rank: n.loraA ? (n.loraA.shape[1] as number) : 0,
    /** rows of each per-row tensor (1: shared by every row) */
    loraScaleRows: n.loraScale?.shape[0] ?? 1,
    inScaleRows: n.inScale?.shape[0] ?? 1,
    outScaleRows: n.outScale?.shape[0] ?? 1,
  };
}

/** Shapes every backend's `attention` kernel derives from its named inputs. */
export function attentionGeometry(n: Record<string, { shape: number[] } | undefined>) {
  const [b, lq, qCols] = n.q!.shape as [number, number, number];
  const [, lk, kvCols] = n.kv!.shape as [number, number, number];
  return {
    b,
    lq,
    qCols,
    lk,
    kvCols,
    /** prefix length */
    p: n.prefixKeys ? (n.prefixKeys.shape[2] as number) : 0,
    prefixRows: n.prefixKeys?.shape[0] ?? 1,
    maskRows: n.mask?.shape[0] ?? 1,
  };
}
