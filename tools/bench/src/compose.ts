/**
 * Composition benchmark (not a test): serving several LoRA adapters in one batch vs one call per adapter.
 * flan-t5-small shape with random weights, LoRA r 8 on q and v (every attention), B set to random values
 * so that each adapter changes the outputs. Per backend:
 *   (a) BatchSplit(a1..a8, batchSizes [8, …]): ONE forward over 64 rows vs 8 forwards of 8 rows, each with
 *       its adapter active; the same for greedy generation (8 rows per adapter, 8 new tokens, KV cache);
 *   (b) Parallel(a1..a4) over a batch of 4 (16 output rows) vs 4 forwards of the 4 rows, one per adapter.
 * Prints median ms and sequential / batched (> 1: batching pays). Before timing, each case is checked once:
 * the batched rows must equal the separate calls (max |Δlogits| printed, next to the largest change a LoRA
 * makes to the base model's logits so the check means something; for generation, rows whose ids differ).
 * That check runs every path once, so it doubles as a warm-up.
 *
 *   node tools/bench/dist/compose.js [--backends wasm,cpu,webgpu] [--model flan|tiny] [--runs 3] [--warmup 1]
 *        [--source 64] [--target 16] [--new-tokens 8] [--adapters 8] [--rows 8] [--parallel 4]
 *        [--parallel-batch 4] [--quick] [--json]
 *
 * --quick: the tiny fixture model (d_model 32, 2+2 layers), 1 run, no warm-up: a smoke check, not figures.
 */
import { pathToFileURL } from 'node:url';
import { initBackend, tf, type BackendName, type Tensor } from '@adapterkit/backend';
import { SeededRandom, type AdapterComposition } from '@adapterkit/core';
import { BatchSplit, Parallel } from '@adapterkit/compose';
import {
  addLoras,
  COMMON_FLAGS,
  fmt,
  forwardLogits,
  loadModel,
  maxAbsDiffRows,
  parseCommon,
  randomBatch,
  randomDecoderBatch,
  ratio,
  rowsDiffering,
  sci,
  table,
  time,
  type CommonOptions,
  type FlagSpec,
} from './common.js';

export interface ComposeOptions extends CommonOptions {
  adapters: number;
  rows: number;
  parallel: number;
  parallelBatch: number;
}

export interface ComposeRow {
  backend: string;
  model: string;
  case: 'BatchSplit forward' | 'BatchSplit greedy' | 'Parallel forward';
  /** Adapters in the block and rows per adapter (BatchSplit: its part; Parallel: the input batch). */
  adapters: number;
  rowsPerAdapter: number;
  /** Median ms of the one composed call. */
  batchedMs: number;
  /** Median ms of one call per adapter, back to back. */
  sequentialMs: number;
  sequentialOverBatched: number;
  /** Forward cases: max |batched rows − separate call| over the logits. */
  maxAbsDiff?: number;
  /** Forward cases: max |adapter 1 − base model| on the same rows (the size of what the check compares). */
  loraEffect?: number;
  /** Greedy case: rows whose generated ids differ between the batched and the separate calls. */
  rowsDiffering?: number;
}

export const COMPOSE_FLAGS: FlagSpec[] = [
  ...COMMON_FLAGS,
  { name: '--target', value: true },
  { name: '--adapters', value: true },
  { name: '--rows', value: true },
  { name: '--parallel', value: true },
  { name: '--parallel-batch', value: true },
];

const USAGE =
  'usage: node tools/bench/dist/compose.js [--backends wasm,cpu,webgpu] [--model flan|tiny] [--runs N] [--warmup N] [--source N] [--target N] [--new-tokens N] [--adapters N] [--rows N] [--parallel N] [--parallel-batch N] [--quick] [--json]';

