import { tf, type Tensor } from '@adapterkit/backend';
import { AdapterError, CompositionError, InputError } from './errors.js';

/**
 * Composition blocks, as plain serialisable data (the same shapes as `adapters`' adapter_setup.json).
 * The blocks' *runtime* behaviour lives in @adapterkit/compose; core only knows their shape and the nesting
 * rules, so that a model can validate a composition without importing any method.
 */
export type BlockType = 'Stack' | 'Parallel' | 'BatchSplit' | 'Fuse' | 'Average' | 'Split';
export type AdapterComposition = string | CompositionBlock;

export interface StackBlock {
  type: 'Stack';
  children: AdapterComposition[];
}
export interface ParallelBlock {
  type: 'Parallel';
  children: AdapterComposition[];
}
export interface BatchSplitBlock {
  type: 'BatchSplit';
  children: AdapterComposition[];
  batchSizes: number[];
}
export interface FuseBlock {
  type: 'Fuse';
  children: AdapterComposition[];
  name: string;
}
export interface AverageBlock {
  type: 'Average';
  children: AdapterComposition[];
  weights: number[];
}
export interface SplitBlock {
  type: 'Split';
  children: AdapterComposition[];
  splits: number[];
}
export type CompositionBlock = StackBlock | ParallelBlock | BatchSplitBlock | FuseBlock | AverageBlock | SplitBlock;

type Child = AdapterComposition;

/** The longest adapter name: names become directory names (checkpoints, saves) and appear in messages. */
export const MAX_ADAPTER_NAME_LENGTH = 128;
/** The most adapter names one composition may hold (a Parallel of n runs the batch n times). */
export const MAX_COMPOSITION_ADAPTERS = 64;

/** What a name must not be, and why (the first that applies is reported). */
const NAME_RULES: [(name: string) => boolean, string][] = [
  [(n) => n.length === 0, 'is empty'],
  [(n) => n.length > MAX_ADAPTER_NAME_LENGTH, `is longer than ${MAX_ADAPTER_NAME_LENGTH} characters`],
  [(n) => /[/\\]/.test(n), "contains a path separator ('/' or '\\')"],
  [(n) => n.includes('..') || n === '.', "contains '..' or is '.'"],
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this refuses
  [(n) => /[\u0000-\u001f\u007f-\u009f]/.test(n), 'contains a control character'],
  [(n) => /[\s,()]/.test(n), 'contains whitespace, a comma or a parenthesis'],
];

/**
 * The one check of an adapter name, wherever a name enters (addAdapter, loadAdapter and the name inside
 * adapter_config.json, training checkpoints, the CLI): a non-empty string of at most MAX_ADAPTER_NAME_LENGTH
 * characters without path separators, '..', control characters, whitespace, commas or parentheses (a name is
 * used as a directory name and inside composition strings). AdapterError naming the name otherwise.
 */
export function checkAdapterName(name: unknown, what = 'adapter name'): asserts name is string {
  const why = typeof name !== 'string' ? 'is not a string' : NAME_RULES.find(([bad]) => bad(name))?.[1];
  if (why === undefined) return;
  const shown = typeof name === 'string' && name.length > MAX_ADAPTER_NAME_LENGTH ? `${JSON.stringify(name.slice(0, 40))}…` : (JSON.stringify(name) ?? String(name));
  throw new AdapterError(`${what} ${shown} ${why}`, typeof name === 'string' ? name : undefined);
}

const isOptions = (x: unknown): x is Record<string, unknown> => !!x && typeof x === 'object' && !('type' in (x as object)) && !Array.isArray(x);

function childrenOf(block: string, args: unknown[]): Child[] {
  if (args.length === 0) throw new CompositionError(`${block} needs at least one child`, block);
  for (const c of args) {
    if (typeof c !== 'string' && !(c && typeof c === 'object' && 'type' in (c as object))) {
      throw new CompositionError(`${block} child ${JSON.stringify(c)} is neither an adapter name nor a block`, block);
    }
  }
  return args as Child[];
}

export function Stack(...children: Child[]): StackBlock {
  return { type: 'Stack', children: childrenOf('Stack', children) };
}

export function Parallel(...children: Child[]): ParallelBlock {
  return { type: 'Parallel', children: childrenOf('Parallel', children) };
}

