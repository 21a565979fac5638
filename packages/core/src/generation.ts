import { tf, type Tensor } from '@adapterkit/backend';
import { normalizeComposition, parallelChannels, replicateRows, type AdapterComposition } from './composition.js';
import { AbortedError, ConfigError, InputError } from './errors.js';
import { checkGenerationSetting, GENERATION_SETTING_NAMES, type GenerationDefaults, type GenerationSettings } from './generation-config.js';
import { applyLogitsProcessors, buildLogitsProcessors, type LogitsProcessor } from './logits-processors.js';
import { type OptionKeys, rejectUnknownOptions } from './options.js';
import { SeededRandom } from './rng.js';
import type { AdapterHost } from './host.js';
import type { ForwardContext } from './context.js';

export type { GenerationDefaults, GenerationSettings } from './generation-config.js';

/**
 * Sizes a generate call may reach; checked before anything is allocated. `rows` counts decoding rows
 * (inputs × Parallel branches × beams or returned sequences); `memoryBytes` bounds the model's estimate
 * of what the call holds at its longest (KV caches at maxNewTokens, cross keys/values, encoder, logits).
 */
export interface GenerationLimits {
  maxNewTokens: number;
  numBeams: number;
  numReturnSequences: number;
  rows: number;
  memoryBytes: number;
}

export const DEFAULT_GENERATION_LIMITS: Readonly<GenerationLimits> = {
  maxNewTokens: 1 << 20,
  numBeams: 64,
  numReturnSequences: 64,
  rows: 4096,
  memoryBytes: 2 * 1024 ** 3,
};

export interface GenerateOptions extends GenerationSettings {
  inputIds?: IdsInput;
  attentionMask?: IdsInput;
  seed?: number;
  eosTokenId?: number | number[];
  /** Called after each step with the tokens chosen for every row (streaming). */
  onToken?: (step: number, tokens: number[]) => void;
  /** Recompute the whole decoder each step instead of using the KV cache (for equivalence tests). */
  useCache?: boolean;
  /** Override the active composition for this call. */
  composition?: AdapterComposition | null;
  /** Stops the generation at the next step with an AbortedError (a client went away). */
  signal?: AbortSignal;
  /** Tighter (or looser) sizes than DEFAULT_GENERATION_LIMITS for this call. */
  limits?: Partial<GenerationLimits>;
}

/** Token ids as number[][] (rectangular) or an int32 tensor [batch, length]. */
export type IdsInput = number[][] | Tensor;

/**
 * What generation needs from an encoder-decoder model: its adapters, its defaults, id validation, a full
 * forward (the uncached path) and a KV-cached decoder (any state type the model keeps).
 */
export interface Seq2SeqModel<State = unknown> {
  readonly adapters: AdapterHost;
  readonly generationConfig: GenerationDefaults;
  /** True once dispose() ran: generate refuses with a typed error. */
  readonly isDisposed?: boolean;
  /** Validates ids (rectangular, in the vocabulary) and returns an int32 tensor the caller owns. */
  toIds(input: IdsInput, argument: string): Tensor;
  forward(input: { inputIds: IdsInput; attentionMask?: IdsInput; decoderInputIds: IdsInput; composition?: AdapterComposition | null; expandedRows?: { rowMultiplier: number } }): {
    logits: Tensor;
    encoderLastHiddenState: Tensor;
  };
  /**
   * Encodes `ids` (already replicated/expanded to the decoding rows) and returns a decoder state whose KV
   * cache starts with `capacity` token slots and grows with the output, up to `maxCapacity`.
   */
  startDecoding(ids: Tensor, mask: Tensor, ctx: ForwardContext, capacity?: number, maxCapacity?: number): State;
  /** One step for every row: logits [rows, vocab] (the caller owns them). */
  decodeStep(state: State, tokens: Tensor): Tensor;
  reorderDecoderState(state: State, index: number[]): void;
  disposeDecoderState(state: State): void;
  /** Bytes a generation of this shape holds at its longest (budgets are checked against it before compute). */
  estimateGenerationBytes?(shape: { rows: number; sourceLength: number; targetLength: number }): number;
}

/** Steps through the decoder: cached (KV cache) or by full recomputation; same interface. */
interface Stepper {
  /** Logits [rows, vocab] for the next position given the tokens chosen so far (sequences include the start token). */
  next(sequences: number[][], lastTokens: number[]): Tensor;
  reorder(index: number[]): void;
  dispose(): void;
}

