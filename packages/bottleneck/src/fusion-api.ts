import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  AdapterError,
  ConfigError,
  FileError,
  ModelMismatchError,
  WeightError,
  exists,
  joinPath,
  parseJson,
  readBytes,
  readSafetensors,
  writeFilesAtomic,
  writeSafetensors,
  type AdapterComposition,
  type AdapterHost,
  type FuseBlock,
  type ModelAccess,
} from '@adapterkit/core';

/** `adapters`' AdapterFusionConfig (configuration/adapter_fusion_config.py). */
import { bottleneckMethod } from './method.js';
import type { BottleneckRuntime } from './runtime.js';
import { normalizeFusionConfig, type AdapterFusionConfig } from './fusion.js';

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
const FUSION_WEIGHTS_FILE = 'model_adapter_fusion.safetensors';

/** Saves a fusion (config + weights; atomic). The fused adapters are saved separately with saveAdapter. */
export async function saveAdapterFusion(model: HasAdapters & { dims: ModelAccess['dims'] }, dir: string, block: FuseBlock | string[] | string): Promise<void> {
  const rt = runtimeOf(model);
  const { name } = fusionNameOf(block);
  const entry = rt.fusion(name);
  if (!entry) throw new AdapterError(`no AdapterFusion '${name}'`);
  const vars = rt.fusionVariables(name);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, v] of vars) tensors.set(k, { shape: v.shape, data: Float32Array.from((await v.data()) as Float32Array) });
  const d = model.dims;
  const config = {
    format: 'adapterkit-fusion',
    format_version: 1,
    name,
    adapters: entry.adapters,
    config: entry.config,
    model_type: d.modelType,
    dims: { d_model: d.dModel, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers },
  };
  await writeFilesAtomic(dir, { [FUSION_CONFIG_FILE]: `${JSON.stringify(config, null, 2)}\n`, [FUSION_WEIGHTS_FILE]: writeSafetensors(tensors, { format: 'adapterkit' }) });
}

/** Loads a fusion saved by saveAdapterFusion (its adapters must already be loaded); returns its name. */
export async function loadAdapterFusion(model: HasAdapters & { dims: ModelAccess['dims'] }, dir: string): Promise<string> {
  const cfgPath = joinPath(dir, FUSION_CONFIG_FILE);
  const wPath = joinPath(dir, FUSION_WEIGHTS_FILE);
  if (!(await exists(cfgPath)) || !(await exists(wPath)))
    throw new FileError(`${dir} is not an AdapterFusion directory (needs ${FUSION_CONFIG_FILE} and ${FUSION_WEIGHTS_FILE})`, dir);
  const cfg = parseJson(new TextDecoder().decode(await readBytes(cfgPath)), FUSION_CONFIG_FILE);
  if (cfg?.format !== 'adapterkit-fusion' || typeof cfg.name !== 'string' || !Array.isArray(cfg.adapters))
    throw new FileError(`${FUSION_CONFIG_FILE} is not an adapterkit AdapterFusion config`, FUSION_CONFIG_FILE);
  const d = model.dims;
  if (cfg.model_type && cfg.model_type !== d.modelType) throw new ModelMismatchError(`AdapterFusion was made for model type '${cfg.model_type}', this model is '${d.modelType}'`);
  const want: Record<string, number> = { d_model: d.dModel, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers };
  for (const [k, v] of Object.entries(want))
    if (cfg.dims?.[k] !== undefined && cfg.dims[k] !== v) throw new ModelMismatchError(`AdapterFusion was made for ${k}=${cfg.dims[k]}, this model has ${k}=${v}`);
  const { tensors } = readSafetensors(await readBytes(wPath), FUSION_WEIGHTS_FILE);
  const name = addAdapterFusion(model, cfg.adapters as string[], cfg.config);
  try {
    const vars = runtimeOf(model).fusionVariables(name);
    for (const key of tensors.keys()) if (!vars.has(key)) throw new WeightError(`AdapterFusion file has unexpected tensor '${key}'`, key);
    for (const [key, v] of vars) {
      const t = tensors.get(key);
      if (!t) throw new WeightError(`AdapterFusion file lacks tensor '${key}'`, key);
      if (t.shape.join(',') !== v.shape.join(',')) throw new WeightError(`tensor '${key}' has shape [${t.shape}] but the fusion expects [${v.shape}]`, key);
      const data = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
      if (!data.every(Number.isFinite)) throw new WeightError(`tensor '${key}' contains NaN or Infinity`, key);
      const value = tf.tensor(data, t.shape);
      v.assign(value);
      value.dispose();
    }
  } catch (e) {
    runtimeOf(model).deleteFusion(name);
    throw e;
  }
  return name;
}
