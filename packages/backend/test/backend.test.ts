import { afterAll, describe, expect, it } from 'vitest';
import { backendsUnderTest } from '../src/test-support.js';
import { BackendUnavailableError, countTensors, currentBackend, expectNoLeaks, initBackend, readFloat32, tf, withLeakCheck } from '../src/index.js';

// WebGPU in Node cannot read synchronously: every read below is `await t.data()`.

afterAll(async () => {
  await initBackend('cpu');
});

describe('initBackend', () => {
  it("'tensorflow' throws BackendUnavailableError naming @tensorflow/tfjs-node-gpu and how to install it", async () => {
    const err = await initBackend('tensorflow').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BackendUnavailableError);
    const e = err as BackendUnavailableError;
    expect(e.name).toBe('BackendUnavailableError');
    expect(e.code).toBe('BACKEND_UNAVAILABLE');
    expect(e.backend).toBe('tensorflow');
    expect(e.packageName).toContain('@tensorflow/tfjs-node-gpu');
    expect(e.message).toContain('@tensorflow/tfjs-node-gpu');
    expect(e.howToInstall).toMatch(/pnpm add @tensorflow\/tfjs-node-gpu/);
    expect(e.message).toMatch(/install/i);
    // A failed tensorflow start must not leave tfjs without a usable backend.
    await initBackend('cpu');
    expect(tf.getBackend()).toBe('cpu');
  });

  it('rejects an unknown backend name with BackendUnavailableError', async () => {
    await expect(initBackend('nope' as never)).rejects.toBeInstanceOf(BackendUnavailableError);
  });

  it("'auto' picks wasm or webgpu on this machine (no libtensorflow, no hardware GPU needed)", async () => {
    const info = await initBackend('auto');
    expect(['wasm', 'webgpu']).toContain(info.name);
    expect(tf.getBackend()).toBe(info.name);
    expect(currentBackend()).toEqual(info);
  });

  for (const name of backendsUnderTest(['cpu', 'wasm'])) {
    it(`'${name}' starts, becomes the active backend and reports its fields`, async () => {
      const info = await initBackend(name);
      expect(info.name).toBe(name);
      expect(tf.getBackend()).toBe(name);
      expect(typeof info.device).toBe('string');
      expect(info.device.length).toBeGreaterThan(0);
      expect(typeof info.isFallbackAdapter).toBe('boolean');
      expect(info.supportsTraining).toBe(true);
      expect(info.platform).toBe('node');
      if (name === 'webgpu') {
        // CI and this dev machine only have SwiftShader; a real GPU reports false.
        if (/swiftshader/i.test(info.device)) expect(info.isFallbackAdapter).toBe(true);
        expect(tf.env().getBool('WEBGPU_CPU_FORWARD')).toBe(false);
      } else {
        expect(info.isFallbackAdapter).toBe(false);
      }
      // Idempotent: a second call returns the same description without re-initialising.
      expect(await initBackend(name)).toBe(info);
      // And it computes.
      const out = tf.tidy(() =>
        tf.matMul(
          tf.tensor2d([
            [1, 2],
            [3, 4],
          ]),
          tf.tensor2d([
            [5, 6],
            [7, 8],
          ]),
        ),
      );
      expect(Array.from(await readFloat32(out))).toEqual([19, 22, 43, 50]);
      out.dispose();
    });
  }
});

