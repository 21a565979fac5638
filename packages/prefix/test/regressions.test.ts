import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { BatchSplit, Parallel, Stack, type AdapterComposition } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, inputs, labels, rowsOf, cleanup as cleanupAdapters, copyFlatWithout as copyFlat } from './helpers.js';

/** Four rows: the fixture's two plus two variations (different lengths through the mask). */
const batch4 = {
  inputIds: [...inputs.inputIds, inputs.inputIds[1].map((t, _i) => (t === 0 ? 0 : ((t + 7) % 120) + 3)), inputs.inputIds[0].map((t) => ((t + 13) % 120) + 3)],
  attentionMask: [...inputs.attentionMask, inputs.attentionMask[1], inputs.attentionMask[0]],
  decoderInputIds: [...inputs.decoderInputIds, inputs.decoderInputIds[0], inputs.decoderInputIds[1]],
};
const rowsOfInput = (b: typeof batch4, start: number, end: number) => ({
  inputIds: b.inputIds.slice(start, end),
  attentionMask: b.attentionMask.slice(start, end),
  decoderInputIds: b.decoderInputIds.slice(start, end),
});

/**
 * Rows that ran with other rows (padded prefixes, a different batch size) may differ from running alone by
 * float32 summation order (wasm's blocked matmuls): the fixture's tolerance for a faithful float32 result.
 */
const ROWS_TOL = 1e-4;

