/**
 * adapterkit vs onnxruntime-node (what transformers.js runs in Node) on the same CPU and the same weights:
 * the flan-t5-small-shaped checkpoint of ../shared/peer and its ONNX export from PyTorch. One full forward
 * (encoder over the source, decoder over the target, logits read back) at each batch size, in one process.
 *
 * Rounds alternate onnxruntime, adapterkit's fused path (native CPU kernels for the wasm backend) and its
 * reference path (plain tfjs-wasm ops, ADAPTERKIT_KERNELS=reference: what adapterkit ran before the fused
 * kernels), with a short idle gap before each run so that neither side's spinning threads slow the other.
 * Ratios are speeds relative to onnxruntime (> 1: adapterkit faster). Not a test.
 *
 *   node tools/bench/dist/peer.js [--peer DIR] [--batches 1,8] [--runs 7] [--source 128] [--target 32]
 *                                 [--threads N] [--no-reference] [--json]
 *
 * --peer: the unpacked peer directory (default: runs ../shared/peer/unpack.sh next to the repository).
 * --threads: onnxruntime's intra-op threads (default: every processor, as adapterkit's kernels use).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { initBackend, tf } from '@adapterkit/backend';
import { nativeKernelsInfo, withKernelMode } from '@adapterkit/kernels';
import { SeededRandom } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { eachFlag, fmt, median, randomBatch, randomDecoderBatch, ratio, sci, table } from './common.js';

interface Options {
  peer?: string;
  batches: number[];
  runs: number;
  source: number;
  target: number;
  threads: number;
  reference: boolean;
  json: boolean;
}

export interface PeerRow {
  batch: number;
  onnxruntimeMs: number;
  fusedMs: number;
  referenceMs?: number;
  /** onnxruntime ms ÷ adapterkit ms: adapterkit's speed relative to onnxruntime. */
  fusedSpeed: number;
  referenceSpeed?: number;
  maxAbsDiff: number;
  maxAbsLogit: number;
  argmaxAgreement: number;
}

const USAGE = 'usage: node tools/bench/dist/peer.js [--peer DIR] [--batches 1,8] [--runs N] [--source N] [--target N] [--threads N] [--no-reference] [--json]';

export function parseArgs(argv: string[]): Options {
  const o: Options = { batches: [1, 8], runs: 7, source: 128, target: 32, threads: availableParallelism(), reference: true, json: false };
  eachFlag(argv, (a, value, int) => {
    if (a === '--peer') o.peer = value();
    else if (a === '--batches')
      o.batches = value()
        .split(',')
        .map((s) => Number(s.trim()));
    else if (a === '--runs') o.runs = int();
    else if (a === '--source') o.source = int();
    else if (a === '--target') o.target = int();
    else if (a === '--threads') o.threads = int();
    else if (a === '--no-reference') o.reference = false;
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  });
  if (!o.batches.every((b) => Number.isInteger(b) && b > 0)) throw new Error(`--batches needs positive integers, got ${o.batches}`);
  return o;
}

/** The peer directory: --peer, or ../shared/peer/unpack.sh beside the repository (it unpacks once and prints the path). */
function peerDir(o: Options): string {
  if (o.peer) return o.peer;
  const unpack = fileURLToPath(new URL('../../../../shared/peer/unpack.sh', import.meta.url));
  if (!existsSync(unpack)) throw new Error(`no --peer directory given and ${unpack} is not there`);
  return execFileSync('bash', [unpack], { encoding: 'utf8' }).trim();
}

const idle = (ms: number) => new Promise((r) => setTimeout(r, ms));
const IDLE_MS = Number(process.env.PEER_IDLE_MS ?? 30);

