import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import {
  AdapterError,
  CompositionError,
  ConfigError,
  ForwardContext,
  UnsupportedError,
  resolveConfig,
  Parallel,
  BatchSplit,
  Stack,
  Average,
  Fuse,
  type LinearSite,
} from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import type { LoraRuntime } from '../src/index.js';
import { FIXTURE_DIR, inputs, labels, logitsOf, maxDiff, randomize, rowsOf } from './helpers.js';

/** LoRA on every site adapters can place it: q/k/v of all attentions, wi_1 and wo. */
const ALL_SITES = { method: 'lora', r: 4, alpha: 8, attn_matrices: ['q', 'k', 'v'], intermediate_lora: true, output_lora: true };

describe('LoRA / IA3 configs', () => {
  it('follow adapters defaults and string overrides', () => {
    expect(resolveConfig('lora')).toMatchObject({
      method: 'lora',
      r: 8,
      alpha: 8,
      dropout: 0,
      attn_matrices: ['q', 'v'],
      selfattn_lora: true,
      intermediate_lora: false,
      output_lora: false,
      composition_mode: 'add',
      init_weights: 'lora',
      use_gating: false,
      leave_out: [],
    });
    expect(resolveConfig('ia3')).toMatchObject({
      method: 'ia3',
      r: 1,
      alpha: 1,
      attn_matrices: ['k', 'v'],
      intermediate_lora: true,
      composition_mode: 'scale',
      init_weights: 'ia3',
    });
    expect(resolveConfig('lora[r=4,alpha=16,leave_out=[3,1]]')).toMatchObject({ r: 4, alpha: 16, leave_out: [1, 3] });
  });

  it('are validated with typed errors naming the option', () => {
    const field = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e;
      }
      return undefined;
    };
    let e = field(() => resolveConfig('lora[composition_mode=scale]')) as ConfigError;
    expect(e).toBeInstanceOf(ConfigError);
    expect(e.field).toBe('r');
    e = field(() => resolveConfig('ia3[dropout=0.1]')) as ConfigError;
    expect(e).toBeInstanceOf(ConfigError);
    expect(e.field).toBe('dropout');
    e = field(() => resolveConfig('lora[rank=4]')) as ConfigError;
    expect(e.field).toBe('rank');
    e = field(() => resolveConfig('lora[attn_matrices=["o"]]')) as ConfigError;
    expect(e.field).toBe('attn_matrices');
    expect(field(() => resolveConfig('lora[dtype=float16]'))).toBeInstanceOf(UnsupportedError);
  });
});

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`LoRA and IA3 on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let base: { shape: number[]; data: Float32Array };
    let base0: () => Float32Array;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      base = await logitsOf(model);
      base0 = () => base.data;
      model.addAdapter('a', ALL_SITES, { seed: 1 });
      randomize(model, 'a', 11);
      model.addAdapter('b', ALL_SITES, { seed: 2 });
      randomize(model, 'b', 12);
    });
    afterAll(() => model.dispose());

    it('a fresh LoRA (B = 0) leaves logits identical to the base model', async () => {
      model.addAdapter('fresh', { ...ALL_SITES, use_gating: false }, { seed: 3 });
      model.setActiveAdapters('fresh');
      expect(maxDiff((await logitsOf(model)).data, base.data)).toBeLessThanOrEqual(1e-6);
      model.deleteAdapter('fresh');
      expect(model.adapters.activeComposition).toBeNull();
    });

    it('covers the sites adapters uses for T5 (self and cross attention, wi_1 not wi_0, wo)', () => {
      const keys = [...model.adapters.adapterVariables('a').keys()];
      expect(keys).toContain('decoder.block.1.layer.1.EncDecAttention.k.lora_A');
      expect(keys).toContain('encoder.block.0.layer.1.DenseReluDense.wi_1.lora_B');
      expect(keys).toContain('decoder.block.0.layer.2.DenseReluDense.wo.lora_A');
      expect(keys.some((k) => k.includes('wi_0') || /\.o\.lora/.test(k))).toBe(false);
      expect(model.adapters.adapterVariables('a').get('encoder.block.0.layer.0.SelfAttention.q.lora_A')!.shape).toEqual([32, 4]);
      expect(model.adapters.adapterVariables('a').get('encoder.block.0.layer.0.SelfAttention.q.lora_B')!.shape).toEqual([4, 32]);
    });

    it('merge: merged logits and generation equal unmerged; unmerge restores the kernels', async () => {
      model.setActiveAdapters('a');
      const unmerged = await logitsOf(model);
      expect(maxDiff(unmerged.data, base.data)).toBeGreaterThan(1e-2);
      const genArgs = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 };
      const genUnmerged = await model.generate(genArgs);
      const before = new Map<string, Float32Array>();
      for (const [k, t] of model.baseTensors()) before.set(k, (await t.data()) as Float32Array);
      model.mergeAdapter('a');
      expect(maxDiff((await logitsOf(model)).data, unmerged.data)).toBeLessThan(1e-4);
      expect(await model.generate(genArgs)).toEqual(genUnmerged);
      // Typed errors: one merged adapter per layer, gated adapters cannot merge.
      expect(() => model.mergeAdapter('b')).toThrow(AdapterError);
      model.unmergeAdapter('a');
      expect(() => model.unmergeAdapter('a')).toThrow(AdapterError);
      for (const [k, t] of model.baseTensors()) expect(maxDiff((await t.data()) as Float32Array, before.get(k)!), k).toBeLessThanOrEqual(1e-6);
      expect(maxDiff((await logitsOf(model)).data, unmerged.data)).toBeLessThanOrEqual(1e-6);
      model.addAdapter('gated', { ...ALL_SITES, use_gating: true }, { seed: 4 });
      expect(() => model.mergeAdapter('gated')).toThrow(UnsupportedError);
      model.deleteAdapter('gated');
    });

    it('IA3 with its default ones-init equals the base model, and trains a step', async () => {
      model.addAdapter('ia3', 'ia3', { seed: 5 });
      model.setActiveAdapters('ia3');
      expect(maxDiff((await logitsOf(model)).data, base.data)).toBeLessThanOrEqual(1e-6);
      model.trainAdapter('ia3');
      const vars = model.adapters.trainableVariables();
      expect(vars.length).toBe(6 * 2 + 4); // k, v of 6 attentions (2 encoder self, 2 decoder self, 2 cross) + wi_1 of 4 blocks
      const lossFn = () => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar;
      const opt = tf.train.sgd(0.5);
      const { value, grads } = tf.variableGrads(lossFn, vars);
      const l0 = (await value.data())[0];
      const gnorm = (await tf.tidy(() => tf.addN(Object.values(grads).map((g) => g.square().sum()))).data())[0];
      expect(gnorm).toBeGreaterThan(0);
      opt.applyGradients(grads);
      tf.dispose([value, ...Object.values(grads)]);
      const after = lossFn();
      const l1 = (await after.data())[0];
      after.dispose();
      opt.dispose();
      expect(l1).toBeLessThan(l0);
      model.deleteAdapter('ia3');
    });

    it('IA3 merges: output-side vectors scale kernel columns, merged == unmerged', async () => {
      model.addAdapter('ia3r', 'ia3[output_lora=true]', { seed: 6 });
      randomize(model, 'ia3r', 21, 0.3, 1);
      model.setActiveAdapters('ia3r');
      const unmerged = await logitsOf(model);
      expect(maxDiff(unmerged.data, base.data)).toBeGreaterThan(1e-2);
      model.mergeAdapter('ia3r');
      expect(maxDiff((await logitsOf(model)).data, unmerged.data)).toBeLessThan(1e-4);
      model.unmergeAdapter('ia3r');
      model.deleteAdapter('ia3r');
    });

    it('unknown options and unsupported strategies are errors, never ignored (addAdapter, averageAdapter, generate)', async () => {
      expect(() => model.addAdapter('x', 'lora', { sead: 1 } as never)).toThrow(/addAdapter: unknown option 'sead'/);
      expect(() => model.averageAdapter('avg', ['a', 'b'], [1, 0], { combine_strategy: 'svd' } as never)).toThrow(/averageAdapter: unknown option 'combine_strategy'/);
      expect(() => model.averageAdapter('avg', ['a', 'b'], [1, 0], { combineStrategy: 'lora_delta_w_svd' })).toThrow(/combineStrategy 'lora_delta_w_svd' is not supported/);
      await expect(model.generate({ inputIds: inputs.inputIds, maxNewTokens: 2, num_beams: 2 } as never)).rejects.toThrow(/generate: unknown option 'num_beams'/);
      expect(model.adapters.hasAdapter('x') || model.adapters.hasAdapter('avg')).toBe(false);
    });

    it('averageAdapter with weights [1, 0] equals the first adapter', async () => {
      model.averageAdapter('avg', ['a', 'b'], [1, 0], { combineStrategy: 'linear', normalizeWeights: true });
      model.setActiveAdapters('a');
      const a = await logitsOf(model);
      model.setActiveAdapters('avg');
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBeLessThanOrEqual(1e-6);
      model.deleteAdapter('avg');
    });

    it('composition blocks: Parallel, BatchSplit, Stack of one, Average [1, 0]', async () => {
      model.setActiveAdapters('a');
      const a = await logitsOf(model);
      model.setActiveAdapters('b');
      const b = await logitsOf(model);
      model.setActiveAdapters(Parallel('a', 'b'));
      const par = await logitsOf(model);
      expect(par.shape[0]).toBe(4);
      expect(maxDiff(rowsOf(par, 0, 2), a.data)).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(par, 2, 4), b.data)).toBeLessThan(1e-5);
      model.setActiveAdapters(BatchSplit('a', 'b', { batchSizes: [2, 0] }));
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBeLessThan(1e-5);
      model.setActiveAdapters(BatchSplit('a', 'b', { batchSizes: [1, 1] }));
      const split = await logitsOf(model);
      expect(maxDiff(rowsOf(split, 0, 1), rowsOf(a, 0, 1))).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(split, 1, 2), rowsOf(b, 1, 2))).toBeLessThan(1e-5);
      model.setActiveAdapters(Stack('a'));
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBeLessThanOrEqual(1e-6);
      model.setActiveAdapters(Average('a', 'b', { weights: [1, 0] }));
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBeLessThan(1e-5);
      // LoRA cannot Fuse: refused when activated, naming the block.
      expect(() => model.setActiveAdapters(Fuse('a', 'b'))).toThrow(CompositionError);
    });

    it('BatchSplit mixes a LoRA and an IA3 adapter row by row', async () => {
      model.addAdapter('ia3m', 'ia3', { seed: 7 });
      randomize(model, 'ia3m', 31, 0.3, 1);
      model.setActiveAdapters('a');
      const a = await logitsOf(model);
      model.setActiveAdapters('ia3m');
      const i = await logitsOf(model);
      model.setActiveAdapters(BatchSplit('ia3m', 'a', { batchSizes: [1, 1] }));
      const split = await logitsOf(model);
      expect(maxDiff(rowsOf(split, 0, 1), rowsOf(i, 0, 1))).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(split, 1, 2), rowsOf(a, 1, 2))).toBeLessThan(1e-5);
      model.deleteAdapter('ia3m');
    });

    it('Stack chains LoRAs on the update path: h_b = f_b(f_a(x))', async () => {
      const rt = model.adapters.runtimeFor('lora') as LoraRuntime;
      const site = model.linearSites().find((s) => s.key === 'encoder.block.1.layer.0.SelfAttention.q') as LinearSite;
      const W = model.readLinearWeight(site.key);
      const x = tf.randomNormal([2, 3, 32], 0, 1, 'float32', 7);
      const ctx = new ForwardContext(Stack('a', 'b'));
      const got = tf.tidy(() => rt.linear(site, x, (t) => tf.matMul(t.reshape([-1, 32]), W).reshape([2, 3, 32]), ctx)!);
      const va = model.adapters.adapterVariables('a');
      const vb = model.adapters.adapterVariables('b');
      const want = tf.tidy(() => {
        const f = (v: typeof va, t: tf.Tensor) =>
          tf
            .matMul(tf.matMul(t.reshape([-1, 32]), v.get(`${site.key}.lora_A`)!), v.get(`${site.key}.lora_B`)!)
            .mul(8 / 4)
            .reshape([2, 3, 32]);
        return tf
          .matMul(x.reshape([-1, 32]), W)
          .reshape([2, 3, 32])
          .add(f(vb, f(va, x)));
      });
      expect(maxDiff((await got.data()) as Float32Array, (await want.data()) as Float32Array)).toBeLessThan(1e-5);
      tf.dispose([x, got, want]);
      ctx.dispose();
    });

    it('leave_out layers behave as no adapter there', async () => {
      const cfg = { ...ALL_SITES, init_weights: 'bert' };
      model.addAdapter('full', cfg, { seed: 8 });
      model.addAdapter('partial', { ...cfg, leave_out: [0, 3] }, { seed: 9 });
      const full = model.adapters.adapterVariables('full');
      const partial = model.adapters.adapterVariables('partial');
      expect([...partial.keys()].some((k) => k.startsWith('encoder.block.0.') || k.startsWith('decoder.block.1.'))).toBe(false);
      for (const [k, v] of full) {
        const p = partial.get(k);
        if (p) v.assign(p);
        else if (k.endsWith('lora_B')) v.assign(tf.zerosLike(v));
      }
      model.setActiveAdapters('partial');
      const part = await logitsOf(model);
      expect(maxDiff(part.data, base.data)).toBeGreaterThan(1e-3);
      model.setActiveAdapters('full');
      expect(maxDiff((await logitsOf(model)).data, part.data)).toBeLessThanOrEqual(1e-6);
      model.deleteAdapter('full');
      model.deleteAdapter('partial');
    });

    it('gating: Δ · mean_seq(sigmoid(gate(x))) without alpha/r; AdapterDrop skips layers', async () => {
      model.addAdapter('g', { ...ALL_SITES, use_gating: true }, { seed: 10 });
      randomize(model, 'g', 41);
      const rt = model.adapters.runtimeFor('lora') as LoraRuntime;
      const site = model.linearSites().find((s) => s.key === 'decoder.block.0.layer.1.EncDecAttention.v') as LinearSite;
      const W = model.readLinearWeight(site.key);
      const v = model.adapters.adapterVariables('g');
      const x = tf.randomNormal([2, 5, 32], 0, 1, 'float32', 3);
      const ctx = new ForwardContext(Stack('g'));
      const base = (t: tf.Tensor) => tf.matMul(t.reshape([-1, 32]), W).reshape([2, 5, 32]);
      const got = tf.tidy(() => rt.linear(site, x, base, ctx)!);
      const want = tf.tidy(() => {
        const gate = tf
          .sigmoid(tf.matMul(x.reshape([-1, 32]), v.get(`${site.key}.gate`)!).add(v.get(`${site.key}.gate_bias`)!))
          .reshape([2, 5, 1])
          .mean(1, true);
        const delta = tf.matMul(tf.matMul(x.reshape([-1, 32]), v.get(`${site.key}.lora_A`)!), v.get(`${site.key}.lora_B`)!).reshape([2, 5, 32]);
        return base(x).add(delta.mul(gate));
      });
      expect(maxDiff((await got.data()) as Float32Array, (await want.data()) as Float32Array)).toBeLessThan(1e-5);
      tf.dispose([x, got, want]);
      ctx.dispose();
      // AdapterDrop: every layer skipped ⇒ the base model.
      model.setActiveAdapters('g', { skipLayers: [0, 1, 2, 3] });
      expect(maxDiff((await logitsOf(model)).data, base0())).toBeLessThanOrEqual(1e-6);
      model.deleteAdapter('g');
    });

    it('dropout acts in training only', async () => {
      model.addAdapter('d', { ...ALL_SITES, dropout: 0.5 }, { seed: 12 });
      randomize(model, 'd', 51);
      model.setActiveAdapters('d');
      const args = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels };
      const read = async (t: tf.Tensor) => {
        const v = (await t.data())[0];
        t.dispose();
        return v;
      };
      const evalA = await read(model.loss(args));
      const evalB = await read(model.loss(args));
      expect(evalA).toBe(evalB);
      const trainA = await read(model.loss({ ...args, training: true, seed: 1 }));
      const trainB = await read(model.loss({ ...args, training: true, seed: 1 }));
      expect(trainA).toBe(trainB); // seeded
      expect(trainA).not.toBe(evalA);
      model.deleteAdapter('d');
    });

    it('forward and generation with LoRA leak no tensors', async () => {
      model.setActiveAdapters(Parallel('a', 'b'));
      await logitsOf(model);
      await expectNoLeaks(async () => {
        await logitsOf(model);
        await model.generate({ inputIds: inputs.inputIds, maxNewTokens: 3 });
      }, 'lora forward');
    });
  });
}

describe('relu / tied T5 flavour (t5 v1.0): intermediate LoRA sits on wi', () => {
  const RELU = {
    model_type: 't5',
    vocab_size: 40,
    d_model: 16,
    d_kv: 4,
    d_ff: 24,
    num_layers: 2,
    num_decoder_layers: 1,
    num_heads: 3,
    relative_attention_num_buckets: 8,
    relative_attention_max_distance: 16,
    dropout_rate: 0,
    layer_norm_epsilon: 1e-6,
    decoder_start_token_id: 0,
    pad_token_id: 0,
    eos_token_id: 1,
    feed_forward_proj: 'relu',
  };
  const input = {
    inputIds: [
      [5, 9, 13, 22, 1],
      [8, 2, 31, 1, 0],
    ],
    attentionMask: [
      [1, 1, 1, 1, 1],
      [1, 1, 1, 1, 0],
    ],
    decoderInputIds: [
      [0, 4, 9],
      [0, 21, 3],
    ],
  };

  it('covers wi and wo, q/k/v of width heads·d_kv ≠ d_model; merged == unmerged; IA3 ones == base', async () => {
    await initBackend('cpu');
    const model = T5ForConditionalGeneration.random(RELU, 3);
    const base = await logitsOf(model, input);
    model.addAdapter('r', { ...ALL_SITES, r: 2 }, { seed: 1 });
    const keys = [...model.adapters.adapterVariables('r').keys()];
    expect(keys).toContain('encoder.block.1.layer.1.DenseReluDense.wi.lora_A');
    expect(model.adapters.adapterVariables('r').get('encoder.block.0.layer.0.SelfAttention.q.lora_B')!.shape).toEqual([2, 12]);
    randomize(model, 'r', 9);
    model.setActiveAdapters('r');
    const unmerged = await logitsOf(model, input);
    expect(maxDiff(unmerged.data, base.data)).toBeGreaterThan(1e-3);
    model.mergeAdapter('r');
    expect(maxDiff((await logitsOf(model, input)).data, unmerged.data)).toBeLessThan(1e-5);
    model.unmergeAdapter('r');
    // Stacking two LoRAs where q's output (12) cannot feed q's input (16): a typed error naming the site.
    model.addAdapter('r2', { ...ALL_SITES, r: 2 }, { seed: 2 });
    model.setActiveAdapters(Stack('r', 'r2'));
    expect(() => model.forward(input)).toThrow(CompositionError);
    model.addAdapter('i', 'ia3', { seed: 3 });
    model.setActiveAdapters('i');
    expect(maxDiff((await logitsOf(model, input)).data, base.data)).toBeLessThanOrEqual(1e-6);
    model.dispose();
  });
});
