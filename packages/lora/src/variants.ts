import { tf, type Tensor } from '@adapterkit/backend';
import type { SeededRandom } from '@adapterkit/core';
import { initParam, kaimingUniformBound } from '@adapterkit/init';
import type { LoraConfig } from './config.js';
import type { LoraAdapter, SiteParams } from './types.js';

/**
 * The LoRA variants as factors of the one update the fused linear kernel applies: every add-mode adapter's
 * update is scale · (x·a)·b, and DoRA adds a per-output gain g on the whole output,
 *   y = g ⊙ (x·W + scale · x·a·b) = (x·W) ⊙ g + scale · (x·a)·(b ⊙ g),
 * which the kernel computes as an output-scale vector on the base projection plus a LoRA term — exact, and
 * no extra kernel. LoRA: a = A, b = B. VeRA: a = A_s ⊙ λ_d, b = B_s ⊙ λ_b (its frozen projections, sliced
 * to the linear). DoRA: g = m / ‖W + scale·a·b‖ over each output feature's inputs, the norm detached.
 */
export interface Factors {
  a: Tensor;
  b: Tensor;
  /** DoRA's gain g [1, out], or undefined. */
  gain?: Tensor;
}

/**
 * `make()` as a constant for backpropagation (torch's `.detach()`): tfjs has no stop-gradient op, but the
 * ops a custom gradient's forward function runs are not recorded on the tape, and the one op it records
 * takes only a throwaway anchor, so no gradient reaches the variables `make` reads.
 */
export function detached(make: () => Tensor): Tensor {
  const anchor = tf.scalar(0);
  try {
    return tf.customGrad(() => ({ value: tf.tidy(make), gradFunc: () => tf.scalar(0) }))(anchor);
  } finally {
    anchor.dispose();
  }
}

/** ‖W + scale·a·b‖ over the input axis of a [in, out] kernel: [1, out] (PEFT's `get_weight_norm`, torch layout [out, in], dim=1). */
export function columnNorm(weight: Tensor, a: Tensor, b: Tensor, scale: number): Tensor {
  return tf.tidy(() => weight.add(tf.matMul(a, b).mul(scale)).square().sum(0, true).sqrt());
}

/** VeRA's projections sliced to a linear (PEFT: vera_A[:, :in], vera_B[:out, :]; here in tfjs layout), detached: they never train. */
function veraFactors(ad: LoraAdapter, p: SiteParams): { a: Tensor; b: Tensor } {
  const { A, B } = ad.projections!;
  const r = A.shape[1] as number;
  const aS = detached(() => A.slice([0, 0], [p.site.inFeatures, r]));
  const bS = detached(() => B.slice([0, 0], [r, p.site.outFeatures]));
  return { a: aS.mul(p.lambdaD!), b: bS.mul(p.lambdaB!) };
}

/**
 * The factors of one adapter at one site (call inside tf.tidy: the derived tensors are new, A and B are the
 * adapter's own variables). `weight()` gives the linear's current kernel [in, out] (DoRA only).
 */
export function factorsOf(ad: LoraAdapter, p: SiteParams, weight: () => Tensor): Factors {
  const { a, b } = p.lambdaB ? veraFactors(ad, p) : { a: p.A!, b: p.B! };
  if (!p.magnitude) return { a, b };
  // PEFT (after the DoRA paper §4.3): the norm is a constant to the gradient; m/‖·‖ still trains m.
  const norm = detached(() => columnNorm(weight(), a, b, ad.scale));
  const gain = p.magnitude.div(norm);
  return { a, b: b.mul(gain), gain };
}

/**
 * The folded kernel of a merge: W + scale·a·b, and for DoRA (W + scale·a·b) ⊙ m / ‖W + scale·a·b‖ (PEFT's
 * merge: the norm of the merged direction, per output feature). Call inside tf.tidy.
 */
export function mergedKernel(ad: LoraAdapter, p: SiteParams, weight: Tensor): Tensor {
  const { a, b } = p.lambdaB ? veraFactors(ad, p) : { a: p.A!, b: p.B! };
  const direction = weight.add(tf.matMul(a, b).mul(ad.scale));
  if (!p.magnitude) return direction;
  return direction.mul(p.magnitude.div(direction.square().sum(0, true).sqrt()));
}

/**
 * Initial values of a LoRA/VeRA matrix (role lora_A/lora_B) or gate. init_weights 'vera' is
 * `adapters`' and PEFT's kaiming_uniform_ with a = 0 (bound √(6 / fan_in)) on both matrices; a gate keeps
 * the LoRA rule (N(0, 0.02), bias 0), as adapters re-initialises gates whatever init_weights says.
 */
export function initialValues(c: LoraConfig, spec: { role: 'lora_A' | 'lora_B' | 'gate'; shape: number[]; fanIn?: number; bias?: boolean }, rng: SeededRandom): Float32Array {
  if (c.init_weights !== 'vera') return initParam(c.init_weights, spec, rng);
  if (spec.role === 'gate') return initParam('lora', spec, rng);
  const bound = kaimingUniformBound(spec.shape[0], 0);
  const out = new Float32Array(spec.shape.reduce((x, y) => x * y, 1));
  for (let i = 0; i < out.length; i++) out[i] = rng.uniform(-bound, bound);
  return out;
}
