import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectNoLeaks, initBackend, tf } from '@adapterkit/backend';
import { DecodeBatch, type DecodeEntry, SeededRandom } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { BUNDLED_MODEL, padRows, trimGenerated } from '../src/index.js';
import { addNoisyAdapter, adapterConfigForTests, randomRows } from './helpers.js';

// Continuous batching: entries join a running decode at different steps, with different adapters (and the
// base model) and different lengths; each must get exactly the ids it gets from generate alone.
describe('DecodeBatch (continuous batching)', () => {
  let model: T5ForConditionalGeneration;
  beforeAll(async () => {
    await initBackend('wasm');
    model = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    const config = adapterConfigForTests(model);
    ['alpha', 'beta', 'gamma'].forEach((n, i) => addNoisyAdapter(model, n, config, 300 + i));
  });
  afterAll(() => model?.dispose());

  const alone = async (e: DecodeEntry) => {
    const { inputIds, attentionMask } = padRows(e.rows);
    return (await model.generate({ inputIds, attentionMask, maxNewTokens: e.maxNewTokens, composition: e.adapter })).map((r) => trimGenerated(r, 1));
  };

  it('refuses, by name, adapters whose decoding state is per sequence (prefix, prompt, sequence gates)', () => {
    const batch = new DecodeBatch(model);
    for (const [name, config] of [
      ['p', 'prefix_tuning[prefix_length=2]'],
      ['g', 'lora[r=2,use_gating=true]'],
    ] as const) {
      model.addAdapter(name, config);
      expect(model.adapters.decodesRowwise(name)).toBe(false);
      expect(() => batch.join({ rows: [[5, 1]], adapter: name, maxNewTokens: 2 })).toThrow(new RegExp(`'${name}' keeps per-sequence decoding state`));
      model.deleteAdapter(name);
    }
    expect(model.adapters.decodesRowwise('alpha')).toBe(true);
  });

  it('entries joining and leaving at every step equal each entry alone', async () => {
    const adapters = [null, 'alpha', 'beta', 'gamma'];
    const entries: DecodeEntry[] = Array.from({ length: 12 }, (_, i) => ({
      rows: randomRows(1 + (i % 3), 500 + i, 3 + ((i * 5) % 9)),
      adapter: adapters[i % 4],
      maxNewTokens: 2 + ((i * 7) % 11),
    }));
    const expected = await Promise.all(entries.map(alone));
    expect(new Set(expected.map((e) => JSON.stringify(e[0]))).size).toBeGreaterThan(6);
    await expectNoLeaks(async () => {
      const batch = new DecodeBatch(model);
      const got = new Map<DecodeEntry, number[][]>();
      let next = 0;
      let step = 0;
      while (got.size < entries.length) {
        // one or two newcomers every other step
        if (step % 2 === 0) for (let k = 0; k < 1 + (step % 4 === 0 ? 1 : 0) && next < entries.length; k++) batch.join(entries[next++]);
        for (const r of await batch.step())
          if (r.done)
            got.set(
              r.entry,
              r.sequences.map((s) => trimGenerated(s, 1)),
            );
        step++;
        if (step > 500) throw new Error('did not finish');
      }
      batch.dispose();
      entries.forEach((e, i) => expect(got.get(e), `entry ${i} (${e.adapter})`).toEqual(expected[i]));
    });
  });

  it('entries with their own sampling, seeds and logits processors equal each entry alone', async () => {
    const adapters = [null, 'alpha', 'beta', 'gamma'];
    const kinds: DecodeEntry['options'][] = [
      { doSample: true, seed: 7, temperature: 1.5, topK: 20 },
      { repetitionPenalty: 3, noRepeatNgramSize: 2 },
      undefined,
      { doSample: true, seed: 11, topP: 0.8, numReturnSequences: 2 },
      { minNewTokens: 5, badWordsIds: [[5], [7, 9]] },
      { doSample: true, seed: 3, typicalP: 0.9, encoderNoRepeatNgramSize: 2 },
    ];
    const entries: DecodeEntry[] = Array.from({ length: 12 }, (_, i) => ({
      rows: randomRows(1 + (i % 2), 700 + i, 3 + ((i * 5) % 7)),
      adapter: adapters[i % 4],
      maxNewTokens: 4 + ((i * 3) % 9),
      options: kinds[i % kinds.length],
    }));
    const expected = await Promise.all(
      entries.map(async (e) => {
        const { inputIds, attentionMask } = padRows(e.rows);
        return (await model.generate({ inputIds, attentionMask, maxNewTokens: e.maxNewTokens, composition: e.adapter, ...e.options })).map((r) => trimGenerated(r, 1));
      }),
    );
    // sampling really draws: the two seeds-apart samples of one input differ somewhere
    expect(expected[3][0]).not.toEqual(expected[3][1]);
    await expectNoLeaks(async () => {
      const batch = new DecodeBatch(model);
      const got = new Map<DecodeEntry, number[][]>();
      let next = 0;
      for (let step = 0; got.size < entries.length; step++) {
        if (step % 2 === 0 && next < entries.length) batch.join(entries[next++]);
        for (const r of await batch.step())
          if (r.done)
            got.set(
              r.entry,
              r.sequences.map((s) => trimGenerated(s, 1)),
            );
        if (step > 500) throw new Error('did not finish');
      }
      batch.dispose();
      entries.forEach((e, i) => expect(got.get(e), `entry ${i} (${e.adapter}, ${JSON.stringify(e.options)})`).toEqual(expected[i]));
    });
    // options are checked as generate checks them, by name
    const batch = new DecodeBatch(model);
    expect(() => batch.join({ rows: [[5, 1]], adapter: null, maxNewTokens: 2, options: { numBeams: 2 } })).toThrow(/beam search .* decodes alone/);
    expect(() => batch.join({ rows: [[5, 1]], adapter: null, maxNewTokens: 2, options: { topP: 2 } })).toThrow(/topP/);
    expect(() => batch.join({ rows: [[5, 1]], adapter: null, maxNewTokens: 2, options: { repetitonPenalty: 2 } as never })).toThrow(/repetitonPenalty/);
    batch.dispose();
  });

  it('many newcomers of mixed lengths at once (encoded in length buckets) equal each entry alone', async () => {
    const adapters = [null, 'alpha', 'beta', 'gamma'];
    // 24 entries, inputs of 2 to 40 tokens: several buckets of similar length in one join
    const entries: DecodeEntry[] = Array.from({ length: 24 }, (_, i) => ({
      rows: randomRows(1 + (i % 2), 900 + i, 2 + ((i * 13) % 39)),
      adapter: adapters[i % 4],
      maxNewTokens: 3 + (i % 6),
    }));
    const expected = await Promise.all(entries.map(alone));
    await expectNoLeaks(async () => {
      const batch = new DecodeBatch(model);
      for (const e of entries) batch.join(e);
      const got = new Map<DecodeEntry, number[][]>();
      for (let step = 0; got.size < entries.length && step < 100; step++)
        for (const r of await batch.step())
          if (r.done)
            got.set(
              r.entry,
              r.sequences.map((s) => trimGenerated(s, 1)),
            );
      batch.dispose();
      entries.forEach((e, i) => expect(got.get(e), `entry ${i} (${e.adapter}, ${e.rows[0].length} tokens)`).toEqual(expected[i]));
    });
  });

  it('a left entry frees its rows; the others are unaffected', async () => {
    const a: DecodeEntry = { rows: randomRows(2, 71, 6), adapter: 'alpha', maxNewTokens: 12 };
    const b: DecodeEntry = { rows: randomRows(1, 72, 5), adapter: 'beta', maxNewTokens: 12 };
    const want = await alone(b);
    const batch = new DecodeBatch(model);
    batch.join(a);
    batch.join(b);
    await batch.step();
    expect(batch.rows).toBe(3);
    batch.leave(a);
    let done: number[][] | undefined;
    while (!done) for (const r of await batch.step()) if (r.entry === b && r.done) done = r.sequences.map((s) => trimGenerated(s, 1));
    expect(batch.rows).toBeLessThanOrEqual(1);
    expect(done).toEqual(want);
    batch.dispose();
  });

  it('stacked adapter factors shared between joins follow new weights (a reloaded adapter is never served stale)', async () => {
    const config = adapterConfigForTests(model);
    addNoisyAdapter(model, 'delta', config, 410);
    const first: DecodeEntry = { rows: randomRows(2, 81, 6), adapter: 'delta', maxNewTokens: 10 };
    const other: DecodeEntry = { rows: randomRows(1, 82, 5), adapter: 'alpha', maxNewTokens: 10 };
    const before = await alone(first);
    await expectNoLeaks(async () => {
      const batch = new DecodeBatch(model);
      batch.join(first);
      batch.join(other);
      await batch.step();
      // new values in the same variables while the batch runs (a training step, or weights assigned in place)
      const rng = new SeededRandom(999);
      for (const v of model.adapters.adapterVariables('delta').values()) {
        const value = tf.tensor(
          Float32Array.from({ length: v.size }, () => rng.normal(0, 0.5)),
          v.shape,
        );
        v.assign(value);
        value.dispose();
      }
      const second: DecodeEntry = { rows: first.rows, adapter: 'delta', maxNewTokens: 10 };
      const after = await alone(second);
      expect(after).not.toEqual(before);
      batch.leave(first);
      batch.join(second);
      let done: number[][] | undefined;
      while (!done) for (const r of await batch.step()) if (r.entry === second && r.done) done = r.sequences.map((s) => trimGenerated(s, 1));
      expect(done).toEqual(after);
      batch.dispose();
    });
    model.deleteAdapter('delta');
  });
});
