/**
 * pytorch_model.bin (torch.save zip) checkpoints: the tiny-gated model saved by torch.save loads through
 * fromPretrained and reproduces transformers' logits and ids; sharded .bin indexes; safetensors preferred;
 * a pickle naming a forbidden global is refused by the loader.
 */
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { FileError, TorchCheckpointError, readSafetensors, readTorchCheckpoint } from '@adapterkit/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { T5ForConditionalGeneration } from '../src/index.js';
import { tempDir } from './checkpoints.js';
import { FIXTURE_DIR, initBackend, maxAbsDiff, readReference, to2d } from './helpers.js';

const BIN_DIR = fileURLToPath(new URL('./fixtures/tiny-gated-bin', import.meta.url));
const ref = readReference(`${BIN_DIR}/reference.json`);
const inputs = {
  inputIds: to2d(ref.inputs.input_ids),
  attentionMask: to2d(ref.inputs.attention_mask),
  decoderInputIds: to2d(ref.inputs.decoder_input_ids),
};
const binBytes = () => new Uint8Array(readFileSync(join(BIN_DIR, 'pytorch_model.bin')));

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
/** A model directory with the fixture's config.json and generation_config.json and the given files. */
function modelDir(tag: string, files: Record<string, Uint8Array | string>): string {
  const d = tempDir(tag);
  dirs.push(d);
  for (const f of ['config.json', 'generation_config.json']) copyFileSync(join(BIN_DIR, f), join(d, f));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(d, name), content);
  return d;
}

describe('pytorch_model.bin fixture (no backend needed)', () => {
  it('the directory has no safetensors: fromPretrained must read the .bin', () => {
    expect(() => readFileSync(join(BIN_DIR, 'model.safetensors'))).toThrow();
  });

  it('the four tied embedding names are one tensor; every weight equals model.safetensors bit for bit', () => {
    const { tensors } = readTorchCheckpoint(binBytes(), 'pytorch_model.bin');
    const shared = tensors.get('shared.weight')!;
    expect(shared.shape).toEqual([128, 32]);
    expect(shared.dtype).toBe('F32');
    for (const n of ['encoder.embed_tokens.weight', 'decoder.embed_tokens.weight', 'lm_head.weight']) expect(tensors.get(n)!.data, n).toBe(shared.data);
    const st = readSafetensors(new Uint8Array(readFileSync(join(FIXTURE_DIR, 'model.safetensors')))).tensors;
    expect(tensors.size).toBe(st.size + 3);
    for (const [name, t] of st) {
      const b = tensors.get(name)!;
      expect(b.shape, name).toEqual(t.shape);
      expect(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)), name).toBe(true);
    }
  });
});

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`T5 from pytorch_model.bin vs transformers on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(BIN_DIR);
    });
    afterAll(() => model.dispose());

    it('logits and encoder states within 1e-4; identical to the safetensors checkpoint', async () => {
      const out = model.forward(inputs);
      expect(out.logits.shape).toEqual(ref.logits.shape);
      expect(await maxAbsDiff(out.logits, ref.logits.data)).toBeLessThan(1e-4);
      expect(await maxAbsDiff(out.encoderLastHiddenState, ref.encoder_last_hidden_state.data)).toBeLessThan(1e-4);
      const st = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      const other = st.forward(inputs);
      expect(await maxAbsDiff(out.logits, Array.from((await other.logits.data()) as Float32Array))).toBe(0);
      tf.dispose([out.logits, out.encoderLastHiddenState, other.logits, other.encoderLastHiddenState]);
      st.dispose();
    });

    it('greedy ids identical; the tokenizer is loaded', async () => {
      const ids = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 });
      expect(ids).toEqual(to2d(ref.greedy_ids));
      expect(model.tokenizer).toBeDefined();
    });
  });
}

describe('pytorch_model.bin loading rules', () => {
  beforeAll(() => initBackend('cpu'));

  it('sharded pytorch_model.bin.index.json (weight_map) loads; a missing shard is a FileError', async () => {
    const names = [...readTorchCheckpoint(binBytes()).tensors.keys()];
    // Two shards; each is a copy of the full file, the index assigns half of the names to each.
    const weightMap = Object.fromEntries(names.map((n, i) => [n, i % 2 ? 'pytorch_model-00002-of-00002.bin' : 'pytorch_model-00001-of-00002.bin']));
    const d = modelDir('bin-shards', {
      'pytorch_model.bin.index.json': JSON.stringify({ metadata: {}, weight_map: weightMap }),
      'pytorch_model-00001-of-00002.bin': binBytes(),
      'pytorch_model-00002-of-00002.bin': binBytes(),
    });
    const model = await T5ForConditionalGeneration.fromPretrained(d);
    const out = model.forward(inputs);
    expect(await maxAbsDiff(out.logits, ref.logits.data)).toBeLessThan(1e-4);
    tf.dispose([out.logits, out.encoderLastHiddenState]);
    model.dispose();
    rmSync(join(d, 'pytorch_model-00002-of-00002.bin'));
    await expect(T5ForConditionalGeneration.fromPretrained(d)).rejects.toThrow(FileError);
  });

  it('model.safetensors is preferred when both are present', async () => {
    const broken = binBytes().slice(0, 100);
    const d = modelDir('both', { 'model.safetensors': new Uint8Array(readFileSync(join(FIXTURE_DIR, 'model.safetensors'))), 'pytorch_model.bin': broken });
    const model = await T5ForConditionalGeneration.fromPretrained(d);
    model.dispose();
    const only = modelDir('only-broken-bin', { 'pytorch_model.bin': broken });
    await expect(T5ForConditionalGeneration.fromPretrained(only)).rejects.toThrow(TorchCheckpointError);
  });

  it('no checkpoint at all names both formats', async () => {
    const d = modelDir('none', {});
    await expect(T5ForConditionalGeneration.fromPretrained(d)).rejects.toThrow(/model\.safetensors.*pytorch_model\.bin/);
  });

  it('a pickle that names a forbidden global is refused, naming it', async () => {
    // Same length as 'collections\nOrderedDict\n', so the archive stays consistent.
    const bytes = binBytes();
    const from = new TextEncoder().encode('collections\nOrderedDict\n');
    const to = new TextEncoder().encode('subprocess\ncheck_output\n');
    const at = Buffer.from(bytes).indexOf(Buffer.from(from));
    expect(at).toBeGreaterThan(0);
    bytes.set(to, at);
    const d = modelDir('hostile', { 'pytorch_model.bin': bytes });
    await expect(T5ForConditionalGeneration.fromPretrained(d)).rejects.toThrow(TorchCheckpointError);
    await expect(T5ForConditionalGeneration.fromPretrained(d)).rejects.toThrow(/Forbidden global 'subprocess\.check_output'/);
  });
});
