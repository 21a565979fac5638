import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { Average, CompositionError, ConfigError, type AdapterComposition } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, inputs, labels, cleanup as cleanupAdapters, copyFlatWithout as copyFlat } from './helpers.js';

const small = (extra = '') => `prefix_tuning[bottleneck_size=16${extra}]`;

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`prefix tuning on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    const logitsOf = (comp: AdapterComposition | null, input: typeof inputs = inputs) => {
      const out = model.forward({ ...input, composition: comp });
      out.encoderLastHiddenState.dispose();
      return out.logits;
    };
    let base: tf.Tensor;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      base = logitsOf(null);
    });
    afterAll(() => {
      base.dispose();
      model.dispose();
    });
    const cleanup = (...names: string[]) => cleanupAdapters(model, ...names);

    const copyFlatWithout = (from: string, to: string, leaveOut: number[]) => copyFlat(model, from, to, leaveOut);

    it('a prefix adapter changes the logits; forward and generate leak nothing', async () => {
      model.addAdapter('p', small(), { seed: 1 });
      model.setActiveAdapters('p');
      const l = logitsOf('p');
      expect(await maxAbsDiff(l, base)).toBeGreaterThan(1e-3);
      l.dispose();
      await expectNoLeaks(() => tf.dispose(logitsOf('p')), 'forward');
      await expectNoLeaks(() => model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 4 }), 'generate');
      await expectNoLeaks(() => model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 4, numBeams: 2 }), 'beam generate');
      cleanup('p');
    });

    it('adding, ejecting and deleting adapters leaks nothing (PEFT import included)', async () => {
      await expectNoLeaks(async () => {
        model.addAdapter('l', small(',use_gating=true'));
        model.ejectPrefix('l');
        model.deleteAdapter('l');
        const n = await model.loadAdapter(`${FIXTURE_DIR}/peft-prefix`, { name: 'lp' });
        model.deleteAdapter(n);
      }, 'adapter life cycle');
    });

    it('ejectPrefix leaves the logits unchanged and removes the MLP', async () => {
      // P < bottleneck (as with the defaults 30 < 512): the flat form is smaller than the MLP.
      model.addAdapter('e', 'prefix_tuning[prefix_length=8,bottleneck_size=64]', { seed: 2 });
      const before = logitsOf('e');
      const paramsBefore = model.adapterSummary().find((r) => r.name === 'e')!.parameters;
      model.ejectPrefix('e');
      const after = logitsOf('e');
      expect(await maxAbsDiff(after, before)).toBeLessThanOrEqual(1e-5);
      const vars = [...model.adapters.adapterVariables('e').keys()];
      expect(vars.sort()).toEqual(['cross_prefix.control_trans', 'encoder_prefix.control_trans', 'self_prefix.control_trans']);
      expect(model.adapters.adapterConfig('e').flat).toBe(true);
      expect(model.adapterSummary().find((r) => r.name === 'e')!.parameters).toBeLessThan(paramsBefore);
      // Saved and loaded again (as flat), it still gives the same logits.
      const dir = mkdtempSync(join(tmpdir(), 'prefix-'));
      try {
        await model.saveAdapter(dir, 'e');
        const name = await model.loadAdapter(dir, { name: 'e2' });
        const loaded = logitsOf(name);
        expect(await maxAbsDiff(loaded, before)).toBeLessThanOrEqual(1e-5);
        loaded.dispose();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      tf.dispose([before, after]);
      cleanup('e', 'e2');
    });

    it('prefix_length 0 and all layers left out equal the base model', async () => {
      model.addAdapter('zero', small(',prefix_length=0'));
      model.addAdapter('none', small(',leave_out=[0,1,2,3]'));
      expect(model.adapters.adapterVariables('zero').size).toBe(0);
      for (const n of ['zero', 'none']) {
        const l = logitsOf(n);
        expect(await maxAbsDiff(l, base)).toBe(0);
        l.dispose();
      }
      cleanup('zero', 'none');
    });

    it('leave_out layers behave as without a prefix', async () => {
      // Leaving out encoder layer 1 and decoder layer 3 = the full adapter (same weights elsewhere) with them dropped.
      model.addAdapter('full', small(',flat=true'), { seed: 3 });
      model.addAdapter('lo', small(',flat=true,leave_out=[1,3]'), { seed: 4 });
      copyFlatWithout('full', 'lo', [1, 3]);
      const a = logitsOf('lo');
      model.setActiveAdapters('full', { skipLayers: [1, 3] });
      const b = logitsOf('full');
      expect(await maxAbsDiff(a, b)).toBeLessThanOrEqual(1e-5);
      expect(await maxAbsDiff(a, base)).toBeGreaterThan(1e-3);
      tf.dispose([a, b]);
      cleanup('full', 'lo');
    });

    it('a prefix adapter trains: 30 Adam steps lower the loss, base weights bit-identical', async () => {
      model.addAdapter('t', small(',prefix_length=8'), { seed: 14 });
      model.trainAdapter('t');
      const baseBefore = new Map<string, Float32Array>();
      for (const [k, t] of model.baseTensors()) baseBefore.set(k, (await t.data()) as Float32Array);
      const opt = tf.train.adam(1e-2);
      const vars = model.adapters.trainableVariables();
      const lossNow = () => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar;
      const first = lossNow();
      const l0 = (await first.data())[0];
      first.dispose();
      for (let step = 0; step < 30; step++) {
        const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels, training: true }) as tf.Scalar, vars);
        opt.applyGradients(Object.entries(grads).map(([name, tensor]) => ({ name, tensor })));
        tf.dispose([value, ...Object.values(grads)]);
      }
      const last = lossNow();
      const l1 = (await last.data())[0];
      last.dispose();
      opt.dispose();
      expect(l1).toBeLessThan(l0 * 0.9);
      for (const [k, t] of model.baseTensors()) expect(await maxAbsDiff(t, baseBefore.get(k)!), k).toBe(0);
      cleanup('t');
    });

    it('gating scales the prefix keys by g[0] and values by g[-1] (shared_gating false)', async () => {
      model.addAdapter('ug', small(',flat=true,prefix_length=3'), { seed: 15 });
      model.addAdapter('gt', small(',flat=true,prefix_length=3,use_gating=true,shared_gating=false'), { seed: 15 });
      const vars = model.adapters.adapterVariables('gt');
      // Same prefixes; gates with zero weights and biases (0.5, -1) give g = (sigmoid(0.5), sigmoid(-1)) for every row.
      vars.get('self_prefix.control_trans')!.assign(model.adapters.adapterVariables('ug').get('self_prefix.control_trans')!);
      tf.tidy(() => {
        for (const [k, v] of vars) {
          if (k.endsWith('.weight')) v.assign(tf.zerosLike(v));
          if (k.endsWith('.bias')) v.assign(tf.tensor1d([0.5, -1]));
        }
      });
      const site = model.attentionSites().find((s) => s.stack === 'decoder' && s.attention === 'self')!;
      const run = (name: string) => {
        const ctx = model.adapters.createContext({ composition: name });
        const p = tf.tidy(() => {
          const kv = model.adapters.attentionPrefix(site, tf.randomNormal([2, 3, 32], 0, 1, 'float32', 1), ctx)!;
          return [kv.keys, kv.values];
        });
        ctx.dispose();
        return p;
      };
      const [k0, v0] = run('ug');
      const [k1, v1] = run('gt');
      const sig = (x: number) => 1 / (1 + Math.exp(-x));
      const ek = k0.mul(sig(0.5));
      const ev = v0.mul(sig(-1));
      expect(await maxAbsDiff(k1, ek)).toBeLessThan(1e-6);
      expect(await maxAbsDiff(v1, ev)).toBeLessThan(1e-6);
      tf.dispose([k0, v0, k1, v1, ek, ev]);
      cleanup('ug', 'gt');
    });

    it('dropout acts in training only', async () => {
      model.addAdapter('dr', small(',dropout=0.5'), { seed: 16 });
      model.addAdapter('nd', small(''), { seed: 16 });
      const lossOf = async (name: string, training: boolean) => {
        model.setActiveAdapters(name);
        const l = model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels, training, seed: 3 });
        const v = (await l.data())[0];
        l.dispose();
        return v;
      };
      expect(await lossOf('dr', false)).toBe(await lossOf('nd', false));
      expect(await lossOf('dr', true)).not.toBe(await lossOf('nd', true));
      cleanup('dr', 'nd');
    });

    it('Average of prefix adapters is refused at setActiveAdapters with a CompositionError naming Average and prefix', () => {
      model.addAdapter('a', small(',prefix_length=2'));
      model.addAdapter('b', small(',prefix_length=2'));
      expect(() => model.setActiveAdapters(Average('a', 'b'))).toThrow(CompositionError);
      expect(() => model.setActiveAdapters(Average('a', 'b'))).toThrow(/Average.*prefix/);
      cleanup('a', 'b');
    });

    it('bad options are ConfigErrors naming the option', () => {
      expect(() => model.addAdapter('x', 'prefix_tuning[prefix_length=-1]')).toThrow(ConfigError);
      expect(() => model.addAdapter('x', 'prefix_tuning[non_linearity=nope]')).toThrow(/non_linearity/);
      expect(() => model.addAdapter('x', { method: 'prefix_tuning', prefix_lenght: 3 })).toThrow(/prefix_lenght/);
      expect(model.adapters.hasAdapter('x')).toBe(false);
    });
  });
}

describe('flan-t5-small-like head geometry (heads × d_kv ≠ d_model)', () => {
  it('a prefix adapter runs with keys [rows, 3, P, 8]', async () => {
    await initBackend('cpu');
    const model = T5ForConditionalGeneration.random(
      {
        d_model: 48,
        d_kv: 8,
        num_heads: 3,
        d_ff: 32,
        num_layers: 2,
        num_decoder_layers: 2,
        vocab_size: 64,
        feed_forward_proj: 'gated-gelu',
        relative_attention_num_buckets: 8,
        relative_attention_max_distance: 20,
      },
      1,
    );
    model.addAdapter('p', 'prefix_tuning[prefix_length=5,bottleneck_size=16]');
    model.setActiveAdapters('p');
    const ctx = model.adapters.createContext();
    for (const site of model.attentionSites()) {
      const kv = tf.tidy(() => {
        const p = model.adapters.attentionPrefix(site, tf.zeros([2, 4, 48]), ctx)!;
        return [p.keys, p.values, p.mask];
      });
      expect(kv[0].shape).toEqual([2, 3, 5, 8]);
      expect(kv[1].shape).toEqual([2, 3, 5, 8]);
      expect(kv[2].shape).toEqual([2, 5]);
      tf.dispose(kv);
    }
    ctx.dispose();
    const out = model.forward({ inputIds: [[5, 6, 7, 1]], decoderInputIds: [[0, 5, 6]] });
    expect(out.logits.shape).toEqual([1, 3, 64]);
    tf.dispose([out.logits, out.encoderLastHiddenState]);
    const ids = await model.generate({ inputIds: [[5, 6, 7, 1]], maxNewTokens: 4 });
    expect(ids).toEqual(await model.generate({ inputIds: [[5, 6, 7, 1]], maxNewTokens: 4, useCache: false }));
    model.dispose();
  });
});
