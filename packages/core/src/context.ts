import { tf, type Tensor } from '@adapterkit/backend';
import type { CompositionBlock } from './composition.js';

/**
 * One forward context per forward call (or per generation): the active composition, AdapterDrop's skipped
 * layers, the Parallel replication factor, training mode, and a memo for states computed once per call
 * (prefix keys/values). Tensors memoised here survive tf.tidy and are freed by dispose().
 */
export class ForwardContext {
  readonly memo = new Map<string, unknown>();
  /** Gating outputs by adapter/site, for inspection (not kept unless `recordGates`). */
  readonly gates = new Map<string, Tensor>();
  private readonly owned: Tensor[] = [];

  constructor(
    readonly composition: CompositionBlock | null,
    readonly options: {
      training?: boolean;
      skipLayers?: ReadonlySet<number>;
      parallelChannels?: number;
      /** Rows per Parallel channel (the user's batch size). */
      originalBatchSize?: number;
      seed?: number;
      recordGates?: boolean;
      /** Rows per input example (beam search expands each row into numBeams rows); scales BatchSplit sizes. */
      rowMultiplier?: number;
    } = {},
  ) {}

  get training(): boolean {
    return this.options.training ?? false;
  }
  get parallelChannels(): number {
    return this.options.parallelChannels ?? 1;
  }
  get originalBatchSize(): number {
    return this.options.originalBatchSize ?? 0;
  }
  get rowMultiplier(): number {
    return this.options.rowMultiplier ?? 1;
  }
  isSkipped(layer: number): boolean {
    return this.options.skipLayers?.has(layer) ?? false;
  }

  /** A deterministic per-call seed for dropout (different per site via `salt`). */
  dropoutSeed(salt: number): number {
    return ((this.options.seed ?? 0) * 1_000_003 + salt) % 2_147_483_647;
  }

  /** Computes once per context and keeps the tensors alive until dispose(). */
  remember<T extends Tensor | Tensor[] | Record<string, Tensor>>(key: string, make: () => T): T {
    if (this.memo.has(key)) return this.memo.get(key) as T;
    const value = make();
    const tensors: Tensor[] = value instanceof tf.Tensor ? [value] : Array.isArray(value) ? value : Object.values(value as Record<string, Tensor>);
    for (const t of tensors) {
      tf.keep(t);
      this.owned.push(t);
    }
    this.memo.set(key, value);
    return value;
  }

  dispose(): void {
    for (const t of this.owned) if (!t.isDisposed) t.dispose();
    this.owned.length = 0;
    this.memo.clear();
    for (const g of this.gates.values()) if (!g.isDisposed) g.dispose();
    this.gates.clear();
  }
}