/** Slots a KV cache starts with: it doubles when a generation runs past them, so cost follows the output. */
const INITIAL_CACHE_SLOTS = 32;

function makeStepper(
  model: Seq2SeqModel,
  ids: Tensor,
  mask: Tensor,
  composition: AdapterComposition | null | undefined,
  rowMultiplier: number,
  maxNewTokens: number,
  useCache: boolean,
): Stepper {
  const ctx = model.adapters.createContext({ rowMultiplier, composition });
  if (useCache) {
    let state: unknown;
    try {
      const max = Math.max(1, maxNewTokens);
      state = model.startDecoding(ids, mask, ctx, Math.min(max, INITIAL_CACHE_SLOTS), max);
    } catch (e) {
      ctx.dispose();
      throw e;
    }
    return {
      next: (_seqs, last) => {
        const tokens = tf.tensor1d(last, 'int32');
        try {
          return model.decodeStep(state, tokens);
        } finally {
          tokens.dispose();
        }
      },
      reorder: (index) => model.reorderDecoderState(state, index),
      dispose: () => model.disposeDecoderState(state),
    };
  }
  // Uncached: rerun encoder + decoder on the whole prefix every step (reference path for tests).
  return {
    next: (seqs) =>
      tf.tidy(() => {
        const out = model.forward({ inputIds: ids, attentionMask: mask, decoderInputIds: seqs, composition: ctx.composition, expandedRows: { rowMultiplier } });
        const [rows, T, V] = out.logits.shape as number[];
        return out.logits.slice([0, T - 1, 0], [rows, 1, V]).reshape([rows, V]);
      }),
    reorder: () => {},
    dispose: () => ctx.dispose(),
  };
}

const GENERATE_OPTIONS = {
  inputIds: true,
  attentionMask: true,
  maxNewTokens: true,
  maxLength: true,
  minLength: true,
  minNewTokens: true,
  numBeams: true,
  numReturnSequences: true,
  lengthPenalty: true,
  earlyStopping: true,
  doSample: true,
  temperature: true,
  topK: true,
  topP: true,
  typicalP: true,
  repetitionPenalty: true,
  noRepeatNgramSize: true,
  encoderNoRepeatNgramSize: true,
  badWordsIds: true,
  forcedBosTokenId: true,
  forcedEosTokenId: true,
  seed: true,
  eosTokenId: true,
  onToken: true,
  useCache: true,
  composition: true,
  signal: true,
  limits: true,
} as const satisfies OptionKeys<GenerateOptions>;

const LIMIT_KEYS = { maxNewTokens: true, numBeams: true, numReturnSequences: true, rows: true, memoryBytes: true } as const satisfies OptionKeys<GenerationLimits>;

/** transformers' GenerationConfig defaults where they differ from "off" (top_k 50 applies when sampling). */
const TRANSFORMERS_DEFAULTS = { topK: 50 } as const;

/** Rows and length of an ids input, read without allocating (undefined when malformed: toIds reports it). */
function inputShape(input: IdsInput): [number, number] | undefined {
  if (input instanceof tf.Tensor) return input.rank === 2 ? [input.shape[0] as number, input.shape[1] as number] : undefined;
  return Array.isArray(input) && Array.isArray(input[0]) ? [input.length, input[0].length] : undefined;
}

type Plan = ReturnType<typeof plan>;

