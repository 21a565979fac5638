import { FileError, ModelMismatchError, joinPath, readBytes, exists, readSafetensors, writeFilesAtomic, writeSafetensors, type ModelDims } from '@adapterkit/core';
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
 * Writes a checkpoint directory `dir/checkpoint-<step>` atomically: every file is written (atomically) into
 * a temporary directory that is renamed into place, then `latest.json` is replaced. A crash leaves the
 * previous checkpoint and `latest.json` intact. Keeps the newest `keep` checkpoints.
 */
export async function writeCheckpoint(dir: string, step: number, files: CheckpointFiles, keep = 2): Promise<string> {
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const path = await nodeImport<typeof import('node:path')>('node:path');
  const name = `checkpoint-${step}`;
  const tmp = path.join(dir, `.tmp-${name}-${process.pid}-${Date.now()}`);
  const byDir = new Map<string, Record<string, Uint8Array>>();
  for (const [rel, bytes] of Object.entries(files)) {
    const d = path.dirname(rel);
    if (!byDir.has(d)) byDir.set(d, {});
    byDir.get(d)![path.basename(rel)] = bytes;
  }
  // trainer_state.json (the top directory) last: its presence marks a complete checkpoint.
  const dirs = [...byDir.keys()].sort((a, b) => (a === '.' ? 1 : b === '.' ? -1 : a.localeCompare(b)));
  try {
    for (const d of dirs) await writeFilesAtomic(path.join(tmp, d), byDir.get(d)!);
    const final = path.join(dir, name);
    await fs.rm(final, { recursive: true, force: true });
    await fs.rename(tmp, final);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw e instanceof FileError ? e : new FileError(`cannot write checkpoint ${name} into ${dir}: ${(e as Error).message}`, dir);
  }
  await writeFilesAtomic(dir, { 'latest.json': `${JSON.stringify({ checkpoint: name, step })}\n` });
  if (keep > 0) {
    const entries: string[] = await fs.readdir(dir);
    const steps = entries
      .map((e) => /^checkpoint-(\d+)$/.exec(e))
      .filter((m): m is RegExpExecArray => !!m)
      .map((m) => Number(m[1]))
      .sort((a, b) => b - a);
    for (const s of steps.slice(keep)) if (s !== step) await fs.rm(path.join(dir, `checkpoint-${s}`), { recursive: true, force: true });
  }
  return path.join(dir, name);
}

/** Reads a checkpoint: `source` is a checkpoint directory, or a checkpointDir holding latest.json. */
export async function readCheckpoint(source: string): Promise<{ files: CheckpointFiles; path: string }> {
  let dir = source;
  if (!(await exists(joinPath(dir, 'trainer_state.json')))) {
    const latest = joinPath(source, 'latest.json');
    if (!(await exists(latest))) throw new FileError(`${source} is neither a training checkpoint (trainer_state.json) nor a checkpoint directory (latest.json)`, source);
    const info = JSON.parse(new TextDecoder().decode(await readBytes(latest)));
    dir = joinPath(source, String(info.checkpoint));
  }
  const files: CheckpointFiles = {
    'trainer_state.json': await readBytes(joinPath(dir, 'trainer_state.json')),
    'optimizer.safetensors': await readBytes(joinPath(dir, 'optimizer.safetensors')),
  };
  const state = JSON.parse(new TextDecoder().decode(files['trainer_state.json']));
  for (const name of Array.isArray(state.adapters) ? state.adapters : []) {
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
      const p = joinPath(dir, `adapters/${name}/${f}`);
      if (await exists(p)) files[`adapters/${name}/${f}`] = await readBytes(p);
    }
  }
  return { files, path: dir };
}
