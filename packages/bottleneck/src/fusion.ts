import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import { matMulLast } from '@adapterkit/kernels';
import { ConfigError, SeededRandom } from '@adapterkit/core';
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
  /** Dropout on the attention scores (training only). null: the model's attention_probs_dropout_prob, 0 when the model has none. */
  dropout_prob: number | null;
}

export const FUSION_PRESETS: Record<'dynamic' | 'static', AdapterFusionConfig> = {
  dynamic: {
    key: true,
    query: true,
    value: true,
    query_before_ln: false,
    regularization: true,
    residual_before: false,
    temperature: false,
    value_before_softmax: true,
    value_initialized: true,
    dropout_prob: null,
  },
  static: {
    key: true,
    query: true,
    value: false,
    query_before_ln: false,
    regularization: false,
    residual_before: false,
    temperature: false,
    value_before_softmax: true,
    value_initialized: false,
    dropout_prob: null,
  },
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

/**
 * adapters' BertFusion.forward: attention of the query over the children's up-projections.
 * query [B,S,H], ups [B,S,N,H], residual [B,S,H] → [B,S,H].
 */
export function fusionForward(m: FusionModule, c: AdapterFusionConfig, query: Tensor, ups: Tensor, residual: Tensor, dropout: { training: boolean; seed: number }): Tensor {
  const v = (k: string) => m.vars.get(k)!;
  let value = ups;
  if (c.residual_before) value = value.add(residual.expandDims(2));
  const q = c.query ? matMulLast(query, v('query.weight'), v('query.bias')) : query;
  const k = c.key ? matMulLast(ups, v('key.weight'), v('key.bias')) : ups;
  const valueLayer = c.value && c.value_before_softmax ? matMulLast(value, v('value.weight')) : value;
  // scores[b,s,n] = q[b,s,:] · k[b,s,n,:]
  let scores = tf.matMul(q.expandDims(2), k, false, true).squeeze([2]);
  const p = c.dropout_prob ?? 0;
  if (dropout.training && p > 0) scores = tf.dropout(scores, p, undefined, dropout.seed);
  const probs = tf.softmax(scores.div(m.T));
  if (c.temperature) m.T = Math.max(m.T - m.reduction, 1);
  let context = tf.matMul(probs.expandDims(2), valueLayer).squeeze([2]);
  if (c.value && !c.value_before_softmax) context = matMulLast(context, v('value.weight'));
  if (!c.residual_before) context = context.add(residual);
  return context;
}

// ---------------------------------------------------------------------- public helpers on a model

/** What the helpers need from a model: its adapter host (every adapterkit model has one). */
