/**
 * Each logits processor on tiny score vectors, worked out by hand from transformers' definitions
 * (generation/logits_process.py), and the order in which generate applies them.
 */
import { describe, expect, it } from 'vitest';
import {
  buildLogitsProcessors,
  applyLogitsProcessors,
  encoderNoRepeatNgram,
  forcedBos,
  forcedEos,
  minLength,
  minNewTokens,
  noBadWords,
  noRepeatNgram,
  repetitionPenalty,
  temperature,
  topK,
  topP,
  typicalP,
  type LogitsProcessor,
  parseGenerationConfig,
  ConfigError,
} from '../src/index.js';

const I = Number.NEGATIVE_INFINITY;
const run = (p: LogitsProcessor, scores: number[], sequence: number[] = [0]) => {
  const s = Float32Array.from(scores);
  p(s, { sequence });
  return Array.from(s);
};
/** Logits whose softmax is exactly `probs`. */
const logitsOf = (probs: number[]) => probs.map(Math.log);
const kept = (out: number[]) => out.map((x, i) => (x === I ? -1 : i)).filter((i) => i >= 0);

describe('logits processors, hand-worked', () => {
  it('repetitionPenalty divides positive and multiplies negative scores of tokens in the sequence, once each', () => {
    expect(run(repetitionPenalty(2), [1, -1, 2, 0.5], [0, 1, 1])).toEqual([0.5, -2, 2, 0.5]);
    expect(run(repetitionPenalty(0.5), [1, -1, 2, 0.5], [3])).toEqual([1, -1, 2, 1]);
  });

  it('noRepeatNgram bans the token that would complete an n-gram already in the sequence', () => {
    const z = [0, 0, 0, 0, 0, 0, 0, 0];
    expect(kept(run(noRepeatNgram(2), z, [0, 5, 6, 5]))).toEqual([0, 1, 2, 3, 4, 5, 7]); // (5,6) seen → 6 banned after 5
    expect(kept(run(noRepeatNgram(3), z, [0, 5, 6, 5]))).toEqual([0, 1, 2, 3, 4, 5, 6, 7]); // suffix (6,5) never seen
    expect(kept(run(noRepeatNgram(3), z, [5, 6, 7, 5, 6]))).toEqual([0, 1, 2, 3, 4, 5, 6]); // (5,6,7) → 7 banned
    expect(kept(run(noRepeatNgram(1), z, [0, 3]))).toEqual([1, 2, 4, 5, 6, 7]); // unigrams: every token seen, start token included
    expect(kept(run(noRepeatNgram(4), z, [5, 6, 5]))).toHaveLength(8); // shorter than n: nothing
  });

  it("encoderNoRepeatNgram bans continuations of the source's n-grams, padding included (as transformers)", () => {
    const z = [0, 0, 0, 0, 0, 0];
    const p = encoderNoRepeatNgram(2, [3, 4, 3, 5, 1]);
    expect(kept(run(p, z, [0, 3]))).toEqual([0, 1, 2, 3]); // (3,4) and (3,5) in the source
    expect(kept(run(p, z, [0, 2]))).toEqual([0, 1, 2, 3, 4, 5]);
    expect(kept(run(encoderNoRepeatNgram(2, [3, 1, 0, 0]), z, [0]))).toEqual([1, 2, 3, 4, 5]); // (0,0) of the padding
    expect(kept(run(encoderNoRepeatNgram(3, [3, 4, 5]), z, [0]))).toHaveLength(6); // sequence shorter than n−1
  });

  it('noBadWords: single tokens always, longer entries when the sequence ends with their prefix, never [eos]', () => {
    const z = [0, 0, 0, 0, 0, 0];
    const p = noBadWords([[2], [3, 4], [1], [0, 3, 5]], [1]);
    expect(kept(run(p, z, [0, 3]))).toEqual([0, 1, 3, 5]);
    expect(kept(run(p, z, [0, 5]))).toEqual([0, 1, 3, 4, 5]);
    expect(kept(run(p, z, [0]))).toEqual([0, 1, 3, 4, 5]); // [0,3,5] longer than the sequence: skipped
    expect(kept(run(p, z, [9, 0, 3]))).toEqual([0, 1, 3]); // both (3)→4 and (0,3)→5
  });

  it('minLength counts the decoder start token; minNewTokens does not', () => {
    expect(run(minLength(3, [1]), [1, 2, 3], [0, 5])).toEqual([1, I, 3]);
    expect(run(minLength(3, [1]), [1, 2, 3], [0, 5, 6])).toEqual([1, 2, 3]);
    expect(run(minNewTokens(2, [1, 2]), [1, 2, 3], [0, 5])).toEqual([1, I, I]);
    expect(run(minNewTokens(2, [1]), [1, 2, 3], [0, 5, 6])).toEqual([1, 2, 3]);
  });

  it('forcedBos forces the first generated token; forcedEos the one at max_length − 1', () => {
    expect(run(forcedBos(2), [1, 2, 3], [0])).toEqual([I, I, 0]);
    expect(run(forcedBos(2), [1, 2, 3], [0, 4])).toEqual([1, 2, 3]);
    expect(run(forcedEos(4, [0, 1]), [1, 2, 3], [0, 5, 6])).toEqual([0, 0, I]);
    expect(run(forcedEos(4, 1), [1, 2, 3], [0, 5])).toEqual([1, 2, 3]);
  });

  it('temperature divides; topK keeps the k largest and ties with the k-th', () => {
    expect(run(temperature(2), [1, -4, 3])).toEqual([0.5, -2, 1.5]);
    expect(run(topK(2), [1, 3, 3, 2])).toEqual([I, 3, 3, I]);
    expect(run(topK(2), [1, 3, 2, 2])).toEqual([I, 3, 2, 2]);
    expect(run(topK(1, 3), [1, 3, 2, 0])).toEqual([1, 3, 2, I]); // minTokensToKeep wins
  });

  it('topP keeps the smallest most-likely set reaching p (removes cumulative ≤ 1 − p from the least likely)', () => {
    const l = logitsOf([0.5, 0.3, 0.15, 0.05]);
    expect(kept(run(topP(0.75), l))).toEqual([0, 1]); // ascending cumsum 0.05, 0.2 ≤ 0.25 removed
    expect(kept(run(topP(0.9), l))).toEqual([0, 1, 2]);
    expect(kept(run(topP(0.01), l))).toEqual([0]);
    expect(kept(run(topP(0.01, 2), l))).toEqual([0, 1]);
    expect(kept(run(topP(1), l))).toEqual([0, 1, 2, 3]);
  });

  it('typicalP keeps the tokens whose surprisal is closest to the entropy until their mass reaches p', () => {
    // p = .5 .3 .15 .05: entropy 1.1421; |−ln p − H| = .449 .062 .755 1.854 → order 1, 0, 2, 3; cumulative .3 .8 .95 1
    const l = logitsOf([0.5, 0.3, 0.15, 0.05]);
    expect(kept(run(typicalP(0.5), l))).toEqual([0, 1]);
    expect(kept(run(typicalP(0.2), l))).toEqual([1]); // the most likely token is not "typical"
    expect(kept(run(typicalP(0.2, 2), l))).toEqual([0, 1]);
    expect(kept(run(typicalP(0.9), l))).toEqual([0, 1, 2]);
  });
});

