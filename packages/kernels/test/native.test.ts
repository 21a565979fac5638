import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { initBackend, tf } from '@adapterkit/backend';
import { cacheWrite, KERNEL, nativeKernelsInfo, setNativeKernelThreads } from '../src/index.node.js';

function hasCompiler(): boolean {
  try {
    execFileSync(process.env.CXX ?? 'c++', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

// Where the addon can be built (Linux with a C++ compiler, as CI), it must have been built and loaded:
// a silently failed build would leave every wasm test green on the slow path.
describe.runIf(process.platform === 'linux' && hasCompiler() && process.env.ADAPTERKIT_NATIVE_BUILD !== '0')('native CPU kernels', () => {
  it('are built, loaded and registered for the wasm backend', async () => {
    const info = nativeKernelsInfo();
    expect(info.available, info.reason).toBe(true);
    expect(info.threads).toBeGreaterThanOrEqual(1);
    expect(['AVX-512', 'AVX2', '128-bit SIMD']).toContain(info.simd);
    await initBackend('wasm');
    for (const name of [KERNEL.linear, KERNEL.attention, KERNEL.linearBackward, KERNEL.adamW, 'BatchMatMul', 'GatherV2']) expect(tf.getKernel(name, 'wasm'), name).toBeDefined();
  });

  it("gather rejects an out-of-range id with tfjs's message, and leaks nothing", async () => {
    await initBackend('wasm');
    const table = tf.ones([4, 3]);
    const before = tf.memory().numTensors;
    expect(() => tf.gather(table, tf.tensor1d([1, 4], 'int32'))).toThrow(/index value 4 is not in \[0, 3\]/);
    expect(tf.memory().numTensors - before).toBe(1); // the indices tensor made above
    table.dispose();
  });

  it('run on the thread count set at run time, with the same results (serve keeps a core for HTTP)', async () => {
    await initBackend('wasm');
    const was = nativeKernelsInfo().threads!;
    // large enough that the kernels split it over threads when they may
    const a = tf.randomNormal([256, 512], 0, 1, 'float32', 1);
    const b = tf.randomNormal([512, 384], 0, 1, 'float32', 2);
    try {
      setNativeKernelThreads(3);
      expect(nativeKernelsInfo().threads).toBe(3);
      const many = tf.matMul(a, b);
      expect(setNativeKernelThreads(1)).toBe(1);
      const one = tf.matMul(a, b);
      expect(await one.data()).toEqual(await many.data());
      tf.dispose([many, one]);
      for (const bad of [0, -1, 1.5, 2000, Number.NaN]) expect(() => setNativeKernelThreads(bad)).toThrow(RangeError);
    } finally {
      setNativeKernelThreads(was);
      tf.dispose([a, b]);
    }
  });

  it('cacheWrite writes a cache only its owner holds in place, and copies a shared one (a clone keeps its values)', async () => {
    await initBackend('wasm');
    const source = tf.tensor3d([1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4]); // [rows, 1, sourceCols]: columns 2..3 are written
    const before = tf.memory().numTensors;
    // owned: the result is the same data, with slot 1 written
    const owned = tf.zeros([2, 3, 2]);
    const written = cacheWrite(owned, source, 2, 1);
    expect(written.dataId).toBe(owned.dataId);
    owned.dispose();
    expect(await written.array()).toEqual([
      [
        [0, 0],
        [3, 4],
        [0, 0],
      ],
      [
        [0, 0],
        [7, 8],
        [0, 0],
      ],
    ]);
    // shared with a clone: a new buffer; the clone still reads zeros
    const shared = tf.zeros([2, 3, 2]);
    const clone = shared.clone();
    const copied = cacheWrite(shared, source, 0, 2);
    expect(copied.dataId).not.toBe(shared.dataId);
    expect((await clone.data()).every((v) => v === 0)).toBe(true);
    expect(((await copied.array()) as number[][][])[1][2]).toEqual([5, 6]);
    tf.dispose([written, shared, clone, copied]);
    expect(tf.memory().numTensors).toBe(before);
    source.dispose();
  });
});
