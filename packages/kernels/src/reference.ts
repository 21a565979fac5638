/**
 * Reference implementations of the named ops in plain tfjs ops: what every backend can run and
 * differentiate, and what every fused kernel must equal (within 1e-5). They define the ops' semantics.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { ACTIVATIONS } from './activations.js';
import { MASK_VALUE, type AttentionOptions, type LinearOptions, type PackedKeysValues } from './types.js';

/** x [..., in] · w [in, out] (+ bias [out]) → [..., out] (one 2-D matMul: tfjs's batched path is slower for this). */
export function matMulLast(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
  const shape = x.shape;
  let y = tf.matMul(x.reshape([-1, shape[shape.length - 1]]), w);
  if (bias) y = y.add(bias);
  return y.reshape([...shape.slice(0, -1), w.shape[1] as number]);
}

/** A per-row tensor [rows | 1, n] viewed to broadcast against [rows, ..., n] of rank `rank`. */
export function perRow(t: Tensor, rank: number): Tensor {
  if (rank === 2) return t;
  return t.reshape([t.shape[0] as number, ...new Array(rank - 2).fill(1), t.shape[1] as number]);
}

export function rmsNormReference(x: Tensor, weight: Tensor, eps: number): Tensor {
  return tf.tidy(() => {
    const variance = x.square().mean(-1, true);
    return x.mul(variance.add(eps).rsqrt()).mul(weight);
  });
}

/** The linear's input after the optional norm (x̂). */
export function normalisedInput(x: Tensor, o: Pick<LinearOptions, 'norm'>): Tensor {
  if (!o.norm) return x;
  const xn = rmsNormReference(x, o.norm.weight, o.norm.eps);
  return o.norm.scale !== undefined && o.norm.scale !== 1 ? xn.mul(o.norm.scale) : xn;
}

/** The projection before activation and residual: ((x̂ ⊙ inScale)·W) ⊙ outScale + ((x̂·A) ⊙ S)·B + bias. */
export function preActivation(xn: Tensor, kernel: Tensor, o: LinearOptions): Tensor {
  const a = o.adapters ?? {};
  const rank = xn.rank;
  let y = matMulLast(a.inScale ? xn.mul(perRow(a.inScale, rank)) : xn, kernel);
  if (a.outScale) y = y.mul(perRow(a.outScale, rank));
  if (a.loraA && a.loraB) {
    let down = matMulLast(xn, a.loraA);
    if (a.loraScale) down = down.mul(perRow(a.loraScale, rank));
    y = y.add(matMulLast(down, a.loraB));
  }
  if (o.bias) y = y.add(o.bias);
  return y;
}

/** The activation (and gating) applied to a pre-activation. */
export function activate(pre: Tensor, o: Pick<LinearOptions, 'activation' | 'gated'>): Tensor {
  const act = ACTIVATIONS[o.activation ?? 'linear'];
  if (!o.gated) return act(pre);
  const half = (pre.shape[pre.rank - 1] as number) / 2;
  const [gate, up] = tf.split(pre, [half, half], -1);
  return act(gate).mul(up);
}

export function linearReference(x: Tensor, kernel: Tensor, o: LinearOptions): Tensor {
  return tf.tidy(() => {
    let y = activate(preActivation(normalisedInput(x, o), kernel, o), o);
    if (o.residual) y = y.add(o.residual);
    return y;
  });
}

/** Columns [offset, offset + heads·d) of packed rows [B, T, C] as [B, heads, T, d]. */
export function headsOf(packed: Tensor, offset: number, heads: number, d: number): Tensor {
  const [b, t, c] = packed.shape as number[];
  const cols = offset === 0 && c === heads * d ? packed : packed.slice([0, 0, offset], [b, t, heads * d]);
  return cols.reshape([b, t, heads, d]).transpose([0, 2, 1, 3]);
}

/** The additive causal mask [Lq, P + Lk] (null when no column is hidden). */
export function causalMask(lq: number, p: number, lk: number, offset: number): Tensor | null {
  const n = p + lk;
  const m = new Float32Array(lq * n);
  let any = false;
  for (let i = 0; i < lq; i++) {
    for (let j = i + offset + 1; j < lk; j++) {
      m[i * n + p + j] = MASK_VALUE;
      any = true;
    }
  }
  return any ? tf.tensor2d(m, [lq, n]) : null;
}

