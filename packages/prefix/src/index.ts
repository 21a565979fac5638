/**
 * Prefix tuning for adapterkit (Li & Liang 2021, as AdapterHub `adapters`' PrefixTuningConfig), with PEFT
 * PREFIX_TUNING import. Importing this package registers the method ('prefix_tuning' configs).
 *
 * Per adapter there is one prefix pool per location — encoder self-attention ('encoder_prefix'), decoder
 * self-attention ('self_prefix'), decoder cross-attention ('cross_prefix'). A pool produces every layer's
 * keys and values once per forward (or generation), at batch 1, as [1, heads, P, d_kv] sized by the model's
 * d_kv (never d_model / heads); each attention call expands them to its own rows. Nothing is ever sliced by
 * absolute row offsets, so BatchSplit parts of any size (0 included) and Parallel channels cannot mismatch.
 */
import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  checkParameterBudget,
  assignFileTensors,
  slotTensor,
  AdapterTable,
  concatRows,
  TableRuntime,
  CompositionError,
  ConfigError,
  SeededRandom,
  UnsupportedError,
  WeightError,
  registerMethod,
  type AdapterConfig,
  type AdapterMethod,
  type AnySite,
  type HookKind,
  type AttentionSite,
  type BlockType,
  type ForwardContext,
  type MethodRuntime,
  type ModelAccess,
  type PrefixKV,
  type PrefixPositionRule,
  type AdaptersFile,
  type FileTensor,
} from '@adapterkit/core';
import { dispatch, touches, type LayerPrimitives } from '@adapterkit/compose';
import { initParam } from '@adapterkit/init';
import { ACTIVATIONS, isActivation } from '@adapterkit/kernels';
import { adaptersPrefixConfig, prefixConfigFromAdapters, prefixSlots } from './adapters-format.js';

export type PrefixLocation = 'encoder_prefix' | 'self_prefix' | 'cross_prefix';
export type PositionRule = PrefixPositionRule;

/** `adapters`' PrefixTuningConfig, plus `peft_layout` (set by PEFT import only). */
export interface PrefixTuningConfig extends AdapterConfig {
  method: 'prefix_tuning';
  prefix_length: number;
  bottleneck_size: number;
  non_linearity: string;
  dropout: number;
  flat: boolean;
  encoder_prefix: boolean;
  cross_prefix: boolean;
  leave_out: number[];
  use_gating: boolean;
  shared_gating: boolean;
  init_weights_seed: number | null;
  /**
   * A PEFT PREFIX_TUNING adapter: one `prompt_embeddings` [P, num_layers·2·heads·d_kv] split as PEFT splits it,
   * decoder self-attention only, prefix as past keys for the position bias. Set by PEFT import; keeps its
   * layout when such an adapter is saved in adapterkit format and loaded again.
   */
  peft_layout: boolean;
  /**
   * The relative position bias as AdapterHub `adapters` computes it with a prefix ('shifted': the prefix at key
   * positions 0..P-1, real keys after it, queries at their own positions) instead of adapterkit's zero-bias prefix
   * columns. Set by `adapters` import; needed to export to `adapters` files (which then compute the same there).
   */
  adapters_positions: boolean;
}

export const PREFIX_DEFAULTS: Omit<PrefixTuningConfig, 'method'> = {
  prefix_length: 30,
  bottleneck_size: 512,
  non_linearity: 'tanh',
  dropout: 0,
  flat: false,
  encoder_prefix: true,
  cross_prefix: true,
  leave_out: [],
  use_gating: false,
  shared_gating: true,
  init_weights_seed: null,
  peft_layout: false,
  adapters_positions: false,
};

/** The longest prefix a config may ask for (every attention then reads that many extra keys); the parameter budget checks the rest. */
export const MAX_PREFIX_LENGTH = 65536;
/** The widest reparameterisation MLP a config may ask for. */
export const MAX_PREFIX_BOTTLENECK = 65536;