export function parseArgs(argv: string[]): ComposeOptions {
  const own = { adapters: 8, rows: 8, parallel: 4, parallelBatch: 4 };
  const common = parseCommon(argv, { warmup: 1, newTokens: 8 }, USAGE, (flag, _value, int) => {
    if (flag === '--adapters') own.adapters = int();
    else if (flag === '--rows') own.rows = int();
    else if (flag === '--parallel') own.parallel = int();
    else if (flag === '--parallel-batch') own.parallelBatch = int();
    else return false;
    return true;
  });
  return { ...common, ...own };
}

export async function benchModel(backend: BackendName, o: ComposeOptions): Promise<ComposeRow[]> {
  const model = await loadModel(o.model);
  const rows: ComposeRow[] = [];
  try {
    const V = model.config.vocabSize;
    const start = model.config.decoderStartTokenId;
    const names = addLoras(model, Math.max(o.adapters, o.parallel));
    const rng = new SeededRandom(42);
    const say = (s: string) => o.json || process.stderr.write(`  ${s}\n`);

    const forward = async (comp: AdapterComposition | null, ids: number[][], dec: number[][]): Promise<Tensor> => {
      model.setActiveAdapters(comp);
      return forwardLogits(model, ids, dec);
    };
    // eos -1 never matches: every call generates exactly newTokens tokens.
    const greedy = async (comp: AdapterComposition | null, ids: number[][]): Promise<number[][]> => {
      model.setActiveAdapters(comp);
      const out = await model.generate({ inputIds: ids, maxNewTokens: o.newTokens, eosTokenId: -1 });
      if (out.length !== ids.length || out.some((r) => r.length !== o.newTokens + 1))
        throw new Error(`generate returned ${out.length} rows of ${out[0]?.length} ids, expected ${ids.length} of ${o.newTokens + 1}`);
      return out;
    };

    // Forward cases: `composed` over `inputs` gives rows [i·n, (i+1)·n) for adapter i; `partOf(i)` are its own inputs.
    const forwardCase = async (
      name: ComposeRow['case'],
      comp: AdapterComposition,
      count: number,
      n: number,
      ids: number[][],
      dec: number[][],
      partOf: (xs: number[][], i: number) => number[][],
    ): Promise<ComposeRow> => {
      const big = await forward(comp, ids, dec);
      let maxAbsDiff = 0;
      for (let i = 0; i < count; i++) {
        const own = await forward(names[i], partOf(ids, i), partOf(dec, i));
        maxAbsDiff = Math.max(maxAbsDiff, await maxAbsDiffRows(big, i * n, own));
        own.dispose();
      }
      const base = await forward(null, partOf(ids, 0), partOf(dec, 0));
      const loraEffect = await maxAbsDiffRows(big, 0, base);
      tf.dispose([base, big]);
      const batchedMs = await time(o.runs, o.warmup, async () => (await forward(comp, ids, dec)).dispose());
      const sequentialMs = await time(o.runs, o.warmup, async () => {
        for (let i = 0; i < count; i++) (await forward(names[i], partOf(ids, i), partOf(dec, i))).dispose();
      });
      const row: ComposeRow = {
        backend,
        model: o.model,
        case: name,
        adapters: count,
        rowsPerAdapter: n,
        batchedMs,
        sequentialMs,
        sequentialOverBatched: sequentialMs / batchedMs,
        maxAbsDiff,
        loraEffect,
      };
      say(
        `${name}: batched ${fmt(batchedMs)} ms, sequential ${fmt(sequentialMs)} ms (${ratio(row.sequentialOverBatched)}), max abs diff ${sci(maxAbsDiff)} (LoRA effect ${sci(loraEffect)})`,
      );
      return row;
    };

    // (a) BatchSplit: adapter i owns rows [i·R, (i+1)·R).
    const A = o.adapters;
    const R = o.rows;
    const ids = randomBatch(rng, A * R, o.source, V);
    const dec = randomDecoderBatch(rng, A * R, o.target, V, start);
    const split = BatchSplit(...names.slice(0, A), { batchSizes: Array(A).fill(R) });
    const slice = (xs: number[][], i: number) => xs.slice(i * R, (i + 1) * R);
    rows.push(await forwardCase('BatchSplit forward', split, A, R, ids, dec, slice));

    {
      const together = await greedy(split, ids);
      const apart: number[][] = [];
      for (let i = 0; i < A; i++) apart.push(...(await greedy(names[i], slice(ids, i))));
      const differing = rowsDiffering(together, apart);
      const batchedMs = await time(o.runs, o.warmup, async () => void (await greedy(split, ids)));
      const sequentialMs = await time(o.runs, o.warmup, async () => {
        for (let i = 0; i < A; i++) await greedy(names[i], slice(ids, i));
      });
      const row: ComposeRow = {
        backend,
        model: o.model,
        case: 'BatchSplit greedy',
        adapters: A,
        rowsPerAdapter: R,
        batchedMs,
        sequentialMs,
        sequentialOverBatched: sequentialMs / batchedMs,
        rowsDiffering: differing,
      };
      rows.push(row);
      say(`BatchSplit greedy: batched ${fmt(batchedMs)} ms, sequential ${fmt(sequentialMs)} ms (${ratio(row.sequentialOverBatched)}), ${differing}/${A * R} rows differ`);
    }

    // (b) Parallel: the same B rows for every adapter; output rows [i·B, (i+1)·B) belong to adapter i.
    const P = o.parallel;
    const B = o.parallelBatch;
    const pIds = ids.slice(0, B);
    const pDec = dec.slice(0, B);
    rows.push(await forwardCase('Parallel forward', Parallel(...names.slice(0, P)), P, B, pIds, pDec, (xs) => xs));
    return rows;
  } finally {
    model.dispose();
  }
}

