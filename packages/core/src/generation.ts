import { tf, type Tensor } from '@adapterkit/backend';
import { normalizeComposition, parallelChannels, replicateRows, type AdapterComposition } from './composition.js';
import { InputError } from './errors.js';
import { type OptionKeys, rejectUnknownOptions } from './options.js';
import { SeededRandom } from './rng.js';
import type { AdapterHost } from './host.js';
import type { ForwardContext } from './context.js';

export interface GenerateOptions {
  inputIds?: IdsInput;
  attentionMask?: IdsInput;
  /** Tokens to generate after the decoder start token (default 20, or generation_config.json's). */
  maxNewTokens?: number;
  numBeams?: number;
  lengthPenalty?: number;
  /** true | false | 'never', as transformers. Default false. */
  earlyStopping?: boolean | 'never';
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  eosTokenId?: number | number[];
  /** Called after each step with the tokens chosen for every row (streaming). */
  onToken?: (step: number, tokens: number[]) => void;
  /** Recompute the whole decoder each step instead of using the KV cache (for equivalence tests). */
  useCache?: boolean;
  /** Override the active composition for this call. */
  composition?: AdapterComposition | null;
}

/** Token ids as number[][] (rectangular) or an int32 tensor [batch, length]. */
export type IdsInput = number[][] | Tensor;

/** generation_config.json's values (or the model config's) that generate uses when an option is absent. */
export interface GenerationDefaults {
  decoderStartTokenId: number;
  eosTokenId: number | number[];
  padTokenId: number;
  maxNewTokens?: number;
  numBeams?: number;
}

/**
 * What generation needs from an encoder-decoder model: its adapters, its defaults, id validation, a full
 * forward (the uncached path) and a KV-cached decoder (any state type the model keeps).
 */
export interface Seq2SeqModel<State = unknown> {
  readonly adapters: AdapterHost;
  readonly generationConfig: GenerationDefaults;
  /** Validates ids (rectangular, in the vocabulary) and returns an int32 tensor the caller owns. */
  toIds(input: IdsInput, argument: string): Tensor;
  forward(input: { inputIds: IdsInput; attentionMask?: IdsInput; decoderInputIds: IdsInput; composition?: AdapterComposition | null; expandedRows?: { rowMultiplier: number } }): {
    logits: Tensor;
    encoderLastHiddenState: Tensor;
  };
  /** Encodes `ids` (already replicated/expanded to the decoding rows) and returns a decoder state. */
  startDecoding(ids: Tensor, mask: Tensor, ctx: ForwardContext, capacity?: number): State;
  /** One step for every row: logits [rows, vocab] (the caller owns them). */
  decodeStep(state: State, tokens: Tensor): Tensor;
  reorderDecoderState(state: State, index: number[]): void;
  disposeDecoderState(state: State): void;
}

/** Steps through the decoder: cached (KV cache) or by full recomputation; same interface. */
interface Stepper {
  /** Logits [rows, vocab] for the next position given the tokens chosen so far (sequences include the start token). */
  next(sequences: number[][], lastTokens: number[]): Tensor;
  reorder(index: number[]): void;
  dispose(): void;
}

function makeStepper(
  model: Seq2SeqModel,
  ids: Tensor,
  mask: Tensor,
  ctxOptions: { composition?: AdapterComposition | null; rowMultiplier: number; batch: number; maxNewTokens: number },
  useCache: boolean,
): Stepper {
  const ctx = model.adapters.createContext({ rowMultiplier: ctxOptions.rowMultiplier, composition: ctxOptions.composition });
  if (useCache) {
    const state = model.startDecoding(ids, mask, ctx, Math.max(1, ctxOptions.maxNewTokens));
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
        const out = model.forward({
          inputIds: ids,
          attentionMask: mask,
          decoderInputIds: seqs,
          composition: ctx.composition,
          expandedRows: { rowMultiplier: ctxOptions.rowMultiplier },
        });
        const [rows, T, V] = out.logits.shape as number[];
        const last = out.logits.slice([0, T - 1, 0], [rows, 1, V]).reshape([rows, V]);
        return last;
      }),
    reorder: () => {},
    dispose: () => ctx.dispose(),
  };
}

const GENERATE_OPTIONS = {
  inputIds: true,
  attentionMask: true,
  maxNewTokens: true,
  numBeams: true,
  lengthPenalty: true,
  earlyStopping: true,
  doSample: true,
  temperature: true,
  topK: true,
  topP: true,
  seed: true,
  eosTokenId: true,
  onToken: true,
  useCache: true,
  composition: true,
} as const satisfies OptionKeys<GenerateOptions>;