function normalizeConfig(raw: AdapterConfig): PrefixTuningConfig {
  if (raw.method !== 'prefix_tuning') throw new ConfigError(`prefix tuning configs have method 'prefix_tuning', got '${raw.method}'`, 'method');
  for (const key of Object.keys(raw)) {
    if (key !== 'method' && !(key in PREFIX_DEFAULTS)) throw new ConfigError(`unknown prefix_tuning option '${key}' (known: ${Object.keys(PREFIX_DEFAULTS).join(', ')})`, key);
  }
  const c = { ...PREFIX_DEFAULTS, ...raw, method: 'prefix_tuning' } as PrefixTuningConfig;
  c.leave_out = [...c.leave_out];
  const int = (key: keyof PrefixTuningConfig & string, min: number, max: number) => {
    const v = c[key];
    if (!Number.isInteger(v) || (v as number) < min || (v as number) > max)
      throw new ConfigError(`prefix_tuning option '${key}' must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`, key);
  };
  const bool = (key: keyof PrefixTuningConfig & string) => {
    if (typeof c[key] !== 'boolean') throw new ConfigError(`prefix_tuning option '${key}' must be true or false, got ${JSON.stringify(c[key])}`, key);
  };
  int('prefix_length', 0, MAX_PREFIX_LENGTH);
  int('bottleneck_size', 1, MAX_PREFIX_BOTTLENECK);
  for (const k of ['flat', 'encoder_prefix', 'cross_prefix', 'use_gating', 'shared_gating', 'peft_layout', 'adapters_positions'] as const) bool(k);
  if (c.peft_layout && c.adapters_positions)
    throw new ConfigError("prefix_tuning options 'peft_layout' and 'adapters_positions' exclude each other (PEFT's and adapters' position rules)", 'adapters_positions');
  if (typeof c.non_linearity !== 'string' || !isActivation(c.non_linearity.toLowerCase())) {
    throw new ConfigError(`prefix_tuning option 'non_linearity' must be one of ${Object.keys(ACTIVATIONS).join(', ')}, got ${JSON.stringify(c.non_linearity)}`, 'non_linearity');
  }
  c.non_linearity = c.non_linearity.toLowerCase();
  if (typeof c.dropout !== 'number' || !(c.dropout >= 0 && c.dropout < 1))
    throw new ConfigError(`prefix_tuning option 'dropout' must be in [0, 1), got ${JSON.stringify(c.dropout)}`, 'dropout');
  if (!Array.isArray(c.leave_out) || !c.leave_out.every((l) => Number.isInteger(l) && l >= 0)) {
    throw new ConfigError(`prefix_tuning option 'leave_out' must be a list of layer ids ≥ 0, got ${JSON.stringify(c.leave_out)}`, 'leave_out');
  }
  if (c.init_weights_seed !== null && !Number.isInteger(c.init_weights_seed)) {
    throw new ConfigError(`prefix_tuning option 'init_weights_seed' must be an integer or null, got ${JSON.stringify(c.init_weights_seed)}`, 'init_weights_seed');
  }
  return c;
}

/** One location's prefix generator for one adapter. */
interface Pool {
  location: PrefixLocation;
  /** Global layer id → (key slot, value slot) in the pool's output viewed [P, slots, heads, d_kv]. */
  slots: Map<number, [number, number]>;
  numSlots: number;
  kind: 'mlp' | 'flat' | 'peft';
}

interface PrefixAdapter {
  name: string;
  uid: number;
  config: PrefixTuningConfig;
  /** The config object the host keeps for this adapter (eject updates it in place). */
  hostConfig: AdapterConfig;
  pools: Map<PrefixLocation, Pool>;
  vars: Map<string, Variable>;
  rule: PositionRule;
}

/** The dispatcher's state at one attention: the rows' attention input (for gates) and the prefix so far. */
interface PrefixState {
  hidden: Tensor;
  kv: { keys: Tensor; values: Tensor; mask: Tensor } | null;
  rule: PositionRule | null;
}

let nextUid = 0;
const LOCATIONS: readonly PrefixLocation[] = ['encoder_prefix', 'self_prefix', 'cross_prefix'];

function locationOf(site: AttentionSite): PrefixLocation {
  if (site.stack === 'encoder') return 'encoder_prefix';
  return site.attention === 'self' ? 'self_prefix' : 'cross_prefix';
}

/** Left-pads a prefix with masked positions to length `p` (left, so PEFT's 'past' positions keep their distances). */
function padTo(kv: { keys: Tensor; values: Tensor; mask: Tensor } | null, rows: number, heads: number, dKv: number, p: number) {
  const have = kv ? (kv.keys.shape[2] as number) : 0;
  if (kv && have === p) return kv;
  const pad = p - have;
  const zk = tf.zeros([rows, heads, pad, dKv]);
  const zm = tf.zeros([rows, pad]);
  if (!kv) return { keys: zk, values: zk, mask: zm };
  return { keys: tf.concat([zk, kv.keys], 2), values: tf.concat([zk, kv.values], 2), mask: tf.concat([zm, kv.mask], 1) };
}

