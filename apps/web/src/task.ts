import { SeededRandom } from '@adapterkit/core';

/** The shift-k copy task (same generator as the CLI's demo): t → (t − 3 + k) % 125 + 3, then eos 1. */
export function shiftExamples(n: number, seed: number, shift = 2): { inputIds: number[]; targetIds: number[] }[] {
  const rng = new SeededRandom(seed);
  return Array.from({ length: n }, () => {
    const len = 4 + Math.floor(rng.next() * 5);
    const toks = Array.from({ length: len }, () => 3 + Math.floor(rng.next() * 125));
    return { inputIds: [...toks, 1], targetIds: [...toks.map((t) => ((t - 3 + shift) % 125) + 3), 1] };
  });
}
