/**
 * AdapterHub `adapters` format for bottleneck adapters (adapter_config.json + adapter.safetensors, keys
 * `<sub-layer>.adapters.<name>.adapter_down.<i>|adapter_up|adapter_norm_*|gate|scaling`). No file here was
 * written by `adapters` itself (no PyTorch in this environment, no such fixture in the repository): these are
 * round trips through adapterkit's writer, key names and layouts read from `adapters`' sources
 * (methods/modeling.py Adapter, methods/bottleneck.py BottleneckLayer, models/t5/mixin_t5.py).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend, tf, type Variable } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { ConfigError, Fuse, readSafetensors, readTorchCheckpoint, UnsupportedError, WeightError, writeSafetensors, type AdapterConfig } from '@adapterkit/core';
import { addAdapterFusion, adapterFusionVariables, bottleneckMethod, deleteAdapterFusion, FUSION_PRESETS, loadAdapterFusion, saveAdapterFusion } from '../src/index.js';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, loadModel, logits, maxDiff } from './helpers.js';

/** A safetensors file's tensors as float32 (what adapter files hold). */
const readFloats = (path: string) => ({
  tensors: new Map([...readSafetensors(readFileSync(path)).tensors].map(([k, t]) => [k, { shape: t.shape, data: Float32Array.from(t.data) }])),
});

