import { ConfigError, InputError, type SeededRandom } from '@adapterkit/core';

/**
 * Seeded initialisation strategies. Every value is drawn in JS from a SeededRandom and returned as a plain
 * Float32Array, so every backend starts from bit-identical weights; the caller turns them into tensors.
 *
 * Layout: tfjs kernels are [in, out], so a kernel's fan_in is `shape[0]` (PyTorch's nn.Linear weight is
 * [out, in] with fan_in = `shape[1]` — the same number). A LoRA A in tfjs layout is [in, r].
 *
 * Parameters are addressed by ROLE, never by their position in a module's parameter list: `adapters`' seed
 * bug (#745) initialised `adapter_down[0]` — the LayerNorm when `ln_before` is set — as the down projection
 * under `mam_adapter`. Here a LayerNorm parameter is a LayerNorm parameter whatever comes before or after it.
 */
export type InitName = 'bert' | 'mam_adapter' | 'houlsby' | 'lora' | 'ia3' | 'zeros' | 'ones' | 'normal' | 'kaiming_uniform';

export type ParamRole =
  | 'down'
  | 'up'
  | 'gate'
  | 'lora_A'
  | 'lora_B'
  | 'ia3'
  | 'layer_norm_weight'
  | 'layer_norm_bias'
  | 'bias'
  | 'scaling'
  | 'prefix_embedding'
  | 'prefix_mlp'
  | 'fusion';

export interface ParamSpec {
  /**
   * What the parameter is. For the module roles ('down', 'up', 'gate', 'prefix_mlp', 'fusion') a rank-1 shape
   * means that module's bias (or set `bias: true`); 'bias' is a bias of an unnamed module.
   */
  role: ParamRole;
  shape: number[];
  /**
   * fan_in of the module. Defaults to the product of all dims but the last, i.e. `shape[0]` for an [in, out]
   * kernel. Required where a rule needs it and the shape cannot give it (a bias under a PyTorch-default rule).
   */
  fanIn?: number;
  /** Marks a module role's bias explicitly (default: rank-1 shape for module roles, true for role 'bias'). */
  bias?: boolean;
}

export const INIT_NAMES: readonly InitName[] = ['bert', 'mam_adapter', 'houlsby', 'lora', 'ia3', 'zeros', 'ones', 'normal', 'kaiming_uniform'];

const ROLES: readonly ParamRole[] = [
  'down',
  'up',
  'gate',
  'lora_A',
  'lora_B',
  'ia3',
  'layer_norm_weight',
  'layer_norm_bias',
  'bias',
  'scaling',
  'prefix_embedding',
  'prefix_mlp',
  'fusion',
];
/** Roles that name a module with a weight and (maybe) a bias. */
const MODULE_ROLES: ReadonlySet<ParamRole> = new Set(['down', 'up', 'gate', 'prefix_mlp', 'fusion']);

/** BERT's initializer_range (`adapters`' init_bert_weights: Linear/Embedding weights N(0, 0.02)). */
export const BERT_STD = 0.02;
/** Houlsby init: trunc_normal_(mean=0, std=1e-2, a=-2e-2, b=2e-2) (`adapters` Adapter.__init__, "houlsby"). */
export const HOULSBY_STD = 1e-2;
export const HOULSBY_CLIP = 2e-2;

/**
 * Bound of PyTorch's `kaiming_uniform_(w, a)` with mode fan_in and leaky_relu nonlinearity:
 * gain = √(2 / (1 + a²)), std = gain / √fan_in, bound = √3 · std = √(6 / ((1 + a²) · fan_in)).
 * With a = √5 (nn.Linear.reset_parameters, `adapters`' mam_adapter and LoRA A) this is 1 / √fan_in.
 * Source: torch.nn.init.kaiming_uniform_ / calculate_gain('leaky_relu', a).
 */
export function kaimingUniformBound(fanIn: number, a = Math.sqrt(5)): number {
  if (!(Number.isFinite(fanIn) && fanIn > 0)) throw new InputError(`kaiming_uniform needs a positive fan_in, got ${fanIn}`, 'fanIn');
  return Math.sqrt(6 / ((1 + a * a) * fanIn));
}

