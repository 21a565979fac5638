import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  ADAPTERS_FORMAT_RELEASE,
  AdapterError,
  ConfigError,
  FileError,
  Fuse,
  ModelMismatchError,
  UnsupportedError,
  WeightError,
  assignFileTensors,
  exists,
  joinPath,
  parseJson,
  readBytes,
  readSafetensors,
  readTorchCheckpoint,
  rejectUnknownOptions,
  slotTensor,
  writeDirAtomic,
  writeSafetensors,
  writeTorchCheckpoint,
  type AdapterComposition,
  type AdapterHost,
  type FileTensor,
  type FuseBlock,
} from '@adapterkit/core';
import { bottleneckMethod } from './method.js';
import type { BottleneckRuntime } from './runtime.js';
import type { BottleneckConfig } from './config.js';
import { normalizeFusionConfig, type AdapterFusionConfig } from './fusion.js';
import { adaptersFusionProblem, fusionLayersWithoutAdapters, fusionSlots } from './adapters-format.js';

export interface HasAdapters {
  readonly adapters: AdapterHost;
}

/** The model's bottleneck runtime (AdapterFusion layers live beside the adapters they fuse). */
function runtimeOf(model: HasAdapters): BottleneckRuntime {
  return model.adapters.runtimeOf(bottleneckMethod);
}

function fusionNameOf(block: FuseBlock | string[] | string): { name: string; adapters: string[] } {
  if (typeof block === 'string') return { name: block, adapters: block.split(',') };
  if (Array.isArray(block)) return { name: block.join(','), adapters: [...block] };
  const adapters = block.children.map((c: AdapterComposition) => {
    if (typeof c !== 'string') throw new ConfigError(`AdapterFusion over a ${c.type} block is not supported: fuse adapter names`, 'Fuse');
    return c;
  });
  return { name: block.name, adapters };
}

/** `adapters`' add_adapter_fusion: BertFusion modules at every sub-layer where all fused adapters sit. */
export function addAdapterFusion(
  model: HasAdapters,
  block: FuseBlock | string[],
  config: 'dynamic' | 'static' | Partial<AdapterFusionConfig> = 'dynamic',
  options: { seed?: number } = {},
): string {
  const { name, adapters } = fusionNameOf(block);
  for (const a of adapters) if (!model.adapters.hasAdapter(a)) throw new AdapterError(`cannot fuse unknown adapter '${a}'`, a);
  runtimeOf(model).addFusion(name, adapters, normalizeFusionConfig(config), options.seed ?? 42);
  return name;
}

export function deleteAdapterFusion(model: HasAdapters, block: FuseBlock | string[] | string): void {
  runtimeOf(model).deleteFusion(fusionNameOf(block).name);
}

/** The fusion's variables (`${site}.adapter_fusion_layer.${name}.{query,key,value}.{weight,bias}`). */
export function adapterFusionVariables(model: HasAdapters, block: FuseBlock | string[] | string): Map<string, Variable> {
  return runtimeOf(model).fusionVariables(fusionNameOf(block).name);
}

/**
 * `adapters`' train_adapter_fusion: activates the Fuse block, freezes every adapter, and returns the fusion's
 * variables (marked trainable) for tf.variableGrads.
 */
export function trainAdapterFusion(model: HasAdapters & { setActiveAdapters(c: AdapterComposition | null): void }, block: FuseBlock): Variable[] {
  const vars = [...adapterFusionVariables(model, block).values()];
  model.setActiveAdapters(block);
  for (const a of model.adapters.listAdapters()) for (const v of model.adapters.adapterVariables(a.name).values()) (v as { trainable: boolean }).trainable = false;
  for (const v of vars) (v as { trainable: boolean }).trainable = true;
  return vars;
}

/**
 * adapters' get_fusion_regularization_loss: 0.01 · Σ‖I − W_value‖² over the fusion's layers (configs with
 * `regularization` and a value matrix). Add it to the task loss while training the fusion.
 */
