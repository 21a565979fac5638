/**
 * AdapterHub `adapters` prediction heads saved beside an adapter (head_config.json + model_head.safetensors /
 * pytorch_model_head.bin). The fixtures (./fixtures/adapters-head, provenance in its README) were written by
 * adapterkit in the layout read from adapters' source — not by adapters itself: these are checks against
 * equivalences (a head equal to the tied embedding == the base model; a different head == a plain tfjs matMul
 * of the decoder output), not interop checks.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expectNoLeaks, initBackend, tf } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import {
  type AdapterComposition,
  BatchSplit,
  ConfigError,
  FileError,
  ModelMismatchError,
  Parallel,
  Stack,
  UnsupportedError,
  WeightError,
  readSafetensors,
  writeSafetensors,
} from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, PEFT_LORA_DIR, inputs, logitsOf, maxDiff } from './helpers.js';

const HEADS = fileURLToPath(new URL('./fixtures/adapters-head', import.meta.url));
const SEQ2SEQ = join(HEADS, 'seq2seq-lm');
const STATIC = join(HEADS, 'static-lm');
const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-heads-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let copies = 0;
/** A copy of a fixture directory with its head config and/or head weights changed. */
function variant(from: string, change: { config?: (c: any) => unknown; weight?: (w: Float32Array) => Float32Array; key?: string; drop?: string[] } = {}): string {
  const dir = join(tmp, `v${copies++}`);
  cpSync(from, dir, { recursive: true });
  if (change.config) writeFileSync(join(dir, 'head_config.json'), JSON.stringify(change.config(JSON.parse(readFileSync(join(dir, 'head_config.json'), 'utf8')))));
  if (change.weight || change.key) {
    const [[key, t]] = [...readSafetensors(readFileSync(join(dir, 'model_head.safetensors'))).tensors];
    const data = change.weight ? change.weight(Float32Array.from(t.data as Float32Array)) : (t.data as Float32Array);
    writeFileSync(join(dir, 'model_head.safetensors'), writeSafetensors({ [change.key ?? key]: { shape: t.shape, data } }, { format: 'pt' }));
  }
  for (const f of change.drop ?? []) unlinkSync(join(dir, f));
  return dir;
}