function validate(model: Seq2SeqModel, o: GenerateOptions) {
  rejectUnknownOptions(o, GENERATE_OPTIONS, 'generate');
  const d = model.generationConfig;
  const maxNewTokens = o.maxNewTokens ?? d.maxNewTokens ?? 20;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) throw new InputError(`maxNewTokens must be an integer ≥ 0, got ${o.maxNewTokens}`, 'maxNewTokens');
  const numBeams = o.numBeams ?? d.numBeams ?? 1;
  if (!Number.isInteger(numBeams) || numBeams < 1) throw new InputError(`numBeams must be an integer ≥ 1, got ${o.numBeams}`, 'numBeams');
  if (o.temperature !== undefined && !(o.temperature > 0)) throw new InputError(`temperature must be > 0, got ${o.temperature}`, 'temperature');
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) throw new InputError(`topK must be an integer ≥ 0, got ${o.topK}`, 'topK');
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new InputError(`topP must be in (0, 1], got ${o.topP}`, 'topP');
  if (o.doSample && numBeams > 1) throw new InputError('beam sampling (doSample with numBeams > 1) is not supported', 'doSample');
  const eos = o.eosTokenId ?? d.eosTokenId;
  return { maxNewTokens, numBeams, eos: new Set(Array.isArray(eos) ? eos : [eos]), start: d.decoderStartTokenId, pad: d.padTokenId };
}

/**
 * Generates token ids, with transformers' conventions: each row starts with the decoder start id and
 * finished rows are padded with the pad id. Greedy and beam search reproduce transformers' choices;
 * sampling is seeded. Under a Parallel composition the result has one block of rows per branch
 * (adapter-major: rows [i·B, (i+1)·B) belong to branch i).
 */
export async function generate(model: Seq2SeqModel, options: GenerateOptions): Promise<number[][]> {
  if (options.inputIds === undefined) throw new InputError('generate needs inputIds', 'inputIds');
  const v = validate(model, options);
  const ids0 = model.toIds(options.inputIds, 'inputIds');
  let mask0: Tensor;
  try {
    mask0 = options.attentionMask === undefined ? tf.onesLike(ids0) : model.toIds(options.attentionMask, 'attentionMask');
  } catch (e) {
    ids0.dispose();
    throw e;
  }
  if (mask0.shape.join() !== ids0.shape.join()) {
    tf.dispose([ids0, mask0]);
    throw new InputError(`attentionMask has shape [${mask0.shape}] but inputIds has shape [${ids0.shape}]`, 'attentionMask');
  }
  const batch = ids0.shape[0] as number;
  const channels = parallelChannels(
    options.composition === undefined ? model.adapters.activeComposition : options.composition === null ? null : normalizeComposition(options.composition),
  );
  // Parallel: replicate rows once (adapter-major); beams: expand each row into numBeams contiguous rows.
  const expand = (t: Tensor) =>
    tf.tidy(() => {
      const rep = channels > 1 ? replicateRows(t, channels) : t.clone();
      if (v.numBeams === 1) return rep;
      const rows = rep.shape[0] as number;
      const index = tf.tensor1d(
        Array.from({ length: rows * v.numBeams }, (_, i) => Math.floor(i / v.numBeams)),
        'int32',
      );
      return tf.gather(rep, index);
    });
  const ids = expand(ids0);
  const mask = expand(mask0);
  tf.dispose([ids0, mask0]);
  const stepper = makeStepper(model, ids, mask, { composition: options.composition, rowMultiplier: v.numBeams, batch, maxNewTokens: v.maxNewTokens }, options.useCache ?? true);
  try {
    if (v.numBeams > 1) return await beamSearch(stepper, batch * channels, v, options);
    return await sampleOrGreedy(stepper, batch * channels, v, options);
  } finally {
    stepper.dispose();
    tf.dispose([ids, mask]);
  }
}

