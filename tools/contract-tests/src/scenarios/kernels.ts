/**
 * The named ops of @adapterkit/kernels: on each backend their fused kernel (WGSL on webgpu, native on
 * wasm in Node), against cpu, which runs their reference — values and gradients within 1e-5. Shapes cover
 * the variants the models use: normalised input, gating, LoRA terms per row range, IA3 vectors, residual;
 * prefix, bias buckets (−1: none), masks and causality; cache writes; cross-entropy; an AdamW step.
 */
import type { Tensor } from '@adapterkit/backend';
import { adamW, attention, cacheWrite, crossEntropy, linear, MASK_VALUE, rmsNorm } from '@adapterkit/kernels';
import { defineScenario, seeded } from '../harness.js';

const TOLERANCE = 1e-5;

defineScenario({
  name: 'kernels: linear with norm, gated gelu_new, LoRA rows, residual (values, gradients)',
  tolerance: TOLERANCE,
  run: (tf) =>
    tf.tidy(() => {
      const [rows, len, inF, outF, r] = [3, 4, 8, 5, 4];
      const x = seeded([rows, len, inF], 1, 2);
      const w = seeded([inF, 2 * outF], 2, 0.5);
      const nw = seeded([inF], 3);
      const res = seeded([rows, len, outF], 4);
      const A = seeded([inF, r], 5, 0.5);
      const B = seeded([r, 2 * outF], 6, 0.5);
      const S = tf.tensor2d([
        [2, 2, 0, 0],
        [0, 0, 1, 1],
        [0.5, 0.5, 0.5, 0.5],
      ]);
      const f = (xx: Tensor, AA: Tensor, BB: Tensor) =>
        linear(xx, w, { norm: { weight: nw, eps: 1e-6 }, gated: true, activation: 'gelu_new', residual: res, adapters: { loraA: AA, loraB: BB, loraScale: S } });
      const [dx, dA, dB] = tf.grads((xx: Tensor, AA: Tensor, BB: Tensor) =>
        f(xx, AA, BB)
          .mul(seeded([rows, len, outF], 7))
          .sum(),
      )([x, A, B]);
      return { y: f(x, A, B), dx: dx!, dA: dA!, dB: dB! };
    }),
});

defineScenario({
  name: 'kernels: linear with IA3 vectors, relu, bias (values, gradients)',
  tolerance: TOLERANCE,
  run: (tf) =>
    tf.tidy(() => {
      const [rows, inF, outF] = [4, 6, 7];
      const x = seeded([rows, inF], 11);
      const w = seeded([inF, outF], 12);
      const bias = seeded([outF], 13);
      const inS = seeded([1, inF], 14);
      const outS = seeded([rows, outF], 15);
      const f = (xx: Tensor, ii: Tensor, oo: Tensor) => linear(xx, w, { activation: 'relu', bias, adapters: { inScale: ii, outScale: oo } });
      const [dx, dIn, dOut] = tf.grads((xx: Tensor, ii: Tensor, oo: Tensor) =>
        f(xx, ii, oo)
          .mul(seeded([rows, outF], 16))
          .sum(),
      )([x, inS, outS]);
      return { y: f(x, inS, outS), dx: dx!, dIn: dIn!, dOut: dOut! };
    }),
});

defineScenario({
  name: 'kernels: attention over packed q|k|v with prefix, bias buckets, mask, causality (values, gradients)',
  tolerance: TOLERANCE,
  run: (tf) =>
    tf.tidy(() => {
      const [b, l, p, h, d] = [2, 5, 3, 2, 4];
      const qkv = seeded([b, l, 3 * h * d], 21);
      const pk = seeded([b, h, p, d], 22);
      const pv = seeded([b, h, p, d], 23);
      const table = seeded([6, h], 24);
      const index = tf.tensor2d(
        Array.from({ length: l * (p + l) }, (_, i) => (i % (p + l) < p ? -1 : i % 6)),
        [l, p + l],
        'int32',
      );
      const mask = tf.tensor2d([
        [MASK_VALUE, 0, 0, 0, 0, 0, 0, MASK_VALUE],
        [0, 0, 0, 0, 0, 0, 0, 0],
      ]);
      const f = (x: Tensor, k: Tensor, v: Tensor) =>
        attention(x, { source: x, kOffset: h * d, vOffset: 2 * h * d }, { numHeads: h, headDim: d, prefix: { keys: k, values: v }, bias: { table, index }, mask, causalOffset: 0 });
      const [dqkv, dpk, dpv] = tf.grads((x: Tensor, k: Tensor, v: Tensor) =>
        f(x, k, v)
          .mul(seeded([b, l, h * d], 25))
          .sum(),
      )([qkv, pk, pv]);
      return { y: f(qkv, pk, pv), dqkv: dqkv!, dPrefixKeys: dpk!, dPrefixValues: dpv! };
    }),
});

defineScenario({
  name: 'kernels: one cached attention step and a cache write; cross-attention with a mask',
  tolerance: TOLERANCE,
  run: (tf) =>
    tf.tidy(() => {
      const [b, cap, h, d] = [3, 6, 2, 4];
      const qkv = seeded([b, 1, 3 * h * d], 31);
      const cache = cacheWrite(seeded([b, cap, 2 * h * d], 32), qkv, h * d, 2);
      const step = attention(qkv, { source: cache, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d, causalOffset: 2 });
      const enc = seeded([b, 7, 2 * h * d], 33);
      const cross = attention(qkv, { source: enc, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d, mask: tf.tensor2d([[0, 0, 0, 0, 0, MASK_VALUE, MASK_VALUE]]) });
      return { cache, step, cross };
    }),
});

defineScenario({
  name: 'kernels: rmsNorm, crossEntropy (smoothing, ignored labels) and an AdamW step',
  tolerance: TOLERANCE,
  run: (tf) =>
    tf.tidy(() => {
      const x = seeded([3, 5, 8], 41);
      const norm = rmsNorm(x, seeded([8], 42), 1e-6);
      const logits = seeded([6, 11], 43, 3);
      const labels = tf.tensor1d([3, -100, 0, 10, 5, -100], 'int32');
      const [dLogits] = tf.grads((l: Tensor) => crossEntropy(l, labels, 0.1).sum())([logits]);
      const [p, m, v] = adamW(seeded([4, 6], 44), seeded([4, 6], 45), seeded([4, 6], 46, 0.1), seeded([4, 6], 47, 0.1).abs(), {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weightDecay: 0.01,
        step: 2,
      });
      return { norm, loss: crossEntropy(logits, labels, 0.1), dLogits: dLogits!, p, m, v };
    }),
});