function count(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function fill(n: number, value: number): Float32Array {
  return new Float32Array(n).fill(value);
}

function normal(n: number, std: number, rng: SeededRandom): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal(0, std);
  return out;
}

function uniform(n: number, bound: number, rng: SeededRandom): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.uniform(-bound, bound);
  return out;
}

/** N(0, std²) restricted to [−clip, clip] by resampling draws outside (same distribution as torch's trunc_normal_). */
function truncatedNormal(n: number, std: number, clip: number, rng: SeededRandom): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let x: number;
    do x = rng.normal(0, std);
    while (x < -clip || x > clip);
    out[i] = x;
  }
  return out;
}

function fanInOf(spec: ParamSpec, isBias: boolean): number {
  if (spec.fanIn !== undefined) return spec.fanIn;
  if (isBias || spec.shape.length < 2) {
    throw new InputError(`parameter of role '${spec.role}' with shape [${spec.shape}] needs an explicit fanIn for this initialisation`, 'fanIn');
  }
  return count(spec.shape.slice(0, -1));
}

/** PyTorch nn.Linear.reset_parameters: weight kaiming_uniform_(a=√5) ⇒ U(±1/√fan_in); bias U(±1/√fan_in). */
function torchLinearDefault(spec: ParamSpec, isBias: boolean, rng: SeededRandom): Float32Array {
  return uniform(count(spec.shape), kaimingUniformBound(fanInOf(spec, isBias), Math.sqrt(5)), rng);
}

/** `adapters`' init_bert_weights: Linear/Embedding weight N(0, 0.02), bias 0 (LayerNorm handled by the caller). */
function bertInit(spec: ParamSpec, isBias: boolean, rng: SeededRandom): Float32Array {
  return isBias ? new Float32Array(count(spec.shape)) : normal(count(spec.shape), BERT_STD, rng);
}

function noRule(strategy: InitName, spec: ParamSpec, isBias: boolean): never {
  throw new ConfigError(`init strategy '${strategy}' has no rule for ${isBias ? 'the bias of ' : ''}role '${spec.role}' (use it for ${RULE_ROLES[strategy]})`, 'init_weights');
}

const RULE_ROLES: Record<InitName, string> = {
  bert: 'any role',
  mam_adapter: "'down', 'up', 'gate', biases",
  houlsby: "'down', 'up', 'gate', biases",
  lora: "'lora_A', 'lora_B', 'gate', biases",
  ia3: "'ia3', 'lora_A', 'lora_B', 'gate', biases",
  zeros: 'any role',
  ones: 'any role',
  normal: 'any role',
  kaiming_uniform: 'any role',
};

/**
 * The rule of mam_adapter and LoRA: the down projection kaiming_uniform_(a=√5) = U(±1/√fan_in), the up
 * projection and every bias 0 (the module starts as an exact no-op), the gate N(0, 0.02).
 */
function startsAsNoOp(strategy: InitName, spec: ParamSpec, isBias: boolean, rng: SeededRandom, down: ParamRole, up: ParamRole): Float32Array {
  const n = count(spec.shape);
  if (isBias || spec.role === up) return fill(n, 0);
  if (spec.role === down) return uniform(n, kaimingUniformBound(fanInOf(spec, false), Math.sqrt(5)), rng);
  if (spec.role === 'gate') return bertInit(spec, false, rng);
  return noRule(strategy, spec, isBias);
}

/**
 * Initial values of one parameter. Consumes draws from `rng` (none for constant rules), so initialising a
 * list of parameters in a fixed order from one generator is reproducible.
 *
 * Fixed whatever the strategy: LayerNorm weight 1 and bias 0 (as `adapters`' init_bert_weights and
 * nn.LayerNorm's default), 'scaling' 1 (`adapters`' learned/channel scaling: Parameter(ones)).
 */
