import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

/** The tiny real T5 fixture of @adapterkit/t5 (see packages/t5/test/fixtures/README.md). */
export const FIXTURE_DIR = fileURLToPath(new URL('../../t5/test/fixtures/tiny-gated', import.meta.url));
export const PEFT_LORA_DIR = `${FIXTURE_DIR}/peft-lora`;

export interface RefTensor { shape: number[]; dtype: string; data: number[] }
export function readJson(path: string): any {
  return JSON.parse(readFileSync(path, 'utf8'));
}
export function to2d(t: RefTensor): number[][] {
  const [r, c] = t.shape;
  return Array.from({ length: r }, (_, i) => t.data.slice(i * c, (i + 1) * c));
}

export const baseRef = readJson(`${FIXTURE_DIR}/reference.json`);
export const inputs = {
  inputIds: to2d(baseRef.inputs.input_ids),
  attentionMask: to2d(baseRef.inputs.attention_mask),
  decoderInputIds: to2d(baseRef.inputs.decoder_input_ids),
};
export const labels = to2d(baseRef.inputs.labels);

/** Logits of one forward with the active composition (or an explicit one), read back as numbers. */
export async function logitsOf(model: T5ForConditionalGeneration, input = inputs): Promise<{ shape: number[]; data: Float32Array }> {
  const out = model.forward(input);
  const data = (await out.logits.data()) as Float32Array;
  const shape = out.logits.shape;
  tf.dispose([out.logits, out.encoderLastHiddenState]);
  return { shape, data };
}

export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

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
