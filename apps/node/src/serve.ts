/**
 * `adapterkit serve`: a small multi-adapter HTTP server on node:http.
 *
 * Batching: greedy requests that arrive within `windowMs` of each other (or until `maxBatchRows` rows are
 * waiting) are served by ONE generate call. Rows are grouped by adapter and run under
 * `BatchSplit(a, b, …, {batchSizes})`, so one forward serves many tenants; each request gets its own rows
 * back. Generate calls run one at a time (tfjs is single-threaded); requests arriving meanwhile form the
 * next batch.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { AdapterkitError, BatchSplit, compositionToString, type AdapterComposition } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { padRows, parseComposition, trimGenerated, UsageError } from './common.js';

export interface ServeOptions {
  windowMs?: number;
  maxBatchRows?: number;
  maxBodyBytes?: number;
  maxInputs?: number;
  maxInputTokens?: number;
  maxNewTokensLimit?: number;
  log?: (line: string) => void;
  /** Log every queued request (one line each) through `log`. */
  logRequests?: boolean;
}

interface Params {
  maxNewTokens: number;
  numBeams: number;
  doSample: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
}

interface Job {
  /** Adapter name, or a composition string for requests that must run alone; null = base model. */
  adapter: string | null;
  composition?: AdapterComposition;
  rows: number[][];
  params: Params;
  resolve: (ids: number[][]) => void;
  reject: (e: unknown) => void;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface AdapterServer {
  server: Server;
  /** Listens on 127.0.0.1; port 0 = ephemeral. Resolves to the port. */
  listen(port: number): Promise<number>;
  /** Stops accepting, finishes in-flight work, closes. */
  close(): Promise<void>;
  stats: { generateCalls: number; rowsServed: number; requests: number; batchedRequests: number };
}

export function createAdapterServer(model: T5ForConditionalGeneration, options: ServeOptions = {}): AdapterServer {
  const windowMs = options.windowMs ?? 5;
  const maxBatchRows = options.maxBatchRows ?? 64;
  const maxBodyBytes = options.maxBodyBytes ?? 1 << 20;
  const maxInputs = options.maxInputs ?? 64;
  const maxInputTokens = options.maxInputTokens ?? 512;
  const maxNewTokensLimit = options.maxNewTokensLimit ?? 256;
  const log = options.log ?? (() => {});
  const stats = { generateCalls: 0, rowsServed: 0, requests: 0, batchedRequests: 0 };
  const eos = model.generationConfig.eosTokenId;

  // ------------------------------------------------------------ work queue (one generate at a time)
  let pending: Job[] = [];
  let timer: NodeJS.Timeout | undefined;
  let chain: Promise<void> = Promise.resolve();
  let inFlight = 0;

  const pendingRows = () => pending.reduce((a, j) => a + j.rows.length, 0);
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    inFlight++;
    const p = chain.then(fn);
    chain = p.then(
      () => undefined,
      () => undefined,
    );
    return p.finally(() => inFlight--);
  };

  function schedule() {
    if (pendingRows() >= maxBatchRows) flush();
    else if (!timer) timer = setTimeout(flush, windowMs);
  }

  function flush() {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (pending.length === 0) return;
    // generate lets the event loop run between its steps, so requests keep arriving while one runs: gather
    // them into the next batch (flushed when it ends) rather than queueing a small batch per window.
    if (inFlight > 0 && pendingRows() < maxBatchRows) return;
    const jobs = pending;
    pending = [];
    const next = () => inFlight === 0 && flush();
    void exclusive(() => runJobs(jobs)).then(next, next);
  }

