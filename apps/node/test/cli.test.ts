import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import { readSafetensors } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { BUNDLED_MODEL, buildProgram, parseComposition, shiftExamples, trimGenerated } from '../src/index.js';
import { PEFT_LORA, addNoisyAdapter, randomRows, runCli, tempDir } from './helpers.js';

const COMMANDS = ['generate', 'inspect', 'convert', 'merge', 'train', 'eval', 'bench', 'serve', 'demo'];

describe('adapterkit --help', () => {
  it.each(COMMANDS)('%s --help documents the command and --backend/--json', (name) => {
    const program = buildProgram();
    const cmd = program.commands.find((c) => c.name() === name)!;
    expect(cmd, name).toBeDefined();
    const help = cmd.helpInformation();
    expect(help).toContain(`Usage: adapterkit ${name}`);
    expect(help).toContain('--backend');
    expect(help).toContain('--json');
    expect(cmd.description().length).toBeGreaterThan(10);
  });

  it('the built binary prints help and exits 0; usage errors exit 2; runtime errors exit 1', async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    for (const c of COMMANDS) expect(help.stdout).toContain(c);
    const sub = await runCli(['serve', '--help']);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain('--port');
    const bad = await runCli(['generate', '--no-such-flag']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('unknown option');
    const badBackend = await runCli(['inspect', '--backend', 'quantum']);
    expect(badBackend.code).toBe(2);
    const missing = await runCli(['inspect', '--model', '/nonexistent/model', '--backend', 'cpu']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/FILE_ERROR|not found/);
  });
});

