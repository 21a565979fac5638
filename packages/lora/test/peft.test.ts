import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf, initBackend, expectNoLeaks } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { ConfigError, UnsupportedError, WeightError, readSafetensors, readTorchCheckpoint, writeSafetensors, type AdapterFiles } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, PEFT_IA3_DIR, PEFT_LORA_BIN_DIR, PEFT_LORA_DIR, inputs, labels, logitsOf, maxDiff, readJson, to2d } from './helpers.js';

const ref = readJson(`${PEFT_LORA_DIR}/reference.json`);
const peftConfig = readJson(`${PEFT_LORA_DIR}/adapter_config.json`);
const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-lora-'));
const bytesOf = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`PEFT LoRA fixture on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      const name = await model.loadAdapter(PEFT_LORA_DIR);
      expect(name).toBe('peft-lora');
      model.setActiveAdapters('peft-lora');
    });
    afterAll(() => model.dispose());

    it('logits within 1e-4 of PEFT', async () => {
      const out = await logitsOf(model);
      expect(out.shape).toEqual(ref.logits.shape);
      expect(maxDiff(out.data, ref.logits.data)).toBeLessThan(1e-4);
    });

    it('the same adapter as PEFT saved it with torch.save (adapter_model.bin) gives the same logits and greedy ids', async () => {
      const name = await model.loadAdapter(PEFT_LORA_BIN_DIR);
      expect(name).toBe('peft-lora-bin');
      model.setActiveAdapters(name);
      const out = await logitsOf(model);
      expect(maxDiff(out.data, ref.logits.data)).toBeLessThan(1e-4);
      expect(await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 })).toEqual(to2d(ref.greedy_ids));
      model.deleteAdapter(name);
      model.setActiveAdapters('peft-lora');
    });

    it('greedy and 3-beam ids identical to PEFT', async () => {
      expect(await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 })).toEqual(to2d(ref.greedy_ids));
      const beam = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8, numBeams: 3, earlyStopping: true, lengthPenalty: 1.0 });
      expect(beam).toEqual(to2d(ref.beam3_ids));
      const expected = to2d(ref.task_greedy_ids);
      expect(await model.generate({ inputIds: to2d(ref.task_inputs), maxNewTokens: expected[0].length - 1 })).toEqual(expected);
    });

    it('loss and LoRA gradients match PEFT (1e-4 relative to max magnitude)', async () => {
      model.trainAdapter('peft-lora');
      const vars = model.adapters.adapterVariables('peft-lora');
      const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar, [...vars.values()]);
      const loss = (await value.data())[0];
      expect(Math.abs(loss - ref.loss) / ref.loss).toBeLessThan(1e-5);
      const names = Object.keys(ref.grads);
      expect(names.length).toBe(vars.size);
      for (const peftName of names) {
        const m = /^base_model\.model\.(.+)\.(lora_A|lora_B)\.default\.weight$/.exec(peftName)!;
        const v = vars.get(`${m[1]}.${m[2]}`)!;
        const g = grads[v.name];
        // Ours is tfjs layout ([in, r] / [r, out]); PEFT's is its transpose.
        const gt = g.transpose();
        const ours = (await gt.data()) as Float32Array;
        const expected = ref.grads[peftName];
        expect(gt.shape).toEqual(expected.shape);
        gt.dispose();
        const scale = Math.max(...expected.data.map(Math.abs));
        expect(maxDiff(ours, expected.data) / scale, peftName).toBeLessThan(1e-4);
      }
      tf.dispose([value, ...Object.values(grads)]);
    });

    it('merged logits equal unmerged and PEFT merged; unmerge restores kernels exactly', async () => {
      const before = new Map<string, Float32Array>();
      for (const [k, t] of model.baseTensors()) before.set(k, (await t.data()) as Float32Array);
      const unmerged = await logitsOf(model);
      model.mergeAdapter('peft-lora');
      const merged = await logitsOf(model);
      expect(maxDiff(merged.data, unmerged.data)).toBeLessThan(1e-5);
      expect(maxDiff(merged.data, ref.merged_logits.data)).toBeLessThan(1e-4);
      model.unmergeAdapter('peft-lora');
      for (const [k, t] of model.baseTensors()) expect(maxDiff((await t.data()) as Float32Array, before.get(k)!), k).toBeLessThanOrEqual(1e-6);
      expect(maxDiff((await logitsOf(model)).data, unmerged.data)).toBe(0);
    });

    it('export to PEFT and re-import gives identical logits', async () => {
      const dir = join(tmp, `exported-${backend}`);
      await model.saveAdapter(dir, 'peft-lora', { format: 'peft' });
      const cfg = readJson(join(dir, 'adapter_config.json'));
      expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, task_type: 'SEQ_2_SEQ_LM', bias: 'none', target_modules: ['q', 'v'] });
      // Same tensor names, shapes and values as the file PEFT wrote.
      const mine = readSafetensors(new Uint8Array(readFileSync(join(dir, 'adapter_model.safetensors')))).tensors;
      const theirs = readSafetensors(new Uint8Array(readFileSync(join(PEFT_LORA_DIR, 'adapter_model.safetensors')))).tensors;
      expect([...mine.keys()].sort()).toEqual([...theirs.keys()].sort());
      for (const [k, t] of theirs) expect(maxDiff(mine.get(k)!.data as Float32Array, t.data as Float32Array), k).toBe(0);
      const name = await model.loadAdapter(dir, { name: 'reimported' });
      const a = await logitsOf(model);
      model.setActiveAdapters(name);
      const b = await logitsOf(model);
      expect(maxDiff(a.data, b.data)).toBe(0);
      model.deleteAdapter(name);
      model.setActiveAdapters('peft-lora');
    });

    it("safeSerialization: false exports adapter_model.bin: torch.save's archive 'adapter_model', the tensors of PEFT's own .bin bit for bit, identical logits", async () => {
      const dir = join(tmp, `exported-bin-${backend}`);
      await model.saveAdapter(dir, 'peft-lora', { format: 'peft', safeSerialization: false });
      expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.bin']);
      const bin = new Uint8Array(readFileSync(join(dir, 'adapter_model.bin')));
      expect(new TextDecoder().decode(bin.subarray(30, 30 + 'adapter_model/data.pkl'.length))).toBe('adapter_model/data.pkl');
      const mine = readTorchCheckpoint(bin).tensors;
      const theirs = readTorchCheckpoint(new Uint8Array(readFileSync(join(PEFT_LORA_BIN_DIR, 'adapter_model.bin')))).tensors;
      expect([...mine.keys()].sort()).toEqual([...theirs.keys()].sort());
      for (const [k, t] of theirs) {
        expect(mine.get(k)!.shape, k).toEqual(t.shape);
        expect(bytesOf(mine.get(k)!.data).equals(bytesOf(t.data)), k).toBe(true);
      }
      // Re-saved as safetensors into the same directory: exactly one weights file is left.
      const name = await model.loadAdapter(dir, { name: 'from-bin' });
      const a = await logitsOf(model);
      model.setActiveAdapters(name);
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBe(0);
      await model.saveAdapter(dir, name, { format: 'peft' });
      expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      await expect(model.saveAdapter(dir, name, { safeSerialization: false })).rejects.toThrow(/safeSerialization: false .* adapterkit's own format/);
      await expect(model.saveAdapter(dir, name, { format: 'peft', safeSerialization: 'no' as unknown as boolean })).rejects.toThrow(ConfigError);
      model.deleteAdapter(name);
      model.setActiveAdapters('peft-lora');
    });

    it('serializeAdapterAsync gives the bytes saveAdapter writes, in both formats (browser downloads)', async () => {
      for (const format of ['peft', 'adapterkit'] as const) {
        const dir = join(tmp, `serialized-${format}-${backend}`);
        await model.saveAdapter(dir, 'peft-lora', { format });
        const files = await model.adapters.serializeAdapterAsync('peft-lora', { format });
        expect(Object.keys(files).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
        for (const [f, bytes] of Object.entries(files)) expect(Buffer.from(bytes).equals(readFileSync(join(dir, f))), `${format} ${f}`).toBe(true);
      }
      await expect(model.adapters.serializeAdapterAsync('peft-lora', { format: 'onnx' as 'peft' })).rejects.toThrow(/format must be/);
      await expect(model.adapters.serializeAdapterAsync('peft-lora', { fromat: 'peft' } as object)).rejects.toThrow(/unknown option 'fromat'/);
    });

    it('adapterkit save/load round trip keeps the PEFT origin and the logits', async () => {
      const dir = join(tmp, `saved-${backend}`);
      await model.saveAdapter(dir, 'peft-lora');
      const name = await model.loadAdapter(dir, { name: 'roundtrip' });
      expect((model.adapters.adapterConfig(name) as any).peft?.peft_type).toBe('LORA');
      const a = await logitsOf(model);
      model.setActiveAdapters(name);
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBe(0);
      // ...and it still exports to the same PEFT config.
      const dir2 = join(tmp, `saved-peft-${backend}`);
      await model.saveAdapter(dir2, name, { format: 'peft' });
      expect(readJson(join(dir2, 'adapter_config.json')).target_modules).toEqual(['q', 'v']);
      model.deleteAdapter(name);
      model.setActiveAdapters('peft-lora');
    });

    it('loading, saving, averaging, merging and deleting adapters leak no tensors', async () => {
      const dir = join(tmp, `leak-${backend}`);
      await expectNoLeaks(async () => {
        const a = await model.loadAdapter(PEFT_LORA_DIR, { name: 'leak-a' });
        await model.saveAdapter(dir, a);
        const b = await model.loadAdapter(dir, { name: 'leak-b' });
        model.averageAdapter('leak-avg', [a, b], [0.5, 0.5]);
        model.mergeAdapter('leak-avg');
        model.unmergeAdapter('leak-avg');
        model.mergeAdapter(a);
        for (const n of [a, b, 'leak-avg']) model.deleteAdapter(n); // deleting a merged adapter unmerges it
      }, 'adapter life cycle');
      model.setActiveAdapters('peft-lora');
      expect(maxDiff((await logitsOf(model)).data, ref.logits.data)).toBeLessThan(1e-4);
    });

    it('refuses unsupported PEFT options, naming the option', () => {
      const files = {
        'adapter_config.json': new TextEncoder().encode(JSON.stringify(peftConfig)),
        'adapter_model.safetensors': new Uint8Array(readFileSync(`${PEFT_LORA_DIR}/adapter_model.safetensors`)),
      };
      const cases: [string, unknown][] = [
        ['rank_pattern', { q: 8 }],
        ['alpha_pattern', { q: 8 }],
        ['layers_to_transform', [0]],
        ['bias', 'all'],
        ['modules_to_save', ['lm_head']],
        ['fan_in_fan_out', true],
        ['lora_bias', true],
        // saved without PEFT's conversion: deltas against a base PEFT modified at initialisation
        ['init_lora_weights', 'pissa'],
        ['init_lora_weights', 'pissa_niter_4'],
        ['init_lora_weights', 'olora'],
        ['init_lora_weights', 'corda'],
        ['init_lora_weights', 'loftq'],
      ];
      for (const [option, value] of cases) {
        const cfg = { ...peftConfig, [option]: value };
        const f = { ...files, 'adapter_config.json': new TextEncoder().encode(JSON.stringify(cfg)) };
        let err: unknown;
        try {
          model.adapters.loadAdapterFiles(f, { name: `bad-${option}` });
        } catch (e) {
          err = e;
        }
        expect(err, option).toBeInstanceOf(UnsupportedError);
        expect((err as UnsupportedError).option).toBe(option);
        expect((err as Error).message).toContain(option);
        expect(model.adapters.hasAdapter(`bad-${option}`)).toBe(false);
      }
      // initialisations that leave the base alone load (true, false, 'gaussian', 'eva', 'orthogonal')
      for (const init of [true, false, 'gaussian', 'eva', 'orthogonal']) {
        const cfg = { ...peftConfig, init_lora_weights: init };
        const name = model.adapters.loadAdapterFiles({ ...files, 'adapter_config.json': new TextEncoder().encode(JSON.stringify(cfg)) }, { name: `init-${init}` });
        model.deleteAdapter(name);
      }
      // Unknown keys are ignored; a regex target_modules is a full match (here: decoder only).
      const regex = { ...peftConfig, some_future_option: 1, target_modules: '.*decoder.*(SelfAttention|EncDecAttention)\\.(q|v)' };
      expect(() => model.adapters.loadAdapterFiles({ ...files, 'adapter_config.json': new TextEncoder().encode(JSON.stringify(regex)) }, { name: 'dec-only' })).toThrow(
        WeightError,
      );
    });
  });
}

describe('PEFT target_modules semantics', () => {
  it('a regex target_modules is a full match; exclude_modules removes sites', async () => {
    await initBackend('cpu');
    const model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    const { tensors } = readSafetensors(new Uint8Array(readFileSync(`${PEFT_LORA_DIR}/adapter_model.safetensors`)));
    /** Loads the fixture's tensors whose names pass `keep`, under a modified config; returns the config built. */
    const load = (name: string, cfg: Record<string, unknown>, keep: (k: string) => boolean) => {
      const kept = new Map([...tensors].filter(([k]) => keep(k)).map(([k, t]) => [k, { shape: t.shape, data: t.data as Float32Array }]));
      const files = { 'adapter_config.json': new TextEncoder().encode(JSON.stringify({ ...peftConfig, ...cfg })), 'adapter_model.safetensors': writeSafetensors(kept) };
      model.adapters.loadAdapterFiles(files, { name });
      return { config: model.adapters.adapterConfig(name) as any, count: kept.size };
    };
    const dec = load('dec', { target_modules: '.*decoder.*(SelfAttention|EncDecAttention)\\.(q|v)' }, (k) => k.includes('.decoder.'));
    expect(dec.config.target_modules.every((k: string) => k.startsWith('decoder.'))).toBe(true);
    expect(dec.config.target_modules).toHaveLength(dec.count / 2);
    // exclude_modules as a list: exact or '.'-suffix match, as PEFT.
    const noCross = load('no-cross', { exclude_modules: ['layer.1.EncDecAttention.q', 'layer.1.EncDecAttention.v'] }, (k) => !k.includes('EncDecAttention'));
    expect(noCross.config.target_modules).toHaveLength(noCross.count / 2);
    expect(noCross.config.target_modules.some((k: string) => k.includes('EncDecAttention'))).toBe(false);
    model.dispose();
  });
});

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`PEFT IA3 fixture (written by PEFT 0.21) on ${backend}`, () => {
    const ia3Ref = readJson(`${PEFT_IA3_DIR}/reference.json`);
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
      expect(await model.loadAdapter(PEFT_IA3_DIR, { name: 'ia3' })).toBe('ia3');
      model.setActiveAdapters('ia3');
    });
    afterAll(() => model.dispose());

    it('loads (keys end in `.ia3_l`, no `.weight`): logits within 1e-4, greedy and 3-beam ids identical', async () => {
      const out = await logitsOf(model);
      expect(maxDiff(out.data, ia3Ref.logits.data)).toBeLessThan(1e-4);
      expect(await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 })).toEqual(to2d(ia3Ref.greedy_ids));
      const beam = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8, numBeams: 3, earlyStopping: true, lengthPenalty: 1.0 });
      expect(beam).toEqual(to2d(ia3Ref.beam3_ids));
    });

    it('loss and IA3 gradients match PEFT (1e-4 relative to max magnitude)', async () => {
      model.trainAdapter('ia3');
      const vars = model.adapters.adapterVariables('ia3');
      const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels }) as tf.Scalar, [...vars.values()]);
      expect(Math.abs((await value.data())[0] - ia3Ref.loss) / ia3Ref.loss).toBeLessThan(1e-5);
      const names = Object.keys(ia3Ref.grads);
      expect(names.length).toBe(vars.size);
      for (const peftName of names) {
        const key = /^base_model\.model\.(.+)\.ia3_l\.default$/.exec(peftName)![1];
        const v = vars.get(`${key}.lora_B`) ?? vars.get(`${key}.ia3_in`)!;
        const expected = ia3Ref.grads[peftName];
        const ours = (await grads[v.name].data()) as Float32Array; // [1, n] here, [n, 1] or [1, n] in PEFT: same order
        const scale = Math.max(...expected.data.map(Math.abs));
        expect(maxDiff(ours, expected.data) / scale, peftName).toBeLessThan(1e-4);
      }
      tf.dispose([value, ...Object.values(grads)]);
      model.setActiveAdapters('ia3');
    });

    it("export writes PEFT's own names and values: the same tensors, bit-exact, as the file PEFT wrote", async () => {
      await Promise.all([...model.adapters.adapterVariables('ia3').values()].map((v) => v.data()));
      const exported = model.adapters.runtimeFor('lora')!.exportPeft!('ia3');
      const original = readSafetensors(readFileSync(`${PEFT_IA3_DIR}/adapter_model.safetensors`)).tensors;
      expect([...exported.tensors.keys()].sort()).toEqual([...original.keys()].sort());
      for (const [k, t] of original) {
        expect(exported.tensors.get(k)!.shape, k).toEqual(t.shape);
        expect(Array.from(exported.tensors.get(k)!.data), k).toEqual(Array.from(t.data as Float32Array));
      }
      const peft = readJson(`${PEFT_IA3_DIR}/adapter_config.json`);
      expect(exported.config).toMatchObject({ peft_type: 'IA3', feedforward_modules: peft.feedforward_modules });
      expect([...(exported.config.target_modules as string[])].sort()).toEqual([...peft.target_modules].sort());
    });

    it('the `.ia3_l.weight` variant of the same file loads to the same logits; a vector named both ways is refused', async () => {
      const bytes = readFileSync(`${PEFT_IA3_DIR}/adapter_model.safetensors`);
      const { tensors } = readSafetensors(bytes);
      const renamed = new Map([...tensors].map(([k, t]) => [`${k}.weight`, { shape: t.shape, data: t.data as Float32Array }]));
      const config = readFileSync(`${PEFT_IA3_DIR}/adapter_config.json`);
      const name = model.adapters.loadAdapterFiles({ 'adapter_config.json': config, 'adapter_model.safetensors': writeSafetensors(renamed) }, { name: 'ia3-variant' });
      model.setActiveAdapters(name);
      expect(maxDiff((await logitsOf(model)).data, ia3Ref.logits.data)).toBeLessThan(1e-4);
      model.setActiveAdapters('ia3');
      model.deleteAdapter(name);
      const [first] = tensors.keys();
      const both = new Map([...tensors].map(([k, t]) => [k, { shape: t.shape, data: t.data as Float32Array }]));
      both.set(`${first}.weight`, both.get(first)!);
      expect(() => model.adapters.loadAdapterFiles({ 'adapter_config.json': config, 'adapter_model.safetensors': writeSafetensors(both) }, { name: 'ia3-both' })).toThrow(/twice/);
      expect(model.adapters.hasAdapter('ia3-both')).toBe(false);
    });
  });
}

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`PEFT IA3 and rsLoRA imports on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());

    /** A PEFT IA3 adapter as PEFT's T5 defaults make it: k, v scaled on the output side, wo on its input. */
    function ia3Files(): AdapterFiles {
      const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
      let seed = 1;
      const rand = (n: number) => Float32Array.from({ length: n }, () => 1 + 0.5 * Math.sin(seed++ * 12.9898));
      for (const s of model.linearSites()) {
        if (s.role === 'key' || s.role === 'value') tensors.set(`base_model.model.${s.key}.ia3_l.weight`, { shape: [s.outFeatures, 1], data: rand(s.outFeatures) });
        if (s.role === 'ffn_out') tensors.set(`base_model.model.${s.key}.ia3_l.weight`, { shape: [1, s.inFeatures], data: rand(s.inFeatures) });
      }
      const config = {
        peft_type: 'IA3',
        task_type: 'SEQ_2_SEQ_LM',
        target_modules: ['k', 'v', 'wo'],
        feedforward_modules: ['wo'],
        fan_in_fan_out: false,
        modules_to_save: null,
        init_ia3_weights: true,
      };
      return { 'adapter_config.json': new TextEncoder().encode(JSON.stringify(config)), 'adapter_model.safetensors': writeSafetensors(tensors) };
    }

    it('IA3 (a hand-made file in the `.ia3_l.weight` variant): output vectors scale k/v outputs, feed-forward vectors scale the input of wo', async () => {
      const files = ia3Files();
      const name = model.adapters.loadAdapterFiles(files, { name: 'ia3' });
      model.setActiveAdapters(name);
      const hooked = await logitsOf(model);
      model.setActiveAdapters(null);
      // Independent check: fold each vector into its kernel by hand (columns for output side, rows for input side).
      const { tensors } = readSafetensors(files['adapter_model.safetensors']);
      const saved = new Map<string, tf.Tensor>();
      for (const [k, t] of tensors) {
        const key = k.slice('base_model.model.'.length, -'.ia3_l.weight'.length);
        const W = model.readLinearWeight(key);
        saved.set(key, W.clone());
        const l = tf.tensor(t.data as Float32Array, t.shape[0] === 1 ? [t.shape[1], 1] : [1, t.shape[0]]);
        model.writeLinearWeight(
          key,
          tf.tidy(() => W.mul(l)),
        );
        l.dispose();
      }
      const manual = await logitsOf(model);
      for (const [key, W] of saved) model.writeLinearWeight(key, W);
      expect(maxDiff(hooked.data, manual.data)).toBeLessThan(1e-4);
      // Merge does the same; export → import round-trips.
      model.setActiveAdapters(name);
      model.mergeAdapter(name);
      expect(maxDiff((await logitsOf(model)).data, hooked.data)).toBeLessThan(1e-4);
      model.unmergeAdapter(name);
      // Read the variables asynchronously first (as saveAdapter does): WebGPU cannot read synchronously.
      await Promise.all([...model.adapters.adapterVariables(name).values()].map((v) => v.data()));
      const exported = model.adapters.runtimeFor('lora')!.exportPeft!(name);
      expect(exported.config).toMatchObject({ peft_type: 'IA3', target_modules: ['k', 'v', 'wo'], feedforward_modules: ['wo'] });
      const again = model.adapters.loadAdapterFiles(
        { 'adapter_config.json': new TextEncoder().encode(JSON.stringify(exported.config)), 'adapter_model.safetensors': writeSafetensors(exported.tensors) },
        { name: 'ia3-again' },
      );
      model.setActiveAdapters(again);
      expect(maxDiff((await logitsOf(model)).data, hooked.data)).toBe(0);
      model.deleteAdapter(again);
      model.deleteAdapter(name);
    });

    it('rsLoRA scaling is lora_alpha / sqrt(r)', async () => {
      const weights = new Uint8Array(readFileSync(`${PEFT_LORA_DIR}/adapter_model.safetensors`));
      const plain = model.adapters.loadAdapterFiles(
        { 'adapter_config.json': new TextEncoder().encode(JSON.stringify(peftConfig)), 'adapter_model.safetensors': weights },
        { name: 'plain' },
      );
      // alpha / r = 8 / 4 = 2 = 4 / sqrt(4)
      const rs = { ...peftConfig, use_rslora: true, lora_alpha: 4 };
      const rsName = model.adapters.loadAdapterFiles({ 'adapter_config.json': new TextEncoder().encode(JSON.stringify(rs)), 'adapter_model.safetensors': weights }, { name: 'rs' });
      model.setActiveAdapters(plain);
      const a = await logitsOf(model);
      model.setActiveAdapters(rsName);
      expect(maxDiff((await logitsOf(model)).data, a.data)).toBeLessThanOrEqual(1e-6);
      expect(maxDiff(a.data, ref.logits.data)).toBeLessThan(1e-4);
      model.deleteAdapter(plain);
      model.deleteAdapter(rsName);
    });
  });
}