class PrefixRuntime extends TableRuntime<PrefixAdapter> implements MethodRuntime {
  protected readonly adapters = new AdapterTable<PrefixAdapter>('prefix', (a) => a.vars);
  private readonly heads: number;
  private readonly dKv: number;
  private readonly dModel: number;

  constructor(private readonly model: ModelAccess) {
    super();
    this.heads = model.dims.numHeads;
    this.dKv = model.dims.dKv;
    this.dModel = model.dims.dModel;
  }

  // ------------------------------------------------------------------ life cycle
  add(name: string, config: AdapterConfig, seed: number): void {
    const c = normalizeConfig(config);
    this.adapters.assertNew(name);
    const d = this.model.dims;
    const rng = new SeededRandom(c.init_weights_seed ?? seed);
    const adapter: PrefixAdapter = {
      name,
      uid: nextUid++,
      config: c,
      hostConfig: config,
      pools: new Map(),
      vars: new Map(),
      rule: c.peft_layout ? 'past' : c.adapters_positions ? 'shifted' : 'zero',
    };
    const leave = new Set(c.leave_out);
    const range = (start: number, n: number) => Array.from({ length: n }, (_, i) => start + i).filter((l) => !leave.has(l));
    const locations: [PrefixLocation, number[]][] = c.peft_layout
      ? [['self_prefix', range(d.numEncoderLayers, d.numDecoderLayers)]]
      : [
          ['encoder_prefix', c.encoder_prefix ? range(0, d.numEncoderLayers) : []],
          ['self_prefix', range(d.numEncoderLayers, d.numDecoderLayers)],
          ['cross_prefix', c.cross_prefix ? range(d.numEncoderLayers, d.numDecoderLayers) : []],
        ];
    const P = c.prefix_length;
    const unit = this.heads * this.dKv;
    // The variables' size, exactly, before any is made (see the pools below).
    const parameters = locations.reduce((n, [, layers]) => {
      if (P === 0 || layers.length === 0) return n;
      const gates = c.use_gating ? layers.length * (c.shared_gating ? 1 : 2) * (this.dModel + 1) : 0;
      if (c.peft_layout) return n + P * 2 * d.numDecoderLayers * unit + gates;
      const out = layers.length * 2 * unit;
      return n + gates + (c.flat ? P * out : P * this.dModel + c.bottleneck_size * (this.dModel + 1) + out * (c.bottleneck_size + 1));
    }, 0);
    checkParameterBudget(this.model, parameters, 'prefix_length', name);
    const create = (key: string, shape: number[], values: Float32Array) => {
      const initial = tf.tensor(values, shape, 'float32');
      adapter.vars.set(key, tf.variable(initial, true, `adapterkit/prefix/${name}#${adapter.uid}/${key}`));
      initial.dispose(); // the variable holds its own reference to the data
    };
    try {
      for (const [location, layers] of locations) {
        // P = 0 or every layer left out: no pool, the adapter acts nowhere here (the model's plain path).
        if (P === 0 || layers.length === 0) continue;
        if (c.peft_layout) {
          // PEFT: [P, 2L·token_dim] viewed [P, 2L, H, Dh], concatenated with itself along the slot axis and
          // split in chunks of 4 (self k, self v, cross k, cross v) per decoder layer — so decoder layer i reads
          // slots (4i mod 2L, 4i+1 mod 2L); cross chunks are dropped by PEFT (empty cross cache).
          const L = d.numDecoderLayers;
          const slots = new Map<number, [number, number]>();
          for (const l of layers) {
            const i = l - d.numEncoderLayers;
            slots.set(l, [(4 * i) % (2 * L), ((4 * i) % (2 * L)) + 1]);
          }
          adapter.pools.set(location, { location, slots, numSlots: 2 * L, kind: 'peft' });
          create('prompt_embeddings', [P, 2 * L * unit], new Float32Array(P * 2 * L * unit));
          continue;
        }
        // `adapters`' layout: output viewed [P, n_layers·2, H, d_kv]; the j-th kept layer has keys at 2j, values at 2j+1.
        const slots = new Map<number, [number, number]>(layers.map((l, j) => [l, [2 * j, 2 * j + 1]]));
        const out = layers.length * 2 * unit;
        const kind = c.flat ? 'flat' : 'mlp';
        adapter.pools.set(location, { location, slots, numSlots: layers.length * 2, kind });
        if (kind === 'flat') {
          // FlatPrefixTuning: control_trans = Parameter(randn(P·n_layers·2·H·d_kv)).
          create(`${location}.control_trans`, [P * out], initParam('normal', { role: 'prefix_embedding', shape: [P * out] }, rng));
        } else {
          // PrefixTuning: wte Embedding(P, d_model) (N(0, 1)) → Linear(d_model, bottleneck) → act → Linear(bottleneck, out),
          // Linears with PyTorch's default init. Weights in PyTorch layout [out, in], as `adapters` saves them.
          const b = c.bottleneck_size;
          create(`${location}.wte.weight`, [P, this.dModel], initParam('normal', { role: 'prefix_embedding', shape: [P, this.dModel] }, rng));
          create(`${location}.control_trans.0.weight`, [b, this.dModel], initParam('kaiming_uniform', { role: 'prefix_mlp', shape: [b, this.dModel], fanIn: this.dModel }, rng));
          create(`${location}.control_trans.0.bias`, [b], initParam('kaiming_uniform', { role: 'prefix_mlp', shape: [b], fanIn: this.dModel }, rng));
          create(`${location}.control_trans.2.weight`, [out, b], initParam('kaiming_uniform', { role: 'prefix_mlp', shape: [out, b], fanIn: b }, rng));
          create(`${location}.control_trans.2.bias`, [out], initParam('kaiming_uniform', { role: 'prefix_mlp', shape: [out], fanIn: b }, rng));
        }
      }
      if (c.use_gating) {
        // One gate per attention that holds the prefix: Linear(d_model, 1 | 2), weight N(0, 0.02), PyTorch default bias.
        const g = c.shared_gating ? 1 : 2;
        for (const pool of adapter.pools.values()) {
          for (const l of pool.slots.keys()) {
            create(`${pool.location}.gate.${l}.weight`, [g, this.dModel], initParam('bert', { role: 'gate', shape: [g, this.dModel] }, rng));
            create(`${pool.location}.gate.${l}.bias`, [g], initParam('kaiming_uniform', { role: 'gate', shape: [g], fanIn: this.dModel }, rng));
          }
        }
      }
    } catch (e) {
      tf.dispose([...adapter.vars.values()]);
      throw e;
    }
    this.adapters.add(name, adapter);
  }

