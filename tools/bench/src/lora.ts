/**
 * LoRA and prefix-tuning generation benchmark (not a test): greedy tokens/s of the flan-t5-small shape
 * (random weights), batch 1, a 64-token source, 16 new tokens, per backend:
 *   - base model (no adapter active), KV cache;
 *   - LoRA r 8 on q, v (B random, so it changes the outputs) unmerged: the hooks add x·A·B at every site;
 *   - the same LoRA merged into the kernels (model.mergeAdapter, adapter left active as the README shows):
 *     should run at base speed;
 *   - prefix tuning (prefix_length 30, MLP reparameterisation) with the KV cache and without it, and the
 *     base model without it; then the prefix after model.ejectPrefix (MLP → flat prefixes), with the cache.
 * Ratios printed: unmerged / base and merged / base (tok/s), prefix cached / base, prefix uncached / cached
 * (time: what the cache saves). Checks (informative, before timing): merged vs unmerged logits (max |Δ|) and
 * greedy ids; prefix cached vs uncached greedy ids.
 *
 *   node tools/bench/dist/lora.js [--backends wasm,cpu,webgpu] [--model flan|tiny] [--runs 3] [--warmup 2]
 *        [--source 64] [--new-tokens 16] [--batch 1] [--prefix-length 30] [--quick] [--json]
 *
 * --quick: the tiny fixture model (d_model 32, 2+2 layers), 1 run, no warm-up: a smoke check, not figures.
 */
import { pathToFileURL } from 'node:url';
import { initBackend, tf, type BackendName } from '@adapterkit/backend';
import { SeededRandom, type AdapterComposition } from '@adapterkit/core';
import '@adapterkit/lora'; // registers the methods
import '@adapterkit/prefix';
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

export interface LoraOptions extends CommonOptions {
  batch: number;
  prefixLength: number;
}

export type Variant = 'base' | 'LoRA unmerged' | 'LoRA merged' | 'prefix' | 'base, no cache' | 'prefix, no cache' | 'prefix, ejected';

export interface LoraRow {
  backend: string;
  model: string;
  variant: Variant;
  /** Median ms of one greedy generation of newTokens (encoder included). */
  ms: number;
  tokPerS: number;
  /** A note from the check made before timing, if any. */
  check?: string;
}

export interface LoraRatios {
  backend: string;
  model: string;
  /** tok/s ratios (< 1: slower than the reference). */
  unmergedOverBase: number;
  mergedOverBase: number;
  prefixOverBase: number;
  prefixUncachedOverBaseUncached: number;
  /** tok/s ratio of the prefix after ejectPrefix (MLP → flat prefixes) to the base model. */
  ejectedOverBase: number;
  /** time ratio: prefix without the KV cache / with it. */
  prefixUncachedOverCachedTime: number;
}

export const LORA_FLAGS: FlagSpec[] = [...COMMON_FLAGS, { name: '--batch', value: true }, { name: '--prefix-length', value: true }];

const USAGE =
  'usage: node tools/bench/dist/lora.js [--backends wasm,cpu,webgpu] [--model flan|tiny] [--runs N] [--warmup N] [--source N] [--new-tokens N] [--batch N] [--prefix-length N] [--quick] [--json]';

export function parseArgs(argv: string[]): LoraOptions {
  const own = { batch: 1, prefixLength: 30 };
  const common = parseCommon(argv, { newTokens: 16 }, USAGE, (flag, _value, int) => {
    if (flag === '--batch') own.batch = int();
    else if (flag === '--prefix-length') own.prefixLength = int();
    else return false;
    return true;
  });
  return { ...common, ...own };
}