export function fusionRegularizationLoss(model: HasAdapters, block: FuseBlock | string[] | string): Tensor {
  const entry = runtimeOf(model).fusion(fusionNameOf(block).name);
  if (!entry) throw new AdapterError(`no AdapterFusion '${fusionNameOf(block).name}'`);
  return tf.tidy(() => {
    let loss: Tensor = tf.scalar(0);
    if (!entry.config.regularization || !entry.config.value) return loss;
    for (const m of entry.modules.values()) {
      const w = m.vars.get('value.weight')!;
      loss = loss.add(
        tf
          .eye(w.shape[0] as number)
          .sub(w)
          .square()
          .sum()
          .mul(0.01),
      );
    }
    return loss;
  });
}

const FUSION_CONFIG_FILE = 'adapter_fusion_config.json';
/** adapterkit's weights file, and `adapters`' SAFE_ADAPTERFUSION_WEIGHTS_NAME (use_safetensors=True). */
const FUSION_WEIGHTS_FILE = 'model_adapter_fusion.safetensors';
/** `adapters`' ADAPTERFUSION_WEIGHTS_NAME (torch.save, its default). */
const FUSION_TORCH_FILE = 'pytorch_model_adapter_fusion.bin';

/** AdapterFusion file formats: adapterkit's own, AdapterHub `adapters`' (AdapterFusionLoader). */
export type FusionFormat = 'adapterkit' | 'adapters';

export interface SaveFusionOptions {
  format?: FusionFormat;
  /**
   * `adapters` format only: false writes `pytorch_model_adapter_fusion.bin` (torch.save; save_adapter_fusion's
   * default, use_safetensors=False) instead of `model_adapter_fusion.safetensors`. Default true.
   */
  safeSerialization?: boolean;
}

/**
 * A fusion directory is the config and ONE weights file: a re-save in the other serialization drops the old
 * file (loading prefers the safetensors one, which would otherwise be stale). README.md is kept.
 */
const FUSION_DIR_ENTRIES = { replaces: [FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE, FUSION_TORCH_FILE], carries: ['README.md'], shared: 'in-place' } as const;

/** JSON with keys sorted at every level and two-space indents, as `adapters` writes configs (json.dump(sort_keys=True, indent=2)). */
function sortedJsonText(value: Record<string, unknown>): string {
  return JSON.stringify(value, (_, v) => (v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v), 2);
}

/**
 * Saves a fusion (config + weights; atomic). The fused adapters are saved separately with saveAdapter.
 * `format: 'adapters'` writes what `adapters`' save_adapter_fusion(dir, names, use_safetensors=True) writes:
 * adapter_fusion_config.json (build_full_config: `config` = AdapterFusionConfig.to_dict(), `adapter_names`, `name`,
 * model fields) and model_adapter_fusion.safetensors with keys `<sub-layer>.adapter_fusion_layer.<name>.…`.
 */
