import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import {
  AdapterError,
  AdapterkitError,
  ConfigError,
  ForwardContext,
  ModelMismatchError,
  UnsupportedError,
  normalizeComposition,
  resolveConfig,
  type AdapterConfig,
} from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { BottleneckRuntime } from '../src/index.js';
import { FIXTURE_DIR, baseLogits, loadModel, logits, maxDiff, setVariables, trainStep } from './helpers.js';

const H = 32; // d_model of the fixture
const N = 2; // encoder layers
const M = 2; // decoder layers

/** Presets and bn configs checked for "zero up projection ⇒ base model". */
const IDENTITY_CONFIGS: (string | AdapterConfig)[] = [
  'seq_bn',
  'double_seq_bn',
  'par_bn',
  'scaled_par_bn',
  'pfeiffer',
  'houlsby',
  'seq_bn_inv',
  'double_seq_bn_inv',
  'compacter[reduction_factor=8]',
  'compacter++[reduction_factor=8,factorized_phm_rule=true]',
  'compacter++[reduction_factor=4,shared_phm_rule=false,factorized_phm_W=false,phm_dim=2]',
  'seq_bn[reduction_factor=8,non_linearity=gelu]',
  { method: 'bottleneck', mh_adapter: true, output_adapter: true, cross_adapter: true, reduction_factor: 4, non_linearity: 'tanh' },
  {
    method: 'bottleneck',
    mh_adapter: false,
    output_adapter: true,
    cross_adapter: true,
    reduction_factor: { '2': 4, default: 8 },
    non_linearity: 'leakyrelu',
    ln_before: true,
    use_gating: true,
    init_weights: 'houlsby',
  },
  { method: 'bottleneck', mh_adapter: true, output_adapter: false, reduction_factor: 2, non_linearity: 'sigmoid', scaling: 'channel', leave_out: [0, 3] },
  {
    method: 'bottleneck',
    mh_adapter: true,
    output_adapter: true,
    cross_adapter: true,
    reduction_factor: 16,
    non_linearity: 'swish',
    is_parallel: true,
    ln_after: true,
    use_gating: true,
    scaling: 'learned',
    init_weights: 'bert',
  },
  {
    method: 'bottleneck',
    mh_adapter: true,
    output_adapter: true,
    reduction_factor: 8,
    non_linearity: 'identity',
    original_ln_before: true,
    residual_before_ln: true,
    dropout: 0.1,
  },
];

/**
 * `adapters`' parameter count for a config on this model (methods/modeling.py Adapter): per module
 *   down  = H·d + d            (Linear(H, d))
 *   up    = d·H + H            (Linear(d, H))
 *   + 2H  per LayerNorm        (ln_before, ln_after)
 *   + H+1 for the gate         (use_gating: Linear(H, 1))
 *   + 1 or H                   (scaling "learned" / "channel")
 * with d = floor(H / reduction_factor(layer)), summed over the placements: mh (N + M self-attention layers),
 * cross (M decoder cross-attentions), output (N + M feed-forwards), minus leave_out layers;
 * Compacter (phm_layer, p = phm_dim, k = phm_rank): each projection Linear(i, o) becomes a PHM layer with
 *   W = W_left [p, i/p, k] + W_right [p, k, o/p] (factorized_phm_W) or W [p, i/p, o/p], + o (phm_bias),
 *   + p³ for its own rule (2p² factorized) unless shared_phm_rule, which adds one rule per adapter instead;
 * plus, with inv_adapter "nice", one NICECouplingBlock on the embeddings: halves h1 = h2 = H/2,
 *   F = Linear(h2, k) + Linear(k, h1), G = Linear(h1, k) + Linear(k, h2), k = floor(h/inv_adapter_reduction_factor).
 */
