import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import { ConfigError } from '@adapterkit/core';
import { adamW } from '@adapterkit/kernels';

/** A named trainable variable (the name is stable across runs: it keys the optimizer state in checkpoints). */
export interface NamedVariable {
  name: string;
  variable: Variable;
}

/** Optimizer state as plain arrays (what a checkpoint stores). */
export interface OptimizerState {
  /** Optimizer kind and its hyper-parameters, checked on load. */
  config: Record<string, unknown>;
  /** Steps taken so far. */
  step: number;
  /** Slot tensors by `${variableName}:${slot}`. */
  slots: Map<string, { shape: number[]; data: Float32Array }>;
  /** Updates applied to each variable. */
  paramSteps?: Record<string, number>;
}

/**
 * An optimizer over a fixed list of variables, written with tf ops (not tf.train) so that its semantics are
 * PyTorch's / transformers' exactly and its state can be saved and restored. Slots exist only for the
 * variables it is given (the trainable adapter variables), created lazily at the first step.
 */
let slotCounter = 0;

export abstract class Optimizer {
  protected t = 0;
  protected readonly slots = new Map<string, Variable>();
  abstract readonly config: Record<string, unknown>;

  /** Number of updates applied. */
  get step(): number {
    return this.t;
  }

  /** Per-variable step counts (PyTorch keeps `state['step']` per parameter; a variable without a gradient is skipped). */
  protected readonly paramSteps = new Map<string, number>();

  /**
   * Applies one update with learning rate `lr`; `grads[i]` belongs to `vars[i]`. A missing gradient (a
   * variable the loss did not reach, e.g. an adapter in a layer AdapterDrop skipped) leaves that variable and
   * its state untouched, as PyTorch does for `grad is None`. Does not dispose the grads.
   */
  apply(vars: NamedVariable[], grads: (Tensor | undefined)[], lr: number): void {
    if (vars.length !== grads.length) throw new ConfigError(`optimizer got ${grads.length} gradients for ${vars.length} variables`);
    this.t += 1;
    vars.forEach((v, i) => {
      const g = grads[i];
      if (!g) return;
      const step = (this.paramSteps.get(v.name) ?? 0) + 1;
      this.paramSteps.set(v.name, step);
      tf.tidy(() => this.update(v, g, lr, step));
    });
  }

  /** `step` is this variable's 1-based update count. */
  protected abstract update(v: NamedVariable, grad: Tensor, lr: number, step: number): void;

  /** A slot variable, zero-initialised on first use. */
  protected slot(varName: string, slot: string, shape: number[]): Variable {
    const key = `${varName}:${slot}`;
    let s = this.slots.get(key);
    if (!s) {
      s = tf.variable(tf.zeros(shape), false, `optim/${key}/${slotCounter++}`);
      this.slots.set(key, s);
    }
    return s;
  }

  async getState(): Promise<OptimizerState> {
    const slots = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [k, v] of this.slots) slots.set(k, { shape: [...v.shape], data: Float32Array.from((await v.data()) as Float32Array) });
    return { config: { ...this.config }, step: this.t, slots, paramSteps: Object.fromEntries(this.paramSteps) };
  }

  setState(state: OptimizerState): void {
    const want = JSON.stringify(this.config);
    const got = JSON.stringify(state.config);
    if (want !== got) throw new ConfigError(`optimizer state was saved for ${got}, this optimizer is ${want}`, 'optimizer');
    this.disposeSlots();
    this.t = state.step;
    this.paramSteps.clear();
    for (const [k, n] of Object.entries(state.paramSteps ?? {})) this.paramSteps.set(k, n);
    for (const [k, s] of state.slots) {
      const t = tf.tensor(s.data, s.shape, 'float32');
      this.slots.set(k, tf.variable(t, false, `optim/${k}/${slotCounter++}`));
      t.dispose();
    }
  }

  /** Slot names that exist (for tests: state only for trainable variables). */
  slotNames(): string[] {
    return [...this.slots.keys()];
  }

  private disposeSlots() {
    for (const s of this.slots.values()) s.dispose();
    this.slots.clear();
  }

  dispose(): void {
    this.disposeSlots();
  }
}

export interface AdamWOptions {
  betas?: [number, number];
  eps?: number;
  /** Decoupled weight decay (PyTorch default 0.01). */
  weightDecay?: number;
}

/**
 * AdamW as torch.optim.AdamW: p ← p − lr·wd·p, then the bias-corrected Adam update
 * p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε).
 */
