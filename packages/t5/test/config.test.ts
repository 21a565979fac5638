/**
 * Config semantics of transformers v4 and v5 checkpoints, on random checkpoints of shapes the fixture does
 * not cover, checked against an independent plain-tf T5 (test/checkpoints.ts). Also: sharded checkpoints,
 * F16 and BF16 files.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { rmSync } from 'node:fs';
import { tf } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { readSafetensors } from '@adapterkit/core';
import { T5ForConditionalGeneration, parseT5Config, expectedWeights } from '../src/index.js';
import { FIXTURE_DIR, readReference, to2d, initBackend } from './helpers.js';
import { randomCheckpoint, referenceForward, writeCheckpoint, readFixtureFile, roundThrough } from './checkpoints.js';

const base = {
  model_type: 't5',
  vocab_size: 40,
  d_model: 16,
  d_ff: 24,
  relative_attention_num_buckets: 8,
  relative_attention_max_distance: 12,
  dropout_rate: 0.0,
  layer_norm_epsilon: 1e-6,
  decoder_start_token_id: 0,
  pad_token_id: 0,
  eos_token_id: 1,
};

/** Shapes external checks run: v4/v5 head rules, every activation, d_kv ≠ d_model/heads, asymmetric depth. */
const CASES: Record<string, Record<string, unknown>> = {
  // t5-small style v4 config: relu, no tie key (tied by default) and no scale key → rescale by d_model^-0.5.
  'v4 relu tied (rescale)': { ...base, feed_forward_proj: 'relu', d_kv: 6, num_heads: 3, num_layers: 2, num_decoder_layers: 3 },
  // flan-t5 style v4 config: untied head with its own lm_head.weight, no scale key → no rescale.
  'v4 gated-gelu untied': { ...base, feed_forward_proj: 'gated-gelu', tie_word_embeddings: false, d_kv: 4, num_heads: 2, num_layers: 1, num_decoder_layers: 2 },
  // v5 config: tied head, scale_decoder_outputs false (as the fixture).
  'v5 gated-silu tied, no rescale': {
    ...base,
    feed_forward_proj: 'gated-silu',
    tie_word_embeddings: true,
    scale_decoder_outputs: false,
    d_kv: 8,
    num_heads: 2,
    num_layers: 2,
    num_decoder_layers: 1,
  },
  // v5 config: untied head but rescaled explicitly.
  'v5 gelu untied, rescale': {
    ...base,
    feed_forward_proj: 'gelu',
    tie_word_embeddings: false,
    scale_decoder_outputs: true,
    d_kv: 5,
    num_heads: 4,
    num_layers: 3,
    num_decoder_layers: 2,
  },
};

const ids = [
  [5, 9, 13, 22, 30, 7, 3, 17, 25, 11, 1],
  [8, 2, 39, 4, 1, 0, 0, 0, 0, 0, 0],
];
const mask = ids.map((r, i) => r.map((_, j) => (i === 1 && j > 4 ? 0 : 1)));
const dec = [
  [0, 4, 9, 33, 12, 6, 2, 19, 27, 31, 15, 14, 8],
  [0, 21, 3, 5, 36, 1, 0, 0, 0, 0, 0, 0, 0],
];

