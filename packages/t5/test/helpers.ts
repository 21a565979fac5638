import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf, initBackend, type BackendName } from '@adapterkit/backend';

export const FIXTURE_DIR = fileURLToPath(new URL('./fixtures/tiny-gated', import.meta.url));

export interface RefTensor { shape: number[]; dtype: string; data: number[] }
export function readReference(path = `${FIXTURE_DIR}/reference.json`): any {
  return JSON.parse(readFileSync(path, 'utf8'));
}
export function to2d(t: RefTensor): number[][] {
  const [r, c] = t.shape;
  return Array.from({ length: r }, (_, i) => t.data.slice(i * c, (i + 1) * c));
}
export async function maxAbsDiff(a: tf.Tensor, expected: number[]): Promise<number> {
  const d = (await a.data()) as Float32Array;
  if (d.length !== expected.length) return Infinity;
  let m = 0;
  for (let i = 0; i < d.length; i++) m = Math.max(m, Math.abs(d[i] - expected[i]));
  return m;
}
/** Backends under test: ADAPTERKIT_BACKENDS (default cpu,wasm,webgpu). */
export function testBackends(): BackendName[] {
  return (process.env.ADAPTERKIT_BACKENDS ?? 'cpu,wasm,webgpu').split(',').map((s) => s.trim()).filter(Boolean) as BackendName[];
}
export { initBackend };
