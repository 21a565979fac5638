/**
 * `serve` benchmark (not a test): continuous batching on the bundled tiny model with 3 LoRA tenants and the
 * base model, through HTTP, the worker thread and all: `adapterkit serve` runs in its own process.
 *
 *   (a) throughput: N concurrent requests of mixed lengths (1–2 inputs of 4–40 tokens, 8–64 new tokens,
 *       tenants round-robin) against the same requests sent one at a time;
 *   (b) latency of a short request (1 input, 8 new tokens) arriving while long requests (64–128 new
 *       tokens) keep the batch full, against the same short request on an idle server: p50 and p99.
 *
 *   node tools/bench/dist/serve.js [--requests 200] [--short 200] [--background 16] [--max-batch-rows 256] [--json]
 */
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { pathToFileURL } from 'node:url';
import { initBackend, tf } from '@adapterkit/backend';
import { BUNDLED_MODEL } from '@adapterkit/cli';
import { SeededRandom } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { eachFlag, type FlagSpec } from './common.js';
import '@adapterkit/lora';

export const SERVE_FLAGS: FlagSpec[] = [
  { name: '--requests', value: true },
  { name: '--short', value: true },
  { name: '--background', value: true },
  { name: '--max-batch-rows', value: true },
  { name: '--json', value: false },
];

interface Body {
  adapter: string | null;
  inputs: number[][];
  params: { maxNewTokens: number };
}

const TENANTS = ['t1', 't2', 't3', null];

function rows(rng: SeededRandom, n: number, len: number): number[][] {
  return Array.from({ length: n }, () => [...Array.from({ length: len }, () => 3 + Math.floor(rng.next() * 125)), 1]);
}