export async function main(argv: string[]): Promise<PeerRow[]> {
  const o = parseArgs(argv);
  const dir = peerDir(o);
  // onnxruntime-node is a dev dependency of this package only (never of adapterkit's own packages)
  const ort = (await import('onnxruntime-node')).default;
  const info = await initBackend('wasm');
  const native = nativeKernelsInfo();
  const model = await T5ForConditionalGeneration.fromPretrained(dir);
  const opts = { intraOpNumThreads: o.threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };
  const enc = await ort.InferenceSession.create(`${dir}/onnx/encoder_model.onnx`, opts);
  const dec = await ort.InferenceSession.create(`${dir}/onnx/decoder_model.onnx`, opts);
  const rows: PeerRow[] = [];
  const V = model.config.vocabSize;
  try {
    for (const batch of o.batches) {
      const rng = new SeededRandom(11 + batch);
      const ids = randomBatch(rng, batch, o.source, V);
      const dids = randomDecoderBatch(rng, batch, o.target, V, model.config.decoderStartTokenId);
      const big = (x: number[][]) => BigInt64Array.from(x.flat().map(BigInt));
      const mask = new BigInt64Array(batch * o.source).fill(1n);
      const runOrt = async (): Promise<Float32Array> => {
        const e = await enc.run({ input_ids: new ort.Tensor('int64', big(ids), [batch, o.source]), attention_mask: new ort.Tensor('int64', mask, [batch, o.source]) });
        const d = await dec.run({
          decoder_input_ids: new ort.Tensor('int64', big(dids), [batch, o.target]),
          encoder_hidden_states: e.last_hidden_state,
          encoder_attention_mask: new ort.Tensor('int64', mask, [batch, o.source]),
        });
        return d.logits.data as Float32Array;
      };
      const runAk = async (): Promise<Float32Array> => {
        const out = model.forward({ inputIds: ids, decoderInputIds: dids });
        const data = (await out.logits.data()) as Float32Array;
        tf.dispose([out.logits, out.encoderLastHiddenState]);
        return data;
      };
      const runRef = () => withKernelMode('reference', runAk);
      // agreement on the same inputs (random weights make large logits: compare the argmax too)
      const a = await runOrt();
      const b = await runAk();
      let maxDiff = 0;
      let maxLogit = 0;
      let agree = 0;
      for (let i = 0; i < a.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
        maxLogit = Math.max(maxLogit, Math.abs(a[i]));
      }
      for (let r = 0; r < a.length / V; r++) {
        let ia = 0;
        let ib = 0;
        for (let v = 1; v < V; v++) {
          if (a[r * V + v] > a[r * V + ia]) ia = v;
          if (b[r * V + v] > b[r * V + ib]) ib = v;
        }
        if (ia === ib) agree++;
      }
      if (o.reference) await runRef();
      const times = { ort: [] as number[], fused: [] as number[], ref: [] as number[] };
      const timed = async (fn: () => Promise<unknown>, into: number[]) => {
        await idle(IDLE_MS);
        const t0 = performance.now();
        await fn();
        into.push(performance.now() - t0);
      };
      for (let r = 0; r < o.runs; r++) {
        await timed(runOrt, times.ort);
        await timed(runAk, times.fused);
        if (o.reference) await timed(runRef, times.ref);
        if (!o.json) process.stderr.write(`  batch ${batch}: run ${r + 1}/${o.runs}\r`);
      }
      const ortMs = median(times.ort);
      const fusedMs = median(times.fused);
      const referenceMs = o.reference ? median(times.ref) : undefined;
      rows.push({
        batch,
        onnxruntimeMs: ortMs,
        fusedMs,
        referenceMs,
        fusedSpeed: ortMs / fusedMs,
        referenceSpeed: referenceMs ? ortMs / referenceMs : undefined,
        maxAbsDiff: maxDiff,
        maxAbsLogit: maxLogit,
        argmaxAgreement: agree / (a.length / V),
      });
    }
  } finally {
    model.dispose();
  }
  if (o.json) console.log(JSON.stringify({ backend: info, native, threads: o.threads, rows }, null, 2));
  else {
    console.log(`\nfull forward, flan-t5-small shape (${dir}), source ${o.source}, target ${o.target}; medians of ${o.runs} alternating runs`);
    console.log(
      `adapterkit: ${info.device}; native kernels: ${native.available ? `${native.simd}, ${native.threads} threads` : `unavailable (${native.reason})`}; onnxruntime-node: ${o.threads} intra-op threads\n`,
    );
    console.log(
      table(
        ['batch', 'onnxruntime ms', 'adapterkit fused ms', 'speed vs ort', 'adapterkit reference ms', 'speed vs ort', 'max |Δ logit| (max |logit|)', 'argmax agree'],
        rows.map((r) => [
          String(r.batch),
          fmt(r.onnxruntimeMs),
          fmt(r.fusedMs),
          ratio(r.fusedSpeed),
          fmt(r.referenceMs),
          ratio(r.referenceSpeed),
          `${sci(r.maxAbsDiff)} (${fmt(r.maxAbsLogit)})`,
          `${(100 * r.argmaxAgreement).toFixed(0)}%`,
        ]),
      ),
    );
  }
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
