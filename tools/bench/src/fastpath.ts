/**
 * The fast path, measured against the reference path in one run (ADAPTERKIT_KERNELS=reference: every named
 * op as plain tfjs ops, the native CPU kernels off — what adapterkit ran before its fused kernels):
 *
 * - kernels per cached decoding step (tfjs kernels, as tf.profile counts them) and the step's time, for the
 *   flan-t5-small shape at batch 1 — base model, a LoRA on q and v (r 8), prefix tuning (10 tokens), and a
 *   BatchSplit of 4 LoRAs over 4 rows; per backend (WebGPU in Node is Dawn, here on SwiftShader);
 * - a LoRA training step with the Trainer (AdamW, gradient clipping): kernels, time, peak tensor memory
 *   (and the peak of the same batch's loss without gradients).
 *
 *   node tools/bench/dist/fastpath.js [--backends wasm,webgpu] [--cases base,lora,prefix,batchsplit]
 *        [--tokens 8] [--runs 5] [--train-backends wasm] [--batch 8] [--source 64] [--target 16] [--steps 3]
 *        [--no-reference] [--json]
 *
 * Step times are the difference of two generations (2 and 2 + tokens new tokens) over `tokens` — medians of
 * `runs` alternating pairs (one on webgpu, where a step takes seconds on SwiftShader): the encoder and the
 * first steps cancel out. Not a test.
 */
import { pathToFileURL } from 'node:url';
import { initBackend, tf, type BackendName } from '@adapterkit/backend';
import { BatchSplit, SeededRandom } from '@adapterkit/core';
import { kernelMode, setKernelMode, type KernelMode } from '@adapterkit/kernels';
import { FLAN_T5_SMALL_SHAPE, T5ForConditionalGeneration } from '@adapterkit/t5';
import { Trainer } from '@adapterkit/train';
import '@adapterkit/prefix';
import { addLoras, eachFlag, fmt, median, randomIds, ratio, table } from './common.js';

const CASES = ['base', 'lora', 'prefix', 'batchsplit'] as const;
type Case = (typeof CASES)[number];

interface Options {
  backends: BackendName[];
  cases: Case[];
  tokens: number;
  trainBackends: BackendName[];
  batch: number;
  source: number;
  target: number;
  steps: number;
  reference: boolean;
  runs: number;
  json: boolean;
}

export interface DecodeRow {
  backend: string;
  case: Case;
  mode: KernelMode;
  kernelsPerStep: number;
  stepMs: number;
}

export interface TrainRow {
  backend: string;
  mode: KernelMode;
  kernelsPerStep: number;
  stepMs: number;
  peakMiB: number;
  /** Peak of the same batch's loss without gradients. */
  inferencePeakMiB: number;
}

const USAGE =
  'usage: node tools/bench/dist/fastpath.js [--backends wasm,webgpu] [--cases base,lora,prefix,batchsplit] [--tokens N] [--runs N] [--train-backends wasm] [--batch N] [--source N] [--target N] [--steps N] [--no-reference] [--json]';

export function parseArgs(argv: string[]): Options {
  const o: Options = {
    backends: ['wasm', 'webgpu'],
    cases: [...CASES],
    tokens: 8,
    trainBackends: ['wasm'],
    batch: 8,
    source: 64,
    target: 16,
    steps: 3,
    reference: true,
    runs: 5,
    json: false,
  };
  const list = (v: string) =>
    v
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  eachFlag(argv, (a, value, int) => {
    if (a === '--backends') o.backends = list(value()) as BackendName[];
    else if (a === '--cases') {
      o.cases = list(value()) as Case[];
      for (const c of o.cases) if (!CASES.includes(c)) throw new Error(`unknown case '${c}' (${CASES.join(', ')})`);
    } else if (a === '--tokens') o.tokens = int();
    else if (a === '--train-backends') {
      const v = value();
      o.trainBackends = v === 'none' ? [] : (list(v) as BackendName[]);
    } else if (a === '--batch') o.batch = int();
    else if (a === '--source') o.source = int();
    else if (a === '--target') o.target = int();
    else if (a === '--steps') o.steps = int();
    else if (a === '--runs') o.runs = int();
    else if (a === '--no-reference') o.reference = false;
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  });
  return o;
}