/** Options + the model's defaults → checked settings and sizes. Throws typed errors; allocates nothing. */
function plan(model: Seq2SeqModel, o: GenerateOptions) {
  rejectUnknownOptions(o, GENERATE_OPTIONS, 'generate');
  rejectUnknownOptions(o.limits, LIMIT_KEYS, 'generate limits');
  const limits = { ...DEFAULT_GENERATION_LIMITS, ...o.limits };
  const d = model.generationConfig;
  const s: GenerationSettings = { ...TRANSFORMERS_DEFAULTS };
  for (const key of GENERATION_SETTING_NAMES) {
    const fromOption = o[key] !== undefined;
    const value = fromOption ? o[key] : d[key];
    if (value === undefined) continue;
    const problem = checkGenerationSetting(key, value);
    if (problem && fromOption) throw new InputError(`generate: ${key} must be ${problem}, got ${JSON.stringify(value)}`, key);
    if (problem) throw new ConfigError(`generation config: ${key} must be ${problem}, got ${JSON.stringify(value)}`, key);
    (s as Record<string, unknown>)[key] = value;
  }
  const maxNewTokens = s.maxNewTokens ?? (s.maxLength !== undefined ? Math.max(0, s.maxLength - 1) : 20);
  const numBeams = s.numBeams ?? 1;
  const numReturn = s.numReturnSequences ?? 1;
  const doSample = s.doSample ?? false;
  const over = (key: keyof GenerationLimits, value: number) => {
    if (value > limits[key]) throw new InputError(`generate: ${key} ${value} exceeds the limit ${limits[key]} (options.limits.${key})`, key);
  };
  over('maxNewTokens', maxNewTokens);
  over('numBeams', numBeams);
  over('numReturnSequences', numReturn);
  if (doSample && numBeams > 1) throw new InputError('beam sampling (doSample with numBeams > 1) is not supported', 'doSample');
  if (numReturn > 1 && numBeams === 1 && !doSample)
    throw new InputError('numReturnSequences > 1 needs beam search (numBeams > 1) or sampling (doSample), as transformers', 'numReturnSequences');
  if (numBeams > 1 && numReturn > numBeams) throw new InputError(`numReturnSequences (${numReturn}) cannot exceed numBeams (${numBeams})`, 'numReturnSequences');
  const eosIds = o.eosTokenId ?? d.eosTokenId;
  if (!(typeof eosIds === 'number' || (Array.isArray(eosIds) && eosIds.every((e) => typeof e === 'number'))))
    throw new InputError('eosTokenId must be a token id or a list of them', 'eosTokenId');
  const eos = Array.isArray(eosIds) ? eosIds : [eosIds];
  const composition = o.composition === undefined ? model.adapters.activeComposition : o.composition === null ? null : normalizeComposition(o.composition);
  const channels = parallelChannels(composition);
  // One row per beam (beam search) or per returned sample; the expansion is contiguous, as transformers'.
  const expand = numBeams > 1 ? numBeams : numReturn;
  const shape = o.inputIds === undefined ? undefined : inputShape(o.inputIds);
  if (shape) {
    const rows = shape[0] * channels * expand;
    const expandKey = numBeams > 1 ? 'numBeams' : 'numReturnSequences';
    if (rows > limits.rows)
      throw new InputError(
        `generate: ${rows} decoding rows (${shape[0]} inputs × ${channels} branches × ${expand}) exceed the limit ${limits.rows} (options.limits.rows)`,
        expand > 1 ? expandKey : 'inputIds',
      );
    const bytes = (targetLength: number) => model.estimateGenerationBytes?.({ rows, sourceLength: shape[1], targetLength }) ?? 0;
    const total = bytes(maxNewTokens + 1);
    if (total > limits.memoryBytes) {
      const byLength = total - bytes(1) > total / 2;
      throw new InputError(
        `generate: ${shape[0]} inputs of ${shape[1]} tokens × ${channels} branches × ${expand} rows each, up to ${maxNewTokens} new tokens, need about ${(total / 2 ** 20).toFixed(0)} MiB, over the budget of ${(limits.memoryBytes / 2 ** 20).toFixed(0)} MiB (options.limits.memoryBytes)`,
        byLength ? 'maxNewTokens' : expand > 1 ? expandKey : 'inputIds',
      );
    }
  }
  return { s, limits, maxNewTokens, numBeams, numReturn, doSample, expand, channels, eos, eosSet: new Set(eos), start: d.decoderStartTokenId, pad: d.padTokenId };
}

/** Token ids of the settings are checked against the vocabulary (the model's toIds) before compute. */
function checkSettingIds(model: Seq2SeqModel, s: GenerationSettings): void {
  const check = (ids: number[], argument: string) => model.toIds([ids], argument).dispose();
  if (s.badWordsIds) check(s.badWordsIds.flat(), 'badWordsIds');
  if (s.forcedBosTokenId !== undefined) check([s.forcedBosTokenId], 'forcedBosTokenId');
  if (s.forcedEosTokenId !== undefined) check([s.forcedEosTokenId].flat(), 'forcedEosTokenId');
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(`generation was aborted${signal.reason !== undefined ? `: ${String(signal.reason)}` : ''}`);
}

