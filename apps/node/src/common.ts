/**
 * Shared pieces of the CLI: backend start-up, model/adapter loading, the composition parser, input parsing,
 * padding, and the error → exit-code mapping.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { basename, dirname, resolve } from 'node:path';
import { initBackend, type BackendInfo, type BackendRequest } from '@adapterkit/backend';
import { AdapterkitError, Average, BatchSplit, Fuse, type HubOptions, isHubId, Parallel, Split, Stack, type AdapterComposition, type AdapterConfig } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
// Method packages register themselves with core on import (LoRA/IA3, bottleneck, prefix, prompt); presets
// adds the combined configs (mam, unipelt).
import '@adapterkit/lora';
import '@adapterkit/bottleneck';
import '@adapterkit/prefix';
import '@adapterkit/prompt';
import '@adapterkit/presets';
import { downloadProgress } from './progress.js';

/** The tiny T5 shipped with the CLI (apps/node/models/tiny-gated). */
export const BUNDLED_MODEL = resolve(dirname(fileURLToPath(import.meta.url)), '../models/tiny-gated');

/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
  readonly code = 'USAGE_ERROR';
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export const BACKENDS = ['auto', 'cpu', 'wasm', 'webgpu', 'tensorflow'] as const;

/** Starts the requested backend and says on stderr which one was chosen (unless quiet). */
export async function startBackend(request: string, opts: { quiet?: boolean } = {}): Promise<BackendInfo> {
  if (!(BACKENDS as readonly string[]).includes(request)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${request}'`);
  const info = await initBackend(request as BackendRequest);
  if (!opts.quiet) process.stderr.write(`backend: ${info.name} — ${info.device}${request === 'auto' ? ' (auto)' : ''}\n`);
  return info;
}

/** How Hub ids are fetched for this run: offline or not, and whether a download progress bar is drawn. */
const hubRun: { offline?: boolean; quiet?: boolean } = {};
export function configureHub(options: { offline?: boolean; quiet?: boolean }): void {
  Object.assign(hubRun, options);
}

export function hubOptions(): HubOptions {
  return { ...(hubRun.offline ? { offline: true } : {}), onProgress: downloadProgress(!!hubRun.quiet) };
}

/** A local path (resolved) unless it names no existing path and reads as a Hub id (`org/name[@revision]`). */
export function modelSource(source: string | undefined): string {
  const s = source ?? BUNDLED_MODEL;
  return !existsSync(s) && isHubId(s) ? s : resolve(s);
}

export async function loadModel(dir: string | undefined): Promise<T5ForConditionalGeneration> {
  return T5ForConditionalGeneration.fromPretrained(modelSource(dir), hubOptions());
}

/** `dir` or `name=dir` (dir: a path or a Hub id) → [name, absolute dir or Hub id]. */
export function parseAdapterSpec(spec: string): [string, string] {
  const m = /^([A-Za-z0-9_.-]+)=(.+)$/.exec(spec);
  const dir = modelSource(m ? m[2] : spec);
  return [m ? m[1] : basename(dir.replace(/@[^/]*$/, '')).replace(/[\s,()]/g, '_'), dir];
}

/** `--adapter dir` or `--adapter name=dir`; returns the names in order. */
export async function loadAdapters(model: T5ForConditionalGeneration, specs: string[] = []): Promise<string[]> {
  const names: string[] = [];
  for (const spec of specs) {
    const [name, dir] = parseAdapterSpec(spec);
    names.push(await model.loadAdapter(dir, { name, hub: hubOptions() }));
  }
  return names;
}

/**
 * Parses the composition mini-language:
 *   name | Block(child, child, …[; numbers])
 * Blocks: Stack, Parallel, BatchSplit(a,b;2,1) (batch sizes), Average(a,b;0.3,0.7) (weights),
 * Split(a,b;4,4) (split points), Fuse(a,b). Whitespace is ignored.
 */
export function parseComposition(text: string): AdapterComposition {
  const s = text.replace(/\s+/g, '');
  let pos = 0;
  const fail = (msg: string): never => {
    throw new UsageError(`bad composition '${text}' at position ${pos}: ${msg}`);
  };
  const ident = (): string => {
    const m = /^[A-Za-z0-9_.-]+/.exec(s.slice(pos));
    if (!m) fail('expected an adapter name or a block');
    pos += m![0].length;
    return m![0];
  };
  const numbers = (): number[] => {
    const m = /^[-+0-9.eE,]+/.exec(s.slice(pos));
    if (!m) fail('expected numbers after ;');
    pos += m![0].length;
    const out = m![0].split(',').map(Number);
    if (out.some((x) => !Number.isFinite(x))) fail(`'${m![0]}' is not a list of numbers`);
    return out;
  };
  const node = (): AdapterComposition => {
    const id = ident();
    if (s[pos] !== '(') return id;
    pos++;
    const children: AdapterComposition[] = [node()];
    while (s[pos] === ',') {
      pos++;
      children.push(node());
    }
    let nums: number[] | undefined;
    if (s[pos] === ';') {
      pos++;
      nums = numbers();
    }
    if (s[pos] !== ')') fail("expected ')'");
    pos++;
    return block(id, children, nums);
  };
  const block = (type: string, c: AdapterComposition[], nums?: number[]): AdapterComposition => {
    const noNums = () => {
      if (nums) fail(`${type} takes no numbers`);
    };
    switch (type) {
      case 'Stack':
        noNums();
        return Stack(...c);
      case 'Parallel':
        noNums();
        return Parallel(...c);
      case 'Fuse':
        noNums();
        return Fuse(...c);
      case 'BatchSplit':
        if (!nums) fail('BatchSplit needs batch sizes: BatchSplit(a,b;2,1)');
        return BatchSplit(...c, { batchSizes: nums! });
      case 'Split':
        if (!nums) fail('Split needs split sizes: Split(a,b;4,4)');
        return Split(...c, { splits: nums! });
      case 'Average':
        return nums ? Average(...c, { weights: nums }) : Average(...c);
      default:
        return fail(`unknown block '${type}' (Stack, Parallel, BatchSplit, Average, Split, Fuse)`);
    }
  };
  const out = node();
  if (pos !== s.length) fail('unexpected trailing text');
  return out;
}

/** An adapter config option: a preset/config string, or a JSON object when it starts with '{' (malformed JSON names the option). */
export function parseConfigOption(text: string, option: string): string | AdapterConfig {
  if (!text.trim().startsWith('{')) return text;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${option} is not valid JSON: ${(e as Error).message}`);
  }
}

/** Parses "12,14,53,1" or "12 14 53 1" into token ids. */
export function parseIds(text: string, vocabSize?: number): number[] {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  if (parts.length === 0) throw new UsageError('an input has no token ids');
  return parts.map((p) => {
    const v = Number(p);
    if (!Number.isInteger(v) || v < 0 || (vocabSize !== undefined && v >= vocabSize)) {
      throw new UsageError(`'${p}' is not a token id${vocabSize ? ` in [0, ${vocabSize})` : ''}`);
    }
    return v;
  });
}

/** Right-pads rows with `pad`; the mask marks real tokens. */
export function padRows(rows: number[][], pad = 0): { inputIds: number[][]; attentionMask: number[][] } {
  const T = Math.max(...rows.map((r) => r.length));
  return {
    inputIds: rows.map((r) => [...r, ...new Array(T - r.length).fill(pad)]),
    attentionMask: rows.map((r) => [...new Array(r.length).fill(1), ...new Array(T - r.length).fill(0)]),
  };
}

/** Generated row → ids after the decoder start token, cut after the first eos (finished rows carry pads). */
export function trimGenerated(row: number[], eos: number | number[]): number[] {
  const eosSet = new Set(Array.isArray(eos) ? eos : [eos]);
  const out: number[] = [];
  for (const t of row.slice(1)) {
    out.push(t);
    if (eosSet.has(t)) break;
  }
  return out;
}

/** Reads all of stdin (for inputs piped in). */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export function exitCodeFor(e: unknown): number {
  if (e instanceof UsageError) return 2;
  if ((e as { code?: string })?.code?.startsWith?.('commander.')) return 2;
  return 1;
}

export function describeError(e: unknown): string {
  if (e instanceof AdapterkitError) return `${e.name} (${e.code}): ${e.message}`;
  if (e instanceof Error) return e.message;
  return String(e);
}