/** Sets up a case's adapters; returns the source batch it decodes. */
function setup(model: T5ForConditionalGeneration, c: Case, source: number[]): number[][] {
  for (const { name } of model.listAdapters()) model.deleteAdapter(name);
  model.setActiveAdapters(null);
  if (c === 'lora') {
    addLoras(model, 1);
    model.setActiveAdapters('a1');
  } else if (c === 'prefix') {
    model.addAdapter('p', 'prefix_tuning[prefix_length=10]');
    model.setActiveAdapters('p');
  } else if (c === 'batchsplit') {
    const names = addLoras(model, 4);
    model.setActiveAdapters(BatchSplit(...names, { batchSizes: [1, 1, 1, 1] }));
    return [source, source, source, source];
  }
  return [source];
}

async function decodeStep(model: T5ForConditionalGeneration, inputIds: number[][], tokens: number, runs: number): Promise<{ kernels: number; ms: number }> {
  const gen = (n: number) => model.generate({ inputIds, maxNewTokens: n, eosTokenId: -1 });
  await gen(2); // compiles shaders / packs weights
  const kernels = async (n: number) => (await tf.profile(async () => void (await gen(n)))).kernels.length;
  const k1 = await kernels(2);
  const k2 = await kernels(2 + tokens);
  // medians of alternating short and long generations (single timings are noisy on a shared machine)
  const short: number[] = [];
  const long: number[] = [];
  for (let i = 0; i < runs; i++) {
    let t0 = performance.now();
    await gen(2);
    short.push(performance.now() - t0);
    t0 = performance.now();
    await gen(2 + tokens);
    long.push(performance.now() - t0);
  }
  const t1 = median(short);
  const t2 = median(long);
  return { kernels: (k2 - k1) / tokens, ms: (t2 - t1) / tokens };
}

async function trainStep(o: Options): Promise<{ kernels: number; ms: number; peak: number; inferencePeak: number }> {
  const model = T5ForConditionalGeneration.random({ ...FLAN_T5_SMALL_SHAPE }, 0);
  try {
    model.addAdapter('lora', 'lora[r=8,alpha=16]', { seed: 1 });
    const rng = new SeededRandom(3);
    const steps = o.steps + 1;
    const rows = Array.from({ length: o.batch * steps }, () => ({ inputIds: randomIds(rng, o.source, 32128), targetIds: randomIds(rng, o.target, 32128) }));
    // the same batch's loss without gradients: what training's peak memory is compared with
    model.setActiveAdapters('lora');
    const batch = rows.slice(0, o.batch);
    const inference = await tf.profile(() => void model.loss({ inputIds: batch.map((r) => r.inputIds), labels: batch.map((r) => r.targetIds) }).dispose());
    const times: number[] = [];
    let last = 0;
    const trainer = new Trainer(model, {
      adapters: 'lora',
      trainData: rows,
      maxSteps: steps,
      batchSize: o.batch,
      lr: 1e-4,
      shuffle: false,
      bucketWindow: 1,
      baseDropout: false,
      onProgress: () => {
        const now = performance.now();
        times.push(now - last);
        last = now;
      },
    });
    const prof = await tf.profile(async () => {
      last = performance.now();
      await trainer.train();
    });
    const measured = times.slice(1).sort((a, b) => a - b); // the first step creates optimizer slots
    return { kernels: prof.kernels.length / steps, ms: measured[measured.length >> 1], peak: prof.peakBytes / 2 ** 20, inferencePeak: inference.peakBytes / 2 ** 20 };
  } finally {
    model.dispose();
  }
}

