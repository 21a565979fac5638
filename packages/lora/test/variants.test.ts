import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import {
  CompositionError,
  type ConfigError,
  ForwardContext,
  UnsupportedError,
  WeightError,
  fnv1a,
  resolveConfig,
  writeSafetensors,
  Parallel,
  BatchSplit,
  Stack,
  type LinearSite,
} from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import type { LoraRuntime } from '../src/index.js';
import { readFileSync } from 'node:fs';
import { FIXTURE_DIR, PEFT_LORA_DIR, inputs, labels, logitsOf, maxDiff, randomize, readJson, rowsOf } from './helpers.js';

/** DoRA / VeRA on q, k, v of every attention, wi_1 and wo (VeRA's projections then span d_ff both ways). */
const SITES = { r: 4, alpha: 8, attn_matrices: ['q', 'k', 'v'], intermediate_lora: true, output_lora: true };
const DORA = { method: 'lora', ...SITES, use_dora: true };
const VERA = { method: 'lora', ...SITES, vera_d: 0.1, vera_b: 0, init_weights: 'vera' };
const DVORA = { ...VERA, use_dora: true };
const SITE_KEY = 'decoder.block.1.layer.1.EncDecAttention.q';

const caught = (f: () => unknown): unknown => {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
};

describe('DoRA / VeRA configs', () => {
  it("resolve adapters' config strings", () => {
    expect(resolveConfig('dora')).toMatchObject({ method: 'lora', use_dora: true, r: 8, alpha: 8, init_weights: 'lora', vera_d: null });
    expect(resolveConfig('vera[r=16]')).toMatchObject({ method: 'lora', r: 16, vera_d: 0.1, vera_b: 0, init_weights: 'vera', use_dora: false });
    expect(resolveConfig('dvora')).toMatchObject({ use_dora: true, vera_d: 0.1, vera_b: 0 });
  });

  it('are validated with typed errors naming the option', () => {
    expect((caught(() => resolveConfig('lora[vera_d=0.1]')) as ConfigError).field).toBe('vera_b');
    expect((caught(() => resolveConfig('ia3[use_dora=true]')) as ConfigError).field).toBe('use_dora');
    expect(caught(() => resolveConfig('dora[use_gating=true]'))).toBeInstanceOf(UnsupportedError);
    expect((caught(() => resolveConfig('lora[init_weights=pissa]')) as ConfigError).field).toBe('init_weights');
  });
});

type Vars = Map<string, tf.Variable>;

/** The plain-tfjs reference at one linear: DoRA g ⊙ (x·W + s·x·a·b), g = m / ‖W + s·a·b‖ (a constant), VeRA a = A_s ⊙ λ_d, b = B_s ⊙ λ_b. */
function reference(x: tf.Tensor, W: tf.Tensor, v: Vars, site: LinearSite, s: number, kind: 'dora' | 'vera' | 'dvora', norm?: tf.Tensor): tf.Tensor {
  const k = site.key;
  const x2 = x.reshape([-1, site.inFeatures]);
  let a: tf.Tensor;
  let b: tf.Tensor;
  if (v.has(`${k}.lora_A`)) {
    a = v.get(`${k}.lora_A`)!;
    b = v.get(`${k}.lora_B`)!;
  } else {
    const r = v.get('vera_A')!.shape[1] as number;
    a = v
      .get('vera_A')!
      .slice([0, 0], [site.inFeatures, r])
      .mul(v.get(`${k}.vera_lambda_d`)!);
    b = v
      .get('vera_B')!
      .slice([0, 0], [r, site.outFeatures])
      .mul(v.get(`${k}.vera_lambda_b`)!);
  }
  let y = tf.matMul(x2, W).add(tf.matMul(tf.matMul(x2, a), b).mul(s));
  if (kind !== 'vera' && norm) y = y.mul(v.get(`${k}.lora_magnitude_vector`)!.div(norm));
  return y.reshape([...x.shape.slice(0, -1), site.outFeatures]);
}