async function post(base: string, body: Body): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await res.json()) as { outputs?: { ids: number[] }[]; error?: unknown };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(json)}`);
  return performance.now() - t0;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

export async function main(argv: string[]) {
  let n = 200;
  // 200 samples: a p99 of fewer is just the maximum
  let shortCount = 200;
  let background = 16;
  let json = false;
  // the server's continuous batch (serve's default is 64; a tiny model serves more rows per step cheaply)
  let maxBatchRows = 256;
  eachFlag(argv, (a, _value, int) => {
    if (a === '--requests') n = int();
    else if (a === '--short') shortCount = int();
    else if (a === '--background') background = int();
    else if (a === '--max-batch-rows') maxBatchRows = int();
    else if (a === '--json') json = true;
    else throw new Error(`unknown argument ${a}`);
  });
  // adapters with random (non-zero) weights, saved for the server's worker to load
  await initBackend('wasm');
  const model = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
  const dir = mkdtempSync(join(tmpdir(), 'adapterkit-bench-serve-'));
  const adapters: [string, string][] = [];
  for (const [i, name] of ['t1', 't2', 't3'].entries()) {
    model.addAdapter(name, 'lora[r=4,alpha=8]', { seed: i });
    const rng = new SeededRandom(100 + i);
    for (const v of model.adapters.adapterVariables(name).values())
      v.assign(
        tf.tensor(
          Float32Array.from({ length: v.size }, () => rng.normal(0, 0.5)),
          v.shape,
        ),
      );
    await model.saveAdapter(join(dir, name), name);
    adapters.push([name, join(dir, name)]);
  }
  model.dispose();
  // The server runs as a user deploys it, `adapterkit serve` in its own process: the clients below (and
  // their garbage collection) do not share its event loop.
  const cli = resolve(BUNDLED_MODEL, '../../dist/cli.js');
  const args = ['serve', '-b', 'wasm', '-p', '0', '--max-batch-rows', String(maxBatchRows), '--max-queue', '10000', ...adapters.flatMap(([n, d]) => ['-a', `${n}=${d}`])];
  const server = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const base = await new Promise<string>((ok, fail) => {
    let out = '';
    server.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) ok((JSON.parse(line) as { listening: string }).listening);
    });
    server.once('exit', (code) => fail(new Error(`adapterkit serve exited with ${code} before listening`)));
  });
  /** The server's decode steps and generated tokens so far (its Prometheus /metrics). */
  const counters = async () => {
    const text = await (await fetch(`${base}/metrics`)).text();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
    return { steps: value('adapterkit_decode_steps_total'), tokens: value('adapterkit_generated_tokens_total') };
  };
  try {
    const rng = new SeededRandom(7);
    const mixed: Body[] = Array.from({ length: n }, (_, i) => ({
      adapter: TENANTS[i % 4],
      inputs: rows(rng, 1 + (i % 2), 4 + Math.floor(rng.next() * 37)),
      params: { maxNewTokens: [8, 16, 32, 64][Math.floor(rng.next() * 4)] },
    }));
    // warm-up: every tenant once
    for (const t of TENANTS) await post(base, { adapter: t, inputs: [[5, 6, 1]], params: { maxNewTokens: 4 } });

    let t0 = performance.now();
    const start = await counters();
    await Promise.all(mixed.map((b) => post(base, b)));
    const batchedS = (performance.now() - t0) / 1000;
    const end = await counters();
    const steps = end.steps - start.steps;
    const tokens = end.tokens - start.tokens;
    t0 = performance.now();
    for (const b of mixed) await post(base, b);
    const sequentialS = (performance.now() - t0) / 1000;

    // (b) a short request alone, then while long ones keep the batch busy
    const short = (i: number): Body => ({ adapter: TENANTS[i % 4], inputs: rows(new SeededRandom(900 + i), 1, 8), params: { maxNewTokens: 8 } });
    const alone: number[] = [];
    for (let i = 0; i < shortCount; i++) alone.push(await post(base, short(i)));
    let stop = false;
    const longRng = new SeededRandom(11);
    const longBody = (i: number): Body => ({ adapter: TENANTS[i % 4], inputs: rows(longRng, 2, 32), params: { maxNewTokens: 64 + Math.floor(longRng.next() * 65) } });
    let launched = 0;
    const keepBusy = async () => {
      while (!stop) await post(base, longBody(launched++));
    };
    const busy = Array.from({ length: background }, keepBusy);
    await new Promise((r) => setTimeout(r, 300));
    const during: number[] = [];
    for (let i = 0; i < shortCount; i++) {
      during.push(await post(base, short(i)));
      await new Promise((r) => setTimeout(r, 10 + Math.floor(longRng.next() * 40)));
    }
    stop = true;
    await Promise.all(busy);

    const result = {
      requests: n,
      batched: { seconds: batchedS, requestsPerSecond: n / batchedS, tokensPerSecond: tokens / batchedS, decodeSteps: steps },
      oneAtATime: { seconds: sequentialS, requestsPerSecond: n / sequentialS },
      throughputRatio: sequentialS / batchedS,
      shortAlone: { p50Ms: pct(alone, 50), p90Ms: pct(alone, 90), p99Ms: pct(alone, 99), maxMs: pct(alone, 100), samples: alone.length },
      shortDuringLong: {
        p50Ms: pct(during, 50),
        p90Ms: pct(during, 90),
        p99Ms: pct(during, 99),
        maxMs: pct(during, 100),
        samples: during.length,
        backgroundRequests: background,
        longRequestsServed: launched,
      },
      p99Ratio: pct(during, 99) / pct(alone, 99),
    };
    if (json) console.log(JSON.stringify(result, null, 2));
    else {
      console.log(`serve (bundled tiny model, wasm worker, 3 LoRA tenants + base, ${n} concurrent mixed requests, ${maxBatchRows} batch rows)`);
      console.log('| what | figure |\n| --- | --- |');
      console.log(
        `| concurrent, continuous batching | ${batchedS.toFixed(2)} s, ${result.batched.requestsPerSecond.toFixed(1)} req/s, ${result.batched.tokensPerSecond.toFixed(0)} tokens/s, ${steps} decode steps |`,
      );
      console.log(`| one at a time | ${sequentialS.toFixed(2)} s, ${result.oneAtATime.requestsPerSecond.toFixed(1)} req/s |`);
      console.log(`| throughput ratio | ${result.throughputRatio.toFixed(2)}× |`);
      console.log(`| short request alone (p50 / p99) | ${result.shortAlone.p50Ms.toFixed(1)} / ${result.shortAlone.p99Ms.toFixed(1)} ms |`);
      console.log(`| short request during ${background} long ones (p50 / p99) | ${result.shortDuringLong.p50Ms.toFixed(1)} / ${result.shortDuringLong.p99Ms.toFixed(1)} ms |`);
      console.log(`| p99 during / p99 alone | ${result.p99Ratio.toFixed(2)}× |`);
    }
    return result;
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
