/**
 * Bad input: every case gets a typed AdapterkitError that names the file / field / weight / argument —
 * never a crash deep inside tfjs, a hang or NaN — and leaves no tensors behind.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { tf } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { type AdapterkitError, ConfigError, FileError, InputError, SafetensorsError, WeightError, readSafetensors, type SafeTensor } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, readReference, to2d, initBackend } from './helpers.js';
import { readFixtureFile, tempDir, writeCheckpoint } from './checkpoints.js';

type Ctor = new (...args: any[]) => AdapterkitError;

/** Expects a rejection of type `type` whose message mentions `names`. */
async function rejects(p: Promise<unknown> | (() => unknown), type: Ctor, ...names: string[]): Promise<AdapterkitError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected a ${type.name}`).toBeInstanceOf(type);
  for (const n of names) expect((err as Error).message).toContain(n);
  return err as AdapterkitError;
}

const fixtureConfig = JSON.parse(new TextDecoder().decode(readFixtureFile(FIXTURE_DIR, 'config.json')));
const fixtureBytes = readFixtureFile(FIXTURE_DIR, 'model.safetensors');
const fixtureTensors = () => readSafetensors(fixtureBytes).tensors;

/** Rewrites the safetensors header (JSON object) and keeps the data bytes. */
function withHeader(bytes: Uint8Array, edit: (h: Record<string, any>) => void, dataEdit?: (data: Uint8Array) => Uint8Array): Uint8Array {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  edit(header);
  let data = bytes.slice(8 + n);
  if (dataEdit) data = dataEdit(data) as Uint8Array<ArrayBuffer>;
  const hb = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + hb.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  out.set(data, 8 + hb.length);
  return out;
}

const Q = 'encoder.block.0.layer.0.SelfAttention.q.weight';
const K = 'encoder.block.0.layer.0.SelfAttention.k.weight';

describe('bad checkpoint directories', () => {
  const dirs: string[] = [];
  const dir = (tag: string) => {
    const d = tempDir(tag);
    dirs.push(d);
    return d;
  };
  /** A fixture copy whose model.safetensors is `bytes`. */
  const withSafetensors = (bytes: Uint8Array) => {
    const d = dir('st');
    copyFileSync(join(FIXTURE_DIR, 'config.json'), join(d, 'config.json'));
    writeFileSync(join(d, 'model.safetensors'), bytes);
    return d;
  };
  const withWeights = (edit: (m: Map<string, SafeTensor>) => void) => {
    const m = fixtureTensors();
    edit(m);
    const d = writeCheckpoint(fixtureConfig, m);
    dirs.push(d);
    return d;
  };
  beforeAll(async () => {
    await initBackend(backendsUnderTest(['cpu', 'wasm'])[0]);
  });
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  const load = (d: string) => T5ForConditionalGeneration.fromPretrained(d);

  it('missing directory / config.json / model.safetensors → FileError naming the file', async () => {
    await rejects(load(join(tempDir('none'), 'nope')), FileError, 'config.json');
    const onlyConfig = dir('cfg');
    copyFileSync(join(FIXTURE_DIR, 'config.json'), join(onlyConfig, 'config.json'));
    await rejects(load(onlyConfig), FileError, 'model.safetensors');
    const onlyWeights = dir('w');
    copyFileSync(join(FIXTURE_DIR, 'model.safetensors'), join(onlyWeights, 'model.safetensors'));
    await rejects(load(onlyWeights), FileError, 'config.json');
  });

  it('malformed config JSON → FileError naming config.json; wrong values → ConfigError naming the field', async () => {
    await rejects(load(writeCheckpoint('{"d_model": 32,', fixtureTensors())), FileError, 'config.json');
    await rejects(load(writeCheckpoint('[1, 2]', fixtureTensors())), ConfigError, 'config.json');
    const e = await rejects(load(writeCheckpoint({ ...fixtureConfig, d_model: -3 }, fixtureTensors())), ConfigError, 'd_model');
    expect((e as ConfigError).field).toBe('d_model');
    await rejects(load(writeCheckpoint({ ...fixtureConfig, feed_forward_proj: 'gated-swoosh' }, fixtureTensors())), ConfigError, 'feed_forward_proj');
    await rejects(load(writeCheckpoint({ ...fixtureConfig, tie_word_embeddings: 'yes' }, fixtureTensors())), ConfigError, 'tie_word_embeddings');
  });

  it('unsupported model_type → ConfigError naming model_type', async () => {
    const e = await rejects(load(writeCheckpoint({ ...fixtureConfig, model_type: 'bart' }, fixtureTensors())), ConfigError, 'model_type', 'bart');
    expect((e as ConfigError).field).toBe('model_type');
  });

  it('missing, unexpected, wrongly shaped, integer and non-finite weights → WeightError naming the weight', async () => {
    const missing = await rejects(load(withWeights((m) => m.delete(Q))), WeightError, Q);
    expect((missing as WeightError).weight).toBe(Q);
    await rejects(load(withWeights((m) => m.set('encoder.block.7.layer.0.SelfAttention.q.weight', m.get(Q)!))), WeightError, 'encoder.block.7');
    await rejects(load(withWeights((m) => m.set(Q, { dtype: 'F32', shape: [32, 31], data: new Float32Array(32 * 31) }))), WeightError, Q, '[32,31]');
    // untied config (v4 flan style) without lm_head.weight
    await rejects(load(writeCheckpoint({ ...fixtureConfig, tie_word_embeddings: false }, fixtureTensors())), WeightError, 'lm_head.weight');
    await rejects(load(withSafetensors(withHeader(fixtureBytes, (h) => (h[Q].dtype = 'I32')))), WeightError, Q, 'I32');
    const nan = (m: Map<string, SafeTensor>) => {
      const d = new Float32Array(m.get(K)!.data);
      d[5] = NaN;
      m.set(K, { ...m.get(K)!, data: d });
    };
    await rejects(load(withWeights(nan)), WeightError, K, 'non-finite');
  });

  it('malformed safetensors → SafetensorsError naming the file and the problem', async () => {
    await rejects(load(withSafetensors(fixtureBytes.slice(0, fixtureBytes.length - 100))), SafetensorsError, 'model.safetensors', 'outside');
    await rejects(load(withSafetensors(fixtureBytes.slice(0, 5))), SafetensorsError, 'model.safetensors');
    const beyond = fixtureBytes.slice();
    new DataView(beyond.buffer).setUint32(0, 10_000_000, true);
    await rejects(load(withSafetensors(beyond)), SafetensorsError, 'header length');
    await rejects(load(withSafetensors(withHeader(fixtureBytes, (h) => (h[K].data_offsets = h[Q].data_offsets)))), SafetensorsError, 'overlap');
    await rejects(load(withSafetensors(withHeader(fixtureBytes, (h) => (h[Q].data_offsets = [h[Q].data_offsets[0], 10_000_000])))), SafetensorsError, Q);
    await rejects(load(withSafetensors(withHeader(fixtureBytes, (h) => (h[Q].dtype = 'F8_E4M3')))), SafetensorsError, 'dtype', Q);
    await rejects(load(withSafetensors(withHeader(fixtureBytes, (h) => (h[Q].shape = [32, 31])))), SafetensorsError, Q, 'bytes');
    await rejects(load(withSafetensors(withHeader(fixtureBytes, (h) => (h[Q].shape = 'big')))), SafetensorsError, Q, 'shape');
    const badJson = fixtureBytes.slice();
    badJson[9] = 0x7b; // '{{' …
    await rejects(load(withSafetensors(badJson)), SafetensorsError, 'JSON');
  });

  it('sharded checkpoints: missing shard → FileError; weight listed but absent → WeightError', async () => {
    const d = writeCheckpoint(fixtureConfig, fixtureTensors(), { shards: 2 });
    dirs.push(d);
    rmSync(join(d, 'model-00002-of-00002.safetensors'));
    await rejects(load(d), FileError, 'model-00002-of-00002.safetensors');
    const d2 = writeCheckpoint(fixtureConfig, fixtureTensors(), { shards: 2 });
    dirs.push(d2);
    // every weight claimed by shard 1, which holds only half of them
    const index = { weight_map: Object.fromEntries([...fixtureTensors().keys()].map((k) => [k, 'model-00001-of-00002.safetensors'])) };
    writeFileSync(join(d2, 'model.safetensors.index.json'), JSON.stringify(index));
    await rejects(load(d2), WeightError, 'missing from its shard');
    const d3 = dir('idx');
    copyFileSync(join(FIXTURE_DIR, 'config.json'), join(d3, 'config.json'));
    writeFileSync(join(d3, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { [Q]: '../../etc/passwd' } }));
    await rejects(load(d3), FileError, 'shard');
  });
});

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`bad inputs on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    const ref = readReference();
    const ids = to2d(ref.inputs.input_ids);
    const mask = to2d(ref.inputs.attention_mask);
    const dec = to2d(ref.inputs.decoder_input_ids);
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());

    it('forward: ids out of range, negative, ragged, empty, mismatched shapes → InputError naming the argument; no leaks', async () => {
      const tensorInputs = [tf.tensor2d([[5, 200]], undefined, 'int32'), tf.tensor2d([[5, 6]], undefined, 'float32'), tf.tensor1d([5, 6], 'int32')];
      const before = tf.memory().numTensors;
      const fwd = (o: Partial<Parameters<typeof model.forward>[0]>) => () => model.forward({ inputIds: ids, attentionMask: mask, decoderInputIds: dec, ...o });
      const cases: [() => unknown, string][] = [
        [fwd({ inputIds: [[5, 128, 7]], attentionMask: undefined, decoderInputIds: [[0]] }), 'inputIds'],
        [fwd({ inputIds: [[5, -1, 7]], attentionMask: undefined, decoderInputIds: [[0]] }), 'inputIds'],
        [fwd({ inputIds: [[5, 1.5, 7]], attentionMask: undefined, decoderInputIds: [[0]] }), 'inputIds'],
        [fwd({ decoderInputIds: dec.map((r) => r.map(() => 999)) }), 'decoderInputIds'],
        [fwd({ inputIds: [] }), 'inputIds'],
        [fwd({ inputIds: [[]] }), 'inputIds'],
        [
          fwd({
            inputIds: [
              [5, 6, 7],
              [5, 6],
            ],
            attentionMask: undefined,
            decoderInputIds: [[0], [0]],
          }),
          'inputIds',
        ],
        [fwd({ attentionMask: mask.map((r) => r.slice(1)) }), 'attentionMask'],
        [fwd({ attentionMask: [mask[0]] }), 'attentionMask'],
        [fwd({ decoderInputIds: [dec[0]] }), 'decoderInputIds'],
        ...tensorInputs.map((t) => [fwd({ inputIds: t, attentionMask: undefined, decoderInputIds: [[0]] }), 'inputIds'] as [() => unknown, string]),
      ];
      for (const [fn, arg] of cases) {
        const e = await rejects(fn, InputError, arg);
        expect((e as InputError).argument).toBe(arg);
      }
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose(tensorInputs);
    });

    it('generate: maxNewTokens < 0, numBeams 0, bad sampling options, empty/ragged batch → InputError; no leaks', async () => {
      const before = tf.memory().numTensors;
      const gen = (o: Record<string, unknown>) => model.generate({ inputIds: ids, attentionMask: mask, maxNewTokens: 2, ...o });
      await rejects(gen({ maxNewTokens: -1 }), InputError, 'maxNewTokens');
      await rejects(gen({ maxNewTokens: 1.5 }), InputError, 'maxNewTokens');
      await rejects(gen({ numBeams: 0 }), InputError, 'numBeams');
      await rejects(gen({ doSample: true, temperature: 0 }), InputError, 'temperature');
      await rejects(gen({ doSample: true, topP: 1.5 }), InputError, 'topP');
      await rejects(gen({ doSample: true, topK: -2 }), InputError, 'topK');
      await rejects(gen({ inputIds: [] }), InputError, 'inputIds');
      await rejects(gen({ inputIds: [[4, 5], [6]], attentionMask: undefined }), InputError, 'inputIds');
      await rejects(gen({ inputIds: [[4, 5, 300]], attentionMask: undefined }), InputError, 'inputIds');
      await rejects(gen({ attentionMask: [mask[0]] }), InputError, 'attentionMask');
      await rejects(gen({ inputIds: undefined }), InputError, 'inputIds');
      expect(tf.memory().numTensors).toBe(before);
      // maxNewTokens 0 is valid: only the decoder start id.
      expect(await gen({ maxNewTokens: 0 })).toEqual([[0], [0]]);
    });

    it('loss: labels other than ids or -100, mismatched rows, bad labelSmoothing → InputError; no leaks', async () => {
      const before = tf.memory().numTensors;
      const labels = to2d(ref.inputs.labels);
      const loss = (o: Record<string, unknown>) => () => model.loss({ inputIds: ids, attentionMask: mask, labels, ...o });
      await rejects(loss({ labels: labels.map((r) => r.map((t, j) => (j === 1 ? -5 : t))) }), InputError, 'labels');
      await rejects(loss({ labels: labels.map((r) => r.map((t, j) => (j === 1 ? 128 : t))) }), InputError, 'labels');
      await rejects(loss({ labels: [labels[0]] }), InputError, 'labels');
      await rejects(loss({ labelSmoothing: 1.5 }), InputError, 'labelSmoothing');
      await rejects(loss({ attentionMask: [[1]] }), InputError, 'attentionMask');
      expect(tf.memory().numTensors).toBe(before);
    });
  });
}
