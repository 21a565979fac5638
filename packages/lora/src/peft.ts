import { tf } from '@adapterkit/backend';
import { ConfigError, transpose, UnsupportedError, WeightError, type AdapterConfig } from '@adapterkit/core';
import { IA3_DEFAULTS, isVera, LORA_DEFAULTS, normalizeLoraConfig, type LoraConfig } from './config.js';
import type { LoraAccess } from './types.js';

type FloatTensor = { shape: number[]; data: Float32Array };

/** PEFT's prefix for a seq2seq model's modules in adapter_model.safetensors. */
const PREFIX = 'base_model.model.';

/** PEFT-style module matching: a list matches a path exactly or as a '.'-suffix; a string is a full-match regex. */
export function moduleMatches(spec: string | string[] | null | undefined, key: string): boolean {
  if (spec === null || spec === undefined) return false;
  if (typeof spec === 'string') return new RegExp(`^(?:${spec})$`).test(key);
  return spec.some((t) => key === t || key.endsWith(`.${t}`));
}

const isEmpty = (v: unknown) =>
  v === undefined || v === null || v === false || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0);

/**
 * Options that change what a PEFT adapter computes and that adapterkit does not implement: refused, never
 * ignored. (`check` gets the value; a non-empty / true value is refused.) Unknown keys are ignored.
 */
const REFUSED: Record<string, (v: unknown) => boolean> = {
  rank_pattern: (v) => !isEmpty(v),
  alpha_pattern: (v) => !isEmpty(v),
  layers_to_transform: (v) => !isEmpty(v),
  bias: (v) => v !== undefined && v !== null && v !== 'none',
  modules_to_save: (v) => !isEmpty(v),
  fan_in_fan_out: (v) => v === true,
  lora_bias: (v) => v === true,
  layer_replication: (v) => !isEmpty(v),
  target_parameters: (v) => !isEmpty(v),
  trainable_token_indices: (v) => !isEmpty(v),
  alora_invocation_tokens: (v) => !isEmpty(v),
  use_qalora: (v) => v === true,
  // PiSSA / OLoRA / CorDA / LoftQ adapters saved without PEFT's weight conversion are deltas against a base
  // that PEFT modified at initialisation (its principal components subtracted, or quantised): with the
  // original base their outputs are wrong. Converted ones say init_lora_weights: true.
  init_lora_weights: (v) => typeof v === 'string' && /^(pissa|olora|corda|loftq)/i.test(v),
};

function checkUnsupported(cfg: Record<string, unknown>): void {
  for (const [key, refused] of Object.entries(REFUSED)) {
    if (key in cfg && refused(cfg[key])) {
      throw new UnsupportedError(`PEFT option ${key} = ${JSON.stringify(cfg[key])} is not supported by @adapterkit/lora`, key);
    }
  }
}

function targetSpec(cfg: Record<string, unknown>, field: string, fallback: () => string[]): string | string[] {
  const v = cfg[field];
  if (v === undefined || v === null) return fallback();
  if (typeof v === 'string' || (Array.isArray(v) && v.every((s) => typeof s === 'string'))) return v as string | string[];
  throw new ConfigError(`PEFT ${field} must be a list of module names or a regex string, got ${JSON.stringify(v)}`, field);
}

/** The model's PEFT defaults for target_modules / feedforward_modules (PEFT's mapping by model type; VeRA's is LoRA's). */
function defaultsOf(rt: LoraAccess, type: 'LORA' | 'IA3' | 'IA3_FEEDFORWARD' | 'VERA'): string[] {
  const key = type === 'VERA' ? 'LORA' : type;
  const defaults = rt.model.peftTargets?.[key];
  if (!defaults) throw new UnsupportedError(`the adapter has no target_modules and this model (${rt.model.dims.modelType}) declares no PEFT default for ${key}`, 'target_modules');
  return defaults;
}

const positiveInt = (cfg: Record<string, unknown>, field: string): number => {
  const v = cfg[field];
  if (!Number.isInteger(v) || (v as number) < 1) throw new ConfigError(`PEFT ${field} must be a positive integer, got ${JSON.stringify(v)}`, field);
  return v as number;
};

/** Where a PEFT tensor goes: the adapter variable's save name, the file's shape, and [rows, cols] to transpose. */
type Placement = { target: string; shape: number[]; transposeTo?: [number, number] };