  /** Splits the waiting jobs into generate calls: batchable greedy jobs together, the rest one by one. */
  async function runJobs(jobs: Job[]) {
    const batchable = jobs.filter((j) => j.adapter !== null && !j.composition && !j.params.doSample && j.params.numBeams === 1);
    const alone = jobs.filter((j) => !batchable.includes(j));
    // Greedy rows are independent: rows of a shorter request just stop at their eos; cut to maxNewTokens below.
    for (let i = 0; i < batchable.length; ) {
      const group: Job[] = [];
      let rows = 0;
      while (i < batchable.length && (group.length === 0 || rows + batchable[i].rows.length <= maxBatchRows)) {
        rows += batchable[i].rows.length;
        group.push(batchable[i++]);
      }
      await runBatch(group);
    }
    for (const j of alone) await runAlone(j);
  }

  async function runBatch(group: Job[]) {
    // Rows grouped by adapter, in order of first appearance.
    const byAdapter = new Map<string, Job[]>();
    for (const j of group) byAdapter.set(j.adapter!, [...(byAdapter.get(j.adapter!) ?? []), j]);
    const ordered = [...byAdapter.values()].flat();
    const names = [...byAdapter.keys()];
    const sizes = names.map((n) => byAdapter.get(n)!.reduce((a, j) => a + j.rows.length, 0));
    const composition = names.length === 1 ? names[0] : BatchSplit(...names, { batchSizes: sizes });
    const maxNewTokens = Math.max(...group.map((j) => j.params.maxNewTokens));
    try {
      const out = await generate(
        ordered.flatMap((j) => j.rows),
        composition,
        { ...group[0].params, maxNewTokens },
      );
      stats.batchedRequests += group.length;
      let r = 0;
      for (const j of ordered) {
        j.resolve(out.slice(r, r + j.rows.length).map((row) => cut(row, j.params.maxNewTokens)));
        r += j.rows.length;
      }
    } catch (e) {
      for (const j of group) j.reject(e);
    }
  }

  async function runAlone(j: Job) {
    try {
      const comp = j.composition ?? j.adapter;
      j.resolve((await generate(j.rows, comp, j.params)).map((row) => cut(row, j.params.maxNewTokens)));
    } catch (e) {
      j.reject(e);
    }
  }

  const cut = (ids: number[], n: number) => ids.slice(0, n);

  async function generate(rows: number[][], composition: AdapterComposition | null, p: Params): Promise<number[][]> {
    const { inputIds, attentionMask } = padRows(rows);
    stats.generateCalls++;
    stats.rowsServed += rows.length;
    const out = await model.generate({ inputIds, attentionMask, composition, ...p });
    return out.map((row) => trimGenerated(row, eos));
  }

  // ------------------------------------------------------------ request parsing
  function parseParams(raw: unknown): Params {
    if (raw === undefined) raw = {};
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new HttpError(400, 'bad_params', 'params must be an object');
    const p = raw as Record<string, unknown>;
    const known = ['maxNewTokens', 'numBeams', 'doSample', 'temperature', 'topK', 'topP', 'seed'];
    for (const k of Object.keys(p)) if (!known.includes(k)) throw new HttpError(400, 'bad_params', `unknown param '${k}' (known: ${known.join(', ')})`);
    const int = (k: string, lo: number, hi: number, dflt: number | undefined) => {
      const v = p[k] ?? dflt;
      if (v === undefined) return undefined;
      if (!Number.isInteger(v) || (v as number) < lo || (v as number) > hi)
        throw new HttpError(400, 'bad_params', `${k} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(p[k])}`);
      return v as number;
    };
    const num = (k: string, lo: number, hi: number) => {
      const v = p[k];
      if (v === undefined) return undefined;
      if (typeof v !== 'number' || !(v > lo && v <= hi)) throw new HttpError(400, 'bad_params', `${k} must be a number in (${lo}, ${hi}], got ${JSON.stringify(v)}`);
      return v;
    };
    if (p.doSample !== undefined && typeof p.doSample !== 'boolean') throw new HttpError(400, 'bad_params', 'doSample must be a boolean');
    const out: Params = {
      maxNewTokens: int('maxNewTokens', 1, maxNewTokensLimit, model.generationConfig.maxNewTokens ?? 20)!,
      numBeams: int('numBeams', 1, 8, 1)!,
      doSample: (p.doSample as boolean | undefined) ?? false,
    };
    const t = num('temperature', 0, 100);
    const topK = int('topK', 0, 100000, undefined);
    const topP = num('topP', 0, 1);
    const seed = int('seed', 0, 2 ** 31 - 1, undefined);
    if (t !== undefined) out.temperature = t;
    if (topK !== undefined) out.topK = topK;
    if (topP !== undefined) out.topP = topP;
    if (seed !== undefined) out.seed = seed;
    if (out.doSample && out.numBeams > 1) throw new HttpError(400, 'bad_params', 'doSample cannot be combined with numBeams > 1');
    return out;
  }