export async function saveAdapterFusion(model: HasAdapters, dir: string, block: FuseBlock | string[] | string, options: SaveFusionOptions = {}): Promise<void> {
  rejectUnknownOptions(options, { format: true, safeSerialization: true }, 'saveAdapterFusion');
  const format = options.format ?? 'adapterkit';
  if (format !== 'adapterkit' && format !== 'adapters') throw new ConfigError(`format must be 'adapterkit' or 'adapters', got ${JSON.stringify(format)}`, 'format');
  const safe = options.safeSerialization ?? true;
  if (typeof safe !== 'boolean') throw new ConfigError(`safeSerialization must be true or false, got ${JSON.stringify(safe)}`, 'safeSerialization');
  if (!safe && format !== 'adapters')
    throw new ConfigError("safeSerialization: false (a torch.save .bin file) is only for format 'adapters'; adapterkit's own format is always safetensors", 'safeSerialization');
  const rt = runtimeOf(model);
  const { name } = fusionNameOf(block);
  const entry = rt.fusion(name);
  if (!entry) throw new AdapterError(`no AdapterFusion '${name}'`);
  const vars = rt.fusionVariables(name);
  await Promise.all([...vars.values()].map((v) => v.data())); // slotTensor reads synchronously
  const d = model.adapters.model.dims;
  if (format === 'adapters') {
    const problem = adaptersFusionProblem(entry.config, adapterConfigs(rt, entry.adapters));
    if (problem) throw new UnsupportedError(problem.message, problem.option);
    const config = {
      adapter_names: entry.adapters,
      config: { architecture: null, ...entry.config },
      hidden_size: d.dModel,
      model_class: model.adapters.model.adaptersModelClass ?? null,
      model_name: null,
      model_type: d.modelType,
      name,
      version: `adapters.${ADAPTERS_FORMAT_RELEASE}`,
    };
    const tensors = new Map(fusionSlots(vars).map((slot) => [slot.key, slotTensor(slot)]));
    // the torch archive is named after the file's stem, as torch.save names it
    const weights: Record<string, Uint8Array> = safe
      ? { [FUSION_WEIGHTS_FILE]: writeSafetensors(tensors, { format: 'pt' }) }
      : { [FUSION_TORCH_FILE]: writeTorchCheckpoint(tensors, 'pytorch_model_adapter_fusion') };
    await writeDirAtomic(dir, { [FUSION_CONFIG_FILE]: sortedJsonText(config), ...weights }, FUSION_DIR_ENTRIES);
    return;
  }
  const tensors = new Map([...vars].map(([k, v]) => [k, { shape: v.shape, data: Float32Array.from(v.dataSync() as Float32Array) }]));
  const config = {
    format: 'adapterkit-fusion',
    format_version: 1,
    name,
    adapters: entry.adapters,
    config: entry.config,
    model_type: d.modelType,
    dims: { d_model: d.dModel, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers },
  };
  await writeDirAtomic(
    dir,
    { [FUSION_CONFIG_FILE]: `${JSON.stringify(config, null, 2)}\n`, [FUSION_WEIGHTS_FILE]: writeSafetensors(tensors, { format: 'adapterkit' }) },
    FUSION_DIR_ENTRIES,
  );
}

function adapterConfigs(rt: BottleneckRuntime, adapters: string[]): BottleneckConfig[] {
  return adapters.map((a) => rt.config(a)!);
}

/** A fusion directory's weights (float tensors), from the safetensors file or `adapters`' torch.save file. */
async function readFusionWeights(dir: string, torch: boolean): Promise<Map<string, FileTensor>> {
  const file = torch ? FUSION_TORCH_FILE : FUSION_WEIGHTS_FILE;
  const bytes = await readBytes(joinPath(dir, file));
  const { tensors } = torch ? readTorchCheckpoint(bytes, file) : readSafetensors(bytes, file);
  const out = new Map<string, FileTensor>();
  for (const [k, t] of tensors) {
    if (!(t.data instanceof Float32Array)) throw new WeightError(`AdapterFusion tensor '${k}' has integer dtype ${t.dtype}; fusion weights must be F32, F16 or BF16`, k);
    out.set(k, { shape: t.shape, data: t.data });
  }
  return out;
}

/**
 * Loads a fusion saved by saveAdapterFusion, or by `adapters`' save_adapter_fusion (detected; its
 * model_adapter_fusion.safetensors or pytorch_model_adapter_fusion.bin). Its adapters must already be loaded;
 * returns its name.
 */