export function initParam(strategy: InitName, spec: ParamSpec, rng: SeededRandom): Float32Array {
  if (!(INIT_NAMES as readonly string[]).includes(strategy)) {
    throw new ConfigError(`unknown init strategy '${strategy}' (known: ${INIT_NAMES.join(', ')})`, 'init_weights');
  }
  if (!spec || !(ROLES as readonly string[]).includes(spec.role)) {
    throw new InputError(`unknown parameter role ${JSON.stringify(spec?.role)} (known: ${ROLES.join(', ')})`, 'role');
  }
  if (!Array.isArray(spec.shape) || !spec.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new InputError(`parameter of role '${spec.role}' has an invalid shape ${JSON.stringify(spec.shape)}`, 'shape');
  }
  if (spec.fanIn !== undefined && !(Number.isFinite(spec.fanIn) && spec.fanIn > 0)) {
    throw new InputError(`parameter of role '${spec.role}' has an invalid fanIn ${spec.fanIn}`, 'fanIn');
  }
  const n = count(spec.shape);
  const { role } = spec;

  // Role-fixed parameters.
  if (role === 'layer_norm_weight' || role === 'scaling') return fill(n, 1);
  if (role === 'layer_norm_bias') return fill(n, 0);

  const isBias = role === 'bias' || (spec.bias ?? (MODULE_ROLES.has(role) && spec.shape.length === 1));

  switch (strategy) {
    // Constant / generic fills: every remaining role, weights and biases alike.
    case 'zeros':
      return fill(n, 0);
    case 'ones':
      return fill(n, 1);
    case 'normal':
      // Standard normal: `adapters`' FlatPrefixTuning control_trans = Parameter(torch.randn(...)); nn.Embedding default.
      return normal(n, 1, rng);
    case 'kaiming_uniform':
      // PyTorch nn.Linear default (reset_parameters): weight kaiming_uniform_(a=√5) = U(±1/√fan_in), bias U(±1/√fan_in).
      return torchLinearDefault(spec, isBias, rng);

    case 'bert':
      // adapters init_bert_weights: weights N(0, 0.02), biases 0 (also LoRA "bert": A and B ~ N(0, 0.02)).
      return bertInit(spec, isBias, rng);

    case 'mam_adapter':
      // adapters Adapter.__init__ (init_weights == "mam_adapter"): every Linear in adapter_down
      // kaiming_uniform_(a=√5) = U(±1/√fan_in), bias 0; adapter_up weight 0 and bias 0 (exact no-op at start);
      // gate init_bert_weights.
      return startsAsNoOp(strategy, spec, isBias, rng, 'down', 'up');

    case 'houlsby':
      // adapters Adapter.__init__ (init_weights == "houlsby"): Linear weights in adapter_down/adapter_up
      // trunc_normal_(mean=0, std=1e-2, a=-2e-2, b=2e-2), bias 0; the gate is not re-initialised, so it keeps
      // PyTorch's nn.Linear default (weight U(±1/√fan_in), bias U(±1/√fan_in)).
      if (role === 'gate') return torchLinearDefault(spec, isBias, rng);
      if (isBias) return fill(n, 0);
      if (role === 'down' || role === 'up') return truncatedNormal(n, HOULSBY_STD, HOULSBY_CLIP, rng);
      return noRule(strategy, spec, isBias);

    case 'lora':
      // adapters LoRA.__init__ (init_weights == "lora"): lora_A kaiming_uniform_(a=√5), lora_B zeros;
      // the LoRA gate (use_gating) is N(0, 0.02) with bias 0.
      return startsAsNoOp(strategy, spec, isBias, rng, 'lora_A', 'lora_B');

    case 'ia3':
      // adapters LoRA.__init__ (init_weights == "ia3"): lora_A and lora_B ones (IA3's vector is lora_B);
      // the gate is N(0, 0.02) with bias 0.
      if (isBias) return fill(n, 0);
      if (role === 'ia3' || role === 'lora_A' || role === 'lora_B') return fill(n, 1);
      if (role === 'gate') return bertInit(spec, false, rng);
      return noRule(strategy, spec, isBias);
  }
}

/**
 * Initialises named parameters in the given order from one generator. Each is initialised by its role, so
 * the order (e.g. an `ln_before` LayerNorm listed before the down projection) never changes which rule a
 * parameter gets — only which draws it consumes.
 */
export function initParams(strategy: InitName, params: readonly (ParamSpec & { name: string })[], rng: SeededRandom): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const p of params) {
    if (out.has(p.name)) throw new InputError(`parameter '${p.name}' is listed twice`, 'name');
    out.set(p.name, initParam(strategy, p, rng));
  }
  return out;
}
