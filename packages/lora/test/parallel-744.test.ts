import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { Parallel, SeededRandom } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, logitsOf, maxDiff, randomize, rowsOf } from './helpers.js';

/**
 * adapter-hub/adapters #744: T5 + LoRA under Parallel with 5 adapters and sequence length 140 failed with
 * query [1,12,700,64] vs key [1,12,140,64]: the replicated batch was folded into the sequence axis where
 * LoRA had replicated q/v but not k. Here replication is a batch-axis operation done once at the input.
 */
for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`T5 LoRA under Parallel (adapters #744) on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    const names = ['p0', 'p1', 'p2', 'p3', 'p4'];
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      // LoRA on q and v (the setup) of encoder self, decoder self and cross attention.
      names.forEach((n, i) => {
        model.addAdapter(n, 'lora[r=4,alpha=8]', { seed: 100 + i });
        randomize(model, n, 200 + i);
      });
    });
    afterAll(() => model.dispose());

    it('T5 LoRA under Parallel (adapters #744): 5 adapters, sequence 140, each slice equals that adapter alone', async () => {
      const rng = new SeededRandom(744);
      const ids = [Array.from({ length: 140 }, () => 3 + Math.floor(rng.next() * 125))];
      const input = { inputIds: ids, attentionMask: [ids[0].map(() => 1)], decoderInputIds: [[0, ...ids[0].slice(0, 9)]] };
      model.setActiveAdapters(Parallel(...names));
      const par = await logitsOf(model, input);
      expect(par.shape).toEqual([5, 10, 128]);
      for (let i = 0; i < names.length; i++) {
        model.setActiveAdapters(names[i]);
        const alone = await logitsOf(model, input);
        expect(maxDiff(rowsOf(par, i, i + 1), alone.data), names[i]).toBeLessThan(1e-5);
        if (i > 0) expect(maxDiff(rowsOf(par, i, i + 1), rowsOf(par, 0, 1))).toBeGreaterThan(1e-3);
      }
    });
  });
}
