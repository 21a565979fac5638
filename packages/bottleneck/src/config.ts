import { ConfigError, UnsupportedError, type AdapterConfig, type SublayerLocation } from '@adapterkit/core';

/**
 * The bottleneck config: `adapters`' BnConfig, option for option, with its defaults
 * (adapters/configuration/adapter_config.py). `method` is always 'bottleneck'.
 */
export interface BottleneckConfig extends AdapterConfig {
  method: 'bottleneck';
  mh_adapter: boolean;
  output_adapter: boolean;
  cross_adapter: boolean;
  /** A number, or a per-layer map keyed by global layer id with a 'default' entry: {"1": 8, "default": 16}. */
  reduction_factor: number | Record<string, number>;
  non_linearity: string;
  original_ln_before: boolean;
  original_ln_after: boolean;
  residual_before_ln: boolean | 'post_add';
  adapter_residual_before_ln: boolean;
  ln_before: boolean;
  ln_after: boolean;
  init_weights: 'bert' | 'mam_adapter' | 'houlsby';
  /** If set, every module is initialised from this seed (identical init in every layer), as in `adapters`. */
  init_weights_seed: number | null;
  is_parallel: boolean;
  scaling: number | 'learned' | 'channel';
  use_gating: boolean;
  dropout: number;
  leave_out: number[];
  /** Invertible adapter on the encoder embeddings (inverse before the LM head): 'nice' or null. */
  inv_adapter: 'nice' | null;
  inv_adapter_reduction_factor: number | null;
  /** Compacter: down/up projections are PHM layers (sum of Kronecker products). */
  phm_layer: boolean;
  phm_dim: number;
  factorized_phm_W: boolean;
  shared_W_phm: boolean;
  shared_phm_rule: boolean;
  factorized_phm_rule: boolean;
  phm_c_init: 'normal' | 'uniform';
  phm_init_range: number;
  learn_phm: boolean;
  hypercomplex_nonlinearity: string;
  phm_rank: number;
  phm_bias: boolean;
  stochastic_depth: number;
}

