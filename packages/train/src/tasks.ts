import { SeededRandom } from '@adapterkit/core';

/**
 * The shift-k copy task of adapterkit's demos (the bundled tiny model was trained on it with k = 1): every
 * input token t in [3, 128) must come out as (t − 3 + k) % 125 + 3, then </s> (id 1). `n` seeded examples
 * of 4–8 tokens (+ eos), in the Trainer's row format.
 */
export function shiftTaskExamples(n: number, seed: number, shift = 2): { inputIds: number[]; targetIds: number[] }[] {
  const rng = new SeededRandom(seed);
  return Array.from({ length: n }, () => {
    const len = 4 + Math.floor(rng.next() * 5);
    const toks = Array.from({ length: len }, () => 3 + Math.floor(rng.next() * 125));
    return { inputIds: [...toks, 1], targetIds: [...toks.map((t) => shiftTaskToken(t, shift)), 1] };
  });
}

/** The shift task's answer for one token. */
export function shiftTaskToken(t: number, shift: number): number {
  return ((t - 3 + shift) % 125) + 3;
}
