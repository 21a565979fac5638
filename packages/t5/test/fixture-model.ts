/**
 * The fixture model for every package's tests: `@adapterkit/t5/test` (a workspace-only export; it is not
 * published). The tiny real T5 checkpoint in ./fixtures/tiny-gated (provenance: ./fixtures/README.md),
 * its reference batch, and the few helpers every adapter test needs to compare logits.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';
import { T5ForConditionalGeneration } from '../src/index.js';

export const FIXTURE_DIR = fileURLToPath(new URL('./fixtures/tiny-gated', import.meta.url));
export const PEFT_LORA_DIR = `${FIXTURE_DIR}/peft-lora`;
export const PEFT_PREFIX_DIR = `${FIXTURE_DIR}/peft-prefix`;
export const PEFT_IA3_DIR = `${FIXTURE_DIR}/peft-ia3`;
/** The PEFT LoRA adapter as torch.save wrote it (adapter_model.bin), same tensors as peft-lora. */
export const PEFT_LORA_BIN_DIR = `${FIXTURE_DIR}/peft-lora-bin`;

/** A tensor as reference.json stores it: shape, dtype and row-major data. */
export interface RefTensor {
  shape: number[];
  dtype: string;
  data: number[];
}

/** Parses a JSON fixture file; its layout is described by the fixture README, so the result is untyped. */
export function readJson(path: string): any {
  return JSON.parse(readFileSync(path, 'utf8'));
}

export function to2d(t: { shape: number[]; data: number[] }): number[][] {
  const [r, c] = t.shape as [number, number];
  return Array.from({ length: r }, (_, i) => t.data.slice(i * c, (i + 1) * c));
}

/** The fixture's reference.json (inputs, logits, loss, greedy and beam ids as transformers computed them). */
export const reference = readJson(`${FIXTURE_DIR}/reference.json`);
/** The reference batch: 2 rows of 9 source tokens (the second padded), 6 decoder tokens. */
export const inputs = {
  inputIds: to2d(reference.inputs.input_ids),
  attentionMask: to2d(reference.inputs.attention_mask),
  decoderInputIds: to2d(reference.inputs.decoder_input_ids),
};
export const labels = to2d(reference.inputs.labels);

export function loadFixtureModel(): Promise<T5ForConditionalGeneration> {
  return T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
}

/** Logits of one forward (the model's active composition unless `extra` says otherwise), read back. */
export async function logitsOf(model: T5ForConditionalGeneration, input = inputs, extra: Record<string, unknown> = {}): Promise<{ shape: number[]; data: Float32Array }> {
  const out = model.forward({ ...input, ...extra });
  const data = (await out.logits.data()) as Float32Array;
  const shape = out.logits.shape;
  tf.dispose([out.logits, out.encoderLastHiddenState]);
  return { shape, data };
}

/** Largest absolute difference; Infinity for different lengths or any NaN (so a NaN never passes). */
export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}
