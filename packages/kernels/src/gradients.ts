/**
 * Gradients of the fused kernels, registered by kernel name as tfjs registers its own. Each input's
 * gradient is a thunk: tfjs evaluates only those on the path to a trainable variable, so the frozen base
 * weights (kernel, norm weight, bias table) cost nothing in training.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { activate, attentionWeights, headsOf, keysValues, matMulLast, normalisedInput, perRow, preActivation } from './reference.js';
import { KERNEL, namedInputs, type AttentionOptions, type LinearOptions } from './types.js';
import type { FusedActivation } from './activations.js';

type Thunks = Record<string, () => Tensor>;

/** Maps named gradient thunks back to the positional keys of the kernel's inputs. */
function positional(attrs: Record<string, unknown>, byName: Thunks): Thunks {
  const out: Thunks = {};
  (attrs.inputNames as string[]).forEach((name, i) => {
    const grad = byName[name];
    if (!grad) throw new Error(`no gradient for input '${name}'`);
    out[i] = grad;
  });
  return out;
}

/** Memoises a thunk within one gradient evaluation. */
function once(make: () => Tensor): () => Tensor {
  let value: Tensor | undefined;
  return () => (value && !value.isDisposed ? value : (value = make()));
}

/** dy · wᵀ over the last axis: [..., out] × [in, out] → [..., in]. */
function matMulLastT(dy: Tensor, w: Tensor): Tensor {
  const shape = dy.shape;
  const g = tf.matMul(dy.reshape([-1, shape[shape.length - 1]]), w, false, true);
  return g.reshape([...shape.slice(0, -1), w.shape[0] as number]);
}

/** aᵀ · b over all leading axes: [..., m] × [..., n] → [m, n]. */
function outer(a: Tensor, b: Tensor): Tensor {
  return tf.matMul(a.reshape([-1, a.shape[a.rank - 1]]), b.reshape([-1, b.shape[b.rank - 1]]), true, false);
}

/** Sums a [rows, ..., n] gradient to the shape [rows | 1, n] of a per-row input. */
function toPerRow(g: Tensor, like: Tensor): Tensor {
  let r = g.rank > 2 ? g.sum(Array.from({ length: g.rank - 2 }, (_, i) => i + 1)) : g;
  if (like.shape[0] === 1 && r.shape[0] !== 1) r = r.sum(0, true);
  return r;
}

