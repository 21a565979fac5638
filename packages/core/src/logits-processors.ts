/**
 * Logits processors with transformers' semantics (generation/logits_process.py), applied in the order of
 * transformers' `_get_logits_processor`. They work on ONE row at a time (its scores in place, its own
 * decoder ids and its own parameters), so rows with different settings can share a decoding batch.
 *
 * Greedy and sampling pass raw logits; beam search passes log-softmax scores (as transformers does).
 */

/** What a processor sees of one row: the decoder ids so far, the decoder start token first. */
export interface RowInput {
  readonly sequence: readonly number[];
}

/** Changes one row's scores [vocab] in place. */
export type LogitsProcessor = (scores: Float32Array, row: RowInput) => void;

/** The per-row parameters processors are built from (camelCase of transformers' GenerationConfig fields). */
export interface ProcessorSettings {
  repetitionPenalty?: number;
  noRepeatNgramSize?: number;
  encoderNoRepeatNgramSize?: number;
  badWordsIds?: number[][];
  /** Minimum total decoder length (decoder start token included), as transformers' min_length. */
  minLength?: number;
  minNewTokens?: number;
  forcedBosTokenId?: number;
  forcedEosTokenId?: number | number[];
  /** Sampling only: */
  temperature?: number;
  topK?: number;
  topP?: number;
  typicalP?: number;
}

/** What a row's processors also need: its eos ids, its source ids, max length and strategy. */
export interface RowContext {
  eos: readonly number[];
  /** The row's encoder input ids as given (padding included, as transformers' encoder_input_ids). */
  encoderIds: readonly number[];
  /** Decoder start token + max new tokens (transformers' max_length for encoder-decoders). */
  maxLength: number;
  doSample: boolean;
  /** Tokens the sampling warpers always keep (transformers: 1, or eos count + 1 with beams). */
  minTokensToKeep?: number;
}

const NEG_INF = Number.NEGATIVE_INFINITY;

/** RepetitionPenaltyLogitsProcessor: each token already in the sequence once: score < 0 ? score·p : score / p. */
export function repetitionPenalty(penalty: number): LogitsProcessor {
  return (scores, row) => {
    for (const t of new Set(row.sequence)) scores[t] = scores[t] < 0 ? scores[t] * penalty : scores[t] / penalty;
  };
}

/** NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already in the sequence is banned. */
export function noRepeatNgram(n: number): LogitsProcessor {
  return (scores, { sequence: s }) => {
    const len = s.length;
    if (len < n) return;
    const start = len - (n - 1); // the current suffix of n-1 tokens
    for (let i = 0; i + n <= len; i++) {
      let match = true;
      for (let j = 0; j < n - 1 && match; j++) match = s[i + j] === s[start + j];
      if (match) scores[s[i + n - 1]] = NEG_INF;
    }
  };
}

/** n-grams of `ids` as prefix (n-1 tokens, joined) → the tokens that follow it. */
function ngramTable(ids: readonly number[], n: number): Map<string, number[]> {
  const table = new Map<string, number[]>();
  for (let i = 0; i + n <= ids.length; i++) {
    const key = ids.slice(i, i + n - 1).join(',');
    const next = table.get(key);
    if (next) next.push(ids[i + n - 1]);
    else table.set(key, [ids[i + n - 1]]);
  }
  return table;
}

/** EncoderNoRepeatNGramLogitsProcessor: the decoder may not repeat an n-gram of its own source row. */
export function encoderNoRepeatNgram(n: number, encoderIds: readonly number[]): LogitsProcessor {
  const table = ngramTable(encoderIds, n);
  return (scores, { sequence: s }) => {
    if (s.length < n - 1) return;
    for (const t of table.get(s.slice(s.length - (n - 1)).join(',')) ?? []) scores[t] = NEG_INF;
  };
}

/**
 * NoBadWordsLogitsProcessor (a SequenceBias of −inf): a single-token entry is always banned; a longer one
 * bans its last token when the sequence ends with the rest. Entries equal to [eos] are dropped.
 */
export function noBadWords(badWordsIds: readonly number[][], eos: readonly number[]): LogitsProcessor {
  const words = badWordsIds.filter((w) => !(w.length === 1 && eos.includes(w[0])));
  return (scores, { sequence: s }) => {
    for (const w of words) {
      if (w.length > s.length) continue;
      const p = w.length - 1;
      let match = true;
      for (let j = 0; j < p && match; j++) match = s[s.length - p + j] === w[j];
      if (match) scores[w[p]] += NEG_INF;
    }
  };
}

/** MinLengthLogitsProcessor: eos banned while the decoder length (start token included) is below minLength. */
export function minLength(min: number, eos: readonly number[]): LogitsProcessor {
  return (scores, row) => {
    if (row.sequence.length < min) for (const e of eos) scores[e] = NEG_INF;
  };
}

/** MinNewTokensLengthLogitsProcessor: eos banned while fewer than minNew tokens follow the start token. */
export function minNewTokens(minNew: number, eos: readonly number[]): LogitsProcessor {
  return (scores, row) => {
    if (row.sequence.length - 1 < minNew) for (const e of eos) scores[e] = NEG_INF;
  };
}

/** Every score −inf but `ids`, which get 0. */
function force(scores: Float32Array, ids: readonly number[]) {
  scores.fill(NEG_INF);
  for (const t of ids) scores[t] = 0;
}

/** ForcedBOSTokenLogitsProcessor: the first generated token is `bos`. */
export function forcedBos(bos: number): LogitsProcessor {
  return (scores, row) => {
    if (row.sequence.length === 1) force(scores, [bos]);
  };
}

