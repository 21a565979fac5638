/**
 * Gradients of the fused kernels, registered by kernel name as tfjs registers its own. Each input's
 * gradient is a thunk: tfjs evaluates only those on the path to a trainable variable, so the frozen base
 * weights (kernel, norm weight, bias table) cost nothing in training.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { matMulLast, normalisedInput, perRow } from './reference.js';
import {
  ATTENTION_GRADIENTS,
  attentionScoresGrad,
  intoColumns,
  LINEAR_GRADIENTS,
  matMulLastT,
  once,
  outer,
  preActivationGrad,
  rmsNormInputGrad,
  rmsNormWeightGrad,
  toPerRow,
} from './backward.js';
import { attentionBackward, linearBackward } from './ops.js';
import { attentionFromKernel, KERNEL, linearFromKernel, namedInputs } from './types.js';

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

/**
 * Registers a fused kernel's gradient: `thunks` gets the saved inputs by name, the attributes and dy, and
 * returns a gradient thunk per input name (mapped back to the kernel's positional inputs here).
 */
function registerNamedGradient(kernelName: string, thunks: (n: Record<string, Tensor>, at: Record<string, unknown>, dy: Tensor) => Thunks): void {
  tf.registerGradient({
    kernelName,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const at = attrs as Record<string, unknown>;
      return positional(at, thunks(namedInputs(saved as Tensor[], at), at, dy as Tensor)); // every fused kernel with a gradient has one output
    },
  });
}

function registerLinearGradient() {
  registerNamedGradient(KERNEL.linear, (n, at, dy) => {
    const o = linearFromKernel(n, at);
    const g = dy;
    // Every trainable input's gradient at once (one fused kernel), computed here rather than in the thunks:
    // tfjs runs each thunk in its own tidy, and these must outlive the first one.
    const wants = LINEAR_GRADIENTS.filter((w) => w === 'x' || n[w] !== undefined);
    const grads = linearBackward(g, n.x, n.kernel, o, wants);
    const xn = once(() => normalisedInput(n.x, o));
    const dxn = once(() => {
      const a = o.adapters!;
      const dBase = a.outScale ? preActivationGrad(g, xn(), n.kernel, o).mul(perRow(a.outScale, n.x.rank)) : preActivationGrad(g, xn(), n.kernel, o);
      return matMulLastT(dBase, n.kernel);
    });
    const thunks: Thunks = { residual: () => g };
    for (const w of wants) thunks[w] = () => grads[w]!;
    // frozen weights: never on the path in adapter training, computed by the reference if ever asked
    thunks.kernel = () => {
      const a = o.adapters!;
      const dBase = a.outScale ? preActivationGrad(g, xn(), n.kernel, o).mul(perRow(a.outScale, n.x.rank)) : preActivationGrad(g, xn(), n.kernel, o);
      return outer(a.inScale ? xn().mul(perRow(a.inScale, n.x.rank)) : xn(), dBase);
    };
    thunks.normWeight = () => rmsNormWeightGrad(n.x, o.norm!.eps, o.norm!.scale ?? 1, dxn());
    thunks.loraScale = () => toPerRow(matMulLast(xn(), n.loraA).mul(matMulLastT(preActivationGrad(g, xn(), n.kernel, o), n.loraB)), n.loraScale);
    return thunks;
  });
}

function registerAttentionGradient() {
  registerNamedGradient(KERNEL.attention, (n, at, dy) => {
    const { kv, options: o } = attentionFromKernel(n, at);
    const wants = ATTENTION_GRADIENTS.filter((w) => n[w] !== undefined);
    const grads = attentionBackward(dy, n.q, kv, o, wants);
    const thunks: Thunks = {};
    for (const w of wants) thunks[w] = () => grads[w]!;
    // frozen inputs: the relative-attention table (reference), the bucket index and the mask
    const dScores = once(() => attentionScoresGrad(dy, n.q, kv, o));
    const h = o.numHeads;
    thunks.biasTable = () => {
      const index = n.biasIndex.reshape([-1]);
      const valid = index.greaterEqual(0).cast('float32').expandDims(1);
      const perColumn = dScores().sum(0).transpose([1, 2, 0]).reshape([-1, h]).mul(valid); // [Lq·(P+Lk), h]
      return tf.unsortedSegmentSum(perColumn, tf.maximum(index, tf.scalar(0, 'int32')) as tf.Tensor1D, n.biasTable.shape[0] as number);
    };
    thunks.biasIndex = () => tf.zerosLike(n.biasIndex);
    thunks.mask = () => {
      const g = dScores().sum([1, 2]); // [b, P + Lk]
      return n.mask.shape[0] === 1 && g.shape[0] !== 1 ? g.sum(0, true) : g;
    };
    return thunks;
  });
}

function registerCacheWriteGradient() {
  registerNamedGradient(KERNEL.cacheWrite, (n, at, dy) => {
    const g = dy;
    const [b, capacity, c] = n.cache.shape as number[];
    const pos = at.position as number;
    const keep = new Float32Array(capacity).fill(1);
    keep[pos] = 0;
    return {
      cache: () => g.mul(tf.tensor3d(keep, [1, capacity, 1])),
      source: () => intoColumns(g.slice([0, pos, 0], [b, 1, c]), at.sourceOffset as number, n.source.shape[2] as number),
    };
  });
}

function registerCrossEntropyGradient() {
  registerNamedGradient(KERNEL.crossEntropy, (n, at, dy) => {
    const eps = at.labelSmoothing as number;
    const [, v] = n.logits.shape as number[];
    return {
      logits: () => {
        const valid = n.labels.notEqual(-100);
        const safe = tf.where(valid, n.labels, tf.zerosLike(n.labels));
        const target = tf
          .oneHot(safe as tf.Tensor1D, v)
          .mul(1 - eps)
          .add(eps / v);
        const perRowScale = dy.mul(valid.cast('float32')).expandDims(1);
        return tf.softmax(n.logits).sub(target).mul(perRowScale);
      },
      labels: () => tf.zerosLike(n.labels),
    };
  });
}

function registerRmsNormGradient() {
  registerNamedGradient(KERNEL.rmsNorm, (n, at, dy) => {
    const eps = at.eps as number;
    return {
      x: () => rmsNormInputGrad(n.x, n.weight, eps, 1, dy),
      weight: () => rmsNormWeightGrad(n.x, eps, 1, dy),
    };
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
