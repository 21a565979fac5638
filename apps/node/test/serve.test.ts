import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { BUNDLED_MODEL, createAdapterServer, trimGenerated, type AdapterServer } from '../src/index.js';
import { CLI, addNoisyAdapter, adapterConfigForTests, randomRows, requireBuiltCli, tempDir } from './helpers.js';

const NAMES = ['alpha', 'beta', 'gamma'];
const MAX_NEW = 8;

async function post(base: string, path: string, body: unknown, raw = false) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: raw ? (body as string) : JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  return { status: res.status, body: (await res.json()) as any };
}

describe('serve', () => {
  let model: T5ForConditionalGeneration;
  let srv: AdapterServer;
  let base: string;
  const adapterDir = tempDir('adapterkit-serve-');
  let config: string;

  beforeAll(async () => {
    await initBackend('wasm');
    model = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    config = adapterConfigForTests(model);
    NAMES.forEach((n, i) => addNoisyAdapter(model, n, config, 100 + i));
    for (const n of NAMES) await model.saveAdapter(join(adapterDir, n), n);
    srv = createAdapterServer(model, { windowMs: 5, maxBatchRows: 64, maxInputs: 8 });
    base = `http://127.0.0.1:${await srv.listen(0)}`;
  });
  afterAll(async () => {
    await srv?.close();
    model?.dispose();
  });

  it('GET /health and /v1/adapters', async () => {
    const h = await fetch(`${base}/health`);
    expect(h.status).toBe(200);
    expect((await h.json()).status).toBe('ok');
    const a = await (await fetch(`${base}/v1/adapters`)).json();
    expect(a.adapters.map((x: { name: string }) => x.name)).toEqual(NAMES);
  });

  it('200 concurrent mixed-adapter requests are batched with BatchSplit and each equals the single-adapter result', async () => {
    const requests = Array.from({ length: 200 }, (_, i) => ({ adapter: NAMES[(i * 7) % 3], inputs: randomRows(1 + (i % 2), 1000 + i), params: { maxNewTokens: MAX_NEW } }));
    // Reference: each request alone, straight through model.generate (this is also the sequential baseline).
    let t0 = performance.now();
    const expected: number[][][] = [];
    for (const r of requests) {
      const rows = await model.generate({ inputIds: padded(r.inputs).ids, attentionMask: padded(r.inputs).mask, maxNewTokens: MAX_NEW, composition: r.adapter });
      expected.push(rows.map((x) => trimGenerated(x, 1)));
    }
    const directSeconds = (performance.now() - t0) / 1000;
    // Different adapters must give different answers, or the test would prove nothing.
    expect(new Set(expected.map((e) => JSON.stringify(e[0]))).size).toBeGreaterThan(50);

    const callsBefore = srv.stats.generateCalls;
    t0 = performance.now();
    const answers = await Promise.all(requests.map((r) => post(base, '/v1/generate', r)));
    const batchedSeconds = (performance.now() - t0) / 1000;
    const calls = srv.stats.generateCalls - callsBefore;
    answers.forEach((a, i) => {
      expect(a.status, JSON.stringify(a.body)).toBe(200);
      expect(
        a.body.outputs.map((o: { ids: number[] }) => o.ids),
        `request ${i} (${requests[i].adapter})`,
      ).toEqual(expected[i]);
    });
    expect(calls).toBeLessThan(50);

    // Sequential HTTP baseline: one request at a time on an unbatched server.
    const seq = createAdapterServer(model, { windowMs: 0, maxBatchRows: 1 });
    const seqBase = `http://127.0.0.1:${await seq.listen(0)}`;
    t0 = performance.now();
    for (const r of requests) {
      const a = await post(seqBase, '/v1/generate', r);
      expect(a.status).toBe(200);
    }
    const seqSeconds = (performance.now() - t0) / 1000;
    await seq.close();
    console.log(
      `[serve throughput, wasm, ${config}] 200 requests / ${requests.reduce((a, r) => a + r.inputs.length, 0)} rows: ` +
        `batched ${(200 / batchedSeconds).toFixed(1)} req/s in ${calls} generate calls; sequential HTTP ${(200 / seqSeconds).toFixed(1)} req/s; ` +
        `direct sequential model.generate ${(200 / directSeconds).toFixed(1)} req/s; batched/sequential = ${(seqSeconds / batchedSeconds).toFixed(2)}x`,
    );
  });

  it('composition requests run alone and match the composition run directly', async () => {
    const rows = randomRows(2, 77, 5);
    const a = await post(base, '/v1/generate', { composition: 'Parallel(alpha,beta)', inputs: rows, params: { maxNewTokens: 6 } });
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    const direct = (await model.generate({ inputIds: rows, maxNewTokens: 6, composition: { type: 'Parallel', children: ['alpha', 'beta'] } })).map((x) => trimGenerated(x, 1));
    expect(a.body.outputs.map((o: { ids: number[] }) => o.ids)).toEqual(direct);
  });

  it('text inputs come back with text', async () => {
    const a = await post(base, '/v1/generate', { adapter: 'alpha', inputs: ['hello world'], params: { maxNewTokens: 4 } });
    expect(a.status).toBe(200);
    expect(typeof a.body.outputs[0].text).toBe('string');
  });

  it('bad requests get 4xx JSON errors and the server keeps serving', async () => {
    const cases: [unknown, number, string, boolean?][] = [
      [{ adapter: 'nope', inputs: [[5, 1]] }, 404, 'unknown_adapter'],
      ['{"adapter": "alpha", "inputs": [[5, 1]', 400, 'malformed_json', true],
      [{ adapter: 'alpha', inputs: [] }, 400, 'bad_inputs'],
      [{ adapter: 'alpha', inputs: [[5, 999]] }, 400, 'bad_inputs'],
      [{ adapter: 'alpha', inputs: Array.from({ length: 9 }, () => [5, 1]) }, 413, 'too_many_inputs'],
      [{ adapter: 'alpha', inputs: [Array.from({ length: 600 }, () => 5)] }, 413, 'input_too_long'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { maxNewTokens: -1 } }, 400, 'bad_params'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { bogus: 1 } }, 400, 'bad_params'],
      [{ composition: 'Parallel(alpha', inputs: [[5, 1]] }, 400, 'bad_composition'],
      [{ composition: 'Parallel(alpha,zeta)', inputs: [[5, 1]] }, 404, 'unknown_adapter'],
      [[1, 2, 3], 400, 'bad_request'],
    ];
    for (const [body, status, code, raw] of cases) {
      const r = await post(base, '/v1/generate', body, raw);
      expect(r.status, JSON.stringify(body).slice(0, 80)).toBe(status);
      expect(r.body.error.code).toBe(code);
      expect(typeof r.body.error.message).toBe('string');
    }
    const big = await fetch(`${base}/v1/generate`, { method: 'POST', body: 'x'.repeat(2 << 20) });
    expect(big.status).toBe(413);
    expect((await fetch(`${base}/v1/nothing`)).status).toBe(404);
    expect((await fetch(`${base}/v1/generate`)).status).toBe(405);
    const missing = await post(base, '/v1/adapters', { path: '/nonexistent/adapter' });
    expect(missing.status).toBe(404);
    const ok = await post(base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 6, 1]], params: { maxNewTokens: 3 } });
    expect(ok.status).toBe(200);
  });

  it('POST /v1/adapters loads an adapter directory', async () => {
    const r = await post(base, '/v1/adapters', { path: join(adapterDir, 'beta'), name: 'beta2' });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const rows = randomRows(2, 5, 6);
    const [a, b] = await Promise.all([post(base, '/v1/generate', { adapter: 'beta2', inputs: rows }), post(base, '/v1/generate', { adapter: 'beta', inputs: rows })]);
    expect(a.body.outputs).toEqual(b.body.outputs);
  });

  it('the built CLI serves, and SIGTERM finishes in-flight requests then exits 0', async () => {
    requireBuiltCli();
    const child = spawn(
      process.execPath,
      [CLI, 'serve', '--backend', 'wasm', '--port', '0', '--window-ms', '2000', '--log-requests', '--adapter', join(adapterDir, 'alpha'), '--adapter', join(adapterDir, 'beta')],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`serve did not start: ${stderr}`)), 30_000);
      child.stdout.on('data', (d) => {
        out += d;
        const line = out.split('\n').find((l) => l.includes('listening'));
        if (line) {
          clearTimeout(timer);
          resolve(JSON.parse(line).port);
        }
      });
    });
    const url = `http://127.0.0.1:${port}`;
    const rows = randomRows(4, 42, 6);
    const want = (await model.generate({ inputIds: rows, maxNewTokens: 20, composition: 'alpha' })).map((x) => trimGenerated(x, 1));
    // Six requests queued (a 2 s batching window keeps them waiting) when the signal arrives: all must be answered.
    const inflight = Array.from({ length: 6 }, (_, i) => post(url, '/v1/generate', { adapter: i % 2 ? 'beta' : 'alpha', inputs: rows, params: { maxNewTokens: 20 } }));
    const queued = () => (stderr.match(/queued request/g) ?? []).length;
    const t0 = Date.now();
    while (queued() < 6 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 5));
    expect(queued()).toBe(6);
    child.kill('SIGTERM');
    const answers = await Promise.all(inflight);
    for (const a of answers) expect(a.status).toBe(200);
    expect(answers[0].body.outputs.map((o: { ids: number[] }) => o.ids)).toEqual(want);
    expect(await exited).toBe(0);
    expect(stderr).toContain('SIGTERM');
    await expect(fetch(`${url}/health`)).rejects.toThrow();
  });
});

function padded(rows: number[][]) {
  const T = Math.max(...rows.map((r) => r.length));
  return { ids: rows.map((r) => [...r, ...new Array(T - r.length).fill(0)]), mask: rows.map((r) => [...r.map(() => 1), ...new Array(T - r.length).fill(0)]) };
}
