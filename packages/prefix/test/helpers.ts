import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

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

/** Deletes the named adapters (if present) after deactivating everything. */
export function cleanup(model: T5ForConditionalGeneration, ...names: string[]): void {
  model.setActiveAdapters(null);
  for (const n of names) if (model.adapters.hasAdapter(n)) model.deleteAdapter(n);
}

/**
 * Copies a flat prefix adapter's prefixes into an adapter that leaves `leaveOut` out (same weights for the
 * other layers) — the fixture model's layers: encoder 0, 1; decoder 2, 3.
 */
export function copyFlatWithout(model: T5ForConditionalGeneration, from: string, to: string, leaveOut: number[]): void {
  const src = model.adapters.adapterVariables(from);
  const dst = model.adapters.adapterVariables(to);
  const P = model.adapters.adapterConfig(from).prefix_length as number;
  const d = model.dims;
  const layersOf = { encoder_prefix: [0, 1], self_prefix: [2, 3], cross_prefix: [2, 3] } as Record<string, number[]>;
  for (const [loc, layers] of Object.entries(layersOf)) {
    const kept = layers.map((l, j) => [l, j]).filter(([l]) => !leaveOut.includes(l)).map(([, j]) => j);
    const s = src.get(`${loc}.control_trans`)!;
    const t = dst.get(`${loc}.control_trans`);
    if (!t) continue;
    const value = tf.tidy(() => tf.gather(s.reshape([P, layers.length, 2 * d.numHeads * d.dKv]), kept, 1).reshape([-1]));
    t.assign(value);
    value.dispose();
  }
}
