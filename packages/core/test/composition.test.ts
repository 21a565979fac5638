import { describe, expect, it } from 'vitest';
import {
  ALLOWED_NESTINGS,
  Average,
  BatchSplit,
  type AdapterComposition,
  compositionToString,
  Fuse,
  leavesWithAncestors,
  normalizeComposition,
  Parallel,
  parallelChannels,
  Split,
  Stack,
} from '../src/composition.js';
import { CompositionError } from '../src/errors.js';

function expectCompositionError(fn: () => unknown, block: string | undefined, message?: RegExp): CompositionError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a throw').toBeInstanceOf(CompositionError);
  const err = caught as CompositionError;
  expect(err.code).toBe('COMPOSITION_ERROR');
  if (block !== undefined) {
    expect(err.block).toBe(block);
    expect(err.message).toContain(block);
  }
  if (message) expect(err.message).toMatch(message);
  return err;
}

describe('composition block constructors', () => {
  it('Stack and Parallel hold their children', () => {
    expect(Stack('a', 'b')).toEqual({ type: 'Stack', children: ['a', 'b'] });
    expect(Parallel('a', Stack('b', 'c'))).toEqual({ type: 'Parallel', children: ['a', { type: 'Stack', children: ['b', 'c'] }] });
  });

  it('a block needs at least one child, each a name or a block', () => {
    expectCompositionError(() => Stack(), 'Stack', /at least one child/);
    expectCompositionError(() => Parallel(), 'Parallel');
    expectCompositionError(() => Fuse(), 'Fuse');
    expectCompositionError(() => Stack('a', 5 as any), 'Stack', /neither an adapter name nor a block/);
    expectCompositionError(() => Parallel(null as any), 'Parallel');
  });

  it('BatchSplit takes per-child sizes or one size for every child; zeros are allowed', () => {
    expect(BatchSplit('a', 'b', { batchSizes: [2, 0] })).toEqual({ type: 'BatchSplit', children: ['a', 'b'], batchSizes: [2, 0] });
    expect(BatchSplit('a', 'b', 'c', { batchSizes: 3 }).batchSizes).toEqual([3, 3, 3]);
    expect(BatchSplit('a', { batchSizes: [0] }).batchSizes).toEqual([0]);
  });

  it('BatchSplit validates its sizes', () => {
    expectCompositionError(() => (BatchSplit as any)('a', 'b'), 'BatchSplit', /batchSizes/);
    expectCompositionError(() => BatchSplit('a', 'b', { batchSizes: [1] }), 'BatchSplit', /2 non-negative integers/);
    expectCompositionError(() => BatchSplit('a', 'b', { batchSizes: [1, 2, 3] }), 'BatchSplit');
    expectCompositionError(() => BatchSplit('a', 'b', { batchSizes: [1, -1] }), 'BatchSplit');
    expectCompositionError(() => BatchSplit('a', 'b', { batchSizes: [1, 1.5] }), 'BatchSplit');
    expectCompositionError(() => BatchSplit('a', 'b', { batchSizes: -2 }), 'BatchSplit');
    expectCompositionError(() => BatchSplit('a', 'b', { batchSizes: 'x' as any }), 'BatchSplit');
    expectCompositionError(() => BatchSplit({ batchSizes: [] }), 'BatchSplit', /at least one child/);
  });

  it('BatchSplit copies its sizes (later mutation of the argument does not leak in)', () => {
    const sizes = [1, 2];
    const block = BatchSplit('a', 'b', { batchSizes: sizes });
    sizes[0] = 99;
    expect(block.batchSizes).toEqual([1, 2]);
  });

  it('Fuse names itself after its children unless given a name', () => {
    expect(Fuse('a', 'b')).toEqual({ type: 'Fuse', children: ['a', 'b'], name: 'a,b' });
    expect(Fuse('a', 'b', { name: 'ab' }).name).toBe('ab');
    expect(Fuse('a', Stack('b', 'c')).name).toBe('a,Stack');
  });

  it('Split validates its splits', () => {
    expect(Split('a', 'b', { splits: [3, 5] }).splits).toEqual([3, 5]);
    expect(Split('a', 'b', { splits: 4 }).splits).toEqual([4, 4]);
    expectCompositionError(() => Split('a', 'b', { splits: [3] }), 'Split');
    expectCompositionError(() => Split('a', 'b', { splits: [3, -1] }), 'Split');
    expectCompositionError(() => (Split as any)('a', 'b'), 'Split');
  });
});