/** `BatchSplit('a', 'b', { batchSizes: [2, 0] })`; sizes may be 0. An int means that size for every child. */
export function BatchSplit(...args: [...Child[], { batchSizes: number | number[] }]): BatchSplitBlock {
  const opts = args[args.length - 1];
  if (!isOptions(opts) || opts.batchSizes === undefined) throw new CompositionError('BatchSplit needs a final { batchSizes } argument', 'BatchSplit');
  const children = childrenOf('BatchSplit', args.slice(0, -1));
  const sizes = typeof opts.batchSizes === 'number' ? children.map(() => opts.batchSizes as number) : (opts.batchSizes as number[]);
  if (!Array.isArray(sizes) || sizes.length !== children.length || !sizes.every((s) => Number.isInteger(s) && s >= 0)) {
    throw new CompositionError(`BatchSplit batchSizes ${JSON.stringify(opts.batchSizes)} must be ${children.length} non-negative integers, one per child`, 'BatchSplit');
  }
  return { type: 'BatchSplit', children, batchSizes: [...sizes] };
}

/** `Fuse('a', 'b')` or `Fuse('a', 'b', { name })`; the fusion's name defaults to the children joined by ','. */
export function Fuse(...args: (Child | { name: string })[]): FuseBlock {
  const opts = isOptions(args[args.length - 1]) ? (args.pop() as { name?: string }) : {};
  const children = childrenOf('Fuse', args);
  return { type: 'Fuse', children, name: opts.name ?? children.map((c) => (typeof c === 'string' ? c : c.type)).join(',') };
}

/** `Average('a', 'b', { weights, normalizeWeights })`; weights default to 1/n and are normalised to sum 1. */
export function Average(...args: (Child | { weights?: number[]; normalizeWeights?: boolean })[]): AverageBlock {
  const opts = isOptions(args[args.length - 1]) ? (args.pop() as { weights?: number[]; normalizeWeights?: boolean }) : {};
  const children = childrenOf('Average', args);
  let weights = opts.weights ?? children.map(() => 1 / children.length);
  if (weights.length !== children.length || !weights.every((w) => Number.isFinite(w))) {
    throw new CompositionError(`Average weights ${JSON.stringify(opts.weights)} must be ${children.length} finite numbers`, 'Average');
  }
  if (opts.normalizeWeights ?? true) {
    const sum = weights.reduce((a, b) => a + b, 0);
    if (sum === 0) throw new CompositionError('Average weights sum to 0 and cannot be normalised', 'Average');
    weights = weights.map((w) => w / sum);
  }
  return { type: 'Average', children, weights };
}

/** `Split('a', 'b', { splits: [64, 64] })`: sequence positions [0, 64) to a, the rest to b. */
export function Split(...args: [...Child[], { splits: number | number[] }]): SplitBlock {
  const opts = args[args.length - 1];
  if (!isOptions(opts) || opts.splits === undefined) throw new CompositionError('Split needs a final { splits } argument', 'Split');
  const children = childrenOf('Split', args.slice(0, -1));
  const splits = typeof opts.splits === 'number' ? children.map(() => opts.splits as number) : (opts.splits as number[]);
  if (splits.length !== children.length || !splits.every((s) => Number.isInteger(s) && s >= 0)) {
    throw new CompositionError(`Split splits ${JSON.stringify(opts.splits)} must be ${children.length} non-negative integers`, 'Split');
  }
  return { type: 'Split', children, splits: [...splits] };
}

/** Which blocks may appear directly inside which (as `adapters`' ALLOWED_NESTINGS). */
export const ALLOWED_NESTINGS: Record<BlockType, readonly (BlockType | 'name')[]> = {
  Stack: ['name', 'Fuse', 'Split', 'Parallel', 'BatchSplit', 'Average'],
  Fuse: ['name', 'Stack'],
  Split: ['name', 'Split', 'Stack', 'BatchSplit', 'Average'],
  Parallel: ['name', 'Stack', 'BatchSplit', 'Average'],
  BatchSplit: ['name', 'Stack', 'Split', 'BatchSplit', 'Average'],
  Average: ['name', 'Stack', 'Split', 'BatchSplit'],
};

const describe = (c: Child) => (typeof c === 'string' ? `'${c}'` : c.type);

/**
 * Checks nesting and depth, and returns the composition with a bare name wrapped in a Stack (as `adapters`
 * does at level 0). Does not know about methods; see AdapterHost.setActiveAdapters for that.
 */
