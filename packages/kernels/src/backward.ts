/**
 * Reference backward passes of the fused ops, in plain tfjs ops: what backends without a fused backward
 * kernel run, and what every fused backward must equal. Each returns the gradients asked for by name.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import type { FusedActivation } from './activations.js';
import { activate, attentionWeights, headsOf, keysValues, matMulLast, normalisedInput, perRow, preActivation } from './reference.js';
import type { AttentionOptions, LinearOptions, PackedKeysValues } from './types.js';

/** Memoises a thunk within one gradient evaluation. */
export function once(make: () => Tensor): () => Tensor {
  let value: Tensor | undefined;
  return () => {
    if (!value || value.isDisposed) value = make();
    return value;
  };
}

/** dy · wᵀ over the last axis: [..., out] × [in, out] → [..., in]. */
export function matMulLastT(dy: Tensor, w: Tensor): Tensor {
  const shape = dy.shape;
  const g = tf.matMul(dy.reshape([-1, shape[shape.length - 1]]), w, false, true);
  return g.reshape([...shape.slice(0, -1), w.shape[0] as number]);
}

/** aᵀ · b over all leading axes: [..., m] × [..., n] → [m, n]. */
export function outer(a: Tensor, b: Tensor): Tensor {
  return tf.matMul(a.reshape([-1, a.shape[a.rank - 1]]), b.reshape([-1, b.shape[b.rank - 1]]), true, false);
}

/** Sums a [rows, ..., n] gradient to the shape [rows | 1, n] of a per-row input. */
export function toPerRow(g: Tensor, like: Tensor): Tensor {
  let r = g.rank > 2 ? g.sum(Array.from({ length: g.rank - 2 }, (_, i) => i + 1)) : g;
  if (like.shape[0] === 1 && r.shape[0] !== 1) r = r.sum(0, true);
  return r;
}

/** Derivative of an activation at its input. */
export function activationDerivative(name: FusedActivation, x: Tensor): Tensor {
  switch (name) {
    case 'linear':
      return tf.onesLike(x);
    case 'relu':
      return tf.step(x);
    case 'gelu': {
      const pdf = x
        .square()
        .mul(-0.5)
        .exp()
        .mul(1 / Math.sqrt(2 * Math.PI));
      return tf.erf(x.mul(Math.SQRT1_2)).add(1).mul(0.5).add(x.mul(pdf));
    }
    case 'gelu_new': {
      const c = Math.sqrt(2 / Math.PI);
      const t = tf.tanh(x.add(x.square().mul(x).mul(0.044715)).mul(c));
      const du = x
        .square()
        .mul(3 * 0.044715)
        .add(1)
        .mul(c);
      return t
        .add(1)
        .mul(0.5)
        .add(x.mul(0.5).mul(tf.sub(1, t.square())).mul(du));
    }
    case 'silu': {
      const s = tf.sigmoid(x);
      return s.mul(x.mul(tf.sub(1, s)).add(1));
    }
  }
}

/**
 * Backward of x̂ = x · r · w · s with r = rsqrt(mean(x²) + eps): given g = dL/dx̂,
 * dx = s·(r·(w ⊙ g) − x·r³/d·Σ(x ⊙ w ⊙ g)).
 */
export function rmsNormInputGrad(x: Tensor, w: Tensor, eps: number, scale: number, g: Tensor): Tensor {
  const d = x.shape[x.rank - 1] as number;
  const r = x.square().mean(-1, true).add(eps).rsqrt();
  const wg = g.mul(w);
  const dot = x.mul(wg).sum(-1, true);
  const dx = wg.mul(r).sub(x.mul(r.pow(3)).mul(dot).div(d));
  return scale === 1 ? dx : dx.mul(scale);
}

export function rmsNormWeightGrad(x: Tensor, eps: number, scale: number, g: Tensor): Tensor {
  const r = x.square().mean(-1, true).add(eps).rsqrt();
  const contrib = g.mul(x.mul(r));
  const summed = contrib.reshape([-1, x.shape[x.rank - 1] as number]).sum(0);
  return scale === 1 ? summed : summed.mul(scale);
}

/** Places [B, L, w] into columns [offset, offset + w) of a [B, L, width] zero tensor. */
export function intoColumns(g: Tensor, offset: number, width: number): Tensor {
  const w = g.shape[2] as number;
  if (offset === 0 && w === width) return g;
  return tf.pad(g, [
    [0, 0],
    [0, 0],
    [offset, width - offset - w],
  ]);
}

/** The inputs of `linear` whose gradients the backward kernels compute (frozen weights are never asked). */
export const LINEAR_GRADIENTS = ['x', 'loraA', 'loraB', 'inScale', 'outScale', 'bias'] as const;
export type LinearGradient = (typeof LINEAR_GRADIENTS)[number];