/** Seeded values in [-0.5, 0.5). */
function noise(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a / 2 ** 32 - 0.5;
  });
}

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterHub adapters heads on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      await generate(null); // what the model keeps after its first generation is not a leak of a head
    });
    afterAll(() => model.dispose());
    const generate = (composition: AdapterComposition | null, useCache = true) =>
      model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 6, composition, useCache });

    it('a seq2seq_lm head equal to the tied embedding loads, is noted, and the model generates as the base model', async () => {
      const base = await logitsOf(model, undefined, { composition: null });
      const baseIds = await generate(null);
      const before = tf.memory().numTensors;
      const name = await model.loadAdapter(SEQ2SEQ, { name: 'tied' });
      expect(model.adapters.adapterHead(name)).toEqual({ headType: 'seq2seq_lm', headName: 'la', file: 'model_head.safetensors', sameAsModel: true });
      expect(model.adapters.decodesRowwise(name)).toBe(true);
      // zero-init LoRA (B = 0) + the model's own head: bit-identical to the base model
      expect(maxDiff((await logitsOf(model, undefined, { composition: name })).data, base.data)).toBe(0);
      expect(await generate(name)).toEqual(baseIds);
      // a static head (T5ForConditionalGeneration's lm_head.weight) equal to the model's loads the same way
      await model.loadAdapter(STATIC, { name: 'static' });
      expect(model.adapters.adapterHead('static')).toEqual({ headType: 'static_lm', headName: null, file: 'model_head.safetensors', sameAsModel: true });
      model.deleteAdapter('tied');
      model.deleteAdapter('static');
      expect(tf.memory().numTensors).toBe(before);
    });

    it("a different seq2seq_lm head is the output projection while its adapter is the composition's head: logits == matMul(h, W_head^T)", async () => {
      const d = model.dims;
      // head rows 0..d-1 = identity: the first d logits are the decoder output h as the head sees it (normed, scaled)
      const identity = variant(SEQ2SEQ, { weight: (w) => w.map((_, i) => (Math.floor(i / d.dModel) === i % d.dModel ? 1 : 0)) });
      const random = noise(d.vocabSize * d.dModel, 7);
      const other = variant(SEQ2SEQ, { weight: () => random });
      const before = tf.memory().numTensors;
      await model.loadAdapter(identity, { name: 'eye' });
      await model.loadAdapter(other, { name: 'rnd' });
      expect(model.adapters.adapterHead('rnd')?.sameAsModel).toBe(false);
      expect(model.adapters.decodesRowwise('rnd')).toBe(false); // rows of one decode batch share one projection
      const h = await logitsOf(model, undefined, { composition: 'eye' });
      const got = await logitsOf(model, undefined, { composition: 'rnd' });
      const rows = h.shape[0]! * h.shape[1]!;
      const want = tf.tidy(() => tf.matMul(tf.tensor2d(h.data, [rows, d.vocabSize]).slice([0, 0], [rows, d.dModel]), tf.tensor2d(random, [d.vocabSize, d.dModel]), false, true));
      expect(maxDiff(got.data, await want.data())).toBeLessThan(1e-5);
      want.dispose();
      // the head follows adapters' parse_heads_from_composition: a Stack's last adapter
      const base = await logitsOf(model, undefined, { composition: null });
      expect(maxDiff((await logitsOf(model, undefined, { composition: Stack('eye', 'rnd') })).data, got.data)).toBe(0);
      expect(maxDiff((await logitsOf(model, undefined, { composition: Stack('rnd', 'eye') })).data, h.data)).toBe(0);
      expect(maxDiff(base.data, got.data)).toBeGreaterThan(1e-3);
      // cached generation uses the same head as the uncached path
      const ids = await generate('rnd');
      expect(ids).toEqual(await generate('rnd', false));
      expect(ids).not.toEqual(await generate(null));
      // per-branch heads are refused by name
      expect(() => model.forward({ ...inputs, composition: Parallel('rnd', 'eye') })).toThrow(UnsupportedError);
      expect(() => model.forward({ ...inputs, composition: Parallel('rnd', 'eye') })).toThrow(/Parallel.*'rnd'/);
      expect(() => model.setActiveAdapters(BatchSplit('rnd', 'eye', { batchSizes: [1, 1] }))).toThrow(/BatchSplit.*'rnd'/);
      expect(model.adapters.activeComposition).toBe(null);
      model.deleteAdapter('eye');
      model.deleteAdapter('rnd');
      expect(tf.memory().numTensors).toBe(before);
      expect(maxDiff((await logitsOf(model, undefined, { composition: null })).data, base.data)).toBe(0);
    });

    it('refuses every other head type, naming it and the file, and leaves nothing behind', async () => {
      for (const type of ['classification', 'multilabel_classification', 'question_answering', 'tagging', 'causal_lm', 'masked_lm']) {
        const dir = variant(SEQ2SEQ, { config: (c) => ({ ...c, config: { head_type: type, num_labels: 2, layers: 2, activation_function: 'tanh' } }) });
        await expectNoLeaks(async () => {
          const err = await model.loadAdapter(dir, { name: 'h' }).catch((e) => e);
          expect(err, type).toBeInstanceOf(UnsupportedError);
          expect(err.message).toContain(`'${type}'`);
          expect(err.message).toContain('head_config.json');
          expect(err.message).toContain('model_head.safetensors');
        });
        expect(model.adapters.hasAdapter('h')).toBe(false);
      }
    });

    it('malformed head files, missing weights and what a seq2seq_lm head cannot be: typed errors naming the problem', async () => {
      const cases: [string, string, new (...a: any[]) => Error, RegExp][] = [
        ['not JSON', variant(SEQ2SEQ), FileError, /head_config\.json/],
        ['weights missing', variant(SEQ2SEQ, { drop: ['model_head.safetensors'] }), FileError, /model_head\.safetensors or pytorch_model_head\.bin/],
        ['config missing', variant(SEQ2SEQ, { drop: ['head_config.json'] }), FileError, /head_config\.json is missing/],
        ['no head_type', variant(SEQ2SEQ, { config: (c) => ({ ...c, config: { layers: 1 } }) }), ConfigError, /head_type/],
        ['no name', variant(SEQ2SEQ, { config: (c) => ({ ...c, name: null }) }), ConfigError, /'name'/],
        ['unknown option', variant(SEQ2SEQ, { config: (c) => ({ ...c, config: { ...c.config, dropout_prob: 0.1 } }) }), ConfigError, /dropout_prob/],
        ['two layers', variant(SEQ2SEQ, { config: (c) => ({ ...c, config: { ...c.config, layers: 2 } }) }), UnsupportedError, /2 layers/],
        ['bias', variant(SEQ2SEQ, { config: (c) => ({ ...c, config: { ...c.config, bias: true } }) }), UnsupportedError, /bias/],
        ['vocab', variant(SEQ2SEQ, { config: (c) => ({ ...c, config: { ...c.config, vocab_size: 7 } }) }), ModelMismatchError, /vocab_size 7/],
        ['hidden size', variant(SEQ2SEQ, { config: (c) => ({ ...c, hidden_size: 7 }) }), ModelMismatchError, /hidden_size 7/],
        ['other name', variant(SEQ2SEQ, { key: 'heads.other.0.weight' }), WeightError, /unexpected tensor 'heads\.other\.0\.weight'/],
        ['NaN', variant(SEQ2SEQ, { weight: (w) => w.fill(Number.NaN, 0, 1) }), WeightError, /NaN/],
        ['static, different', variant(STATIC, { weight: (w) => w.map((x) => x + 1) }), UnsupportedError, /lm_head\.weight.*differs/],
        ['static, other class', variant(STATIC, { config: (c) => ({ ...c, model_class: 'T5ForQuestionAnswering' }) }), UnsupportedError, /T5ForQuestionAnswering/],
      ];
      writeFileSync(join(cases[0]![1], 'head_config.json'), '{ "config": ');
      // a head file that is a real torch.save archive holding other tensors: read, then refused by name
      const bin = variant(SEQ2SEQ, { drop: ['model_head.safetensors'] });
      cpSync(fileURLToPath(new URL('../../core/test/fixtures/peft-lora-adapter_model.bin', import.meta.url)), join(bin, 'pytorch_model_head.bin'));
      cases.push(['bin, other tensors', bin, WeightError, /pytorch_model_head\.bin: unexpected tensor/]);
      // head files handed in beside a PEFT adapter: refused, not ignored
      const peft = Object.fromEntries(
        [join(PEFT_LORA_DIR, 'adapter_config.json'), join(PEFT_LORA_DIR, 'adapter_model.safetensors'), join(SEQ2SEQ, 'head_config.json')].map((f) => [
          basename(f),
          readFileSync(f),
        ]),
      );
      expect(() => model.adapters.loadAdapterFiles(peft, { name: 'h' })).toThrow(/head_config\.json.*PEFT/);
      for (const [label, dir, type, message] of cases) {
        await expectNoLeaks(async () => {
          const err = await model.loadAdapter(dir, { name: 'h' }).catch((e) => e);
          expect(err, label).toBeInstanceOf(type);
          expect(err.message, label).toMatch(message);
        }, label);
        expect(model.adapters.hasAdapter('h'), label).toBe(false);
      }
    });
  });
}
