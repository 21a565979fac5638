import { ConfigError, UnsupportedError, type AdapterConfig } from '@adapterkit/core';

/**
 * LoRA / IA3 options. Names and defaults are `adapters`' LoRAConfig and IA3Config (methods/lora.py); the
 * last four are adapterkit additions used by PEFT imports (an explicit module list, IA3 input-side scaling,
 * rsLoRA scaling, and the PEFT config the adapter came from, kept so it can be exported back).
 */
export interface LoraOptions {
  /** Adapt q/k/v (those in attn_matrices) of every attention: encoder self, decoder self and cross. */
  selfattn_lora: boolean;
  /** Adapt the feed-forward input projection (for gated feed-forwards the multiplied one, never the gate). */
  intermediate_lora: boolean;
  /** Adapt the feed-forward output projection (`wo`). */
  output_lora: boolean;
  /** Global layer ids (encoder 0..N-1, decoder N..N+M-1) left without the adapter. */
  leave_out: number[];
  r: number;
  alpha: number;
  dropout: number;
  attn_matrices: ('q' | 'k' | 'v')[];
  /** 'add': base(x) + Δ (LoRA); 'scale': base(x) · l (IA3). */
  composition_mode: 'add' | 'scale';
  /** 'vera': kaiming-uniform (a = 0) A and B — VeRA's frozen projections (or, without vera_d/vera_b, a LoRA so initialised, as adapters). */
  init_weights: 'lora' | 'bert' | 'ia3' | 'vera';
  init_weights_seed: number | null;
  use_gating: boolean;
  /** DoRA: W' = m · (W + s·BA) / ‖W + s·BA‖ per output feature, m trainable (initialised so that W' = W + s·BA). */
  use_dora: boolean;
  /** VeRA: initial value of the trainable vector λ_d [r] (set together with vera_b). */
  vera_d: number | null;
  /** VeRA: initial value of the trainable vector λ_b [out]; 0 makes a fresh adapter an exact no-op. */
  vera_b: number | null;
  dtype: string | null;
  /** scaling = alpha / √r instead of alpha / r (PEFT use_rslora). */
  use_rslora: boolean;
  /** Explicit HF module paths (site keys) to adapt; when set it replaces the selfattn/intermediate/output flags. */
  target_modules: string[] | null;
  /** Scale mode only: module paths whose INPUT is scaled (PEFT IA3 feedforward_modules), not their output. */
  input_scale_modules: string[];
  /** The PEFT adapter_config.json this adapter was imported from (for a faithful export), or null. */
  peft: Record<string, unknown> | null;
}

export type LoraConfig = LoraOptions & AdapterConfig & { method: 'lora' | 'ia3' };

export const LORA_DEFAULTS: LoraOptions = {
  selfattn_lora: true,
  intermediate_lora: false,
  output_lora: false,
  leave_out: [],
  r: 8,
  alpha: 8,
  dropout: 0.0,
  attn_matrices: ['q', 'v'],
  composition_mode: 'add',
  init_weights: 'lora',
  init_weights_seed: null,
  use_gating: false,
  use_dora: false,
  vera_d: null,
  vera_b: null,
  dtype: null,
  use_rslora: false,
  target_modules: null,
  input_scale_modules: [],
  peft: null,
};

export const IA3_DEFAULTS: LoraOptions = {
  ...LORA_DEFAULTS,
  intermediate_lora: true,
  r: 1,
  alpha: 1,
  attn_matrices: ['k', 'v'],
  composition_mode: 'scale',
  init_weights: 'ia3',
};

/** adapters' VeraConfig (its alpha/r scaling kept: 8/8 = 1 by default, as PEFT's VeRA, which has none). */
const VERA_DEFAULTS: LoraOptions = { ...LORA_DEFAULTS, vera_d: 0.1, vera_b: 0, init_weights: 'vera' };

/** adapters' config strings: LoRAConfig, IA3Config, VeraConfig, DoRAConfig and DvoRAConfig (VeRA with DoRA). */
export const PRESETS: Record<string, LoraConfig> = {
  lora: { method: 'lora', ...structuredClone(LORA_DEFAULTS) },
  ia3: { method: 'ia3', ...structuredClone(IA3_DEFAULTS) },
  vera: { method: 'lora', ...structuredClone(VERA_DEFAULTS) },
  dora: { method: 'lora', ...structuredClone(LORA_DEFAULTS), use_dora: true },
  dvora: { method: 'lora', ...structuredClone(VERA_DEFAULTS), use_dora: true },
};

/** Whether an adapter is VeRA (adapters: vera_d or vera_b is a number). */
export const isVera = (c: LoraOptions): boolean => c.vera_d !== null || c.vera_b !== null;

/** The largest rank a config may ask for (a rank above the model's width is a mistake; the parameter budget checks the rest). */
export const MAX_LORA_RANK = 65536;

const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isStringList = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

