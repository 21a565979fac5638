import { tf } from '@adapterkit/backend';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { inputs, labels, logitsOf } from '@adapterkit/t5/test';
import '../src/index.js';

export { FIXTURE_DIR, inputs, labels, loadFixtureModel as loadModel, maxDiff } from '@adapterkit/t5/test';

/** Logits of one forward as a Float32Array (the composition is the model's active one unless given). */
export async function logits(model: T5ForConditionalGeneration, extra: Record<string, unknown> = {}, input = inputs): Promise<Float32Array> {
  return (await logitsOf(model, input, extra)).data;
}

/** Base-model logits: no active composition. */
export async function baseLogits(model: T5ForConditionalGeneration, input = inputs): Promise<Float32Array> {
  return logits(model, { composition: null }, input);
}

/** Sets every variable of an adapter whose name matches `pattern` to `value` (or seeded noise when value is 'random'). */
export function setVariables(model: T5ForConditionalGeneration, name: string, pattern: RegExp, value: number | 'random', seed = 1): void {
  let s = seed >>> 0 || 1;
  const rand = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
  for (const [k, v] of model.adapters.adapterVariables(name)) {
    if (!pattern.test(k)) continue;
    const data = new Float32Array(v.size).map(() => (value === 'random' ? rand() * 0.5 : value));
    const t = tf.tensor(data, v.shape);
    v.assign(t);
    t.dispose();
  }
}

/** Copies of every base tensor's values (to check they never change). */
export async function snapshotBase(model: T5ForConditionalGeneration): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, t] of model.baseTensors()) out.set(k, Float32Array.from((await t.data()) as Float32Array));
  return out;
}

export async function baseUnchanged(model: T5ForConditionalGeneration, snap: Map<string, Float32Array>): Promise<string[]> {
  const changed: string[] = [];
  for (const [k, t] of model.baseTensors()) {
    const now = (await t.data()) as Float32Array;
    const was = snap.get(k)!;
    if (now.length !== was.length || now.some((x, i) => !Object.is(x, was[i]))) changed.push(k);
  }
  return changed;
}

/** One SGD step on the trainable adapter variables; returns the loss and which variables changed. */
export async function trainStep(model: T5ForConditionalGeneration, lr = 0.1): Promise<{ loss: number; changed: number; total: number }> {
  const vars = model.adapters.trainableVariables();
  const before = await Promise.all(vars.map(async (v) => Float32Array.from((await v.data()) as Float32Array)));
  const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels, training: true }) as tf.Scalar, vars);
  const loss = (await value.data())[0];
  for (const v of vars) {
    const g = grads[v.name];
    if (!g) continue;
    const next = tf.tidy(() => v.sub(g.mul(lr)));
    v.assign(next);
    next.dispose();
  }
  tf.dispose([value, ...Object.values(grads)]);
  let changed = 0;
  for (let i = 0; i < vars.length; i++) {
    const now = (await vars[i].data()) as Float32Array;
    if (now.some((x, j) => x !== before[i][j])) changed++;
  }
  return { loss, changed, total: vars.length };
}