/** Gradients of linear(x, kernel, o) given dy (the residual's gradient is dy itself). */
export function linearBackwardReference(dy: Tensor, x: Tensor, kernel: Tensor, o: LinearOptions, wants: readonly LinearGradient[]): Partial<Record<LinearGradient, Tensor>> {
  const a = o.adapters ?? {};
  const xn = once(() => normalisedInput(x, o));
  const dpre = once(() => preActivationGrad(dy, xn(), kernel, o));
  const dBase = once(() => (a.outScale ? dpre().mul(perRow(a.outScale, x.rank)) : dpre()));
  const loraDown = once(() => matMulLast(xn(), a.loraA!));
  const dDown = once(() => matMulLastT(dpre(), a.loraB!)); // dL/d((x̂·A) ⊙ S)
  const dDownScaled = once(() => (a.loraScale ? dDown().mul(perRow(a.loraScale, x.rank)) : dDown()));
  const dxn = once(() => {
    let gx = matMulLastT(dBase(), kernel);
    if (a.inScale) gx = gx.mul(perRow(a.inScale, x.rank));
    if (a.loraA) gx = gx.add(matMulLastT(dDownScaled(), a.loraA));
    return gx;
  });
  const make: Record<LinearGradient, () => Tensor> = {
    x: () => (o.norm ? rmsNormInputGrad(x, o.norm.weight, o.norm.eps, o.norm.scale ?? 1, dxn()) : dxn()),
    loraA: () => outer(xn(), dDownScaled()),
    loraB: () => outer(a.loraScale ? loraDown().mul(perRow(a.loraScale, x.rank)) : loraDown(), dpre()),
    inScale: () => toPerRow(xn().mul(matMulLastT(dBase(), kernel)), a.inScale!),
    outScale: () => toPerRow(dpre().mul(matMulLast(a.inScale ? xn().mul(perRow(a.inScale, x.rank)) : xn(), kernel)), a.outScale!),
    bias: () =>
      dpre()
        .reshape([-1, dpre().shape[dpre().rank - 1] as number])
        .sum(0),
  };
  const out: Partial<Record<LinearGradient, Tensor>> = {};
  for (const w of wants) out[w] = make[w]();
  return out;
}

/** dL/d(pre-activation) of a linear, given dy and its normalised input. */
export function preActivationGrad(dy: Tensor, xn: Tensor, kernel: Tensor, o: LinearOptions): Tensor {
  const act = o.activation ?? 'linear';
  if (act === 'linear' && !o.gated) return dy;
  const pre = preActivation(xn, kernel, o);
  if (!o.gated) return dy.mul(activationDerivative(act, pre));
  const half = (pre.shape[pre.rank - 1] as number) / 2;
  const [gate, up] = tf.split(pre, [half, half], -1);
  const gateOut = activate(gate, { activation: act });
  return tf.concat([dy.mul(up).mul(activationDerivative(act, gate)), dy.mul(gateOut)], -1);
}

export const ATTENTION_GRADIENTS = ['q', 'kv', 'prefixKeys', 'prefixValues'] as const;
export type AttentionGradient = (typeof ATTENTION_GRADIENTS)[number];
export type AttentionGradients = Partial<Record<AttentionGradient, Tensor>>;

/** Gradients of attention(q, kv, o) given dy: the queries' and the packed keys/values' (zero outside their columns), the prefix's. */
export function attentionBackwardReference(dy: Tensor, q: Tensor, kv: PackedKeysValues, o: AttentionOptions, wants: readonly AttentionGradient[]): AttentionGradients {
  const h = o.numHeads;
  const d = o.headDim;
  const [b, lq] = q.shape as number[];
  const qh = once(() => headsOf(q, o.qOffset ?? 0, h, d));
  const parts = keysValues(kv, o, b);
  const { p, lk } = parts;
  const weights = once(() => attentionWeights(qh(), parts.kh, o, p, lk));
  const dOut = once(() => dy.reshape([b, lq, h, d]).transpose([0, 2, 1, 3]));
  const dV = once(() => tf.matMul(weights(), dOut(), true, false)); // [b, h, P + Lk, d]
  const dScores = once(() => {
    const dW = tf.matMul(dOut(), parts.vh, false, true);
    return weights().mul(dW.sub(dW.mul(weights()).sum(-1, true)));
  });
  const dK = once(() => tf.matMul(dScores(), qh(), true, false)); // [b, h, P + Lk, d]
  const merge = (t: Tensor) => t.transpose([0, 2, 1, 3]).reshape([b, t.shape[2] as number, h * d]);
  const realPart = (t: Tensor) => t.slice([0, 0, p, 0], [b, h, lk, d]);
  const prefixPart = (t: Tensor, like: Tensor) => {
    const g = t.slice([0, 0, 0, 0], [b, h, p, d]);
    return like.shape[0] === 1 && b !== 1 ? g.sum(0, true) : g;
  };
  const width = kv.source.shape[2] as number;
  const make: Record<AttentionGradient, () => Tensor> = {
    q: () => intoColumns(merge(tf.matMul(dScores(), parts.kh)), o.qOffset ?? 0, q.shape[2] as number),
    kv: () => intoColumns(merge(realPart(dK())), kv.kOffset, width).add(intoColumns(merge(realPart(dV())), kv.vOffset, width)),
    prefixKeys: () => prefixPart(dK(), o.prefix!.keys),
    prefixValues: () => prefixPart(dV(), o.prefix!.values),
  };
  const out: Partial<Record<AttentionGradient, Tensor>> = {};
  for (const w of wants) out[w] = make[w]();
  return out;
}

/** dL/d(scores) of an attention, for the gradients of its bias table and mask (frozen in adapter training). */
export function attentionScoresGrad(dy: Tensor, q: Tensor, kv: PackedKeysValues, o: AttentionOptions): Tensor {
  const h = o.numHeads;
  const d = o.headDim;
  const [b, lq] = q.shape as number[];
  const qh = headsOf(q, o.qOffset ?? 0, h, d);
  const parts = keysValues(kv, o, b);
  const weights = attentionWeights(qh, parts.kh, o, parts.p, parts.lk);
  const dW = tf.matMul(dy.reshape([b, lq, h, d]).transpose([0, 2, 1, 3]), parts.vh, false, true);
  return weights.mul(dW.sub(dW.mul(weights).sum(-1, true)));
}
