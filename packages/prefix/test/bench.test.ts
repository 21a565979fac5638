/**
 * Generation throughput with and without a prefix, cached and uncached. Not part of the regular suite:
 * ADAPTERKIT_BENCH=1 npx vitest run test/bench.test.ts (backend: ADAPTERKIT_BACKENDS, default wasm).
 */
import { describe, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { FLAN_T5_SMALL_SHAPE, T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';

describe.skipIf(!process.env.ADAPTERKIT_BENCH)('bench: generation tokens/s', () => {
  for (const backend of backendsUnderTest(['wasm'])) {
    it(`flan-t5-small shape (random weights) on ${backend}`, async () => {
      await initBackend(backend);
      // Non-tied with vocab 32128 as flan-t5-small; 4+4 layers keep the run short.
      const model = T5ForConditionalGeneration.random({ ...FLAN_T5_SMALL_SHAPE, num_layers: 4, num_decoder_layers: 4 }, 1);
      model.addAdapter('p', 'prefix_tuning'); // defaults: 30 prefix positions, MLP 512
      const inputIds = [Array.from({ length: 32 }, (_, i) => 100 + i)];
      const newTokens = 24;
      const run = async (label: string, composition: string | null, useCache: boolean) => {
        await model.generate({ inputIds, maxNewTokens: 2, composition, useCache, eosTokenId: -1 }); // warm-up
        const t0 = performance.now();
        await model.generate({ inputIds, maxNewTokens: newTokens, composition, useCache, eosTokenId: -1 });
        const s = (performance.now() - t0) / 1000;
        console.log(`${backend} ${label}: ${(newTokens / s).toFixed(1)} tokens/s`);
      };
      await run('base, cached', null, true);
      await run('prefix, cached', 'p', true);
      await run('base, uncached', null, false);
      await run('prefix, uncached', 'p', false);
      model.dispose();
    });
  }
});
