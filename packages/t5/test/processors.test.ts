/**
 * Logits processors on the fixture model's real logits: every greedy step equals a small independent
 * restatement of transformers' rules applied to the full (uncached) forward's logits; sampled tokens lie
 * in the set those rules allow; cached == uncached under every processor (greedy and beams);
 * numReturnSequences equals its equivalences; generation_config.json fields act as options.
 */
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { ConfigError, InputError, type GenerateOptions } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, inputs } from './fixture-model.js';
import { initBackend } from './helpers.js';

type Settings = Omit<GenerateOptions, 'inputIds' | 'attentionMask'>;
const NEG_INF = Number.NEGATIVE_INFINITY;
const EOS = 1;

/** transformers' rules, restated plainly (n-grams as strings, cumulative sums from the least likely). */
function reference(logits: number[], seq: number[], source: number[], o: Settings, maxLength: number): number[] {
  const s = [...logits];
  const ban = (t: number) => {
    s[t] = NEG_INF;
  };
  const key = (ids: number[]) => ids.join(' ');
  const ngrams = (ids: number[], n: number) => new Set(ids.slice(0, ids.length - n + 1).map((_, i) => key(ids.slice(i, i + n))));
  const completes = (set: Set<string>, n: number, t: number) => seq.length >= n - 1 && set.has(key([...seq.slice(seq.length - (n - 1)), t]));
  if (o.repetitionPenalty) for (const t of new Set(seq)) s[t] = s[t] < 0 ? s[t] * o.repetitionPenalty : s[t] / o.repetitionPenalty;
  if (o.noRepeatNgramSize) {
    const n = o.noRepeatNgramSize;
    const seen = ngrams(seq, n);
    s.forEach((_, t) => completes(seen, n, t) && ban(t));
  }
  if (o.encoderNoRepeatNgramSize) {
    const n = o.encoderNoRepeatNgramSize;
    const seen = ngrams(source, n);
    s.forEach((_, t) => completes(seen, n, t) && ban(t));
  }
  for (const word of o.badWordsIds ?? []) {
    if (word.length === 1 && word[0] === EOS) continue;
    if (word.length === 1 || (seq.length >= word.length && key(seq.slice(seq.length - word.length + 1)) === key(word.slice(0, -1)))) ban(word[word.length - 1]);
  }
  if (o.minLength && seq.length < o.minLength) ban(EOS);
  if (o.minNewTokens && seq.length - 1 < o.minNewTokens) ban(EOS);
  const force = (t: number) => s.forEach((_, i) => (s[i] = i === t ? 0 : NEG_INF));
  if (o.forcedBosTokenId !== undefined && seq.length === 1) force(o.forcedBosTokenId);
  if (o.forcedEosTokenId !== undefined && seq.length === maxLength - 1) force(o.forcedEosTokenId as number);
  if (!o.doSample) return s;
  if (o.temperature) s.forEach((x, i) => (s[i] = x / o.temperature!));
  const topK = o.topK ?? 50;
  if (topK) {
    const kth = [...s].sort((a, b) => b - a)[Math.min(topK, s.length) - 1];
    s.forEach((x, i) => x < kth && ban(i));
  }
  const softmax = (xs: number[]) => {
    const m = Math.max(...xs);
    const e = xs.map((x) => Math.exp(x - m));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((x) => x / z);
  };
  if (o.topP !== undefined && o.topP < 1) {
    const asc = s.map((_, i) => i).sort((a, b) => s[a] - s[b]);
    const p = softmax(asc.map((i) => s[i]));
    let cum = 0;
    asc.forEach((i, j) => {
      cum += p[j];
      if (j < asc.length - 1 && cum <= 1 - o.topP!) ban(i);
    });
  }
  if (o.typicalP !== undefined && o.typicalP < 1) {
    const p = softmax(s);
    const entropy = -p.reduce((a, q) => a + (q > 0 ? q * Math.log(q) : 0), 0);
    const dist = p.map((q) => Math.abs(-Math.log(q) - entropy));
    const order = s.map((_, i) => i).sort((a, b) => dist[a] - dist[b] || a - b);
    let cum = 0;
    let last = 0;
    for (; last < order.length - 1; last++) {
      cum += p[order[last]];
      if (cum >= o.typicalP) break;
    }
    order.forEach((i, j) => j > 0 && dist[i] > dist[order[last]] && ban(i));
  }
  return s;
}