export async function benchModel(backend: BackendName, o: LoraOptions): Promise<{ rows: LoraRow[]; ratios: LoraRatios }> {
  const model = await loadModel(o.model);
  try {
    const V = model.config.vocabSize;
    const rng = new SeededRandom(42);
    const ids = randomBatch(rng, o.batch, o.source, V);
    const dec = randomDecoderBatch(rng, o.batch, 8, V, model.config.decoderStartTokenId);
    const [lora] = addLoras(model, 1);
    model.addAdapter('prefix', { method: 'prefix_tuning', prefix_length: o.prefixLength }, { seed: 3 });
    const say = (s: string) => o.json || process.stderr.write(`  ${s}\n`);

    // eos -1 never matches: every call generates exactly newTokens tokens.
    const greedy = async (comp: AdapterComposition | null, useCache = true) => {
      model.setActiveAdapters(comp);
      const out = await model.generate({ inputIds: ids, maxNewTokens: o.newTokens, eosTokenId: -1, useCache });
      if (out[0].length !== o.newTokens + 1) throw new Error(`generated ${out[0].length - 1} tokens, expected ${o.newTokens}`);
      return out;
    };
    const rows: LoraRow[] = [];
    const measure = async (variant: Variant, comp: AdapterComposition | null, useCache = true, check?: string) => {
      const ms = await time(o.runs, o.warmup, async () => void (await greedy(comp, useCache)));
      const row: LoraRow = { backend, model: o.model, variant, ms, tokPerS: (o.newTokens * o.batch * 1000) / ms, check };
      rows.push(row);
      say(`${variant}: ${fmt(ms)} ms, ${fmt(row.tokPerS)} tok/s${check ? ` (${check})` : ''}`);
      return row;
    };

    // Every variant is called once (for its check) before it is timed: with --quick (no warm-up) the first
    // call would otherwise pay for JIT and XNNPACK packing in whichever variant comes first.
    const baseIds = await greedy(null);
    const base = await measure('base', null);

    // Unmerged, then merged: compare a forward's logits and the greedy ids of both (merging reorders float sums).
    model.setActiveAdapters(lora);
    const unmergedLogits = await forwardLogits(model, ids, dec);
    const effect = await (async () => {
      model.setActiveAdapters(null);
      const b = await forwardLogits(model, ids, dec);
      const d = await maxAbsDiffRows(unmergedLogits, 0, b);
      b.dispose();
      return d;
    })();
    const unmergedIds = await greedy(lora);
    const unmerged = await measure('LoRA unmerged', lora, true, `LoRA effect on logits ${sci(effect)}, ${rowsDiffering(unmergedIds, baseIds)}/${o.batch} rows' ids ≠ base`);
    model.setActiveAdapters(lora);
    model.mergeAdapter(lora);
    let merged: Awaited<ReturnType<typeof measure>>;
    try {
      const mergedLogits = await forwardLogits(model, ids, dec);
      const diff = await maxAbsDiffRows(mergedLogits, 0, unmergedLogits);
      tf.dispose([mergedLogits, unmergedLogits]);
      const differing = rowsDiffering(await greedy(lora), unmergedIds);
      merged = await measure('LoRA merged', lora, true, `vs unmerged: logits max abs diff ${sci(diff)}, ${differing}/${o.batch} rows' ids differ`);
    } finally {
      model.unmergeAdapter(lora);
    }

    const cachedIds = await greedy('prefix', true);
    const uncachedIds = await greedy('prefix', false);
    const prefix = await measure('prefix', 'prefix', true, `prefix_length ${o.prefixLength}, ${rowsDiffering(cachedIds, baseIds)}/${o.batch} rows' ids ≠ base`);
    await greedy(null, false);
    const baseUncached = await measure('base, no cache', null, false);
    const prefixUncached = await measure('prefix, no cache', 'prefix', false, `${rowsDiffering(uncachedIds, cachedIds)}/${o.batch} rows' ids ≠ cached`);
    // ejectPrefix replaces the MLP by the prefixes it produces: what is left is the cost of the prefixes themselves.
    model.ejectPrefix('prefix');
    const ejectedIds = await greedy('prefix', true);
    const ejected = await measure('prefix, ejected', 'prefix', true, `ejectPrefix (flat), ${rowsDiffering(ejectedIds, cachedIds)}/${o.batch} rows' ids ≠ MLP`);

    const ratios: LoraRatios = {
      backend,
      model: o.model,
      unmergedOverBase: unmerged.tokPerS / base.tokPerS,
      mergedOverBase: merged.tokPerS / base.tokPerS,
      prefixOverBase: prefix.tokPerS / base.tokPerS,
      prefixUncachedOverBaseUncached: prefixUncached.tokPerS / baseUncached.tokPerS,
      ejectedOverBase: ejected.tokPerS / base.tokPerS,
      prefixUncachedOverCachedTime: prefixUncached.ms / prefix.ms,
    };
    return { rows, ratios };
  } finally {
    model.dispose();
  }
}

export async function main(argv: string[]): Promise<{ rows: LoraRow[]; ratios: LoraRatios[] }> {
  const o = parseArgs(argv);
  const rows: LoraRow[] = [];
  const ratios: LoraRatios[] = [];
  for (const backend of o.backends) {
    const info = await initBackend(backend);
    if (!o.json) process.stderr.write(`lora: ${backend} (${info.device}) ${o.model} …\n`);
    const before = tf.memory().numTensors;
    const r = await benchModel(backend, o);
    rows.push(...r.rows);
    ratios.push(r.ratios);
    const leaked = tf.memory().numTensors - before;
    if (leaked !== 0) process.stderr.write(`  warning: ${leaked} tensor(s) not disposed on ${backend}\n`);
  }
  if (o.json) console.log(JSON.stringify({ rows, ratios }, null, 2));
  else {
    console.log(
      `\nLoRA / prefix generation benchmark — greedy, batch ${o.batch}, src ${o.source}, ${o.newTokens} new tokens; medians of ${o.runs} run(s) after ${o.warmup} warm-up(s), Node ${process.versions.node}\n`,
    );
    console.log(
      table(
        ['backend', 'model', 'variant', 'greedy ms', 'tok/s', 'check (before timing)'],
        rows.map((r) => [r.backend, r.model, r.variant, fmt(r.ms), fmt(r.tokPerS), r.check ?? '']),
      ),
    );
    console.log('');
    console.log(
      table(
        [
          'backend',
          'model',
          'unmerged / base (tok/s)',
          'merged / base (tok/s)',
          'prefix / base (tok/s)',
          'prefix / base, no cache (tok/s)',
          'prefix no cache / cached (time)',
          'prefix ejected / base (tok/s)',
        ],
        ratios.map((r) => [
          r.backend,
          r.model,
          ratio(r.unmergedOverBase),
          ratio(r.mergedOverBase),
          ratio(r.prefixOverBase),
          ratio(r.prefixUncachedOverBaseUncached),
          ratio(r.prefixUncachedOverCachedTime),
          ratio(r.ejectedOverBase),
        ]),
      ),
    );
  }
  return { rows, ratios };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