/** Resolves on the next macrotask (a server's sockets and timers run in between). */
const nextMacrotask: () => Promise<void> =
  typeof setImmediate === 'function'
    ? () => new Promise((resolve) => setImmediate(resolve))
    : typeof MessageChannel === 'function'
      ? channelMacrotask()
      : () => new Promise((resolve) => setTimeout(resolve, 0));

/** Browsers: a message to oneself is a macrotask without setTimeout's clamping; one channel serves every step. */
function channelMacrotask(): () => Promise<void> {
  let channel: MessageChannel | undefined;
  const waiting: (() => void)[] = [];
  return () =>
    new Promise((resolve) => {
      if (!channel) {
        channel = new MessageChannel();
        channel.port1.onmessage = () => waiting.shift()?.();
      }
      waiting.push(resolve);
      channel.port2.postMessage(null);
    });
}

/** Between decoding steps: let the event loop run, then stop if the caller aborted. */
async function betweenSteps(signal: AbortSignal | undefined): Promise<void> {
  await nextMacrotask();
  throwIfAborted(signal);
}

/**
 * Generates token ids, with transformers' conventions: each row starts with the decoder start id and
 * finished rows are padded with the pad id. Greedy and beam search reproduce transformers' choices, with
 * transformers' logits processors in transformers' order; sampling is seeded. Under a Parallel composition
 * the result has one block of rows per branch (adapter-major: rows [i·B, (i+1)·B) belong to branch i);
 * with numReturnSequences each input's sequences are contiguous. Sizes are checked against `limits` before
 * anything is allocated; the KV cache grows with the output; the event loop runs between steps, and an
 * aborted `signal` stops the call with an AbortedError at the next step.
 */
export async function generate(model: Seq2SeqModel, options: GenerateOptions): Promise<number[][]> {
  if (model.isDisposed) throw new InputError('generate: this model has been disposed', 'model');
  if (options.inputIds === undefined) throw new InputError('generate needs inputIds', 'inputIds');
  const p = plan(model, options);
  checkSettingIds(model, p.s);
  throwIfAborted(options.signal);
  const ids0 = model.toIds(options.inputIds, 'inputIds');
  const owned: Tensor[] = [ids0];
  let stepper: Stepper | undefined;
  try {
    const mask0 = options.attentionMask === undefined ? tf.onesLike(ids0) : model.toIds(options.attentionMask, 'attentionMask');
    owned.push(mask0);
    if (mask0.shape.join() !== ids0.shape.join()) throw new InputError(`attentionMask has shape [${mask0.shape}] but inputIds has shape [${ids0.shape}]`, 'attentionMask');
    const batch = ids0.shape[0] as number;
    const processors = await rowProcessors(p, ids0, batch);
    // Parallel: replicate rows once (adapter-major); beams / returned samples: each row into `expand` contiguous rows.
    const expand = (t: Tensor) =>
      tf.tidy(() => {
        const rep = p.channels > 1 ? replicateRows(t, p.channels) : t.clone();
        if (p.expand === 1) return rep;
        const rows = rep.shape[0] as number;
        return tf.gather(
          rep,
          tf.tensor1d(
            Array.from({ length: rows * p.expand }, (_, i) => Math.floor(i / p.expand)),
            'int32',
          ),
        );
      });
    const ids = expand(ids0);
    owned.push(ids);
    const mask = expand(mask0);
    owned.push(mask);
    stepper = makeStepper(model, ids, mask, options.composition, p.expand, p.maxNewTokens, options.useCache ?? true);
    if (p.numBeams > 1) return await beamSearch(stepper, batch * p.channels, p, options, processors);
    return await sampleOrGreedy(stepper, batch * p.channels, p, options, processors);
  } finally {
    stepper?.dispose();
    tf.dispose(owned);
  }
}

/** Each source row's processors (rows of a Parallel branch share their input's source ids). */
async function rowProcessors(p: Plan, ids: Tensor, batch: number): Promise<LogitsProcessor[][]> {
  const encoderIds = p.s.encoderNoRepeatNgramSize ? ((await ids.array()) as number[][]) : [];
  return Array.from({ length: batch * p.channels }, (_, r) =>
    buildLogitsProcessors(p.s, { eos: p.eos, encoderIds: encoderIds[r % batch] ?? [], maxLength: p.maxNewTokens + 1, doSample: p.doSample }),
  );
}

/** Index of the largest score (the first on ties, as torch.argmax). */
function argmax(scores: Float32Array): number {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}

