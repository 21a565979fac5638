import { tf } from '@adapterkit/backend';
import { BatchSplit, normalizeComposition, type AdapterComposition } from './composition.js';
import { ForwardContext, SharedMemo } from './context.js';
import { AdapterError, CompositionError, InputError } from './errors.js';
import { tokenChooser, type RowDecodeOptions, type Seq2SeqModel, type TokenChooser } from './generation.js';

/**
 * Continuous batching (iteration-level scheduling, as Orca/vLLM/TGI): sequences join a running decode at
 * the next step and leave when they finish, each keeping its own timeline in the KV cache.
 *
 * Why a shifted timeline is exact: a decoder's self-attention sees relative positions only (a relative bias is
 * a function of key − query), so a row whose first token sits at cache slot s, with slots before s masked,
 * computes what it computes alone from slot 0.
 */

/** Where one row of a regrouped decoder state comes from. */
export interface RowPick {
  /** Index of the source state. */
  state: number;
  /** Row in that state. */
  row: number;
  /** Tokens of this row already in the source's cache (its own decoding position). */
  length: number;
}

/** What continuous batching needs from a model beyond generation: row-wise edits of a decoder state. */
export interface RowwiseDecoder<State> extends Seq2SeqModel<State> {
  /**
   * A new state whose row i is `picks[i]`, each row keeping its own timeline; the next step writes slot
   * max(length), with `capacity` slots in all. Consumes the source states (and their contexts); `ctx` is
   * the new state's context. Throws when a state holds per-sequence adapter state (a decoder prefix).
   */
  regroupDecoderRows(states: State[], picks: RowPick[], capacity: number, ctx: ForwardContext): State;
}

/**
 * The BatchSplit child of base-model rows: a name no adapter can have (adapter names are non-empty), so
 * no layer acts on those rows.
 */
export const BASE_MODEL_ROWS = '';

/** One request in a decode batch: its rows decode together and leave together. */
export interface DecodeEntry {
  /** Source token ids per row (unpadded). */
  rows: number[][];
  /** Adapter for these rows; null = the base model. */
  adapter: string | null;
  maxNewTokens: number;
  /**
   * generate's options for this request (sampling and its seed, temperature/topK/topP, logits processors,
   * numReturnSequences, eosTokenId, …); absent: greedy with the model's generation config, as generate.
   */
  options?: RowDecodeOptions;
}

interface Active {
  entry: DecodeEntry;
  /** How this request picks its tokens (generate's rule for it alone). */
  chooser: TokenChooser;
  /** Decoding rows: each source row, numReturnSequences times. */
  rows: number[][];
  /** Sequences so far, the decoder start token first (generate's output convention). */
  sequences: number[][];
  unfinished: boolean[];
  /** Row offset of this entry in the current state. */
  offset: number;
}

/** What one step produced for an entry. */
export interface StepResult {
  entry: DecodeEntry;
  /** This step's token per row (pad for rows that already finished). */
  tokens: number[];
  /** Every sequence so far (start token first); final when `done`. */
  sequences: number[][];
  done: boolean;
}

/**
 * A running greedy decode whose membership changes between steps. Rows are kept grouped by adapter (one
 * BatchSplit over base-model rows and each adapter's rows), so one step serves every tenant. Each entry's
 * ids equal what `generate` gives the same rows alone (greedy, cached).
 */
export class DecodeBatch<State> {
  private state: State | undefined;
  private active: Active[] = [];
  private joining: Active[] = [];
  private leaving = new Set<DecodeEntry>();
  /** Stacked adapter factors shared by the contexts of every join (each would rebuild them). */
  private readonly shared = new SharedMemo();

  constructor(private readonly model: RowwiseDecoder<State>) {}

  /** Rows decoding for entries still running (joining entries not counted). */
  get rows(): number {
    return this.active.reduce((a, x) => a + (this.leaving.has(x.entry) ? 0 : x.rows.length), 0);
  }
  get entries(): number {
    return this.active.length + this.joining.length;
  }

