import { initBackend, type BackendName, type tf } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { FIXTURE_DIR, readJson } from './fixture-model.js';

export { initBackend };
export { FIXTURE_DIR, to2d, type RefTensor } from './fixture-model.js';

export function readReference(path = `${FIXTURE_DIR}/reference.json`) {
  return readJson(path);
}
export async function maxAbsDiff(a: tf.Tensor, expected: number[]): Promise<number> {
  const d = (await a.data()) as Float32Array;
  if (d.length !== expected.length) return Infinity;
  let m = 0;
  for (let i = 0; i < d.length; i++) m = Math.max(m, Math.abs(d[i] - expected[i]));
  return m;
}
/** Backends under test: ADAPTERKIT_BACKENDS (default cpu,wasm, as every package's tests). */
export function testBackends(): BackendName[] {
  return backendsUnderTest(['cpu', 'wasm']);
}