/**
 * Imports a PEFT LORA (incl. DoRA), IA3 or VERA adapter (adapter_config.json + adapter_model.safetensors
 * contents) as adapter `name`: picks the sites PEFT would (target_modules as names/suffixes or a full-match
 * regex, exclude_modules), transposes PEFT's [out, in] weights to tfjs [in, out], and returns the config built.
 */
export function importPeft(rt: LoraAccess, name: string, cfg: Record<string, unknown>, tensors: Map<string, FloatTensor>): AdapterConfig {
  const type = cfg.peft_type;
  if (type !== 'LORA' && type !== 'IA3' && type !== 'VERA') throw new UnsupportedError(`PEFT peft_type '${String(type)}' is not LoRA, IA3 or VeRA`, 'peft_type');
  checkUnsupported(cfg);
  const targets = targetSpec(cfg, 'target_modules', () => defaultsOf(rt, type));
  const exclude = cfg.exclude_modules === undefined || cfg.exclude_modules === null ? null : targetSpec(cfg, 'exclude_modules', () => []);
  const all = rt.model.linearSites();
  const sites = all.filter((s) => (targets === 'all-linear' || moduleMatches(targets, s.key)) && !moduleMatches(exclude, s.key));
  if (sites.length === 0) throw new ConfigError(`PEFT target_modules ${JSON.stringify(targets)} match no linear layer of this model`, 'target_modules');
  const keys = sites.map((s) => s.key);

  let config: LoraConfig;
  const expected = new Map<string, Placement>();
  if (type === 'LORA') {
    const r = positiveInt(cfg, 'r');
    const alpha = cfg.lora_alpha ?? r;
    if (typeof alpha !== 'number') throw new ConfigError(`PEFT lora_alpha must be a number, got ${JSON.stringify(alpha)}`, 'lora_alpha');
    const dropout = typeof cfg.lora_dropout === 'number' ? cfg.lora_dropout : 0;
    config = {
      method: 'lora',
      ...structuredClone(LORA_DEFAULTS),
      r: r as number,
      alpha,
      dropout,
      use_rslora: cfg.use_rslora === true,
      use_dora: cfg.use_dora === true,
      target_modules: keys,
      peft: structuredClone(cfg),
    };
    for (const s of sites) {
      expected.set(`${PREFIX}${s.key}.lora_A.weight`, { target: `${s.key}.lora_A`, shape: [r, s.inFeatures], transposeTo: [r, s.inFeatures] });
      expected.set(`${PREFIX}${s.key}.lora_B.weight`, { target: `${s.key}.lora_B`, shape: [s.outFeatures, r], transposeTo: [s.outFeatures, r] });
      // DoRA's magnitude m [out] (PEFT keeps the key of its old ParameterDict: no '.weight'); same flat order as our [1, out]
      if (config.use_dora) expected.set(`${PREFIX}${s.key}.lora_magnitude_vector`, { target: `${s.key}.lora_magnitude_vector`, shape: [s.outFeatures] });
    }
    if (config.use_dora) tensors = withoutWeightSuffix(tensors, '.lora_magnitude_vector', 'DoRA magnitude');
  } else if (type === 'VERA') {
    const r = positiveInt(cfg, 'r');
    // PEFT regenerates unsaved projections with torch's generator, which adapterkit cannot reproduce
    if (cfg.save_projection === false)
      throw new UnsupportedError('PEFT VeRA adapter saved without its projections (save_projection: false): they would come from torch’s random generator', 'save_projection');
    const dropout = typeof cfg.vera_dropout === 'number' ? cfg.vera_dropout : 0;
    const dInitial = typeof cfg.d_initial === 'number' ? cfg.d_initial : 0.1;
    // PEFT's VeRA has no scaling: alpha = r makes adapters' alpha/r exactly 1
    config = {
      method: 'lora',
      ...structuredClone(LORA_DEFAULTS),
      r,
      alpha: r,
      dropout,
      vera_d: dInitial,
      vera_b: 0,
      init_weights: 'vera',
      target_modules: keys,
      peft: structuredClone(cfg),
    };
    const inMax = Math.max(...sites.map((s) => s.inFeatures));
    const outMax = Math.max(...sites.map((s) => s.outFeatures));
    expected.set('base_model.vera_A', { target: 'vera_A', shape: [r, inMax], transposeTo: [r, inMax] });
    expected.set('base_model.vera_B', { target: 'vera_B', shape: [outMax, r], transposeTo: [outMax, r] });
    for (const s of sites) {
      expected.set(`${PREFIX}${s.key}.vera_lambda_b`, { target: `${s.key}.vera_lambda_b`, shape: [s.outFeatures] });
      expected.set(`${PREFIX}${s.key}.vera_lambda_d`, { target: `${s.key}.vera_lambda_d`, shape: [r] });
    }
  } else {
    const ff = targetSpec(cfg, 'feedforward_modules', () => defaultsOf(rt, 'IA3_FEEDFORWARD'));
    const inputSide = keys.filter((k) => moduleMatches(ff, k));
    config = { method: 'ia3', ...structuredClone(IA3_DEFAULTS), target_modules: keys, input_scale_modules: inputSide, peft: structuredClone(cfg) };
    for (const s of sites) {
      const isInput = inputSide.includes(s.key);
      // PEFT stores ia3_l as [out, 1] (output side) or [1, in] (feed-forward, input side): same flat order as ours.
      expected.set(`${PREFIX}${s.key}.ia3_l`, { target: `${s.key}.${isInput ? 'ia3_in' : 'lora_B'}`, shape: isInput ? [1, s.inFeatures] : [s.outFeatures, 1] });
    }
    tensors = withoutWeightSuffix(tensors, '.ia3_l', 'IA3 vector');
  }

  for (const k of tensors.keys()) {
    if (!expected.has(k)) throw new WeightError(`PEFT adapter has tensor '${k}', which maps to no adapted linear of this model (target_modules ${JSON.stringify(targets)})`, k);
  }
  for (const [k, e] of expected) {
    const t = tensors.get(k);
    if (!t) throw new WeightError(`PEFT adapter lacks tensor '${k}'`, k);
    if (t.shape.join(',') !== e.shape.join(',')) throw new WeightError(`PEFT tensor '${k}' has shape [${t.shape}], expected [${e.shape}]`, k);
    if (!t.data.every(Number.isFinite)) throw new WeightError(`PEFT tensor '${k}' contains NaN or Infinity`, k);
  }

  config = normalizeLoraConfig(config);
  rt.add(name, config, 0);
  const vars = rt.variables(name);
  for (const [k, e] of expected) {
    const t = tensors.get(k)!;
    const v = vars.get(e.target)!;
    const data = e.transposeTo ? transpose(t.data, e.transposeTo[0], e.transposeTo[1]) : t.data;
    const value = tf.tensor(data, v.shape, 'float32');
    v.assign(value);
    value.dispose();
  }
  return config;
}

