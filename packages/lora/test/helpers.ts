import { tf } from '@adapterkit/backend';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

export {
  FIXTURE_DIR,
  PEFT_IA3_DIR,
  PEFT_LORA_BIN_DIR,
  PEFT_LORA_DIR,
  type RefTensor,
  inputs,
  labels,
  logitsOf,
  maxDiff,
  readJson,
  reference as baseRef,
  to2d,
} from '@adapterkit/t5/test';

/** Rows [start, end) of a [rows, ...] flat array. */
export function rowsOf(t: { shape: number[]; data: Float32Array }, start: number, end: number): Float32Array {
  const per = t.data.length / t.shape[0];
  return t.data.slice(start * per, end * per);
}

/** Sets every variable of an adapter to seeded random values (so B ≠ 0 and adapters differ). */
export function randomize(model: T5ForConditionalGeneration, name: string, seed: number, scale = 0.2, offset = 0): void {
  let a = seed >>> 0;
  for (const v of model.adapters.adapterVariables(name).values()) {
    const vals = new Float32Array(v.size);
    for (let i = 0; i < vals.length; i++) {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), a | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      vals[i] = offset + (((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5) * 2 * scale;
    }
    const t = tf.tensor(vals, v.shape);
    v.assign(t);
    t.dispose();
  }
}