/** ForcedEOSTokenLogitsProcessor: the token generated at max_length − 1 is an eos. */
export function forcedEos(maxLength: number, eos: number | readonly number[]): LogitsProcessor {
  const ids = typeof eos === 'number' ? [eos] : eos;
  return (scores, row) => {
    if (row.sequence.length === maxLength - 1) force(scores, ids);
  };
}

/** TemperatureLogitsWarper. */
export function temperature(t: number): LogitsProcessor {
  return (scores) => {
    for (let i = 0; i < scores.length; i++) scores[i] /= t;
  };
}

/** TopKLogitsWarper: scores below the k-th largest become −inf (ties with it are kept). */
export function topK(k: number, minTokensToKeep = 1): LogitsProcessor {
  return (scores) => {
    const keep = Math.min(Math.max(k, minTokensToKeep), scores.length);
    const sorted = Float32Array.from(scores).sort();
    const kth = sorted[sorted.length - keep];
    for (let i = 0; i < scores.length; i++) if (scores[i] < kth) scores[i] = NEG_INF;
  };
}

/** Softmax of `values` (in their order) and its running sum. */
function softmaxCumsum(values: ArrayLike<number>): Float64Array {
  let max = NEG_INF;
  for (let i = 0; i < values.length; i++) max = Math.max(max, values[i]);
  const out = new Float64Array(values.length);
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += out[i] = Math.exp(values[i] - max);
  let cum = 0;
  for (let i = 0; i < values.length; i++) out[i] = cum += out[i] / sum;
  return out;
}

/** Token indices ordered by `key` ascending (stable). */
function orderBy(n: number, key: (i: number) => number): number[] {
  return Array.from({ length: n }, (_, i) => i).sort((a, b) => key(a) - key(b) || a - b);
}

/**
 * TopPLogitsWarper: sorted ascending, tokens whose cumulative probability is ≤ 1 − p are removed; the
 * `minTokensToKeep` most likely always stay.
 */
export function topP(p: number, minTokensToKeep = 1): LogitsProcessor {
  return (scores) => {
    const order = orderBy(scores.length, (i) => scores[i]);
    const cum = softmaxCumsum(order.map((i) => scores[i]));
    const limit = Math.fround(1 - p);
    const removable = order.length - minTokensToKeep;
    for (let j = 0; j < removable; j++) if (Math.fround(cum[j]) <= limit) scores[order[j]] = NEG_INF;
  };
}

/**
 * TypicalLogitsWarper: tokens sorted by |−log p − entropy| ascending; those beyond the first whose
 * cumulative probability reaches `mass` are removed (ties with it stay); the first `minTokensToKeep` stay.
 */
export function typicalP(mass: number, minTokensToKeep = 1): LogitsProcessor {
  return (scores) => {
    const V = scores.length;
    let max = NEG_INF;
    for (let i = 0; i < V; i++) max = Math.max(max, scores[i]);
    let z = 0;
    for (let i = 0; i < V; i++) z += Math.exp(scores[i] - max);
    const logZ = max + Math.log(z);
    let entropy = 0;
    for (let i = 0; i < V; i++) {
      const lp = scores[i] - logZ;
      if (lp > NEG_INF) entropy -= lp * Math.exp(lp); // nansum: −inf · 0 terms drop out
    }
    const shifted = Float32Array.from(scores, (s) => Math.abs(-(s - logZ) - entropy));
    const order = orderBy(V, (i) => shifted[i]);
    const cum = softmaxCumsum(order.map((i) => scores[i]));
    let last = 0;
    while (last < V && Math.fround(cum[last]) < mass) last++;
    last = Math.min(last, V - 1);
    const cut = shifted[order[last]];
    for (let j = minTokensToKeep; j < V; j++) if (shifted[order[j]] > cut) scores[order[j]] = NEG_INF;
  };
}

/**
 * One row's processors in transformers' order: repetition penalty, no-repeat n-grams, encoder no-repeat
 * n-grams, bad words, min length, min new tokens, forced BOS, forced EOS; then, when sampling,
 * temperature, top-k, top-p, typical-p. Settings that are off (penalty 1, size 0, …) add nothing, so an
 * empty list means the scores are used as they are.
 */
export function buildLogitsProcessors(s: ProcessorSettings, ctx: RowContext): LogitsProcessor[] {
  const out: LogitsProcessor[] = [];
  if (s.repetitionPenalty !== undefined && s.repetitionPenalty !== 1) out.push(repetitionPenalty(s.repetitionPenalty));
  if (s.noRepeatNgramSize) out.push(noRepeatNgram(s.noRepeatNgramSize));
  if (s.encoderNoRepeatNgramSize) out.push(encoderNoRepeatNgram(s.encoderNoRepeatNgramSize, ctx.encoderIds));
  if (s.badWordsIds?.length) out.push(noBadWords(s.badWordsIds, ctx.eos));
  if (s.minLength) out.push(minLength(s.minLength, ctx.eos));
  if (s.minNewTokens) out.push(minNewTokens(s.minNewTokens, ctx.eos));
  if (s.forcedBosTokenId !== undefined) out.push(forcedBos(s.forcedBosTokenId));
  if (s.forcedEosTokenId !== undefined) out.push(forcedEos(ctx.maxLength, s.forcedEosTokenId));
  if (ctx.doSample) {
    const keep = ctx.minTokensToKeep ?? 1;
    if (s.temperature !== undefined && s.temperature !== 1) out.push(temperature(s.temperature));
    if (s.topK) out.push(topK(s.topK, keep));
    if (s.topP !== undefined && s.topP < 1) out.push(topP(s.topP, keep));
    if (s.typicalP !== undefined && s.typicalP < 1) out.push(typicalP(s.typicalP, keep));
  }
  return out;
}

export function applyLogitsProcessors(processors: readonly LogitsProcessor[], scores: Float32Array, row: RowInput): void {
  for (const p of processors) p(scores, row);
}