export async function loadAdapterFusion(model: HasAdapters, dir: string): Promise<string> {
  const cfgPath = joinPath(dir, FUSION_CONFIG_FILE);
  const safe = await exists(joinPath(dir, FUSION_WEIGHTS_FILE));
  if (!(await exists(cfgPath)) || (!safe && !(await exists(joinPath(dir, FUSION_TORCH_FILE)))))
    throw new FileError(`${dir} is not an AdapterFusion directory (needs ${FUSION_CONFIG_FILE} and ${FUSION_WEIGHTS_FILE} or ${FUSION_TORCH_FILE})`, dir);
  const cfg = parseJson(new TextDecoder().decode(await readBytes(cfgPath)), FUSION_CONFIG_FILE);
  const adaptersFormat = cfg?.format !== 'adapterkit-fusion' && cfg?.config && typeof cfg.config === 'object' && typeof cfg.name === 'string';
  if (!adaptersFormat && (cfg?.format !== 'adapterkit-fusion' || typeof cfg.name !== 'string' || !Array.isArray(cfg.adapters)))
    throw new FileError(`${FUSION_CONFIG_FILE} is neither an adapterkit AdapterFusion config nor an AdapterHub adapters one (config, name)`, FUSION_CONFIG_FILE);
  if (!adaptersFormat && !safe) throw new FileError(`${dir} lacks ${FUSION_WEIGHTS_FILE}`, dir);
  const d = model.adapters.model.dims;
  if (cfg.model_type && cfg.model_type !== d.modelType) throw new ModelMismatchError(`AdapterFusion was made for model type '${cfg.model_type}', this model is '${d.modelType}'`);
  const want: Record<string, number> = adaptersFormat ? { hidden_size: d.dModel } : { d_model: d.dModel, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers };
  const given: Record<string, unknown> = (adaptersFormat ? cfg : cfg.dims) ?? {};
  for (const [k, v] of Object.entries(want))
    if (typeof given[k] === 'number' && given[k] !== v) throw new ModelMismatchError(`AdapterFusion was made for ${k}=${given[k]}, this model has ${k}=${v}`);
  let tensors = await readFusionWeights(dir, !safe);
  // `adapters`' AdapterFusionLoader.load: adapter_names = config.get("adapter_names", adapter_fusion_name)
  const adapters: unknown = adaptersFormat ? (cfg.adapter_names ?? cfg.name.split(',')) : cfg.adapters;
  if (!Array.isArray(adapters) || !adapters.every((a) => typeof a === 'string'))
    throw new FileError(`${FUSION_CONFIG_FILE}: the fused adapters must be a list of names`, FUSION_CONFIG_FILE);
  const name = addAdapterFusion(model, Fuse(...adapters, { name: cfg.name }), cfg.config);
  const rt = runtimeOf(model);
  try {
    const vars = rt.fusionVariables(name);
    if (!adaptersFormat) {
      assignFileTensors(
        [...vars].map(([key, variable]) => ({ key, shape: [...variable.shape], variable, transposed: false })),
        tensors,
        'AdapterFusion file',
      );
      return name;
    }
    const problem = adaptersFusionProblem(rt.fusion(name)!.config, adapterConfigs(rt, adapters));
    if (problem) throw new UnsupportedError(problem.message, problem.option);
    tensors = withoutPrefix(tensors, model.adapters.model.adaptersBasePrefix);
    const unused = fusionLayersWithoutAdapters(model.adapters.model.sublayerSites(), adapterConfigs(rt, adapters), (key) => rt.fusion(name)!.modules.has(key));
    const infix = `.adapter_fusion_layer.${name}.`;
    for (const key of [...tensors.keys()]) if (key.includes(infix) && unused.has(key.slice(0, key.indexOf(infix)))) tensors.delete(key);
    assignFileTensors(fusionSlots(vars), tensors, 'adapters AdapterFusion file');
  } catch (e) {
    rt.deleteFusion(name);
    throw e;
  }
  return name;
}

/** A model with heads saves its base model's modules under a prefix (`adapters`' base_model_prefix): drop it when every key has it. */
function withoutPrefix(tensors: Map<string, FileTensor>, prefix: string | undefined): Map<string, FileTensor> {
  const keys = [...tensors.keys()];
  if (!prefix || keys.length === 0 || !keys.every((k) => k.startsWith(prefix))) return tensors;
  return new Map(keys.map((k) => [k.slice(prefix.length), tensors.get(k)!]));
}
