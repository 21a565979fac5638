import { fileURLToPath } from 'node:url';
import { SeededRandom } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';

export const FIXTURE_DIR = fileURLToPath(new URL('../../t5/test/fixtures/tiny-gated', import.meta.url));

export function loadTiny(): Promise<T5ForConditionalGeneration> {
  return T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
}

/**
 * The copy task of the fixture: every input token t in [3, 128) comes out as (t − 3 + shift) % 125 + 3,
 * then eos (1). Inputs end with eos as well. Lengths 4–8 tokens (before eos), seeded.
 */
export function shiftExamples(n: number, shift: number, seed: number): { inputIds: number[]; targetIds: number[] }[] {
  const rng = new SeededRandom(seed);
  return Array.from({ length: n }, () => {
    const len = 4 + Math.floor(rng.next() * 5);
    const toks = Array.from({ length: len }, () => 3 + Math.floor(rng.next() * 125));
    return { inputIds: [...toks, 1], targetIds: [...toks.map((t) => ((t - 3 + shift) % 125) + 3), 1] };
  });
}
