import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  AdapterError,
  ConfigError,
  FileError,
  ModelMismatchError,
  SeededRandom,
  WeightError,
  exists,
  joinPath,
  readBytes,
  readSafetensors,
  writeFilesAtomic,
  writeSafetensors,
  type AdapterComposition,
  type AdapterHost,
  type FuseBlock,
  type ModelAccess,
} from '@adapterkit/core';
import { initParam } from '@adapterkit/init';

/** `adapters`' AdapterFusionConfig (configuration/adapter_fusion_config.py). */
export interface AdapterFusionConfig {
  key: boolean;
  query: boolean;
  value: boolean;
  query_before_ln: boolean;
  regularization: boolean;
  residual_before: boolean;
  temperature: boolean;
  value_before_softmax: boolean;
  value_initialized: boolean;
  /** Dropout on the attention scores (training only). null: the model's attention_probs_dropout_prob, which T5 does not have ⇒ 0. */
  dropout_prob: number | null;
}

export const FUSION_PRESETS: Record<'dynamic' | 'static', AdapterFusionConfig> = {
  dynamic: { key: true, query: true, value: true, query_before_ln: false, regularization: true, residual_before: false, temperature: false, value_before_softmax: true, value_initialized: true, dropout_prob: null },
  static: { key: true, query: true, value: false, query_before_ln: false, regularization: false, residual_before: false, temperature: false, value_before_softmax: true, value_initialized: false, dropout_prob: null },
};

/** Resolves 'dynamic' | 'static' | a (partial) config object, validating every option. */
export function normalizeFusionConfig(config: 'dynamic' | 'static' | Partial<AdapterFusionConfig> = 'dynamic'): AdapterFusionConfig {
  if (typeof config === 'string') {
    if (!(config in FUSION_PRESETS)) throw new ConfigError(`unknown AdapterFusion config '${config}' (known: dynamic, static)`, 'fusion_config');
    return { ...FUSION_PRESETS[config as 'dynamic' | 'static'] };
  }
  if (!config || typeof config !== 'object') throw new ConfigError(`AdapterFusion config must be 'dynamic', 'static' or an object, got ${JSON.stringify(config)}`, 'fusion_config');
  const out = { ...FUSION_PRESETS.dynamic } as Record<string, unknown>;
  for (const [k, v] of Object.entries(config)) {
    if (k === 'architecture') continue;
    if (!(k in out)) throw new ConfigError(`unknown AdapterFusion option '${k}'`, k);
    if (k === 'dropout_prob') {
      if (!(v === null || (typeof v === 'number' && v >= 0 && v < 1))) throw new ConfigError(`dropout_prob must be null or a number in [0, 1), got ${JSON.stringify(v)}`, k);
    } else if (typeof v !== 'boolean') throw new ConfigError(`AdapterFusion option ${k} must be true or false, got ${JSON.stringify(v)}`, k);
    out[k] = v;
  }
  return out as unknown as AdapterFusionConfig;
}

/** One BertFusion module at one sub-layer site. */
export interface FusionModule {
  vars: Map<string, Variable>;
  /** Softmax temperature (annealed per call when `temperature` is on, as adapters does). */
  T: number;
  /** adapters: reduction = T₀ / 1000, subtracted per call down to 1. */
  reduction: number;
}

export interface FusionEntry {
  name: string;
  adapters: string[];
  config: AdapterFusionConfig;
  modules: Map<string, FusionModule>;
}

let counter = 0;

/** Creates a fusion's BertFusion modules (query/key Linear(H,H) bert-init; value Linear(H,H,bias=False), ~identity if value_initialized). */
export function createFusionModules(name: string, sites: { key: string; hiddenSize: number }[], config: AdapterFusionConfig, seed: number): Map<string, FusionModule> {
  const rng = new SeededRandom(seed);
  const modules = new Map<string, FusionModule>();
  for (const site of sites) {
    const H = site.hiddenSize;
    const vars = new Map<string, Variable>();
    const make = (param: string, values: Float32Array, shape: number[]) => {
      const t = tf.tensor(values, shape, 'float32');
      vars.set(param, tf.variable(t, false, `bottleneck-fusion/${name}/${site.key}.${param}#${counter++}`));
      t.dispose();
    };
    for (const p of ['query', 'key'] as const) {
      if (!config[p]) continue;
      make(`${p}.weight`, initParam('bert', { role: 'fusion', shape: [H, H] }, rng), [H, H]);
      make(`${p}.bias`, initParam('bert', { role: 'fusion', shape: [H], fanIn: H }, rng), [H]);
    }
    if (config.value) {
      let w = initParam('bert', { role: 'fusion', shape: [H, H] }, rng);
      // adapters: value.weight = zeros(H, H) + 1e-6 with the diagonal filled with 1.
      if (config.value_initialized) w = new Float32Array(H * H).map((_, i) => (i % (H + 1) === 0 ? 1 : 1e-6));
      make('value.weight', w, [H, H]);
    }
    const T = config.temperature ? 50 : 1;
    modules.set(site.key, { vars, T, reduction: T / 1000 });
  }
  return modules;
}