describe("processors in transformers' order", () => {
  const ctx = { eos: [1], encoderIds: [], maxLength: 4, doSample: false };
  const apply = (settings: Parameters<typeof buildLogitsProcessors>[0], scores: number[], sequence: number[], c = ctx) => {
    const s = Float32Array.from(scores);
    applyLogitsProcessors(buildLogitsProcessors(settings, c), s, { sequence });
    return Array.from(s);
  };

  it('settings that are off add no processor (the fast path stays)', () => {
    expect(buildLogitsProcessors({ repetitionPenalty: 1, noRepeatNgramSize: 0, minNewTokens: 0, temperature: 0.5, topK: 3 }, ctx)).toHaveLength(0);
    expect(buildLogitsProcessors({ temperature: 0.5, topK: 3, topP: 1, typicalP: 1 }, { ...ctx, doSample: true })).toHaveLength(2);
  });

  it('min length before forced EOS: at the last step the forced eos wins', () => {
    expect(apply({ minNewTokens: 5, forcedEosTokenId: 1 }, [1, 2, 3], [0, 5, 6])).toEqual([I, 0, I]);
    expect(apply({ minNewTokens: 5, forcedEosTokenId: 1 }, [1, 2, 3], [0, 5])).toEqual([1, I, 3]);
  });

  it('temperature before top-p (sampling only)', () => {
    const l = logitsOf([0.5, 0.3, 0.15, 0.05]);
    // at temperature 0.5 the probabilities are .685 .247 .062 .007: top-p 0.9 keeps two, not three
    expect(kept(apply({ temperature: 0.5, topP: 0.9 }, l, [0], { ...ctx, doSample: true }))).toEqual([0, 1]);
    expect(kept(apply({ temperature: 0.5, topP: 0.9 }, l, [0]))).toEqual([0, 1, 2, 3]); // greedy: warpers off
  });
});

describe('generation_config.json', () => {
  it('snake_case fields become camelCase defaults; null is unset; unused fields are ignored', () => {
    const g = parseGenerationConfig({
      decoder_start_token_id: 0,
      eos_token_id: [1, 2],
      pad_token_id: 0,
      no_repeat_ngram_size: 3,
      encoder_no_repeat_ngram_size: 2,
      repetition_penalty: 1.2,
      min_new_tokens: 2,
      min_length: 4,
      max_length: 30,
      bad_words_ids: [[5], [6, 7]],
      forced_bos_token_id: 3,
      forced_eos_token_id: 1,
      num_return_sequences: 2,
      num_beams: 4,
      typical_p: 0.9,
      top_k: null,
      output_scores: false,
      transformers_version: '5.17.0',
    });
    expect(g).toEqual({
      decoderStartTokenId: 0,
      eosTokenId: [1, 2],
      padTokenId: 0,
      noRepeatNgramSize: 3,
      encoderNoRepeatNgramSize: 2,
      repetitionPenalty: 1.2,
      minNewTokens: 2,
      minLength: 4,
      maxLength: 30,
      badWordsIds: [[5], [6, 7]],
      forcedBosTokenId: 3,
      forcedEosTokenId: 1,
      numReturnSequences: 2,
      numBeams: 4,
      typicalP: 0.9,
    });
  });

  it('a known field of the wrong type or range is a ConfigError naming it', () => {
    expect(() => parseGenerationConfig({ no_repeat_ngram_size: -1 })).toThrow(ConfigError);
    expect(() => parseGenerationConfig({ repetition_penalty: 0 })).toThrow(/'repetition_penalty' must be a finite number > 0/);
    expect(() => parseGenerationConfig({ bad_words_ids: [5] })).toThrow(/'bad_words_ids'/);
    expect(() => parseGenerationConfig([])).toThrow(ConfigError);
  });
});