/** Bias [1, heads, Lq, P + Lk] gathered from the table (index -1 → 0). */
export function gatherBias(table: Tensor, index: Tensor): Tensor {
  return tf.tidy(() => {
    const [lq, n] = index.shape as number[];
    const heads = table.shape[1] as number;
    const flat = index.reshape([-1]);
    const valid = flat.greaterEqual(0);
    const gathered = tf.gather(table, tf.maximum(flat, tf.scalar(0, 'int32')));
    const bias = gathered.mul(valid.cast('float32').expandDims(1));
    return bias.reshape([lq, n, heads]).transpose([2, 0, 1]).expandDims(0);
  });
}

/** softmax(q·kᵀ + bias + mask) (unscaled: a model that wants 1/√d folds it into its query projection), [B, heads, Lq, P + Lk]. */
export function attentionWeights(qh: Tensor, kh: Tensor, o: AttentionOptions, p: number, lk: number): Tensor {
  const lq = qh.shape[2] as number;
  let scores = tf.matMul(qh, kh, false, true);
  if (o.bias) scores = scores.add(gatherBias(o.bias.table, o.bias.index));
  if (o.mask) scores = scores.add(o.mask.reshape([o.mask.shape[0] as number, 1, 1, p + lk]));
  if (o.causalOffset !== undefined) {
    const causal = causalMask(lq, p, lk, o.causalOffset);
    if (causal) scores = scores.add(causal);
  }
  return tf.softmax(scores);
}

/** Keys and values [B, heads, P + Lk, d] with the prefix in front (rows broadcast from 1 when needed). */
export function keysValues(kv: PackedKeysValues, o: AttentionOptions, rows: number): { kh: Tensor; vh: Tensor; p: number; lk: number } {
  const { numHeads: h, headDim: d } = o;
  let kh = headsOf(kv.source, kv.kOffset, h, d);
  let vh = headsOf(kv.source, kv.vOffset, h, d);
  const lk = kh.shape[2] as number;
  let p = 0;
  if (o.prefix) {
    p = o.prefix.keys.shape[2] as number;
    const widen = (t: Tensor) => (t.shape[0] === rows ? t : tf.tile(t, [rows, 1, 1, 1]));
    kh = tf.concat([widen(o.prefix.keys), kh], 2);
    vh = tf.concat([widen(o.prefix.values), vh], 2);
  }
  return { kh, vh, p, lk };
}

export function attentionReference(q: Tensor, kv: PackedKeysValues, o: AttentionOptions): Tensor {
  return tf.tidy(() => {
    const [b, lq] = q.shape as number[];
    const qh = headsOf(q, o.qOffset ?? 0, o.numHeads, o.headDim);
    const { kh, vh, p, lk } = keysValues(kv, o, b);
    let weights = attentionWeights(qh, kh, o, p, lk);
    if (o.dropout && o.dropout.rate > 0) weights = tf.dropout(weights, o.dropout.rate, undefined, o.dropout.seed);
    return tf
      .matMul(weights, vh)
      .transpose([0, 2, 1, 3])
      .reshape([b, lq, o.numHeads * o.headDim]);
  });
}

/** The one-hot [1, capacity, 1] of a cache slot. */
export function slotOneHot(capacity: number, position: number): Tensor {
  const w = new Float32Array(capacity);
  w[position] = 1;
  return tf.tensor3d(w, [1, capacity, 1]);
}

/** cache [B, capacity, C] with row `position` replaced by source[:, 0, offset : offset + C]. */
export function cacheWriteReference(cache: Tensor, source: Tensor, sourceOffset: number, position: number): Tensor {
  return tf.tidy(() => {
    const [b, capacity, c] = cache.shape as number[];
    const cols = source.shape[2] === c && sourceOffset === 0 ? source : source.slice([0, 0, sourceOffset], [b, 1, c]);
    const write = slotOneHot(capacity, position);
    // one-hot multiply-add: native broadcasting (tf.where would tile its inputs, slow on wasm)
    return cache.mul(tf.sub(1, write)).add(cols.mul(write));
  });
}

/** Per-token cross-entropy [N] of logits [N, V] against int32 labels [N] (-100: ignored, loss 0). */
export function crossEntropyReference(logits: Tensor, labels: Tensor, labelSmoothing: number): Tensor {
  return tf.tidy(() => {
    const [n, v] = logits.shape as number[];
    const logp = tf.logSoftmax(logits);
    const valid = labels.notEqual(-100);
    const safe = tf.where(valid, labels, tf.zerosLike(labels));
    const index = tf.range(0, n, 1, 'int32').mul(tf.scalar(v, 'int32')).add(safe.cast('int32'));
    let perToken = tf.gather(logp.reshape([-1]), index).neg();
    if (labelSmoothing > 0) perToken = perToken.mul(1 - labelSmoothing).add(logp.mean(1).neg().mul(labelSmoothing));
    return perToken.mul(valid.cast('float32'));
  });
}