  function parseInputs(raw: unknown): { rows: number[][]; texts: boolean } {
    if (!Array.isArray(raw) || raw.length === 0) throw new HttpError(400, 'bad_inputs', 'inputs must be a non-empty array of strings or of token-id arrays');
    if (raw.length > maxInputs) throw new HttpError(413, 'too_many_inputs', `at most ${maxInputs} inputs per request, got ${raw.length}`);
    const texts = raw.every((x) => typeof x === 'string');
    let rows: number[][];
    if (texts) {
      if (!model.tokenizer) throw new HttpError(400, 'no_tokenizer', 'this model has no tokenizer: send token ids');
      rows = (raw as string[]).map((s) => model.tokenizer!.encode(s));
    } else if (raw.every((x) => Array.isArray(x))) {
      const V = model.dims.vocabSize;
      rows = raw as number[][];
      for (const r of rows) {
        if (r.length === 0) throw new HttpError(400, 'bad_inputs', 'an input has no tokens');
        for (const t of r) if (!Number.isInteger(t) || t < 0 || t >= V) throw new HttpError(400, 'bad_inputs', `token id ${JSON.stringify(t)} is not an integer in [0, ${V})`);
      }
    } else throw new HttpError(400, 'bad_inputs', 'inputs must be all strings or all arrays of token ids');
    for (const r of rows) if (r.length > maxInputTokens) throw new HttpError(413, 'input_too_long', `an input has ${r.length} tokens, the limit is ${maxInputTokens}`);
    return { rows, texts };
  }

