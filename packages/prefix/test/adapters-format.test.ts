/**
 * AdapterHub `adapters` format for prefix tuning (architecture 'prefix_tuning', keys
 * `prefix_tuning.prefix_tunings.<name>.<location>.…`) and `adapters`' T5 position-bias rule ('shifted'). No file
 * here was written by `adapters` itself (no PyTorch in this environment, no such fixture in the repository): the
 * file tests are round trips through adapterkit's writer with key names and layouts read from `adapters`' sources
 * (methods/prefix_tuning.py, models/t5/modeling_t5.py, mixin_t5.py, loading.py); the rule is checked by hand
 * against `adapters`' code and by equivalences that can fail.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { BatchSplit, CompositionError, ConfigError, Parallel, Stack, UnsupportedError, WeightError, readSafetensors, type AdapterFiles } from '@adapterkit/core';
import { PositionBias, T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, inputs } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-prefix-adapters-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("adapters' T5 position rule for prefixes ('shifted'), worked by hand from adapters' code", () => {
  // adapters' T5AttentionWithAdapters (models/t5/modeling_t5.py) concatenates the prefix in front of the keys, then
  // (layer 0, position_bias None) calls transformers 4.57's T5Attention.compute_bias(real_seq_length, key_length,
  // cache_position) with key_length = P + L: context_position = cache_position (0..L-1 in a full pass, [t] in a
  // cached step), memory_position = arange(P + L), relative = memory − context. For P = 2 prefix keys and L = 2 tokens:
  //   full pass:  query 0 → [0, 1, 2, 3];  query 1 → [−1, 0, 1, 2]
  // Encoder (bidirectional, 32 buckets → 16 per side, max_exact 8): r > 0 → 16 + r, r ≤ 0 → |r|:
  //   query 0 → [0, 17, 18, 19];  query 1 → [1, 0, 17, 18]
  // Decoder (unidirectional: bucket = max(−r, 0)): query 0 → [0, 0, 0, 0];  query 1 → [1, 0, 0, 0]
  // Cached step t = 1 (cache_position [1], key_length P + 2): relative [−1, 0, 1, 2] → decoder [1, 0, 0, 0].
  // adapterkit's own rule ('zero') for the same encoder shape: no bias on the prefix (−1), [[−1, −1, 0, 17], [−1, −1, 1, 0]].
  let table: tf.Tensor;
  beforeAll(async () => {
    await initBackend('cpu');
    table = tf.zeros([32, 1]); // the buckets do not read it
  });
  afterAll(() => table.dispose());
  it('encoder (bidirectional), full pass', () => {
    const enc = new PositionBias(table, true, 32, 128);
    expect([...enc.buckets(0, 2, 2, 2, 'shifted')]).toEqual([0, 17, 18, 19, 1, 0, 17, 18]);
    expect([...enc.buckets(0, 2, 2, 2, 'zero')]).toEqual([-1, -1, 0, 17, -1, -1, 1, 0]);
  });
  it('decoder (causal): full pass, and the cached step of query 1 equals its full-pass row', () => {
    const dec = new PositionBias(table, false, 32, 128);
    expect([...dec.buckets(0, 2, 2, 2, 'shifted')]).toEqual([0, 0, 0, 0, 1, 0, 0, 0]);
    expect([...dec.buckets(1, 1, 2, 2, 'shifted')]).toEqual([1, 0, 0, 0]);
  });
});

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterHub adapters format (prefix tuning) on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());

    const cleanup = (...names: string[]) => {
      model.setActiveAdapters(null);
      for (const n of names) if (model.adapters.hasAdapter(n)) model.deleteAdapter(n);
    };
    const logits = async (composition: Parameters<typeof model.forward>[0]['composition'], input = inputs) => {
      const out = model.forward({ ...input, composition });
      const data = Float32Array.from((await out.logits.data()) as Float32Array);
      const shape = out.logits.shape;
      tf.dispose([out.logits, out.encoderLastHiddenState]);
      return { shape, data };
    };
    const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
    const values = async (name: string) =>
      new Map(await Promise.all([...model.adapters.adapterVariables(name)].map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)));
    /** Copies every variable of `from` into `to` (same config but for the position rule). */
    const copyWeights = (from: string, to: string) => {
      const dst = model.adapters.adapterVariables(to);
      for (const [k, v] of model.adapters.adapterVariables(from)) dst.get(k)!.assign(v);
    };
    const roundTrip = async (name: string) => {
      const dir = join(tmp, `${backend}-${name}`);
      await model.saveAdapter(dir, name, { format: 'adapters' });
      const loaded = await model.loadAdapter(dir, { name: `${name}2` });
      expect(model.adapters.adapterConfig(loaded)).toEqual(model.adapters.adapterConfig(name));
      const [a, b] = [await values(name), await values(loaded)];
      expect([...b.keys()]).toEqual([...a.keys()]);
      for (const [k, v] of a) expect(b.get(k), k).toEqual(v);
      expect(maxDiff((await logits(name)).data, (await logits(loaded)).data)).toBe(0);
      return { dir, loaded };
    };
    const spec = (extra = '') => `prefix_tuning[prefix_length=3,bottleneck_size=8,adapters_positions=true${extra}]`;

    it("MLP prefix: adapters' config fields and keys, round trip bit-exact with equal logits; the rule is kept through an adapterkit save", async () => {
      model.addAdapter('m', spec(), { seed: 4 });
      const { dir, loaded } = await roundTrip('m');
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(cfg).toMatchObject({ name: 'm', model_type: 't5', hidden_size: model.dims.dModel, version: 'adapters.1.2.0' });
      expect(Object.keys(cfg.config).sort()).toEqual(
        [
          'architecture',
          'encoder_prefix',
          'cross_prefix',
          'leave_out',
          'flat',
          'prefix_length',
          'bottleneck_size',
          'non_linearity',
          'dropout',
          'use_gating',
          'shared_gating',
          'init_weights_seed',
        ].sort(),
      );
      expect(cfg.config).toMatchObject({ architecture: 'prefix_tuning', prefix_length: 3, bottleneck_size: 8, flat: false, non_linearity: 'tanh' });
      const { tensors } = readSafetensors(readFileSync(join(dir, 'adapter.safetensors')));
      const d = model.dims;
      const out = 2 * 2 * d.numHeads * d.dKv; // 2 layers per location × (keys, values) × heads × d_kv
      const at = 'prefix_tuning.prefix_tunings.m';
      for (const loc of ['encoder_prefix', 'self_prefix', 'cross_prefix']) {
        expect(tensors.get(`${at}.${loc}.wte.weight`)!.shape).toEqual([3, d.dModel]);
        expect(tensors.get(`${at}.${loc}.control_trans.0.weight`)!.shape).toEqual([8, d.dModel]);
        expect(tensors.get(`${at}.${loc}.control_trans.0.bias`)!.shape).toEqual([8]);
        expect(tensors.get(`${at}.${loc}.control_trans.2.weight`)!.shape).toEqual([out, 8]);
        expect(tensors.get(`${at}.${loc}.control_trans.2.bias`)!.shape).toEqual([out]);
      }
      expect(tensors.size).toBe(15);
      // loaded from adapters files, it is an adapters-rule prefix; saved in adapterkit format it stays one
      expect(model.adapters.adapterConfig(loaded).adapters_positions).toBe(true);
      await model.saveAdapter(join(tmp, `${backend}-m-ak`), loaded);
      const again = await model.loadAdapter(join(tmp, `${backend}-m-ak`), { name: 'm3' });
      expect(model.adapters.adapterConfig(again).adapters_positions).toBe(true);
      expect(maxDiff((await logits(again)).data, (await logits('m')).data)).toBe(0);
      cleanup('m', 'm2', 'm3');
    });

    it('flat and ejected prefixes: flat control_trans [P · layers · 2 · heads · d_kv], round trip bit-exact', async () => {
      model.addAdapter('f', spec(',flat=true'), { seed: 5 });
      const { dir } = await roundTrip('f');
      const { tensors } = readSafetensors(readFileSync(join(dir, 'adapter.safetensors')));
      const d = model.dims;
      expect(tensors.get('prefix_tuning.prefix_tunings.f.encoder_prefix.control_trans')!.shape).toEqual([3 * 2 * 2 * d.numHeads * d.dKv]);
      model.addAdapter('e', spec(), { seed: 6 });
      model.ejectPrefix('e');
      await roundTrip('e');
      cleanup('f', 'f2', 'e', 'e2');
    });

    it("the rule acts: the same weights under adapterkit's zero-bias rule give other logits; with every layer left out it is the base model", async () => {
      model.addAdapter('s', spec(), { seed: 7 });
      model.addAdapter('z', 'prefix_tuning[prefix_length=3,bottleneck_size=8]', { seed: 1 });
      copyWeights('s', 'z');
      const s = await logits('s');
      expect(maxDiff(s.data, (await logits('z')).data)).toBeGreaterThan(1e-4);
      expect(maxDiff(s.data, (await logits(null)).data)).toBeGreaterThan(1e-4);
      // identity: no prefixed attention left, so no position changes anywhere (and the file still round-trips)
      model.addAdapter('none', spec(',leave_out=[0,1,2,3]'), { seed: 8 });
      expect(model.adapters.adapterVariables('none').size).toBe(0);
      expect(maxDiff((await logits('none')).data, (await logits(null)).data)).toBe(0);
      await roundTrip('none');
      cleanup('s', 'z', 'none', 'none2');
    });

    it('cached generation equals uncached under the rule (greedy and beams)', async () => {
      model.addAdapter('g', spec(), { seed: 9 });
      model.setActiveAdapters('g');
      const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 4 };
      expect(await model.generate(o)).toEqual(await model.generate({ ...o, useCache: false }));
      expect(await model.generate({ ...o, numBeams: 2 })).toEqual(await model.generate({ ...o, numBeams: 2, useCache: false }));
      cleanup('g');
    });

    it('Stack prepends as adapters does (Stack(a, b) = one prefix [b; a]); Parallel and BatchSplit rows equal each adapter alone; mixed lengths refused', async () => {
      model.addAdapter('a', spec(',flat=true'), { seed: 10 });
      model.addAdapter('b', spec(',flat=true'), { seed: 11 });
      model.addAdapter('ab', 'prefix_tuning[prefix_length=6,flat=true,adapters_positions=true]', { seed: 12 });
      const va = model.adapters.adapterVariables('a');
      const vb = model.adapters.adapterVariables('b');
      for (const [k, v] of model.adapters.adapterVariables('ab')) {
        const value = tf.tidy(() => tf.concat([vb.get(k)!.reshape([3, -1]), va.get(k)!.reshape([3, -1])], 0).reshape([-1]));
        v.assign(value);
        value.dispose();
      }
      const ab = await logits('ab');
      expect(maxDiff((await logits(Stack('a', 'b'))).data, ab.data)).toBeLessThan(1e-5);
      // the order matters under this rule (it would not under adapterkit's zero-bias rule)
      expect(maxDiff((await logits(Stack('b', 'a'))).data, ab.data)).toBeGreaterThan(1e-4);

      const alone = { a: await logits('a'), b: await logits('b') };
      const rowSize = alone.a.data.length / 2;
      const par = await logits(Parallel('a', 'b'));
      expect(maxDiff(par.data.subarray(0, 2 * rowSize), alone.a.data)).toBeLessThan(1e-5);
      expect(maxDiff(par.data.subarray(2 * rowSize), alone.b.data)).toBeLessThan(1e-5);
      const split = await logits(BatchSplit('a', 'b', { batchSizes: [1, 1] }));
      expect(maxDiff(split.data.subarray(0, rowSize), alone.a.data.subarray(0, rowSize))).toBeLessThan(1e-5);
      expect(maxDiff(split.data.subarray(rowSize), alone.b.data.subarray(rowSize))).toBeLessThan(1e-5);
      // padding a shorter prefix would move every position of its rows
      expect(() => model.forward({ ...inputs, composition: BatchSplit('a', 'ab', { batchSizes: [1, 1] }) })).toThrow(CompositionError);
      cleanup('a', 'b', 'ab');
    });

    it('refused by name: zero-rule and PEFT prefixes, gates, partial leave_out, prefix_length 0; unknown fields and missing tensors on import', async () => {
      const refuse = async (name: string, config: string, field: string) => {
        model.addAdapter(name, config, { seed: 1 });
        const err = await model.saveAdapter(join(tmp, `${backend}-${name}`), name, { format: 'adapters' }).catch((e) => e);
        expect(err, config).toBeInstanceOf(UnsupportedError);
        expect(err.message + JSON.stringify(err)).toContain(field);
        cleanup(name);
      };
      await refuse('r1', 'prefix_tuning[prefix_length=3,bottleneck_size=8]', 'adapters_positions');
      await refuse('r2', spec(',use_gating=true'), 'use_gating');
      await refuse('r3', spec(',leave_out=[0]'), 'leave_out');
      await refuse('r4', spec(',prefix_length=0'), 'prefix_length');
      const peft = await model.loadAdapter(`${FIXTURE_DIR}/peft-prefix`, { name: 'peft' });
      await expect(model.saveAdapter(join(tmp, `${backend}-peft`), peft, { format: 'adapters' })).rejects.toBeInstanceOf(UnsupportedError);
      cleanup('peft');
      // leaving a whole stack out is fine (no layer's key length changes)
      model.addAdapter('w', spec(',leave_out=[0,1]'), { seed: 1 });
      await roundTrip('w');
      cleanup('w', 'w2');

      model.addAdapter('i', spec(), { seed: 1 });
      const dir = join(tmp, `${backend}-i`);
      await model.saveAdapter(dir, 'i', { format: 'adapters' });
      cleanup('i');
      const files = (): AdapterFiles => ({
        'adapter_config.json': readFileSync(join(dir, 'adapter_config.json')),
        'adapter.safetensors': readFileSync(join(dir, 'adapter.safetensors')),
      });
      const withConfig = (edit: (c: Record<string, unknown>) => void): AdapterFiles => {
        const f = files();
        const cfg = JSON.parse(new TextDecoder().decode(f['adapter_config.json']));
        edit(cfg.config);
        return { ...f, 'adapter_config.json': new TextEncoder().encode(JSON.stringify(cfg)) };
      };
      expect(() => model.adapters.loadAdapterFiles(withConfig((c) => (c.frobnicate = 1)))).toThrow(ConfigError);
      expect(() => model.adapters.loadAdapterFiles(withConfig((c) => (c.use_gating = true)))).toThrow(UnsupportedError);
      expect(() => model.adapters.loadAdapterFiles(withConfig((c) => (c.prefix_length = 4)))).toThrow(WeightError);
      expect(model.adapters.hasAdapter('i')).toBe(false);
    });
  });
}