describe('parseT5Config', () => {
  it('v4: no tie key → tied and rescaled; tie false → lm_head.weight expected, no rescale', () => {
    const a = parseT5Config({ feed_forward_proj: 'relu' });
    expect([a.tieWordEmbeddings, a.scaleDecoderOutputs]).toEqual([true, true]);
    expect(expectedWeights(a).has('lm_head.weight')).toBe(false);
    const b = parseT5Config({ feed_forward_proj: 'gated-gelu', tie_word_embeddings: false });
    expect([b.tieWordEmbeddings, b.scaleDecoderOutputs]).toEqual([false, false]);
    expect(expectedWeights(b).get('lm_head.weight')).toEqual([32128, 512]);
  });

  it('v5: scale_decoder_outputs wins over tie_word_embeddings', () => {
    const a = parseT5Config({ tie_word_embeddings: true, scale_decoder_outputs: false });
    expect([a.tieWordEmbeddings, a.scaleDecoderOutputs]).toEqual([true, false]);
    const b = parseT5Config({ tie_word_embeddings: false, scale_decoder_outputs: true });
    expect([b.tieWordEmbeddings, b.scaleDecoderOutputs]).toEqual([false, true]);
  });

  it('feed_forward_proj: relu/gelu non-gated use wi; gated-gelu → gelu_new; gated-silu → silu', () => {
    const relu = parseT5Config({ feed_forward_proj: 'relu', num_layers: 1 });
    expect([relu.denseActFn, relu.isGatedAct]).toEqual(['relu', false]);
    expect(expectedWeights(relu).has('encoder.block.0.layer.1.DenseReluDense.wi.weight')).toBe(true);
    expect(expectedWeights(relu).has('encoder.block.0.layer.1.DenseReluDense.wi_0.weight')).toBe(false);
    expect(parseT5Config({ feed_forward_proj: 'gelu' })).toMatchObject({ denseActFn: 'gelu', isGatedAct: false });
    expect(parseT5Config({ feed_forward_proj: 'gated-gelu' })).toMatchObject({ denseActFn: 'gelu_new', isGatedAct: true });
    const silu = parseT5Config({ feed_forward_proj: 'gated-silu', num_layers: 1 });
    expect([silu.denseActFn, silu.isGatedAct]).toEqual(['silu', true]);
    expect(expectedWeights(silu).has('encoder.block.0.layer.1.DenseReluDense.wi_1.weight')).toBe(true);
  });

  it('d_kv is independent of d_model/heads; num_decoder_layers defaults to num_layers', () => {
    const c = parseT5Config({ d_model: 16, d_kv: 6, num_heads: 3, num_layers: 2, num_decoder_layers: 3 });
    const w = expectedWeights(c);
    expect(w.get('encoder.block.0.layer.0.SelfAttention.q.weight')).toEqual([18, 16]);
    expect(w.get('decoder.block.2.layer.1.EncDecAttention.o.weight')).toEqual([16, 18]);
    expect(w.has('decoder.block.2.layer.2.layer_norm.weight')).toBe(true);
    expect(w.has('encoder.block.2.layer.0.layer_norm.weight')).toBe(false);
    expect(parseT5Config({ num_layers: 4 }).numDecoderLayers).toBe(4);
  });
});

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`checkpoints of other shapes on ${backend}`, () => {
    const dirs: string[] = [];
    beforeAll(async () => {
      await initBackend(backend);
    });
    afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

    for (const [name, raw] of Object.entries(CASES)) {
      it(`${name}: fromPretrained logits equal an independent plain-tf T5`, async () => {
        const weights = randomCheckpoint(raw, 7);
        // v4 files often carry the tied embedding copies too; they must be accepted.
        weights.set('encoder.embed_tokens.weight', weights.get('shared.weight')!);
        const dir = writeCheckpoint(raw, weights);
        dirs.push(dir);
        const model = await T5ForConditionalGeneration.fromPretrained(dir);
        const out = model.forward({ inputIds: ids, attentionMask: mask, decoderInputIds: dec });
        const ref = referenceForward(raw, weights, ids, mask, dec);
        const scale = Math.max(1, ...(await ref.abs().max().data()));
        expect(out.logits.shape).toEqual([2, dec[0].length, 40]);
        expect(await maxAbsDiff(out.logits, ref)).toBeLessThan(1e-4 * scale);
        // The head rule matters: flipping the rescale changes the logits a lot (the test can fail).
        const flipped = referenceForward({ ...raw, scale_decoder_outputs: !parseT5Config(raw).scaleDecoderOutputs }, weights, ids, mask, dec);
        expect(await maxAbsDiff(out.logits, flipped)).toBeGreaterThan(1e-2);
        // Greedy cached generation equals the uncached path on these shapes too.
        const g = { inputIds: ids, attentionMask: mask, maxNewTokens: 6 };
        expect(await model.generate(g)).toEqual(await model.generate({ ...g, useCache: false }));
        tf.dispose([out.logits, out.encoderLastHiddenState, ref, flipped]);
        model.dispose();
      });
    }

    describe('fixture in other file layouts', () => {
      const refJson = readReference();
      const inputs = { inputIds: to2d(refJson.inputs.input_ids), attentionMask: to2d(refJson.inputs.attention_mask), decoderInputIds: to2d(refJson.inputs.decoder_input_ids) };
      const config = JSON.parse(new TextDecoder().decode(readFixtureFile(FIXTURE_DIR, 'config.json')));
      const tensors = readSafetensors(readFixtureFile(FIXTURE_DIR, 'model.safetensors')).tensors;

      it('a sharded checkpoint (index + 2 shards) gives identical logits', async () => {
        const dir = writeCheckpoint(config, tensors, { shards: 2 });
        dirs.push(dir);
        const model = await T5ForConditionalGeneration.fromPretrained(dir);
        const whole = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
        const a = model.forward(inputs);
        const b = whole.forward(inputs);
        expect(await maxAbsDiff(a.logits, b.logits)).toBe(0);
        tf.dispose([a.logits, a.encoderLastHiddenState, b.logits, b.encoderLastHiddenState]);
        model.dispose();
        whole.dispose();
      });

      for (const dtype of ['F16', 'BF16'] as const) {
        it(`an ${dtype} copy loads exactly as its rounded float32 values, close to the reference`, async () => {
          const dir = writeCheckpoint(config, tensors, { dtype });
          dirs.push(dir);
          const half = await T5ForConditionalGeneration.fromPretrained(dir);
          const rounded = new T5ForConditionalGeneration(parseT5Config(config), roundThrough(tensors, dtype));
          const a = half.forward(inputs);
          const b = rounded.forward(inputs);
          expect(await maxAbsDiff(a.logits, b.logits)).toBe(0);
          // Loose: half precision weights move logits by ~1e-3 (F16) / ~1e-2 (BF16) on this model.
          expect(await maxAbsDiff(a.logits, refJson.logits.data)).toBeLessThan(dtype === 'F16' ? 2e-2 : 2e-1);
          tf.dispose([a.logits, a.encoderLastHiddenState, b.logits, b.encoderLastHiddenState]);
          half.dispose();
          rounded.dispose();
        });
      }
    });
  });
}