const trimAtEos = (row: number[]) => {
  const end = row.indexOf(EOS, 1);
  return end < 0 ? row : row.slice(0, end + 1);
};

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`logits processors on the fixture model (${backend})`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());
    const gen = (o: Settings) => model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 10, ...o });

    /** Full-forward logits of every generated prefix: logits[r][t] predicts ids[r][t + 1]. */
    async function stepLogits(ids: number[][]): Promise<number[][][]> {
      const out = model.forward({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, decoderInputIds: ids });
      const l = (await out.logits.array()) as number[][][];
      tf.dispose([out.logits, out.encoderLastHiddenState]);
      return l;
    }

    // [what, settings without it, settings with it]: each processor must change the output, and match the reference
    const cases: [string, Settings, Settings][] = [
      ['repetitionPenalty', {}, { repetitionPenalty: 3 }],
      ['noRepeatNgramSize 1', {}, { noRepeatNgramSize: 1 }],
      ['noRepeatNgramSize 2', { minNewTokens: 12, maxNewTokens: 14 }, { minNewTokens: 12, maxNewTokens: 14, noRepeatNgramSize: 2 }],
      ['encoderNoRepeatNgramSize', {}, { encoderNoRepeatNgramSize: 1 }],
      ['badWordsIds (single and multi-token)', { minNewTokens: 12 }, { minNewTokens: 12, badWordsIds: [[60], [17, 83], [1]] }],
      ['minLength', {}, { minLength: 10 }],
      ['forcedBosTokenId', {}, { forcedBosTokenId: 7 }],
      ['forcedEosTokenId', { maxNewTokens: 4 }, { maxNewTokens: 4, forcedEosTokenId: 1 }],
      ['all together', {}, { repetitionPenalty: 1.5, noRepeatNgramSize: 2, badWordsIds: [[4]], minNewTokens: 6, forcedEosTokenId: 1, maxNewTokens: 9 }],
    ];

    for (const [what, without, settings] of cases) {
      it(`greedy with ${what}: every step is the reference's argmax; cached == uncached`, async () => {
        const ids = await gen(settings);
        expect(ids).not.toEqual(await gen(without));
        expect(await gen({ ...settings, useCache: false })).toEqual(ids);
        const logits = await stepLogits(ids);
        const maxLength = (settings.maxNewTokens ?? 10) + 1;
        ids.forEach((row, r) => {
          for (let t = 1; t < row.length && !row.slice(1, t).includes(EOS); t++) {
            const scores = reference(logits[r][t - 1], row.slice(0, t), inputs.inputIds[r], settings, maxLength);
            expect(row[t]).toBe(scores.indexOf(Math.max(...scores)));
          }
        });
      });
    }

    it('beam search under every processor: cached == uncached, and the processors hold in the result', async () => {
      for (const settings of [
        { repetitionPenalty: 1.5, noRepeatNgramSize: 2, badWordsIds: [[60], [17, 83]], minNewTokens: 6, forcedEosTokenId: 1, maxNewTokens: 9 },
        { encoderNoRepeatNgramSize: 1, forcedBosTokenId: 7, minLength: 5, maxNewTokens: 8 },
      ] as Settings[]) {
        const o = { ...settings, numBeams: 3, earlyStopping: true };
        const ids = await gen(o);
        expect(ids).not.toEqual(await gen({ numBeams: 3, earlyStopping: true, maxNewTokens: settings.maxNewTokens }));
        expect(await gen({ ...o, useCache: false })).toEqual(ids);
        ids.map(trimAtEos).forEach((row, r) => {
          const generated = row.slice(1);
          if (settings.forcedBosTokenId !== undefined) expect(row[1]).toBe(settings.forcedBosTokenId);
          if (settings.minNewTokens && row.includes(EOS)) expect(generated.indexOf(EOS)).toBeGreaterThanOrEqual(settings.minNewTokens);
          if (settings.minLength && row.includes(EOS)) expect(row.indexOf(EOS)).toBeGreaterThanOrEqual(settings.minLength - 1);
          if (settings.noRepeatNgramSize) expect(new Set(row.slice(1).map((t, i) => `${row[i]},${t}`)).size).toBe(row.length - 1);
          if (settings.badWordsIds) expect(generated).not.toContain(60);
          if (settings.forcedEosTokenId !== undefined) expect(row.length).toBeLessThanOrEqual(settings.maxNewTokens! + 1);
          if (settings.encoderNoRepeatNgramSize) for (const t of generated.slice(1)) expect(inputs.inputIds[r]).not.toContain(t);
        });
      }
    });

    it('sampling: each drawn token is one the reference keeps (temperature, top-k, top-p, typical-p with penalties)', async () => {
      for (const settings of [
        { doSample: true, temperature: 2, topK: 5, repetitionPenalty: 1.3, seed: 3 },
        { doSample: true, temperature: 3, topP: 0.6, seed: 4 },
        { doSample: true, temperature: 3, typicalP: 0.5, noRepeatNgramSize: 2, seed: 5 },
      ] as Settings[]) {
        const ids = await gen(settings);
        expect(await gen({ ...settings, useCache: false })).toEqual(ids);
        const logits = await stepLogits(ids);
        ids.forEach((row, r) => {
          for (let t = 1; t < row.length && !row.slice(1, t).includes(EOS); t++) {
            const scores = reference(logits[r][t - 1], row.slice(0, t), inputs.inputIds[r], settings, 11);
            expect(scores[row[t]]).toBeGreaterThan(NEG_INF);
          }
        });
      }
    });

    it('numReturnSequences: samples equal the inputs repeated; beams return the best first', async () => {
      const o = { doSample: true, temperature: 3, seed: 9 };
      const repeated = inputs.inputIds.flatMap((row) => [row, row, row]);
      const repeatedMask = inputs.attentionMask.flatMap((row) => [row, row, row]);
      const sampled = await gen({ ...o, numReturnSequences: 3 });
      expect(sampled).toHaveLength(6);
      expect(sampled).toEqual(await model.generate({ inputIds: repeated, attentionMask: repeatedMask, maxNewTokens: 10, ...o }));
      expect(new Set(sampled.slice(0, 3).map((r) => r.join())).size).toBeGreaterThan(1);
      const best = await gen({ numBeams: 3 });
      const three = await gen({ numBeams: 3, numReturnSequences: 3 });
      expect(three).toHaveLength(6);
      expect([trimAtEos(three[0]), trimAtEos(three[3])]).toEqual(best.map(trimAtEos));
      await expect(gen({ numReturnSequences: 2 })).rejects.toThrow(InputError);
      await expect(gen({ numBeams: 2, numReturnSequences: 3 })).rejects.toThrow(/cannot exceed numBeams/);
    });

    it('options are checked: ranges, vocabulary, unknown names', async () => {
      await expect(gen({ repetitionPenalty: 0 })).rejects.toThrow(/repetitionPenalty must be a finite number > 0/);
      await expect(gen({ noRepeatNgramSize: 1.5 })).rejects.toThrow(InputError);
      await expect(gen({ badWordsIds: [[500]] })).rejects.toThrow(/badWordsIds/);
      await expect(gen({ forcedBosTokenId: 128 })).rejects.toThrow(/forcedBosTokenId/);
      await expect(gen({ typicalP: 0 })).rejects.toThrow(/typicalP/);
      await expect(gen({ repetition_penalty: 2 } as Settings)).rejects.toThrow(/unknown option 'repetition_penalty'/);
    });
  });
}

