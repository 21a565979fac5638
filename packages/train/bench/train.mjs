#!/usr/bin/env node
/**
 * Training throughput of a LoRA on the flan-t5-small shape (random weights): steps/s and tokens/s on a
 * backend, plus peak tensor memory of training against an inference forward (the loss, no gradients) on the
 * same batch (tf.profile's peakBytes). Build first (`npx tsc -b` in packages/train builds what it needs;
 * lora and t5 too: `(cd packages/lora && npx tsc -b)`).
 *
 *   node packages/train/bench/train.mjs [backend=wasm] [steps=3] [batch=8] [source=64] [target=16]
 */
import { initBackend, tf } from '@adapterkit/backend';
import { T5ForConditionalGeneration, FLAN_T5_SMALL_SHAPE } from '@adapterkit/t5';
import '@adapterkit/lora';
import { Trainer } from '@adapterkit/train';
import { SeededRandom } from '@adapterkit/core';

const [backend = 'wasm', stepsArg = '3', batchArg = '8', srcArg = '64', tgtArg = '16'] = process.argv.slice(2);
const steps = Number(stepsArg);
const batch = Number(batchArg);
const src = Number(srcArg);
const tgt = Number(tgtArg);

await initBackend(backend);
const model = T5ForConditionalGeneration.random(FLAN_T5_SMALL_SHAPE, 0);
model.addAdapter('lora', 'lora[r=8,alpha=16]', { seed: 1 });
const rng = new SeededRandom(3);
const row = (n) => [...Array.from({ length: n - 1 }, () => 3 + Math.floor(rng.next() * 32000)), 1];
const rows = Array.from({ length: batch * (steps + 1) }, () => ({ inputIds: row(src), targetIds: row(tgt) }));

// Inference reference: the loss forward on one batch of the same shape.
const b = { inputIds: rows.slice(0, batch).map((r) => r.inputIds), labels: rows.slice(0, batch).map((r) => r.targetIds) };
model.setActiveAdapters('lora');
const resident = tf.memory().numBytes;
const inf = await tf.profile(() => {
  const l = model.loss(b);
  l.dispose();
});

const stepTimes = [];
let last = performance.now();
const trainer = new Trainer(model, {
  adapters: 'lora', trainData: rows, maxSteps: steps + 1, batchSize: batch, lr: 1e-4, shuffle: false, bucketWindow: 1, baseDropout: false,
  onProgress: () => {
    const now = performance.now();
    stepTimes.push((now - last) / 1000);
    last = now;
  },
});
const numTensorsBefore = tf.memory().numTensors;
const prof = await tf.profile(async () => {
  last = performance.now();
  await trainer.train();
});
const measured = stepTimes.slice(1); // the first step creates optimizer slots and warms kernels up
const perStep = measured.reduce((a, c) => a + c, 0) / measured.length;
const tokens = batch * (src + tgt);
const mb = (x) => (x / 2 ** 20).toFixed(1);
console.log(`LoRA r=8 (q,v) training on flan-t5-small shape, ${backend}, batch ${batch}, source ${src}, target ${tgt}`);
console.log(`  ${(1 / perStep).toFixed(3)} steps/s, ${(tokens / perStep).toFixed(0)} tokens/s (mean of ${measured.length} steps after the first; first step ${stepTimes[0].toFixed(2)} s)`);
console.log(`  resident (weights + adapter): ${mb(resident)} MiB`);
console.log(`  peak during inference forward: ${mb(inf.peakBytes)} MiB; during training: ${mb(prof.peakBytes)} MiB (ratio of peaks ${(prof.peakBytes / inf.peakBytes).toFixed(2)})`);
console.log(`  tensors after training − before: ${tf.memory().numTensors - numTensorsBefore} (optimizer slots: ${trainer.optimizer.slotNames().length})`);
trainer.dispose();
model.dispose();