  // biome-ignore lint/suspicious/noExplicitAny: an untrusted request body, checked field by field below
  async function handleGenerate(body: any): Promise<unknown> {
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'bad_request', 'the body must be a JSON object');
    if (body.adapter !== undefined && body.composition !== undefined) throw new HttpError(400, 'bad_request', "give either 'adapter' or 'composition', not both");
    let adapter: string | null = null;
    let composition: AdapterComposition | undefined;
    if (body.adapter !== undefined && body.adapter !== null) {
      if (typeof body.adapter !== 'string') throw new HttpError(400, 'bad_request', 'adapter must be a string');
      if (!model.adapters.hasAdapter(body.adapter)) throw new HttpError(404, 'unknown_adapter', `no adapter named '${body.adapter}' is loaded (GET /v1/adapters lists them)`);
      adapter = body.adapter;
    } else if (body.composition !== undefined) {
      if (typeof body.composition !== 'string') throw new HttpError(400, 'bad_composition', 'composition must be a string such as "Parallel(a,b)"');
      try {
        composition = parseComposition(body.composition);
      } catch (e) {
        throw new HttpError(400, 'bad_composition', (e as Error).message);
      }
      for (const n of namesIn(composition)) if (!model.adapters.hasAdapter(n)) throw new HttpError(404, 'unknown_adapter', `no adapter named '${n}' is loaded`);
      adapter = compositionToString(composition);
    }
    const params = parseParams(body.params);
    const { rows, texts } = parseInputs(body.inputs);
    stats.requests++;
    if (options.logRequests) log(`queued request ${stats.requests}: ${adapter ?? 'base model'}, ${rows.length} row(s)`);
    const ids = await new Promise<number[][]>((resolve, reject) => {
      pending.push({ adapter, composition, rows, params, resolve, reject });
      schedule();
    });
    return {
      outputs: ids.map((row) => (texts && model.tokenizer ? { ids: row, text: model.tokenizer.decode(row, { skipSpecialTokens: true }) } : { ids: row })),
    };
  }

  // ------------------------------------------------------------ HTTP
  // biome-ignore lint/suspicious/noExplicitAny: untrusted JSON; handleGenerate checks it field by field
  async function readBody(req: IncomingMessage): Promise<any> {
    const tooLarge = () => new HttpError(413, 'body_too_large', `the body exceeds ${maxBodyBytes} bytes`);
    if (Number(req.headers['content-length'] ?? 0) > maxBodyBytes) throw tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > maxBodyBytes) throw tooLarge();
      chunks.push(c as Buffer);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new HttpError(400, 'malformed_json', `the body is not valid JSON: ${(e as Error).message}`);
    }
  }

  function send(res: ServerResponse, status: number, body: unknown) {
    if (res.headersSent) return;
    const text = JSON.stringify(body);
    const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
    // A request whose body we did not read to the end cannot share its connection with the next one.
    if (!res.req.complete) headers.connection = 'close';
    res.writeHead(status, headers);
    res.end(text);
  }

  async function route(req: IncomingMessage, res: ServerResponse) {
    const url = (req.url ?? '/').split('?')[0];
    const method = req.method ?? 'GET';
    if (url === '/health' && method === 'GET')
      return send(res, 200, { status: closing ? 'stopping' : 'ok', adapters: model.adapters.listAdapters().length, pending: pending.length, inFlight, ...stats });
    if (url === '/v1/adapters' && method === 'GET')
      return send(res, 200, { adapters: model.adapters.adapterSummary().map(({ name, method, parameters, percent }) => ({ name, method, parameters, percent })) });
    if (url === '/v1/adapters' && method === 'POST') {
      const body = await readBody(req);
      if (!body || typeof body.path !== 'string') throw new HttpError(400, 'bad_request', 'POST /v1/adapters needs {"path": "<adapter directory>", "name"?: "<name>"}');
      if (body.name !== undefined && typeof body.name !== 'string') throw new HttpError(400, 'bad_request', 'name must be a string');
      const name = await exclusive(() => model.loadAdapter(body.path, body.name ? { name: body.name } : {}));
      log(`loaded adapter '${name}' from ${body.path}`);
      return send(res, 201, { name });
    }
    if (url === '/v1/generate' && method === 'POST') return send(res, 200, await handleGenerate(await readBody(req)));
    if (['/health', '/v1/adapters', '/v1/generate'].includes(url)) throw new HttpError(405, 'method_not_allowed', `${method} is not allowed on ${url}`);
    throw new HttpError(404, 'not_found', `no route ${method} ${url}`);
  }

  let closing = false;
  const server = createHttpServer((req, res) => {
    route(req, res).catch((e) => {
      if (e instanceof HttpError) return send(res, e.status, { error: { code: e.code, message: e.message } });
      if (e instanceof UsageError) return send(res, 400, { error: { code: 'bad_request', message: e.message } });
      if (e instanceof AdapterkitError) {
        const status = e.code === 'FILE_ERROR' ? 404 : e.code === 'ADAPTER_ERROR' ? 409 : 400;
        return send(res, status, { error: { code: e.code.toLowerCase(), message: e.message } });
      }
      log(`internal error: ${(e as Error)?.stack ?? e}`);
      send(res, 500, { error: { code: 'internal', message: (e as Error)?.message ?? String(e) } });
    });
  });

  return {
    server,
    stats,
    listen: (port) =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
      }),
    close: async () => {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      flush();
      await chain;
      // In-flight responses have been written by now; idle keep-alive sockets can go.
      server.closeIdleConnections();
      await closed;
    },
  };
}

function namesIn(c: AdapterComposition): string[] {
  return typeof c === 'string' ? [c] : c.children.flatMap(namesIn);
}
