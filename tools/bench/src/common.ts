/**
 * Shared pieces of the adapter benchmarks (compose.ts, lora.ts), in the style of t5.ts: flag parsing,
 * median timing, random ids, markdown tables, and the two model shapes.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf, type BackendName, type Tensor } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import { FLAN_T5_SMALL_SHAPE, T5ForConditionalGeneration } from '@adapterkit/t5';
import '@adapterkit/lora'; // registers the method that addLoras uses

export type ModelName = 'tiny' | 'flan';

export interface CommonOptions {
  backends: BackendName[];
  model: ModelName;
  runs: number;
  warmup: number;
  source: number;
  target: number;
  newTokens: number;
  quick: boolean;
  json: boolean;
}

/** A flag: its name and whether it takes a value (used by index.ts to route flags to the suites that know them). */
export interface FlagSpec {
  name: string;
  value: boolean;
}

export const COMMON_FLAGS: FlagSpec[] = [
  { name: '--backends', value: true },
  { name: '--model', value: true },
  { name: '--runs', value: true },
  { name: '--warmup', value: true },
  { name: '--source', value: true },
  { name: '--new-tokens', value: true },
  { name: '--quick', value: false },
  { name: '--json', value: false },
];

/**
 * Parses the common flags; `extra` handles a suite's own flags (returns false for an unknown one).
 * --quick means the tiny model (unless --model names one), 1 run and no warm-up: a smoke check, not figures.
 */