  setWeights(name: string, tensors: Map<string, Tensor>): void {
    const a = this.adapters.get(name);
    for (const [key, v] of a.vars) {
      const t = tensors.get(key);
      if (!t) throw new WeightError(`prefix adapter '${name}' lacks tensor '${key}'`, key);
      if (t.shape.join(',') !== v.shape.join(',')) throw new WeightError(`tensor '${key}' has shape [${t.shape}] but '${name}' expects [${v.shape}]`, key);
      v.assign(t);
    }
  }

  /** The pool's output [P, slots·H·d_kv] (before dropout). */
  private poolOutput(a: PrefixAdapter, pool: Pool): Tensor {
    const v = (k: string) => a.vars.get(k)!;
    if (pool.kind === 'peft') return v('prompt_embeddings');
    const P = a.config.prefix_length;
    if (pool.kind === 'flat') return v(`${pool.location}.control_trans`).reshape([P, -1]);
    const loc = pool.location;
    const act = ACTIVATIONS[a.config.non_linearity as keyof typeof ACTIVATIONS];
    const h = act(tf.matMul(v(`${loc}.wte.weight`), v(`${loc}.control_trans.0.weight`), false, true).add(v(`${loc}.control_trans.0.bias`)));
    return tf.matMul(h, v(`${loc}.control_trans.2.weight`), false, true).add(v(`${loc}.control_trans.2.bias`));
  }