async function sampleOrGreedy(stepper: Stepper, rows: number, v: ReturnType<typeof validate>, o: GenerateOptions): Promise<number[][]> {
  const seqs = Array.from({ length: rows }, () => [v.start]);
  const unfinished = new Array(rows).fill(true);
  const rng = new SeededRandom(o.seed ?? 0);
  for (let step = 0; step < v.maxNewTokens; step++) {
    const logits = stepper.next(
      seqs,
      seqs.map((s) => s[s.length - 1]),
    );
    let chosen: number[];
    if (o.doSample) {
      const data = (await logits.data()) as Float32Array;
      const V = logits.shape[1] as number;
      chosen = Array.from({ length: rows }, (_, r) => sampleRow(data.subarray(r * V, (r + 1) * V), o, rng));
    } else {
      const arg = tf.argMax(logits, 1);
      chosen = Array.from((await arg.data()) as Int32Array);
      arg.dispose();
    }
    logits.dispose();
    for (let r = 0; r < rows; r++) {
      const tok = unfinished[r] ? chosen[r] : v.pad;
      seqs[r].push(tok);
      if (unfinished[r] && v.eos.has(tok)) unfinished[r] = false;
    }
    o.onToken?.(
      step,
      seqs.map((s) => s[s.length - 1]),
    );
    if (!unfinished.some(Boolean)) break;
  }
  return seqs;
}

/** transformers' sampling order: temperature, then top-k, then top-p; then a seeded draw. */
function sampleRow(logits: Float32Array, o: GenerateOptions, rng: SeededRandom): number {
  const t = o.temperature ?? 1;
  const scores = Array.from(logits, (x) => x / t);
  let order = scores.map((_, i) => i).sort((a, b) => scores[b] - scores[a]);
  if (o.topK && o.topK > 0) order = order.slice(0, o.topK);
  const max = scores[order[0]];
  let probs = order.map((i) => Math.exp(scores[i] - max));
  let sum = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / sum);
  if (o.topP !== undefined && o.topP < 1) {
    let cum = 0;
    let keep = 0;
    while (keep < probs.length && cum < o.topP) cum += probs[keep++];
    order = order.slice(0, Math.max(1, keep));
    probs = probs.slice(0, order.length);
    sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / sum);
  }
  let u = rng.next();
  for (let i = 0; i < order.length; i++) {
    u -= probs[i];
    if (u <= 0) return order[i];
  }
  return order[order.length - 1];
}

const NEG = -1.0e9;
const f32 = Math.fround;

/**
 * Beam search as transformers 5 does it (vectorised `_beam_search`): keep 2·k candidates per step, the
 * best k that did not just finish keep running, finished candidates among the top k enter the finished
 * pool with score / generated_length^length_penalty; stop per early_stopping. Bookkeeping in float32.
 */
async function beamSearch(stepper: Stepper, batch: number, v: ReturnType<typeof validate>, o: GenerateOptions): Promise<number[][]> {
  const k = v.numBeams;
  const lp = o.lengthPenalty ?? 1.0;
  const earlyStopping = o.earlyStopping ?? false;
  const maxLength = 1 + v.maxNewTokens;
  const keep = Math.max(2, 1 + v.eos.size) * k;
  // running and finished beams per batch entry
  let running: number[][][] = Array.from({ length: batch }, () => Array.from({ length: k }, () => [v.start]));
  let runningScores: number[][] = Array.from({ length: batch }, () => Array.from({ length: k }, (_, j) => (j === 0 ? 0 : NEG)));
  const finished: number[][][] = Array.from({ length: batch }, () => Array.from({ length: k }, () => [v.start]));
  const finishedScores: number[][] = Array.from({ length: batch }, () => new Array(k).fill(NEG));
  const isFinished: boolean[][] = Array.from({ length: batch }, () => new Array(k).fill(false));
  let heuristicUnsatisfied = new Array(batch).fill(true);
  let curLen = 1;
  while (curLen < maxLength) {
    const flat = running.flat();
    const logits = stepper.next(
      flat,
      flat.map((s) => s[s.length - 1]),
    );
    const logp = tf.logSoftmax(logits);
    logits.dispose();
    const data = (await logp.data()) as Float32Array;
    const V = logp.shape[1] as number;
    logp.dispose();
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
      const hits = cands.map((c) => lastStep || v.eos.has(c.token));
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
  // Best finished sequence per batch entry, padded to the longest. transformers fills beam outputs with
  // `pad_token_id or eos_token_id[0]` — a pad id of 0 is falsy in Python, so beams of models whose pad id is 0 are padded with eos.
  const out = finished.map((beams) => beams[0]);
  const len = Math.max(...out.map((s) => s.length));
  const fill = v.pad || [...v.eos][0];
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