  /** Adds an entry: it takes part from the next step. Its options are checked as generate checks them. */
  join(entry: DecodeEntry): void {
    if (entry.rows.length === 0 || entry.rows.some((r) => r.length === 0)) throw new InputError('a decode entry needs non-empty rows', 'rows');
    if (!Number.isInteger(entry.maxNewTokens) || entry.maxNewTokens < 1) throw new InputError(`maxNewTokens must be an integer ≥ 1, got ${entry.maxNewTokens}`, 'maxNewTokens');
    if (entry.options && 'maxNewTokens' in entry.options) throw new InputError("a decode entry's maxNewTokens is its own field, not an option", 'maxNewTokens');
    if (entry.adapter !== null && !this.model.adapters.hasAdapter(entry.adapter)) throw new AdapterError(`no adapter named '${entry.adapter}' is loaded`, entry.adapter);
    if (entry.adapter !== null && !this.model.adapters.decodesRowwise(entry.adapter))
      throw new CompositionError(
        `adapter '${entry.adapter}' keeps per-sequence decoding state (a prefix, a prompt or a sequence gate): it decodes alone, not in a shared batch`,
        entry.adapter,
      );
    const chooser = tokenChooser(this.model, entry.rows, { ...entry.options, maxNewTokens: entry.maxNewTokens });
    const rows = entry.rows.flatMap((r) => new Array<number[]>(chooser.expand).fill(r));
    const start = this.model.generationConfig.decoderStartTokenId;
    this.joining.push({ entry, chooser, rows, sequences: rows.map(() => [start]), unfinished: rows.map(() => true), offset: 0 });
  }

  /** Drops an entry (a cancelled request): its rows leave before the next step. */
  leave(entry: DecodeEntry): void {
    const j = this.joining.findIndex((a) => a.entry === entry);
    if (j >= 0) this.joining.splice(j, 1);
    else if (this.active.some((a) => a.entry === entry)) this.leaving.add(entry);
  }

  /**
   * One decode step for every row. Newcomers join first. Rows of entries that left stay in the state as
   * dead rows (fed pad, never reported) until they are a quarter of it: a regroup costs more than a row.
   */
  async step(): Promise<StepResult[]> {
    const total = this.active.reduce((a, x) => a + x.rows.length, 0);
    const dead = total - this.rows;
    if (this.joining.length > 0 || (dead > 0 && (dead * 4 >= total || dead === total))) this.regroup();
    if (!this.state) return [];
    const pad = this.model.generationConfig.padTokenId;
    const last = this.active.flatMap((a) => (this.leaving.has(a.entry) ? a.sequences.map(() => pad) : a.sequences.map((s) => s[s.length - 1])));
    const running = this.active.filter((a) => !this.leaving.has(a.entry));
    const tokens = tf.tensor1d(last, 'int32');
    let chosen: Int32Array;
    // the scores come to the host only when some request samples or has a processor; greedy ones take the argmax
    let scores: Float32Array | undefined;
    let V = 0;
    try {
      const logits = this.model.decodeStep(this.state, tokens);
      try {
        const arg = tf.argMax(logits, 1);
        chosen = (await arg.data()) as Int32Array;
        arg.dispose();
        if (running.some((a) => a.chooser.onHost)) {
          V = logits.shape[1] as number;
          scores = (await logits.data()) as Float32Array;
        }
      } finally {
        logits.dispose();
      }
    } finally {
      tokens.dispose();
    }
    return running.map((a) => {
      const host = scores && a.chooser.onHost ? scores : undefined;
      const out = a.sequences.map((seq, r) => {
        if (!a.unfinished[r]) {
          seq.push(pad);
          return pad;
        }
        const i = a.offset + r;
        const tok = host ? a.chooser.choose(host.slice(i * V, (i + 1) * V), r, seq) : chosen[i];
        seq.push(tok);
        if (a.chooser.eos.has(tok)) a.unfinished[r] = false;
        return tok;
      });
      const done = !a.unfinished.some(Boolean) || a.sequences[0].length - 1 >= a.chooser.maxNewTokens;
      if (done) this.leaving.add(a.entry);
      return { entry: a.entry, tokens: out, sequences: a.sequences, done };
    });
  }

  /** Applies pending joins and leaves: one new state, rows grouped by adapter, each on its own timeline. */
  private regroup(): void {
    const stay = this.active.filter((a) => !this.leaving.has(a.entry));
    const incoming = this.joining;
    this.joining = [];
    this.leaving.clear();
    const states: State[] = [];
    if (this.state) states.push(this.state);
    this.state = undefined;
    const picks: RowPick[] = [];
    const all = [...stay, ...incoming];
    if (all.length === 0) {
      for (const s of states) this.model.disposeDecoderState(s);
      this.active = [];
      return;
    }
    // The newcomers are encoded in buckets of similar input length (one BatchSplit over each bucket's
    // adapters), then regrouped in: an input padded to the longest would cost its rows × that length.
    const source = new Map<Active, number>();
    try {
      for (const bucket of lengthBuckets(incoming)) {
        const inBucket = groupByAdapter(bucket);
        let off = 0;
        for (const a of inBucket) {
          a.offset = off;
          off += a.rows.length;
          source.set(a, states.length);
        }
        states.push(this.startEntries(inBucket));
      }
    } catch (e) {
      for (const s of states) this.model.disposeDecoderState(s);
      this.active = [];
      throw e;
    }
    const grouped = groupByAdapter(all);
    let offset = 0;
    for (const a of grouped) {
      const fromState = source.get(a) ?? 0;
      const length = a.sequences[0].length - 1;
      for (let r = 0; r < a.rows.length; r++) picks.push({ state: fromState, row: a.offset + r, length });
      a.offset = offset;
      offset += a.rows.length;
    }
    const used = Math.max(...grouped.map((a) => a.sequences[0].length - 1));
    // room for a few more steps; the model grows the cache when a row runs past it (a step costs more
    // the more slots it holds, so the cache follows the tokens generated, not the maximum)
    const capacity = used + Math.min(32, Math.max(1, ...grouped.map((a) => a.chooser.maxNewTokens - (a.sequences[0].length - 1))));
    const ctx = this.context(grouped);
    try {
      this.state = this.model.regroupDecoderRows(states, picks, capacity, ctx);
    } catch (e) {
      ctx.dispose();
      this.active = [];
      throw e;
    }
    this.active = grouped;
  }

