import { spawn } from 'node:child_process';
import { mkdirSync, symlinkSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { BUNDLED_MODEL, createAdapterServer, padRows, trimGenerated, type AdapterServer, type ServeOptions } from '../src/index.js';
import { CLI, addNoisyAdapter, adapterConfigForTests, randomRows, requireBuiltCli, tempDir } from './helpers.js';

const NAMES = ['alpha', 'beta', 'gamma'];
const POISON = [7, 7, 7, 7, 1];

async function post(base: string, path: string, body: unknown, o: { raw?: boolean; headers?: Record<string, string>; signal?: AbortSignal } = {}) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...o.headers },
    body: o.raw ? (body as string) : JSON.stringify(body),
    signal: o.signal ?? AbortSignal.timeout(60_000),
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as any };
}

/** A request with headers fetch will not send (Host). */
function rawRequest(port: number, o: { method?: string; path: string; headers: Record<string, string>; body?: string }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: o.method ?? 'GET', path: o.path, headers: o.headers }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

/** Reads a Server-Sent Events response into its events. */
async function readEvents(res: Response): Promise<{ event: string; data: any }[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((b) => b.trim())
    .map((b) => {
      const event = /^event: (.*)$/m.exec(b)![1];
      return { event, data: JSON.parse(/^data: (.*)$/m.exec(b)![1]) };
    });
}

async function start(options: ServeOptions): Promise<{ srv: AdapterServer; base: string; port: number }> {
  const srv = createAdapterServer(options);
  const port = await srv.listen(0);
  return { srv, base: `http://127.0.0.1:${port}`, port };
}

