/**
 * Shared test helpers (the `@adapterkit/backend/test` subpath, as vercel/ai ships `./test`).
 * Package suites run on `backendsUnderTest()`; the contract suite in tools/contract-tests adds webgpu.
 */
import { tf } from './index.js';
import type { BackendName } from './index.js';

/** Backends a package's tests run on: ADAPTERKIT_BACKENDS (comma list) or the given default. */
export function backendsUnderTest(defaults: BackendName[] = ['cpu', 'wasm']): BackendName[] {
  const env = typeof process !== 'undefined' ? process.env.ADAPTERKIT_BACKENDS : undefined;
  return env
    ? (env
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean) as BackendName[])
    : defaults;
}

/** Max |a − b| over two tensors or arrays (async: works on webgpu). */
export async function maxAbsDiff(a: tf.Tensor | ArrayLike<number>, b: tf.Tensor | ArrayLike<number>): Promise<number> {
  const da = a instanceof tf.Tensor ? await a.data() : a;
  const db = b instanceof tf.Tensor ? await b.data() : b;
  if (da.length !== db.length) return Infinity;
  let m = 0;
  for (let i = 0; i < da.length; i++) {
    const d = Math.abs(Number(da[i]) - Number(db[i]));
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}