/** Fills defaults (LoRA's for method 'lora', IA3's for 'ia3') and validates; errors name the option. */
export function normalizeLoraConfig(raw: AdapterConfig): LoraConfig {
  if (raw.method !== 'lora' && raw.method !== 'ia3') throw new ConfigError(`LoRA config has method '${raw.method}', expected 'lora' or 'ia3'`, 'method');
  const defaults = raw.method === 'ia3' ? IA3_DEFAULTS : LORA_DEFAULTS;
  for (const key of Object.keys(raw)) {
    if (key !== 'method' && !Object.hasOwn(defaults, key)) {
      throw new ConfigError(`unknown LoRA option '${key}' (known: ${Object.keys(defaults).join(', ')})`, key);
    }
  }
  // Fixed key order (method first, then adapters' order): configs are compared as JSON (averageAdapter).
  const { method, ...options } = structuredClone(raw);
  const c = { method, ...structuredClone(defaults), ...options } as LoraConfig;
  const fail = (field: string, why: string): never => {
    throw new ConfigError(`LoRA option '${field}' ${why}, got ${JSON.stringify((c as Record<string, unknown>)[field])}`, field);
  };
  for (const f of ['selfattn_lora', 'intermediate_lora', 'output_lora', 'use_gating', 'use_dora', 'use_rslora'] as const) if (!isBool(c[f])) fail(f, 'must be true or false');
  if (!Number.isInteger(c.r) || c.r < 1 || c.r > MAX_LORA_RANK) fail('r', `must be an integer in [1, ${MAX_LORA_RANK}]`);
  if (typeof c.alpha !== 'number' || !Number.isFinite(c.alpha)) fail('alpha', 'must be a finite number');
  if (typeof c.dropout !== 'number' || !(c.dropout >= 0 && c.dropout < 1)) fail('dropout', 'must be in [0, 1)');
  if (!Array.isArray(c.attn_matrices) || !c.attn_matrices.every((m) => m === 'q' || m === 'k' || m === 'v')) fail('attn_matrices', "must be a list of 'q', 'k', 'v'");
  if (c.composition_mode !== 'add' && c.composition_mode !== 'scale') fail('composition_mode', "must be 'add' or 'scale'");
  if (!['lora', 'bert', 'ia3', 'vera'].includes(c.init_weights as string)) fail('init_weights', "must be 'lora', 'bert', 'ia3' or 'vera'");
  if (c.init_weights_seed !== null && !Number.isInteger(c.init_weights_seed)) fail('init_weights_seed', 'must be an integer or null');
  if (!Array.isArray(c.leave_out) || !c.leave_out.every((l) => Number.isInteger(l) && l >= 0)) fail('leave_out', 'must be a list of layer ids');
  for (const f of ['vera_d', 'vera_b'] as const) if (c[f] !== null && !(typeof c[f] === 'number' && Number.isFinite(c[f]))) fail(f, 'must be a finite number or null');
  // adapters multiplies both vectors' initial values: one without the other is no VeRA (it would fail there)
  if (isVera(c) && (c.vera_d === null || c.vera_b === null)) fail(c.vera_d === null ? 'vera_d' : 'vera_b', 'must be set together with the other (VeRA)');
  if (c.composition_mode === 'scale' && (c.use_dora || isVera(c))) fail(c.use_dora ? 'use_dora' : 'vera_d', "needs composition_mode 'add' (IA3 has no DoRA or VeRA)");
  // The gate replaces alpha/r on the update, which DoRA's norm of W + s·BA assumes: not defined together
  if (c.use_dora && c.use_gating) throw new UnsupportedError('use_dora with use_gating is not supported (the gate replaces the scaling DoRA normalises with)', 'use_gating');
  if (c.dtype !== null && c.dtype !== 'float32') throw new UnsupportedError(`dtype '${c.dtype}' is not supported (adapterkit computes in float32)`, 'dtype');
  if (c.target_modules !== null && !isStringList(c.target_modules)) fail('target_modules', 'must be a list of module paths or null');
  if (!isStringList(c.input_scale_modules)) fail('input_scale_modules', 'must be a list of module paths');
  if (c.peft !== null && (typeof c.peft !== 'object' || Array.isArray(c.peft))) fail('peft', 'must be an object or null');
  if (c.composition_mode === 'scale') {
    // As adapters: "Can only use composition_mode='scale' when r == 1." and no dropout on a scaling vector.
    if (c.r !== 1) throw new ConfigError(`composition_mode 'scale' (IA3) needs r = 1, got r = ${c.r}`, 'r');
    if (c.dropout !== 0) throw new ConfigError(`composition_mode 'scale' (IA3) does not support dropout, got dropout = ${c.dropout}`, 'dropout');
  } else if (c.input_scale_modules.length > 0) {
    fail('input_scale_modules', "is only valid with composition_mode 'scale'");
  }
  c.leave_out = [...new Set(c.leave_out)].sort((a, b) => a - b);
  return c;
}

/** LoRA's multiplier: alpha / r (or alpha / √r with rsLoRA); IA3 (scale mode) uses alpha itself, as adapters. */
export function scalingOf(c: LoraConfig): number {
  if (c.composition_mode === 'scale') return c.alpha;
  return c.use_rslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
}
