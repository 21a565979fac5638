import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

/** The tiny T5 fixture (see packages/t5/test/fixtures/README.md) and the batch of its reference.json. */
export const FIXTURE = fileURLToPath(new URL('../../t5/test/fixtures/tiny-gated', import.meta.url));
export const inputIds = [
  [28, 49, 59, 118, 69, 67, 60, 3, 1],
  [32, 96, 94, 82, 85, 16, 1, 0, 0],
];
export const attentionMask = [
  [1, 1, 1, 1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 1, 1, 1, 0, 0],
];
export const labels = [
  [60, 126, 60, 58, 102, 1],
  [60, 9, 97, 30, 115, 1],
];
export const decoderInputIds = labels.map((r) => [0, ...r.slice(0, -1)]);

/** Gives every variable of an adapter seeded, non-trivial values (fresh LoRA/mam adapters are no-ops). */
export function perturb(model: T5ForConditionalGeneration, name: string, seed: number, std = 0.2) {
  const rng = new SeededRandom(seed);
  for (const v of model.adapters.adapterVariables(name).values()) {
    const vals = Float32Array.from({ length: v.size }, () => rng.normal(0, std));
    tf.tidy(() => v.assign(v.add(tf.tensor(vals, v.shape))));
  }
}
