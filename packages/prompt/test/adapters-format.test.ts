/**
 * AdapterHub `adapters` format for prompt tuning (architecture 'prompt_tuning', key
 * `prompt_tuning.prompt_tunings.<name>.prompt_embedding.weight` [P, d_model], read from `adapters`'
 * methods/prompt_tuning.py and configuration/adapter_config.py). Round trips through adapterkit's writer only:
 * `adapters` itself cannot add prompt tuning to a T5 (`support_prompt_tuning = False`), so no such file exists and
 * `adapters` refuses these files on a T5 (ValueError at add_adapter).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { ConfigError, readSafetensors, UnsupportedError, WeightError, type AdapterFiles } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, inputs } from '@adapterkit/t5/test';
import { PROMPT_KEY } from '../src/index.js';

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`prompt tuning in adapters files on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let dir: string;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      dir = mkdtempSync(join(tmpdir(), 'prompt-adapters-'));
    });
    afterAll(() => {
      model.dispose();
      rmSync(dir, { recursive: true, force: true });
    });
    const logits = async (composition: string) => {
      const out = model.forward({ ...inputs, composition });
      const data = Float32Array.from((await out.logits.data()) as Float32Array);
      tf.dispose([out.logits, out.encoderLastHiddenState]);
      return data;
    };
    const promptData = async (name: string) => Float32Array.from(await model.adapters.adapterVariables(name).get(PROMPT_KEY)!.data());
    const files = (at: string): AdapterFiles => ({
      'adapter_config.json': readFileSync(join(at, 'adapter_config.json')),
      'adapter.safetensors': readFileSync(join(at, 'adapter.safetensors')),
    });

    for (const combine of ['prefix', 'prefix_after_bos'] as const) {
      it(`export → import is bit-exact with equal logits (combine ${combine}); config and key as adapters saves them`, async () => {
        model.addAdapter('p', { method: 'prompt_tuning', prompt_length: 3, combine, init_weights_seed: 7 });
        const at = join(dir, `${backend}-${combine}`);
        await model.saveAdapter(at, 'p', { format: 'adapters' });
        const cfg = JSON.parse(readFileSync(join(at, 'adapter_config.json'), 'utf8'));
        expect(cfg).toMatchObject({ name: 'p', model_type: 't5', hidden_size: model.dims.dModel });
        expect(cfg.config).toEqual({ architecture: 'prompt_tuning', prompt_length: 3, prompt_init: 'random_uniform', prompt_init_text: null, combine, init_weights_seed: 7 });
        const { tensors } = readSafetensors(readFileSync(join(at, 'adapter.safetensors')));
        expect([...tensors.keys()]).toEqual(['prompt_tuning.prompt_tunings.p.prompt_embedding.weight']);
        expect(tensors.get('prompt_tuning.prompt_tunings.p.prompt_embedding.weight')!.shape).toEqual([3, model.dims.dModel]);
        const loaded = await model.loadAdapter(at, { name: 'q' });
        expect(model.adapters.adapterConfig(loaded)).toEqual(model.adapters.adapterConfig('p'));
        expect(await promptData(loaded)).toEqual(await promptData('p'));
        const [a, b] = [await logits('p'), await logits(loaded)];
        expect(a.every((v, i) => v === b[i])).toBe(true);
        model.deleteAdapter('p');
        model.deleteAdapter('q');
      });
    }

    it("a PEFT prompt of 2P rows exports its first P (all PEFT's forward reads): same logits after the trip", async () => {
      model.addAdapter('s', { method: 'prompt_tuning', prompt_length: 2, prompt_init: 'random_normal', peft_submodules: 2 }, { seed: 3 });
      const at = join(dir, `${backend}-peft2`);
      await model.saveAdapter(at, 's', { format: 'adapters' });
      const loaded = await model.loadAdapter(at, { name: 's2' });
      expect(model.adapters.adapterConfig(loaded)).toMatchObject({ prompt_length: 2, peft_submodules: 1 });
      expect(await promptData(loaded)).toEqual((await promptData('s')).subarray(0, 2 * model.dims.dModel));
      const [a, b] = [await logits('s'), await logits(loaded)];
      expect(a.every((v, i) => v === b[i])).toBe(true);
      model.deleteAdapter('s');
      model.deleteAdapter('s2');
    });

    it('refuses by name: prompt_length 0 on export; wrong architecture, unknown fields and wrong shapes on import', async () => {
      model.addAdapter('z', { method: 'prompt_tuning', prompt_length: 0 });
      await expect(model.saveAdapter(join(dir, `${backend}-zero`), 'z', { format: 'adapters' })).rejects.toBeInstanceOf(UnsupportedError);
      model.deleteAdapter('z');
      model.addAdapter('r', { method: 'prompt_tuning', prompt_length: 3 });
      const at = join(dir, `${backend}-r`);
      await model.saveAdapter(at, 'r', { format: 'adapters' });
      model.deleteAdapter('r');
      const withConfig = (edit: (c: Record<string, unknown>) => void): AdapterFiles => {
        const f = files(at);
        const cfg = JSON.parse(new TextDecoder().decode(f['adapter_config.json']));
        edit(cfg.config);
        return { ...f, 'adapter_config.json': new TextEncoder().encode(JSON.stringify(cfg)) };
      };
      expect(() => model.adapters.loadAdapterFiles(withConfig((c) => (c.prompt_lenght = 3)))).toThrow(ConfigError);
      expect(() => model.adapters.loadAdapterFiles(withConfig((c) => (c.prompt_length = 4)))).toThrow(WeightError);
      expect(model.adapters.hasAdapter('r')).toBe(false);
    });
  });
}
