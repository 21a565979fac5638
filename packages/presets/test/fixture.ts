import { tf } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, inputs, labels } from '@adapterkit/t5/test';

/** The tiny T5 fixture and the batch of its reference.json (see @adapterkit/t5/test). */
export const FIXTURE = FIXTURE_DIR;
export const { inputIds, attentionMask, decoderInputIds } = inputs;
export { labels };

/** Gives every variable of an adapter seeded, non-trivial values (fresh LoRA/mam adapters are no-ops). */
export function perturb(model: T5ForConditionalGeneration, name: string, seed: number, std = 0.2) {
  const rng = new SeededRandom(seed);
  for (const v of model.adapters.adapterVariables(name).values()) {
    const vals = Float32Array.from({ length: v.size }, () => rng.normal(0, std));
    tf.tidy(() => v.assign(v.add(tf.tensor(vals, v.shape))));
  }
}
