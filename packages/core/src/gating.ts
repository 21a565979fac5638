import { tf, type Tensor } from '@adapterkit/backend';
import type { ForwardContext } from './context.js';

/**
 * The sequence gate of gated adapters (`adapters`: g = mean over the sequence of sigmoid(gate(x))).
 *
 * Over an encoder sequence (or a decoder reading encoder states) it is that mean, [rows, 1, k]. Over the
 * decoder's own sequence adapterkit takes the mean *causally* — position t averages positions 0..t,
 * [rows, L, k] — so a gate never reads future tokens, and a cached generation step (one token at
 * ctx.decodingPosition, continuing a running sum) computes exactly what the full pass computes.
 * (`adapters` averages over all decoder positions, so its training and cached inference disagree.)
 */
export function sequenceMeanGate(gates: Tensor, options: { causal: boolean; key: string }, ctx: ForwardContext): Tensor {
  const [rows, len, k] = gates.shape as number[];
  if (!options.causal) return gates.mean(1, true);
  const t = ctx.decodingPosition;
  if (t !== undefined) {
    // cached step: one position; continue the running sum over the decoded prefix
    return ctx.runningSum(options.key, gates).div(t + 1);
  }
  // full pass: cumulative mean along the sequence, as a matmul with a lower-triangular averaging matrix
  // (differentiable on every backend, unlike cumsum on some).
  // one averaging matrix per length per forward, shared by every gated site
  const averaging = ctx.remember(`causal-mean:${len}`, () => {
    const avg = new Float32Array(len * len);
    for (let i = 0; i < len; i++) for (let j = 0; j <= i; j++) avg[j * len + i] = 1 / (i + 1);
    return tf.tensor2d(avg, [len, len]);
  });
  const flat = gates.transpose([0, 2, 1]).reshape([rows * k, len]);
  return tf.matMul(flat, averaging).reshape([rows, k, len]).transpose([0, 2, 1]);
}
