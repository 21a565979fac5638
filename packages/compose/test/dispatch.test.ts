import { describe, it, expect } from 'vitest';
import { ForwardContext, Stack, Parallel, BatchSplit, Average, InputError, CompositionError, normalizeComposition } from '@adapterkit/core';
import { composeLayer, dispatch, type LayerPrimitives } from '../src/index.js';

// A toy method whose state is one number per row; adapter `name` adds its own offset to every row.
const OFFSETS: Record<string, number> = { a: 1, b: 10, c: 100 };
const calls: string[] = [];
const prims: LayerPrimitives<number[]> = {
  has: (n) => n in OFFSETS,
  single: (n, s) => {
    calls.push(`${n}:${s.length}`);
    return s.map((x) => x + OFFSETS[n]);
  },
  rows: (s) => s.length,
  sliceRows: (s, a, b) => s.slice(a, b),
  concatRows: (parts) => parts.flat(),
  average: (results, w) => results[0].map((_, i) => results.reduce((acc, r, j) => acc + w[j] * r[i], 0)),
};
const ctx = (comp: any, options: any = {}) => new ForwardContext(normalizeComposition(comp), options);

describe('composition dispatcher', () => {
  it('Stack applies children in order; Stack of one == the adapter', () => {
    expect(composeLayer(Stack('a', 'b'), [0, 0], prims, ctx('a'))).toEqual([11, 11]);
    expect(composeLayer(Stack('a'), [5], prims, ctx('a'))).toEqual(composeLayer('a', [5], prims, ctx('a')));
  });

  it('Parallel gives branch i rows [i·B, (i+1)·B) of the replicated batch', () => {
    // The model replicated a batch of 2 rows into 3 channels: 6 rows.
    expect(composeLayer(Parallel('a', 'b', 'c'), [0, 0, 0, 0, 0, 0], prims, ctx(Parallel('a', 'b', 'c')))).toEqual([1, 1, 10, 10, 100, 100]);
  });

  it('BatchSplit partitions rows and skips empty parts (never sees a 0-row slice)', () => {
    for (const [sizes, expected] of [
      [
        [2, 0],
        [1, 1],
      ],
      [
        [0, 2],
        [10, 10],
      ],
      [
        [1, 1],
        [1, 10],
      ],
    ] as const) {
      calls.length = 0;
      const block = BatchSplit('a', 'b', { batchSizes: [...sizes] });
      expect(composeLayer(block, [0, 0], prims, ctx(block))).toEqual(expected);
      expect(calls.every((c) => !c.endsWith(':0'))).toBe(true);
    }
    const three = BatchSplit('a', 'b', 'c', { batchSizes: [3, 0, 1] });
    expect(composeLayer(three, [0, 0, 0, 0], prims, ctx(three))).toEqual([1, 1, 1, 100]);
  });

  it('BatchSplit sizes must cover the batch (scaled by beams)', () => {
    const block = BatchSplit('a', 'b', { batchSizes: [1, 1] });
    expect(() => composeLayer(block, [0, 0, 0], prims, ctx(block))).toThrow(InputError);
    // with 2 beams per example the 2 examples are 4 rows
    expect(composeLayer(block, [0, 0, 0, 0], prims, ctx(block, { rowMultiplier: 2 }))).toEqual([1, 1, 10, 10]);
  });

  it('Average weights are normalised once (not divided by n again); weight 1 on one branch == that branch', () => {
    const avg = Average('a', 'b', { weights: [3, 1] });
    expect(avg.weights).toEqual([0.75, 0.25]);
    expect(composeLayer(avg, [0], prims, ctx(avg))).toEqual([0.75 * 1 + 0.25 * 10]);
    const one = Average('a', 'b', { weights: [1, 0] });
    expect(composeLayer(one, [0], prims, ctx(one))).toEqual(composeLayer('a', [0], prims, ctx('a')));
  });

  it('Parallel over Stack and BatchSplit children', () => {
    const comp = Parallel(Stack('a', 'b'), BatchSplit('a', 'c', { batchSizes: [1, 1] }));
    expect(composeLayer(comp, [0, 0, 0, 0], prims, ctx(comp))).toEqual([11, 11, 1, 100]);
  });

  it('dispatch returns undefined when nothing acts: no composition, a dropped layer, or no adapter here', () => {
    expect(dispatch(0, [0], prims, new ForwardContext(null))).toBeUndefined();
    expect(dispatch(3, [0], prims, ctx('a', { skipLayers: new Set([3]) }))).toBeUndefined();
    expect(dispatch(0, [0], { ...prims, has: () => false }, ctx('a'))).toBeUndefined();
    expect(dispatch(0, [0], prims, ctx('a'))).toEqual([1]);
  });

  it('a method without average refuses Average with a typed error', () => {
    const { average: _unused, ...noAverage } = prims;
    const avg = Average('a', 'b');
    expect(() => composeLayer(avg, [0], noAverage, ctx(avg))).toThrow(CompositionError);
  });
});