/** Walks command-line flags, giving each handler readers for the flag's value (`value`, positive `int`). */
export function eachFlag(argv: string[], handle: (flag: string, value: () => string, int: () => number) => void): void {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const int = () => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} needs a positive integer`);
      return n;
    };
    handle(a, value, int);
  }
}

export function parseCommon(
  argv: string[],
  defaults: Partial<CommonOptions>,
  usage: string,
  extra: (flag: string, value: () => string, int: () => number) => boolean = () => false,
): CommonOptions {
  const o: CommonOptions = { backends: ['wasm'], model: 'flan', runs: 3, warmup: 2, source: 64, target: 16, newTokens: 16, quick: false, json: false, ...defaults };
  let modelGiven = false;
  let runsGiven = false;
  let warmupGiven = false;
  eachFlag(argv, (a, value, int) => {
    if (a === '--backends')
      o.backends = value()
        .split(',')
        .map((s) => s.trim()) as BackendName[];
    else if (a === '--model') {
      const m = value().trim();
      if (m !== 'tiny' && m !== 'flan') throw new Error(`unknown model '${m}' (tiny, flan)`);
      o.model = m;
      modelGiven = true;
    } else if (a === '--runs') {
      o.runs = int();
      runsGiven = true;
    } else if (a === '--warmup') {
      // 0 is allowed here (t5.ts wants ≥ 1): the correctness check already runs every path once.
      const n = Number(value());
      if (!Number.isInteger(n) || n < 0) throw new Error(`${a} needs a non-negative integer`);
      o.warmup = n;
      warmupGiven = true;
    } else if (a === '--source') o.source = int();
    else if (a === '--target') o.target = int();
    else if (a === '--new-tokens') o.newTokens = int();
    else if (a === '--quick') o.quick = true;
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log(usage);
      process.exit(0);
    } else if (!extra(a, value, int)) throw new Error(`unknown argument ${a}\n${usage}`);
  });
  if (o.quick) {
    if (!modelGiven) o.model = 'tiny';
    if (!runsGiven) o.runs = 1;
    if (!warmupGiven) o.warmup = 0;
  }
  return o;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median ms of `runs` calls after `warmup` untimed ones. */
export async function time(runs: number, warmup: number, fn: () => Promise<void>): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

export function randomIds(rng: SeededRandom, length: number, vocab: number): number[] {
  // ids in [3, vocab): no pad/eos/unk, like real text; the source ends with </s> as the tokenizer adds.
  return [...Array.from({ length: length - 1 }, () => 3 + Math.floor(rng.next() * (vocab - 3))), 1];
}

/** `rows` random sources of `length` tokens. */
export function randomBatch(rng: SeededRandom, rows: number, length: number, vocab: number): number[][] {
  return Array.from({ length: rows }, () => randomIds(rng, length, vocab));
}

/** `rows` decoder inputs: the start token then target − 1 random tokens. */
export function randomDecoderBatch(rng: SeededRandom, rows: number, target: number, vocab: number, start: number): number[][] {
  return Array.from({ length: rows }, () => [start, ...randomIds(rng, target - 1, vocab)]);
}

/** The tiny fixture's shape (d_model 32, 2+2 layers, vocab 128), for random weights when the fixture is not there. */
export const TINY_SHAPE = {
  model_type: 't5',
  vocab_size: 128,
  d_model: 32,
  d_kv: 8,
  d_ff: 64,
  num_layers: 2,
  num_decoder_layers: 2,
  num_heads: 4,
  relative_attention_num_buckets: 8,
  relative_attention_max_distance: 20,
  feed_forward_proj: 'gated-gelu',
  tie_word_embeddings: true,
  scale_decoder_outputs: false,
  dropout_rate: 0,
  layer_norm_epsilon: 1e-6,
  decoder_start_token_id: 0,
  pad_token_id: 0,
  eos_token_id: 1,
};

const FIXTURE = fileURLToPath(new URL('../../../packages/t5/test/fixtures/tiny-gated', import.meta.url));

/**
 * flan: random weights (speed does not depend on them, and random flan-shaped models generate varied ids).
 * tiny: the trained fixture when it is there, as t5.ts — a random model this small generates only token 0,
 * which would make the greedy-ids checks vacuous.
 */
export async function loadModel(name: ModelName, seed = 0): Promise<T5ForConditionalGeneration> {
  if (name === 'flan') return T5ForConditionalGeneration.random(FLAN_T5_SMALL_SHAPE, seed);
  return existsSync(FIXTURE) ? T5ForConditionalGeneration.fromPretrained(FIXTURE) : T5ForConditionalGeneration.random(TINY_SHAPE, seed);
}

/** Adds `count` LoRA adapters a1…aN (r 8, q and v) with random B (LoRA's own init sets B = 0: no effect). */
export function addLoras(model: T5ForConditionalGeneration, count: number, seed = 7): string[] {
  const rng = new SeededRandom(seed);
  const names = Array.from({ length: count }, (_, i) => `a${i + 1}`);
  names.forEach((name, i) => {
    model.addAdapter(name, { method: 'lora', r: 8, alpha: 8, attn_matrices: ['q', 'v'] }, { seed: 100 + i });
    for (const [key, v] of model.adapters.adapterVariables(name)) {
      if (!key.endsWith('.lora_B')) continue;
      const t = tf.tensor(
        Float32Array.from({ length: v.size }, () => rng.normal(0, 0.02)),
        v.shape,
        'float32',
      );
      v.assign(t);
      t.dispose();
    }
  });
  return names;
}

/** Forward and wait for the device; returns the logits (caller disposes). */
export async function forwardLogits(model: T5ForConditionalGeneration, inputIds: number[][], decoderInputIds: number[][]): Promise<Tensor> {
  const out = model.forward({ inputIds, decoderInputIds });
  out.encoderLastHiddenState.dispose();
  await out.logits.data();
  return out.logits;
}

/** max |a[rowStart : rowStart + b.rows] − b| over all elements (async: safe on webgpu). */
export async function maxAbsDiffRows(a: Tensor, rowStart: number, b: Tensor): Promise<number> {
  const d = tf.tidy(() => {
    const begin = a.shape.map((_, i) => (i === 0 ? rowStart : 0));
    const size = a.shape.map((s, i) => (i === 0 ? (b.shape[0] as number) : (s as number)));
    return tf.max(tf.abs(tf.sub(tf.slice(a, begin, size), b)));
  });
  const [v] = await d.data();
  d.dispose();
  return v;
}

/** Number of rows of `a` that differ from `b`. */
export function rowsDiffering(a: number[][], b: number[][]): number {
  return a.filter((row, i) => row.length !== b[i]?.length || row.some((t, j) => t !== b[i][j])).length;
}

/** A markdown table, columns padded to their widest cell (as t5.ts prints). */
export function table(head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

export const fmt = (x: number | undefined, d = 1) => (x === undefined ? '—' : x.toFixed(d));
export const ratio = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '—' : `${x.toFixed(2)}×`);
export const sci = (x: number) => x.toExponential(1);
