import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';

export const FIXTURE_DIR = fileURLToPath(new URL('../../t5/test/fixtures/tiny-gated', import.meta.url));
export const PEFT_PREFIX_DIR = `${FIXTURE_DIR}/peft-prefix`;

export interface RefTensor { shape: number[]; dtype: string; data: number[] }
export function readReference(path: string): any {
  return JSON.parse(readFileSync(path, 'utf8'));
}
export function to2d(t: RefTensor): number[][] {
  const [r, c] = t.shape;
  return Array.from({ length: r }, (_, i) => t.data.slice(i * c, (i + 1) * c));
}

export const ref = readReference(`${FIXTURE_DIR}/reference.json`);
export const inputs = {
  inputIds: to2d(ref.inputs.input_ids) as number[][],
  attentionMask: to2d(ref.inputs.attention_mask) as number[][],
  decoderInputIds: to2d(ref.inputs.decoder_input_ids) as number[][],
};
export const labels = to2d(ref.inputs.labels) as number[][];

/** Rows [start, end) of a [rows, ...] tensor as a new tensor. */
export function rowsOf(t: tf.Tensor, start: number, end: number): tf.Tensor {
  return t.slice([start, ...new Array(t.rank - 1).fill(0)], [end - start, ...new Array(t.rank - 1).fill(-1)]);
}