describe('Average weights', () => {
  it('default weights are 1/n', () => {
    expect(Average('a', 'b').weights).toEqual([0.5, 0.5]);
    const w = Average('a', 'b', 'c', 'd').weights;
    expect(w).toEqual([0.25, 0.25, 0.25, 0.25]);
  });

  it('weights are normalised to sum 1 exactly once (no extra 1/n as in `adapters`)', () => {
    const w = Average('a', 'b', { weights: [1, 3] }).weights;
    expect(w).toEqual([0.25, 0.75]);
    expect(w.reduce((s, x) => s + x, 0)).toBeCloseTo(1, 12);
    // Already-normalised weights are left as they are, not divided by n again.
    expect(Average('a', 'b', { weights: [0.3, 0.7] }).weights).toEqual([0.3, 0.7]);
    const three = Average('a', 'b', 'c', { weights: [2, 2, 4] }).weights;
    expect(three).toEqual([0.25, 0.25, 0.5]);
  });

  it('normalizeWeights: false keeps the weights as given', () => {
    expect(Average('a', 'b', { weights: [2, 3], normalizeWeights: false }).weights).toEqual([2, 3]);
  });

  it('invalid weights are refused', () => {
    expectCompositionError(() => Average('a', 'b', { weights: [1] }), 'Average', /2 finite numbers/);
    expectCompositionError(() => Average('a', 'b', { weights: [1, NaN] }), 'Average');
    expectCompositionError(() => Average('a', 'b', { weights: [1, Infinity] }), 'Average');
    expectCompositionError(() => Average('a', 'b', { weights: [1, -1] }), 'Average', /sum to 0/);
  });
});

describe('ALLOWED_NESTINGS enforcement', () => {
  it('matches `adapters` (without MultiTask)', () => {
    expect(ALLOWED_NESTINGS).toEqual({
      Stack: ['name', 'Fuse', 'Split', 'Parallel', 'BatchSplit', 'Average'],
      Fuse: ['name', 'Stack'],
      Split: ['name', 'Split', 'Stack', 'BatchSplit', 'Average'],
      Parallel: ['name', 'Stack', 'BatchSplit', 'Average'],
      BatchSplit: ['name', 'Stack', 'Split', 'BatchSplit', 'Average'],
      Average: ['name', 'Stack', 'Split', 'BatchSplit'],
    });
  });

  it('a bare name becomes Stack(name)', () => {
    expect(normalizeComposition('a')).toEqual({ type: 'Stack', children: ['a'] });
  });

  it('accepts allowed nestings', () => {
    const ok: AdapterComposition[] = [
      Stack(Parallel('a', 'b')),
      Stack('a', Fuse('b', 'c')),
      Fuse('a', Stack('b', 'c')),
      Parallel('a', Stack('b', 'c')),
      Parallel(BatchSplit('a', 'b', { batchSizes: 1 }), Average('c', 'd')),
      BatchSplit(Stack('a', 'b'), Average('c', 'd'), { batchSizes: [1, 1] }),
      Average('a', BatchSplit('b', 'c', { batchSizes: 1 })),
      Stack('a', Split('b', 'c', { splits: 2 })),
      Stack(Parallel(Stack('a', 'b'), 'c')),
    ];
    for (const comp of ok) expect(() => normalizeComposition(comp), compositionToString(comp)).not.toThrow();
    const s = Stack(Parallel('a', 'b'));
    expect(normalizeComposition(s)).toBe(s);
  });

  it.each([
    ['Fuse(Parallel(...))', () => Fuse(Parallel('a', 'b'), 'c'), 'Fuse', 'Parallel'],
    ['Parallel(Fuse(...))', () => Parallel(Fuse('a', 'b'), 'c'), 'Parallel', 'Fuse'],
    ['Average(Parallel(...))', () => Average(Parallel('a', 'b'), 'c'), 'Average', 'Parallel'],
    ['Fuse(Fuse(...))', () => Fuse(Fuse('a', 'b'), 'c'), 'Fuse', 'Fuse'],
    ['Parallel(Parallel(...))', () => Parallel(Parallel('a', 'b'), 'c'), 'Parallel', 'Parallel'],
    ['Parallel(Split(...))', () => Parallel(Split('a', 'b', { splits: 1 }), 'c'), 'Parallel', 'Split'],
    ['BatchSplit(Parallel(...))', () => BatchSplit(Parallel('a', 'b'), 'c', { batchSizes: 1 }), 'BatchSplit', 'Parallel'],
    ['Average(Fuse(...))', () => Average(Fuse('a', 'b'), 'c'), 'Average', 'Fuse'],
    ['Stack(Stack(...))', () => Stack(Stack('a', 'b')), 'Stack', 'Stack'],
  ])('rejects %s with a CompositionError naming the block and the child', (_label, make, block, child) => {
    const err = expectCompositionError(() => normalizeComposition(make()), block, /cannot contain/);
    expect(err.child).toBe(child);
    expect(err.message).toContain(child);
  });

  it('depth limit: a non-Stack block at level 2 is rejected, a Stack there is fine', () => {
    expectCompositionError(() => normalizeComposition(Stack(Average('a', BatchSplit('b', 'c', { batchSizes: 1 })))), 'BatchSplit', /too deep.*level 2/);
    expectCompositionError(() => normalizeComposition(Stack(Parallel(Average('a', 'b'), 'c'))), 'Average', /too deep/);
    expectCompositionError(() => normalizeComposition(Stack(BatchSplit(Split('a', 'b', { splits: 1 }), 'c', { batchSizes: 1 }))), 'Split', /too deep/);
    // Stack at level 2 is allowed, but nothing but names below it.
    expect(() => normalizeComposition(Stack(Parallel(Stack('a', 'b'), 'c')))).not.toThrow();
    expectCompositionError(() => normalizeComposition(Stack(Parallel(Stack(Fuse('a', 'b')), 'c'))), 'Fuse', /too deep.*level 3/);
    // The same nesting one level up is fine.
    expect(() => normalizeComposition(Average('a', BatchSplit('b', 'c', { batchSizes: 1 })))).not.toThrow();
  });

  it('rejects objects that are not composition blocks (e.g. from a JSON file)', () => {
    expectCompositionError(() => normalizeComposition({ type: 'Bogus', children: ['a'] } as any), undefined, /unknown composition block/);
    expectCompositionError(() => normalizeComposition({ type: 'constructor', children: ['a'] } as any), undefined, /unknown composition block/);
    expectCompositionError(() => normalizeComposition({ type: 'toString', children: ['a'] } as any), undefined, /unknown composition block/);
    expectCompositionError(() => normalizeComposition({ type: 'Stack' } as any), 'Stack', /children/);
    expectCompositionError(() => normalizeComposition({ type: 'Stack', children: 'ab' } as any), 'Stack', /children/);
    expectCompositionError(() => normalizeComposition(Stack('a', { type: 'Parallel', children: [] } as any)), 'Parallel', /children/);
    expectCompositionError(() => normalizeComposition(Stack('a', { type: 'Nope', children: ['b'] } as any)), 'Stack', /cannot contain/);
    expectCompositionError(() => normalizeComposition(null as any), undefined, /unknown composition block/);
    expectCompositionError(() => normalizeComposition({ type: 'Stack', children: ['a', null] } as any), 'Stack', /cannot contain null/);
    expectCompositionError(() => normalizeComposition({ type: 'Parallel', children: ['a', 7] } as any), 'Parallel', /cannot contain 7/);
  });
});