function dense(x: Tensor, kernel: Tensor, bias?: Tensor): Tensor {
  const shape = x.shape;
  let y = tf.matMul(x.reshape([-1, shape[shape.length - 1]]), kernel);
  if (bias) y = y.add(bias);
  return y.reshape([...shape.slice(0, -1), kernel.shape[1] as number]);
}

/**
 * adapters' BertFusion.forward: attention of the query over the children's up-projections.
 * query [B,S,H], ups [B,S,N,H], residual [B,S,H] → [B,S,H].
 */
export function fusionForward(m: FusionModule, c: AdapterFusionConfig, query: Tensor, ups: Tensor, residual: Tensor, dropout: { training: boolean; seed: number }): Tensor {
  const v = (k: string) => m.vars.get(k)!;
  let value = ups;
  if (c.residual_before) value = value.add(residual.expandDims(2));
  const q = c.query ? dense(query, v('query.weight'), v('query.bias')) : query;
  const k = c.key ? dense(ups, v('key.weight'), v('key.bias')) : ups;
  const valueLayer = c.value && c.value_before_softmax ? dense(value, v('value.weight')) : value;
  // scores[b,s,n] = q[b,s,:] · k[b,s,n,:]
  let scores = tf.matMul(q.expandDims(2), k, false, true).squeeze([2]);
  const p = c.dropout_prob ?? 0;
  if (dropout.training && p > 0) scores = tf.dropout(scores, p, undefined, dropout.seed);
  const probs = tf.softmax(scores.div(m.T));
  if (c.temperature) m.T = Math.max(m.T - m.reduction, 1);
  let context = tf.matMul(probs.expandDims(2), valueLayer).squeeze([2]);
  if (c.value && !c.value_before_softmax) context = dense(context, v('value.weight'));
  if (!c.residual_before) context = context.add(residual);
  return context;
}

// ---------------------------------------------------------------------- public helpers on a model

/** What the helpers need from a model: its adapter host (every adapterkit model has one). */
export interface HasAdapters {
  readonly adapters: AdapterHost;
}

interface FusionRuntime {
  addFusion(name: string, adapters: string[], config: AdapterFusionConfig, seed: number): void;
  deleteFusion(name: string): void;
  fusion(name: string): FusionEntry | undefined;
  fusionVariables(name: string): Map<string, Variable>;
}

function runtimeOf(model: HasAdapters): FusionRuntime {
  const rt = model.adapters.runtimeFor('bottleneck') as unknown as FusionRuntime | undefined;
  if (!rt || typeof rt.addFusion !== 'function') throw new AdapterError('AdapterFusion needs bottleneck adapters on this model: add them first (import @adapterkit/bottleneck)');
  return rt;
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
export function addAdapterFusion(model: HasAdapters, block: FuseBlock | string[], config: 'dynamic' | 'static' | Partial<AdapterFusionConfig> = 'dynamic', options: { seed?: number } = {}): string {
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
      loss = loss.add(tf.eye(w.shape[0] as number).sub(w).square().sum().mul(0.01));
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
  const config = { format: 'adapterkit-fusion', format_version: 1, name, adapters: entry.adapters, config: entry.config, model_type: d.modelType, dims: { d_model: d.dModel, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers } };
  await writeFilesAtomic(dir, { [FUSION_CONFIG_FILE]: JSON.stringify(config, null, 2) + '\n', [FUSION_WEIGHTS_FILE]: writeSafetensors(tensors, { format: 'adapterkit' }) });
}

/** Loads a fusion saved by saveAdapterFusion (its adapters must already be loaded); returns its name. */
export async function loadAdapterFusion(model: HasAdapters & { dims: ModelAccess['dims'] }, dir: string): Promise<string> {
  const cfgPath = joinPath(dir, FUSION_CONFIG_FILE);
  const wPath = joinPath(dir, FUSION_WEIGHTS_FILE);
  if (!(await exists(cfgPath)) || !(await exists(wPath))) throw new FileError(`${dir} is not an AdapterFusion directory (needs ${FUSION_CONFIG_FILE} and ${FUSION_WEIGHTS_FILE})`, dir);
  let cfg: any;
  try {
    cfg = JSON.parse(new TextDecoder().decode(await readBytes(cfgPath)));
  } catch (e) {
    throw new FileError(`${FUSION_CONFIG_FILE} is not valid JSON: ${(e as Error).message}`, FUSION_CONFIG_FILE);
  }
  if (!cfg || cfg.format !== 'adapterkit-fusion' || typeof cfg.name !== 'string' || !Array.isArray(cfg.adapters)) throw new FileError(`${FUSION_CONFIG_FILE} is not an adapterkit AdapterFusion config`, FUSION_CONFIG_FILE);
  const d = model.dims;
  if (cfg.model_type && cfg.model_type !== d.modelType) throw new ModelMismatchError(`AdapterFusion was made for model type '${cfg.model_type}', this model is '${d.modelType}'`);
  const want: Record<string, number> = { d_model: d.dModel, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers };
  for (const [k, v] of Object.entries(want)) if (cfg.dims?.[k] !== undefined && cfg.dims[k] !== v) throw new ModelMismatchError(`AdapterFusion was made for ${k}=${cfg.dims[k]}, this model has ${k}=${v}`);
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