/**
 * PEFT saves each IA3 vector under `<module>.ia3_l` (a bare nn.Parameter, no `.weight`) and DoRA's magnitude
 * under `<module>.lora_magnitude_vector` (its state-dict key from before the magnitude became a module's
 * `.weight`); files written by other tools (and adapterkit before 0.2 for IA3) add `.weight`. Both load; one
 * module named both ways is an error.
 */
function withoutWeightSuffix(tensors: Map<string, FloatTensor>, suffix: string, what: string): Map<string, FloatTensor> {
  const out = new Map<string, FloatTensor>();
  for (const [k, t] of tensors) {
    const name = k.endsWith(`${suffix}.weight`) ? k.slice(0, -'.weight'.length) : k;
    if (out.has(name)) throw new WeightError(`PEFT adapter has the ${what} '${name}' twice (with and without '.weight')`, k);
    out.set(name, t);
  }
  return out;
}

/** Short module names when they select exactly the adapter's sites, else the full module paths. */
function targetNames(rt: LoraAccess, keys: string[]): string[] {
  const short = [...new Set(keys.map((k) => k.split('.').pop()!))].sort();
  const matched = rt.model
    .linearSites()
    .filter((s) => moduleMatches(short, s.key))
    .map((s) => s.key);
  const same = matched.length === keys.length && matched.every((k) => keys.includes(k));
  return same ? short : [...keys];
}

/**
 * Exports a LoRA (DoRA, IA3, VeRA) adapter in PEFT's format: adapter_config.json contents (only keys PEFT has
 * known for many releases, so older PEFT versions load it too; PEFT fills the rest with defaults) and tensors
 * named `base_model.model.<module>.lora_A.weight` [r, in] / `lora_B.weight` [out, r] (+ DoRA's
 * `lora_magnitude_vector` [out]; IA3: `ia3_l`, no `.weight`, as PEFT names it; VeRA: `base_model.vera_A`
 * [r, in_max], `base_model.vera_B` [out_max, r], `<module>.vera_lambda_b` [out], `.vera_lambda_d` [r]).
 * Gated adapters and VeRA with DoRA have no PEFT equivalent and are refused.
 */