/** Derivative of an activation at its input. */
function activationDerivative(name: FusedActivation, x: Tensor): Tensor {
  switch (name) {
    case 'linear':
      return tf.onesLike(x);
    case 'relu':
      return tf.step(x);
    case 'gelu': {
      const pdf = x.square().mul(-0.5).exp().mul(1 / Math.sqrt(2 * Math.PI));
      return tf.erf(x.mul(Math.SQRT1_2)).add(1).mul(0.5).add(x.mul(pdf));
    }
    case 'gelu_new': {
      const c = Math.sqrt(2 / Math.PI);
      const t = tf.tanh(x.add(x.square().mul(x).mul(0.044715)).mul(c));
      const du = x.square().mul(3 * 0.044715).add(1).mul(c);
      return t.add(1).mul(0.5).add(x.mul(0.5).mul(tf.sub(1, t.square())).mul(du));
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
function rmsNormInputGrad(x: Tensor, w: Tensor, eps: number, scale: number, g: Tensor): Tensor {
  const d = x.shape[x.rank - 1] as number;
  const r = x.square().mean(-1, true).add(eps).rsqrt();
  const wg = g.mul(w);
  const dot = x.mul(wg).sum(-1, true);
  const dx = wg.mul(r).sub(x.mul(r.pow(3)).mul(dot).div(d));
  return scale === 1 ? dx : dx.mul(scale);
}

function rmsNormWeightGrad(x: Tensor, eps: number, scale: number, g: Tensor): Tensor {
  const r = x.square().mean(-1, true).add(eps).rsqrt();
  const contrib = g.mul(x.mul(r));
  const summed = contrib.reshape([-1, x.shape[x.rank - 1] as number]).sum(0);
  return scale === 1 ? summed : summed.mul(scale);
}

function linearOptions(n: Record<string, Tensor>, attrs: Record<string, unknown>): LinearOptions {
  return {
    norm: n.normWeight ? { weight: n.normWeight, eps: attrs.eps as number, scale: attrs.normScale as number } : undefined,
    bias: n.bias,
    residual: n.residual,
    activation: attrs.activation as FusedActivation,
    gated: attrs.gated as boolean,
    adapters: { loraA: n.loraA, loraB: n.loraB, loraScale: n.loraScale, inScale: n.inScale, outScale: n.outScale },
  };
}

function registerLinearGradient() {
  tf.registerGradient({
    kernelName: KERNEL.linear,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const n = namedInputs(saved as Tensor[], attrs as Record<string, unknown>);
      const o = linearOptions(n, attrs as Record<string, unknown>);
      const a = o.adapters!;
      const g = dy as Tensor;
      const x = n.x;
      const xn = once(() => normalisedInput(x, o));
      // gradient at the pre-activation (the projection + adapter terms + bias)
      const dpre = once(() => {
        if ((o.activation ?? 'linear') === 'linear' && !o.gated) return g;
        const pre = preActivation(xn(), n.kernel, o);
        const act = o.activation ?? 'linear';
        if (!o.gated) return g.mul(activationDerivative(act, pre));
        const half = (pre.shape[pre.rank - 1] as number) / 2;
        const [gate, up] = tf.split(pre, [half, half], -1);
        const gateOut = activate(gate, { activation: act });
        return tf.concat([g.mul(up).mul(activationDerivative(act, gate)), g.mul(gateOut)], -1);
      });
      const dBase = once(() => (a.outScale ? dpre().mul(perRow(a.outScale, x.rank)) : dpre()));
      const loraDown = once(() => matMulLast(xn(), a.loraA!));
      const dDown = once(() => matMulLastT(dpre(), a.loraB!)); // dL/d((x̂·A) ⊙ S)
      const dDownScaled = once(() => (a.loraScale ? dDown().mul(perRow(a.loraScale, x.rank)) : dDown()));
      const dxn = once(() => {
        let gx = matMulLastT(dBase(), n.kernel);
        if (a.inScale) gx = gx.mul(perRow(a.inScale, x.rank));
        if (a.loraA) gx = gx.add(matMulLastT(dDownScaled(), a.loraA));
        return gx;
      });
      const grads: Thunks = {
        x: () => (o.norm ? rmsNormInputGrad(x, o.norm.weight, o.norm.eps, o.norm.scale ?? 1, dxn()) : dxn()),
        kernel: () => outer(a.inScale ? xn().mul(perRow(a.inScale, x.rank)) : xn(), dBase()),
        normWeight: () => rmsNormWeightGrad(x, o.norm!.eps, o.norm!.scale ?? 1, dxn()),
        bias: () => dpre().reshape([-1, dpre().shape[dpre().rank - 1] as number]).sum(0),
        residual: () => g,
        loraA: () => outer(xn(), dDownScaled()),
        loraB: () => outer(a.loraScale ? loraDown().mul(perRow(a.loraScale, x.rank)) : loraDown(), dpre()),
        loraScale: () => toPerRow(loraDown().mul(dDown()), a.loraScale!),
        inScale: () => toPerRow(xn().mul(matMulLastT(dBase(), n.kernel)), a.inScale!),
        outScale: () => toPerRow(dpre().mul(matMulLast(a.inScale ? xn().mul(perRow(a.inScale, x.rank)) : xn(), n.kernel)), a.outScale!),
      };
      return positional(attrs as Record<string, unknown>, grads);
    },
  });
}

/** Places [B, L, w] into columns [offset, offset + w) of a [B, L, width] zero tensor. */
function intoColumns(g: Tensor, offset: number, width: number): Tensor {
  const w = g.shape[2] as number;
  if (offset === 0 && w === width) return g;
  return tf.pad(g, [[0, 0], [0, 0], [offset, width - offset - w]]);
}

function registerAttentionGradient() {
  tf.registerGradient({
    kernelName: KERNEL.attention,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const at = attrs as Record<string, unknown>;
      const n = namedInputs(saved as Tensor[], at);
      const h = at.numHeads as number;
      const d = at.headDim as number;
      const o: AttentionOptions = {
        numHeads: h,
        headDim: d,
        qOffset: at.qOffset as number,
        prefix: n.prefixKeys ? { keys: n.prefixKeys, values: n.prefixValues } : undefined,
        bias: n.biasTable ? { table: n.biasTable, index: n.biasIndex } : undefined,
        mask: n.mask,
        causalOffset: at.causal ? (at.causalOffset as number) : undefined,
      };
      const kv = { source: n.kv, kOffset: at.kOffset as number, vOffset: at.vOffset as number };
      const q = n.q;
      const [b, lq] = q.shape as number[];
      const qh = once(() => headsOf(q, o.qOffset ?? 0, h, d));
      const parts = keysValues(kv, o, b);
      const { p, lk } = parts;
      const weights = once(() => attentionWeights(qh(), parts.kh, o, p, lk));
      const dOut = once(() => (dy as Tensor).reshape([b, lq, h, d]).transpose([0, 2, 1, 3]));
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
      const width = n.kv.shape[2] as number;
      const grads: Thunks = {
        q: () => intoColumns(merge(tf.matMul(dScores(), parts.kh)), o.qOffset ?? 0, q.shape[2] as number),
        kv: () => intoColumns(merge(realPart(dK())), kv.kOffset, width).add(intoColumns(merge(realPart(dV())), kv.vOffset, width)),
        prefixKeys: () => prefixPart(dK(), n.prefixKeys),
        prefixValues: () => prefixPart(dV(), n.prefixValues),
        biasTable: () => {
          const index = n.biasIndex.reshape([-1]);
          const valid = index.greaterEqual(0).cast('float32').expandDims(1);
          const perColumn = dScores().sum(0).transpose([1, 2, 0]).reshape([-1, h]).mul(valid); // [Lq·(P+Lk), h]
          return tf.unsortedSegmentSum(perColumn, tf.maximum(index, tf.scalar(0, 'int32')) as tf.Tensor1D, n.biasTable.shape[0] as number);
        },
        biasIndex: () => tf.zerosLike(n.biasIndex),
        mask: () => {
          const g = dScores().sum([1, 2]); // [b, P + Lk]
          return n.mask.shape[0] === 1 && b !== 1 ? g.sum(0, true) : g;
        },
      };
      return positional(at, grads);
    },
  });
}

function registerCacheWriteGradient() {
  tf.registerGradient({
    kernelName: KERNEL.cacheWrite,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const at = attrs as Record<string, unknown>;
      const n = namedInputs(saved as Tensor[], at);
      const g = dy as Tensor;
      const [b, capacity, c] = n.cache.shape as number[];
      const pos = at.position as number;
      const keep = new Float32Array(capacity).fill(1);
      keep[pos] = 0;
      return positional(at, {
        cache: () => g.mul(tf.tensor3d(keep, [1, capacity, 1])),
        source: () => intoColumns(g.slice([0, pos, 0], [b, 1, c]), at.sourceOffset as number, n.source.shape[2] as number),
      });
    },
  });
}