/** A seeded draw from softmax(scores) (−inf scores have probability 0). */
function sample(scores: Float32Array, rng: SeededRandom): number {
  const best = argmax(scores);
  const max = scores[best];
  let sum = 0;
  for (let i = 0; i < scores.length; i++) sum += Math.exp(scores[i] - max);
  let u = rng.next() * sum;
  for (let i = 0; i < scores.length; i++) {
    u -= Math.exp(scores[i] - max);
    if (u < 0) return i;
  }
  return best;
}

/**
 * How one request chooses its next tokens, exactly as generate chooses them for it: greedy or seeded
 * sampling after its logits processors (its options' and the model's generation config's), with its own
 * EOS ids and length. Continuous batching decodes a request among others with it and still gives the ids
 * generate gives the request alone.
 */
export interface TokenChooser {
  readonly maxNewTokens: number;
  /** Rows decoded per input row (numReturnSequences when sampling), contiguous. */
  readonly expand: number;
  readonly eos: ReadonlySet<number>;
  /** Whether choosing needs the scores on the host (sampling, a processor); otherwise the device's argmax is the choice. */
  readonly onHost: boolean;
  /**
   * The token of decoding row `row` from its scores (changed in place), its sequence so far (start token
   * first) given. Each step asks every unfinished row, in order: a sampler's draws follow that order.
   */
  choose(scores: Float32Array, row: number, sequence: number[]): number;
}

class PlannedChooser implements TokenChooser {
  private readonly rng: SeededRandom;
  readonly onHost: boolean;
  constructor(
    private readonly p: Plan,
    /** Per source row. */
    private readonly processors: LogitsProcessor[][],
    seed: number,
  ) {
    this.rng = new SeededRandom(seed);
    // Greedy without processors keeps the argmax on the device; otherwise the scores come to the host.
    this.onHost = p.doSample || processors.some((list) => list.length > 0);
  }
  get maxNewTokens() {
    return this.p.maxNewTokens;
  }
  get expand() {
    return this.p.expand;
  }
  get eos() {
    return this.p.eosSet;
  }
  choose(scores: Float32Array, row: number, sequence: number[]): number {
    applyLogitsProcessors(this.processors[Math.floor(row / this.p.expand)], scores, { sequence });
    return this.p.doSample ? sample(scores, this.rng) : argmax(scores);
  }
}

/** What a request may set when it decodes among others: generate's options but those that shape the whole call. */
export type RowDecodeOptions = Omit<GenerateOptions, 'inputIds' | 'attentionMask' | 'onToken' | 'useCache' | 'composition' | 'signal'>;

const ROW_DECODE_OPTIONS = (({ inputIds: _i, attentionMask: _a, onToken: _o, useCache: _u, composition: _c, signal: _s, ...rest }) => rest)(
  GENERATE_OPTIONS,
) satisfies OptionKeys<RowDecodeOptions>;

/**
 * A request's token chooser for decoding among others (core's DecodeBatch): its options are checked as
 * generate checks them (typed errors, nothing allocated); beam search is refused — it reorders its rows
 * every step, so it decodes alone. `rows` are the request's source rows (unpadded).
 */
export function tokenChooser(model: Seq2SeqModel, rows: number[][], options: RowDecodeOptions = {}): TokenChooser {
  rejectUnknownOptions(options, ROW_DECODE_OPTIONS, 'a request decoding among others');
  // padded as generate gets the request alone (the encoder n-gram rule sees the pads too)
  const width = Math.max(0, ...rows.map((r) => r.length));
  const pad = model.generationConfig.padTokenId;
  const padded = rows.map((r) => [...r, ...new Array(width - r.length).fill(pad)]);
  const p = plan(model, { ...options, inputIds: padded, composition: null });
  if (p.numBeams > 1) throw new InputError('beam search (numBeams > 1) reorders its rows every step: it decodes alone, not among other requests', 'numBeams');
  checkSettingIds(model, p.s);
  const processors = padded.map((ids) => buildLogitsProcessors(p.s, { eos: p.eos, encoderIds: ids, maxLength: p.maxNewTokens + 1, doSample: p.doSample }));
  return new PlannedChooser(p, processors, options.seed ?? 0);
}