describe('parallelChannels', () => {
  it('is 1 without a Parallel block', () => {
    expect(parallelChannels(null)).toBe(1);
    expect(parallelChannels(undefined)).toBe(1);
    expect(parallelChannels('a')).toBe(1);
    expect(parallelChannels(Stack('a', 'b'))).toBe(1);
    expect(parallelChannels(BatchSplit('a', 'b', { batchSizes: 1 }))).toBe(1);
  });

  it('is the width of the Parallel block wherever it sits', () => {
    expect(parallelChannels(Parallel('a', 'b', 'c'))).toBe(3);
    expect(parallelChannels(Stack('x', Parallel('a', 'b')))).toBe(2);
    expect(parallelChannels(Parallel('a', Stack('b', 'c')))).toBe(2);
  });

  it('two Parallel blocks of different widths are an error', () => {
    const comp = Stack(Parallel('a', 'b'), Parallel('c', 'd', 'e'));
    expectCompositionError(() => parallelChannels(comp), 'Parallel', /different widths \(2 and 3\)/);
    expectCompositionError(() => normalizeComposition(comp), 'Parallel');
    expect(parallelChannels(Stack(Parallel('a', 'b'), Parallel('c', 'd')))).toBe(2);
  });
});

describe('composition helpers', () => {
  it('leavesWithAncestors lists every name with its block chain', () => {
    const comp = Stack('a', Parallel('b', Stack('c', 'd')));
    const leaves = leavesWithAncestors(comp);
    expect(leaves.map((l) => l.name)).toEqual(['a', 'b', 'c', 'd']);
    expect(leaves.map((l) => l.ancestors.map((b) => b.type).join('>'))).toEqual(['Stack', 'Stack>Parallel', 'Stack>Parallel>Stack', 'Stack>Parallel>Stack']);
    expect(leavesWithAncestors('x')).toEqual([{ name: 'x', ancestors: [] }]);
  });

  it('compositionToString', () => {
    expect(compositionToString('a')).toBe('a');
    expect(compositionToString(Stack('a', Parallel('b', 'c')))).toBe('Stack(a, Parallel(b, c))');
    expect(compositionToString(BatchSplit('a', 'b', { batchSizes: [1, 2] }))).toBe('BatchSplit(a, b)');
  });
});