function registerCrossEntropyGradient() {
  tf.registerGradient({
    kernelName: KERNEL.crossEntropy,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const at = attrs as Record<string, unknown>;
      const n = namedInputs(saved as Tensor[], at);
      const eps = at.labelSmoothing as number;
      const [, v] = n.logits.shape as number[];
      return positional(at, {
        logits: () => {
          const valid = n.labels.notEqual(-100);
          const safe = tf.where(valid, n.labels, tf.zerosLike(n.labels));
          const target = tf.oneHot(safe as tf.Tensor1D, v).mul(1 - eps).add(eps / v);
          const perRowScale = (dy as Tensor).mul(valid.cast('float32')).expandDims(1);
          return tf.softmax(n.logits).sub(target).mul(perRowScale);
        },
        labels: () => tf.zerosLike(n.labels),
      });
    },
  });
}

function registerRmsNormGradient() {
  tf.registerGradient({
    kernelName: KERNEL.rmsNorm,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const at = attrs as Record<string, unknown>;
      const n = namedInputs(saved as Tensor[], at);
      const eps = at.eps as number;
      return positional(at, {
        x: () => rmsNormInputGrad(n.x, n.weight, eps, 1, dy as Tensor),
        weight: () => rmsNormWeightGrad(n.x, eps, 1, dy as Tensor),
      });
    },
  });
}

let registered = false;

/** Registers the gradients of every fused kernel (idempotent; done when this package loads). */
export function registerFusedGradients(): void {
  if (registered) return;
  registered = true;
  registerLinearGradient();
  registerAttentionGradient();
  registerCacheWriteGradient();
  registerCrossEntropyGradient();
  registerRmsNormGradient();
}