describe('serve', () => {
  let model: T5ForConditionalGeneration;
  let main: Awaited<ReturnType<typeof start>>;
  const adapterDir = tempDir('adapterkit-serve-');
  const logs: string[] = [];

  const alone = async (r: { adapter?: string | null; composition?: any; inputs: number[][]; params?: Record<string, unknown> }) => {
    const { inputIds, attentionMask } = padRows(r.inputs);
    const out = await model.generate({ inputIds, attentionMask, maxNewTokens: 20, ...r.params, composition: r.composition ?? r.adapter ?? null });
    return out.map((x) => trimGenerated(x, 1));
  };

  beforeAll(async () => {
    await initBackend('wasm');
    model = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    const config = adapterConfigForTests(model);
    NAMES.forEach((n, i) => addNoisyAdapter(model, n, config, 100 + i));
    for (const n of NAMES) await model.saveAdapter(join(adapterDir, n), n);
    main = await start({
      adapters: NAMES.map((n) => [n, join(adapterDir, n)]),
      maxInputs: 8,
      maxRequestTokens: 16_384,
      adapterRoot: adapterDir,
      poisonInput: POISON,
      log: (l) => logs.push(l),
    });
  });
  afterAll(async () => {
    await main?.srv.close();
    model?.dispose();
  });

  it('GET /health, /v1/adapters and /metrics', async () => {
    const h = await fetch(`${main.base}/health`);
    expect(h.status).toBe(200);
    const health = await h.json();
    expect(health.status).toBe('ok');
    expect(health.worker.status).toBe('ready');
    const a = await (await fetch(`${main.base}/v1/adapters`)).json();
    expect(a.adapters.map((x: { name: string }) => x.name)).toEqual(NAMES);
    await post(main.base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 6, 1]], params: { maxNewTokens: 3 } });
    const m = await fetch(`${main.base}/metrics`);
    expect(m.headers.get('content-type')).toContain('text/plain');
    const text = await m.text();
    for (const name of [
      'adapterkit_requests_total',
      'adapterkit_generated_tokens_total',
      'adapterkit_batch_rows_bucket',
      'adapterkit_queue_depth',
      'adapterkit_request_duration_seconds_bucket',
    ])
      expect(text).toContain(name);
    expect(text).toMatch(/adapterkit_requests_total\{route="\/v1\/generate",status="200"\} \d+/);
    // one JSON log line per answered request
    const lines = logs.map((l) => JSON.parse(l)).filter((l) => l.path === '/v1/generate');
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[lines.length - 1]).toMatchObject({ method: 'POST', status: 200, adapter: 'alpha', rows: 1 });
  });

  it('120 concurrent mixed requests (3 adapters + base, mixed lengths, greedy, sampling, processors) batch continuously and each equals the request alone', async () => {
    const tenants = [...NAMES, null];
    // per-request parameters within one batch: greedy, seeded sampling, logits processors
    const extra: Record<string, unknown>[] = [
      {},
      { doSample: true, seed: 5, topK: 30 },
      {},
      { repetitionPenalty: 2.5, noRepeatNgramSize: 2 },
      { doSample: true, seed: 9, temperature: 0.7, topP: 0.9 },
    ];
    const requests = Array.from({ length: 120 }, (_, i) => ({
      adapter: tenants[(i * 7) % 4],
      inputs: randomRows(1 + (i % 2), 1000 + i, 3 + (i % 11)),
      params: { maxNewTokens: 2 + ((i * 5) % 15), ...extra[i % extra.length] },
    }));
    const expected: number[][][] = [];
    for (const r of requests) expected.push(await alone(r));
    expect(new Set(expected.map((e) => JSON.stringify(e[0]))).size).toBeGreaterThan(50);
    const stepsBefore = main.srv.stats.steps;
    const answers = await Promise.all(requests.map((r) => post(main.base, '/v1/generate', r)));
    answers.forEach((a, i) => {
      expect(a.status, JSON.stringify(a.body)).toBe(200);
      expect(
        a.body.outputs.map((o: { ids: number[] }) => o.ids),
        `request ${i} (${requests[i].adapter})`,
      ).toEqual(expected[i]);
    });
    // continuous batching: far fewer decode steps than the requests' tokens one at a time
    const steps = main.srv.stats.steps - stepsBefore;
    const sequentialSteps = requests.reduce((a, r) => a + r.params.maxNewTokens, 0);
    expect(steps).toBeLessThan(sequentialSteps / 4);
  });

  it('"stream": true answers Server-Sent Events, one stream per request even when batched; streamed text equals the final text', async () => {
    const texts = ['translate English to German: hello world', 'summarize: the quick brown fox jumps over the lazy dog', 'a b c d e f'];
    const bodies = texts.map((t, i) => ({ adapter: NAMES[i], inputs: [t, `${t} again`], params: { maxNewTokens: 24 } }));
    const plain = await Promise.all(bodies.map((b) => post(main.base, '/v1/generate', b)));
    const streams = await Promise.all(
      bodies.map((b) => fetch(`${main.base}/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...b, stream: true }) })),
    );
    for (const [i, res] of streams.entries()) {
      expect(res.headers.get('content-type')).toContain('text/event-stream');
      const events = await readEvents(res);
      const done = events.filter((e) => e.event === 'done');
      expect(done).toHaveLength(1);
      expect(events[events.length - 1].event).toBe('done');
      expect(done[0].data).toEqual(plain[i].body);
      const tokens = events.filter((e) => e.event === 'token');
      expect(tokens.length).toBeGreaterThan(1);
      for (let r = 0; r < 2; r++) {
        const streamedIds = tokens.map((e) => e.data.ids[r]).filter((x: number | null) => x !== null);
        expect(streamedIds).toEqual(done[0].data.outputs[r].ids);
        expect(tokens.map((e) => e.data.text[r]).join('')).toBe(done[0].data.outputs[r].text);
      }
    }
  });

  it('compositions and beam search run alone; sampling and logits processors too equal generate', async () => {
    const rows = randomRows(2, 77, 5);
    for (const body of [
      { composition: 'Parallel(alpha,beta)', inputs: rows, params: { maxNewTokens: 6 } },
      { adapter: 'gamma', inputs: rows, params: { maxNewTokens: 6, numBeams: 3 } },
      { adapter: 'beta', inputs: rows, params: { maxNewTokens: 6, doSample: true, seed: 3, topK: 20 } },
      { adapter: 'alpha', inputs: rows, params: { maxNewTokens: 6, repetitionPenalty: 3, noRepeatNgramSize: 2, minNewTokens: 4, badWordsIds: [[7], [9, 10]] } },
    ]) {
      const a = await post(main.base, '/v1/generate', body);
      expect(a.status, JSON.stringify(a.body)).toBe(200);
      const composition = body.composition ? { type: 'Parallel', children: ['alpha', 'beta'] } : undefined;
      expect(a.body.outputs.map((o: { ids: number[] }) => o.ids)).toEqual(await alone({ ...body, composition }));
    }
  });

  it('bad and oversized requests get 4xx JSON errors before any compute, and the server keeps serving', async () => {
    const cases: [unknown, number, string, boolean?][] = [
      [{ adapter: 'nope', inputs: [[5, 1]] }, 404, 'unknown_adapter'],
      ['{"adapter": "alpha", "inputs": [[5, 1]', 400, 'malformed_json', true],
      [{ adapter: 'alpha', inputs: [] }, 400, 'bad_inputs'],
      [{ adapter: 'alpha', inputs: [[5, 999]] }, 400, 'bad_inputs'],
      [{ adapter: 'alpha', inputs: [[5, 1]], bogus: 1 }, 400, 'bad_request'],
      [{ adapter: 'alpha', inputs: Array.from({ length: 9 }, () => [5, 1]) }, 413, 'too_many_inputs'],
      [{ adapter: 'alpha', inputs: [Array.from({ length: 600 }, () => 5)] }, 413, 'input_too_long'],
      [{ adapter: 'alpha', inputs: ['x'.repeat(200_000)] }, 413, 'input_too_long'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { maxNewTokens: -1 } }, 400, 'bad_params'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { maxNewTokens: 1e9 } }, 413, 'over_limit'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { numBeams: 1e6 } }, 413, 'over_limit'],
      [{ adapter: 'alpha', inputs: Array.from({ length: 8 }, () => Array.from({ length: 512 }, () => 5)), params: { maxNewTokens: 256, numBeams: 4 } }, 413, 'request_too_large'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { bogus: 1 } }, 400, 'bad_params'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { badWordsIds: [[]] } }, 400, 'bad_params'],
      [{ adapter: 'alpha', inputs: [[5, 1]], params: { maxNewTokens: 4, minNewTokens: 5 } }, 413, 'over_limit'],
      [{ composition: 'Parallel(alpha', inputs: [[5, 1]] }, 400, 'bad_composition'],
      [{ composition: 'Parallel(alpha,zeta)', inputs: [[5, 1]] }, 404, 'unknown_adapter'],
      [{ composition: `Average(${Array.from({ length: 50 }, () => 'alpha').join(',')})`, inputs: [[5, 1]] }, 422, 'composition_too_large'],
      [[1, 2, 3], 400, 'bad_request'],
    ];
    for (const [body, status, code, raw] of cases) {
      const t0 = performance.now();
      const r = await post(main.base, '/v1/generate', body, { raw });
      expect(r.status, JSON.stringify(body).slice(0, 80)).toBe(status);
      expect(r.body.error.code).toBe(code);
      expect(typeof r.body.error.message).toBe('string');
      expect(performance.now() - t0).toBeLessThan(2000);
    }
    const big = await fetch(`${main.base}/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(2 << 20) });
    expect(big.status).toBe(413);
    expect((await fetch(`${main.base}/v1/nothing`)).status).toBe(404);
    expect((await fetch(`${main.base}/v1/generate`)).status).toBe(405);
    const ok = await post(main.base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 6, 1]], params: { maxNewTokens: 3 } });
    expect(ok.status).toBe(200);
  });

  it('checks its callers: JSON only, Host and Origin (DNS rebinding, cross-site posts)', async () => {
    const body = JSON.stringify({ adapter: 'alpha', inputs: [[5, 6, 1]] });
    // a cross-site page can send text/plain without a preflight: refused
    const plain = await fetch(`${main.base}/v1/generate`, { method: 'POST', headers: { 'content-type': 'text/plain', origin: 'http://evil.example' }, body });
    expect(plain.status).toBe(403);
    const plainSameSite = await fetch(`${main.base}/v1/generate`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body });
    expect(plainSameSite.status).toBe(415);
    const noType = await fetch(`${main.base}/v1/generate`, { method: 'POST', body });
    expect(noType.status).toBe(415);
    const foreign = await post(main.base, '/v1/generate', JSON.parse(body), { headers: { origin: 'http://evil.example' } });
    expect(foreign.status).toBe(403);
    expect(foreign.body.error.code).toBe('bad_origin');
    const own = await post(main.base, '/v1/generate', JSON.parse(body), { headers: { origin: `http://localhost:${main.port}` } });
    expect(own.status).toBe(200);
    const rebound = await rawRequest(main.port, { path: '/v1/adapters', headers: { host: `evil.example:${main.port}` } });
    expect(rebound.status).toBe(403);
    expect(JSON.parse(rebound.body).error.code).toBe('bad_host');
    const local = await rawRequest(main.port, { path: '/v1/adapters', headers: { host: `localhost:${main.port}` } });
    expect(local.status).toBe(200);
  });

  it('an API key guards every route but /health', async () => {
    const s = await start({ adapters: [['alpha', join(adapterDir, 'alpha')]], apiKey: 'sekrit-key-1' });
    try {
      expect((await fetch(`${s.base}/health`)).status).toBe(200);
      for (const path of ['/v1/adapters', '/metrics']) {
        expect((await fetch(`${s.base}${path}`)).status).toBe(401);
        expect((await fetch(`${s.base}${path}`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
        expect((await fetch(`${s.base}${path}`, { headers: { authorization: 'Bearer sekrit-key-1' } })).status).toBe(200);
      }
      expect((await post(s.base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 1]] })).status).toBe(401);
      expect((await post(s.base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 1]] }, { headers: { 'x-api-key': 'sekrit-key-1' } })).status).toBe(200);
      // adapter loading over HTTP is off unless an adapter root is configured
      const off = await post(s.base, '/v1/adapters', { path: join(adapterDir, 'beta') }, { headers: { 'x-api-key': 'sekrit-key-1' } });
      expect(off.status).toBe(403);
      expect(off.body.error.code).toBe('adapter_loading_disabled');
    } finally {
      await s.srv.close();
    }
  });

  it('POST /v1/adapters loads only inside the adapter root (no symlink escapes)', async () => {
    const outsideDir = tempDir('adapterkit-outside-');
    await model.saveAdapter(join(outsideDir, 'evil'), 'beta');
    symlinkSync(join(outsideDir, 'evil'), join(adapterDir, 'link-out'));
    mkdirSync(join(adapterDir, 'sneaky'));
    symlinkSync(join(outsideDir, 'evil', 'adapter_config.json'), join(adapterDir, 'sneaky', 'adapter_config.json'));
    for (const path of [join(outsideDir, 'evil'), '../', 'link-out', 'sneaky', '/etc']) {
      const r = await post(main.base, '/v1/adapters', { path });
      expect(r.status, path).toBe(403);
    }
    expect((await post(main.base, '/v1/adapters', { path: 'beta', name: '../x' })).status).toBe(400);
    expect((await post(main.base, '/v1/adapters', { path: 'missing' })).status).toBe(404);
    const r = await post(main.base, '/v1/adapters', { path: 'beta', name: 'beta2' });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const rows = randomRows(2, 5, 6);
    const [a, b] = await Promise.all([post(main.base, '/v1/generate', { adapter: 'beta2', inputs: rows }), post(main.base, '/v1/generate', { adapter: 'beta', inputs: rows })]);
    expect(a.body.outputs).toEqual(b.body.outputs);
  });

  it('a request that kills the backend: the worker restarts, /health tells the truth, the next request is served', async () => {
    const restarts = main.srv.worker.restarts;
    const poisoned = await post(main.base, '/v1/generate', { adapter: 'alpha', inputs: [POISON] });
    expect(poisoned.status).toBe(500);
    expect(poisoned.body.error.code).toBe('backend_failed');
    expect(poisoned.body.error.message).toContain('memory access out of bounds');
    const during = await fetch(`${main.base}/health`);
    const h = await during.json();
    expect(h.worker.restarts).toBe(restarts + 1);
    if (h.worker.status !== 'ready') expect(during.status).toBe(503);
    // queued while the worker restarts, then served by the new one
    const rows = randomRows(2, 9, 5);
    const next = await post(main.base, '/v1/generate', { adapter: null, inputs: rows, params: { maxNewTokens: 6 } });
    expect(next.status, JSON.stringify(next.body)).toBe(200);
    expect(next.body.outputs.map((o: { ids: number[] }) => o.ids)).toEqual(await alone({ inputs: rows, params: { maxNewTokens: 6 } }));
    expect((await (await fetch(`${main.base}/health`)).json()).status).toBe('ok');
    // adapters loaded over HTTP came back too
    expect((await post(main.base, '/v1/generate', { adapter: 'beta2', inputs: rows })).status).toBe(200);
  });

  it('the event loop answers /health during a long generate; a client that disconnects is cancelled', async () => {
    const long = { adapter: 'gamma', inputs: Array.from({ length: 4 }, (_, i) => randomRows(1, 50 + i, 200)[0]), params: { maxNewTokens: 160 } };
    const t0 = performance.now();
    const full = await post(main.base, '/v1/generate', long);
    const fullMs = performance.now() - t0;
    expect(full.status).toBe(200);
    // the same request again, with /health polled meanwhile
    const pending = post(main.base, '/v1/generate', long);
    const waits: number[] = [];
    const until = performance.now() + Math.min(fullMs * 0.8, 3000);
    while (performance.now() < until) {
      const t = performance.now();
      expect((await fetch(`${main.base}/health`)).status).toBe(200);
      waits.push(performance.now() - t);
    }
    await pending;
    waits.sort((a, b) => a - b);
    console.log(
      `[serve] /health during a ${fullMs.toFixed(0)} ms generate: median ${waits[waits.length >> 1].toFixed(1)} ms, max ${waits[waits.length - 1].toFixed(1)} ms over ${waits.length} polls`,
    );
    expect(waits[waits.length >> 1]).toBeLessThan(100);

    // a streaming client that goes away after its first token: its rows leave the batch
    const stepsBefore = main.srv.stats.steps;
    const ac = new AbortController();
    const res = await fetch(`${main.base}/v1/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...long, stream: true }),
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    ac.abort();
    const t1 = performance.now();
    while ((await (await fetch(`${main.base}/health`)).json()).inFlight > 0 && performance.now() - t1 < 10_000) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 100));
    expect((await (await fetch(`${main.base}/health`)).json()).inFlight).toBe(0);
    const steps = main.srv.stats.steps - stepsBefore;
    expect(steps).toBeLessThan(160);
  });

  it('a bounded queue answers 503 with Retry-After; a request over its time gets 504', async () => {
    const s = await start({ adapters: [['alpha', join(adapterDir, 'alpha')]], maxBatchRows: 1, maxQueue: 1, requestTimeoutMs: 600, maxNewTokensLimit: 4096 });
    try {
      // minNewTokens keeps it from stopping early at </s>: it runs well past the 0.6 s timeout
      const long = { adapter: 'alpha', inputs: [randomRows(1, 5, 500)[0]], params: { maxNewTokens: 4096, minNewTokens: 4096, numBeams: 4 } };
      const first = post(s.base, '/v1/generate', long);
      await new Promise((r) => setTimeout(r, 50));
      const second = post(s.base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 1]] });
      await new Promise((r) => setTimeout(r, 50));
      const third = await post(s.base, '/v1/generate', { adapter: 'alpha', inputs: [[5, 1]] });
      expect(third.status).toBe(503);
      expect(third.body.error.code).toBe('queue_full');
      expect(third.headers.get('retry-after')).toBe('1');
      const [a, b] = await Promise.all([first, second]);
      expect([a.status, b.status]).toContain(504);
    } finally {
      await s.srv.close();
    }
  });

  it('the built CLI serves, and SIGTERM finishes in-flight requests then exits 0', async () => {
    requireBuiltCli();
    const child = spawn(
      process.execPath,
      [CLI, 'serve', '--backend', 'wasm', '--port', '0', '--log-requests', '--adapter', `alpha=${join(adapterDir, 'alpha')}`, '--adapter', join(adapterDir, 'beta')],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ADAPTERKIT_API_KEY: 'from-the-env' } },
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
    const key = { 'x-api-key': 'from-the-env' };
    expect((await post(url, '/v1/generate', { adapter: 'alpha', inputs: [[5, 1]] })).status).toBe(401);
    const rows = randomRows(4, 42, 6);
    const want = await alone({ adapter: 'alpha', inputs: rows, params: { maxNewTokens: 60 } });
    const inflight = Array.from({ length: 6 }, (_, i) =>
      post(url, '/v1/generate', { adapter: i % 2 ? 'beta' : 'alpha', inputs: rows, params: { maxNewTokens: 60 } }, { headers: key }),
    );
    const queued = () => (stderr.match(/"event":"queued"/g) ?? []).length;
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
