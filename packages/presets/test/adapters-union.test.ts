import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { readSafetensors, UnsupportedError, WeightError, writeSafetensors, type AdapterConfig } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE, inputIds, attentionMask, decoderInputIds, perturb } from './fixture.js';

// AdapterHub `adapters` saves a ConfigUnion (MAM, UniPELT, any union) as ONE adapter directory: adapter_config.json
// with `config: { architecture: "union", configs: [part.to_dict(), …] }` (ConfigUnion.to_dict) and one weights file
// holding every part's keys (`prefix_tuning.prefix_tunings.<name>.…`, `<sub-layer>.adapters.<name>.…`,
// `<module>.loras.<name>.…`). No file written by `adapters` itself is here (no PyTorch): these are round trips
// through adapterkit's own writer, with the layout read from adapters' configuration/adapter_config.py.

/** MAM as `adapters` can hold it: its prefix under adapters' T5 position rule, a parallel bottleneck. */
const MAM_ADAPTERS: AdapterConfig = {
  method: 'union',
  configs: [{ method: 'prefix_tuning', prefix_length: 4, bottleneck_size: 16, adapters_positions: true }, 'par_bn[reduction_factor=4]', 'lora[r=2]'],
};

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterHub adapters union files on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-union-'));
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE);
    });
    afterAll(() => {
      model?.dispose();
      rmSync(tmp, { recursive: true, force: true });
    });

    const logits = (name: string) =>
      tf.tidy(() => {
        const out = model.forward({ inputIds, attentionMask, decoderInputIds, composition: name });
        return out.logits;
      });

    it('a union (prefix + parallel bottleneck + LoRA) → one adapters directory → back: weights bit-exact, logits equal', async () => {
      model.addAdapter('mix', MAM_ADAPTERS, { seed: 3 });
      perturb(model, 'mix', 17, 0.1);
      const before = logits('mix');
      const values = new Map([...model.adapters.adapterVariables('mix')].map(([k, v]) => [k, Float32Array.from(v.dataSync() as Float32Array)]));
      for (const safeSerialization of [true, false]) {
        const dir = join(tmp, `mix-${safeSerialization}`);
        await model.saveAdapter(dir, 'mix', { format: 'adapters', safeSerialization });
        const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
        expect(cfg.name).toBe('mix');
        expect(cfg.config.architecture).toBe('union');
        expect(cfg.config.configs.map((c: { architecture: string }) => c.architecture)).toEqual(['prefix_tuning', null, 'lora']); // BnConfig's architecture is None in adapters
        expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', safeSerialization ? 'adapter.safetensors' : 'pytorch_adapter.bin'].sort());
        if (safeSerialization) {
          const keys = [...readSafetensors(new Uint8Array(readFileSync(join(dir, 'adapter.safetensors'))), 'w').tensors.keys()];
          expect(keys.some((k) => k.startsWith('prefix_tuning.prefix_tunings.mix.'))).toBe(true);
          expect(keys.some((k) => k.includes('.adapters.mix.'))).toBe(true);
          expect(keys.some((k) => k.includes('.loras.mix.'))).toBe(true);
        }
        const back = await T5ForConditionalGeneration.fromPretrained(FIXTURE);
        try {
          expect(await back.loadAdapter(dir)).toBe('mix');
          expect(back.adapters.adapterConfig('mix').method).toBe('union');
          const got = back.adapters.adapterVariables('mix');
          expect([...got.keys()].sort()).toEqual([...values.keys()].sort());
          for (const [k, v] of values) expect(got.get(k)!.dataSync(), k).toEqual(v);
          const after = tf.tidy(() => back.forward({ inputIds, attentionMask, decoderInputIds, composition: 'mix' }).logits);
          expect(await maxAbsDiff(after, before)).toBe(0);
          after.dispose();
          // and again through adapterkit's own format: the union's parts and the adapters position rule survive
          await back.saveAdapter(join(dir, 'own'), 'mix');
          back.deleteAdapter('mix');
          await expectNoLeaks(async () => {
            await back.loadAdapter(join(dir, 'own'));
            back.deleteAdapter('mix');
          });
        } finally {
          back.dispose();
        }
      }
      before.dispose();
      // PEFT has no unions
      await expect(model.saveAdapter(join(tmp, 'peft'), 'mix', { format: 'peft' })).rejects.toThrow(UnsupportedError);
      model.deleteAdapter('mix');
    });

    it('a key no part owns, two configs of one method, and an unknown architecture are refused by name; nothing is left behind', async () => {
      model.addAdapter('u', { method: 'union', configs: ['par_bn[reduction_factor=4]', 'lora[r=2]'] }, { seed: 1 });
      const dir = join(tmp, 'u');
      await model.saveAdapter(dir, 'u', { format: 'adapters' });
      model.deleteAdapter('u');
      const cfgPath = join(dir, 'adapter_config.json');
      const weightsPath = join(dir, 'adapter.safetensors');
      const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
      const weights = readFileSync(weightsPath);
      const tensors = readSafetensors(new Uint8Array(weights), 'w').tensors as Map<string, { shape: number[]; data: Float32Array }>;
      const adapters = () => model.listAdapters().map((a) => a.name);

      // a stray key (a prompt part this union does not declare)
      writeFileSync(
        weightsPath,
        writeSafetensors(new Map([...tensors, ['prompt_tuning.prompt_tunings.u.prompt_embedding.weight', { shape: [1, 4], data: new Float32Array(4) }]]), { format: 'pt' }),
      );
      await expect(model.loadAdapter(dir)).rejects.toThrow(WeightError);
      await expect(model.loadAdapter(dir)).rejects.toThrow(/prompt_tunings\.u\.prompt_embedding\.weight.*belongs to no part/);
      expect(adapters()).not.toContain('u');
      writeFileSync(weightsPath, weights);

      // adapters allows two bottleneck configs in a union (one at each location); adapterkit's unions hold one per method
      writeFileSync(cfgPath, JSON.stringify({ ...cfg, config: { ...cfg.config, configs: [cfg.config.configs[0], cfg.config.configs[0], cfg.config.configs[1]] } }));
      await expect(model.loadAdapter(dir)).rejects.toThrow(/two bottleneck configs/);
      writeFileSync(cfgPath, JSON.stringify({ ...cfg, config: { ...cfg.config, configs: [{ ...cfg.config.configs[0], architecture: 'mystery' }, cfg.config.configs[1]] } }));
      await expect(model.loadAdapter(dir)).rejects.toThrow(/architecture 'mystery'/);
      // a part that fails after another imported: the first part is removed again
      const broken = new Map(tensors);
      const loraKey = [...broken.keys()].find((k) => k.includes('.loras.u.'))!;
      broken.set(loraKey, { shape: [9, 9], data: new Float32Array(81) });
      writeFileSync(cfgPath, JSON.stringify(cfg));
      writeFileSync(weightsPath, writeSafetensors(broken, { format: 'pt' }));
      await expect(model.loadAdapter(dir)).rejects.toThrow(WeightError);
      expect(adapters()).not.toContain('u');
      writeFileSync(weightsPath, weights);
      expect(await model.loadAdapter(dir)).toBe('u');
      model.deleteAdapter('u');
    });
  });
}
