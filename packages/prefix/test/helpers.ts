import { tf } from '@adapterkit/backend';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

export { FIXTURE_DIR, PEFT_PREFIX_DIR, type RefTensor, inputs, labels, readJson as readReference, reference as ref, to2d } from '@adapterkit/t5/test';

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
    const kept = layers
      .map((l, j) => [l, j])
      .filter(([l]) => !leaveOut.includes(l))
      .map(([, j]) => j);
    const s = src.get(`${loc}.control_trans`)!;
    const t = dst.get(`${loc}.control_trans`);
    if (!t) continue;
    const value = tf.tidy(() => tf.gather(s.reshape([P, layers.length, 2 * d.numHeads * d.dKv]), kept, 1).reshape([-1]));
    t.assign(value);
    value.dispose();
  }
}