export const NON_LINEARITIES = ['relu', 'swish', 'silu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'tanh', 'leakyrelu', 'sigmoid', 'identity', 'linear'] as const;
export const BN_INITS = ['bert', 'mam_adapter', 'houlsby'] as const;

/** BnConfig's optional fields and their defaults. */
const DEFAULTS = {
  cross_adapter: false,
  original_ln_before: false,
  original_ln_after: true,
  residual_before_ln: true,
  adapter_residual_before_ln: false,
  ln_before: false,
  ln_after: false,
  init_weights: 'bert',
  init_weights_seed: null,
  is_parallel: false,
  scaling: 1.0,
  use_gating: false,
  dropout: 0.0,
  leave_out: [] as number[],
  inv_adapter: null,
  inv_adapter_reduction_factor: null,
  phm_layer: false,
  phm_dim: 4,
  factorized_phm_W: true,
  shared_W_phm: false,
  shared_phm_rule: true,
  factorized_phm_rule: false,
  phm_c_init: 'normal',
  phm_init_range: 0.0001,
  learn_phm: true,
  hypercomplex_nonlinearity: 'glorot-uniform',
  phm_rank: 1,
  phm_bias: true,
  stochastic_depth: 0.0,
} as const;

const REQUIRED = ['mh_adapter', 'output_adapter', 'reduction_factor', 'non_linearity'] as const;

const KNOWN = new Set<string>(['method', 'architecture', ...REQUIRED, ...Object.keys(DEFAULTS)]);

/** Presets with `adapters`' exact defaults (ADAPTER_CONFIG_MAP). */
const SEQ_BN = {
  method: 'bottleneck',
  original_ln_before: true,
  original_ln_after: true,
  residual_before_ln: true,
  adapter_residual_before_ln: false,
  ln_before: false,
  ln_after: false,
  mh_adapter: false,
  output_adapter: true,
  non_linearity: 'relu',
  reduction_factor: 16,
};
/** DoubleSeqBnConfig: SeqBnConfig's fields, with these three changed. */
const DOUBLE_SEQ_BN = { ...SEQ_BN, original_ln_before: false, mh_adapter: true, non_linearity: 'swish' };
const PAR_BN = {
  method: 'bottleneck',
  original_ln_before: false,
  original_ln_after: true,
  ln_before: false,
  ln_after: false,
  mh_adapter: false,
  output_adapter: true,
  non_linearity: 'relu',
  reduction_factor: 2,
  init_weights: 'mam_adapter',
  is_parallel: true,
  scaling: 4.0,
};
const SCALED_PAR_BN = { ...PAR_BN, scaling: 'learned' };
const SEQ_BN_INV = { ...SEQ_BN, inv_adapter: 'nice', inv_adapter_reduction_factor: 2 };
const DOUBLE_SEQ_BN_INV = { ...DOUBLE_SEQ_BN, inv_adapter: 'nice', inv_adapter_reduction_factor: 2 };
const COMPACTER_PP = { ...SEQ_BN, phm_layer: true, reduction_factor: 32, non_linearity: 'gelu' };
const COMPACTER = { ...DOUBLE_SEQ_BN, phm_layer: true, reduction_factor: 32, non_linearity: 'gelu' };

export const PRESETS: Record<string, AdapterConfig> = {
  bn: { method: 'bottleneck' },
  seq_bn: SEQ_BN,
  pfeiffer: SEQ_BN,
  double_seq_bn: DOUBLE_SEQ_BN,
  houlsby: DOUBLE_SEQ_BN,
  par_bn: PAR_BN,
  parallel: PAR_BN,
  scaled_par_bn: SCALED_PAR_BN,
  scaled_parallel: SCALED_PAR_BN,
  seq_bn_inv: SEQ_BN_INV,
  'pfeiffer+inv': SEQ_BN_INV,
  double_seq_bn_inv: DOUBLE_SEQ_BN_INV,
  'houlsby+inv': DOUBLE_SEQ_BN_INV,
  compacter: COMPACTER,
  'compacter++': COMPACTER_PP,
};

const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/**
 * The smallest reduction factor (a bottleneck at most this many times wider than the hidden size); the
 * parameter budget checks the adapter's total size against the model.
 */
export const MIN_REDUCTION_FACTOR = 1 / 64;

function checkReductionFactor(rf: unknown): void {
  const ok = (v: unknown) => isNum(v) && v >= MIN_REDUCTION_FACTOR;
  if (ok(rf)) return;
  if (rf && typeof rf === 'object' && !Array.isArray(rf)) {
    for (const [k, v] of Object.entries(rf)) {
      if (k !== 'default' && !/^\d+$/.test(k)) throw new ConfigError(`reduction_factor map key '${k}' is neither a layer id nor 'default'`, 'reduction_factor');
      if (!ok(v)) throw new ConfigError(`reduction_factor['${k}'] must be a number ≥ ${MIN_REDUCTION_FACTOR}, got ${JSON.stringify(v)}`, 'reduction_factor');
    }
    return;
  }
  throw new ConfigError(`reduction_factor must be a number ≥ ${MIN_REDUCTION_FACTOR} or a map like {"1": 8, "default": 16}, got ${JSON.stringify(rf)}`, 'reduction_factor');
}

/** Fills BnConfig's defaults and validates every option; errors name the option. */
export function normalizeBottleneckConfig(raw: AdapterConfig): BottleneckConfig {
  for (const key of Object.keys(raw)) {
    if (!KNOWN.has(key)) throw new ConfigError(`unknown bottleneck option '${key}'`, key);
  }
  if (raw.architecture !== undefined && raw.architecture !== null && raw.architecture !== 'bottleneck') {
    throw new ConfigError(`architecture '${String(raw.architecture)}' is not a bottleneck config`, 'architecture');
  }
  const missing = REQUIRED.filter((k) => raw[k] === undefined || raw[k] === null);
  if (missing.length) throw new ConfigError(`bottleneck config is missing required option${missing.length > 1 ? 's' : ''} ${missing.map((m) => `'${m}'`).join(', ')}`, missing[0]);

  // Features of BnConfig that adapterkit does not implement: refused by name, never silently ignored.
  if (raw.inv_adapter !== undefined && raw.inv_adapter !== null && raw.inv_adapter !== 'nice') {
    // adapters' GLOWCouplingBlock concatenates and slices on axis 1 (the sequence axis for [B, S, H]) — not reproduced.
    if (raw.inv_adapter === 'glow') throw new UnsupportedError("inv_adapter 'glow' is not implemented in @adapterkit/bottleneck (use 'nice')", 'inv_adapter');
    throw new ConfigError(`inv_adapter must be null or 'nice', got ${JSON.stringify(raw.inv_adapter)}`, 'inv_adapter');
  }
  if (raw.stochastic_depth !== undefined && raw.stochastic_depth !== 0) {
    throw new UnsupportedError('stochastic_depth > 0 (AdapterPlus) is not implemented in @adapterkit/bottleneck yet', 'stochastic_depth');
  }

  const c = { ...DEFAULTS, leave_out: [...DEFAULTS.leave_out], ...raw, method: 'bottleneck' } as Record<string, unknown>;
  delete c.architecture;

  for (const k of [
    'mh_adapter',
    'output_adapter',
    'cross_adapter',
    'original_ln_before',
    'original_ln_after',
    'adapter_residual_before_ln',
    'ln_before',
    'ln_after',
    'is_parallel',
    'use_gating',
    'phm_layer',
    'factorized_phm_W',
    'shared_W_phm',
    'shared_phm_rule',
    'factorized_phm_rule',
    'learn_phm',
    'phm_bias',
  ]) {
    if (!isBool(c[k])) throw new ConfigError(`${k} must be true or false, got ${JSON.stringify(c[k])}`, k);
  }
  checkReductionFactor(c.reduction_factor);
  if (typeof c.non_linearity !== 'string' || !(NON_LINEARITIES as readonly string[]).includes(c.non_linearity.toLowerCase())) {
    throw new ConfigError(`non_linearity ${JSON.stringify(c.non_linearity)} is not supported (known: ${NON_LINEARITIES.join(', ')})`, 'non_linearity');
  }
  c.non_linearity = (c.non_linearity as string).toLowerCase();
  if (!(c.residual_before_ln === true || c.residual_before_ln === false || c.residual_before_ln === 'post_add')) {
    throw new ConfigError(`residual_before_ln must be true, false or "post_add", got ${JSON.stringify(c.residual_before_ln)}`, 'residual_before_ln');
  }
  // adapters only defines the post_add residual inside `if original_ln_before` (otherwise the residual is unbound).
  if (c.residual_before_ln === 'post_add' && !c.original_ln_before && !c.is_parallel) {
    throw new ConfigError('residual_before_ln "post_add" takes the residual after the original residual add, so it needs original_ln_before: true', 'residual_before_ln');
  }
  if (!(BN_INITS as readonly string[]).includes(c.init_weights as string)) {
    throw new ConfigError(`init_weights ${JSON.stringify(c.init_weights)} is not one of ${BN_INITS.join(', ')}`, 'init_weights');
  }
  if (c.init_weights_seed !== null && !(Number.isInteger(c.init_weights_seed) && (c.init_weights_seed as number) >= 0)) {
    throw new ConfigError(`init_weights_seed must be null or a non-negative integer, got ${JSON.stringify(c.init_weights_seed)}`, 'init_weights_seed');
  }
  if (!(isNum(c.scaling) || c.scaling === 'learned' || c.scaling === 'channel')) {
    throw new ConfigError(`scaling must be a number, "learned" or "channel", got ${JSON.stringify(c.scaling)}`, 'scaling');
  }
  if (c.inv_adapter === 'nice') {
    if (!(isNum(c.inv_adapter_reduction_factor) && c.inv_adapter_reduction_factor >= MIN_REDUCTION_FACTOR)) {
      throw new ConfigError(
        `inv_adapter_reduction_factor must be a number ≥ ${MIN_REDUCTION_FACTOR} with inv_adapter 'nice', got ${JSON.stringify(c.inv_adapter_reduction_factor)}`,
        'inv_adapter_reduction_factor',
      );
    }
  } else c.inv_adapter_reduction_factor = null; // ignored without an invertible adapter, as in adapters
  if (c.phm_layer) checkPhm(c);
  if (!(isNum(c.dropout) && c.dropout >= 0 && c.dropout < 1)) throw new ConfigError(`dropout must be a number in [0, 1), got ${JSON.stringify(c.dropout)}`, 'dropout');
  if (!Array.isArray(c.leave_out) || !c.leave_out.every((l) => Number.isInteger(l) && l >= 0)) {
    throw new ConfigError(`leave_out must be a list of non-negative layer ids, got ${JSON.stringify(c.leave_out)}`, 'leave_out');
  }
  if (!c.mh_adapter && !c.output_adapter && !c.cross_adapter) {
    throw new ConfigError('a bottleneck config needs at least one of mh_adapter, output_adapter, cross_adapter', 'output_adapter');
  }
  return c as BottleneckConfig;
}

/** Compacter options (adapters' PHMLayer asserts and what its init code can do). */
function checkPhm(c: Record<string, unknown>): void {
  for (const k of ['phm_dim', 'phm_rank']) {
    if (!(Number.isInteger(c[k]) && (c[k] as number) >= 1 && (c[k] as number) <= 65536))
      throw new ConfigError(`${k} must be an integer in [1, 65536], got ${JSON.stringify(c[k])}`, k);
  }
  if (c.phm_c_init !== 'normal' && c.phm_c_init !== 'uniform') throw new ConfigError(`phm_c_init must be "normal" or "uniform", got ${JSON.stringify(c.phm_c_init)}`, 'phm_c_init');
  if (!(isNum(c.phm_init_range) && c.phm_init_range > 0))
    throw new ConfigError(`phm_init_range must be a positive number, got ${JSON.stringify(c.phm_init_range)}`, 'phm_init_range');
  if (!['phm', 'glorot-normal', 'glorot-uniform', 'normal'].includes(c.hypercomplex_nonlinearity as string)) {
    throw new ConfigError(
      `hypercomplex_nonlinearity must be one of phm, glorot-normal, glorot-uniform, normal, got ${JSON.stringify(c.hypercomplex_nonlinearity)}`,
      'hypercomplex_nonlinearity',
    );
  }
  // adapters' shared non-factorized W refers to an undefined size, and mam_adapter/houlsby init read `.weight` of a PHM layer (which has none): both crash there.
  if (c.shared_W_phm) throw new UnsupportedError('shared_W_phm (one W shared by every Compacter layer) is not implemented in @adapterkit/bottleneck', 'shared_W_phm');
  if (!c.learn_phm) throw new UnsupportedError('learn_phm: false (a frozen PHM rule) is not implemented in @adapterkit/bottleneck', 'learn_phm');
  if (c.init_weights !== 'bert')
    throw new ConfigError(`init_weights '${String(c.init_weights)}' has no rule for PHM layers (adapters fails on it too); Compacter uses 'bert'`, 'init_weights');
}

/** Reduction factor at one global layer id (a map needs the layer or 'default'). */
export function reductionFactorAt(config: BottleneckConfig, layer: number): number {
  const rf = config.reduction_factor;
  if (typeof rf === 'number') return rf;
  const v = rf[String(layer)] ?? rf.default;
  if (v === undefined) {
    throw new ConfigError(`reduction_factor map gives no value for layer ${layer} and has no 'default' entry (e.g. {"${layer}": 16, "default": 16})`, 'reduction_factor');
  }
  return v;
}

/** Where a config places modules, per hook location. */
export const LOCATION_OPTION: Record<SublayerLocation, 'mh_adapter' | 'cross_adapter' | 'output_adapter'> = {
  mh: 'mh_adapter',
  cross: 'cross_adapter',
  output: 'output_adapter',
};
