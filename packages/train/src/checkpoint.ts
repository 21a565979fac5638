import {
  AdapterkitError,
  FileError,
  ModelMismatchError,
  checkAdapterName,
  cleanAtomicLeftovers,
  joinPath,
  readBytes,
  resolveAtomicDir,
  exists,
  readSafetensors,
  writeDirAtomic,
  writeFilesAtomic,
  writeSafetensors,
  type ModelDims,
} from '@adapterkit/core';
import { nodeImport } from '@adapterkit/backend';
import type { DataPosition } from './data.js';
import type { OptimizerState } from './optimizers.js';

export const CHECKPOINT_FORMAT = 'adapterkit-train-checkpoint';
export const CHECKPOINT_VERSION = 1;

/** trainer_state.json */
export interface TrainerState {
  format: typeof CHECKPOINT_FORMAT;
  version: number;
  step: number;
  adapters: string[];
  adapterConfigs: Record<string, unknown>;
  dims: ModelDims;
  optimizer: { config: Record<string, unknown>; step: number; paramSteps?: Record<string, number> };
  data: DataPosition;
  rng: { data: number; step: number };
  seed: number;
  batchSize: number;
  gradientAccumulationSteps: number;
  earlyStopping?: { best: number | null; badEvals: number };
}

/** A checkpoint as files (relative path → bytes): what Node writes to a directory and a browser can store. */
export type CheckpointFiles = Record<string, Uint8Array>;

export function packCheckpoint(state: TrainerState, optimizer: OptimizerState, adapterFiles: Record<string, Record<string, Uint8Array>>): CheckpointFiles {
  const files: CheckpointFiles = {};
  for (const name of Object.keys(adapterFiles)) checkAdapterName(name, 'checkpointed adapter name');
  for (const [name, fs] of Object.entries(adapterFiles)) for (const [f, bytes] of Object.entries(fs)) files[`adapters/${name}/${f}`] = bytes;
  files['optimizer.safetensors'] = writeSafetensors(optimizer.slots, { format: 'adapterkit-optimizer' });
  files['trainer_state.json'] = new TextEncoder().encode(`${JSON.stringify(state, null, 2)}\n`);
  return files;
}

export function unpackCheckpoint(
  files: CheckpointFiles,
  where = 'checkpoint',
): { state: TrainerState; slots: OptimizerState['slots']; adapterWeights: Map<string, Map<string, { shape: number[]; data: Float32Array }>> } {
  const stateBytes = files['trainer_state.json'];
  if (!stateBytes) throw new FileError(`${where} has no trainer_state.json`, where);
  let state: TrainerState;
  try {
    state = JSON.parse(new TextDecoder().decode(stateBytes));
  } catch (e) {
    throw new FileError(`${where}/trainer_state.json is not valid JSON: ${(e as Error).message}`, where);
  }
  if (state?.format !== CHECKPOINT_FORMAT) throw new FileError(`${where} is not an adapterkit training checkpoint (trainer_state.json format '${state?.format}')`, where);
  const opt = files['optimizer.safetensors'];
  if (!opt) throw new FileError(`${where} has no optimizer.safetensors`, where);
  const slots = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, t] of readSafetensors(opt, 'optimizer.safetensors').tensors)
    slots.set(k, { shape: t.shape, data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data) });
  const adapterWeights = new Map<string, Map<string, { shape: number[]; data: Float32Array }>>();
  if (!Array.isArray(state.adapters)) throw new FileError(`${where}/trainer_state.json has no list of adapters`, where);
  for (const name of state.adapters) checkAdapterName(name, `${where}/trainer_state.json names the adapter`);
  for (const name of state.adapters) {
    const bytes = files[`adapters/${name}/adapter_model.safetensors`];
    if (!bytes) throw new FileError(`${where} lacks the weights of adapter '${name}'`, where);
    const m = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [k, t] of readSafetensors(bytes, `adapters/${name}/adapter_model.safetensors`).tensors)
      m.set(k, { shape: t.shape, data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data) });
    adapterWeights.set(name, m);
  }
  return { state, slots, adapterWeights };
}

/** Refuses a checkpoint made for another model shape or other adapters/configs. */
export function checkCompatible(state: TrainerState, dims: ModelDims, adapters: string[], configs: Record<string, unknown>, optimizerConfig: Record<string, unknown>): void {
  for (const k of Object.keys(dims) as (keyof ModelDims)[]) {
    if (state.dims?.[k] !== dims[k]) throw new ModelMismatchError(`checkpoint was made for a model with ${k}=${state.dims?.[k]}, this model has ${k}=${dims[k]}`);
  }
  if (JSON.stringify(state.adapters) !== JSON.stringify(adapters))
    throw new ModelMismatchError(`checkpoint trains adapters [${state.adapters}], this trainer trains [${adapters}]`);
  for (const a of adapters) {
    if (JSON.stringify(state.adapterConfigs[a]) !== JSON.stringify(configs[a]))
      throw new ModelMismatchError(`checkpoint's adapter '${a}' has config ${JSON.stringify(state.adapterConfigs[a])}, this model's has ${JSON.stringify(configs[a])}`);
  }
  if (JSON.stringify(state.optimizer.config) !== JSON.stringify(optimizerConfig))
    throw new ModelMismatchError(`checkpoint's optimizer is ${JSON.stringify(state.optimizer.config)}, this trainer's is ${JSON.stringify(optimizerConfig)}`);
}

