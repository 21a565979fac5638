import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { UnsupportedError } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, PEFT_PREFIX_DIR, inputs, labels, readReference, to2d } from './helpers.js';

const peftRef = readReference(`${PEFT_PREFIX_DIR}/reference.json`);

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`PEFT prefix import on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    let name: string;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      name = await model.loadAdapter(PEFT_PREFIX_DIR);
      model.setActiveAdapters(name);
    });
    afterAll(() => model.dispose());

    it('logits within 1e-4 of PEFT', async () => {
      const out = model.forward(inputs);
      expect(out.logits.shape).toEqual(peftRef.logits.shape);
      expect(await maxAbsDiff(out.logits, peftRef.logits.data)).toBeLessThan(1e-4);
      tf.dispose([out.logits, out.encoderLastHiddenState]);
    });

    it('regression: prefix tuning + KV cache (peft #2192): greedy ids identical to PEFT, cached and uncached', async () => {
      const o = { inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 };
      expect(await model.generate(o)).toEqual(to2d(peftRef.greedy_ids));
      expect(await model.generate({ ...o, useCache: false })).toEqual(to2d(peftRef.greedy_ids));
    });

    it("saved in adapterkit format and loaded again, it keeps PEFT's layout and logits", async () => {
      const dir = mkdtempSync(join(tmpdir(), 'peft-prefix-'));
      try {
        await model.saveAdapter(dir, name);
        const again = await model.loadAdapter(dir, { name: 'again' });
        expect(model.adapters.adapterConfig(again).peft_layout).toBe(true);
        const out = model.forward({ ...inputs, composition: again });
        expect(await maxAbsDiff(out.logits, peftRef.logits.data)).toBeLessThan(1e-4);
        tf.dispose([out.logits, out.encoderLastHiddenState]);
        model.deleteAdapter(again);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('3-beam ids identical to PEFT', async () => {
      const ids = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8, numBeams: 3, earlyStopping: true, lengthPenalty: 1.0 });
      expect(ids).toEqual(to2d(peftRef.beam3_ids));
    });

    it('gradient of the loss w.r.t. prompt_embeddings matches PEFT', async () => {
      model.trainAdapter(name);
      const vars = model.adapters.trainableVariables();
      expect(vars.length).toBe(1);
      const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar, vars);
      const loss = (await value.data())[0];
      expect(Math.abs(loss - peftRef.loss) / Math.abs(peftRef.loss)).toBeLessThan(1e-5);
      const g = Object.values(grads)[0];
      const expected = peftRef.grads['prompt_encoder.default.embedding.weight'];
      expect(g.shape).toEqual(expected.shape);
      const maxMag = Math.max(...expected.data.map((x: number) => Math.abs(x)));
      expect((await maxAbsDiff(g, expected.data)) / maxMag).toBeLessThan(1e-4);
      tf.dispose([value, ...Object.values(grads)]);
    });
  });
}

describe('PEFT prefix import: head geometry PEFT cannot run', () => {
  it('refuses token_dim / num_attention_heads ≠ d_kv with UnsupportedError', async () => {
    await initBackend('cpu');
    // flan-t5-small-like: d_model 48, 3 heads × d_kv 8 = 24 ≠ 48.
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
    const cfg = {
      peft_type: 'PREFIX_TUNING',
      task_type: 'SEQ_2_SEQ_LM',
      num_virtual_tokens: 2,
      num_layers: 2,
      token_dim: 48,
      num_attention_heads: 3,
      num_transformer_submodules: 2,
    };
    const tensors = new Map([['prompt_embeddings', { shape: [2, 2 * 2 * 48], data: new Float32Array(2 * 2 * 2 * 48) }]]);
    const files = {
      'adapter_config.json': new TextEncoder().encode(JSON.stringify(cfg)),
      'adapter_model.safetensors': (await import('@adapterkit/core')).writeSafetensors(tensors, { format: 'pt' }),
    };
    expect(() => model.adapters.loadAdapterFiles(files, { name: 'p' })).toThrow(UnsupportedError);
    expect(() => model.adapters.loadAdapterFiles(files, { name: 'p' })).toThrow(/d_kv/);
    expect(model.adapters.hasAdapter('p')).toBe(false);
    model.dispose();
  });
});
