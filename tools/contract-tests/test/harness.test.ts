/** Self-tests of the contract harness: the comparator must catch wrong results, not just pass right ones. */
import { afterAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '@adapterkit/backend';
import {
  ContractMismatchError,
  assertMatches,
  compareOutputs,
  defineScenario,
  getScenario,
  materialize,
  parseBackends,
  runContract,
  runScenarioOn,
  seeded,
  type Scenario,
} from '../src/index.js';

const backends = parseBackends(process.env.ADAPTERKIT_BACKENDS);
const other = backends.find((b) => b !== 'cpu');

afterAll(async () => {
  await initBackend('cpu');
});

const m = (shape: number[], values: number[]) => ({ shape, values: Float64Array.from(values) });

describe('comparator', () => {
  it('catches a deliberately perturbed tensor', async () => {
    await initBackend('cpu');
    const good = await materialize(tf.tidy(() => ({ y: tf.matMul(seeded([4, 5], 1), seeded([5, 3], 2)) })));
    const bad = await materialize(tf.tidy(() => ({ y: tf.add(tf.matMul(seeded([4, 5], 1), seeded([5, 3], 2)), tf.oneHot(7, 12).reshape([4, 3]).mul(1e-3)) })));
    const tiny = await materialize(tf.tidy(() => ({ y: tf.add(tf.matMul(seeded([4, 5], 1), seeded([5, 3], 2)), 1e-6) })));

    expect(() => assertMatches(good, good)).not.toThrow();
    expect(() => assertMatches(good, tiny)).not.toThrow(); // within the default 1e-4
    expect(() => assertMatches(good, bad)).toThrow(ContractMismatchError);
    expect(() => assertMatches(good, bad)).toThrow(/output 'y' \[4,3\]: max \|diff\| 1\.000e-3 > tolerance 1\.0e-4 at flat index 7/);
    const c = compareOutputs(good, bad);
    expect(c.ok).toBe(false);
    expect(c.maxAbsDiff).toBeCloseTo(1e-3, 6);
    // A looser tolerance accepts it.
    expect(compareOutputs(good, bad, 1e-2).ok).toBe(true);
  });

  it('catches shape differences even with equal values', () => {
    const c = compareOutputs({ y: m([2, 3], [1, 2, 3, 4, 5, 6]) }, { y: m([3, 2], [1, 2, 3, 4, 5, 6]) });
    expect(c.ok).toBe(false);
    expect(c.problems.join()).toMatch(/shape \[3,2\] differs from reference \[2,3\]/);
  });

  it('catches missing and extra outputs', () => {
    const c = compareOutputs({ a: m([1], [1]), b: m([1], [2]) }, { a: m([1], [1]), c: m([1], [2]) });
    expect(c.ok).toBe(false);
    expect(c.problems).toEqual(["output 'b' is missing", "output 'c' is not in the reference"]);
  });

  it('treats NaN and Infinity as mismatches unless the reference has the same', () => {
    expect(compareOutputs({ y: m([2], [1, 2]) }, { y: m([2], [1, NaN]) }).ok).toBe(false);
    expect(compareOutputs({ y: m([2], [1, 2]) }, { y: m([2], [1, Infinity]) }).ok).toBe(false);
    expect(compareOutputs({ y: m([2], [1, NaN]) }, { y: m([2], [1, NaN]) }).ok).toBe(true);
    expect(compareOutputs({ y: m([1], [-Infinity]) }, { y: m([1], [-Infinity]) }).ok).toBe(true);
  });
});

describe('harness', () => {
  it.runIf(other !== undefined)(`fails a scenario that is wrong only on ${other ?? 'a non-cpu backend'}`, async () => {
    // Not registered: a deliberately broken backend, simulated by branching on ctx.backend.
    const broken: Scenario = {
      name: 'deliberately broken',
      run: (tf, ctx) => tf.tidy(() => ({ y: tf.add(tf.softmax(seeded([2, 5], 9)), ctx.backend === 'cpu' ? 0 : 1e-3) })),
    };
    const ref = await runScenarioOn('cpu', broken);
    const actual = await runScenarioOn(other!, broken);
    expect(() => assertMatches(ref, actual, 1e-4, `broken on ${other}`)).toThrow(/broken on .* do not match the cpu reference/);
  });

  it('fails a scenario that leaks tensors', async () => {
    const leaky: Scenario = { name: 'leaky', run: (tf) => ({ y: tf.add(tf.ones([2]), 1) }) };
    await expect(runScenarioOn('cpu', leaky)).rejects.toThrow(/leaky' on cpu leaked 1 tensor/);
    tf.disposeVariables();
  });

  it('rejects duplicate scenario names and unknown backends', () => {
    expect(() => defineScenario({ name: 'matmul', run: () => ({}) })).toThrow(/duplicate scenario name 'matmul'/);
    expect(getScenario('matmul').name).toBe('matmul');
    expect(parseBackends(undefined)).toEqual(['cpu', 'wasm', 'webgpu']);
    expect(parseBackends(' wasm, cpu ,wasm')).toEqual(['wasm', 'cpu']);
    expect(() => parseBackends('cpu,webgl')).toThrow(/unknown backend 'webgl'/);
  });

  it('runContract runs programmatically and reports per backend', async () => {
    const report = await runContract(backends, { only: ['matmul'] });
    expect(report.ok).toBe(true);
    expect(report.results.map((r) => `${r.backend}:${r.status}`)).toEqual(
      backends.map((b) => (b === 'cpu' ? 'cpu:reference' : `${b}:pass`)).sort((a, b) => (a.startsWith('cpu') ? -1 : b.startsWith('cpu') ? 1 : 0)),
    );
  });
});