  /** Every slot of a pool as [slots, H, P, d_kv], computed once per forward/generation (batch-independent). */
  private poolSlots(a: PrefixAdapter, pool: Pool, ctx: ForwardContext): Tensor {
    return ctx.remember(`prefix:${a.uid}:${pool.location}`, () =>
      tf.tidy(() => {
        let out = this.poolOutput(a, pool);
        if (ctx.training && a.config.dropout > 0) out = tf.dropout(out, a.config.dropout, undefined, ctx.dropoutSeed(7001 + a.uid * 3 + LOCATIONS.indexOf(pool.location)));
        const P = out.shape[0] as number;
        return out.reshape([P, pool.numSlots, this.heads, this.dKv]).transpose([1, 2, 0, 3]);
      }),
    );
  }

  /** One adapter at one attention for the state's rows: prepends (Stack order) its prefix keys/values. */
  private single(a: PrefixAdapter, site: AttentionSite, s: PrefixState, ctx: ForwardContext): PrefixState {
    const pool = a.pools.get(locationOf(site))!;
    const [ks, vs] = pool.slots.get(site.layer)!;
    if (s.rule !== null && s.rule !== a.rule) {
      throw new CompositionError(
        `prefix adapter '${a.name}' uses the '${a.rule}' position rule but another prefix in the same layer uses '${s.rule}' (PEFT-imported and adapterkit prefixes cannot share a layer's rows)`,
        'Stack',
        a.name,
        'prefix',
      );
    }
    const all = this.poolSlots(a, pool, ctx);
    const rows = s.hidden.shape[0] as number;
    const P = all.shape[2] as number;
    const one = (slot: number) => all.slice([slot, 0, 0, 0], [1, this.heads, P, this.dKv]);
    let keys = tf.tile(one(ks), [rows, 1, 1, 1]);
    let values = tf.tile(one(vs), [rows, 1, 1, 1]);
    if (a.config.use_gating) {
      // g = mean over the sequence of sigmoid(gate(hidden)) → [rows, 1 | 2]; keys × g[:, 0], values × g[:, -1].
      const w = a.vars.get(`${pool.location}.gate.${site.layer}.weight`)!;
      const b = a.vars.get(`${pool.location}.gate.${site.layer}.bias`)!;
      const [r, len, dm] = s.hidden.shape as number[];
      const g = tf
        .sigmoid(tf.matMul(s.hidden.reshape([r * len, dm]), w, false, true).add(b))
        .reshape([r, len, -1])
        .mean(1);
      const n = g.shape[1] as number;
      keys = keys.mul(g.slice([0, 0], [r, 1]).reshape([r, 1, 1, 1]));
      values = values.mul(g.slice([0, n - 1], [r, 1]).reshape([r, 1, 1, 1]));
    }
    const mask = tf.ones([rows, P]);
    if (!s.kv) return { hidden: s.hidden, kv: { keys, values, mask }, rule: a.rule };
    // `adapters` prepends each Stack child's prefix to the keys so far (Stack(a, b): [b, a, real]); where columns
    // carry positions ('shifted') that order matters, elsewhere it does not and the prefix so far stays in front.
    const [first, second] = a.rule === 'shifted' ? [{ keys, values, mask }, s.kv] : [s.kv, { keys, values, mask }];
    return {
      hidden: s.hidden,
      kv: { keys: tf.concat([first.keys, second.keys], 2), values: tf.concat([first.values, second.values], 2), mask: tf.concat([first.mask, second.mask], 1) },
      rule: a.rule,
    };
  }

  /** Whether an active prefix adapter has a prefix at this attention (a model then computes the gate input). */
  actsAt(hook: HookKind, site: AnySite, ctx: ForwardContext): boolean {
    const comp = ctx.composition;
    if (hook !== 'attentionPrefix' || !comp) return false;
    const a = site as AttentionSite;
    const location = locationOf(a);
    return !ctx.isSkipped(a.layer) && touches(comp, { has: (name) => this.adapters.find(name)?.pools.get(location)?.slots.has(a.layer) ?? false });
  }