describe('generation_config.json fields act as defaults', () => {
  let dir: string;
  beforeAll(async () => {
    await initBackend('cpu');
    dir = mkdtempSync(join(tmpdir(), 'adapterkit-genconfig-'));
    cpSync(FIXTURE_DIR, dir, { recursive: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('as transformers reads them (snake_case), overridden by options; a bad field is a ConfigError', async () => {
    const fields = {
      decoder_start_token_id: 0,
      eos_token_id: 1,
      pad_token_id: 0,
      repetition_penalty: 1.5,
      no_repeat_ngram_size: 2,
      min_new_tokens: 6,
      max_length: 10,
      num_beams: 2,
    };
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(fields));
    const configured = await T5ForConditionalGeneration.fromPretrained(dir);
    const plain = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask };
    const expected = await plain.generate({ ...o, repetitionPenalty: 1.5, noRepeatNgramSize: 2, minNewTokens: 6, maxNewTokens: 9, numBeams: 2 });
    expect(await configured.generate(o)).toEqual(expected);
    expect(await configured.generate({ ...o, repetitionPenalty: 1, noRepeatNgramSize: 0, minNewTokens: 0, numBeams: 1, maxNewTokens: 8 })).toEqual(
      await plain.generate({ ...o, maxNewTokens: 8 }),
    );
    configured.dispose();
    plain.dispose();
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ ...fields, no_repeat_ngram_size: 'two' }));
    await expect(T5ForConditionalGeneration.fromPretrained(dir)).rejects.toThrow(ConfigError);
  });
});