function render(rows: ComposeRow[], o: ComposeOptions): string {
  const head = ['backend', 'model', 'case', 'work', 'batched ms', 'sequential ms', 'sequential / batched', 'check: batched = separate'];
  const body = rows.map((r) => {
    const shape = r.case === 'Parallel forward' ? `${r.adapters} adapters over ${r.rowsPerAdapter} rows` : `${r.adapters} adapters × ${r.rowsPerAdapter} rows`;
    const what = r.case === 'BatchSplit greedy' ? `${o.newTokens} new tok` : `tgt ${o.target}`;
    const check =
      r.rowsDiffering !== undefined
        ? `${r.rowsDiffering}/${r.adapters * r.rowsPerAdapter} rows' ids differ`
        : `max abs diff ${sci(r.maxAbsDiff!)} (LoRA effect ${sci(r.loraEffect!)})`;
    return [r.backend, r.model, r.case, `${shape}, src ${o.source}, ${what}`, fmt(r.batchedMs), fmt(r.sequentialMs), ratio(r.sequentialOverBatched), check];
  });
  return table(head, body);
}

export async function main(argv: string[]): Promise<ComposeRow[]> {
  const o = parseArgs(argv);
  const rows: ComposeRow[] = [];
  for (const backend of o.backends) {
    const info = await initBackend(backend);
    if (!o.json) process.stderr.write(`compose: ${backend} (${info.device}) ${o.model} …\n`);
    const before = tf.memory().numTensors;
    rows.push(...(await benchModel(backend, o)));
    const leaked = tf.memory().numTensors - before;
    if (leaked !== 0) process.stderr.write(`  warning: ${leaked} tensor(s) not disposed on ${backend}\n`);
  }
  if (o.json) console.log(JSON.stringify(rows, null, 2));
  else {
    console.log(
      `\nComposition benchmark — LoRA r 8 on q, v; medians of ${o.runs} run(s) after ${o.warmup} warm-up(s) (plus one checked call of each path), Node ${process.versions.node}\n`,
    );
    console.log(render(rows, o));
  }
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
