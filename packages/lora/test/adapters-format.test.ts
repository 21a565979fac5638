/**
 * AdapterHub `adapters` format (adapter_config.json with config/name/model_type/version + adapter.safetensors,
 * keys `<linear>.loras.<name>.lora_A|lora_B|gate.*|m.weight|vera_D|vera_B`, `shared_parameters.<name>.lora_A|lora_B`). No file here was written by `adapters` itself (no
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
import { FIXTURE_DIR, PEFT_LORA_DIR, logitsOf, maxDiff, randomize } from './helpers.js';

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

    const read = (dir: string, weights = 'adapter.safetensors'): AdapterFiles => ({
      'adapter_config.json': readFileSync(join(dir, 'adapter_config.json')),
      [weights]: readFileSync(join(dir, weights)),
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

    it("DoRA, VeRA and DVoRA: adapters' m.weight [out, 1], vera_D [r, r] / vera_B [out, out] (diagonal) and shared_parameters.<name>.lora_A/B; round trips bit-exact, logits equal", async () => {
      const d = model.dims;
      const inner = d.numHeads * d.dKv;
      for (const [name, config] of [
        ['do', 'dora[r=2,alpha=2,output_lora=true]'],
        ['ve', 'vera[r=4]'],
        ['dv', 'dvora'],
      ] as const) {
        model.addAdapter(name, config, { seed: 7 });
        randomize(model, name, 11, 0.3, 0.5); // every value non-zero: B ≠ 0, λ ≠ initial, m ≠ ‖W‖
        const dir = await roundTrip(name, name === 've');
        const files = read(dir, name === 've' ? 'adapter.safetensors' : 'pytorch_adapter.bin');
        const { tensors } = name === 've' ? readSafetensors(files['adapter.safetensors']) : readTorchCheckpoint(files['pytorch_adapter.bin']);
        const at = `encoder.block.0.layer.0.SelfAttention.q.loras.${name}`;
        const r = model.adapters.adapterConfig(name).r as number;
        if (name !== 've') expect(tensors.get(`${at}.m.weight`)!.shape).toEqual([inner, 1]);
        if (name !== 'do') {
          expect(tensors.get(`${at}.vera_D`)!.shape).toEqual([r, r]);
          const vb = tensors.get(`${at}.vera_B`)!;
          expect(vb.shape).toEqual([inner, inner]);
          expect(vb.data.filter((x, i) => x !== 0 && i % (inner + 1) !== 0).length).toBe(0);
          expect(tensors.get(`shared_parameters.${name}.lora_A`)!.shape).toEqual([r, d.dModel]);
          expect(tensors.get(`shared_parameters.${name}.lora_B`)!.shape).toEqual([inner, r]);
          expect([...tensors.keys()].some((k) => k.endsWith('.lora_A') && k.includes('.loras.'))).toBe(false);
        }
        model.deleteAdapter(name);
        model.deleteAdapter(`${name}2`);
      }
    });

    it('refuses DoRA with alpha ≠ r (adapters normalises without alpha/r), VeRA over linears of different shapes, off-diagonal vera_D and missing shared projections, by name', async () => {
      model.addAdapter('d4', 'dora[r=2,alpha=4]');
      await expect(model.saveAdapter(join(tmp, 'd4'), 'd4', { format: 'adapters' })).rejects.toThrow(/DoRA adapter with alpha\/r = 4\/2 ≠ 1/);
      model.deleteAdapter('d4');
      model.addAdapter('vi', 'vera[r=2,intermediate_lora=true]');
      await expect(model.saveAdapter(join(tmp, 'vi'), 'vi', { format: 'adapters' })).rejects.toThrow(/VeRA adapter on linears of different shapes/);
      model.deleteAdapter('vi');
      model.addAdapter('vv', 'vera[r=2]');
      randomize(model, 'vv', 12);
      const dir = join(tmp, 'vv');
      await model.saveAdapter(dir, 'vv', { format: 'adapters' });
      model.deleteAdapter('vv');
      const files = read(dir);
      const { tensors } = readSafetensors(files['adapter.safetensors']);
      const edited = (edit: (m: Map<string, { shape: number[]; data: Float32Array }>) => void) => {
        const m = new Map([...tensors].map(([k, t]) => [k, { shape: t.shape, data: Float32Array.from(t.data) }]));
        edit(m);
        return { ...files, 'adapter.safetensors': writeSafetensors(m) };
      };
      const key = 'encoder.block.0.layer.0.SelfAttention.v.loras.vv.vera_D';
      expect(() => model.adapters.loadAdapterFiles(edited((m) => (m.get(key)!.data[1] = 0.5)))).toThrow(
        new RegExp(`'${key.replaceAll('.', '\\.')}' has a non-zero entry off its diagonal`),
      );
      expect(() => model.adapters.loadAdapterFiles(edited((m) => m.delete('shared_parameters.vv.lora_A')))).toThrow(/lacks its shared projections/);
      const cfg = JSON.parse(new TextDecoder().decode(files['adapter_config.json']));
      const dora = {
        ...files,
        'adapter_config.json': new TextEncoder().encode(JSON.stringify({ ...cfg, config: { ...cfg.config, vera_d: null, vera_b: null, use_dora: true, alpha: 3 } })),
      };
      expect(() => model.adapters.loadAdapterFiles(dora)).toThrow(UnsupportedError);
      expect(model.listAdapters()).toEqual([]);
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
      expect(() => model.adapters.loadAdapterFiles(withConfig({ use_dora: true, use_gating: true }))).toThrow(UnsupportedError);
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