  attentionPrefix(site: AttentionSite, hidden: Tensor, ctx: ForwardContext): PrefixKV | undefined {
    const location = locationOf(site);
    const H = this.heads;
    const D = this.dKv;
    const prims: LayerPrimitives<PrefixState> = {
      has: (name) => this.adapters.find(name)?.pools.get(location)?.slots.has(site.layer) ?? false,
      single: (name, s) => this.single(this.adapters.get(name), site, s, ctx),
      rows: (s) => s.hidden.shape[0] as number,
      sliceRows: (s, start, end) => {
        const n = end - start;
        const cut = (t: Tensor) => t.slice([start, ...new Array(t.rank - 1).fill(0)], [n, ...new Array(t.rank - 1).fill(-1)]);
        return { hidden: cut(s.hidden), kv: s.kv && { keys: cut(s.kv.keys), values: cut(s.kv.values), mask: cut(s.kv.mask) }, rule: s.rule };
      },
      concatRows: (parts) => {
        const hidden = parts.length === 1 ? parts[0].hidden : concatRows(parts, (p) => p.hidden);
        const rules = new Set(parts.map((p) => p.rule).filter((r): r is PositionRule => r !== null));
        if (rules.size > 1)
          throw new CompositionError("a PEFT-imported prefix ('past' position rule) and an adapterkit prefix ('zero') cannot share one layer", 'BatchSplit', undefined, 'prefix');
        const lengths = parts.map((p) => (p.kv ? (p.kv.keys.shape[2] as number) : 0));
        const longest = Math.max(...lengths);
        if (longest === 0) return { hidden, kv: null, rule: null };
        if (rules.has('shifted') && lengths.some((l) => l !== longest))
          // padding moves the shorter prefix's columns, and with them every position of its rows (`adapters` itself fails on mixed lengths)
          throw new CompositionError(
            `prefixes with adapters' position rule (adapters_positions) of different lengths (${lengths.join(', ')}) cannot share one layer's rows in a Parallel or BatchSplit`,
            'BatchSplit',
            undefined,
            'prefix',
          );
        // Shorter prefixes (or none) are padded to the longest with masked positions (`adapters` leaves them visible).
        const padded = parts.map((p) => padTo(p.kv, p.hidden.shape[0] as number, H, D, longest));
        return {
          hidden,
          kv: {
            keys: concatRows(padded, (p) => p.keys),
            values: concatRows(padded, (p) => p.values),
            mask: concatRows(padded, (p) => p.mask),
          },
          rule: [...rules][0],
        };
      },
    };
    const out = dispatch(site.layer, { hidden, kv: null, rule: null }, prims, ctx);
    if (!out?.kv) return undefined;
    return { keys: out.kv.keys, values: out.kv.values, mask: out.kv.mask, positionRule: out.rule ?? 'zero' };
  }

  // ------------------------------------------------------------------ eject
  /**
   * Replaces each MLP pool by the flat prefix it produces (dropout off): same outputs, fewer parameters,
   * no MLP per forward. The adapter's config becomes `flat: true` so that it saves and loads as flat.
   */
  eject(name: string): void {
    const a = this.adapters.get(name);
    for (const pool of a.pools.values()) {
      if (pool.kind !== 'mlp') continue;
      const loc = pool.location;
      const flat = tf.tidy(() => this.poolOutput(a, pool).reshape([-1]));
      for (const k of [`${loc}.wte.weight`, `${loc}.control_trans.0.weight`, `${loc}.control_trans.0.bias`, `${loc}.control_trans.2.weight`, `${loc}.control_trans.2.bias`]) {
        a.vars.get(k)!.dispose();
        a.vars.delete(k);
      }
      a.vars.set(`${loc}.control_trans`, tf.variable(flat, true, `adapterkit/prefix/${name}#${a.uid}/${loc}.control_trans/ejected`));
      flat.dispose();
      pool.kind = 'flat';
    }
    // The host keeps the config object it handed to add(); updating it in place makes saves say flat.
    a.config.flat = true;
    a.hostConfig.flat = true;
  }

  // ------------------------------------------------------------------ AdapterHub adapters
  exportAdapters(name: string): { config: Record<string, unknown>; tensors: Map<string, FileTensor> } {
    const a = this.adapters.get(name);
    const config = adaptersPrefixConfig(a.config, this.model.dims, name);
    const tensors = new Map(prefixSlots(a.vars, name).map((slot) => [slot.key, slotTensor(slot)]));
    return { config, tensors };
  }

  importAdapters(name: string, file: AdaptersFile, tensors: Map<string, FileTensor>): AdapterConfig {
    const config = normalizeConfig(prefixConfigFromAdapters(file.config, this.model.dims, file.name));
    this.add(name, config, 0);
    try {
      assignFileTensors(prefixSlots(this.adapters.get(name).vars, file.name), tensors, 'adapters file');
    } catch (e) {
      this.remove(name);
      throw e;
    }
    return config;
  }