export class AdamW extends Optimizer {
  readonly config: { type: 'adamw'; betas: [number, number]; eps: number; weightDecay: number };
  constructor(options: AdamWOptions = {}) {
    super();
    const betas = options.betas ?? [0.9, 0.999];
    const eps = options.eps ?? 1e-8;
    const weightDecay = options.weightDecay ?? 0.01;
    if (!(betas[0] >= 0 && betas[0] < 1 && betas[1] >= 0 && betas[1] < 1)) throw new ConfigError(`AdamW betas must be in [0, 1), got [${betas}]`, 'betas');
    if (!(eps >= 0)) throw new ConfigError(`AdamW eps must be ≥ 0, got ${eps}`, 'eps');
    if (!(weightDecay >= 0)) throw new ConfigError(`AdamW weightDecay must be ≥ 0, got ${weightDecay}`, 'weightDecay');
    this.config = { type: 'adamw', betas: [betas[0], betas[1]], eps, weightDecay };
  }

  protected update({ name, variable: p }: NamedVariable, g: Tensor, lr: number, step: number): void {
    const {
      betas: [beta1, beta2],
      eps,
      weightDecay,
    } = this.config;
    const m = this.slot(name, 'exp_avg', p.shape);
    const v = this.slot(name, 'exp_avg_sq', p.shape);
    // one fused kernel per parameter where the backend has one (@adapterkit/kernels' adamW)
    const [p1, m1, v1] = adamW(p, g, m, v, { lr, beta1, beta2, eps, weightDecay, step });
    m.assign(m1);
    v.assign(v1);
    p.assign(p1);
  }
}

export interface AdafactorOptions {
  /** (ε1, ε2): regulariser of the squared gradient and floor of the parameter scale. Default (1e-30, 1e-3). */
  eps?: [number, number];
  clipThreshold?: number;
  decayRate?: number;
  /** First-moment coefficient; undefined = no first moment (the default, as transformers'). */
  beta1?: number;
  weightDecay?: number;
  /** Scale the step by the parameter's RMS (transformers' scale_parameter). Default false. */
  scaleParameter?: boolean;
  /** Use min(1e-2, 1/√t) instead of the explicit lr (transformers' relative_step). Default false. */
  relativeStep?: boolean;
  warmupInit?: boolean;
}

const rms = (x: Tensor) => x.square().mean().sqrt();

/**
 * Adafactor as transformers' `Adafactor` (Shazeer & Stern 2018): factored second moments (row and column
 * means) for parameters of rank ≥ 2, full second moment for vectors, update clipping by RMS, β2ₜ = 1 − t^decay.
 * Defaults are transformers' fine-tuning ones: explicit lr, scale_parameter=False, relative_step=False, warmup_init=False.
 */
export class Adafactor extends Optimizer {
  readonly config: {
    type: 'adafactor';
    eps: [number, number];
    clipThreshold: number;
    decayRate: number;
    beta1: number | null;
    weightDecay: number;
    scaleParameter: boolean;
    relativeStep: boolean;
    warmupInit: boolean;
  };
  constructor(options: AdafactorOptions = {}) {
    super();
    const eps = options.eps ?? [1e-30, 1e-3];
    this.config = {
      type: 'adafactor',
      eps: [eps[0], eps[1]],
      clipThreshold: options.clipThreshold ?? 1.0,
      decayRate: options.decayRate ?? -0.8,
      beta1: options.beta1 ?? null,
      weightDecay: options.weightDecay ?? 0,
      scaleParameter: options.scaleParameter ?? false,
      relativeStep: options.relativeStep ?? false,
      warmupInit: options.warmupInit ?? false,
    };
    if (this.config.warmupInit && !this.config.relativeStep) throw new ConfigError('Adafactor warmupInit needs relativeStep', 'warmupInit');
    if (!(this.config.clipThreshold > 0)) throw new ConfigError(`Adafactor clipThreshold must be > 0, got ${this.config.clipThreshold}`, 'clipThreshold');
  }

  /** The step size transformers' `_get_lr` computes (relative step and parameter scale when enabled). */
  private stepSize(p: Tensor, lr: number, t: number): Tensor | number {
    const c = this.config;
    let rel = lr;
    if (c.relativeStep) rel = Math.min(c.warmupInit ? 1e-6 * t : 1e-2, 1 / Math.sqrt(t));
    if (!c.scaleParameter) return rel;
    return rms(p).maximum(c.eps[1]).mul(rel);
  }

