/**
 * `adapterkit serve`: a multi-adapter HTTP server on node:http.
 *
 * The HTTP thread checks callers (Host, Origin, JSON only, API key), parses and sizes every request
 * before any compute, and keeps a bounded queue. Generation runs in a worker thread (serve-worker.ts) with
 * continuous batching: a greedy request joins the running batch at the next decode step and leaves when
 * it finishes; base-model rows and every adapter's rows share one BatchSplit step. If the backend fails
 * unrecoverably the worker is replaced and the next request is served. `"stream": true` answers
 * Server-Sent Events; `GET /metrics` is Prometheus text; every request is one JSON log line.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError, leavesWithAncestors, parallelChannels, TextStreamer } from '@adapterkit/core';
import { T5Tokenizer } from '@adapterkit/t5';
import { BUNDLED_MODEL, parseComposition } from './common.js';
import { adapterDirInside, checkAdapterName, checkCaller, checkJson, HttpError, type GuardOptions } from './serve-guard.js';
import { serverMetrics } from './serve-metrics.js';
import { type AdapterInfo, type ErrorInfo, type FromWorker, type GenerationParams, type Job, PROCESSOR_PARAMS } from './serve-protocol.js';
import { WorkerSupervisor } from './serve-supervisor.js';

export interface ServeOptions extends GuardOptions {
  /** Hugging Face T5 directory (default: the bundled tiny model). */
  model?: string;
  /** Adapters loaded at start: [name, directory]. */
  adapters?: [string, string][];
  /** Backend of the generation worker (default wasm). */
  backend?: string;
  /** Rows decoding at once (the continuous batch). Default 64. */
  maxBatchRows?: number;
  /**
   * Threads of the native CPU kernels (wasm backend in Node). Default: every processor but one, which the
   * HTTP thread keeps: on a small machine kernel threads that spin beside it slow both down.
   */
  kernelThreads?: number;
  /** Requests waiting for the worker before 503. Default 256. */
  maxQueue?: number;
  /** A request not answered by then gets 504 and is cancelled. Default 120 s. */
  requestTimeoutMs?: number;
  maxBodyBytes?: number;
  maxInputs?: number;
  maxInputTokens?: number;
  /** Characters of one text input (checked before tokenizing). Default 32 × maxInputTokens. */
  maxInputChars?: number;
  maxNewTokensLimit?: number;
  maxBeams?: number;
  /** Decoding rows × (input + new tokens) of one request (beams and Parallel branches count as rows). Default 65536. */
  maxRequestTokens?: number;
  /** Adapters named in one composition. Default 8. */
  maxCompositionAdapters?: number;
  /** Directory adapters may be loaded from over HTTP (`POST /v1/adapters`); absent = off. */
  adapterRoot?: string;
  /** One JSON line per request (and worker events). */
  log?: (line: string) => void;
  /** Also log a line when a request is queued. */
  logRequests?: boolean;
  /** Test-only: a request whose first input is these ids makes the worker's backend fail as wasm does. */
  poisonInput?: number[];
}

export interface ServerStats {
  requests: number;
  completed: number;
  steps: number;
  tokens: number;
}

export interface AdapterServer {
  server: Server;
  /** Starts the worker and listens on 127.0.0.1; port 0 = ephemeral. Resolves to the port. */
  listen(port: number): Promise<number>;
  /** Stops accepting, finishes queued and in-flight work, stops the worker, closes. */
  close(): Promise<void>;
  stats: ServerStats;
  /** The worker supervisor (status, restarts). */
  worker: WorkerSupervisor;
}

/** A request between parsing and its answer. */
interface Pending {
  job: Job;
  res: ServerResponse;
  texts: boolean;
  /** Decoding rows it occupies in the worker (rows × beams × Parallel branches). */
  cost: number;
  started: number;
  firstToken?: number;
  inWorker: boolean;
  timer?: NodeJS.Timeout;
  /** Streaming: ids so far per row, finished flags, emitted text length per row. */
  streamed?: { done: boolean[]; rows: TextStreamer[]; pieces: string[] };
  adapterLabel: string;
}