const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-bn-adapters-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterHub adapters format (bottleneck) on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await loadModel();
    });
    afterAll(() => model.dispose());

    const H = () => model.dims.dModel;
    const values = async (name: string) =>
      new Map(await Promise.all([...model.adapters.adapterVariables(name)].map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)));
    /** Adds, saves in `adapters` format, loads back: config equal, values bit-exact, logits equal. Returns the file's tensors and config. */
    const roundTrip = async (name: string, config: string | AdapterConfig) => {
      model.addAdapter(name, config, { seed: 7 });
      // make every parameter non-trivial (bert init leaves LayerNorms at 1/0 and may zero the up-projection)
      for (const v of model.adapters.adapterVariables(name).values()) v.assign(v.add(0.01).mul(1.5));
      const dir = join(tmp, name);
      await model.saveAdapter(dir, name, { format: 'adapters' });
      const loaded = await model.loadAdapter(dir, { name: `${name}2` });
      expect(model.adapters.adapterConfig(loaded)).toEqual(model.adapters.adapterConfig(name));
      const [a, b] = [await values(name), await values(loaded)];
      for (const [k, v] of a) expect(b.get(k), k).toEqual(v);
      expect(maxDiff(await logits(model, { composition: name }), await logits(model, { composition: loaded }))).toBe(0);
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      const { tensors } = readFloats(join(dir, 'adapter.safetensors'));
      model.deleteAdapter(name);
      model.deleteAdapter(loaded);
      return { cfg, tensors };
    };

    it("seq_bn: BnConfig fields with architecture null; adapter_down.0 [down, H], adapter_up [H, down] under the FF sub-layer's adapters.<name>", async () => {
      const { cfg, tensors } = await roundTrip('sb', 'seq_bn');
      const H = model.dims.dModel;
      expect(cfg.config).toMatchObject({ architecture: null, mh_adapter: false, output_adapter: true, reduction_factor: 16, non_linearity: 'relu', original_ln_before: true });
      expect(cfg.config.method).toBeUndefined();
      expect(cfg.name).toBe('sb');
      expect(tensors.get('encoder.block.0.layer.1.adapters.sb.adapter_down.0.weight')!.shape).toEqual([H / 16, H]);
      expect(tensors.get('encoder.block.0.layer.1.adapters.sb.adapter_up.weight')!.shape).toEqual([H, H / 16]);
      expect(tensors.has('decoder.block.1.layer.2.adapters.sb.adapter_up.bias')).toBe(true);
      expect([...tensors.keys()].every((k) => /\.layer\.(1|2)\.adapters\.sb\./.test(k))).toBe(true);
    });

    it('ln_before (LayerNorm named twice, Linear at adapter_down.1), ln_after, gating, learned scaling, mh/cross/output: round trip bit-exact', async () => {
      const { tensors } = await roundTrip('full', {
        method: 'bottleneck',
        mh_adapter: true,
        cross_adapter: true,
        output_adapter: true,
        reduction_factor: 4,
        non_linearity: 'gelu',
        ln_before: true,
        ln_after: true,
        use_gating: true,
        scaling: 'learned',
        leave_out: [0],
      });
      const at = 'decoder.block.0.layer.1.adapters.full';
      for (const k of [
        'adapter_norm_before.weight',
        'adapter_down.0.weight',
        'adapter_down.1.weight',
        'adapter_up.bias',
        'adapter_norm_after.bias',
        'gate.weight',
        'gate.bias',
        'scaling',
      ])
        expect(tensors.has(`${at}.${k}`), k).toBe(true);
      expect(tensors.get(`${at}.adapter_down.0.weight`)!.data).toEqual(tensors.get(`${at}.adapter_norm_before.weight`)!.data);
      expect(tensors.get(`${at}.gate.weight`)!.shape).toEqual([1, model.dims.dModel]);
      expect([...tensors.keys()].some((k) => k.startsWith('encoder.block.0.'))).toBe(false); // leave_out
    });

    it('par_bn (ParallelAdapter, same parameter names) round trips', async () => {
      const { cfg } = await roundTrip('pb', 'par_bn');
      expect(cfg.config.is_parallel).toBe(true);
    });

    // PHMLayer (methods/modeling.py): `self.W_left = nn.Parameter(torch.Tensor(size=(self.phm_dim, self._in_feats_per_axis, self.phm_rank)))`,
    // `self.W_right = … (self.phm_dim, self.phm_rank, self._out_feats_per_axis)`, `self.b = nn.Parameter(torch.Tensor(out_features))`;
    // Adapter: `seq_list.append(PHMLayer(adapter_name, self.input_size, self.down_sample, "down", config))` inside
    // `self.adapter_down = nn.Sequential(*seq_list)`, `self.adapter_up = PHMLayer(…, "up", config)`;
    // init_shared_parameters: `parameters["phm_rule"] = phm_rule` (torch.FloatTensor(phm_dim, phm_dim, phm_dim)),
    // kept in `self.base_model.shared_parameters[adapter_name]` (model_mixin.py).
    it('Compacter (factorized W, shared rule): adapter_down.0.W_left/W_right/b, adapter_up.*, shared_parameters.<name>.phm_rule; round trip bit-exact', async () => {
      const { cfg, tensors } = await roundTrip('c', 'compacter[reduction_factor=4]');
      const H = model.dims.dModel;
      const p = 4;
      const down = H / 4;
      expect(cfg.config).toMatchObject({ architecture: null, phm_layer: true, phm_dim: p, factorized_phm_W: true, shared_phm_rule: true, phm_rank: 1 });
      const at = 'decoder.block.1.layer.0.adapters.c'; // double_seq_bn: mh adapter too
      expect(tensors.get(`${at}.adapter_down.0.W_left`)!.shape).toEqual([p, H / p, 1]);
      expect(tensors.get(`${at}.adapter_down.0.W_right`)!.shape).toEqual([p, 1, down / p]);
      expect(tensors.get(`${at}.adapter_down.0.b`)!.shape).toEqual([down]);
      expect(tensors.get(`${at}.adapter_up.W_left`)!.shape).toEqual([p, down / p, 1]);
      expect(tensors.get(`${at}.adapter_up.b`)!.shape).toEqual([H]);
      expect(tensors.get('shared_parameters.c.phm_rule')!.shape).toEqual([p, p, p]);
      expect([...tensors.keys()].some((k) => k.includes('phm_rule') && k !== 'shared_parameters.c.phm_rule')).toBe(false);
    });

    // PHMLayer without a shared rule: `self.phm_rule_left = nn.Parameter(torch.FloatTensor(self.phm_dim, self.phm_dim, 1))`,
    // `self.phm_rule_right = … (self.phm_dim, 1, self.phm_dim)`; unfactorized `self.W = … (self.phm_dim, self._in_feats_per_axis, self._out_feats_per_axis)`.
    it('Compacter per-layer factorized rule, plain W, no bias, ln_before (PHMLayer at adapter_down.1): round trip bit-exact', async () => {
      const { tensors } = await roundTrip('c2', {
        ...{ method: 'bottleneck', mh_adapter: false, output_adapter: true, reduction_factor: 2, non_linearity: 'gelu', ln_before: true },
        ...{ phm_layer: true, phm_dim: 2, factorized_phm_W: false, shared_phm_rule: false, factorized_phm_rule: true, phm_bias: false },
      });
      const H = model.dims.dModel;
      const at = 'encoder.block.0.layer.1.adapters.c2';
      expect(tensors.get(`${at}.adapter_down.1.W`)!.shape).toEqual([2, H / 2, H / 4]);
      expect(tensors.get(`${at}.adapter_down.1.phm_rule_left`)!.shape).toEqual([2, 2, 1]);
      expect(tensors.get(`${at}.adapter_up.phm_rule_right`)!.shape).toEqual([2, 1, 2]);
      expect(tensors.has(`${at}.adapter_down.0.weight`)).toBe(true); // the LayerNorm, named twice
      expect([...tensors.keys()].some((k) => k.startsWith('shared_parameters.') || k.endsWith('.b'))).toBe(false);
    });

    it('shared_parameters under transformer. (a T5AdapterModel file) load; a file without them (adapters leaves top-level shared_parameters out) is a WeightError naming the key', async () => {
      model.addAdapter('cs', 'compacter++[reduction_factor=4]', { seed: 3 });
      for (const v of model.adapters.adapterVariables('cs').values()) v.assign(v.add(0.02));
      const dir = join(tmp, 'cs');
      await model.saveAdapter(dir, 'cs', { format: 'adapters' });
      const { tensors } = readFloats(join(dir, 'adapter.safetensors'));
      writeFileSync(join(dir, 'adapter.safetensors'), writeSafetensors(new Map([...tensors].map(([k, t]) => [`transformer.${k}`, t])), { format: 'pt' }));
      const loaded = await model.loadAdapter(dir, { name: 'cs2' });
      expect(maxDiff(await logits(model, { composition: 'cs' }), await logits(model, { composition: loaded }))).toBe(0);
      model.deleteAdapter(loaded);
      // BertAdapterLoader.filter_func: `or ".shared_parameters.{}.".format(adapter_name) in x` — needs a dot before it
      tensors.delete('shared_parameters.cs.phm_rule');
      writeFileSync(join(dir, 'adapter.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
      await expect(model.loadAdapter(dir, { name: 'cs3' })).rejects.toThrow(WeightError);
      await expect(model.loadAdapter(dir, { name: 'cs3' })).rejects.toThrow(/shared_parameters\.cs\.phm_rule/);
      expect(model.adapters.hasAdapter('cs3')).toBe(false);
      model.deleteAdapter('cs');
    });

    // NICECouplingBlock: `self.F = subnet_constructor(self.split_len2 + condition_length, self.split_len1)`, subnet =
    // `nn.Sequential(nn.Linear(dims_in, int(dims_in // reduction_factor)), Activation_Function_Class(non_linearity), nn.Linear(…, dims_out))`;
    // T5StackAdaptersMixin: `if not self.is_decoder: InvertibleAdaptersMixin.init_adapters(…)` (self.invertible_adapters = nn.ModuleDict).
    it('invertible adapter (nice): encoder.invertible_adapters.<name>.{F,G}.{0,2}.{weight,bias}, PyTorch layout; round trip bit-exact', async () => {
      const { cfg, tensors } = await roundTrip('inv', 'double_seq_bn_inv[reduction_factor=8]');
      const H = model.dims.dModel;
      expect(cfg.config).toMatchObject({ inv_adapter: 'nice', inv_adapter_reduction_factor: 2 });
      const at = 'encoder.invertible_adapters.inv';
      expect(tensors.get(`${at}.F.0.weight`)!.shape).toEqual([H / 4, H / 2]);
      expect(tensors.get(`${at}.F.2.weight`)!.shape).toEqual([H / 2, H / 4]);
      expect(tensors.get(`${at}.G.0.bias`)!.shape).toEqual([H / 4]);
      expect([...tensors.keys()].filter((k) => k.startsWith(at)).length).toBe(8);
    });

    it("options adapterkit does not implement are refused by name when an adapters file has them (inv_adapter 'glow', shared_W_phm)", async () => {
      model.addAdapter('g', 'seq_bn_inv');
      const dir = join(tmp, 'g');
      await model.saveAdapter(dir, 'g', { format: 'adapters' });
      model.deleteAdapter('g');
      const cfgPath = join(dir, 'adapter_config.json');
      const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
      writeFileSync(cfgPath, JSON.stringify({ ...cfg, config: { ...cfg.config, inv_adapter: 'glow' } }));
      await expect(model.loadAdapter(dir)).rejects.toThrow(UnsupportedError);
      await expect(model.loadAdapter(dir)).rejects.toThrow(/inv_adapter/);
      writeFileSync(cfgPath, JSON.stringify({ ...cfg, config: { ...cfg.config, phm_layer: true, shared_W_phm: true } }));
      await expect(model.loadAdapter(dir)).rejects.toThrow(/shared_W_phm/);
      expect(model.adapters.hasAdapter('g')).toBe(false);
    });

    // AdapterFusionLoader: `filter_func = lambda x: "adapter_fusion_layer.{}".format(adapter_fusion_name) in x`; save:
    // `build_full_config(adapter_fusion_config, self.model.config, name=name, adapter_names=adapter_names, …)`;
    // utils.py: `SAFE_ADAPTERFUSION_WEIGHTS_NAME = "model_adapter_fusion.safetensors"`; BottleneckLayer.add_fusion_layer:
    // `self.adapter_fusion_layer[fusion_name] = fusion`; BertFusion: `self.value = nn.Linear(self.dense_size, self.dense_size, bias=False)`.
    describe('AdapterFusion in the adapters format', () => {
      const randomize = (vars: Map<string, Variable>, seed: number) => {
        for (const [k, v] of vars) {
          const t = tf.randomNormal(v.shape, 0, 0.2, 'float32', seed + k.length);
          v.assign(t);
          t.dispose();
        }
      };
      const fusionValues = async (name: string) =>
        new Map(await Promise.all([...adapterFusionVariables(model, name)].map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)));
      const cleanUp = () => {
        model.setActiveAdapters(null);
        for (const a of model.listAdapters()) model.deleteAdapter(a.name); // drops their fusions too
      };

      it('adapters → files → adapters: Fuse logits equal, weights bit-exact, keys and config as AdapterFusionLoader writes them', async () => {
        model.addAdapter('fa', 'seq_bn[reduction_factor=4]', { seed: 1 });
        model.addAdapter('fb', 'seq_bn[reduction_factor=8,leave_out=[1]]', { seed: 2 });
        for (const n of ['fa', 'fb']) randomize(model.adapters.adapterVariables(n), n.length * 7 + (n === 'fa' ? 0 : 1));
        addAdapterFusion(model, Fuse('fa', 'fb'), 'dynamic', { seed: 5 });
        randomize(adapterFusionVariables(model, 'fa,fb'), 11);
        const before = await logits(model, { composition: Fuse('fa', 'fb') });
        const values = await fusionValues('fa,fb');
        const dir = join(tmp, 'fusion');
        for (const n of ['fa', 'fb']) await model.saveAdapter(join(dir, n), n, { format: 'adapters' });
        await saveAdapterFusion(model, join(dir, 'fusion'), Fuse('fa', 'fb'), { format: 'adapters' });
        const cfg = JSON.parse(readFileSync(join(dir, 'fusion', 'adapter_fusion_config.json'), 'utf8'));
        expect(cfg).toMatchObject({ name: 'fa,fb', adapter_names: ['fa', 'fb'], model_type: 't5', hidden_size: H(), model_class: 'T5ForConditionalGeneration' });
        expect(cfg.config).toEqual({ architecture: null, ...FUSION_PRESETS.dynamic });
        expect(cfg.version).toMatch(/^adapters\./);
        const { tensors } = readFloats(join(dir, 'fusion', 'model_adapter_fusion.safetensors'));
        const q = 'encoder.block.0.layer.1.adapter_fusion_layer.fa,fb.query.weight';
        expect(tensors.get(q)!.shape).toEqual([H(), H()]);
        // PyTorch [out, in]: the transpose of our [in, out] kernel
        expect(tensors.get(q)!.data[1]).toBe(values.get(q)![H()]);
        expect(tensors.has('encoder.block.0.layer.1.adapter_fusion_layer.fa,fb.value.weight')).toBe(true);
        expect(tensors.has('encoder.block.0.layer.1.adapter_fusion_layer.fa,fb.value.bias')).toBe(false);
        expect(tensors.size).toBe(4 * 5);
        cleanUp();
        for (const n of ['fa', 'fb']) await model.loadAdapter(join(dir, n));
        expect(await loadAdapterFusion(model, join(dir, 'fusion'))).toBe('fa,fb');
        const after = await fusionValues('fa,fb');
        for (const [k, v] of values) expect(after.get(k), k).toEqual(v);
        expect(maxDiff(await logits(model, { composition: Fuse('fa', 'fb') }), before)).toBe(0);
        // save_adapter_fusion's default serialization: pytorch_model_adapter_fusion.bin (torch.save), read back
        // by the torch reader; the re-save leaves one weights file, so no stale safetensors is preferred
        await saveAdapterFusion(model, join(dir, 'fusion'), 'fa,fb', { format: 'adapters', safeSerialization: false });
        expect(readdirSync(join(dir, 'fusion')).sort()).toEqual(['adapter_fusion_config.json', 'pytorch_model_adapter_fusion.bin']);
        const bin = readTorchCheckpoint(new Uint8Array(readFileSync(join(dir, 'fusion', 'pytorch_model_adapter_fusion.bin'))), 'bin').tensors;
        expect(bin.get(q)!.data).toEqual(tensors.get(q)!.data);
        deleteAdapterFusion(model, 'fa,fb');
        expect(await loadAdapterFusion(model, join(dir, 'fusion'))).toBe('fa,fb');
        for (const [k, v] of values) expect((await fusionValues('fa,fb')).get(k), k).toEqual(v);
        await expect(saveAdapterFusion(model, join(tmp, 'fusion-own'), 'fa,fb', { safeSerialization: false })).rejects.toThrow(/safeSerialization/);
        cleanUp();
      });

      it('a fusion layer adapters keeps at a left-out layer is skipped; a stray key, a static config, a custom name, a model with heads', async () => {
        model.addAdapter('ga', 'seq_bn[reduction_factor=4,leave_out=[0]]', { seed: 1 });
        model.addAdapter('gb', 'seq_bn[reduction_factor=4,leave_out=[0]]', { seed: 2 });
        addAdapterFusion(model, Fuse('ga', 'gb', { name: 'mix' }), 'static', { seed: 3 });
        randomize(adapterFusionVariables(model, 'mix'), 4);
        const before = await logits(model, { composition: Fuse('ga', 'gb', { name: 'mix' }) });
        const dir = join(tmp, 'fusion-mix');
        await saveAdapterFusion(model, dir, 'mix', { format: 'adapters' });
        expect(JSON.parse(readFileSync(join(dir, 'adapter_fusion_config.json'), 'utf8'))).toMatchObject({ name: 'mix', adapter_names: ['ga', 'gb'] });
        const file = join(dir, 'model_adapter_fusion.safetensors');
        const { tensors } = readFloats(file);
        // `adapters` also has a fusion layer at left-out layer 0 (common_config_value ignores leave_out)
        const extra = new Map(tensors);
        for (const p of ['query.weight', 'query.bias', 'key.weight', 'key.bias'])
          extra.set(`encoder.block.0.layer.1.adapter_fusion_layer.mix.${p}`, tensors.get(`encoder.block.1.layer.1.adapter_fusion_layer.mix.${p}`)!);
        writeFileSync(file, writeSafetensors(new Map([...extra].map(([k, t]) => [`transformer.${k}`, t])), { format: 'pt' }));
        deleteAdapterFusion(model, 'mix');
        expect(await loadAdapterFusion(model, dir)).toBe('mix');
        expect(adapterFusionVariables(model, 'mix').size).toBe(3 * 4); // static: no value matrix
        expect(maxDiff(await logits(model, { composition: Fuse('ga', 'gb', { name: 'mix' }) }), before)).toBe(0);
        deleteAdapterFusion(model, 'mix');
        extra.set('encoder.block.0.layer.0.adapter_fusion_layer.mix.query.bias', tensors.get('encoder.block.1.layer.1.adapter_fusion_layer.mix.query.bias')!);
        writeFileSync(file, writeSafetensors(extra, { format: 'pt' }));
        await expect(loadAdapterFusion(model, dir)).rejects.toThrow(WeightError);
        expect(model.adapters.runtimeOf(bottleneckMethod).fusion('mix')).toBeUndefined();
        cleanUp();
      });

      it("pytorch_model_adapter_fusion.bin (adapters' default) is read by the safe torch.save reader, keys checked as for safetensors", async () => {
        model.addAdapter('ta', 'seq_bn[reduction_factor=4]');
        addAdapterFusion(model, Fuse('ta'), 'static');
        const dir = join(tmp, 'fusion-bin');
        await saveAdapterFusion(model, dir, 'ta', { format: 'adapters' });
        rmSync(join(dir, 'model_adapter_fusion.safetensors'));
        // a file torch.save really wrote (PEFT LoRA weights, see its README): read, then refused for its keys
        copyFileSync(join(FIXTURE_DIR, 'peft-lora-bin', 'adapter_model.bin'), join(dir, 'pytorch_model_adapter_fusion.bin'));
        deleteAdapterFusion(model, 'ta');
        await expect(loadAdapterFusion(model, dir)).rejects.toThrow(WeightError);
        await expect(loadAdapterFusion(model, dir)).rejects.toThrow(/lora_A/);
        cleanUp();
      });

      it('fusions adapters cannot hold are refused by name; unknown save options are ConfigErrors', async () => {
        model.addAdapter('ha', 'seq_bn[reduction_factor=4]');
        model.addAdapter('hb', 'double_seq_bn[reduction_factor=4]');
        addAdapterFusion(model, Fuse('ha', 'hb'));
        await expect(saveAdapterFusion(model, join(tmp, 'h'), 'ha,hb', { format: 'adapters' })).rejects.toThrow(UnsupportedError);
        await expect(saveAdapterFusion(model, join(tmp, 'h'), 'ha,hb', { format: 'adapters' })).rejects.toThrow(/mh_adapter/);
        await expect(saveAdapterFusion(model, join(tmp, 'h'), 'ha,hb', { fromat: 'adapters' } as never)).rejects.toThrow(ConfigError);
        await expect(saveAdapterFusion(model, join(tmp, 'h'), 'ha,hb', { format: 'peft' as never })).rejects.toThrow(ConfigError);
        cleanUp();
      });
    });
  });
}
