/**
 * `adapterkit demo`: the README's main job on the bundled tiny T5 (trained on the shift-1 copy task).
 * Trains a fresh LoRA towards shift 2, prints greedy token accuracy before/after, saves the adapter,
 * generates a few examples, and reloads the saved adapter into a fresh model to show identical outputs.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BUNDLED_MODEL, loadModel } from './common.js';
import { evaluate, greedyIds, shiftExamples } from './task.js';
import { trainAdapter } from './training.js';
import { makeProgress } from './progress.js';

export interface DemoOptions {
  out?: string;
  steps: number;
  lr: number;
  batchSize: number;
  rank: number;
  seed: number;
  json: boolean;
}

export async function runDemo(o: DemoOptions): Promise<Record<string, unknown>> {
  const say = (s: string) => {
    if (!o.json) process.stdout.write(`${s}\n`);
  };
  const out = resolve(o.out ?? mkdtempSync(join(tmpdir(), 'adapterkit-demo-')));
  const t0 = performance.now();
  const model = await loadModel(BUNDLED_MODEL);
  say(`model: bundled tiny T5 (${BUNDLED_MODEL}), ${model.baseParameterCount().toLocaleString('en-US')} parameters, trained on shift 1`);
  const train = shiftExamples(2000, o.seed, 2);
  const heldOut = shiftExamples(64, o.seed + 1000, 2);

  const before = await evaluate(model, heldOut, null);
  say(`task: shift 2 — token t → (t−3+2)%125+3, then </s>; ${heldOut.length} held-out examples`);
  say(`greedy token accuracy before training: ${(100 * before.tokenAccuracy).toFixed(1)}% (exact match ${(100 * before.exactMatch).toFixed(1)}%)`);

  // q/k/v of every attention plus the feed-forward: q/v alone learn this remapping of tokens too slowly.
  const config = `lora[r=${o.rank},alpha=${2 * o.rank},attn_matrices=["q","k","v"],intermediate_lora=true,output_lora=true]`;
  model.addAdapter('shift2', config, { seed: o.seed });
  const row = model.adapters.adapterSummary().find((r) => r.name === 'shift2')!;
  say(`adapter 'shift2': ${config}, ${row.parameters.toLocaleString('en-US')} trainable parameters (${row.percent.toFixed(2)}% of the base model)`);
  const bar = makeProgress(o.json, o.steps);
  const result = await trainAdapter(model, 'shift2', train, {
    steps: o.steps,
    lr: o.lr,
    schedule: 'cosine',
    batchSize: o.batchSize,
    seed: o.seed,
    onProgress: (e) => bar.update(e.step, e.loss),
  });
  bar.stop();
  say(
    `trained ${o.steps} steps in ${result.seconds.toFixed(1)} s (${(o.steps / result.seconds).toFixed(1)} steps/s), loss ${result.firstLoss.toFixed(3)} → ${result.lastLoss.toFixed(3)}`,
  );

  const after = await evaluate(model, heldOut, 'shift2');
  say(`greedy token accuracy after training:  ${(100 * after.tokenAccuracy).toFixed(1)}% (exact match ${(100 * after.exactMatch).toFixed(1)}%)`);

  const adapterDir = join(out, 'shift2');
  await model.saveAdapter(adapterDir, 'shift2');
  say(`saved adapter to ${adapterDir}`);

  const samples = heldOut.slice(0, 4);
  const sampleOut = await greedyIds(
    model,
    samples.map((e) => e.inputIds),
    { composition: 'shift2' },
  );
  say('examples (greedy):');
  samples.forEach((e, i) => {
    say(`  input    ${JSON.stringify(e.inputIds)}`);
    say(`  output   ${JSON.stringify(sampleOut[i])}`);
    say(`  expected ${JSON.stringify(e.labels)}${JSON.stringify(sampleOut[i]) === JSON.stringify(e.labels) ? '  ✓' : '  ✗'}`);
  });

  // A fresh model + the saved adapter must reproduce the outputs exactly.
  const fresh = await loadModel(BUNDLED_MODEL);
  const name = await fresh.loadAdapter(adapterDir);
  const reloaded = await greedyIds(
    fresh,
    heldOut.map((e) => e.inputIds),
    { composition: name },
  );
  const identical = JSON.stringify(reloaded) === JSON.stringify(after.outputs);
  say(`reloaded the saved adapter into a fresh model: outputs on all ${heldOut.length} held-out examples ${identical ? 'are identical' : 'DIFFER'}`);
  const seconds = (performance.now() - t0) / 1000;
  say(`done in ${seconds.toFixed(1)} s`);
  model.dispose();
  fresh.dispose();
  if (!identical) throw new Error('reloaded adapter gave different outputs');
  return {
    adapterDir,
    config,
    trainableParameters: row.parameters,
    accuracyBefore: before.tokenAccuracy,
    accuracyAfter: after.tokenAccuracy,
    exactMatchBefore: before.exactMatch,
    exactMatchAfter: after.exactMatch,
    firstLoss: result.firstLoss,
    lastLoss: result.lastLoss,
    trainSeconds: result.seconds,
    reloadedIdentical: identical,
    examples: samples.map((e, i) => ({ input: e.inputIds, output: sampleOut[i], expected: e.labels })),
    seconds,
  };
}
