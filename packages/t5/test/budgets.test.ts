/**
 * Generation budgets (issue 17): sizes refused with typed errors before anything is allocated; a KV cache
 * that grows with the output instead of being allocated for maxNewTokens; no leak when a call fails; a
 * disposed model refuses; the event loop runs between steps; an AbortSignal stops the call.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tf } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { AbortedError, ConfigError, InputError } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, inputs, reference, to2d } from './fixture-model.js';
import { initBackend } from './helpers.js';

/** Runs `fn`, expecting it to reject with `errorClass` whose `argument` is `argument`, and that no tensor is left behind. */
async function refusedWithoutAllocating(fn: () => Promise<unknown>, errorClass: typeof InputError | typeof AbortedError | typeof ConfigError, argument?: string) {
  const before = tf.memory().numTensors;
  const error = await fn().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(errorClass);
  if (argument) expect((error as InputError).argument ?? (error as ConfigError).field).toBe(argument);
  expect(tf.memory().numTensors).toBe(before);
  return error as Error;
}

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`generation budgets on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());
    const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask };

    it('sizes over the limits are typed errors naming the option, before any allocation', async () => {
      const e = await refusedWithoutAllocating(() => model.generate({ ...o, maxNewTokens: 1e9 }), InputError, 'maxNewTokens');
      expect(e.message).toMatch(/maxNewTokens 1000000000 exceeds the limit/);
      await refusedWithoutAllocating(() => model.generate({ ...o, numBeams: 1e6 }), InputError, 'numBeams');
      await refusedWithoutAllocating(() => model.generate({ ...o, numBeams: 4, numReturnSequences: 100 }), InputError, 'numReturnSequences');
      await refusedWithoutAllocating(() => model.generate({ ...o, numBeams: 3, limits: { rows: 4 } }), InputError, 'numBeams');
      await refusedWithoutAllocating(() => model.generate({ ...o, maxNewTokens: 5000, limits: { memoryBytes: 2 ** 20 } }), InputError, 'maxNewTokens');
      await refusedWithoutAllocating(() => model.generate({ ...o, limits: { rowz: 1 } as never }), ConfigError, 'rowz');
      // The poison request of issue 17: 64 inputs × 512 tokens, maxNewTokens 256, numBeams 4.
      const poison = Array.from({ length: 64 }, (_, r) => Array.from({ length: 512 }, (_, i) => 3 + ((r + i) % 100)));
      const p = await refusedWithoutAllocating(() => model.generate({ inputIds: poison, maxNewTokens: 256, numBeams: 4 }), InputError, 'numBeams');
      expect(p.message).toMatch(/MiB, over the budget/);
    });

    it('the KV cache grows with the output: a short answer starts small whatever maxNewTokens is, with the same ids', async () => {
      const inputIds = to2d(reference.task_inputs); // answers of 5 tokens
      const capacities: number[] = [];
      const start = model.startDecoding.bind(model);
      const spy = vi.spyOn(model, 'startDecoding').mockImplementation((ids, mask, ctx, capacity, max) => {
        const state = start(ids, mask, ctx, capacity, max);
        capacities.push(state.capacity);
        return state;
      });
      try {
        const short = await model.generate({ inputIds, maxNewTokens: 8 });
        const long = await model.generate({ inputIds, maxNewTokens: 65_536 });
        expect(long).toEqual(short);
        expect(capacities).toEqual([8, 32]);
        // and it grows past its start when the output is long (eos never matches), still equal to the uncached path
        const grown = await model.generate({ inputIds: inputIds.slice(0, 1), maxNewTokens: 40, eosTokenId: -1 });
        expect(capacities[2]).toBe(32);
        expect(grown).toEqual(await model.generate({ inputIds: inputIds.slice(0, 1), maxNewTokens: 40, eosTokenId: -1, useCache: false }));
      } finally {
        spy.mockRestore();
      }
    });

    it('a generate that fails after its inputs are expanded leaks nothing (start of decoding, a throwing callback)', async () => {
      const spy = vi.spyOn(model, 'startDecoding').mockImplementation(() => {
        throw new InputError('decoding failed', 'test');
      });
      try {
        await refusedWithoutAllocating(() => model.generate({ ...o, numBeams: 2 }), InputError, 'test');
      } finally {
        spy.mockRestore();
      }
      const throwing = () => {
        throw new InputError('callback failed', 'onToken');
      };
      await refusedWithoutAllocating(() => model.generate({ ...o, onToken: throwing }), InputError, 'onToken');
      await refusedWithoutAllocating(() => model.generate({ ...o, numBeams: 2, onToken: throwing }), InputError, 'onToken');
    });

    it('an AbortSignal stops the generation at the next step (greedy and beams); an aborted one before it starts', async () => {
      for (const numBeams of [1, 2]) {
        const controller = new AbortController();
        let steps = 0;
        const onToken = () => {
          steps++;
          if (steps === 2) controller.abort('client disconnected');
        };
        const e = await refusedWithoutAllocating(() => model.generate({ ...o, numBeams, maxNewTokens: 8, eosTokenId: -1, signal: controller.signal, onToken }), AbortedError);
        expect(e.message).toMatch(/client disconnected/);
        expect(steps).toBe(2);
      }
      const aborted = AbortSignal.abort();
      await refusedWithoutAllocating(() => model.generate({ ...o, signal: aborted }), AbortedError);
    });

    it('the event loop runs between decoding steps', async () => {
      let steps = 0;
      let stepsWhenTimerRan = -1;
      setTimeout(() => {
        stepsWhenTimerRan = steps;
      }, 0);
      await model.generate({ ...o, maxNewTokens: 12, eosTokenId: -1, onToken: () => steps++ });
      expect(steps).toBe(12);
      expect(stepsWhenTimerRan).toBeGreaterThanOrEqual(0);
      expect(stepsWhenTimerRan).toBeLessThan(12);
    });
  });
}

describe('a disposed model', () => {
  it('refuses generate and forward with an InputError', async () => {
    await initBackend('cpu');
    const model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    model.dispose();
    await expect(model.generate({ inputIds: inputs.inputIds })).rejects.toThrow(InputError);
    await expect(model.generate({ inputIds: inputs.inputIds })).rejects.toThrow(/disposed/);
    expect(() => model.forward({ ...inputs })).toThrow(InputError);
  });
});