/**
 * Writes a checkpoint directory `dir/checkpoint-<step>` atomically (core's writeDirAtomic: the whole directory
 * appears complete or not at all, and a rewrite of the same step removes the old copy only after the new one
 * is in place), then replaces `latest.json`. What interrupted writes left behind is cleaned first. Keeps the
 * newest `keep` checkpoints.
 */
export async function writeCheckpoint(dir: string, step: number, files: CheckpointFiles, keep = 2): Promise<string> {
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const path = await nodeImport<typeof import('node:path')>('node:path');
  const name = `checkpoint-${step}`;
  try {
    await fs.mkdir(dir, { recursive: true });
    await cleanAtomicLeftovers(dir);
  } catch (e) {
    throw new FileError(`cannot write checkpoint ${name} into ${dir}: ${(e as Error).message}`, dir);
  }
  await writeDirAtomic(path.join(dir, name), files);
  await writeFilesAtomic(dir, { 'latest.json': `${JSON.stringify({ checkpoint: name, step })}\n` });
  if (keep > 0) {
    const steps = (await checkpointSteps(dir)).filter((s) => s !== step);
    for (const s of steps.slice(Math.max(0, keep - 1))) await fs.rm(path.join(dir, `checkpoint-${s}`), { recursive: true, force: true });
  }
  return path.join(dir, name);
}

/** Steps of the `checkpoint-<step>` directories in `dir`, newest first. */
async function checkpointSteps(dir: string): Promise<number[]> {
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const entries: string[] = await fs.readdir(dir).catch(() => []);
  return entries
    .map((e) => /^checkpoint-(\d+)$/.exec(e))
    .filter((m): m is RegExpExecArray => !!m)
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
}

/** Reads one checkpoint directory's files (the adapters named by its trainer_state.json). */
async function readCheckpointDir(dir: string): Promise<CheckpointFiles> {
  const files: CheckpointFiles = {
    'trainer_state.json': await readBytes(joinPath(dir, 'trainer_state.json')),
    'optimizer.safetensors': await readBytes(joinPath(dir, 'optimizer.safetensors')),
  };
  let state: { adapters?: unknown };
  try {
    state = JSON.parse(new TextDecoder().decode(files['trainer_state.json']));
  } catch (e) {
    throw new FileError(`${dir}/trainer_state.json is not valid JSON: ${(e as Error).message}`, dir);
  }
  for (const name of Array.isArray(state?.adapters) ? state.adapters : []) {
    checkAdapterName(name, `${dir}/trainer_state.json names the adapter`);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
      const p = joinPath(dir, `adapters/${name}/${f}`);
      if (await exists(p)) files[`adapters/${name}/${f}`] = await readBytes(p);
    }
  }
  unpackCheckpoint(files, dir); // complete and readable, or an error naming what is wrong
  return files;
}

/**
 * Reads a checkpoint: `source` is a checkpoint directory, or a checkpointDir. From a checkpointDir it reads
 * the newest complete checkpoint — the one latest.json names when that is complete, else (a crash, a
 * partial copy) the newest `checkpoint-<step>` that reads completely, a complete copy an interrupted rewrite
 * left beside it included. Only when none is complete is it an error (naming what was wrong with the newest).
 */
export async function readCheckpoint(source: string): Promise<{ files: CheckpointFiles; path: string }> {
  if (await exists(joinPath(source, 'trainer_state.json'))) return { files: await readCheckpointDir(source), path: source };
  const latest = joinPath(source, 'latest.json');
  const candidates: string[] = [];
  let named: string | undefined;
  if (await exists(latest)) {
    try {
      const info = JSON.parse(new TextDecoder().decode(await readBytes(latest)));
      if (typeof info?.checkpoint === 'string' && /^checkpoint-\d+$/.test(info.checkpoint)) named = info.checkpoint;
    } catch {
      // an unreadable latest.json is only a hint lost: the directories are scanned below
    }
  }
  const steps = await checkpointSteps(source);
  const newest = steps.length ? `checkpoint-${steps[0]}` : undefined;
  // latest.json names the newest checkpoint unless a crash came between a checkpoint's rename and its update.
  if (named && (!newest || Number(named.slice(11)) >= steps[0])) candidates.push(named);
  for (const s of steps) if (!candidates.includes(`checkpoint-${s}`)) candidates.push(`checkpoint-${s}`);
  if (named && !candidates.includes(named)) candidates.push(named);
  let firstError: unknown;
  for (const c of candidates) {
    const dir = await resolveAtomicDir(joinPath(source, c));
    try {
      return { files: await readCheckpointDir(dir), path: dir };
    } catch (e) {
      if (!(e instanceof AdapterkitError)) throw e;
      firstError ??= e;
    }
  }
  if (firstError) throw firstError;
  throw new FileError(`${source} is neither a training checkpoint (trainer_state.json) nor a checkpoint directory (latest.json or checkpoint-<step>)`, source);
}
