/**
 * @adapterkit/train on every backend: AdamW and Adafactor updates (seeded parameters and gradients, three
 * steps, 2-D and 1-D parameters), and three Trainer steps (SGD, so near-zero gradients cannot amplify
 * backend rounding) of a LoRA on a tiny random-weight T5: the losses and the trained LoRA weights.
 */
import '@adapterkit/lora';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { AdamW, Adafactor, Trainer, type Optimizer } from '@adapterkit/train';
import { defineScenario, seededValues, type TF } from '../harness.js';
import { TINY_GATED as TINY } from './tiny.js';

function optimizerRun(tf: TF, opt: Optimizer, lr: number): Record<string, ReturnType<TF['tensor']>> {
  const shapes: Record<string, number[]> = { matrix: [4, 3], vector: [5] };
  const vars = Object.entries(shapes).map(([name, shape], i) => {
    const init = tf.tensor(
      seededValues(
        shape.reduce((a, b) => a * b, 1),
        10 + i,
        0.5,
      ),
      shape,
    );
    const variable = tf.variable(init, true);
    init.dispose();
    return { name, variable };
  });
  for (let step = 0; step < 3; step++) {
    const grads = vars.map((v, i) => tf.tensor(seededValues(v.variable.size, 100 + 10 * step + i, 1), v.variable.shape));
    opt.apply(vars, grads, lr);
    tf.dispose(grads);
  }
  opt.dispose();
  const out: Record<string, ReturnType<TF['tensor']>> = {};
  for (const v of vars) {
    out[v.name] = v.variable.clone();
    v.variable.dispose();
  }
  return out;
}

defineScenario({
  name: 'train optimizers: AdamW and Adafactor, 3 steps on 2-D and 1-D parameters',
  run: (tf) => {
    const a = optimizerRun(tf, new AdamW(), 1e-2);
    const f = optimizerRun(tf, new Adafactor(), 1e-2);
    return { adamwMatrix: a.matrix, adamwVector: a.vector, adafactorMatrix: f.matrix, adafactorVector: f.vector };
  },
});

defineScenario({
  name: 'train: 3 Trainer steps (SGD) of a LoRA on a tiny T5',
  run: async (_tf) => {
    const model = T5ForConditionalGeneration.random(TINY, 5);
    try {
      model.addAdapter('x', { method: 'lora', r: 2, alpha: 4 }, { seed: 3 });
      const rows = [
        { inputIds: [5, 9, 13, 22, 1], targetIds: [6, 10, 14, 1] },
        { inputIds: [8, 2, 31, 1], targetIds: [9, 3, 1] },
        { inputIds: [7, 7, 20, 11, 4, 1], targetIds: [8, 8, 21, 1] },
        { inputIds: [3, 30, 1], targetIds: [4, 1] },
      ];
      const trainer = new Trainer(model, { adapters: 'x', trainData: rows, maxSteps: 3, batchSize: 2, optimizer: 'sgd', lr: 0.5, seed: 1 });
      const { losses } = await trainer.train();
      trainer.dispose();
      const out: Record<string, number[] | ReturnType<TF['tensor']>> = { losses };
      for (const [k, v] of model.adapters.adapterVariables('x')) if (k.includes('decoder')) out[k] = v.clone();
      return out;
    } finally {
      model.dispose();
    }
  },
});
