// A process that saves and is killed with SIGKILL mid-save (tools/contract-tests/test/kill.test.ts). Runs on the
// packages' built dist (the test's turbo task builds its dependencies first).
//   node save-child.mjs adapter <dir> <model> [killAt]     saves adapter version 1, 2, 3, … into <dir>
//   node save-child.mjs checkpoint <dir> <model> [killAt]  trains, a checkpoint every step, each rewritten once
// It prints "saved <v>" / "checkpoint <step>" after each complete write. With killAt = n it writes once, then
// kills itself at the n-th rename or removal of the next write (every such moment of a save can be reached
// deterministically; "done" when the write had fewer), else it writes without end until the test kills it.
// Version v of the adapter is LoRA with alpha = v and every lora_B value = v: a directory that mixes two
// saves (config of one, weights of another) is caught by comparing them.
import { existsSync } from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { initBackend, tf } from '@adapterkit/backend';
import '@adapterkit/lora';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { Trainer, shiftTaskExamples } from '@adapterkit/train';

const [mode, dir, modelDir, killAtArg] = process.argv.slice(2);
const killAt = Number(killAtArg ?? 0);
const say = (line) => process.stdout.write(`${line}\n`);

let armed = false;
let ops = 0;
const fsp = createRequire(import.meta.url)('node:fs/promises');
for (const op of ['rename', 'rm']) {
  const real = fsp[op];
  fsp[op] = (...args) => {
    if (armed && ++ops === killAt) process.kill(process.pid, 'SIGKILL');
    return real(...args);
  };
}
syncBuiltinESMExports(); // the patched functions are what `import('node:fs/promises')` gives the library too

await initBackend('cpu');
const model = await T5ForConditionalGeneration.fromPretrained(modelDir);

if (mode === 'adapter') {
  say('ready');
  for (let v = 1; ; v++) {
    model.addAdapter('a', `lora[r=2,alpha=${v}]`, { seed: 1, overwrite: true });
    for (const [key, variable] of model.adapters.adapterVariables('a')) if (key.endsWith('lora_B')) variable.assign(tf.fill(variable.shape, v));
    armed = killAt > 0 && v === 2;
    await model.saveAdapter(dir, 'a');
    say(`saved ${v}`);
    if (killAt > 0 && v === 2) break;
  }
} else {
  model.addAdapter('a', 'lora[r=2]', { seed: 1 });
  const resume = existsSync(`${dir}/latest.json`);
  const trainer = new Trainer(model, {
    adapters: ['a'],
    trainData: shiftTaskExamples(8, 1, 2),
    maxSteps: killAt > 0 ? 1 : 1_000_000,
    batchSize: 2,
    seed: 1,
    checkpointDir: dir,
    checkpointEvery: 1,
  });
  trainer.addEventListener('checkpoint', (e) => say(`checkpoint ${e.detail.step}`));
  say('ready');
  // every checkpoint-N is written by the step and then rewritten (the rewrite path the issue found losing data)
  const write = trainer.saveCheckpoint.bind(trainer);
  trainer.saveCheckpoint = async (d) => {
    await write(d);
    armed = killAt > 0;
    return write(d);
  };
  await trainer.train({ resumeFrom: resume ? true : undefined });
}
say('done');
