/**
 * End to end with a real method: a fresh LoRA on the tiny fixture model (trained on the shift-1 copy task)
 * learns the shift-2 task. Greedy token accuracy on held-out examples goes from near 0 (only the eos
 * positions match) to ≥ 90 %. Runs on wasm (≈ 10× faster per step than cpu); the budget is 600 steps of
 * batch 32.
 */
import { describe, expect, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import '@adapterkit/lora';
import { Trainer } from '../src/index.js';
import { loadTiny, shiftExamples } from './helpers.js';

const BACKEND = (process.env.ADAPTERKIT_E2E_BACKEND ?? 'wasm') as 'wasm' | 'cpu';
const STEPS = Number(process.env.ADAPTERKIT_E2E_STEPS ?? 600);

describe(`LoRA learns shift-2 on the tiny model (${BACKEND})`, () => {
  it(
    `greedy token accuracy on held-out examples ≥ 90 % within ${STEPS} steps`,
    async () => {
      await initBackend(BACKEND);
      const model = await loadTiny();
      const before = new Map([...model.baseTensors()].map(([k, t]) => [k, Array.from(t.dataSync())]));
      model.addAdapter('shift2', 'lora[r=16,alpha=32,intermediate_lora=true,output_lora=true]', { seed: 1 });
      const heldOut = shiftExamples(64, 2, 2);
      const trainer = new Trainer(model, {
        adapters: 'shift2',
        trainData: shiftExamples(2000, 2, 1),
        maxSteps: STEPS,
        batchSize: 32,
        lr: 1e-2,
        schedule: { type: 'linear', warmupSteps: 20 },
        seed: 1,
        evalBatchSize: 64,
      });
      model.trainAdapter('shift2');
      const start = await trainer.evaluate(heldOut);
      const t0 = performance.now();
      const r = await trainer.train();
      const seconds = (performance.now() - t0) / 1000;
      const end = await trainer.evaluate(heldOut);
      console.log(
        `[e2e ${BACKEND}] ${STEPS} steps in ${seconds.toFixed(1)} s; held-out greedy token accuracy ${start.generationTokenAccuracy!.toFixed(3)} → ${end.generationTokenAccuracy!.toFixed(3)}, exact match ${start.exactMatch} → ${end.exactMatch}, loss ${start.loss.toFixed(3)} → ${end.loss.toFixed(3)} (train loss ${r.losses[0].toFixed(3)} → ${r.losses[r.losses.length - 1].toFixed(3)})`,
      );
      expect(start.generationTokenAccuracy!).toBeLessThan(0.2); // only eos positions
      expect(end.generationTokenAccuracy!).toBeGreaterThanOrEqual(0.9);
      for (const [k, t] of model.baseTensors()) expect(Array.from(t.dataSync())).toEqual(before.get(k));
      trainer.dispose();
      model.dispose();
    },
    BACKEND === 'cpu' ? 1_800_000 : 300_000,
  );
});