async function sampleOrGreedy(stepper: Stepper, sources: number, p: Plan, o: GenerateOptions, processors: LogitsProcessor[][]): Promise<number[][]> {
  const rows = sources * p.expand;
  const seqs = Array.from({ length: rows }, () => [p.start]);
  const unfinished = new Array(rows).fill(true);
  const chooser = new PlannedChooser(p, processors, o.seed ?? 0);
  const onHost = chooser.onHost;
  for (let step = 0; step < p.maxNewTokens; step++) {
    await betweenSteps(o.signal);
    const logits = stepper.next(
      seqs,
      seqs.map((s) => s[s.length - 1]),
    );
    let chosen: number[];
    try {
      if (onHost) {
        const V = logits.shape[1] as number;
        const data = (await logits.data()) as Float32Array;
        chosen = seqs.map((seq, r) => (unfinished[r] ? chooser.choose(data.slice(r * V, (r + 1) * V), r, seq) : p.pad));
      } else {
        const arg = tf.argMax(logits, 1);
        chosen = Array.from((await arg.data()) as Int32Array);
        arg.dispose();
      }
    } finally {
      logits.dispose();
    }
    for (let r = 0; r < rows; r++) {
      const tok = unfinished[r] ? chosen[r] : p.pad;
      seqs[r].push(tok);
      if (unfinished[r] && p.eosSet.has(tok)) unfinished[r] = false;
    }
    o.onToken?.(
      step,
      seqs.map((s) => s[s.length - 1]),
    );
    if (!unfinished.some(Boolean)) break;
  }
  return seqs;
}

const NEG = -1.0e9;
const f32 = Math.fround;

/**
 * Beam search as transformers 5 does it (vectorised `_beam_search`): the logits processors act on the
 * log-softmax scores of every running beam; keep 2·k candidates per step, the best k that did not just
 * finish keep running, finished candidates among the top k enter the finished pool with
 * score / generated_length^length_penalty; stop per early_stopping; return the best numReturnSequences
 * finished beams of each input. Bookkeeping in float32.
 */