  protected update({ name, variable: p }: NamedVariable, g: Tensor, lr: number, t: number): void {
    const c = this.config;
    const shape = p.shape;
    const factored = shape.length >= 2;
    const beta2t = 1 - t ** c.decayRate;
    const step = this.stepSize(p, lr, t);
    const sq = g.square().add(c.eps[0]);
    let update: Tensor;
    if (factored) {
      const row = this.slot(name, 'exp_avg_sq_row', shape.slice(0, -1));
      const col = this.slot(name, 'exp_avg_sq_col', [...shape.slice(0, -2), shape[shape.length - 1]]);
      const row1 = row.mul(beta2t).add(sq.mean(-1).mul(1 - beta2t));
      const col1 = col.mul(beta2t).add(sq.mean(-2).mul(1 - beta2t));
      row.assign(row1);
      col.assign(col1);
      // (row / mean(row))^-½ ⊗ col^-½: the rank-1 estimate of the second moment's inverse square root.
      const rFactor = row1.div(row1.mean(-1, true)).rsqrt().expandDims(-1);
      const cFactor = col1.expandDims(-2).rsqrt();
      update = rFactor.mul(cFactor).mul(g);
    } else {
      const v = this.slot(name, 'exp_avg_sq', shape);
      const v1 = v.mul(beta2t).add(sq.mul(1 - beta2t));
      v.assign(v1);
      update = v1.rsqrt().mul(g);
    }
    update = update.div(rms(update).div(c.clipThreshold).maximum(1));
    update = update.mul(step);
    if (c.beta1 !== null) {
      const m = this.slot(name, 'exp_avg', shape);
      const m1 = m.mul(c.beta1).add(update.mul(1 - c.beta1));
      m.assign(m1);
      update = m1;
    }
    let next: Tensor = p;
    if (c.weightDecay) next = next.sub(p.mul(step).mul(c.weightDecay));
    p.assign(next.sub(update));
  }
}

export interface SgdOptions {
  momentum?: number;
  weightDecay?: number;
}

/** Plain SGD as torch.optim.SGD (coupled weight decay, momentum buffer initialised with the first gradient). */
export class SGD extends Optimizer {
  readonly config: { type: 'sgd'; momentum: number; weightDecay: number };
  constructor(options: SgdOptions = {}) {
    super();
    this.config = { type: 'sgd', momentum: options.momentum ?? 0, weightDecay: options.weightDecay ?? 0 };
  }
  protected update({ name, variable: p }: NamedVariable, g0: Tensor, lr: number): void {
    const { momentum, weightDecay } = this.config;
    let g = weightDecay ? g0.add(p.mul(weightDecay)) : g0;
    if (momentum) {
      const fresh = !this.slots.has(`${name}:momentum_buffer`);
      const buf = this.slot(name, 'momentum_buffer', p.shape);
      const b1 = fresh ? g : buf.mul(momentum).add(g);
      buf.assign(b1);
      g = b1;
    }
    p.assign(p.sub(g.mul(lr)));
  }
}

export type OptimizerName = 'adamw' | 'adafactor' | 'sgd';

export function createOptimizer(name: OptimizerName | Optimizer, options: Record<string, unknown> = {}): Optimizer {
  if (name instanceof Optimizer) return name;
  switch (name) {
    case 'adamw':
      return new AdamW(options as AdamWOptions);
    case 'adafactor':
      return new Adafactor(options as AdafactorOptions);
    case 'sgd':
      return new SGD(options as SgdOptions);
    default:
      throw new ConfigError(`unknown optimizer '${String(name)}' (known: adamw, adafactor, sgd)`, 'optimizer');
  }
}

/** Global L2 norm of a list of gradients (a scalar tensor). */
export function globalNorm(grads: (Tensor | undefined)[]): Tensor {
  return tf.tidy(() => {
    const present = grads.filter((g): g is Tensor => !!g);
    // stack + sum, not addN: tfjs-webgpu's AddN of many scalars returned stale values in Node/Dawn.
    return present.length
      ? tf
          .stack(present.map((g) => g.square().sum()))
          .sum()
          .sqrt()
      : tf.scalar(0);
  });
}

/** Multiplies every gradient by min(1, maxNorm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_), given the norm. New tensors. */
export function scaleToNorm<G extends Tensor | undefined>(grads: G[], norm: number, maxNorm: number): G[] {
  const coef = maxNorm / (norm + 1e-6);
  if (!(coef < 1) || !Number.isFinite(maxNorm)) return grads.map((g) => g?.clone()) as G[];
  return grads.map((g) => (g ? tf.tidy(() => g.mul(coef)) : g)) as G[];
}

/**
 * torch.nn.utils.clip_grad_norm_: scales every gradient by min(1, maxNorm / (norm + 1e-6)). Returns new
 * tensors (the caller disposes the inputs) and the norm before clipping.
 */
export async function clipByGlobalNorm<G extends Tensor | undefined>(grads: G[], maxNorm: number): Promise<{ grads: G[]; norm: number }> {
  const normT = globalNorm(grads);
  const norm = ((await normT.data()) as Float32Array)[0];
  normT.dispose();
  return { grads: scaleToNorm(grads, norm, maxNorm), norm };
}