  // ------------------------------------------------------------------ PEFT
  importPeft(name: string, cfg: Record<string, unknown>, tensors: Map<string, { shape: number[]; data: Float32Array }>): AdapterConfig {
    const d = this.model.dims;
    if (cfg.peft_type !== 'PREFIX_TUNING') throw new UnsupportedError(`the prefix method imports PREFIX_TUNING adapters, not ${String(cfg.peft_type)}`, 'peft_type');
    const num = (k: string) => {
      const v = cfg[k];
      if (!Number.isInteger(v) || (v as number) <= 0) throw new ConfigError(`PEFT prefix config needs a positive integer '${k}', got ${JSON.stringify(v)}`, k);
      return v as number;
    };
    const P = num('num_virtual_tokens');
    const layers = num('num_layers');
    const tokenDim = num('token_dim');
    const heads = num('num_attention_heads');
    const submodules = cfg.num_transformer_submodules ?? (cfg.task_type === 'SEQ_2_SEQ_LM' ? 2 : 1);
    if (submodules !== 2)
      throw new UnsupportedError(
        `PEFT prefix adapters for encoder-decoder models must be SEQ_2_SEQ_LM (num_transformer_submodules 2), got ${JSON.stringify(submodules)}`,
        'num_transformer_submodules',
      );
    if (heads !== d.numHeads || tokenDim % heads !== 0 || tokenDim / heads !== d.dKv) {
      throw new UnsupportedError(
        `PEFT prefix tuning views each prefix as token_dim / num_attention_heads = ${tokenDim}/${heads} per head, but this model has ${d.numHeads} heads of d_kv ${d.dKv} ` +
          `(num_heads × d_kv = ${d.numHeads * d.dKv}, d_model = ${d.dModel}); PEFT itself cannot run such a checkpoint. ` +
          `Use adapterkit's own prefix tuning ('prefix_tuning'), which is sized by d_kv.`,
        'token_dim',
      );
    }
    if (layers !== d.numDecoderLayers) {
      throw new UnsupportedError(
        `PEFT prefix has num_layers ${layers} but the model has ${d.numDecoderLayers} decoder layers (PEFT gives decoder layer i the i-th cache entry)`,
        'num_layers',
      );
    }
    const key = [...tensors.keys()].find((k) => k === 'prompt_embeddings' || k.endsWith('.prompt_embeddings'));
    if (!key) throw new WeightError(`PEFT prefix adapter has no 'prompt_embeddings' tensor (found: ${[...tensors.keys()].join(', ')})`, 'prompt_embeddings');
    const t = tensors.get(key)!;
    const want = [P, layers * 2 * tokenDim];
    if (t.shape.join(',') !== want.join(',')) throw new WeightError(`PEFT prompt_embeddings has shape [${t.shape}], expected [${want}]`, key);
    if (!t.data.every(Number.isFinite)) throw new WeightError('PEFT prompt_embeddings contains NaN or Infinity', key);
    const config = normalizeConfig({ method: 'prefix_tuning', prefix_length: P, flat: true, encoder_prefix: false, cross_prefix: false, peft_layout: true });
    this.add(name, config, 0);
    const value = tf.tensor(t.data, t.shape, 'float32');
    this.adapters.get(name).vars.get('prompt_embeddings')!.assign(value);
    value.dispose();
    return config;
  }
}

const SUPPORTED: ReadonlySet<BlockType> = new Set<BlockType>(['Stack', 'Parallel', 'BatchSplit']);

export const prefixTuning: AdapterMethod = {
  name: 'prefix',
  configMethods: ['prefix_tuning'],
  presets: {
    prefix_tuning: { method: 'prefix_tuning' },
    prefix_tuning_flat: { method: 'prefix_tuning', flat: true },
  },
  supportedBlocks: SUPPORTED,
  // the decoder prefix enters the cache at step 0 and stays per sequence
  decodesRowwise: () => false,
  peftTypes: ['PREFIX_TUNING'],
  adaptersArchitectures: ['prefix_tuning'],
  ownsAdaptersKey: (key, name) => key.startsWith(`prefix_tuning.prefix_tunings.${name}.`),
  normalizeConfig,
  attach: (model) => new PrefixRuntime(model),
};

registerMethod(prefixTuning);

export { normalizeConfig as normalizePrefixConfig };