const KNOWN_PARAMS: readonly string[] = ['maxNewTokens', 'numBeams', 'doSample', 'temperature', 'topK', 'topP', 'seed', ...PROCESSOR_PARAMS];
const KNOWN_FIELDS = ['adapter', 'composition', 'inputs', 'params', 'stream'];

function loadTokenizer(dir: string): T5Tokenizer | undefined {
  const tj = join(dir, 'tokenizer.json');
  if (!existsSync(tj)) return undefined;
  const cfgPath = join(dir, 'tokenizer_config.json');
  return new T5Tokenizer(JSON.parse(readFileSync(tj, 'utf8')), existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, 'utf8')) : {});
}

export function createAdapterServer(options: ServeOptions = {}): AdapterServer {
  const modelDir = resolve(options.model ?? BUNDLED_MODEL);
  const maxBatchRows = options.maxBatchRows ?? 64;
  const maxQueue = options.maxQueue ?? 256;
  const kernelThreads = options.kernelThreads ?? Math.max(1, availableParallelism() - 1);
  if (!Number.isInteger(kernelThreads) || kernelThreads < 1 || kernelThreads > 1024)
    throw new ConfigError(`kernelThreads must be an integer in 1..1024, got ${kernelThreads}`, 'kernelThreads');
  const requestTimeoutMs = options.requestTimeoutMs ?? 120_000;
  const maxBodyBytes = options.maxBodyBytes ?? 1 << 20;
  const maxInputs = options.maxInputs ?? 64;
  const maxInputTokens = options.maxInputTokens ?? 512;
  const maxInputChars = options.maxInputChars ?? 32 * maxInputTokens;
  const maxNewTokensLimit = options.maxNewTokensLimit ?? 256;
  const maxBeams = options.maxBeams ?? 8;
  const maxRequestTokens = options.maxRequestTokens ?? 65_536;
  const maxCompositionAdapters = options.maxCompositionAdapters ?? 8;
  const log = options.log ?? (() => {});
  const tokenizer = loadTokenizer(modelDir);
  const stats: ServerStats = { requests: 0, completed: 0, steps: 0, tokens: 0 };

  const queue: Pending[] = [];
  const inWorker = new Map<number, Pending>();
  let rowsInWorker = 0;
  let nextId = 1;
  let closing = false;
  let port = 0;
  let adapters: AdapterInfo[] = [];
  const loads = new Map<number, { resolve: (name: string) => void; reject: (e: ErrorInfo) => void }>();

  const metrics = serverMetrics({
    queueDepth: () => queue.length,
    inFlight: () => inWorker.size,
    workerUp: () => (worker.status === 'ready' ? 1 : 0),
    maxBatchRows,
  });

  // the model's EOS ids, known once the worker is up (the same after every restart)
  let eos = new Set<number>([1]);
  const worker = new WorkerSupervisor(
    { backend: options.backend ?? 'wasm', modelDir, adapters: [...(options.adapters ?? [])], maxBatchRows, kernelThreads, poisonInput: options.poisonInput },
    {
      message: onWorkerMessage,
      down: (reason) => {
        // Everything the dead worker held is lost: those requests fail; queued ones wait for the new worker.
        for (const p of [...inWorker.values()])
          finish(p, { status: 500, code: 'backend_failed', message: `the backend failed (${reason}); the server restarted its generation worker` });
        for (const l of loads.values()) l.reject({ status: 500, code: 'backend_failed', message: reason });
        loads.clear();
        metrics.restarts.inc();
      },
      up: (info) => {
        adapters = info.adapters;
        eos = new Set([info.eosTokenId ?? 1].flat());
        pump();
      },
      log,
    },
  );

  // ------------------------------------------------------------ queue → worker
  function pump() {
    while (queue.length > 0 && worker.status === 'ready') {
      const p = queue[0];
      // the batch takes a request when its rows fit (an oversized one runs when the worker is empty)
      if (rowsInWorker > 0 && rowsInWorker + p.cost > maxBatchRows) break;
      queue.shift();
      p.inWorker = true;
      inWorker.set(p.job.id, p);
      rowsInWorker += p.cost;
      worker.post({ type: 'generate', job: p.job });
    }
    if (closing && queue.length === 0 && inWorker.size === 0) drained?.();
  }

  function onWorkerMessage(m: FromWorker) {
    if (m.type === 'step') {
      stats.steps++;
      metrics.steps.inc();
      metrics.occupancy.observe(m.rows);
      metrics.batchRows.last = m.rows;
      for (const t of m.tokens) {
        const p = inWorker.get(t.id);
        if (p) streamTokens(p, t.tokens);
      }
    } else if (m.type === 'done') {
      const p = inWorker.get(m.id);
      if (p) finish(p, undefined, m.ids);
    } else if (m.type === 'failed') {
      const p = inWorker.get(m.id);
      if (p) finish(p, m.error);
      const l = loads.get(m.id);
      loads.delete(m.id);
      l?.reject(m.error);
    } else if (m.type === 'loaded') {
      adapters = m.adapters;
      const l = loads.get(m.id);
      loads.delete(m.id);
      l?.resolve(m.name);
    }
  }

  /** Removes a request from the queue or the worker (the worker drops its rows at its next step). */
  function release(p: Pending, cancel: boolean) {
    clearTimeout(p.timer);
    const qi = queue.indexOf(p);
    if (qi >= 0) queue.splice(qi, 1);
    if (inWorker.delete(p.job.id)) {
      rowsInWorker -= p.cost;
      if (cancel) worker.post({ type: 'cancel', id: p.job.id });
    }
    pump();
  }

  const decodeRow = (ids: number[]) => tokenizer!.decode(ids, { skipSpecialTokens: true });

  function outputsOf(p: Pending, ids: number[][]) {
    return ids.map((row) => (p.texts && tokenizer ? { ids: row, text: decodeRow(row) } : { ids: row }));
  }

  function sse(res: ServerResponse, event: string, data: unknown) {
    if (!res.writableEnded && !res.destroyed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  function streamTokens(p: Pending, tokens: number[]) {
    p.firstToken ??= performance.now();
    const s = p.streamed;
    if (!s) return;
    const ids: (number | null)[] = [];
    const text: string[] = [];
    tokens.forEach((tok, r) => {
      if (s.done[r]) {
        ids.push(null);
        text.push('');
        return;
      }
      if (eos.has(tok)) s.done[r] = true;
      ids.push(tok);
      if (p.texts && tokenizer) {
        s.rows[r].put(tok);
        text.push(s.pieces[r]);
        s.pieces[r] = '';
      }
    });
    sse(p.res, 'token', p.texts ? { ids, text } : { ids });
  }

  /** Answers a request (ids, or an error) exactly once. */
  function finish(p: Pending, error?: ErrorInfo, ids?: number[][]) {
    if (p.res.writableEnded) return release(p, false);
    release(p, false);
    const seconds = (performance.now() - p.started) / 1000;
    if (error) {
      if (p.streamed && p.res.headersSent) {
        sse(p.res, 'error', { error: { code: error.code, message: error.message } });
        p.res.end();
      } else send(p.res, error.status, { error: { code: error.code, message: error.message } });
      return;
    }
    stats.completed++;
    const tokens = ids!.reduce((a, r) => a + r.length, 0);
    stats.tokens += tokens;
    metrics.tokens.inc({}, tokens);
    metrics.latency.observe(seconds);
    if (p.firstToken === undefined) p.firstToken = performance.now();
    metrics.firstToken.observe((p.firstToken - p.started) / 1000);
    (p.res as ServerResponse & { tokens?: number }).tokens = tokens;
    if (p.streamed) {
      // the rest of each row's text: the streamed pieces joined equal the final text
      if (p.texts && tokenizer) {
        const s = p.streamed;
        const text = s.rows.map((streamer, r) => {
          streamer.end();
          const rest = s.pieces[r];
          s.pieces[r] = '';
          return rest;
        });
        if (text.some((t) => t)) sse(p.res, 'token', { ids: ids!.map(() => null), text });
      }
      sse(p.res, 'done', { outputs: outputsOf(p, ids!) });
      p.res.end();
    } else send(p.res, 200, { outputs: outputsOf(p, ids!) });
  }

  // ------------------------------------------------------------ request parsing and sizing
  function parseParams(raw: unknown): GenerationParams {
    if (raw === undefined) raw = {};
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new HttpError(400, 'bad_params', 'params must be an object');
    const p = raw as Record<string, unknown>;
    for (const k of Object.keys(p)) if (!KNOWN_PARAMS.includes(k)) throw new HttpError(400, 'bad_params', `unknown param '${k}' (known: ${KNOWN_PARAMS.join(', ')})`);
    const int = (k: string, lo: number, limit: number, dflt: number | undefined) => {
      const v = p[k] ?? dflt;
      if (v === undefined) return undefined;
      if (!Number.isInteger(v) || (v as number) < lo) throw new HttpError(400, 'bad_params', `${k} must be an integer ≥ ${lo}, got ${JSON.stringify(p[k])}`);
      if ((v as number) > limit) throw new HttpError(413, 'over_limit', `${k} ${v} is over this server's limit of ${limit}`);
      return v as number;
    };
    const num = (k: string, lo: number, hi: number) => {
      const v = p[k];
      if (v === undefined) return undefined;
      if (typeof v !== 'number' || !(v > lo && v <= hi)) throw new HttpError(400, 'bad_params', `${k} must be a number in (${lo}, ${hi}], got ${JSON.stringify(v)}`);
      return v;
    };
    if (p.doSample !== undefined && typeof p.doSample !== 'boolean') throw new HttpError(400, 'bad_params', 'doSample must be a boolean');
    const out: GenerationParams = {
      maxNewTokens: int('maxNewTokens', 1, maxNewTokensLimit, 20)!,
      numBeams: int('numBeams', 1, maxBeams, 1)!,
      doSample: (p.doSample as boolean | undefined) ?? false,
    };
    const t = num('temperature', 0, 100);
    const topK = int('topK', 0, 1_000_000, undefined);
    const topP = num('topP', 0, 1);
    const seed = int('seed', 0, 2 ** 31 - 1, undefined);
    if (t !== undefined) out.temperature = t;
    if (topK !== undefined) out.topK = topK;
    if (topP !== undefined) out.topP = topP;
    if (seed !== undefined) out.seed = seed;
    const penalty = num('repetitionPenalty', 0, 1000);
    if (penalty !== undefined) out.repetitionPenalty = penalty;
    const typicalP = num('typicalP', 0, 1);
    if (typicalP !== undefined) out.typicalP = typicalP;
    for (const k of ['noRepeatNgramSize', 'encoderNoRepeatNgramSize'] as const) {
      const v = int(k, 0, maxInputTokens, undefined);
      if (v !== undefined) out[k] = v;
    }
    const minNew = int('minNewTokens', 0, out.maxNewTokens, undefined);
    if (minNew !== undefined) out.minNewTokens = minNew;
    if (p.badWordsIds !== undefined) {
      const bad = p.badWordsIds;
      const ok =
        Array.isArray(bad) && bad.length <= 1024 && bad.every((w) => Array.isArray(w) && w.length > 0 && w.length <= 64 && w.every((id) => Number.isInteger(id) && id >= 0));
      if (!ok) throw new HttpError(400, 'bad_params', 'badWordsIds must be a list (≤ 1024) of non-empty token-id lists (≤ 64 ids each)');
      out.badWordsIds = bad as number[][];
    }
    if (out.doSample && out.numBeams > 1) throw new HttpError(400, 'bad_params', 'doSample cannot be combined with numBeams > 1');
    return out;
  }

  function parseInputs(raw: unknown): { rows: number[][]; texts: boolean } {
    if (!Array.isArray(raw) || raw.length === 0) throw new HttpError(400, 'bad_inputs', 'inputs must be a non-empty array of strings or of token-id arrays');
    if (raw.length > maxInputs) throw new HttpError(413, 'too_many_inputs', `at most ${maxInputs} inputs per request, got ${raw.length}`);
    const texts = raw.every((x) => typeof x === 'string');
    let rows: number[][];
    if (texts) {
      if (!tokenizer) throw new HttpError(400, 'no_tokenizer', 'this model has no tokenizer: send token ids');
      // the length is checked before tokenizing: a huge text would exhaust the tokenizer's stack
      for (const s of raw as string[])
        if (s.length > maxInputChars) throw new HttpError(413, 'input_too_long', `an input has ${s.length} characters, the limit is ${maxInputChars}`);
      rows = (raw as string[]).map((s) => tokenizer.encode(s));
    } else if (raw.every((x) => Array.isArray(x))) {
      const V = worker.info?.vocabSize ?? 0;
      rows = raw as number[][];
      for (const r of rows) {
        if (r.length === 0) throw new HttpError(400, 'bad_inputs', 'an input has no tokens');
        if (r.length > maxInputTokens) break; // reported below, before looking at every id
        for (const t of r) if (!Number.isInteger(t) || t < 0 || t >= V) throw new HttpError(400, 'bad_inputs', `token id ${JSON.stringify(t)} is not an integer in [0, ${V})`);
      }
    } else throw new HttpError(400, 'bad_inputs', 'inputs must be all strings or all arrays of token ids');
    for (const r of rows) if (r.length > maxInputTokens) throw new HttpError(413, 'input_too_long', `an input has ${r.length} tokens, the limit is ${maxInputTokens}`);
    return { rows, texts };
  }

  const known = (name: string) => {
    if (!adapters.some((a) => a.name === name)) throw new HttpError(404, 'unknown_adapter', `no adapter named '${name}' is loaded (GET /v1/adapters lists them)`);
  };

  // biome-ignore lint/suspicious/noExplicitAny: an untrusted request body, checked field by field below
  function parseGenerate(body: any): { job: Omit<Job, 'id'>; texts: boolean; cost: number } {
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'bad_request', 'the body must be a JSON object');
    for (const k of Object.keys(body)) if (!KNOWN_FIELDS.includes(k)) throw new HttpError(400, 'bad_request', `unknown field '${k}' (known: ${KNOWN_FIELDS.join(', ')})`);
    if (body.adapter != null && body.composition != null) throw new HttpError(400, 'bad_request', "give either 'adapter' or 'composition', not both");
    if (body.stream !== undefined && typeof body.stream !== 'boolean') throw new HttpError(400, 'bad_request', 'stream must be true or false');
    let adapter: string | null = null;
    let composition: string | undefined;
    let channels = 1;
    if (body.adapter != null) {
      if (typeof body.adapter !== 'string') throw new HttpError(400, 'bad_request', 'adapter must be a string');
      known(body.adapter);
      adapter = body.adapter;
    } else if (body.composition != null) {
      if (typeof body.composition !== 'string') throw new HttpError(400, 'bad_composition', 'composition must be a string such as "Parallel(a,b)"');
      if (body.composition.length > 4096) throw new HttpError(413, 'composition_too_large', 'the composition is over 4096 characters');
      let comp: ReturnType<typeof parseComposition>;
      try {
        comp = parseComposition(body.composition);
        channels = parallelChannels(comp);
      } catch (e) {
        throw new HttpError(400, 'bad_composition', (e as Error).message);
      }
      const leaves = leavesWithAncestors(comp).map((l) => l.name);
      if (leaves.length > maxCompositionAdapters)
        throw new HttpError(422, 'composition_too_large', `the composition names ${leaves.length} adapters; this server allows ${maxCompositionAdapters}`);
      for (const n of leaves) known(n);
      composition = body.composition;
    }
    const params = parseParams(body.params);
    const { rows, texts } = parseInputs(body.inputs);
    // sized before any compute: decoding rows × (source + new tokens) — what the KV caches hold
    const cost = rows.length * params.numBeams * channels;
    const tokens = cost * (Math.max(...rows.map((r) => r.length)) + params.maxNewTokens);
    if (tokens > maxRequestTokens)
      throw new HttpError(
        413,
        'request_too_large',
        `${rows.length} inputs × ${params.numBeams} beams × ${channels} branches × (longest input + maxNewTokens) = ${tokens} token slots; this server allows ${maxRequestTokens} per request`,
      );
    return { job: { rows, adapter, composition, params, stream: body.stream === true }, texts, cost };
  }

  async function handleGenerate(req: IncomingMessage, res: ServerResponse) {
    const parsed = parseGenerate(await readBody(req));
    if (closing) throw new HttpError(503, 'stopping', 'the server is shutting down', { 'retry-after': '5' });
    if (queue.length >= maxQueue) throw new HttpError(503, 'queue_full', `${queue.length} requests are waiting; try again shortly`, { 'retry-after': '1' });
    stats.requests++;
    const p: Pending = {
      job: { ...parsed.job, id: nextId++ },
      res,
      texts: parsed.texts,
      cost: parsed.cost,
      started: performance.now(),
      inWorker: false,
      adapterLabel: parsed.job.composition ?? parsed.job.adapter ?? 'base',
    };
    Object.assign(res, { adapterLabel: p.adapterLabel, rows: parsed.job.rows.length });
    if (parsed.job.stream) {
      const pieces = parsed.job.rows.map(() => '');
      // one TextStreamer per row (transformers' rule): the streamed pieces joined equal the final text
      const rows = tokenizer ? parsed.job.rows.map((_, r) => new TextStreamer(tokenizer, (text) => (pieces[r] += text))) : [];
      p.streamed = { done: parsed.job.rows.map(() => false), rows, pieces };
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' });
      res.flushHeaders();
    }
    // a client that goes away is cancelled: dropped from the queue, or its rows leave the batch
    res.on('close', () => {
      if (!res.writableFinished) release(p, true);
    });
    p.timer = setTimeout(() => {
      release(p, true);
      finish(p, { status: 504, code: 'timeout', message: `not answered within ${requestTimeoutMs} ms` });
    }, requestTimeoutMs);
    p.timer.unref();
    queue.push(p);
    if (options.logRequests) log(JSON.stringify({ event: 'queued', id: p.job.id, adapter: p.adapterLabel, rows: p.job.rows.length, queue: queue.length }));
    pump();
  }

  // ------------------------------------------------------------ HTTP
  // biome-ignore lint/suspicious/noExplicitAny: untrusted JSON; the handlers check it field by field
  async function readBody(req: IncomingMessage): Promise<any> {
    checkJson(req);
    const tooLarge = () => new HttpError(413, 'body_too_large', `the body exceeds ${maxBodyBytes} bytes`);
    if (Number(req.headers['content-length'] ?? 0) > maxBodyBytes) throw tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > maxBodyBytes) throw tooLarge();
      chunks.push(c as Buffer);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      throw new HttpError(400, 'malformed_json', `the body is not valid JSON: ${(e as Error).message}`);
    }
  }

  function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    if (res.headersSent || res.destroyed) return;
    const text = JSON.stringify(body);
    const h: Record<string, string | number> = { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
    // A request whose body we did not read to the end cannot share its connection with the next one.
    if (!res.req.complete) h.connection = 'close';
    res.writeHead(status, h);
    res.end(text);
  }

  function health() {
    const status = closing ? 'stopping' : worker.status === 'ready' ? 'ok' : worker.status;
    return {
      status,
      worker: { status: worker.status, restarts: worker.restarts, backend: worker.info?.backend },
      queue: queue.length,
      inFlight: inWorker.size,
      rowsInWorker,
      adapters: adapters.length,
      ...stats,
    };
  }

  async function loadAdapter(req: IncomingMessage, res: ServerResponse) {
    if (options.adapterRoot === undefined)
      throw new HttpError(403, 'adapter_loading_disabled', 'loading adapters over HTTP is off (start serve with --adapter-root <dir> to allow it inside that directory)');
    const body = await readBody(req);
    if (!body || typeof body !== 'object' || typeof body.path !== 'string')
      throw new HttpError(400, 'bad_request', 'POST /v1/adapters needs {"path": "<adapter directory>", "name"?: "<name>"}');
    if (body.name !== undefined && typeof body.name !== 'string') throw new HttpError(400, 'bad_request', 'name must be a string');
    if (body.name !== undefined) checkAdapterName(body.name);
    const dir = await adapterDirInside(options.adapterRoot, body.path);
    const id = nextId++;
    const name = await new Promise<string>((resolve, reject) => {
      loads.set(id, { resolve, reject: (e) => reject(new HttpError(e.status, e.code, e.message)) });
      if (!worker.post({ type: 'load', id, dir, name: body.name })) {
        loads.delete(id);
        reject(new HttpError(503, 'worker_unavailable', `the generation worker is ${worker.status}`, { 'retry-after': '1' }));
      }
    });
    worker.rememberAdapter(name, dir);
    log(JSON.stringify({ event: 'adapter_loaded', name, dir }));
    send(res, 201, { name });
  }

  async function route(req: IncomingMessage, res: ServerResponse, url: string) {
    const method = req.method ?? 'GET';
    checkCaller(req, port, options, url);
    if (url === '/health' && method === 'GET') return send(res, worker.status === 'ready' && !closing ? 200 : 503, health());
    if (url === '/metrics' && method === 'GET') {
      const text = metrics.registry.render();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(text) });
      return res.end(text);
    }
    if (url === '/v1/adapters' && method === 'GET') return send(res, 200, { adapters });
    if (url === '/v1/adapters' && method === 'POST') return loadAdapter(req, res);
    if (url === '/v1/generate' && method === 'POST') {
      if (worker.status !== 'ready' && worker.status !== 'restarting')
        throw new HttpError(503, 'worker_unavailable', `the generation worker is ${worker.status}`, { 'retry-after': '1' });
      return handleGenerate(req, res);
    }
    if (['/health', '/metrics', '/v1/adapters', '/v1/generate'].includes(url)) throw new HttpError(405, 'method_not_allowed', `${method} is not allowed on ${url}`);
    throw new HttpError(404, 'not_found', `no route ${method} ${url}`);
  }

  const server = createHttpServer((req, res) => {
    const started = performance.now();
    const url = (req.url ?? '/').split('?')[0];
    res.on('close', () => {
      const r = res as ServerResponse & { adapterLabel?: string; rows?: number; tokens?: number; errorCode?: string };
      const status = res.writableFinished ? res.statusCode : 499; // 499: the client went away first
      metrics.requests.inc({ route: url.startsWith('/v1/') || url === '/health' || url === '/metrics' ? url : 'other', status: String(status) });
      log(
        JSON.stringify({
          time: new Date().toISOString(),
          method: req.method,
          path: url,
          status,
          ms: Math.round((performance.now() - started) * 10) / 10,
          ...(r.adapterLabel !== undefined && { adapter: r.adapterLabel, rows: r.rows, tokens: r.tokens ?? 0 }),
          ...(r.errorCode && { error: r.errorCode }),
        }),
      );
    });
    route(req, res, url).catch((e) => {
      const err = e instanceof HttpError ? e : new HttpError(500, 'internal', (e as Error)?.message ?? String(e));
      if (!(e instanceof HttpError)) log(JSON.stringify({ event: 'internal_error', error: String((e as Error)?.stack ?? e) }));
      (res as ServerResponse & { errorCode?: string }).errorCode = err.code;
      send(res, err.status, { error: { code: err.code, message: err.message } }, err.headers);
    });
  });

  // Clients keep connections open between requests; a longer idle time than Node's 5 s default means a
  // client rarely sends on a socket the server is closing (ECONNRESET) while it waits on a long answer.
  server.keepAliveTimeout = 30_000;
  let drained: (() => void) | undefined;
  return {
    server,
    stats,
    worker,
    listen: async (p) => {
      const info = await worker.start();
      adapters = info.adapters;
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(p, '127.0.0.1', () => {
          port = (server.address() as { port: number }).port;
          resolve(port);
        });
      });
    },
    close: async () => {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      if (queue.length > 0 || inWorker.size > 0) await new Promise<void>((resolve) => (drained = resolve));
      await worker.stop();
      // in-flight responses have been written by now; idle keep-alive sockets can go
      server.closeIdleConnections();
      await closed;
    },
  };
}