export function exportPeft(rt: LoraAccess, name: string): { config: Record<string, unknown>; tensors: Map<string, FloatTensor> } {
  const c = rt.config(name);
  if (c.use_gating) throw new UnsupportedError(`adapter '${name}' uses gating (use_gating), which PEFT cannot represent`, 'use_gating');
  const vars = rt.variables(name);
  const adapter = rt.adapters.get(name);
  const keys = [...adapter.sites.keys()];
  const read = (k: string) => Float32Array.from(vars.get(k)!.dataSync() as Float32Array);
  const tensors = new Map<string, FloatTensor>();
  const origin = c.peft ?? {};
  const common = {
    base_model_name_or_path: origin.base_model_name_or_path ?? null,
    revision: origin.revision ?? null,
    task_type: 'SEQ_2_SEQ_LM',
    inference_mode: true,
    fan_in_fan_out: false,
    modules_to_save: null,
    layers_to_transform: null,
    layers_pattern: null,
  };
  if (isVera(c)) {
    if (c.use_dora) throw new UnsupportedError(`adapter '${name}' is VeRA with DoRA, which PEFT cannot represent`, 'use_dora');
    const { A, B } = adapter.projections!;
    const [inMax, r] = A.shape as [number, number];
    const outMax = B.shape[1] as number;
    tensors.set('base_model.vera_A', { shape: [r, inMax], data: transpose(read('vera_A'), inMax, r) });
    tensors.set('base_model.vera_B', { shape: [outMax, r], data: transpose(read('vera_B'), r, outMax) });
    for (const key of keys) {
      // adapters' alpha/r folded into λ_b (PEFT's VeRA has no scaling; 1 with the defaults, so nothing changes)
      const lambdaB = read(`${key}.vera_lambda_b`).map((x) => x * adapter.scale);
      tensors.set(`${PREFIX}${key}.vera_lambda_b`, { shape: [lambdaB.length], data: lambdaB });
      tensors.set(`${PREFIX}${key}.vera_lambda_d`, { shape: [r], data: read(`${key}.vera_lambda_d`) });
    }
    const config = {
      ...common,
      peft_type: 'VERA',
      r: c.r,
      target_modules: targetNames(rt, keys),
      projection_prng_key: origin.projection_prng_key ?? 0,
      save_projection: true,
      vera_dropout: c.dropout,
      d_initial: c.vera_d,
      bias: 'none',
      init_weights: true,
    };
    return { config, tensors };
  }
  if (c.composition_mode === 'add') {
    for (const [key, p] of adapter.sites) {
      const [inF, r] = p.A!.shape as [number, number];
      const outF = p.B!.shape[1] as number;
      tensors.set(`${PREFIX}${key}.lora_A.weight`, { shape: [r, inF], data: transpose(read(`${key}.lora_A`), inF, r) });
      tensors.set(`${PREFIX}${key}.lora_B.weight`, { shape: [outF, r], data: transpose(read(`${key}.lora_B`), r, outF) });
      if (p.magnitude) tensors.set(`${PREFIX}${key}.lora_magnitude_vector`, { shape: [outF], data: read(`${key}.lora_magnitude_vector`) });
    }
    const config = {
      ...common,
      peft_type: 'LORA',
      r: c.r,
      lora_alpha: c.alpha,
      lora_dropout: c.dropout,
      target_modules: targetNames(rt, keys),
      bias: 'none',
      use_rslora: c.use_rslora,
      use_dora: c.use_dora,
      init_lora_weights: true,
      rank_pattern: {},
      alpha_pattern: {},
    };
    return { config, tensors };
  }
  // IA3: fold adapters' scaling (alpha) into the vectors; PEFT has none.
  const inputKeys: string[] = [];
  for (const [key, p] of adapter.sites) {
    const data = read(p.inVec ? `${key}.ia3_in` : `${key}.lora_B`).map((x) => x * adapter.scale);
    if (p.inVec) inputKeys.push(key);
    tensors.set(`${PREFIX}${key}.ia3_l`, { shape: p.inVec ? [1, data.length] : [data.length, 1], data });
  }
  const targets = targetNames(rt, keys);
  const ffShort = [...new Set(inputKeys.map((k) => k.split('.').pop()!))];
  const ffExact = ffShort.every((n) => keys.filter((k) => moduleMatches([n], k)).every((k) => inputKeys.includes(k)));
  const config = {
    ...common,
    peft_type: 'IA3',
    target_modules: targets,
    feedforward_modules: ffExact && targets.every((t) => !t.includes('.')) ? ffShort : inputKeys,
    init_ia3_weights: true,
  };
  return { config, tensors };
}