const small = (extra = '') => `prefix_tuning[bottleneck_size=16${extra}]`;

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`prefix tuning regressions on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    const logitsOf = (comp: AdapterComposition | null, input: typeof inputs = inputs) => {
      const out = model.forward({ ...input, composition: comp });
      out.encoderLastHiddenState.dispose();
      return out.logits;
    };
    let base: tf.Tensor;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      base = logitsOf(null);
    });
    afterAll(() => {
      base.dispose();
      model.dispose();
    });
    const cleanup = (...names: string[]) => cleanupAdapters(model, ...names);

    const copyFlatWithout = (from: string, to: string, leaveOut: number[]) => copyFlat(model, from, to, leaveOut);

    describe('regression: prefix tuning + KV cache (peft #2192)', () => {
      for (const flat of [false, true]) {
        it(`greedy and 3-beam generation with a ${flat ? 'flat' : 'MLP'} prefix equal the uncached recomputation`, async () => {
          model.addAdapter('g', small(flat ? ',flat=true' : ''), { seed: 5 });
          model.setActiveAdapters('g');
          const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 };
          const cached = await model.generate(o);
          expect(cached).toEqual(await model.generate({ ...o, useCache: false }));
          const beams = await model.generate({ ...o, numBeams: 3, earlyStopping: true });
          expect(beams).toEqual(await model.generate({ ...o, numBeams: 3, earlyStopping: true, useCache: false }));
          // With AdapterDrop (layers with and without prefix in one generation) too.
          model.setActiveAdapters('g', { skipLayers: [0, 2] });
          expect(await model.generate({ ...o, numBeams: 2 })).toEqual(await model.generate({ ...o, numBeams: 2, useCache: false }));
          model.setActiveAdapters(null);
          expect(cached).not.toEqual(await model.generate(o)); // the prefix acts
          cleanup('g');
        });
      }
    });

    describe('regression: T5 + AdapterDrop + prefix tuning (adapters #669)', () => {
      it('layers 0 and 2 dropped: forward and a training step run; dropped layers behave as without the adapter', async () => {
        for (const extra of ['', ',use_gating=true', ',flat=true,shared_gating=false,use_gating=true']) {
          model.addAdapter('d', small(extra), { seed: 6 });
          model.trainAdapter('d');
          model.setActiveAdapters('d', { skipLayers: [0, 2] });
          const vars = model.adapters.trainableVariables();
          const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar, vars);
          expect(Number.isFinite((await value.data())[0])).toBe(true);
          // Prefixes and gates of dropped layers get no gradient; the others do.
          for (const [k, g] of Object.entries(grads)) {
            const mag = Math.max(...Array.from(await g.abs().data()));
            if (/gate\.(0|2)\./.test(k)) expect(mag, k).toBe(0);
            else expect(mag, k).toBeGreaterThan(0);
          }
          tf.dispose([value, ...Object.values(grads)]);
          cleanup('d');
        }
        // Same weights on the kept layers, arranged in an adapter that leaves layers 0 and 2 out.
        model.addAdapter('d', small(',flat=true'), { seed: 7 });
        model.addAdapter('d_lo', small(',flat=true,leave_out=[0,2]'), { seed: 8 });
        copyFlatWithout('d', 'd_lo', [0, 2]);
        model.setActiveAdapters('d', { skipLayers: [0, 2] });
        const dropped = logitsOf('d');
        const left = logitsOf('d_lo');
        expect(await maxAbsDiff(dropped, left)).toBeLessThanOrEqual(1e-5);
        tf.dispose([dropped, left]);
        cleanup('d', 'd_lo');
      });
    });

    describe('regression: prefix tuning + BatchSplit with an empty part (adapters #794)', () => {
      it('each non-empty part equals its adapter alone on those rows', async () => {
        model.addAdapter('a', small(',prefix_length=5'), { seed: 9 });
        model.addAdapter('b', small(',prefix_length=3'), { seed: 10 });
        model.addAdapter('c', small(',prefix_length=4,flat=true'), { seed: 11 });
        const cases: [string[], number[]][] = [
          [
            ['a', 'b'],
            [2, 0],
          ],
          [
            ['a', 'b'],
            [0, 2],
          ],
          [
            ['a', 'b'],
            [1, 1],
          ],
          [
            ['a', 'b', 'c'],
            [3, 0, 1],
          ],
        ];
        for (const [names, sizes] of cases) {
          const total = sizes.reduce((x, y) => x + y, 0);
          const input = rowsOfInput(batch4, 0, total);
          const split = logitsOf(BatchSplit(...names, { batchSizes: sizes }), input);
          let start = 0;
          for (let i = 0; i < names.length; i++) {
            if (sizes[i] > 0) {
              const alone = logitsOf(names[i], rowsOfInput(batch4, start, start + sizes[i]));
              const part = rowsOf(split, start, start + sizes[i]);
              expect(await maxAbsDiff(part, alone), `${names[i]} in [${sizes}]`).toBeLessThanOrEqual(ROWS_TOL);
              tf.dispose([alone, part]);
            }
            start += sizes[i];
          }
          split.dispose();
        }
        // Generation under BatchSplit: each part equals its adapter's own generation.
        const gen = await model.generate({
          inputIds: batch4.inputIds.slice(0, 2),
          attentionMask: batch4.attentionMask.slice(0, 2),
          maxNewTokens: 6,
          composition: BatchSplit('a', 'b', { batchSizes: [1, 1] }),
        });
        expect(gen[0]).toEqual(
          (await model.generate({ inputIds: batch4.inputIds.slice(0, 1), attentionMask: batch4.attentionMask.slice(0, 1), maxNewTokens: 6, composition: 'a' }))[0],
        );
        expect(gen[1]).toEqual(
          (await model.generate({ inputIds: batch4.inputIds.slice(1, 2), attentionMask: batch4.attentionMask.slice(1, 2), maxNewTokens: 6, composition: 'b' }))[0],
        );
        cleanup('a', 'b', 'c');
      });
    });

    it('Stack concatenates prefixes; Parallel slices equal each adapter alone, in forward and generation', async () => {
      model.addAdapter('a', small(',prefix_length=5'), { seed: 12 });
      model.addAdapter('b', small(',prefix_length=3,flat=true'), { seed: 13 });
      const par = logitsOf(Parallel('a', 'b'));
      expect(par.shape[0]).toBe(4);
      for (const [i, n] of ['a', 'b'].entries()) {
        const alone = logitsOf(n);
        const part = rowsOf(par, 2 * i, 2 * i + 2);
        expect(await maxAbsDiff(part, alone), n).toBeLessThanOrEqual(ROWS_TOL);
        tf.dispose([alone, part]);
      }
      par.dispose();
      const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 6 };
      const gen = await model.generate({ ...o, composition: Parallel('a', 'b') });
      expect(gen.slice(0, 2)).toEqual(await model.generate({ ...o, composition: 'a' }));
      expect(gen.slice(2, 4)).toEqual(await model.generate({ ...o, composition: 'b' }));
      expect(gen.slice(0, 2)).not.toEqual(gen.slice(2, 4)); // the two branches really differ
      // Stack: the two prefixes are concatenated (8 positions) and differ from either alone.
      const st = logitsOf(Stack('a', 'b'));
      const a = logitsOf('a');
      expect(await maxAbsDiff(st, a)).toBeGreaterThan(1e-4);
      const sg = await model.generate({ ...o, composition: Stack('a', 'b') });
      expect(sg).toEqual(await model.generate({ ...o, composition: Stack('a', 'b'), useCache: false }));
      tf.dispose([st, a]);
      cleanup('a', 'b');
    });
  });
}
