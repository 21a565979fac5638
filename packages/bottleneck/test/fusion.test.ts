import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { AdapterError, ConfigError, ForwardContext, Fuse, ModelMismatchError, Stack, normalizeComposition } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { addAdapterFusion, adapterFusionVariables, deleteAdapterFusion, fusionRegularizationLoss, loadAdapterFusion, saveAdapterFusion, trainAdapterFusion } from '../src/index.js';
import { FIXTURE_DIR, inputs, labels, loadModel, logits, maxDiff, setVariables } from './helpers.js';

const H = 32;

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterFusion on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await loadModel();
    });
    afterEach(() => {
      model.setActiveAdapters(null);
      for (const a of model.listAdapters()) model.deleteAdapter(a.name); // also drops their fusions
    });
    const twoAdapters = () => {
      model.addAdapter('a', 'seq_bn[reduction_factor=4]');
      model.addAdapter('b', 'seq_bn[reduction_factor=8]');
      setVariables(model, 'a', /./, 'random', 1);
      setVariables(model, 'b', /./, 'random', 2);
    };

    it('static Fuse of one adapter equals the adapter alone (softmax over one = 1, no value matrix)', async () => {
      twoAdapters();
      addAdapterFusion(model, Fuse('a'), 'static');
      const alone = await logits(model, { composition: 'a' });
      model.setActiveAdapters(Fuse('a'));
      expect(maxDiff(await expectNoLeaks(() => logits(model)), alone)).toBeLessThan(1e-5);
    });

    it('dynamic Fuse(a, b) matches BertFusion computed by hand at one sub-layer', async () => {
      twoAdapters();
      const name = addAdapterFusion(model, Fuse('a', 'b'), 'dynamic', { seed: 3 });
      expect(name).toBe('a,b');
      const vars = adapterFusionVariables(model, 'a,b');
      // query/key Linear(H, H) with bias + value Linear(H, H) without bias, at each of the 4 FFN sub-layers
      expect(vars.size).toBe(4 * 5);
      for (const [k, v] of vars) {
        const t = tf.randomNormal(v.shape, 0, 0.3, 'float32', k.length);
        v.assign(t);
        t.dispose();
      }
      const site = model.sublayerSites().find((s) => s.key === 'encoder.block.1.layer.1')!;
      const rt = model.adapters.runtimeFor('bottleneck')!;
      const f = tf.randomNormal([2, 5, H], 0, 1, 'float32', 7);
      const r = tf.randomNormal([2, 5, H], 0, 1, 'float32', 8);
      const ctx = new ForwardContext(normalizeComposition(Fuse('a', 'b')));
      const y = rt.sublayer!(site, f, r, ctx)!;
      ctx.dispose();
      const av = (n: string, p: string) => model.adapters.adapterVariables(n).get(`${site.key}.adapters.output.${p}`)!;
      const fv = (p: string) => vars.get(`${site.key}.adapter_fusion_layer.a,b.${p}`)!;
      const lin = (x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor) => {
        // x has rank ≥ 2 and w is 2-D, so both indexed dims exist
        const y2 = tf.matMul(x.reshape([-1, x.shape[x.rank - 1]!]), w);
        return (b ? y2.add(b) : y2).reshape([...x.shape.slice(0, -1), w.shape[1]!]);
      };
      // seq_bn: x = f + r (original_ln_before), residual = f; up = up(relu(down(x)))
      const x = f.add(r);
      const up = (n: string) => lin(tf.relu(lin(x, av(n, 'adapter_down.weight'), av(n, 'adapter_down.bias'))), av(n, 'adapter_up.weight'), av(n, 'adapter_up.bias'));
      const ups = tf.stack([up('a'), up('b')], 2); // [B, S, 2, H]
      const q = lin(x, fv('query.weight'), fv('query.bias')); // query_before_ln false ⇒ query = x
      const k = lin(ups, fv('key.weight'), fv('key.bias'));
      const v = lin(ups, fv('value.weight'));
      const probs = tf.softmax(q.expandDims(2).mul(k).sum(-1)); // [B, S, 2]
      const context = probs.expandDims(-1).mul(v).sum(2).add(f); // + residual (f)
      const expected = context.add(r); // post_forward of the last adapter: + r
      expect(maxDiff(await y.data(), await expected.data())).toBeLessThan(1e-5);
      tf.dispose([f, r, y, x, ups, q, k, v, probs, context, expected]);
    });

    it('training the fusion changes only fusion weights; regularization loss is 0.01·Σ‖I − V‖²', async () => {
      twoAdapters();
      addAdapterFusion(model, Fuse('a', 'b'));
      const reg = fusionRegularizationLoss(model, 'a,b');
      // value starts as identity with 1e-6 off the diagonal: 4 layers × H(H−1) entries of (1e-6)²
      expect((await reg.data())[0]).toBeCloseTo(0.01 * 4 * H * (H - 1) * 1e-12, 15);
      reg.dispose();
      const fusionVars = trainAdapterFusion(model, Fuse('a', 'b'));
      const adapterBefore = await Promise.all([...model.adapters.adapterVariables('a').values()].map(async (v) => Float32Array.from(await v.data())));
      const { value, grads } = tf.variableGrads(
        () => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }).add(fusionRegularizationLoss(model, 'a,b')) as tf.Scalar,
        fusionVars,
      );
      expect(Number.isFinite((await value.data())[0])).toBe(true);
      let nonZero = 0;
      for (const v of fusionVars) {
        const g = grads[v.name];
        if (g && (await g.abs().max().data())[0] > 0) nonZero++;
        const next = tf.tidy(() => v.sub(g.mul(0.1)));
        v.assign(next);
        next.dispose();
      }
      tf.dispose([value, ...Object.values(grads)]);
      expect(nonZero).toBeGreaterThan(fusionVars.length / 2);
      const adapterAfter = await Promise.all([...model.adapters.adapterVariables('a').values()].map(async (v) => Float32Array.from(await v.data())));
      expect(adapterAfter).toEqual(adapterBefore);
    });

    it('save → load round trip of a fusion gives identical logits; typed errors', async () => {
      twoAdapters();
      addAdapterFusion(model, Fuse('a', 'b'), { temperature: false, residual_before: true });
      for (const [k, v] of adapterFusionVariables(model, 'a,b')) {
        const t = tf.randomNormal(v.shape, 0, 0.2, 'float32', k.length + 1);
        v.assign(t);
        t.dispose();
      }
      model.setActiveAdapters(Stack(Fuse('a', 'b')));
      const before = await logits(model);
      const dir = mkdtempSync(join(tmpdir(), 'fusion-'));
      await saveAdapterFusion(model, dir, 'a,b');
      expect(JSON.parse(readFileSync(join(dir, 'adapter_fusion_config.json'), 'utf8')).adapters).toEqual(['a', 'b']);
      deleteAdapterFusion(model, 'a,b');
      await expect(logits(model)).rejects.toBeInstanceOf(AdapterError); // Fuse without its fusion layers
      expect(await loadAdapterFusion(model, dir)).toBe('a,b');
      expect(maxDiff(await logits(model), before)).toBe(0);
      expect(() => addAdapterFusion(model, Fuse('a', 'b'))).toThrow(AdapterError); // twice
      expect(() => addAdapterFusion(model, Fuse('a', 'zz'))).toThrow(AdapterError);
      expect(() => addAdapterFusion(model, Fuse('a'), { colour: true } as never)).toThrow(ConfigError);
      expect(() => addAdapterFusion(model, Fuse('a'), 'fancy' as never)).toThrow(ConfigError);
      const raw = JSON.parse(readFileSync(join(FIXTURE_DIR, 'config.json'), 'utf8'));
      const other = T5ForConditionalGeneration.random({ ...raw, d_model: 16 }, 1);
      try {
        other.addAdapter('a', 'seq_bn[reduction_factor=4]');
        other.addAdapter('b', 'seq_bn[reduction_factor=8]');
        await expect(loadAdapterFusion(other, dir)).rejects.toBeInstanceOf(ModelMismatchError);
      } finally {
        other.dispose();
      }
    });
  });
}
