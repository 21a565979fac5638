/**
 * T5 benchmark (not a test): per backend, for the tiny fixture model and a flan-t5-small-shaped model
 * with random weights, batch 1, a 128-token source:
 *   - forward: encoder + decoder over a 32-token target (one call, logits read back);
 *   - greedy generation of 32 new tokens with the KV cache, and without it (full recomputation per step);
 *   - tokens/s of both and the ratio uncached / cached.
 * Medians of N runs (default 3) after warm-ups (default 2: the first calls pay for JIT and XNNPACK packing).
 *
 *   node tools/bench/dist/t5.js [--backends cpu,wasm,webgpu] [--models tiny,flan] [--runs 3] [--warmup 2]
 *                               [--source 128] [--target 32] [--new-tokens 32] [--quick] [--no-uncached] [--json]
 *
 * Defaults: backends wasm,cpu; on cpu the flan shape is skipped unless --models names it (minutes per run).
 * --quick: 1 run, no warm-up, for a smoke check only (figures are not medians then).
 */
import { pathToFileURL } from 'node:url';
import { initBackend, tf, type BackendName } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import { type ModelName, eachFlag, loadModel, randomIds, time } from './common.js';

interface Options {
  backends: BackendName[];
  models: ModelName[] | null;
  runs: number;
  warmup: number;
  source: number;
  target: number;
  newTokens: number;
  uncached: boolean;
  json: boolean;
}

export interface Row {
  backend: string;
  model: string;
  /** Median ms of one encoder+decoder forward (source × target). */
  forwardMs: number;
  /** Median ms of a cached greedy generation of newTokens (encoder included). */
  cachedMs: number;
  cachedTokPerS: number;
  uncachedMs?: number;
  uncachedTokPerS?: number;
  /** uncachedMs / cachedMs: how much the KV cache saves. */
  uncachedOverCached?: number;
  params: number;
}

export function parseArgs(argv: string[]): Options {
  const o: Options = { backends: ['wasm', 'cpu'], models: null, runs: 3, warmup: 2, source: 128, target: 32, newTokens: 32, uncached: true, json: false };
  eachFlag(argv, (a, value, int) => {
    if (a === '--backends')
      o.backends = value()
        .split(',')
        .map((s) => s.trim()) as BackendName[];
    else if (a === '--models')
      o.models = value()
        .split(',')
        .map((s) => s.trim()) as ModelName[];
    else if (a === '--runs') o.runs = int();
    else if (a === '--warmup') o.warmup = int();
    else if (a === '--source') o.source = int();
    else if (a === '--target') o.target = int();
    else if (a === '--new-tokens') o.newTokens = int();
    else if (a === '--quick') {
      o.runs = 1;
      o.warmup = 0;
    } else if (a === '--no-uncached') o.uncached = false;
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log(
        'usage: node tools/bench/dist/t5.js [--backends cpu,wasm,webgpu] [--models tiny,flan] [--runs N] [--warmup N] [--source N] [--target N] [--new-tokens N] [--quick] [--no-uncached] [--json]',
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  });
  for (const m of o.models ?? []) if (m !== 'tiny' && m !== 'flan') throw new Error(`unknown model '${m}' (tiny, flan)`);
  return o;
}

export async function benchModel(backend: BackendName, name: ModelName, o: Options): Promise<Row> {
  const model = await loadModel(name);
  try {
    const V = model.config.vocabSize;
    const rng = new SeededRandom(42);
    const inputIds = [randomIds(rng, o.source, V)];
    const decoderInputIds = [[model.config.decoderStartTokenId, ...randomIds(rng, o.target - 1, V)]];
    const forwardMs = await time(o.runs, o.warmup, async () => {
      const out = model.forward({ inputIds, decoderInputIds });
      await out.logits.data(); // wait for the device
      tf.dispose([out.logits, out.encoderLastHiddenState]);
    });
    // eos -1 never matches: every run generates exactly newTokens tokens.
    const gen = (useCache: boolean) => async () => {
      const ids = await model.generate({ inputIds, maxNewTokens: o.newTokens, eosTokenId: -1, useCache });
      if (ids[0].length !== o.newTokens + 1) throw new Error(`generated ${ids[0].length - 1} tokens, expected ${o.newTokens}`);
    };
    const cachedMs = await time(o.runs, o.warmup, gen(true));
    const row: Row = { backend, model: name, forwardMs, cachedMs, cachedTokPerS: (o.newTokens / cachedMs) * 1000, params: model.baseParameterCount() };
    if (o.uncached) {
      row.uncachedMs = await time(o.runs, o.warmup, gen(false));
      row.uncachedTokPerS = (o.newTokens / row.uncachedMs) * 1000;
      row.uncachedOverCached = row.uncachedMs / cachedMs;
    }
    return row;
  } finally {
    model.dispose();
  }
}

function table(rows: Row[], o: Options): string {
  const head = [
    'backend',
    'model',
    'params',
    `forward ms (src ${o.source}, tgt ${o.target})`,
    `greedy ${o.newTokens} tok, cached ms`,
    'cached tok/s',
    'uncached ms',
    'uncached tok/s',
    'uncached / cached',
  ];
  const f = (x: number | undefined, d = 1) => (x === undefined ? '—' : x.toFixed(d));
  const body = rows.map((r) => [
    r.backend,
    r.model,
    `${(r.params / 1e6).toFixed(2)}M`,
    f(r.forwardMs),
    f(r.cachedMs),
    f(r.cachedTokPerS),
    f(r.uncachedMs),
    f(r.uncachedTokPerS),
    r.uncachedOverCached === undefined ? '—' : `${r.uncachedOverCached.toFixed(2)}×`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

export async function main(argv: string[]): Promise<Row[]> {
  const o = parseArgs(argv);
  const rows: Row[] = [];
  for (const backend of o.backends) {
    const info = await initBackend(backend);
    // On cpu the flan shape takes minutes per run: only when asked for by name.
    const models: ModelName[] = o.models ?? (backend === 'cpu' ? ['tiny'] : ['tiny', 'flan']);
    for (const m of models) {
      if (!o.json) process.stderr.write(`${backend} (${info.device}) ${m} …\n`);
      const row = await benchModel(backend, m, o);
      rows.push(row);
      if (!o.json)
        process.stderr.write(
          `  forward ${row.forwardMs.toFixed(1)} ms, cached ${row.cachedTokPerS.toFixed(1)} tok/s${row.uncachedOverCached ? `, uncached/cached ${row.uncachedOverCached.toFixed(2)}×` : ''}\n`,
        );
    }
  }
  if (o.json) console.log(JSON.stringify(rows, null, 2));
  else {
    console.log(`\nT5 benchmark — batch 1, medians of ${o.runs} run(s) after ${o.warmup} warm-up(s), Node ${process.versions.node}\n`);
    console.log(table(rows, o));
  }
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
