/**
 * The shift-k copy task the bundled tiny model was trained on (with k = 1): every input token t in [3, 128)
 * must come out as (t − 3 + k) % 125 + 3, followed by </s> (id 1). The demo teaches it k = 2 with a LoRA.
 */
import type { AdapterComposition } from '@adapterkit/core';
import { shiftTaskExamples, shiftTaskToken } from '@adapterkit/train';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { padRows, trimGenerated } from './common.js';

export interface Example {
  inputIds: number[];
  labels: number[];
}

export const EOS = 1;

export const shiftToken = shiftTaskToken;

/** `n` seeded examples of length 4–8 (+ eos): @adapterkit/train's shift task with labels. */
export function shiftExamples(n: number, seed: number, shift = 2): Example[] {
  return shiftTaskExamples(n, seed, shift).map((e) => ({ inputIds: e.inputIds, labels: e.targetIds }));
}

/** Greedy generation for examples, in batches; returns trimmed ids per example. */
export async function greedyIds(
  model: T5ForConditionalGeneration,
  inputs: number[][],
  options: { composition?: AdapterComposition | null; maxNewTokens?: number; batchSize?: number } = {},
): Promise<number[][]> {
  const out: number[][] = [];
  const bs = options.batchSize ?? 32;
  for (let i = 0; i < inputs.length; i += bs) {
    const chunk = inputs.slice(i, i + bs);
    const { inputIds, attentionMask } = padRows(chunk);
    const maxNewTokens = options.maxNewTokens ?? Math.max(...chunk.map((r) => r.length)) + 1;
    const rows = await model.generate({ inputIds, attentionMask, maxNewTokens, ...(options.composition !== undefined ? { composition: options.composition } : {}) });
    for (const r of rows) out.push(trimGenerated(r, model.generationConfig.eosTokenId));
  }
  return out;
}

/** Token accuracy of greedy outputs against labels (position by position, eos included) and exact-match rate. */
export function scoreOutputs(outputs: number[][], examples: Example[]): { tokenAccuracy: number; exactMatch: number } {
  let right = 0;
  let total = 0;
  let exact = 0;
  examples.forEach((ex, i) => {
    const o = outputs[i];
    ex.labels.forEach((t, j) => {
      total++;
      if (o[j] === t) right++;
    });
    if (o.length === ex.labels.length && o.every((t, j) => t === ex.labels[j])) exact++;
  });
  return { tokenAccuracy: total ? right / total : 0, exactMatch: examples.length ? exact / examples.length : 0 };
}

export async function evaluate(model: T5ForConditionalGeneration, examples: Example[], composition?: AdapterComposition | null) {
  const outputs = await greedyIds(
    model,
    examples.map((e) => e.inputIds),
    { composition },
  );
  return { ...scoreOutputs(outputs, examples), outputs };
}

/** Pads labels with -100 (ignored by the loss). */
export function batchOf(examples: Example[]): { inputIds: number[][]; attentionMask: number[][]; labels: number[][] } {
  const { inputIds, attentionMask } = padRows(examples.map((e) => e.inputIds));
  const L = Math.max(...examples.map((e) => e.labels.length));
  return { inputIds, attentionMask, labels: examples.map((e) => [...e.labels, ...new Array(L - e.labels.length).fill(-100)]) };
}