/** ‖W + s·a·b‖ per output from the variables' current values, outside any gradient (the detached norm). */
async function normOf(W: tf.Tensor, v: Vars, site: LinearSite, s: number, kind: 'dora' | 'dvora'): Promise<tf.Tensor> {
  const values = new Map<string, tf.Variable>();
  for (const [k, t] of v) values.set(k, tf.variable(tf.tensor((await t.data()) as Float32Array, t.shape), false));
  const out = tf.tidy(() => {
    const y = reference(tf.eye(site.inFeatures), W, values, site, s, kind);
    return y.square().sum(0, true).sqrt(); // rows of eye·(W + s·ab) are W + s·ab
  });
  for (const t of values.values()) t.dispose();
  return out;
}

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`DoRA and VeRA on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let base: { shape: number[]; data: Float32Array };
    let site: LinearSite;
    const rt = () => model.adapters.runtimeFor('lora') as LoraRuntime;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      base = await logitsOf(model);
      site = model.linearSites().find((s) => s.key === SITE_KEY) as LinearSite;
    });
    afterAll(() => model.dispose());

    it('fresh DoRA (m = ‖W‖, B = 0), VeRA (λ_b = 0) and DoRA+VeRA equal the base model', async () => {
      for (const [name, cfg] of [
        ['d0', DORA],
        ['v0', VERA],
        ['dv0', DVORA],
      ] as const) {
        model.addAdapter(name, cfg, { seed: 1 });
        model.setActiveAdapters(name);
        expect(maxDiff((await logitsOf(model)).data, base.data), name).toBeLessThanOrEqual(1e-5);
        model.deleteAdapter(name);
      }
      // DoRA's magnitude is ‖W + s·BA‖ at creation, so even a non-zero B starts as plain LoRA
      model.addAdapter('db', { ...DORA, init_weights: 'bert' }, { seed: 2 });
      model.addAdapter('lb', { ...DORA, use_dora: false, init_weights: 'bert' }, { seed: 2 });
      model.setActiveAdapters('db');
      const d = await logitsOf(model);
      model.setActiveAdapters('lb');
      expect(maxDiff(d.data, (await logitsOf(model)).data)).toBeLessThan(1e-5);
      expect(maxDiff(d.data, base.data)).toBeGreaterThan(1e-3);
      model.deleteAdapter('db');
      model.deleteAdapter('lb');
    });

    it('variables: magnitude [1, out]; VeRA projections [in_max, r] / [r, out_max] shared by the sites, λ_d [1, r], λ_b [1, out]', () => {
      model.addAdapter('v', VERA, { seed: 3 });
      model.addAdapter('d', DORA, { seed: 4 });
      const v = model.adapters.adapterVariables('v');
      expect(v.get('vera_A')!.shape).toEqual([64, 4]); // d_ff 64 > d_model 32 (wo's input)
      expect(v.get('vera_B')!.shape).toEqual([4, 64]); // wi_1's output
      expect(v.get(`${SITE_KEY}.vera_lambda_d`)!.shape).toEqual([1, 4]);
      expect(v.get(`${SITE_KEY}.vera_lambda_b`)!.shape).toEqual([1, 32]);
      expect([...v.keys()].some((k) => k.endsWith('lora_A'))).toBe(false);
      expect(model.adapters.adapterVariables('d').get(`${SITE_KEY}.lora_magnitude_vector`)!.shape).toEqual([1, 32]);
      model.deleteAdapter('v');
      model.deleteAdapter('d');
    });

    for (const kind of ['dora', 'vera', 'dvora'] as const) {
      const cfg = kind === 'dora' ? DORA : kind === 'vera' ? VERA : DVORA;
      it(`${kind}: hook path, declared terms and gradients equal the plain-tfjs formula`, async () => {
        model.addAdapter(kind, cfg, { seed: 5 });
        model.trainAdapter(kind); // variables are created frozen
        randomize(model, kind, 61, 0.3);
        const v = model.adapters.adapterVariables(kind);
        // a magnitude near ‖W‖ (randomize drew it around 0) keeps the check meaningful
        if (kind !== 'vera') for (const [k, t] of v) if (k.endsWith('magnitude_vector')) t.assign(t.abs().add(1));
        const W = model.readLinearWeight(site.key);
        const x = tf.randomNormal([2, 3, 32], 0, 1, 'float32', 9);
        const R = tf.randomNormal([2, 3, 32], 0, 1, 'float32', 10);
        const s = 8 / 4;
        const norm = kind === 'vera' ? undefined : await normOf(W, v, site, s, kind);
        // one context per forward, as the model makes them (derived factors are computed once per context)
        const contexts: ForwardContext[] = [];
        const fresh = () => {
          contexts.push(new ForwardContext(Stack(kind)));
          return contexts[contexts.length - 1];
        };
        const baseFn = (t: tf.Tensor) => tf.matMul(t.reshape([-1, 32]), W).reshape([...t.shape.slice(0, -1), 32]);
        const hook = () => rt().linear(site, x, baseFn, fresh())!;
        // the declared terms evaluated as the fused kernel defines them: (x·W) ⊙ outScale + Σ scale·(x·a)·b
        const declared = () => {
          const terms = rt().linearTerms(site, 2, fresh());
          if (terms === 'hooks' || !terms) throw new Error(`expected declared terms, got ${terms}`);
          expect(terms.map((t) => t.kind).sort()).toEqual(kind === 'vera' ? ['lora'] : ['lora', 'outScale']);
          let y = baseFn(x);
          for (const t of terms) if (t.kind === 'outScale') y = y.mul(t.vector.mul(t.scale));
          for (const t of terms) if (t.kind === 'lora') y = y.add(matMul3(matMul3(x, t.a), t.b).mul(t.rows[0].scale));
          return y;
        };
        const want = tf.tidy(() => reference(x, W, v, site, s, kind, norm));
        for (const f of [hook, declared]) {
          const got = tf.tidy(f);
          expect(maxDiff((await got.data()) as Float32Array, (await want.data()) as Float32Array)).toBeLessThan(1e-5);
          got.dispose();
        }
        // gradients of Σ y ⊙ R for every variable, the norm a constant (PEFT detaches it); projections get none
        const trainable = [...v.entries()].filter(([k]) => k.startsWith(`${site.key}.`) || k.startsWith('vera_'));
        const list = trainable.map(([, t]) => t);
        const ref = tf.variableGrads(() => reference(x, W, v, site, s, kind, norm).mul(R).sum() as tf.Scalar, list);
        for (const f of [hook, declared]) {
          const got = tf.variableGrads(() => f().mul(R).sum() as tf.Scalar, list);
          for (const [k, t] of trainable) {
            const g = got.grads[t.name];
            const r = ref.grads[t.name];
            if (k.startsWith('vera_')) {
              expect(g, `${k} must get no gradient`).toBeUndefined();
              continue;
            }
            expect(maxDiff((await g.data()) as Float32Array, (await r.data()) as Float32Array), k).toBeLessThan(1e-4);
          }
          tf.dispose([got.value, ...Object.values(got.grads)]);
        }
        tf.dispose([ref.value, ...Object.values(ref.grads), x, R, W, want, ...(norm ? [norm] : [])]);
        for (const c of contexts) c.dispose();
        model.setActiveAdapters(null);
        model.deleteAdapter(kind);
      });

      it(`${kind}: merged == unmerged (logits and generation); unmerge restores the kernels bit for bit`, async () => {
        model.addAdapter(kind, cfg, { seed: 6 });
        randomize(model, kind, 71, 0.2);
        const v = model.adapters.adapterVariables(kind);
        if (kind !== 'vera') for (const [k, t] of v) if (k.endsWith('magnitude_vector')) t.assign(t.abs().add(1));
        model.setActiveAdapters(kind);
        const unmerged = await logitsOf(model);
        expect(maxDiff(unmerged.data, base.data)).toBeGreaterThan(1e-2);
        const gen = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 4 };
        const genUnmerged = await model.generate(gen);
        const before = new Map<string, Float32Array>();
        for (const [k, t] of model.baseTensors()) before.set(k, (await t.data()) as Float32Array);
        model.mergeAdapter(kind);
        expect(maxDiff((await logitsOf(model)).data, unmerged.data)).toBeLessThan(1e-4);
        expect(await model.generate(gen)).toEqual(genUnmerged);
        model.unmergeAdapter(kind);
        for (const [k, t] of model.baseTensors()) expect(maxDiff((await t.data()) as Float32Array, before.get(k)!), k).toBe(0);
        model.deleteAdapter(kind);
      });
    }

    it('DoRA with dropout in training follows PEFT: W·x + (g − 1) ⊙ W·drop(x) + s·drop(x)·A·(B ⊙ g)', async () => {
      model.addAdapter('dd', { ...DORA, dropout: 0.5 }, { seed: 12 });
      randomize(model, 'dd', 111, 0.3, 0.5);
      const v = model.adapters.adapterVariables('dd');
      const W = model.readLinearWeight(site.key);
      const x = tf.randomNormal([2, 3, 32], 0, 1, 'float32', 13);
      const ctx = new ForwardContext(Stack('dd'), { training: true, seed: 4 });
      const baseFn = (t: tf.Tensor) => matMul3(t, W);
      // the hook path, since dropout cannot be declared
      expect(rt().linearTerms(site, 2, ctx)).toBe('hooks');
      const got = tf.tidy(() => rt().linear(site, x, baseFn, ctx)!);
      const norm = await normOf(W, v, site, 2, 'dora');
      const want = tf.tidy(() => {
        const xd = tf.dropout(x, 0.5, undefined, ctx.dropoutSeed(fnv1a(`dd/${site.key}`) % 1_000_000));
        const g = v.get(`${site.key}.lora_magnitude_vector`)!.div(norm);
        const lora = matMul3(matMul3(xd, v.get(`${site.key}.lora_A`)!), v.get(`${site.key}.lora_B`)!.mul(g)).mul(2);
        return baseFn(x)
          .add(baseFn(xd).mul(g.sub(1)))
          .add(lora);
      });
      expect(maxDiff((await got.data()) as Float32Array, (await want.data()) as Float32Array)).toBeLessThan(1e-5);
      tf.dispose([W, x, got, want, norm]);
      ctx.dispose();
      model.deleteAdapter('dd');
    });

    it('Parallel slices, BatchSplit rows and cached generation equal each adapter alone', async () => {
      model.addAdapter('d', DORA, { seed: 7 });
      randomize(model, 'd', 81, 0.2, 0.5);
      model.addAdapter('v', VERA, { seed: 8 });
      randomize(model, 'v', 82, 0.3);
      model.addAdapter('l', { method: 'lora', ...SITES }, { seed: 9 });
      randomize(model, 'l', 83);
      const alone: Record<string, { shape: number[]; data: Float32Array }> = {};
      for (const n of ['d', 'v', 'l']) {
        model.setActiveAdapters(n);
        alone[n] = await logitsOf(model);
        expect(maxDiff(alone[n].data, base.data), n).toBeGreaterThan(1e-2);
      }
      model.setActiveAdapters(Parallel('d', 'v', 'l'));
      const par = await logitsOf(model);
      expect(par.shape[0]).toBe(6);
      expect(maxDiff(rowsOf(par, 0, 2), alone.d.data)).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(par, 2, 4), alone.v.data)).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(par, 4, 6), alone.l.data)).toBeLessThan(1e-5);
      model.setActiveAdapters(BatchSplit('d', 'v', { batchSizes: [1, 1] }));
      const split = await logitsOf(model);
      expect(maxDiff(rowsOf(split, 0, 1), rowsOf(alone.d, 0, 1))).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(split, 1, 2), rowsOf(alone.v, 1, 2))).toBeLessThan(1e-5);
      model.setActiveAdapters(BatchSplit('v', 'd', { batchSizes: [1, 1] }));
      const split2 = await logitsOf(model);
      expect(maxDiff(rowsOf(split2, 0, 1), rowsOf(alone.v, 0, 1))).toBeLessThan(1e-5);
      expect(maxDiff(rowsOf(split2, 1, 2), rowsOf(alone.d, 1, 2))).toBeLessThan(1e-5);
      // one row DoRA, one row VeRA: cached decoding (factors computed once per generation) == recomputation
      model.setActiveAdapters(BatchSplit('d', 'v', { batchSizes: [1, 1] }));
      const g = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 5 };
      expect(await model.generate(g)).toEqual(await model.generate({ ...g, useCache: false }));
      // Nothing stacks on DoRA (it normalises the whole projection): a typed error naming the site
      model.setActiveAdapters(Stack('d', 'l'));
      expect(() => model.forward(inputs)).toThrow(CompositionError);
      model.setActiveAdapters(Stack('l', 'd'));
      expect(() => model.forward(inputs)).toThrow(CompositionError);
      // VeRA chains like LoRA; the forward leaks nothing
      model.setActiveAdapters(Parallel('d', 'v'));
      await logitsOf(model);
      await expectNoLeaks(async () => {
        await logitsOf(model);
        await model.generate({ inputIds: inputs.inputIds, maxNewTokens: 3 });
      }, 'dora/vera forward');
      for (const n of ['d', 'v', 'l']) model.deleteAdapter(n);
    });

    it('a training step changes only the trainable variables: base weights and VeRA projections stay bit-identical', async () => {
      for (const [name, cfg] of [
        ['dt', DORA],
        ['vt', VERA],
      ] as const) {
        model.addAdapter(name, cfg, { seed: 10 });
        randomize(model, name, 91, 0.2, name === 'dt' ? 0.5 : 0);
        model.trainAdapter(name);
        const before = new Map<string, Float32Array>();
        for (const [k, t] of model.baseTensors()) before.set(`base:${k}`, (await t.data()) as Float32Array);
        for (const [k, t] of model.adapters.adapterVariables(name)) before.set(k, (await t.data()) as Float32Array);
        const vars = model.adapters.trainableVariables();
        const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels, training: true }) as tf.Scalar, vars);
        const opt = tf.train.sgd(0.1);
        opt.applyGradients(grads);
        tf.dispose([value, ...Object.values(grads)]);
        opt.dispose();
        for (const [k, t] of model.baseTensors()) expect(maxDiff((await t.data()) as Float32Array, before.get(`base:${k}`)!), k).toBe(0);
        for (const [k, t] of model.adapters.adapterVariables(name)) {
          const changed = maxDiff((await t.data()) as Float32Array, before.get(k)!) > 0;
          expect(changed, k).toBe(!k.startsWith('vera_'));
        }
        model.setActiveAdapters(null);
        model.deleteAdapter(name);
      }
    });

    it('PEFT export → import → export is bit-exact (names and layout as PEFT writes them)', async () => {
      for (const [name, cfg] of [
        ['pd', DORA],
        ['pv', { ...VERA, r: 4, alpha: 4 }],
      ] as const) {
        model.addAdapter(name, cfg, { seed: 11 });
        randomize(model, name, 101, 0.2, 0.3);
        const first = rt().exportPeft(name);
        const again = `${name}2`;
        model.adapters.loadAdapterFiles(peftFiles(first), { name: again });
        model.setActiveAdapters(name);
        const a = await logitsOf(model);
        model.setActiveAdapters(again);
        expect(maxDiff((await logitsOf(model)).data, a.data)).toBe(0);
        const second = rt().exportPeft(again);
        expect([...second.tensors.keys()].sort()).toEqual([...first.tensors.keys()].sort());
        for (const [k, t] of first.tensors) {
          expect(second.tensors.get(k)!.shape, k).toEqual(t.shape);
          expect(maxDiff(second.tensors.get(k)!.data, t.data), k).toBe(0);
        }
        if (name === 'pd') {
          expect(first.config).toMatchObject({ peft_type: 'LORA', use_dora: true, r: 4, lora_alpha: 8 });
          expect(first.tensors.get(`base_model.model.${SITE_KEY}.lora_magnitude_vector`)!.shape).toEqual([32]);
          // also as `<module>.lora_magnitude_vector.weight`
          const renamed = new Map([...first.tensors].map(([k, t]) => [k.endsWith('magnitude_vector') ? `${k}.weight` : k, t]));
          model.adapters.loadAdapterFiles(peftFiles({ config: first.config, tensors: renamed }), { name: 'pd3' });
          model.setActiveAdapters('pd3');
          expect(maxDiff((await logitsOf(model)).data, a.data)).toBe(0);
          model.deleteAdapter('pd3');
        } else {
          expect(first.config).toMatchObject({ peft_type: 'VERA', r: 4, save_projection: true, target_modules: ['k', 'q', 'v', 'wi_1', 'wo'] });
          expect(first.tensors.get('base_model.vera_A')!.shape).toEqual([4, 64]);
          expect(first.tensors.get('base_model.vera_B')!.shape).toEqual([64, 4]);
          expect(first.tensors.get(`base_model.model.${SITE_KEY}.vera_lambda_b`)!.shape).toEqual([32]);
          expect(first.tensors.get(`base_model.model.${SITE_KEY}.vera_lambda_d`)!.shape).toEqual([4]);
          const noProjection = { ...first.config, save_projection: false };
          expect(caught(() => model.adapters.loadAdapterFiles(peftFiles({ config: noProjection, tensors: first.tensors }), { name: 'pv3' }))).toBeInstanceOf(UnsupportedError);
          const small = new Map(first.tensors);
          small.set('base_model.vera_A', { shape: [4, 32], data: first.tensors.get('base_model.vera_A')!.data.slice(0, 128) });
          expect(caught(() => model.adapters.loadAdapterFiles(peftFiles({ config: first.config, tensors: small }), { name: 'pv3' }))).toBeInstanceOf(WeightError);
        }
        model.setActiveAdapters(null);
        model.deleteAdapter(name);
        model.deleteAdapter(again);
      }
      // PEFT's own LoRA file (no magnitudes) declared as DoRA: refused, naming the missing tensor
      const cfg = { ...readJson(`${PEFT_LORA_DIR}/adapter_config.json`), use_dora: true };
      const files = {
        'adapter_config.json': new TextEncoder().encode(JSON.stringify(cfg)),
        'adapter_model.safetensors': new Uint8Array(readFileSync(`${PEFT_LORA_DIR}/adapter_model.safetensors`)),
      };
      const e = caught(() => model.adapters.loadAdapterFiles(files, { name: 'not-dora' }));
      expect(e).toBeInstanceOf(WeightError);
      expect((e as Error).message).toMatch(/lora_magnitude_vector/);
      expect(model.adapters.hasAdapter('not-dora')).toBe(false);
    });
  });
}

/** x [..., in] · w [in, out] for a rank-3 x. */
function matMul3(x: tf.Tensor, w: tf.Tensor): tf.Tensor {
  return tf.matMul(x.reshape([-1, x.shape[x.rank - 1]]), w).reshape([...x.shape.slice(0, -1), w.shape[1] as number]);
}

/** An exported adapter as the two files PEFT's save_pretrained writes. */
function peftFiles(e: { config: Record<string, unknown>; tensors: Map<string, { shape: number[]; data: Float32Array }> }) {
  return {
    'adapter_config.json': new TextEncoder().encode(JSON.stringify(e.config)),
    'adapter_model.safetensors': writeSafetensors(e.tensors, { format: 'pt' }),
  };
}