describe('wasm UnsortedSegmentSum fallback', () => {
  /** d(sum(gather(params, indices, axis) * w)) / d(params), read back as plain numbers. */
  async function gatherGrad(backend: 'cpu' | 'wasm', axis: number, indices: number[] | number[][]): Promise<{ shape: number[]; values: number[] }> {
    await initBackend(backend);
    const params = tf.tensor2d([
      [1, 2, 3],
      [4, 5, 6],
      [7, 8, 9],
      [10, 11, 12],
    ]);
    const idx = tf.tensor(indices, undefined, 'int32');
    const g = tf.grad((p: tf.Tensor) => {
      const gathered = tf.gather(p, idx, axis);
      const w = tf.range(1, gathered.size + 1).reshape(gathered.shape);
      return tf.sum(tf.mul(gathered, w));
    })(params);
    const values = Array.from(await g.data());
    const shape = g.shape;
    tf.dispose([params, idx, g]);
    return { shape, values };
  }

  it('is registered for wasm once the wasm backend starts', async () => {
    await initBackend('wasm');
    expect(tf.getKernel('UnsortedSegmentSum', 'wasm')).toBeDefined();
  });

  it('computes unsortedSegmentSum like cpu, dropping out-of-range segment ids', async () => {
    const run = async (backend: 'cpu' | 'wasm') => {
      await initBackend(backend);
      const x = tf.tensor2d([
        [1, 2],
        [3, 4],
        [5, 6],
        [7, 8],
      ]);
      const ids = tf.tensor1d([2, 0, 2, 1], 'int32');
      const out = tf.unsortedSegmentSum(x, ids, 3);
      const r = { shape: out.shape, values: Array.from(await out.data()) };
      tf.dispose([x, ids, out]);
      return r;
    };
    const cpu = await run('cpu');
    const wasm = await run('wasm');
    expect(cpu).toEqual({ shape: [3, 2], values: [3, 4, 7, 8, 6, 8] });
    expect(wasm).toEqual(cpu);
  });

  const cases: Array<[string, number, number[] | number[][]]> = [
    ['axis 0, repeated indices', 0, [3, 1, 1, 0]],
    ['axis 1', 1, [2, 0, 2]],
    [
      'axis 0, 2-D indices',
      0,
      [
        [0, 2],
        [2, 3],
      ],
    ],
  ];
  for (const [label, axis, indices] of cases) {
    it(`makes tf.grad of tf.gather work on wasm and match cpu (${label})`, async () => {
      const cpu = await gatherGrad('cpu', axis, indices);
      const wasm = await expectNoLeaks(() => gatherGrad('wasm', axis, indices), 'wasm gather grad');
      expect(wasm.shape).toEqual(cpu.shape);
      expect(wasm.shape).toEqual([4, 3]);
      for (let i = 0; i < cpu.values.length; i++) expect(wasm.values[i]).toBeCloseTo(cpu.values[i]!, 5);
      // A non-zero gradient: the check is not vacuous.
      expect(cpu.values.some((v) => v !== 0)).toBe(true);
    });
  }
});

describe('leak helpers', () => {
  it('countTensors follows tf.memory()', async () => {
    await initBackend('cpu');
    const before = countTensors();
    const t = tf.ones([2, 2]);
    expect(countTensors()).toBe(before + 1);
    t.dispose();
    expect(countTensors()).toBe(before);
  });

  it('expectNoLeaks rejects when the work leaves tensors behind', async () => {
    await initBackend('cpu');
    let leaked: tf.Tensor | undefined;
    await expect(
      expectNoLeaks(() => {
        leaked = tf.add(tf.ones([3]), tf.ones([3])); // leaks the two ones() and the sum
      }, 'leaky block'),
    ).rejects.toThrow(/leaky block leaked 3 tensor\(s\)/);
    leaked?.dispose();
  });

  it('expectNoLeaks passes a clean block and returns its result (sync and async)', async () => {
    await initBackend('cpu');
    const sum = await expectNoLeaks(() => tf.tidy(() => tf.sum(tf.ones([4])).arraySync() as number));
    expect(sum).toBe(4);
    const values = await expectNoLeaks(async () => {
      const t = tf.tensor1d([1, 2, 3]);
      const v = Array.from(await t.data());
      t.dispose();
      return v;
    });
    expect(values).toEqual([1, 2, 3]);
  });

  it('withLeakCheck reports the number of leaked tensors instead of throwing', async () => {
    await initBackend('cpu');
    const clean = await withLeakCheck(() => tf.tidy(() => tf.ones([2]).add(1).shape));
    expect(clean).toEqual({ result: [2], leaked: 0 });
    let keep: tf.Tensor[] = [];
    const dirty = await withLeakCheck(() => {
      keep = [tf.ones([2]), tf.zeros([2])];
      return 'done';
    });
    expect(dirty).toEqual({ result: 'done', leaked: 2 });
    tf.dispose(keep);
  });

  it.skipIf(!backendsUnderTest(['cpu', 'wasm']).includes('webgpu'))('expectNoLeaks works on webgpu with async reads (ADAPTERKIT_BACKENDS with webgpu)', async () => {
    await initBackend('webgpu');
    const v = await expectNoLeaks(async () => {
      const t = tf.tidy(() => tf.square(tf.tensor1d([1, 2, 3])));
      const d = Array.from(await t.data());
      t.dispose();
      return d;
    });
    expect(v).toEqual([1, 4, 9]);
  });
});
