import type { AdapterComposition, CompositionBlock, ForwardContext } from '@adapterkit/core';
import { branchRows, CompositionError, InputError } from '@adapterkit/core';

/**
 * What a method's layer supplies so that one dispatcher can walk every composition block for it
 * (the shape of `adapters`' ComposableAdapterLayerBase). `S` is the method's state at this layer:
 * LoRA carries (input, delta), bottleneck (hidden, residual), prefix (keys, values, mask).
 */
export interface LayerPrimitives<S> {
  /** Does this layer hold adapter `name` (the method owns it and it is not left out here)? */
  has(name: string): boolean;
  /** Runs one adapter. */
  single(name: string, state: S): S;
  /** Number of rows (batch) the state covers. */
  rows(state: S): number;
  sliceRows(state: S, start: number, end: number): S;
  /** Re-assembles row parts (in order). Never called with an empty list. */
  concatRows(parts: S[]): S;
  /** Weighted combination of the children's results (Average). */
  average?(results: S[], weights: number[], input: S): S;
  /** AdapterFusion over the children's results. */
  fuse?(block: CompositionBlock & { type: 'Fuse' }, results: S[], input: S): S;
  /** Sequence split (Split). */
  split?(block: CompositionBlock & { type: 'Split' }, state: S, run: (child: AdapterComposition, s: S) => S): S;
  /** Called for states that no adapter touched in a row range (e.g. to materialise a zero delta). */
  identity?(state: S): S;
}

/** Does any adapter in this subtree live at this layer? Untouched subtrees cost nothing. */
export function touches(node: AdapterComposition, prims: Pick<LayerPrimitives<unknown>, 'has'>): boolean {
  return typeof node === 'string' ? prims.has(node) : node.children.some((c) => touches(c, prims));
}

/**
 * Applies a composition to one layer's state. Parallel works on rows that the model already replicated at
 * its input (ctx.parallelChannels copies of the batch); BatchSplit partitions rows and skips empty parts.
 */
export function composeLayer<S>(node: AdapterComposition, state: S, prims: LayerPrimitives<S>, ctx: ForwardContext): S {
  if (!touches(node, prims)) return state;
  if (typeof node === 'string') return prims.single(node, state);
  const run = (child: AdapterComposition, s: S) => composeLayer(child, s, prims, ctx);
  switch (node.type) {
    case 'Stack':
      return node.children.reduce((s, child) => run(child, s), state);
    case 'Parallel': {
      const rows = prims.rows(state);
      const n = node.children.length;
      if (rows % n !== 0) throw new CompositionError(`Parallel over ${n} adapters needs a replicated batch, got ${rows} rows`, 'Parallel');
      return prims.concatRows(
        node.children.map((child, i) => {
          const [start, end] = branchRows(i, rows, n);
          return ctx.withRowOffset(start, () => run(child, prims.sliceRows(state, start, end)));
        }),
      );
    }
    case 'BatchSplit': {
      const rows = prims.rows(state);
      const sizes = node.batchSizes.map((s) => s * ctx.rowMultiplier);
      const total = sizes.reduce((a, c) => a + c, 0);
      if (total !== rows)
        throw new InputError(`BatchSplit batchSizes [${node.batchSizes}] sum to ${total / ctx.rowMultiplier} but the batch has ${rows / ctx.rowMultiplier} rows`, 'batchSizes');
      const parts: S[] = [];
      let start = 0;
      node.children.forEach((child, i) => {
        const size = sizes[i];
        // Empty parts are skipped entirely: never sliced, never concatenated (seed failure: [2, 0]).
        if (size > 0) {
          const from = start;
          parts.push(ctx.withRowOffset(from, () => run(child, prims.sliceRows(state, from, from + size))));
        }
        start += size;
      });
      return parts.length === 1 ? parts[0] : prims.concatRows(parts);
    }
    case 'Average': {
      if (!prims.average) throw new CompositionError('Average is not supported by this method', 'Average');
      return prims.average(
        node.children.map((c) => run(c, state)),
        node.weights,
        state,
      );
    }
    case 'Fuse': {
      if (!prims.fuse) throw new CompositionError('Fuse is not supported by this method', 'Fuse');
      return prims.fuse(
        node,
        node.children.map((c) => run(c, state)),
        state,
      );
    }
    case 'Split': {
      if (!prims.split) throw new CompositionError('Split is not supported by this method', 'Split');
      return prims.split(node, state, run);
    }
  }
}

/**
 * Entry point for a method's hook: applies the active composition unless no composition is active, the
 * layer is dropped (AdapterDrop) or no active adapter lives here — in those cases returns undefined so the
 * model runs its plain path.
 */
export function dispatch<S>(layer: number, state: S, prims: LayerPrimitives<S>, ctx: ForwardContext): S | undefined {
  const comp = ctx.composition;
  if (!comp || ctx.isSkipped(layer) || !touches(comp, prims)) return undefined;
  return composeLayer(comp, state, prims, ctx);
}