  private startEntries(entries: Active[]): State {
    const rows = entries.flatMap((a) => a.rows);
    const T = Math.max(...rows.map((r) => r.length));
    const ids = tf.tensor2d(
      rows.flatMap((r) => [...r, ...new Array(T - r.length).fill(0)]),
      [rows.length, T],
      'int32',
    );
    const mask = tf.tensor2d(
      rows.flatMap((r) => [...new Array(r.length).fill(1), ...new Array(T - r.length).fill(0)]),
      [rows.length, T],
      'int32',
    );
    const ctx = this.context(entries);
    try {
      return this.model.startDecoding(ids, mask, ctx, 1);
    } catch (e) {
      ctx.dispose();
      throw e;
    } finally {
      tf.dispose([ids, mask]);
    }
  }

  /**
   * The context of grouped rows. Built here rather than by the host, which refuses names it does not hold:
   * the base-model child (BASE_MODEL_ROWS) names no adapter on purpose; every other name was checked at join.
   */
  private context(entries: Active[]): ForwardContext {
    const comp = compositionFor(entries);
    return new ForwardContext(comp === null ? null : normalizeComposition(comp), { skipLayers: this.model.adapters.skippedLayers, shared: this.shared });
  }

  /** Frees the running state; entries still decoding are dropped. */
  dispose(): void {
    this.shared.dispose();
    if (this.state) this.model.disposeDecoderState(this.state);
    this.state = undefined;
    this.active = [];
    this.joining = [];
    this.leaving.clear();
  }
}

/** A bucket closes at this many rows once a longer input would be over twice its shortest (an encode costs ~3 ms of dispatch). */
const MIN_BUCKET_ROWS = 16;

/**
 * Newcomers in buckets of similar input length (shortest first): the encoder costs rows × padded length
 * (attention: × length²), so 200 mixed requests padded to their longest would spend most of it on padding.
 */
function lengthBuckets(entries: Active[]): Active[][] {
  const sorted = entries.map((a) => ({ a, length: Math.max(...a.rows.map((r) => r.length)) })).sort((x, y) => x.length - y.length);
  const buckets: Active[][] = [];
  let bucket: Active[] = [];
  let shortest = 0;
  let rows = 0;
  for (const { a, length } of sorted) {
    if (rows >= MIN_BUCKET_ROWS && length > 2 * shortest) {
      buckets.push(bucket);
      bucket = [];
      rows = 0;
    }
    if (bucket.length === 0) shortest = length;
    bucket.push(a);
    rows += a.rows.length;
  }
  if (bucket.length > 0) buckets.push(bucket);
  return buckets;
}

/** Entries ordered so each adapter's rows are contiguous (base-model rows first), order kept within. */
function groupByAdapter(entries: Active[]): Active[] {
  const keys = [...new Set(entries.map((a) => a.entry.adapter ?? BASE_MODEL_ROWS))].sort();
  return keys.flatMap((k) => entries.filter((a) => (a.entry.adapter ?? BASE_MODEL_ROWS) === k));
}

/** The composition of grouped rows: null for base rows only, the adapter alone, or one BatchSplit. */
function compositionFor(grouped: Active[]): AdapterComposition | null {
  const sizes = new Map<string, number>();
  for (const a of grouped) {
    const k = a.entry.adapter ?? BASE_MODEL_ROWS;
    sizes.set(k, (sizes.get(k) ?? 0) + a.rows.length);
  }
  const names = [...sizes.keys()];
  if (names.length === 1) return names[0] === BASE_MODEL_ROWS ? null : names[0];
  return BatchSplit(...names, { batchSizes: names.map((n) => sizes.get(n)!) });
}