export function normalizeComposition(comp: AdapterComposition): CompositionBlock {
  const root: CompositionBlock = typeof comp === 'string' ? Stack(comp) : comp;
  const visit = (node: Child, level: number) => {
    if (typeof node === 'string') return;
    if (!node || typeof node !== 'object' || typeof node.type !== 'string' || !Object.hasOwn(ALLOWED_NESTINGS, node.type)) {
      throw new CompositionError(`unknown composition block ${JSON.stringify(node)}`);
    }
    if (!Array.isArray(node.children) || node.children.length === 0) {
      throw new CompositionError(`${node.type} needs a non-empty children list, got ${JSON.stringify(node.children)}`, node.type);
    }
    if (level >= 2 && node.type !== 'Stack') {
      throw new CompositionError(`composition is too deep: ${node.type} at nesting level ${level} (only Stack or names below level 1)`, node.type);
    }
    for (const child of node.children) {
      const kind = typeof child === 'string' ? 'name' : child && typeof child === 'object' ? child.type : undefined;
      if (!ALLOWED_NESTINGS[node.type].includes(kind as BlockType | 'name')) {
        const shown = kind === undefined ? JSON.stringify(child) : describe(child);
        throw new CompositionError(
          `${node.type} cannot contain ${shown} (allowed: ${ALLOWED_NESTINGS[node.type].join(', ')})`,
          node.type,
          typeof child === 'string' ? child : String(kind ?? shown),
        );
      }
      visit(child, level + 1);
    }
  };
  visit(root, 0);
  const leaves = leavesWithAncestors(root).length;
  if (leaves > MAX_COMPOSITION_ADAPTERS)
    throw new CompositionError(`composition names ${leaves} adapters; at most ${MAX_COMPOSITION_ADAPTERS} may be combined in one composition`, root.type);
  parallelChannels(root); // validates consistent Parallel widths
  return root;
}

/**
 * Checks that every BatchSplit's sizes add up to the rows it receives, for a call on `batch` input rows (a
 * BatchSplit inside a Parallel branch sees the whole batch). InputError naming the sizes otherwise — before
 * the forward, so a BatchSplit whose adapters act nowhere is checked too.
 */
export function checkBatchSizes(comp: AdapterComposition, batch: number): void {
  const walk = (node: Child, rows: number) => {
    if (typeof node === 'string') return;
    if (node.type === 'BatchSplit') {
      const total = node.batchSizes.reduce((a, c) => a + c, 0);
      if (total !== rows) throw new InputError(`BatchSplit batchSizes [${node.batchSizes}] sum to ${total} but the batch has ${rows} rows`, 'batchSizes');
      node.children.forEach((c, i) => walk(c, node.batchSizes[i]));
      return;
    }
    for (const c of node.children) walk(c, rows);
  };
  walk(comp, batch);
}

/** Every adapter name in a composition, with the chain of blocks above it. */
export function leavesWithAncestors(comp: AdapterComposition): { name: string; ancestors: CompositionBlock[] }[] {
  const out: { name: string; ancestors: CompositionBlock[] }[] = [];
  const walk = (node: Child, ancestors: CompositionBlock[]) => {
    if (typeof node === 'string') out.push({ name: node, ancestors });
    else for (const c of node.children) walk(c, [...ancestors, node]);
  };
  walk(comp, []);
  return out;
}

/**
 * How many copies of the batch a composition needs (the width of its Parallel block, 1 without one).
 * adapterkit replicates the batch once, at the model's input, so every tensor every layer combines is
 * replicated consistently (queries, keys, masks, position bias, encoder states, caches) by construction.
 */
export function parallelChannels(comp: AdapterComposition | null | undefined): number {
  if (!comp || typeof comp === 'string') return 1;
  let width = 1;
  const walk = (node: Child) => {
    if (typeof node === 'string') return;
    if (node.type === 'Parallel') {
      if (width !== 1 && width !== node.children.length) {
        throw new CompositionError(`two Parallel blocks of different widths (${width} and ${node.children.length}) in one composition`, 'Parallel');
      }
      width = node.children.length;
    }
    node.children.forEach(walk);
  };
  walk(comp);
  return width;
}

/** Compact text form, e.g. `Stack(a, Parallel(b, c))`. */
export function compositionToString(comp: AdapterComposition): string {
  if (typeof comp === 'string') return comp;
  return `${comp.type}(${comp.children.map(compositionToString).join(', ')})`;
}

/**
 * Parallel's row layout — defined here and nowhere else: a model replicates its batch once per branch at
 * its input, branch-major, so rows [i·B, (i+1)·B) belong to branch i (and generation returns them so).
 */
export function replicateRows(t: Tensor, channels: number): Tensor {
  return channels === 1 ? t : tf.tile(t, [channels, ...new Array(t.rank - 1).fill(1)]);
}

/** One field of every part, stacked along the rows (a composition's branches or splits joined back). */
export function concatRows<P>(parts: readonly P[], field: (part: P) => Tensor): Tensor {
  return tf.concat(parts.map(field), 0);
}

/** Rows [start, end) of branch `i` among `channels` branches over `rows` replicated rows. */
export function branchRows(i: number, rows: number, channels: number): [number, number] {
  const b = rows / channels;
  return [i * b, (i + 1) * b];
}
