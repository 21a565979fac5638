import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { Average, BatchSplit, CompositionError, ConfigError, Parallel, Stack, type AdapterComposition } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, inputs, labels } from '@adapterkit/t5/test';
import { PROMPT_KEY } from '../src/index.js';

type Ids = number[][];

/** Rows [start, end) of a [rows, …] tensor. */
const rowsOf = (t: tf.Tensor, start: number, end: number) => t.slice([start, 0, 0], [end - start, -1, -1]);

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`prompt tuning on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let base: tf.Tensor;
    const logitsOf = (composition: AdapterComposition | null, input: { inputIds: Ids; attentionMask: Ids; decoderInputIds: Ids } = inputs) => {
      const out = model.forward({ ...input, composition });
      out.encoderLastHiddenState.dispose();
      return out.logits;
    };
    const promptOf = (name: string) => model.adapters.adapterVariables(name).get(PROMPT_KEY)!;
    const cleanup = (...names: string[]) => {
      model.setActiveAdapters(null);
      for (const n of names) if (model.adapters.hasAdapter(n)) model.deleteAdapter(n);
    };
    /** Asserts two logits tensors agree within `tol` and disposes both. */
    const expectClose = async (a: tf.Tensor, b: tf.Tensor, tol = 1e-5) => {
      expect(a.shape).toEqual(b.shape);
      expect(await maxAbsDiff(a, b)).toBeLessThanOrEqual(tol);
      tf.dispose([a, b]);
    };

    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      base = logitsOf(null);
    });
    afterAll(() => {
      base.dispose();
      model.dispose();
    });

    it('prompt_length 0, an inactive prompt and a composition without it leave the logits exactly as the base model', async () => {
      model.addAdapter('zero', 'prompt_tuning[prompt_length=0]');
      model.addAdapter('p', 'prompt_tuning[prompt_length=3]', { seed: 1 });
      const zero = logitsOf('zero');
      expect(await maxAbsDiff(zero, base)).toBe(0);
      const inactive = logitsOf(null);
      expect(await maxAbsDiff(inactive, base)).toBe(0);
      const acting = logitsOf('p');
      expect(await maxAbsDiff(acting, base)).toBeGreaterThan(1e-3);
      tf.dispose([zero, inactive, acting]);
      cleanup('zero', 'p');
    });

    for (const combine of ['prefix', 'prefix_after_bos'] as const) {
      it(`from_string (${combine}): a prompt of token embeddings equals those tokens in the input`, async () => {
        const text = 'hello';
        const ids = model.encodeText(text);
        const P = ids.length + 2; // repeated past the text's length, as both libraries do
        model.addAdapter('s', { method: 'prompt_tuning', prompt_length: P, prompt_init: 'from_string', prompt_init_text: text, combine });
        const tokens = Array.from({ length: P }, (_, i) => ids[i % ids.length]);
        const at = combine === 'prefix' ? 0 : 1;
        const insert = (rows: Ids, values: number[]) => rows.map((r) => [...r.slice(0, at), ...values, ...r.slice(at)]);
        const expanded = {
          inputIds: insert(inputs.inputIds, tokens),
          attentionMask: insert(inputs.attentionMask, new Array(P).fill(1)),
          decoderInputIds: inputs.decoderInputIds,
        };
        await expectClose(logitsOf('s'), logitsOf(null, expanded));
        cleanup('s');
      });
    }

    it('Stack(a, b) composes the prepends: equals one prompt [b; a]', async () => {
      model.addAdapter('a', 'prompt_tuning[prompt_length=2]', { seed: 2 });
      model.addAdapter('b', 'prompt_tuning[prompt_length=3]', { seed: 3 });
      model.addAdapter('ba', 'prompt_tuning[prompt_length=5]');
      const joined = tf.concat([promptOf('b'), promptOf('a')], 0);
      promptOf('ba').assign(joined);
      joined.dispose();
      await expectClose(logitsOf(Stack('a', 'b')), logitsOf('ba'));
      cleanup('a', 'b', 'ba');
    });

    it('Parallel: each branch equals its prompt alone (different lengths, and a branch without a prompt)', async () => {
      model.addAdapter('a', 'prompt_tuning[prompt_length=2]', { seed: 4 });
      model.addAdapter('b', 'prompt_tuning[prompt_length=5]', { seed: 5 });
      model.addAdapter('z', 'prompt_tuning[prompt_length=0]');
      const both = logitsOf(Parallel('a', 'b', 'z'));
      const B = inputs.inputIds.length;
      expect(both.shape[0]).toBe(3 * B);
      await expectClose(rowsOf(both, 0, B), logitsOf('a'));
      await expectClose(rowsOf(both, B, 2 * B), logitsOf('b'));
      await expectClose(rowsOf(both, 2 * B, 3 * B), base.clone());
      both.dispose();
      cleanup('a', 'b', 'z');
    });

    it('BatchSplit: each part equals its prompt alone on those rows; an empty part is skipped', async () => {
      model.addAdapter('a', 'prompt_tuning[prompt_length=2]', { seed: 6 });
      model.addAdapter('b', 'prompt_tuning[prompt_length=4,combine=prefix_after_bos]', { seed: 7 });
      const row = (i: number) => ({ inputIds: [inputs.inputIds[i]], attentionMask: [inputs.attentionMask[i]], decoderInputIds: [inputs.decoderInputIds[i]] });
      const split = logitsOf(BatchSplit('a', 'b', { batchSizes: [1, 1] }));
      await expectClose(rowsOf(split, 0, 1), logitsOf('a', row(0)));
      await expectClose(rowsOf(split, 1, 2), logitsOf('b', row(1)));
      split.dispose();
      await expectClose(logitsOf(BatchSplit('a', 'b', { batchSizes: [2, 0] })), logitsOf('a'));
      cleanup('a', 'b');
    });

    it('generation: cached == uncached (greedy and beam; one prompt, BatchSplit, Parallel) and leaks nothing', async () => {
      model.addAdapter('a', 'prompt_tuning[prompt_length=3]', { seed: 8 });
      model.addAdapter('b', 'prompt_tuning[prompt_length=1]', { seed: 9 });
      const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 4 };
      const cases: [AdapterComposition, number][] = [
        ['a', 1],
        ['a', 2],
        [BatchSplit('a', 'b', { batchSizes: [1, 1] }), 2],
        [Parallel('a', 'b'), 1],
      ];
      for (const [composition, numBeams] of cases) {
        const cached = await model.generate({ ...o, numBeams, composition });
        expect(await model.generate({ ...o, numBeams, composition, useCache: false })).toEqual(cached);
      }
      model.setActiveAdapters('a');
      await expectNoLeaks(() => tf.dispose(logitsOf('a')), 'forward');
      await expectNoLeaks(() => model.generate({ ...o, numBeams: 2 }), 'beam generate');
      cleanup('a', 'b');
    });

    it('training changes only the trained prompt: base weights and other adapters stay as they were', async () => {
      model.addAdapter('t', 'prompt_tuning[prompt_length=3]', { seed: 10 });
      model.addAdapter('other', 'prompt_tuning[prompt_length=2]', { seed: 11 });
      model.trainAdapter('t');
      const snapshot = async (ts: Iterable<[string, tf.Tensor]>) => new Map(await Promise.all([...ts].map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)));
      const baseBefore = await snapshot(model.baseTensors());
      const otherBefore = await snapshot(model.adapters.adapterVariables('other'));
      const promptBefore = Float32Array.from(await promptOf('t').data());
      const vars = model.adapters.trainableVariables();
      expect(vars).toEqual([promptOf('t')]);
      for (let step = 0; step < 2; step++) {
        const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar, vars);
        for (const v of vars) {
          const next = tf.tidy(() => v.sub(grads[v.name].mul(0.5)));
          v.assign(next);
          next.dispose();
        }
        tf.dispose([value, ...Object.values(grads)]);
      }
      expect(await maxAbsDiff(promptOf('t'), promptBefore)).toBeGreaterThan(1e-4);
      for (const [k, v] of await snapshot(model.baseTensors())) expect(await maxAbsDiff(v, baseBefore.get(k)!), k).toBe(0);
      for (const [k, v] of await snapshot(model.adapters.adapterVariables('other'))) expect(await maxAbsDiff(v, otherBefore.get(k)!), k).toBe(0);
      cleanup('t', 'other');
    });

    it('refuses unknown options, bad values and Average by name', () => {
      expect(() => model.addAdapter('x', 'prompt_tuning[prompt_lenght=3]')).toThrow(ConfigError);
      expect(() => model.addAdapter('x', 'prompt_tuning[combine=suffix]')).toThrow(/combine/);
      expect(() => model.addAdapter('x', 'prompt_tuning[prompt_init=from_string]')).toThrow(/prompt_init_text/);
      model.addAdapter('a', 'prompt_tuning[prompt_length=2]');
      model.addAdapter('b', 'prompt_tuning[prompt_length=2]');
      expect(() => model.setActiveAdapters(Average('a', 'b'))).toThrow(CompositionError);
      expect(() => model.setActiveAdapters(Average('a', 'b'))).toThrow(/Average is not supported by prompt adapters/);
      cleanup('a', 'b', 'x');
    });
  });
}