function adaptersParamCount(c: AdapterConfig): number {
  const perModule = (layer: number) => {
    const rf =
      typeof c.reduction_factor === 'number'
        ? c.reduction_factor
        : ((c.reduction_factor as Record<string, number>)[String(layer)] ?? (c.reduction_factor as Record<string, number>).default);
    const d = Math.floor(H / rf);
    let n = H * d + d + d * H + H;
    if (c.phm_layer) {
      const p = c.phm_dim as number;
      const k = c.phm_rank as number;
      const rule = c.factorized_phm_rule ? 2 * p * p : p * p * p;
      const phm = (i: number, o: number) =>
        (c.factorized_phm_W ? p * (i / p) * k + p * k * (o / p) : p * (i / p) * (o / p)) + (c.phm_bias ? o : 0) + (c.shared_phm_rule ? 0 : rule);
      n = phm(H, d) + phm(d, H);
    }
    if (c.ln_before) n += 2 * H;
    if (c.ln_after) n += 2 * H;
    if (c.use_gating) n += H + 1;
    if (c.scaling === 'learned') n += 1;
    if (c.scaling === 'channel') n += H;
    return n;
  };
  const leave = new Set((c.leave_out as number[]) ?? []);
  let total = 0;
  for (let layer = 0; layer < N + M; layer++) {
    if (leave.has(layer)) continue;
    const decoder = layer >= N;
    if (c.mh_adapter) total += perModule(layer);
    if (c.output_adapter) total += perModule(layer);
    if (c.cross_adapter && decoder) total += perModule(layer);
  }
  if (c.phm_layer && c.shared_phm_rule) total += c.factorized_phm_rule ? 2 * (c.phm_dim as number) ** 2 : (c.phm_dim as number) ** 3;
  if (c.inv_adapter === 'nice') {
    const h = H / 2;
    const k = Math.floor(h / (c.inv_adapter_reduction_factor as number));
    total += 2 * (h * k + k + k * h + h);
  }
  return total;
}

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`bottleneck on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let base: Float32Array;
    beforeAll(async () => {
      await initBackend(backend);
      model = await loadModel();
      base = await baseLogits(model);
    });
    afterEach(() => {
      for (const a of model.listAdapters()) model.deleteAdapter(a.name);
      model.setActiveAdapters(null);
    });

    it("presets carry adapters' defaults", () => {
      const seq = resolveConfig('seq_bn');
      expect(seq).toMatchObject({
        method: 'bottleneck',
        original_ln_before: true,
        original_ln_after: true,
        residual_before_ln: true,
        mh_adapter: false,
        output_adapter: true,
        non_linearity: 'relu',
        reduction_factor: 16,
        init_weights: 'bert',
        scaling: 1,
        is_parallel: false,
      });
      expect(resolveConfig('double_seq_bn')).toMatchObject({ original_ln_before: false, mh_adapter: true, output_adapter: true, non_linearity: 'swish', reduction_factor: 16 });
      expect(resolveConfig('par_bn')).toMatchObject({
        is_parallel: true,
        scaling: 4,
        init_weights: 'mam_adapter',
        reduction_factor: 2,
        non_linearity: 'relu',
        output_adapter: true,
        mh_adapter: false,
      });
      expect(resolveConfig('scaled_par_bn')).toMatchObject({ is_parallel: true, scaling: 'learned' });
      expect(resolveConfig('seq_bn_inv')).toEqual({ ...resolveConfig('seq_bn'), inv_adapter: 'nice', inv_adapter_reduction_factor: 2 });
      expect(resolveConfig('double_seq_bn_inv')).toMatchObject({ inv_adapter: 'nice', inv_adapter_reduction_factor: 2, non_linearity: 'swish' });
      expect(resolveConfig('pfeiffer')).toEqual(seq);
      expect(resolveConfig('double_seq_bn[reduction_factor=8]')).toMatchObject({ reduction_factor: 8, non_linearity: 'swish' });
      expect(resolveConfig('bn[mh_adapter=true,output_adapter=false,reduction_factor=4,non_linearity=relu]')).toMatchObject({
        mh_adapter: true,
        output_adapter: false,
        original_ln_before: false,
        original_ln_after: true,
      });
      // A normalised config normalises to itself (what save/load relies on).
      expect(resolveConfig(seq)).toEqual(seq);
    });

    it('bad configs give typed errors naming the option', () => {
      const expectErr = (cfg: string | AdapterConfig, type: new (...args: never[]) => Error, field: string) => {
        let err: unknown;
        try {
          model.addAdapter('bad', cfg);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(type);
        expect((err as Error).message).toContain(field);
        expect(model.listAdapters()).toEqual([]);
      };
      expectErr('bn', ConfigError, 'mh_adapter');
      expectErr({ method: 'bottleneck', mh_adapter: true, output_adapter: true, reduction_factor: 16 }, ConfigError, 'non_linearity');
      expectErr('seq_bn[reduction_facter=8]', ConfigError, 'reduction_facter');
      expectErr('seq_bn[reduction_factor=64]', ConfigError, 'reduction_factor'); // 32 / 64 < 1 unit
      expectErr('seq_bn[reduction_factor=0]', ConfigError, 'reduction_factor');
      expectErr({ ...resolveConfig('seq_bn'), reduction_factor: { '1': 8 } }, ConfigError, 'reduction_factor'); // no default for layer 0
      expectErr({ ...resolveConfig('seq_bn'), ln_before: 'yes' }, ConfigError, 'ln_before');
      expectErr({ ...resolveConfig('seq_bn'), scaling: 'big' }, ConfigError, 'scaling');
      expectErr({ ...resolveConfig('seq_bn'), non_linearity: 'softplus' }, ConfigError, 'non_linearity');
      expectErr({ ...resolveConfig('seq_bn'), init_weights: 'lora' }, ConfigError, 'init_weights');
      expectErr({ ...resolveConfig('seq_bn'), residual_before_ln: 'pre_add' }, ConfigError, 'residual_before_ln');
      expectErr({ ...resolveConfig('seq_bn'), dropout: 1.5 }, ConfigError, 'dropout');
      expectErr({ ...resolveConfig('seq_bn'), leave_out: [7] }, ConfigError, 'leave_out');
      expectErr('seq_bn_inv[inv_adapter=glow]', UnsupportedError, 'inv_adapter');
      expectErr('seq_bn_inv[inv_adapter=real_nvp]', ConfigError, 'inv_adapter');
      expectErr('seq_bn_inv[inv_adapter_reduction_factor=64]', ConfigError, 'inv_adapter_reduction_factor');
      expectErr('compacter', ConfigError, 'phm_dim'); // 32 / 32 = 1 unit is not divisible by phm_dim 4 (adapters asserts too)
      expectErr('compacter[reduction_factor=8,init_weights=mam_adapter]', ConfigError, 'init_weights');
      expectErr('compacter[reduction_factor=8,shared_W_phm=true]', UnsupportedError, 'shared_W_phm');
      expectErr('compacter[reduction_factor=8,phm_c_init=zeros]', ConfigError, 'phm_c_init');
      expectErr('compacter[reduction_factor=8,phm_dim=3]', ConfigError, 'phm_dim');
      model.addAdapter('a', 'seq_bn');
      expect(() => model.addAdapter('a', 'par_bn')).toThrow(AdapterError);
      expect(() => model.setActiveAdapters('nope')).toThrow(AdapterError);
    });

    it("parameter counts equal adapters' formula", () => {
      const configs: (string | AdapterConfig)[] = [
        ...IDENTITY_CONFIGS,
        {
          method: 'bottleneck',
          mh_adapter: true,
          output_adapter: true,
          cross_adapter: true,
          reduction_factor: 4,
          non_linearity: 'relu',
          ln_before: true,
          ln_after: true,
          use_gating: true,
          scaling: 'channel',
        },
      ];
      const known: Record<string, number> = {
        seq_bn: 4 * 162,
        double_seq_bn: 8 * 162,
        par_bn: 4 * 1072,
        scaled_par_bn: 4 * 1073,
        seq_bn_inv: 4 * 162 + 2 * 280,
        'compacter[reduction_factor=8]': 8 * 108 + 64,
      };
      configs.forEach((cfg, i) => {
        model.addAdapter(`p${i}`, cfg);
        const row = model.adapterSummary().find((r) => r.name === `p${i}`)!;
        expect(row.parameters).toBe(adaptersParamCount(resolveConfig(cfg)));
        if (typeof cfg === 'string' && known[cfg] !== undefined) expect(row.parameters).toBe(known[cfg]);
      });
    });

    it('zero up projection leaves logits identical to the base model, for every preset and bn config', async () => {
      for (const [i, cfg] of IDENTITY_CONFIGS.entries()) {
        const name = `z${i}`;
        model.addAdapter(name, cfg);
        // mam_adapter starts with up = 0; for bert/houlsby init zero the up projection by assignment.
        // (and the invertible adapter's output layers F.2 / G.2, which makes the NICE block the identity)
        // (Compacter: the up PHM layer's W_right / W and b)
        setVariables(model, name, /(adapter_up|[FG]\.2)\.(weight|bias|W_right|W|b)$/, 0);
        model.setActiveAdapters(name);
        const d = maxDiff(await logits(model, { training: false }), base);
        expect(d, `config ${JSON.stringify(cfg)}`).toBeLessThanOrEqual(1e-6);
        // ...and a non-zero adapter does change them (so the check above is not vacuous).
        setVariables(model, name, /(adapter_up|[FG]\.2)\.(weight|bias|W_right|W|b)$/, 'random');
        expect(maxDiff(await logits(model), base), `config ${JSON.stringify(cfg)}`).toBeGreaterThan(1e-4);
        model.deleteAdapter(name);
      }
    });

    it('ln_before + mam_adapter init (adapters #745)', async () => {
      model.addAdapter(
        'r',
        { method: 'bottleneck', mh_adapter: true, output_adapter: true, reduction_factor: 4, non_linearity: 'relu', ln_before: true, init_weights: 'mam_adapter' },
        { seed: 3 },
      );
      const vars = model.adapters.adapterVariables('r');
      const key = 'encoder.block.0.layer.1.adapters.output';
      const down = (await vars.get(`${key}.adapter_down.weight`)!.data()) as Float32Array;
      const bound = 1 / Math.sqrt(H); // kaiming_uniform_(a=√5) = U(±1/√fan_in)
      expect(down.length).toBe(H * 8);
      expect(down.every((x) => Math.abs(x) <= bound)).toBe(true);
      expect(new Set(down).size).toBeGreaterThan(H * 8 - 5); // random, not a LayerNorm's ones
      expect(Math.max(...down.map(Math.abs))).toBeGreaterThan(bound * 0.8);
      expect([...((await vars.get(`${key}.adapter_norm_before.weight`)!.data()) as Float32Array)].every((x) => x === 1)).toBe(true);
      expect([...((await vars.get(`${key}.adapter_norm_before.bias`)!.data()) as Float32Array)].every((x) => x === 0)).toBe(true);
      expect([...((await vars.get(`${key}.adapter_up.weight`)!.data()) as Float32Array)].every((x) => x === 0)).toBe(true);
      expect([...((await vars.get(`${key}.adapter_down.bias`)!.data()) as Float32Array)].every((x) => x === 0)).toBe(true);
      model.setActiveAdapters('r');
      expect(maxDiff(await logits(model), base)).toBeLessThanOrEqual(1e-6);
      model.trainAdapter('r');
      const step = await trainStep(model);
      expect(Number.isFinite(step.loss)).toBe(true);
      expect(step.changed).toBeGreaterThan(0);
      expect(maxDiff(await logits(model), base)).toBeGreaterThan(0);
    });

    it('hook output matches hand-computed T5 formulas (seq_bn, par_bn, double_seq_bn, Stack)', async () => {
      const site = model.sublayerSites().find((s) => s.key === 'decoder.block.1.layer.2')!; // an FFN sub-layer
      const mhSite = model.sublayerSites().find((s) => s.key === 'encoder.block.1.layer.0')!; // self-attention
      if (!model.adapters.runtimeFor('bottleneck')) model.addAdapter('tmp', 'seq_bn');
      const rt = model.adapters.runtimeFor('bottleneck');
      expect(rt).toBeInstanceOf(BottleneckRuntime);
      const f = tf.randomNormal([2, 5, H], 0, 1, 'float32', 7);
      const r = tf.randomNormal([2, 5, H], 0, 1, 'float32', 8);
      const hook = (comp: Parameters<typeof normalizeComposition>[0], s = site) => {
        const ctx = new ForwardContext(normalizeComposition(comp));
        const y = rt!.sublayer!(s, f, r, ctx)!;
        ctx.dispose();
        return y;
      };
      const W = (name: string, key: string, p: string) =>
        model.adapters.adapterVariables(name).get(`${key}.adapters.${site.location === 'output' && key === site.key ? 'output' : 'mh'}.${p}`)!;
      const A = (name: string, x: tf.Tensor, act: (t: tf.Tensor) => tf.Tensor, key = site.key) => {
        const down = act(tf.matMul(x.reshape([-1, H]), W(name, key, 'adapter_down.weight')).add(W(name, key, 'adapter_down.bias')));
        return tf
          .matMul(down, W(name, key, 'adapter_up.weight'))
          .add(W(name, key, 'adapter_up.bias'))
          .reshape(x.shape);
      };
      const swish = (t: tf.Tensor) => t.mul(tf.sigmoid(t));

      // seq_bn (Pfeiffer) in T5: y = r + f + up(act(down(f + r)))
      model.addAdapter('seq', 'seq_bn');
      setVariables(model, 'seq', /./, 'random', 11);
      const ySeq = hook('seq');
      const eSeq = r.add(f).add(A('seq', f.add(r), tf.relu));
      expect(maxDiff(await ySeq.data(), await eSeq.data())).toBeLessThan(1e-5);

      // par_bn (He et al.) in T5: y = r + f + 4·up(act(down(r)))
      model.addAdapter('par', 'par_bn');
      setVariables(model, 'par', /./, 'random', 12);
      const yPar = hook('par');
      const ePar = r.add(f).add(A('par', r, tf.relu).mul(4));
      expect(maxDiff(await yPar.data(), await ePar.data())).toBeLessThan(1e-5);

      // double_seq_bn (Houlsby) after self-attention: y = r + f + up(swish(down(f)))
      model.addAdapter('dbl', 'double_seq_bn');
      setVariables(model, 'dbl', /./, 'random', 13);
      const yDbl = hook('dbl', mhSite);
      const eDbl = r.add(f).add(A('dbl', f, swish, mhSite.key));
      expect(maxDiff(await yDbl.data(), await eDbl.data())).toBeLessThan(1e-5);

      // Stack(seq, seq2): each adapter's output is the next one's hidden state, same residual r, last post_forward:
      // h1 = f + A(f + r); h2 = h1 + B(h1 + r); y = h2 + r
      model.addAdapter('seq2', 'seq_bn');
      setVariables(model, 'seq2', /./, 'random', 14);
      const yStack = hook({ type: 'Stack', children: ['seq', 'seq2'] });
      const h1 = f.add(A('seq', f.add(r), tf.relu));
      const eStack = h1.add(A('seq2', h1.add(r), tf.relu)).add(r);
      expect(maxDiff(await yStack.data(), await eStack.data())).toBeLessThan(1e-5);

      // Split over the sequence: positions [0, 2) to seq, [2, 5) to seq2, each as that adapter alone there.
      const ySplit = hook({ type: 'Split', children: ['seq', 'seq2'], splits: [2, 3] });
      const eSplit = tf.concat(
        [
          eSeq.slice([0, 0, 0], [-1, 2, -1]),
          r
            .add(f)
            .add(A('seq2', f.add(r), tf.relu))
            .slice([0, 2, 0], [-1, 3, -1]),
        ],
        1,
      );
      expect(maxDiff(await ySplit.data(), await eSplit.data())).toBeLessThan(1e-5);

      // Gating: output scaled by the mean of sigmoid(gate(x)) — at this decoder site a causal mean (position t
      // averages positions 0..t, so cached decoding can reproduce it), [B, L, 1].
      model.addAdapter('gated', { ...resolveConfig('seq_bn'), use_gating: true, scaling: 'channel' });
      setVariables(model, 'gated', /./, 'random', 15);
      const yG = hook('gated');
      const x = f.add(r);
      const sg = tf.sigmoid(
        tf
          .matMul(x.reshape([-1, H]), W('gated', site.key, 'gate.weight'))
          .add(W('gated', site.key, 'gate.bias'))
          .reshape([2, 5, 1]),
      );
      const g = tf.concat(
        Array.from({ length: 5 }, (_, t) => sg.slice([0, 0, 0], [-1, t + 1, -1]).mean(1, true)),
        1,
      );
      const eG = r.add(f).add(
        A('gated', x, tf.relu)
          .mul(W('gated', site.key, 'scaling'))
          .mul(g),
      );
      expect(maxDiff(await yG.data(), await eG.data())).toBeLessThan(1e-5);

      // Residual policies of pre_forward/post_forward (T5: no original LN), same weights as 'seq':
      //   residual_before_ln false / "post_add": residual = f + r ⇒ y = up(f + r) + (f + r) + r
      //   original_ln_after false: y = up(f + r) + f (no sub-layer residual afterwards)
      const seqCfg = resolveConfig('seq_bn');
      const seqVals = new Map([...model.adapters.adapterVariables('seq')].map(([k, v]) => [k, v]));
      const policy = async (name: string, over: Record<string, unknown>, expected: tf.Tensor) => {
        model.addAdapter(name, { ...seqCfg, ...over });
        for (const [k, v] of model.adapters.adapterVariables(name)) v.assign(seqVals.get(k)!);
        const y = hook(name);
        expect(maxDiff(await y.data(), await expected.data()), name).toBeLessThan(1e-5);
        tf.dispose([y, expected]);
      };
      const upSeq = A('seq', f.add(r), tf.relu);
      await policy('rbl_false', { residual_before_ln: false }, upSeq.add(f).add(r).add(r));
      await policy('post_add', { residual_before_ln: 'post_add' }, upSeq.add(f).add(r).add(r));
      await policy('no_ln_after', { original_ln_after: false }, upSeq.add(f));
      upSeq.dispose();

      // ln_before (real LayerNorm, eps 1e-5) + ln_after with adapter_residual_before_ln = true:
      // y = LN_after(up(act(down(LN_before(x)))) + residual) + r, residual = f, x = f (original_ln_before false)
      model.addAdapter('ln', {
        method: 'bottleneck',
        mh_adapter: false,
        output_adapter: true,
        reduction_factor: 4,
        non_linearity: 'relu',
        ln_before: true,
        ln_after: true,
        adapter_residual_before_ln: true,
      });
      setVariables(model, 'ln', /./, 'random', 16);
      const yLn = hook('ln');
      const ln = (t: tf.Tensor, p: string) => {
        const mean = t.mean(-1, true);
        const variance = t.sub(mean).square().mean(-1, true);
        return t
          .sub(mean)
          .div(variance.add(1e-5).sqrt())
          .mul(W('ln', site.key, `${p}.weight`))
          .add(W('ln', site.key, `${p}.bias`));
      };
      const eLn = ln(A('ln', ln(f, 'adapter_norm_before'), tf.relu, site.key).add(f), 'adapter_norm_after').add(r);
      // A() applied to LN(f) computes up(act(down(LN(f)))) as the adapter does with ln_before inside adapter_down.
      expect(maxDiff(await yLn.data(), await eLn.data())).toBeLessThan(1e-5);
      tf.dispose([f, r, ySeq, eSeq, yPar, ePar, yDbl, eDbl, yStack, h1, eStack, ySplit, eSplit, yG, x, g, eG, yLn, eLn]);
    });

    it('Compacter (PHM layers) forward matches y = r + f + up(gelu(down(f + r))) with explicit Kronecker sums; trains', async () => {
      model.addAdapter('c', 'compacter++[reduction_factor=8]');
      setVariables(model, 'c', /./, 'random', 41);
      const site = model.sublayerSites().find((s) => s.key === 'decoder.block.0.layer.2')!;
      const vars = model.adapters.adapterVariables('c');
      const val = async (k: string) => Array.from((await vars.get(k)!.data()) as Float32Array);
      const p = 4;
      const rule = await val('shared_parameters.phm_rule'); // [p, p, p]
      // Kernel [in, out] = Σᵢ kron(ruleᵢ, W_leftᵢ·W_rightᵢ), built element by element.
      const kernel = async (which: string, inF: number, outF: number) => {
        const a = inF / p;
        const b = outF / p;
        const L = await val(`${site.key}.adapters.output.${which}.W_left`); // [p, a, 1]
        const R = await val(`${site.key}.adapters.output.${which}.W_right`); // [p, 1, b]
        const K = new Float32Array(inF * outF);
        for (let i = 0; i < p; i++)
          for (let r = 0; r < p; r++)
            for (let c = 0; c < p; c++)
              for (let s = 0; s < a; s++) for (let t = 0; t < b; t++) K[(r * a + s) * outF + c * b + t] += rule[i * p * p + r * p + c] * L[i * a + s] * R[i * b + t];
        return tf.tensor2d(K, [inF, outF]);
      };
      const d = H / 8;
      const Kd = await kernel('adapter_down', H, d);
      const Ku = await kernel('adapter_up', d, H);
      const bd = vars.get(`${site.key}.adapters.output.adapter_down.b`)!;
      const bu = vars.get(`${site.key}.adapters.output.adapter_up.b`)!;
      const f = tf.randomNormal([2, 3, H], 0, 1, 'float32', 5);
      const r = tf.randomNormal([2, 3, H], 0, 1, 'float32', 6);
      const ctx = new ForwardContext(normalizeComposition('c'));
      const y = model.adapters.runtimeFor('bottleneck')!.sublayer!(site, f, r, ctx)!;
      ctx.dispose();
      const gelu = (t: tf.Tensor) => t.mul(0.5).mul(tf.erf(t.mul(Math.SQRT1_2)).add(1));
      const x = f.add(r).reshape([-1, H]);
      const e = r.add(f).add(
        tf
          .matMul(gelu(tf.matMul(x, Kd).add(bd)), Ku)
          .add(bu)
          .reshape([2, 3, H]),
      );
      expect(maxDiff(await y.data(), await e.data())).toBeLessThan(1e-5);
      tf.dispose([Kd, Ku, f, r, y, x, e]);
      model.setActiveAdapters('c');
      model.trainAdapter('c');
      const ruleBefore = rule;
      const step = await trainStep(model);
      expect(Number.isFinite(step.loss)).toBe(true);
      expect(step.changed).toBe(step.total); // every PHM parameter (the shared rule included) gets a gradient
      expect(await val('shared_parameters.phm_rule')).not.toEqual(ruleBefore);
    });

    it('invertible adapter (NICE): forward as adapters computes it, reverse inverts it', async () => {
      model.addAdapter('inv', 'seq_bn_inv');
      setVariables(model, 'inv', /invertible/, 'random', 31);
      const rt = model.adapters.runtimeFor('bottleneck')!;
      const ctx = new ForwardContext(normalizeComposition('inv'));
      const x = tf.randomNormal([2, 5, H], 0, 1, 'float32', 9);
      const y = rt.embeddings!('encoder', x, ctx, false)!;
      const back = rt.embeddings!('decoder', y, ctx, true)!;
      expect(rt.embeddings!('decoder', x, ctx, false)).toBeUndefined(); // decoder input embeddings stay as they are
      ctx.dispose();
      const v = (k: string) => model.adapters.adapterVariables('inv').get(`encoder.invertible_adapters.${k}`)!;
      const sub = (p: string, t: tf.Tensor) => {
        const hdn = tf.relu(tf.matMul(t.reshape([-1, t.shape[2]!]), v(`${p}.0.weight`)).add(v(`${p}.0.bias`))); // t is 3-D: shape[2] is defined
        return tf
          .matMul(hdn, v(`${p}.2.weight`))
          .add(v(`${p}.2.bias`))
          .reshape([2, 5, -1]);
      };
      const x1 = x.slice([0, 0, 0], [-1, -1, H / 2]);
      const x2 = x.slice([0, 0, H / 2], [-1, -1, -1]);
      const y1 = x1.add(sub('F', x2));
      const expected = tf.concat([y1, x2.add(sub('G', y1))], -1);
      expect(maxDiff(await y.data(), await expected.data())).toBeLessThan(1e-5);
      expect(maxDiff(await back.data(), await x.data())).toBeLessThan(1e-5);
      expect(maxDiff(await y.data(), await x.data())).toBeGreaterThan(1e-3);
      tf.dispose([x, y, back, x1, x2, y1, expected]);
    });

    it('save → load round trip gives identical logits; bad files and other shapes give typed errors', async () => {
      model.addAdapter('s', { ...resolveConfig('double_seq_bn_inv'), cross_adapter: true, ln_after: true, scaling: 'learned', use_gating: true });
      setVariables(model, 's', /./, 'random', 21);
      model.setActiveAdapters('s');
      const before = await logits(model);
      const dir = mkdtempSync(join(tmpdir(), 'bn-'));
      await model.saveAdapter(dir, 's');
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(cfg.config.method).toBe('bottleneck');
      model.deleteAdapter('s');
      const name = await model.loadAdapter(dir);
      expect(name).toBe('s');
      model.setActiveAdapters('s');
      expect(maxDiff(await logits(model), before)).toBe(0);

      // Corrupted weights file.
      const bad = mkdtempSync(join(tmpdir(), 'bn-bad-'));
      writeFileSync(join(bad, 'adapter_config.json'), readFileSync(join(dir, 'adapter_config.json')));
      const bytes = readFileSync(join(dir, 'adapter_model.safetensors'));
      writeFileSync(join(bad, 'adapter_model.safetensors'), bytes.subarray(0, bytes.length - 100));
      await expect(model.loadAdapter(bad, { name: 'b1' })).rejects.toBeInstanceOf(AdapterkitError);
      writeFileSync(join(bad, 'adapter_model.safetensors'), Buffer.from('not a safetensors file at all'));
      await expect(model.loadAdapter(bad, { name: 'b2' })).rejects.toBeInstanceOf(AdapterkitError);
      expect(model.listAdapters().map((a) => a.name)).toEqual(['s']);

      // An adapter made for another d_model.
      const raw = JSON.parse(readFileSync(join(FIXTURE_DIR, 'config.json'), 'utf8'));
      const other = T5ForConditionalGeneration.random({ ...raw, d_model: 16 }, 1);
      try {
        await expect(other.loadAdapter(dir)).rejects.toBeInstanceOf(ModelMismatchError);
        await expect(other.loadAdapter(dir)).rejects.toThrow(/d_model/);
      } finally {
        other.dispose?.();
      }
    });
  });
}
