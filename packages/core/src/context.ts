import { tf, type Tensor } from '@adapterkit/backend';
import type { CompositionBlock } from './composition.js';

/**
 * One forward context per forward call (or per generation): the active composition, AdapterDrop's skipped
 * layers, the Parallel replication factor, training mode, and a memo for states computed once per call
 * (prefix keys/values). Tensors memoised here survive tf.tidy and are freed by dispose().
 */
/** What a forward (or a whole generation) is run with; fixed when the context is created. */
export interface ForwardOptions {
  /** Training mode: adapters' dropout, AdapterDrop in training. Default false. */
  readonly training?: boolean;
  /** Dropout in the base model too (training only; transformers' behaviour, off by default for adapters). */
  readonly baseDropout?: boolean;
  /** Layers AdapterDrop skips. */
  readonly skipLayers?: ReadonlySet<number>;
  /** Branches of the composition's Parallel block: the batch is replicated this many times at the input. */
  readonly parallelChannels?: number;
  readonly seed?: number;
  /** Keep the gate values of gated adapters in `gates` (inspection). */
  readonly recordGates?: boolean;
  /** Rows per input example (beam search expands each row into numBeams rows); scales BatchSplit sizes. */
  readonly rowMultiplier?: number;
  /** Inputs derived from adapter weights that several contexts may share (continuous batching); inference only. */
  readonly shared?: SharedMemo;
}

/** Most entries a SharedMemo keeps before it starts afresh (one per linear group and adapter set). */
const SHARED_MEMO_ENTRIES = 512;

/**
 * Tensors derived from adapter weights (a fused linear's stacked LoRA factors) shared by many forward
 * contexts: continuous batching makes a context per join, each of which would otherwise rebuild them.
 * An entry is rebuilt when one of its sources changes (a variable assigned anew gets new data), so a
 * reloaded adapter is never served stale. Inference only: a gradient must reach the variables themselves.
 * Owned, and disposed, by whoever created it.
 */
export class SharedMemo {
  private readonly entries = new Map<string, { sources: readonly unknown[]; value: Tensor[] }>();
  /** Every tensor the entries hold (contexts ask per remembered tensor). */
  private readonly held = new Set<Tensor>();

  /** The tensors under `key`, made anew when `sources` (compared element by element) differ. */
  get(key: string, sources: readonly unknown[], make: () => Tensor[]): Tensor[] {
    const hit = this.entries.get(key);
    if (hit && hit.sources.length === sources.length && hit.sources.every((s, i) => s === sources[i])) return hit.value;
    if (hit) this.drop(hit.value);
    else if (this.entries.size >= SHARED_MEMO_ENTRIES) this.dispose();
    const value = make().map((t) => tf.keep(t));
    for (const t of value) this.held.add(t);
    this.entries.set(key, { sources, value });
    return value;
  }

  /** Whether the memo holds this tensor (a context that remembers it must not dispose it). */
  owns(t: Tensor): boolean {
    return this.held.has(t);
  }

  dispose(): void {
    for (const e of this.entries.values()) this.drop(e.value);
    this.entries.clear();
  }

  private drop(value: Tensor[]): void {
    for (const t of value) this.held.delete(t);
    tf.dispose(value);
  }
}

export class ForwardContext {
  readonly memo = new Map<string, unknown>();
  /** Gating outputs by adapter/site, for inspection (not kept unless `recordGates`). */
  readonly gates = new Map<string, Tensor>();
  private readonly owned: Tensor[] = [];
  readonly options: ForwardOptions;

  constructor(
    readonly composition: CompositionBlock | null,
    options: ForwardOptions = {},
  ) {
    this.options = Object.freeze({ ...options });
  }

  get training(): boolean {
    return this.options.training ?? false;
  }
  get baseDropout(): boolean {
    return this.training && (this.options.baseDropout ?? false);
  }
  get parallelChannels(): number {
    return this.options.parallelChannels ?? 1;
  }
  /** The shared memo, when this context may use one (inference outside any gradient recording). */
  get sharedMemo(): SharedMemo | undefined {
    const shared = this.options.shared;
    if (!shared || this.training) return undefined;
    // tfjs records a tape inside tf.grad/variableGrads: a shared tensor would cut the gradient's path
    return (tf.engine() as unknown as { state: { gradientDepth: number } }).state.gradientDepth > 0 ? undefined : shared;
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
      if (this.options.shared?.owns(t)) continue; // the shared memo's, not this context's
      tf.keep(t);
      this.owned.push(t);
    }
    this.memo.set(key, value);
    return value;
  }

  private position: number | undefined = undefined;

  /**
   * Position of the token being decoded in a cached generation step (undefined in full passes). Methods
   * whose decoder-side computation spans positions (sequence gates) use it to continue running statistics.
   */
  get decodingPosition(): number | undefined {
    return this.position;
  }

  /** Runs one cached decoding step at position `t` (the model's decoding loop; nothing else sets it). */
  atDecodingPosition<T>(t: number, step: () => T): T {
    if (this.position !== undefined) throw new Error(`a decoding step at position ${this.position} is already running`);
    this.position = t;
    try {
      return step();
    } finally {
      this.position = undefined;
    }
  }

  private readonly offsets: number[] = [0];
  private readonly rowStates = new Map<string, { offset: number; value: Tensor }>();

  /** Absolute index of the first row the current dispatch branch sees (Parallel/BatchSplit slice rows). */
  get rowOffset(): number {
    return this.offsets[this.offsets.length - 1];
  }

  /** Runs `fn` for a row slice starting `start` rows into the current one. */
  withRowOffset<T>(start: number, fn: () => T): T {
    this.offsets.push(this.rowOffset + start);
    try {
      return fn();
    } finally {
      this.offsets.pop();
    }
  }

  /**
   * Adds `values` ([rows, …]) to the running sum kept under `key` for the current rows and returns the new
   * sum. The sums live for the whole generation and follow beam reordering (reorderRows).
   */
  runningSum(key: string, values: Tensor): Tensor {
    const prev = this.rowStates.get(key);
    const sum = prev ? prev.value.add(values) : values.clone();
    tf.keep(sum);
    if (prev && !prev.value.isDisposed) prev.value.dispose();
    this.rowStates.set(key, { offset: this.rowOffset, value: sum });
    return sum;
  }

  /** Reorders every running statistic by a row permutation (beam search): row r takes row index[r]. */
  reorderRows(index: number[]): void {
    for (const [key, st] of this.rowStates) {
      const rows = st.value.shape[0] as number;
      const local = index.slice(st.offset, st.offset + rows).map((i) => i - st.offset);
      const next = tf.tidy(() => tf.gather(st.value, tf.tensor1d(local, 'int32')));
      st.value.dispose();
      this.rowStates.set(key, { offset: st.offset, value: tf.keep(next) });
    }
  }

  dispose(): void {
    for (const st of this.rowStates.values()) if (!st.value.isDisposed) st.value.dispose();
    this.rowStates.clear();
    for (const t of this.owned) if (!t.isDisposed) t.dispose();
    this.owned.length = 0;
    this.memo.clear();
    for (const g of this.gates.values()) if (!g.isDisposed) g.dispose();
    this.gates.clear();
  }
}