async function beamSearch(stepper: Stepper, batch: number, p: Plan, o: GenerateOptions, processors: LogitsProcessor[][]): Promise<number[][]> {
  const k = p.numBeams;
  const lp = p.s.lengthPenalty ?? 1.0;
  const earlyStopping = p.s.earlyStopping ?? false;
  const maxLength = 1 + p.maxNewTokens;
  const keep = Math.max(2, 1 + p.eosSet.size) * k;
  // running and finished beams per batch entry
  let running: number[][][] = Array.from({ length: batch }, () => Array.from({ length: k }, () => [p.start]));
  let runningScores: number[][] = Array.from({ length: batch }, () => Array.from({ length: k }, (_, j) => (j === 0 ? 0 : NEG)));
  const finished: number[][][] = Array.from({ length: batch }, () => Array.from({ length: k }, () => [p.start]));
  const finishedScores: number[][] = Array.from({ length: batch }, () => new Array(k).fill(NEG));
  const isFinished: boolean[][] = Array.from({ length: batch }, () => new Array(k).fill(false));
  let heuristicUnsatisfied = new Array(batch).fill(true);
  let curLen = 1;
  while (curLen < maxLength) {
    await betweenSteps(o.signal);
    const flat = running.flat();
    const logits = stepper.next(
      flat,
      flat.map((s) => s[s.length - 1]),
    );
    const logp = tf.logSoftmax(logits);
    logits.dispose();
    const V = logp.shape[1] as number;
    let data: Float32Array;
    try {
      data = (await logp.data()) as Float32Array;
    } finally {
      logp.dispose();
    }
    if (processors.some((list) => list.length > 0)) {
      data = data.slice();
      flat.forEach((seq, r) => applyLogitsProcessors(processors[Math.floor(r / k)], data.subarray(r * V, (r + 1) * V), { sequence: seq }));
    }
    const lastStep = curLen + 1 >= maxLength;
    const reorder: number[] = [];
    const nextRunning: number[][][] = [];
    const nextRunningScores: number[][] = [];
    let anyValidContinuation = false;
    for (let b = 0; b < batch; b++) {
      // top `keep` of (beam score + log p) over k·V, ties broken by lower index as torch.topk does on CPU
      const cands: { score: number; beam: number; token: number }[] = [];
      for (let j = 0; j < k; j++) {
        const base = runningScores[b][j];
        const row = (b * k + j) * V;
        for (let t = 0; t < V; t++) {
          const s = f32(data[row + t] + base);
          if (cands.length < keep || s > cands[cands.length - 1].score) {
            let pos = cands.length;
            while (pos > 0 && cands[pos - 1].score < s) pos--;
            cands.splice(pos, 0, { score: s, beam: j, token: t });
            if (cands.length > keep) cands.pop();
          }
        }
      }
      const hits = cands.map((c) => lastStep || p.eosSet.has(c.token));
      if (!hits.every(Boolean)) anyValidContinuation = true;
      // a. next running beams: best k candidates that did not hit a stopping criterion
      const runningCands = cands
        .map((c, i) => ({ ...c, s: hits[i] ? f32(c.score + NEG) : c.score, i }))
        .sort((x, y) => y.s - x.s || x.i - y.i)
        .slice(0, k);
      nextRunning.push(runningCands.map((c) => [...running[b][c.beam], c.token]));
      nextRunningScores.push(runningCands.map((c) => c.s));
      for (const c of runningCands) reorder.push(b * k + c.beam);
      // b. finished pool: merge with candidates among the top k that just finished
      const genLen = curLen + 1 - 1;
      const full = isFinished[b].every(Boolean) && earlyStopping === true;
      const merged = finished[b].map((seq, j) => ({ seq, score: finishedScores[b][j], fin: isFinished[b][j], i: j }));
      cands.forEach((c, i) => {
        const justFinished = hits[i] && i < k;
        let s = f32(c.score / f32(genLen ** lp));
        if (full) s = f32(s + NEG);
        if (!heuristicUnsatisfied[b]) s = f32(s + NEG);
        if (!justFinished) s = f32(s + NEG);
        merged.push({ seq: [...running[b][c.beam], c.token], score: s, fin: justFinished, i: k + i });
      });
      merged.sort((x, y) => y.score - x.score || x.i - y.i);
      const best = merged.slice(0, k);
      finished[b] = best.map((m) => m.seq);
      finishedScores[b] = best.map((m) => m.score);
      isFinished[b] = best.map((m) => m.fin);
    }
    running = nextRunning;
    runningScores = nextRunningScores;
    o.onToken?.(
      curLen - 1,
      running.flat().map((s) => s[s.length - 1]),
    );
    curLen += 1;
    // early-stop heuristic (transformers' _check_early_stop_heuristic)
    heuristicUnsatisfied = heuristicUnsatisfied.map((u, b) => {
      const hypLen = earlyStopping === 'never' && lp > 0 ? maxLength - 1 : curLen - 1;
      const bestRunning = f32(runningScores[b][0] / f32(hypLen ** lp));
      const worst = Math.min(...finishedScores[b]);
      return u && isFinished[b].some((fin) => bestRunning > (fin ? worst : NEG));
    });
    const improvementPossible = heuristicUnsatisfied.some(Boolean);
    const existsOpenBeam = !(isFinished.every((r) => r.every(Boolean)) && earlyStopping === true);
    if (!(improvementPossible && existsOpenBeam && anyValidContinuation)) break;
    stepper.reorder(reorder);
  }
  // The best finished sequences per batch entry, padded to the longest. transformers fills beam outputs with
  // `pad_token_id or eos_token_id[0]` — a pad id of 0 is falsy in Python, so beams of models whose pad id is 0 are padded with eos.
  const out = finished.flatMap((beams) => beams.slice(0, p.numReturn));
  const len = Math.max(...out.map((s) => s.length));
  const fill = p.pad || p.eos[0];
  return out.map((s) => [...s, ...new Array(len - s.length).fill(fill)]);
}

/** Text in, text out: tokenizes, generates, decodes (special tokens skipped). */
export async function generateText(
  model: Seq2SeqModel & { tokenizer?: { encodeBatch(t: string[]): { inputIds: number[][]; attentionMask: number[][] }; decode(ids: number[]): string } },
  texts: string[],
  options: Omit<GenerateOptions, 'inputIds' | 'attentionMask'> = {},
): Promise<string[]> {
  if (!model.tokenizer) throw new InputError('this model has no tokenizer (tokenizer.json was not found)', 'tokenizer');
  const enc = model.tokenizer.encodeBatch(texts);
  const ids = await generate(model, { ...options, inputIds: enc.inputIds, attentionMask: enc.attentionMask });
  return ids.map((row) => model.tokenizer!.decode(row));
}