export async function main(argv: string[]): Promise<{ decode: DecodeRow[]; train: TrainRow[] }> {
  const o = parseArgs(argv);
  const modes: KernelMode[] = o.reference ? ['fused', 'reference'] : ['fused'];
  const previous = kernelMode();
  const decode: DecodeRow[] = [];
  const train: TrainRow[] = [];
  const rng = new SeededRandom(5);
  const source = randomIds(rng, 16, 32128);
  try {
    for (const backend of o.backends) {
      const info = await initBackend(backend);
      const model = T5ForConditionalGeneration.random({ ...FLAN_T5_SMALL_SHAPE }, 0);
      try {
        for (const c of o.cases) {
          const inputIds = setup(model, c, source);
          for (const mode of modes) {
            setKernelMode(mode);
            if (!o.json) process.stderr.write(`decode ${backend} (${info.device}) ${c} ${mode} …\n`);
            const r = await decodeStep(model, inputIds, o.tokens, backend === 'webgpu' ? 1 : o.runs);
            decode.push({ backend, case: c, mode, kernelsPerStep: r.kernels, stepMs: r.ms });
          }
        }
      } finally {
        model.dispose();
      }
    }
    for (const backend of o.trainBackends) {
      await initBackend(backend);
      for (const mode of modes) {
        setKernelMode(mode);
        if (!o.json) process.stderr.write(`train ${backend} ${mode} …\n`);
        const r = await trainStep(o);
        train.push({ backend, mode, kernelsPerStep: r.kernels, stepMs: r.ms, peakMiB: r.peak, inferencePeakMiB: r.inferencePeak });
      }
    }
  } finally {
    setKernelMode(previous);
  }
  if (o.json) console.log(JSON.stringify({ decode, train }, null, 2));
  else {
    const find = <R extends { mode: KernelMode }>(rows: R[], match: (r: R) => boolean, mode: KernelMode) => rows.find((r) => match(r) && r.mode === mode);
    console.log(`\ncached decoding step, flan-t5-small shape, batch 1 (batchsplit: 4 rows), ${o.tokens} steps timed`);
    const seen = new Set<string>();
    const body: string[][] = [];
    for (const r of decode) {
      const key = `${r.backend}/${r.case}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const f = find(decode, (x) => x.backend === r.backend && x.case === r.case, 'fused')!;
      const ref = find(decode, (x) => x.backend === r.backend && x.case === r.case, 'reference');
      body.push([
        r.backend,
        r.case,
        fmt(f.kernelsPerStep, 0),
        fmt(ref?.kernelsPerStep, 0),
        ratio(ref ? f.kernelsPerStep / ref.kernelsPerStep : undefined),
        fmt(f.stepMs),
        fmt(ref?.stepMs),
        ratio(ref ? ref.stepMs / f.stepMs : undefined),
      ]);
    }
    console.log(table(['backend', 'case', 'kernels/step fused', 'reference', 'fused ÷ reference', 'step ms fused', 'reference', 'speed-up'], body));
    if (train.length) {
      console.log(`\nLoRA (q, v; r 8) training step with the Trainer, flan-t5-small shape, batch ${o.batch}, source ${o.source}, target ${o.target}`);
      const backends = [...new Set(train.map((t) => t.backend))];
      console.log(
        table(
          ['backend', 'kernels/step fused', 'reference', 'fused ÷ reference', 'step ms fused', 'reference', 'speed-up', 'peak MiB fused (inference)', 'reference (inference)'],
          backends.map((b) => {
            const f = find(train, (x) => x.backend === b, 'fused')!;
            const ref = find(train, (x) => x.backend === b, 'reference');
            return [
              b,
              fmt(f.kernelsPerStep, 0),
              fmt(ref?.kernelsPerStep, 0),
              ratio(ref ? f.kernelsPerStep / ref.kernelsPerStep : undefined),
              fmt(f.stepMs),
              fmt(ref?.stepMs),
              ratio(ref ? ref.stepMs / f.stepMs : undefined),
              `${fmt(f.peakMiB)} (${fmt(f.inferencePeakMiB)})`,
              ref ? `${fmt(ref.peakMiB)} (${fmt(ref.inferencePeakMiB)})` : '—',
            ];
          }),
        ),
      );
    }
  }
  return { decode, train };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