describe('hostile CLI inputs (issue 17)', () => {
  it('generate -c naming an adapter that is not loaded exits 1 naming it (never the base model with exit 0)', async () => {
    const r = await runCli(['generate', '--backend', 'cpu', '--ids', '-c', 'lroa', '--max-new-tokens', '2', '5,6,7,1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ADAPTER_ERROR.*'lroa'/);
    expect(r.stdout).toBe('');
  });

  it('train -c with malformed JSON exits 2 naming --config; a --name with a path exits 1', async () => {
    const dir = tempDir();
    const bad = await runCli(['train', '--backend', 'cpu', '--data', join(dir, 'x.jsonl'), '--out', dir, '-c', '{"method": "lora", r: 4}']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--config is not valid JSON');
    const name = await runCli(['train', '--backend', 'cpu', '--data', join(dir, 'x.jsonl'), '--out', dir, '--name', '../escape']);
    expect(name.code).toBe(1);
    expect(name.stderr).toMatch(/--name "..\/escape" contains a path separator/);
  });
});

describe('composition parser', () => {
  it('parses names, nested blocks and numbers', () => {
    expect(parseComposition('a')).toBe('a');
    expect(parseComposition('Parallel(a, b)')).toEqual({ type: 'Parallel', children: ['a', 'b'] });
    expect(parseComposition('BatchSplit(a,b;2,1)')).toEqual({ type: 'BatchSplit', children: ['a', 'b'], batchSizes: [2, 1] });
    expect(parseComposition('Stack(a,Parallel(b,c))')).toEqual({ type: 'Stack', children: ['a', { type: 'Parallel', children: ['b', 'c'] }] });
    expect(parseComposition('Average(a,b;1,3)')).toMatchObject({ type: 'Average', weights: [0.25, 0.75] });
  });
  it('rejects malformed expressions with a usage error', () => {
    for (const bad of ['Parallel(a,b', 'Foo(a)', 'BatchSplit(a,b)', 'Stack(a;1)', 'a)', '']) expect(() => parseComposition(bad), bad).toThrow(/composition/);
  });
});

describe('commands on the bundled model (wasm)', () => {
  let model: T5ForConditionalGeneration;
  beforeAll(async () => {
    await initBackend('wasm');
    model = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
  });

  it('generate --ids returns the same ids as model.generate', async () => {
    const rows = randomRows(3, 5, 6);
    const r = await runCli(['generate', '--backend', 'wasm', '--ids', '--json', '--max-new-tokens', '10', ...rows.map((x) => x.join(','))]);
    expect(r.code, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout).outputs.map((o: { ids: number[] }) => o.ids);
    const want = (await model.generate({ inputIds: rows, maxNewTokens: 10 })).map((x) => trimGenerated(x, 1));
    expect(got).toEqual(want);
    // Text in, text out, streamed, with stdin input.
    const t = await runCli(['generate', '--backend', 'wasm', '--max-new-tokens', '12'], { input: 'translate english to german: the quick brown fox\n' });
    expect(t.code, t.stderr).toBe(0);
    expect(t.stderr).toMatch(/backend: wasm/);
    expect(t.stdout.trim().length).toBeGreaterThan(0);
    // The streamed text is exactly the final text (whole words, no space after every token).
    const j = await runCli(['generate', '--backend', 'wasm', '--json', '--max-new-tokens', '12', 'translate english to german: the quick brown fox']);
    expect(t.stdout).toBe(`${JSON.parse(j.stdout).outputs[0].text}\n`);
  });

  it('inspect --json reports dims, parameter counts and % trainable', async () => {
    const dir = tempDir();
    const m = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    addNoisyAdapter(m, 'bn', 'seq_bn[reduction_factor=4]', 1);
    await m.saveAdapter(join(dir, 'bn'), 'bn');
    const r = await runCli(['inspect', '--json', '--backend', 'cpu', '--adapter', join(dir, 'bn')]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.backend).toBe('cpu');
    expect(j.model.dims).toMatchObject({ dModel: 32, dKv: 8, numHeads: 4, dFf: 64, numEncoderLayers: 2, numDecoderLayers: 2, vocabSize: 128 });
    expect(j.model.parameters).toBe(model.baseParameterCount());
    const params = [...m.adapters.adapterVariables('bn').values()].reduce((a, v) => a + v.size, 0);
    expect(j.adapters).toEqual([expect.objectContaining({ name: 'bn', method: 'bottleneck', parameters: params })]);
    expect(j.trainablePercent).toBeCloseTo((100 * params) / (params + j.model.parameters), 6);
    m.dispose();
  });

  it('convert PEFT → adapterkit → PEFT round-trips the tensors and the outputs', async () => {
    const dir = tempDir();
    const a = await runCli(['convert', '--backend', 'cpu', '--json', PEFT_LORA, join(dir, 'ak'), '--to', 'adapterkit']);
    expect(a.code, a.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, 'ak', 'adapter_config.json'), 'utf8')).format).toBe('adapterkit');
    const p = await runCli(['convert', '--backend', 'cpu', join(dir, 'ak'), join(dir, 'peft'), '--to', 'peft']);
    expect(p.code, p.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, 'peft', 'adapter_config.json'), 'utf8')).peft_type).toBe('LORA');
    const orig = readSafetensors(new Uint8Array(readFileSync(join(PEFT_LORA, 'adapter_model.safetensors')))).tensors;
    const back = readSafetensors(new Uint8Array(readFileSync(join(dir, 'peft', 'adapter_model.safetensors')))).tensors;
    expect([...back.keys()].sort()).toEqual([...orig.keys()].sort());
    for (const [k, t] of orig) {
      expect(back.get(k)!.shape, k).toEqual(t.shape);
      expect(Array.from(back.get(k)!.data), k).toEqual(Array.from(t.data));
    }
    // The three forms generate the same ids.
    const rows = randomRows(4, 9, 5);
    const ids: number[][][] = [];
    for (const d of [PEFT_LORA, join(dir, 'ak'), join(dir, 'peft')]) {
      const m = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
      const name = await m.loadAdapter(d, { name: 'x' });
      ids.push(await m.generate({ inputIds: rows, maxNewTokens: 8, composition: name }));
      m.dispose();
    }
    expect(ids[1]).toEqual(ids[0]);
    expect(ids[2]).toEqual(ids[0]);
  });

  it('convert --bin writes torch.save files (PEFT adapter_model.bin, adapters pytorch_adapter.bin) that convert back to the same tensors', async () => {
    const dir = tempDir();
    const m = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    addNoisyAdapter(m, 'lo', 'lora[r=2,output_lora=true]', 3);
    await m.saveAdapter(join(dir, 'lo'), 'lo');
    m.dispose();
    const weights = (d: string, f: string) => readSafetensors(new Uint8Array(readFileSync(join(d, f)))).tensors;
    for (const [from, to, file, back, backFile] of [
      [PEFT_LORA, 'peft', 'adapter_model.bin', 'peft', 'adapter_model.safetensors'],
      [join(dir, 'lo'), 'adapters', 'pytorch_adapter.bin', 'adapterkit', 'adapter_model.safetensors'],
    ] as const) {
      const r = await runCli(['convert', '--backend', 'cpu', '--json', from, join(dir, to), '--to', to, '--bin']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ format: to, safeSerialization: false });
      expect(readdirSync(join(dir, to)).sort()).toEqual(['adapter_config.json', file]);
      const b = await runCli(['convert', '--backend', 'cpu', join(dir, to), join(dir, `${to}-back`), '--to', back]);
      expect(b.code, b.stderr).toBe(0);
      const orig = weights(from, backFile);
      const again = weights(join(dir, `${to}-back`), backFile);
      expect([...again.keys()].sort()).toEqual([...orig.keys()].sort());
      for (const [k, t] of orig) expect(Array.from(again.get(k)!.data), k).toEqual(Array.from(t.data));
    }
    const refused = await runCli(['convert', '--backend', 'cpu', PEFT_LORA, join(dir, 'ak'), '--to', 'adapterkit', '--bin']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--bin is for --to peft or --to adapters/);
  });

  it('convert adapterkit → AdapterHub adapters → adapterkit keeps the tensors (bottleneck, LoRA) and the outputs', async () => {
    const dir = tempDir();
    const m = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    addNoisyAdapter(m, 'bn', 'seq_bn[reduction_factor=4]', 2);
    addNoisyAdapter(m, 'lo', 'lora[r=2,output_lora=true]', 3);
    const rows = randomRows(2, 11, 5);
    for (const name of ['bn', 'lo']) {
      await m.saveAdapter(join(dir, name), name);
      const a = await runCli(['convert', '--backend', 'cpu', join(dir, name), join(dir, `${name}-adapters`), '--to', 'adapters']);
      expect(a.code, a.stderr).toBe(0);
      expect(existsSync(join(dir, `${name}-adapters`, 'adapter.safetensors'))).toBe(true);
      expect(JSON.parse(readFileSync(join(dir, `${name}-adapters`, 'adapter_config.json'), 'utf8')).version).toMatch(/^adapters\./);
      const b = await runCli(['convert', '--backend', 'cpu', join(dir, `${name}-adapters`), join(dir, `${name}-back`), '--to', 'adapterkit']);
      expect(b.code, b.stderr).toBe(0);
      const orig = readSafetensors(new Uint8Array(readFileSync(join(dir, name, 'adapter_model.safetensors')))).tensors;
      const back = readSafetensors(new Uint8Array(readFileSync(join(dir, `${name}-back`, 'adapter_model.safetensors')))).tensors;
      expect([...back.keys()].sort()).toEqual([...orig.keys()].sort());
      for (const [k, t] of orig) expect(Array.from(back.get(k)!.data), k).toEqual(Array.from(t.data));
      const loaded = await m.loadAdapter(join(dir, `${name}-adapters`), { name: `${name}-x` });
      expect(await m.generate({ inputIds: rows, maxNewTokens: 6, composition: loaded })).toEqual(await m.generate({ inputIds: rows, maxNewTokens: 6, composition: name }));
    }
    m.dispose();
  });

  it('merge writes an HF checkpoint whose plain generation equals the model + LoRA', async () => {
    const dir = tempDir();
    const r = await runCli(['merge', '--backend', 'cpu', '--json', '--adapter', PEFT_LORA, '--out', join(dir, 'merged')]);
    expect(r.code, r.stderr).toBe(0);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'generation_config.json']) expect(existsSync(join(dir, 'merged', f)), f).toBe(true);
    const merged = await T5ForConditionalGeneration.fromPretrained(join(dir, 'merged'));
    const withLora = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    const name = await withLora.loadAdapter(PEFT_LORA);
    const rows = randomRows(6, 3);
    const { inputIds, attentionMask } = (await import('../src/index.js')).padRows(rows);
    const a = await merged.generate({ inputIds, attentionMask, maxNewTokens: 9 });
    const b = await withLora.generate({ inputIds, attentionMask, maxNewTokens: 9, composition: name });
    expect(a).toEqual(b);
    const la = merged.forward({ inputIds, attentionMask, decoderInputIds: a });
    const lb = withLora.forward({ inputIds, attentionMask, decoderInputIds: a, composition: name });
    const da = (await la.logits.data()) as Float32Array;
    const db = (await lb.logits.data()) as Float32Array;
    let max = 0;
    for (let i = 0; i < da.length; i++) max = Math.max(max, Math.abs(da[i] - db[i]));
    expect(max).toBeLessThan(1e-4);
    merged.dispose();
    withLora.dispose();
  });

  it('demo runs end to end (short) and the reloaded adapter reproduces the outputs', async () => {
    const dir = tempDir();
    const r = await runCli(['demo', '--json', '--steps', '8', '--batch-size', '8', '--out', dir], { timeoutMs: 90_000 });
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.reloadedIdentical).toBe(true);
    expect(j.accuracyBefore).toBeLessThan(0.2); // the base model does shift 1, not shift 2
    expect(j.lastLoss).toBeLessThan(j.firstLoss);
    expect(existsSync(join(dir, 'shift2', 'adapter_model.safetensors'))).toBe(true);
    expect(j.examples).toHaveLength(4);
  });

  it('train writes a checkpoint and resumes from it; eval scores the result', async () => {
    const dir = tempDir();
    const data = join(dir, 'train.jsonl');
    writeFileSync(
      data,
      `${shiftExamples(64, 3)
        .map((e) => JSON.stringify({ input_ids: e.inputIds, labels: e.labels }))
        .join('\n')}\n`,
    );
    const common = ['--backend', 'wasm', '--json', '--data', data, '--out', join(dir, 'out'), '--batch-size', '8', '--config', 'lora[r=4,alpha=8]', '--checkpoint-every', '3'];
    const first = await runCli(['train', ...common, '--steps', '3']);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ resumedFromStep: 0, steps: 3 });
    const second = await runCli(['train', ...common, '--steps', '6']);
    expect(second.code, second.stderr).toBe(0);
    const j = JSON.parse(second.stdout);
    expect(j).toMatchObject({ resumedFromStep: 3, steps: 6 });
    expect(Number.isFinite(j.lastLoss)).toBe(true);
    const ev = await runCli(['eval', '--backend', 'wasm', '--json', '--data', data, '--adapter', join(dir, 'out')]);
    expect(ev.code, ev.stderr).toBe(0);
    const e = JSON.parse(ev.stdout);
    expect(e.examples).toBe(64);
    expect(e.tokenAccuracy).toBeGreaterThanOrEqual(0);
    expect(Number.isFinite(e.loss)).toBe(true);
  });
});
