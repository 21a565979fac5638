import { describe, it, expect, beforeAll } from 'vitest';
import { initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { Average, BatchSplit, Parallel, Stack, resolveConfig } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { baseLogits, inputs, loadModel, logits, maxDiff, setVariables } from './helpers.js';

const V = 128;
const T = inputs.decoderInputIds[0].length;
const rowSize = T * V;
const rows = (data: Float32Array, start: number, end: number) => data.slice(start * rowSize, end * rowSize);

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`bottleneck composition on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let base: Float32Array;
    let aAlone: Float32Array;
    let bAlone: Float32Array;
    beforeAll(async () => {
      await initBackend(backend);
      model = await loadModel();
      base = await baseLogits(model);
      // Two adapters of different kinds and non-zero weights, so that every row tells them apart.
      model.addAdapter('a', 'seq_bn[reduction_factor=4]');
      // b also has an invertible adapter: its rows must get b's NICE block, a's rows none.
      model.addAdapter('b', { ...resolveConfig('double_seq_bn_inv'), cross_adapter: true, use_gating: true });
      setVariables(model, 'a', /./, 'random', 1);
      setVariables(model, 'b', /./, 'random', 2);
      aAlone = await logits(model, { composition: 'a' });
      bAlone = await logits(model, { composition: 'b' });
      expect(maxDiff(aAlone, base)).toBeGreaterThan(1e-3);
      expect(maxDiff(bAlone, base)).toBeGreaterThan(1e-3);
      expect(maxDiff(aAlone, bAlone)).toBeGreaterThan(1e-3);
    });

    it('Parallel: each row block equals its adapter alone (and the forward leaks nothing)', async () => {
      model.setActiveAdapters(Parallel('a', 'b'));
      const out = await expectNoLeaks(() => logits(model));
      expect(out.length).toBe(2 * aAlone.length);
      expect(maxDiff(out.slice(0, aAlone.length), aAlone)).toBeLessThan(1e-5);
      expect(maxDiff(out.slice(aAlone.length), bAlone)).toBeLessThan(1e-5);
    });

    it('BatchSplit [2,0] and [1,1]: rows equal their adapter alone', async () => {
      model.setActiveAdapters(BatchSplit('a', 'b', { batchSizes: [2, 0] }));
      expect(maxDiff(await logits(model), aAlone)).toBeLessThan(1e-5);
      model.setActiveAdapters(BatchSplit('a', 'b', { batchSizes: [0, 2] }));
      expect(maxDiff(await logits(model), bAlone)).toBeLessThan(1e-5);
      model.setActiveAdapters(BatchSplit('a', 'b', { batchSizes: [1, 1] }));
      const out = await logits(model);
      expect(maxDiff(rows(out, 0, 1), rows(aAlone, 0, 1))).toBeLessThan(1e-5);
      expect(maxDiff(rows(out, 1, 2), rows(bAlone, 1, 2))).toBeLessThan(1e-5);
    });

    it('Stack of one equals the adapter; Stack(a, b) differs from both', async () => {
      model.setActiveAdapters(Stack('a'));
      expect(maxDiff(await logits(model), aAlone)).toBeLessThan(1e-6);
      model.setActiveAdapters(Stack('a', 'b'));
      const ab = await logits(model);
      expect(maxDiff(ab, aAlone)).toBeGreaterThan(1e-4);
      expect(maxDiff(ab, bAlone)).toBeGreaterThan(1e-4);
    });

    it('Average weights [1, 0] equals the first adapter, [0, 1] the second', async () => {
      model.addAdapter('a2', 'seq_bn[reduction_factor=4]');
      setVariables(model, 'a2', /./, 'random', 3);
      model.setActiveAdapters(Average('a', 'a2', { weights: [1, 0] }));
      expect(maxDiff(await logits(model), aAlone)).toBeLessThan(1e-5);
      model.setActiveAdapters(Average('a2', 'a', { weights: [0, 1] }));
      expect(maxDiff(await logits(model), aAlone)).toBeLessThan(1e-5);
      model.deleteAdapter('a2');
    });

    it('averageAdapter (linear weight average) of an adapter with a copy of itself equals it', async () => {
      model.averageAdapter('avg', ['a', 'a'], [0.3, 0.7]);
      expect(maxDiff(await logits(model, { composition: 'avg' }), aAlone)).toBeLessThan(1e-5);
      model.deleteAdapter('avg');
    });

    it('Parallel of BatchSplit and Stack nest as their parts', async () => {
      model.setActiveAdapters(Parallel(Stack('a'), BatchSplit('a', 'b', { batchSizes: [1, 1] })));
      const out = await logits(model);
      expect(maxDiff(out.slice(0, aAlone.length), aAlone)).toBeLessThan(1e-5);
      expect(maxDiff(rows(out, 2, 3), rows(aAlone, 0, 1))).toBeLessThan(1e-5);
      expect(maxDiff(rows(out, 3, 4), rows(bAlone, 1, 2))).toBeLessThan(1e-5);
    });

    it('AdapterDrop: skipping every layer gives the base model; skipping some changes the output', async () => {
      model.setActiveAdapters(Stack('a', 'b'), { skipLayers: [0, 1, 2, 3] });
      expect(maxDiff(await logits(model), base)).toBeLessThanOrEqual(1e-6);
      model.setActiveAdapters('a', { skipLayers: [0, 1] });
      const some = await logits(model);
      expect(maxDiff(some, base)).toBeGreaterThan(1e-5);
      expect(maxDiff(some, aAlone)).toBeGreaterThan(1e-5);
      model.setActiveAdapters(null);
    });

    it('cached greedy generation: Parallel rows equal each adapter alone, cached equals uncached', async () => {
      // (Not with use_gating: its gate is a mean over the sequence, which a cached step sees one token of — as in adapters.)
      model.addAdapter('c', 'par_bn[reduction_factor=8]');
      setVariables(model, 'c', /./, 'random', 4);
      const gen = (useCache: boolean) => model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 5, useCache });
      model.setActiveAdapters('a');
      const a = await gen(true);
      expect(await gen(false)).toEqual(a);
      model.setActiveAdapters('c');
      const c = await gen(true);
      expect(await gen(false)).toEqual(c);
      expect(c).not.toEqual(a);
      model.setActiveAdapters(Parallel('a', 'c'));
      expect(await gen(true)).toEqual([...a, ...c]);
      model.setActiveAdapters(null);
      model.deleteAdapter('c');
    });
  });
}
