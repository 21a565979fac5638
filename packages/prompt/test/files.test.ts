/**
 * Saving and loading prompts: adapterkit's format, and PEFT's PROMPT_TUNING format written by adapterkit and
 * read back. No file here was written by PEFT itself (the shared fixtures have no prompt-tuning adapter), so
 * these are round trips, not interop checks; the key names and config fields follow PEFT's sources
 * (tuners/prompt_tuning, peft_model.PeftModelForSeq2SeqLM, BasePromptEncoder._get_adapter_state_dict).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { readSafetensors, UnsupportedError } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, inputs } from '@adapterkit/t5/test';
import { PROMPT_KEY } from '../src/index.js';

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`prompt tuning files on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let dir: string;
    const logitsOf = (composition: string) => {
      const out = model.forward({ ...inputs, composition });
      out.encoderLastHiddenState.dispose();
      return out.logits;
    };
    const promptData = async (name: string) => Float32Array.from(await model.adapters.adapterVariables(name).get(PROMPT_KEY)!.data());

    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      dir = mkdtempSync(join(tmpdir(), 'prompt-'));
    });
    afterAll(() => {
      model.dispose();
      rmSync(dir, { recursive: true, force: true });
    });

    for (const submodules of [1, 2] as const) {
      it(`PEFT export → import is bit-exact (num_transformer_submodules ${submodules}) and gives the same logits`, async () => {
        const out = join(dir, `peft-${submodules}`);
        model.addAdapter('p', { method: 'prompt_tuning', prompt_length: 3, peft_submodules: submodules }, { seed: 21 });
        await model.saveAdapter(out, 'p', { format: 'peft' });
        const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
        expect(cfg).toMatchObject({
          peft_type: 'PROMPT_TUNING',
          task_type: 'SEQ_2_SEQ_LM',
          num_virtual_tokens: 3,
          token_dim: model.dims.dModel,
          num_transformer_submodules: submodules,
        });
        const { tensors } = readSafetensors(readFileSync(join(out, 'adapter_model.safetensors')));
        expect([...tensors.keys()]).toEqual(['prompt_embeddings']);
        expect(tensors.get('prompt_embeddings')!.shape).toEqual([3 * submodules, model.dims.dModel]);

        const name = await model.loadAdapter(out, { name: 'q' });
        expect(model.adapters.adapterConfig(name)).toMatchObject({ method: 'prompt_tuning', prompt_length: 3, peft_submodules: submodules, combine: 'prefix' });
        expect(await promptData('q')).toEqual(await promptData('p'));
        const [a, b] = [logitsOf('p'), logitsOf('q')];
        expect(await maxAbsDiff(a, b)).toBe(0);
        tf.dispose([a, b]);

        // and out again: the same config and bytes
        const again = join(dir, `peft-${submodules}-again`);
        await model.saveAdapter(again, 'q', { format: 'peft' });
        expect(JSON.parse(readFileSync(join(again, 'adapter_config.json'), 'utf8'))).toEqual(cfg);
        expect(readFileSync(join(again, 'adapter_model.safetensors')).equals(readFileSync(join(out, 'adapter_model.safetensors')))).toBe(true);
        model.deleteAdapter('p');
        model.deleteAdapter('q');
      });
    }

    it('adapterkit format: save → load keeps config and values; life cycle leaks nothing', async () => {
      const out = join(dir, 'native');
      model.addAdapter('p', 'prompt_tuning[prompt_length=4,combine=prefix_after_bos]', { seed: 22 });
      await model.saveAdapter(out, 'p');
      await expectNoLeaks(async () => {
        const name = await model.loadAdapter(out, { name: 'q' });
        expect(model.adapters.adapterConfig(name).combine).toBe('prefix_after_bos');
        expect(await promptData('q')).toEqual(await promptData('p'));
        model.deleteAdapter(name);
      }, 'load and delete');
      model.deleteAdapter('p');
    });

    it('PEFT export refuses what PEFT cannot run, by name', async () => {
      model.addAdapter('after', 'prompt_tuning[prompt_length=2,combine=prefix_after_bos]');
      model.addAdapter('empty', 'prompt_tuning[prompt_length=0]');
      await expect(model.saveAdapter(join(dir, 'x'), 'after', { format: 'peft' })).rejects.toThrow(UnsupportedError);
      await expect(model.saveAdapter(join(dir, 'x'), 'after', { format: 'peft' })).rejects.toThrow(/prefix_after_bos/);
      await expect(model.saveAdapter(join(dir, 'y'), 'empty', { format: 'peft' })).rejects.toThrow(/num_virtual_tokens/);
      model.deleteAdapter('after');
      model.deleteAdapter('empty');
    });

    it('PEFT import refuses configs it cannot honour, by name', async () => {
      const out = join(dir, 'edit');
      model.addAdapter('p', 'prompt_tuning[prompt_length=2]');
      await model.saveAdapter(out, 'p', { format: 'peft' });
      model.deleteAdapter('p');
      const files = {
        'adapter_config.json': readFileSync(join(out, 'adapter_config.json')),
        'adapter_model.safetensors': readFileSync(join(out, 'adapter_model.safetensors')),
      };
      const cfg = JSON.parse(files['adapter_config.json'].toString());
      const load = (edit: Record<string, unknown>) =>
        model.adapters.loadAdapterFiles({ ...files, 'adapter_config.json': new TextEncoder().encode(JSON.stringify({ ...cfg, ...edit })) }, { name: 'r' });
      expect(() => load({ task_type: 'CAUSAL_LM' })).toThrow(/task_type/);
      expect(() => load({ token_dim: 64 })).toThrow(/token_dim/);
      expect(() => load({ num_virtual_tokens: 3 })).toThrow(/shape/);
      expect(() => load({ num_transformer_submodules: 2 })).toThrow(/shape/);
      expect(() => load({ modules_to_save: ['lm_head'] })).toThrow(/modules_to_save/);
      expect(model.adapters.hasAdapter('r')).toBe(false);
    });
  });
}
