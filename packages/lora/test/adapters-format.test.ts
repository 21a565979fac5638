/**
 * AdapterHub `adapters` format (adapter_config.json with config/name/model_type/version + adapter.safetensors,
 * keys `<linear>.loras.<name>.lora_A|lora_B|gate.*`). No file here was written by `adapters` itself (no
 * PyTorch in this environment and no such fixture in the repository): these are round trips through
 * adapterkit's writer, with the key names and layouts taken from `adapters`' sources (methods/lora.py,
 * loading.py, models/t5/mixin_t5.py), not interop checks against `adapters`' numbers.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { ConfigError, UnsupportedError, WeightError, readSafetensors, readTorchCheckpoint, writeSafetensors, type AdapterFiles } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, PEFT_LORA_DIR, logitsOf, maxDiff } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-adapters-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterHub adapters format (LoRA, IA3) on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());

    const read = (dir: string): AdapterFiles => ({
      'adapter_config.json': readFileSync(join(dir, 'adapter_config.json')),
      'adapter.safetensors': readFileSync(join(dir, 'adapter.safetensors')),
    });
    const values = async (name: string) =>
      new Map(await Promise.all([...model.adapters.adapterVariables(name)].map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)));
    /** Saves `name` in `adapters` format, loads it back as `name`2, and checks values (bit-exact) and logits. */
    const roundTrip = async (name: string, safeSerialization = true) => {
      const dir = join(tmp, name);
      await model.saveAdapter(dir, name, { format: 'adapters', safeSerialization });
      const loaded = await model.loadAdapter(dir, { name: `${name}2` });
      expect(model.adapters.adapterConfig(loaded)).toEqual(model.adapters.adapterConfig(name));
      const [a, b] = [await values(name), await values(loaded)];
      expect([...b.keys()]).toEqual([...a.keys()]);
      for (const [k, v] of a) expect(b.get(k), k).toEqual(v);
      const [la, lb] = [await logitsOf(model, undefined, { composition: name }), await logitsOf(model, undefined, { composition: loaded })];
      expect(maxDiff(la.data, lb.data)).toBe(0);
      return dir;
    };

    it("LoRA (gated, every placement): adapter_config.json as adapters' build_full_config, keys and shapes as LoRALinear's, round trip bit-exact", async () => {
      model.addAdapter('la', 'lora[r=4,alpha=8,init_weights=bert,intermediate_lora=true,output_lora=true,use_gating=true,leave_out=[1]]', { seed: 3 });
      const dir = await roundTrip('la');
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(cfg).toMatchObject({ name: 'la', model_type: 't5', hidden_size: model.dims.dModel, model_class: 'T5ForConditionalGeneration', version: 'adapters.1.2.0' });
      expect(cfg.config).toMatchObject({ architecture: 'lora', r: 4, alpha: 8, selfattn_lora: true, intermediate_lora: true, output_lora: true, use_gating: true, leave_out: [1] });
      expect(Object.keys(cfg.config).sort()).toEqual(
        [
          'architecture',
          'selfattn_lora',
          'intermediate_lora',
          'output_lora',
          'leave_out',
          'r',
          'alpha',
          'dropout',
          'attn_matrices',
          'composition_mode',
          'init_weights',
          'init_weights_seed',
          'use_gating',
          'use_dora',
          'vera_d',
          'vera_b',
          'dtype',
        ].sort(),
      );
      const { tensors } = readSafetensors(readFileSync(join(dir, 'adapter.safetensors')));
      const d = model.dims;
      expect(tensors.get('encoder.block.0.layer.0.SelfAttention.q.loras.la.lora_A')!.shape).toEqual([4, d.dModel]);
      expect(tensors.get('encoder.block.0.layer.0.SelfAttention.q.loras.la.lora_B')!.shape).toEqual([d.numHeads * d.dKv, 4]);
      expect(tensors.get('decoder.block.0.layer.1.EncDecAttention.v.loras.la.gate.weight')!.shape).toEqual([1, d.dModel]);
      expect(tensors.get('decoder.block.0.layer.1.EncDecAttention.v.loras.la.gate.bias')!.shape).toEqual([1]);
      expect(tensors.has('decoder.block.0.layer.2.DenseReluDense.wo.loras.la.lora_A')).toBe(true);
      expect([...tensors.keys()].some((k) => k.startsWith('encoder.block.1.'))).toBe(false); // leave_out
      expect([...tensors.keys()].every((k) => k.includes('.loras.la.'))).toBe(true);
      model.deleteAdapter('la');
      model.deleteAdapter('la2');
    });

    it('IA3 (composition_mode scale): lora_B [out, 1] per linear, round trip bit-exact', async () => {
      model.addAdapter('ia', 'ia3[init_weights=bert]', { seed: 4 });
      const dir = await roundTrip('ia');
      const { tensors } = readSafetensors(readFileSync(join(dir, 'adapter.safetensors')));
      expect(tensors.get('encoder.block.0.layer.0.SelfAttention.k.loras.ia.lora_B')!.shape).toEqual([model.dims.numHeads * model.dims.dKv, 1]);
      expect([...tensors.keys()].every((k) => k.endsWith('.lora_B'))).toBe(true);
      model.deleteAdapter('ia');
      model.deleteAdapter('ia2');
    });

    it("safeSerialization: false writes pytorch_adapter.bin (adapters' use_safetensors=False): torch.save archive 'pytorch_adapter', the same tensors, round trip bit-exact; one weights file after re-saves", async () => {
      model.addAdapter('lb', 'lora[r=2,init_weights=bert,use_gating=true]', { seed: 6 });
      const dir = await roundTrip('lb', false);
      expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'pytorch_adapter.bin']);
      const bin = readFileSync(join(dir, 'pytorch_adapter.bin'));
      expect(bin.subarray(30, 30 + 'pytorch_adapter/data.pkl'.length).toString()).toBe('pytorch_adapter/data.pkl');
      const fromBin = readTorchCheckpoint(new Uint8Array(bin)).tensors;
      const safe = (await model.adapters.serializeAdapterAsync('lb', { format: 'adapters' }))['adapter.safetensors'];
      const fromSafe = readSafetensors(safe).tensors;
      expect([...fromBin.keys()].sort()).toEqual([...fromSafe.keys()].sort());
      for (const [k, t] of fromSafe) expect(Array.from(fromBin.get(k)!.data), k).toEqual(Array.from(t.data));
      await model.saveAdapter(dir, 'lb', { format: 'adapters' });
      expect(readdirSync(dir).sort()).toEqual(['adapter.safetensors', 'adapter_config.json']);
      await model.saveAdapter(dir, 'lb', { format: 'adapters', safeSerialization: false });
      expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'pytorch_adapter.bin']);
      model.deleteAdapter('lb');
      model.deleteAdapter('lb2');
    });

    it("keys under the model-with-heads prefix ('transformer.') load the same; another saved name is renamed", async () => {
      model.addAdapter('lp', 'lora[r=2,init_weights=bert]', { seed: 5 });
      const dir = join(tmp, 'lp');
      await model.saveAdapter(dir, 'lp', { format: 'adapters' });
      const files = read(dir);
      const { tensors } = readSafetensors(files['adapter.safetensors']);
      const prefixed = new Map([...tensors].map(([k, t]) => [`transformer.${k}`, { shape: t.shape, data: t.data as Float32Array }]));
      const name = model.adapters.loadAdapterFiles({ ...files, 'adapter.safetensors': writeSafetensors(prefixed) }, { name: 'other' });
      expect(await values(name)).toEqual(await values('lp'));
      model.deleteAdapter('lp');
      model.deleteAdapter('other');
    });

    it('refuses what adapters cannot express or adapterkit cannot honour, by name, and leaves nothing behind', async () => {
      const peft = await model.loadAdapter(PEFT_LORA_DIR, { name: 'from-peft' });
      await expect(model.saveAdapter(join(tmp, 'x'), peft, { format: 'adapters' })).rejects.toThrow(/target_modules/);
      model.deleteAdapter(peft);
      for (const [variant, config] of [
        ['DoRA', 'lora[r=2,use_dora=true]'],
        ['VeRA', 'vera'],
      ] as const) {
        model.addAdapter('v', config);
        await expect(model.saveAdapter(join(tmp, 'v'), 'v', { format: 'adapters' }), variant).rejects.toThrow(new RegExp(`${variant} adapter`));
        model.deleteAdapter('v');
      }
      model.addAdapter('r', 'lora[r=2]');
      const dir = join(tmp, 'r');
      await model.saveAdapter(dir, 'r', { format: 'adapters' });
      model.deleteAdapter('r');
      const files = read(dir);
      const cfg = JSON.parse(files['adapter_config.json'].toString());
      const withConfig = (edit: Record<string, unknown>, top: Record<string, unknown> = {}) => ({
        ...files,
        'adapter_config.json': new TextEncoder().encode(JSON.stringify({ ...cfg, ...top, config: { ...cfg.config, ...edit } })),
      });
      expect(() => model.adapters.loadAdapterFiles(withConfig({ lora_rank_typo: 3 }))).toThrow(ConfigError);
      expect(() => model.adapters.loadAdapterFiles(withConfig({ use_dora: true }))).toThrow(UnsupportedError);
      expect(() => model.adapters.loadAdapterFiles(withConfig({ r: 3 }))).toThrow(WeightError);
      expect(() => model.adapters.loadAdapterFiles(withConfig({ architecture: 'union' }))).toThrow(/union/);
      expect(() => model.adapters.loadAdapterFiles(withConfig({}, { hidden_size: 7 }))).toThrow(/hidden_size/);
      expect(model.listAdapters()).toEqual([]);
      // adapters' loader: LoRA saved before adapters 1.1.0 ran with scaling 1 (alpha := r)
      const old = model.adapters.loadAdapterFiles(withConfig({ alpha: 16 }, { version: 'adapters.1.0.1' }));
      expect(model.adapters.adapterConfig(old).alpha).toBe(2);
      model.deleteAdapter(old);
    });
  });
}
