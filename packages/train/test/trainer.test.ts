import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { AdapterError, ModelMismatchError, NonFiniteLossError } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { Trainer, DatasetError, jsonlSource, type TrainerOptions } from '../src/index.js';
import './bias-method.js';
import { loadTiny, shiftExamples } from './helpers.js';

const train = shiftExamples(10, 2, 1);
const heldOut = shiftExamples(8, 2, 2);

describe.each(backendsUnderTest(['cpu', 'wasm']))('Trainer (generic, test bias method) on %s', (backend) => {
  let model: T5ForConditionalGeneration;
  let dir: string;
  beforeAll(async () => {
    await initBackend(backend);
    model = await loadTiny();
    dir = mkdtempSync(join(tmpdir(), 'adapterkit-train-'));
  });
  afterAll(() => {
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  const fresh = (name = 'b', config: Record<string, unknown> = {}) => {
    if (model.adapters.hasAdapter(name)) model.deleteAdapter(name);
    model.addAdapter(name, { method: 'testbias', ...config }, { seed: 7 });
  };
  const opts = (extra: Partial<TrainerOptions> = {}): TrainerOptions => ({
    adapters: ['b'],
    trainData: train,
    maxSteps: 6,
    batchSize: 4,
    lr: 1e-2,
    seed: 3,
    shuffleBuffer: 6,
    bucketWindow: 2,
    adapterDrop: 1,
    ...extra,
  });

  it('trains: loss falls, progress events, base weights bit-identical, no tensor growth', async () => {
    fresh();
    const before = new Map([...model.baseTensors()].map(([k, t]) => [k, Array.from(t.dataSync())]));
    const events: unknown[] = [];
    const counts: number[] = [];
    const trainer = new Trainer(model, opts({ maxSteps: 12, onProgress: (_p) => counts.push(tf.memory().numTensors) }));
    trainer.addEventListener('progress', (e) => events.push((e as CustomEvent).detail));
    const r = await trainer.train();
    expect(r.step).toBe(12);
    expect(r.losses.length).toBe(12);
    expect(r.losses[11]).toBeLessThan(r.losses[0]);
    const p = events[11] as Record<string, number>;
    for (const k of ['step', 'loss', 'lr', 'stepsPerSecond', 'tokensPerSecond', 'eta', 'gradNorm', 'epoch']) expect(Number.isFinite(p[k])).toBe(true);
    expect(p.step).toBe(12);
    expect(p.eta).toBe(0);
    // tensors: constant from the second step on (the first creates the optimizer slots)
    expect(new Set(counts.slice(1)).size).toBe(1);
    for (const [k, t] of model.baseTensors()) expect(Array.from(t.dataSync())).toEqual(before.get(k));
    // optimizer state only for the trained adapter's variables
    const names = trainer.namedVariables().map((n) => n.name);
    expect(trainer.optimizer.slotNames().every((s) => names.includes(s.split(':')[0]))).toBe(true);
    expect(trainer.optimizer.slotNames().length).toBe(2 * names.length);
    trainer.dispose();
  });

  it('resume: 3 steps + checkpoint + new Trainer 3 steps gives the same losses as 6 straight', async () => {
    fresh();
    const straight = new Trainer(model, opts());
    const all = (await straight.train()).losses;
    const w6 = Array.from(await model.adapters.adapterVariables('b').values().next().value!.data());
    straight.dispose();

    fresh();
    const ckdir = join(dir, 'resume');
    const first = new Trainer(model, opts({ maxSteps: 3, checkpointDir: ckdir, checkpointEvery: 3 }));
    const a = (await first.train()).losses;
    first.dispose();
    expect(existsSync(join(ckdir, 'checkpoint-3', 'trainer_state.json'))).toBe(true);
    expect(existsSync(join(ckdir, 'checkpoint-3', 'adapters', 'b', 'adapter_model.safetensors'))).toBe(true);
    fresh(); // weights back to init: the checkpoint must restore them
    const second = new Trainer(model, opts({ checkpointDir: ckdir }));
    const b = (await second.train({ resumeFrom: true })).losses;
    second.dispose();
    expect([...a, ...b]).toEqual(all);
    expect(Array.from(await model.adapters.adapterVariables('b').values().next().value!.data())).toEqual(w6);
  });

  it('gradient accumulation: 2 micro-batches of 1 == one batch of 2 (token-weighted)', async () => {
    const rows = [train[0], train[1]];
    const run = async (batchSize: number, accum: number) => {
      fresh();
      const t = new Trainer(model, {
        adapters: 'b',
        trainData: rows,
        maxSteps: 1,
        batchSize,
        gradientAccumulationSteps: accum,
        optimizer: 'sgd',
        lr: 1,
        maxGradNorm: 0,
        shuffle: false,
        bucketWindow: 1,
      });
      const r = await t.train();
      t.dispose();
      const w = await Promise.all([...model.adapters.adapterVariables('b').values()].map(async (v) => Array.from(await v.data())));
      return { loss: r.losses[0], w: w.flat() };
    };
    const big = await run(2, 1);
    const acc = await run(1, 2);
    expect(Math.abs(big.loss - acc.loss)).toBeLessThan(1e-5);
    let m = 0;
    big.w.forEach((x, i) => (m = Math.max(m, Math.abs(x - acc.w[i]))));
    expect(m).toBeLessThan(1e-5);
  });

  it('evaluate: the shift-1 base model scores high on shift-1 data and near 0 on shift-2', async () => {
    fresh();
    model.setActiveAdapters(null);
    const t = new Trainer(model, opts());
    const s1 = await t.evaluate(shiftExamples(8, 1, 5));
    const s2 = await t.evaluate(heldOut);
    expect(s1.generationTokenAccuracy!).toBeGreaterThan(0.6);
    expect(s1.tokenAccuracy!).toBeGreaterThan(0.6);
    expect(s2.generationTokenAccuracy!).toBeLessThan(0.3);
    expect(s2.loss).toBeGreaterThan(s1.loss);
    expect(s1.examples).toBe(8);
    t.dispose();
  });

  it('label smoothing raises the loss; early stopping stops', async () => {
    fresh();
    const a = new Trainer(model, opts({ maxSteps: 1 }));
    const la = (await a.train()).losses[0];
    a.dispose();
    fresh();
    const b = new Trainer(model, opts({ maxSteps: 1, labelSmoothing: 0.1 }));
    const lb = (await b.train()).losses[0];
    b.dispose();
    expect(lb).toBeGreaterThan(la);
    fresh();
    const c = new Trainer(model, opts({ maxSteps: 50, lr: 1e-9, evalData: heldOut.slice(0, 2), evalEvery: 1, evalGenerate: false, earlyStopping: { patience: 2, minDelta: 1 } }));
    const r = await c.train();
    expect(r.stoppedEarly).toBe(true);
    expect(r.step).toBe(3);
    c.dispose();
  });

  it('bad inputs: absent adapter, empty data, rows missing fields, too long, invalid JSONL', async () => {
    fresh();
    expect(() => new Trainer(model, opts({ adapters: ['nope'] }))).toThrow(AdapterError);
    // an unknown option is an error, never ignored (a misspelt gradientAccumulationSteps would silently train differently)
    expect(() => new Trainer(model, { ...opts({}), gradientAccumulation: 4 } as TrainerOptions)).toThrow(/Trainer: unknown option 'gradientAccumulation'/);
    await expect(new Trainer(model, opts({ trainData: [] })).train()).rejects.toThrow(/empty/);
    await expect(new Trainer(model, opts({ trainData: [train[0], { inputIds: [3, 1] }], shuffleBuffer: undefined })).train()).rejects.toThrow(/row 1 of trainData: 'targetIds'/);
    const e = await new Trainer(model, opts({ trainData: [{ input: 'a' }] })).train().catch((x) => x);
    expect(e).toBeInstanceOf(DatasetError);
    expect(e.row).toBe(0);
    await expect(new Trainer(model, opts({ trainData: [{ inputIds: [3, 500], targetIds: [1] }] })).train()).rejects.toThrow(/inputIds\[1\] = 500/);
    await expect(new Trainer(model, opts({ trainData: jsonlSource('{"inputIds":[3,1],"targetIds":[4,1]}\n\n{oops}\n', 'x.jsonl') })).train()).rejects.toThrow(
      /line 3 of x.jsonl is not valid JSON/,
    );
    await expect(new Trainer(model, opts({ maxSourceLength: 4, truncation: 'error' })).train()).rejects.toThrow(/more than the maximum 4/);
    const warnings: string[] = [];
    const t = new Trainer(model, opts({ maxSteps: 1, maxSourceLength: 4, onWarning: (w) => warnings.push(w) }));
    await t.train();
    expect(warnings.length).toBeGreaterThan(0);
    expect(warnings[0]).toMatch(/input truncated from \d+ to 4 tokens/);
    t.dispose();
  });

  it('NaN loss stops with NonFiniteLossError naming the step and keeps the last good checkpoint', async () => {
    fresh();
    const ckdir = join(dir, 'nan');
    const t2 = new Trainer(model, opts({ maxSteps: 6, checkpointDir: ckdir, checkpointEvery: 1, adapterDrop: 0 }));
    // poison the weights right after the step-2 checkpoint is written
    t2.addEventListener('checkpoint', (ev) => {
      if ((ev as CustomEvent).detail.step !== 2) return;
      for (const v of model.adapters.adapterVariables('b').values()) v.assign(tf.fill(v.shape, NaN));
    });
    const e = await t2.train().catch((x) => x);
    expect(e).toBeInstanceOf(NonFiniteLossError);
    expect(e.step).toBe(3);
    expect(e.message).toMatch(/step 3/);
    expect(JSON.parse(readFileSync(join(ckdir, 'latest.json'), 'utf8')).step).toBe(2);
    t2.dispose();
  });

  it('a checkpoint of another adapter config or another model is refused (ModelMismatchError)', async () => {
    fresh();
    const ckdir = join(dir, 'mismatch');
    const t = new Trainer(model, opts({ maxSteps: 1, checkpointDir: ckdir, checkpointEvery: 1 }));
    await t.train();
    t.dispose();
    fresh('b', { scale: 2 });
    await expect(new Trainer(model, opts()).loadCheckpoint(ckdir)).rejects.toThrow(ModelMismatchError);
    const other = T5ForConditionalGeneration.random(
      { d_model: 16, d_kv: 4, num_heads: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1, vocab_size: 128, feed_forward_proj: 'gated-gelu', relative_attention_num_buckets: 8 },
      1,
    );
    other.addAdapter('b', { method: 'testbias' }, { seed: 7 });
    await expect(new Trainer(other, opts({ adapterDrop: 0 })).loadCheckpoint(ckdir)).rejects.toThrow(ModelMismatchError);
    other.dispose();
  });

  it('dropout is on in training (per-step seeds) and off in evaluation', async () => {
    const m = T5ForConditionalGeneration.random(
      {
        d_model: 16,
        d_kv: 4,
        num_heads: 2,
        d_ff: 32,
        num_layers: 1,
        num_decoder_layers: 1,
        vocab_size: 128,
        feed_forward_proj: 'gated-gelu',
        relative_attention_num_buckets: 8,
        dropout_rate: 0.5,
      },
      2,
    );
    m.addAdapter('b', { method: 'testbias' }, { seed: 1 });
    const rows = [train[0]];
    const run = async (baseDropout: boolean) => {
      const t = new Trainer(m, { adapters: 'b', trainData: rows, maxSteps: 3, batchSize: 1, optimizer: 'sgd', lr: 1e-30, shuffle: false, baseDropout });
      const r = await t.train();
      const e1 = await t.evaluate(rows);
      const e2 = await t.evaluate(rows);
      t.dispose();
      return { losses: r.losses, e1: e1.loss, e2: e2.loss };
    };
    const on = await run(true);
    expect(new Set(on.losses).size).toBe(3); // a fresh dropout mask each step
    expect(on.e1).toBe(on.e2);
    const plain = m.loss({ inputIds: [train[0].inputIds], labels: [train[0].targetIds] });
    expect(Math.abs(on.e1 - (await plain.data())[0])).toBeLessThan(1e-6);
    plain.dispose();
    const off = await run(false);
    expect(new Set(off.losses).size).toBe(1);
    m.dispose();
  });

  it('AdapterDrop: skipped layers are set per step and restored after', async () => {
    fresh();
    const seen: number[][] = [];
    const orig = model.adapters.setActiveAdapters.bind(model.adapters);
    model.adapters.setActiveAdapters = (c, o) => {
      if (o?.skipLayers) seen.push([...o.skipLayers]);
      orig(c, o);
    };
    try {
      expect(() => new Trainer(model, opts({ adapterDrop: 2 }))).toThrow(/adapterDrop maxLayers must be an integer in \[0, 1\]/);
      const t = new Trainer(model, opts({ maxSteps: 8, adapterDrop: 1 }));
      await t.train();
      t.dispose();
    } finally {
      model.adapters.setActiveAdapters = orig;
    }
    expect(model.adapters.skippedLayers.size).toBe(0);
    const drops = seen.filter((s) => s.length > 0);
    expect(drops.length).toBeGreaterThan(0);
    // only the lowest layer of each stack (encoder 0, decoder 2)
    for (const s of drops) expect(s).toEqual([0, 2]);
  });
});
