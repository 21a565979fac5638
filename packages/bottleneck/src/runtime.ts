import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  checkParameterBudget,
  AdapterTable,
  concatRows,
  TableRuntime,
  ConfigError,
  AdapterError,
  InputError,
  SeededRandom,
  sequenceMeanGate,
  assignFileTensors,
  slotTensor,
  type AdapterComposition,
  type AdapterConfig,
  type AdaptersFile,
  type FileTensor,
  type CompositionBlock,
  type ForwardContext,
  type MethodRuntime,
  type ModelAccess,
  type SublayerSite,
  type HookKind,
  type AnySite,
} from '@adapterkit/core';
import { composeLayer, dispatch, touches, type LayerPrimitives } from '@adapterkit/compose';
import { initParam, type ParamRole } from '@adapterkit/init';
import { activation, matMulLast } from '@adapterkit/kernels';
import { LOCATION_OPTION, normalizeBottleneckConfig, reductionFactorAt, type BottleneckConfig } from './config.js';
import { adaptersBottleneckConfig, bottleneckConfigFromAdapters, bottleneckSlots, checkSharedRule } from './adapters-format.js';
import { createFusionModules, fusionForward, type AdapterFusionConfig, type FusionEntry } from './fusion.js';

/** One bottleneck module (adapters' `Adapter` / `ParallelAdapter`) at one sub-layer site. */
interface Module {
  site: SublayerSite;
  config: BottleneckConfig;
  hidden: number;
  down: number;
  /** Variables by their name inside the module (`adapter_down.weight`, …). */
  vars: Map<string, Variable>;
  /** Index of the site (dropout salt). */
  salt: number;
  /** Compacter: the adapter's PHM parameters shared by all its layers (the shared phm_rule). */
  shared?: Map<string, Variable>;
}

interface AdapterEntry {
  config: BottleneckConfig;
  modules: Map<string, Module>;
  /** Compacter parameters shared by every layer of the adapter (`shared_parameters.*`). */
  shared?: Map<string, Variable>;
  /** The invertible adapter (NICE coupling block) on the encoder embeddings, if configured. */
  inv?: Map<string, Variable>;
}

/**
 * The state that flows through a composition at one sub-layer (adapters' BottleneckState):
 * `hs` the running hidden state, `r` the sub-layer's residual input (input_tensor), `f` the sub-layer output
 * as it came from the model (input_hidden_states, which ParallelAdapter.post_forward adds back), and per row
 * range the adapter whose post_forward finishes those rows (null: no adapter acted there → plain f + r).
 */
interface BnState {
  hs: Tensor;
  r: Tensor;
  f: Tensor;
  segs: { rows: number; last: string | null }[];
  /** The last adapter's scaled up-projection (adapters' bottleneck_up), what AdapterFusion attends over. */
  up?: Tensor;
}

let variableCounter = 0;

/** PyTorch nn.LayerNorm over the last axis (mean and variance, eps 1e-5, weight and bias). */
function layerNorm(x: Tensor, weight: Tensor, bias: Tensor): Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  return x.sub(mean).mul(variance.add(1e-5).rsqrt()).mul(weight).add(bias);
}

/** An adapter's variables by save name: `${site.key}.adapters.${location}.${param}` (e.g. `encoder.block.0.layer.1.adapters.output.adapter_down.weight`), the invertible adapter's and the shared PHM rule's. */
function variablesByName(entry: AdapterEntry): Map<string, Variable> {
  const out = new Map<string, Variable>();
  for (const m of entry.modules.values()) for (const [k, v] of m.vars) out.set(`${m.site.key}.adapters.${m.site.location}.${k}`, v);
  for (const [k, v] of entry.inv ?? []) out.set(`encoder.invertible_adapters.${k}`, v);
  for (const [k, v] of entry.shared ?? []) out.set(`shared_parameters.${k}`, v);
  return out;
}

export class BottleneckRuntime extends TableRuntime<AdapterEntry> implements MethodRuntime {
  protected readonly adapters = new AdapterTable<AdapterEntry>('bottleneck', variablesByName);
  private readonly fusions = new Map<string, FusionEntry>();

  constructor(private readonly model: ModelAccess) {
    super();
  }

  // ------------------------------------------------------------------ life cycle
  add(name: string, config: AdapterConfig, seed: number): void {
    this.adapters.assertNew(name);
    const cfg = normalizeBottleneckConfig(config);
    const total = this.model.dims.numEncoderLayers + this.model.dims.numDecoderLayers;
    for (const l of cfg.leave_out) if (l >= total) throw new ConfigError(`leave_out entry ${l} is not a layer id of this model (0..${total - 1})`, 'leave_out');
    const rng = new SeededRandom(seed);
    const modules = new Map<string, Module>();
    let inv: Map<string, Variable> | undefined;
    // Upper bound of the variables (dense down/up projections with biases, norms, the invertible adapter), checked before any is made.
    const covered = this.model.sublayerSites().filter((site) => cfg[LOCATION_OPTION[site.location]] && !cfg.leave_out.includes(site.layer));
    // (dense: the two projections with their biases at least; PHM layers are smaller than dense ones, so no lower bound)
    const dense = covered.reduce((n, site) => {
      const down = Math.floor(site.hiddenSize / reductionFactorAt(cfg, site.layer));
      return n + 2 * site.hiddenSize * down + down + site.hiddenSize;
    }, 0);
    const d = this.model.dims.dModel;
    const extras = covered.length * (4 * d + 2) + (cfg.inv_adapter ? 4 * d * (Math.floor(d / (cfg.inv_adapter_reduction_factor ?? 1)) + 2) : 0);
    checkParameterBudget(this.model, dense + extras, 'reduction_factor', name, cfg.phm_layer ? 0 : dense);
    const shared = cfg.phm_layer && cfg.shared_phm_rule ? this.makeVariables(name, 'shared_parameters', phmRuleSpecs('', cfg, true), rng) : undefined;
    try {
      this.model.sublayerSites().forEach((site, salt) => {
        if (!cfg[LOCATION_OPTION[site.location]] || cfg.leave_out.includes(site.layer)) return;
        const hidden = site.hiddenSize;
        const rf = reductionFactorAt(cfg, site.layer);
        const down = Math.floor(hidden / rf);
        if (down < 1) throw new ConfigError(`reduction_factor ${rf} at layer ${site.layer} leaves ${hidden}/${rf} < 1 bottleneck unit (hidden size ${hidden})`, 'reduction_factor');
        if (cfg.phm_layer && (hidden % cfg.phm_dim !== 0 || down % cfg.phm_dim !== 0)) {
          throw new ConfigError(
            `phm_dim ${cfg.phm_dim} must divide the hidden size ${hidden} and the bottleneck size ${down} (reduction_factor ${rf}) at layer ${site.layer}`,
            'phm_dim',
          );
        }
        modules.set(site.key, { site, config: cfg, hidden, down, vars: this.createVariables(name, site, cfg, hidden, down, rng), salt, shared });
      });
      if (cfg.inv_adapter) inv = this.createInvertible(name, cfg, rng);
    } catch (e) {
      for (const m of modules.values()) for (const v of m.vars.values()) v.dispose();
      for (const v of shared?.values() ?? []) v.dispose();
      throw e;
    }
    this.adapters.add(name, { config: cfg, modules, inv, shared });
  }

  /**
   * adapters' NICECouplingBlock on the embeddings: x = [x1 | x2] (halves of d_model),
   * F = Linear(|x2|, |x2|/rf) → act → Linear(·, |x1|), G = Linear(|x1|, |x1|/rf) → act → Linear(·, |x2|),
   * all bert-initialised (init_bert_weights, whatever init_weights says).
   */
  private createInvertible(name: string, cfg: BottleneckConfig, rng: SeededRandom): Map<string, Variable> {
    const H = this.model.dims.dModel;
    const s1 = Math.floor(H / 2);
    const s2 = H - s1;
    const rf = cfg.inv_adapter_reduction_factor!;
    const kF = Math.floor(s2 / rf);
    const kG = Math.floor(s1 / rf);
    if (kF < 1 || kG < 1) throw new ConfigError(`inv_adapter_reduction_factor ${rf} leaves < 1 unit in the invertible adapter (d_model ${H})`, 'inv_adapter_reduction_factor');
    const shapes: [string, ParamRole, number[]][] = [
      ['F.0.weight', 'down', [s2, kF]],
      ['F.0.bias', 'down', [kF]],
      ['F.2.weight', 'up', [kF, s1]],
      ['F.2.bias', 'up', [s1]],
      ['G.0.weight', 'down', [s1, kG]],
      ['G.0.bias', 'down', [kG]],
      ['G.2.weight', 'up', [kG, s2]],
      ['G.2.bias', 'up', [s2]],
    ];
    const vars = new Map<string, Variable>();
    for (const [param, role, shape] of shapes) {
      const initial = tf.tensor(initParam('bert', { role, shape, fanIn: shape[0] }, rng), shape, 'float32');
      vars.set(param, tf.variable(initial, false, `bottleneck/${name}/encoder.invertible_adapters.${param}#${variableCounter++}`));
      initial.dispose();
    }
    return vars;
  }

  /** NICE forward (encoder embeddings) or reverse (before the LM head). */
  private nice(entry: AdapterEntry, x: Tensor, reverse: boolean): Tensor {
    const v = (k: string) => entry.inv!.get(k)!;
    const act = entry.config.non_linearity;
    const sub = (p: 'F' | 'G', t: Tensor) => matMulLast(activation(act.toLowerCase(), matMulLast(t, v(`${p}.0.weight`), v(`${p}.0.bias`))), v(`${p}.2.weight`), v(`${p}.2.bias`));
    const H = x.shape[x.rank - 1] as number;
    const s1 = Math.floor(H / 2);
    const begin = new Array(x.rank).fill(0);
    const size = new Array(x.rank).fill(-1);
    const x1 = x.slice(begin, [...size.slice(0, -1), s1]);
    const x2 = x.slice([...begin.slice(0, -1), s1], size);
    if (!reverse) {
      const y1 = x1.add(sub('F', x2));
      const y2 = x2.add(sub('G', y1));
      return tf.concat([y1, y2], -1);
    }
    const y2 = x2.sub(sub('G', x1));
    const y1 = x1.sub(sub('F', y2));
    return tf.concat([y1, y2], -1);
  }

  /**
   * Embedding hook: the invertible adapter runs forward on the encoder's input embeddings and in reverse on the
   * decoder output before the LM head (decoder input embeddings are left alone, as adapters does for
   * encoder-decoder models). Which adapter: adapters takes the first adapter of the active setup; here that rule
   * applies per row range, so the rows of a Parallel/BatchSplit branch equal that adapter alone.
   */
  embeddings(stack: 'encoder' | 'decoder', embeds: Tensor, ctx: ForwardContext, inverse: boolean): Tensor | undefined {
    const comp = ctx.composition;
    if (!comp || (stack === 'encoder') === inverse || !this.actsAt('embeddings', stack, ctx)) return undefined;
    const prims: LayerPrimitives<Tensor> = {
      has: (n) => !!this.adapters.find(n)?.inv,
      single: (n, x) => this.nice(this.adapters.get(n), x, inverse),
      rows: (x) => x.shape[0] as number,
      sliceRows: (x, start, end) => x.slice([start, ...new Array(x.rank - 1).fill(0)], [end - start, ...new Array(x.rank - 1).fill(-1)]),
      concatRows: (parts) => (parts.length === 1 ? parts[0] : tf.concat(parts, 0)),
    };
    return tf.tidy(() => composeLayer(firstPerBranch(comp), embeds, prims, ctx));
  }

  /** Whether an active adapter of ours acts at a sub-layer, or (invertible adapters) at a stack's embeddings. */
  actsAt(hook: HookKind, site: AnySite, ctx: ForwardContext): boolean {
    const comp = ctx.composition;
    if (!comp) return false;
    if (hook === 'embeddings') return [...this.adapters.values()].some((a) => a.inv) && touches(firstPerBranch(comp), { has: (n: string) => !!this.adapters.find(n)?.inv });
    if (hook !== 'sublayer') return false;
    const sub = site as SublayerSite;
    if (ctx.isSkipped(sub.layer) || ![...this.adapters.values()].some((a) => a.modules.has(sub.key))) return false;
    return touches(comp, this.primitives(sub, ctx));
  }

  /**
   * Parameters of one module, each initialised by its ROLE (adapters #745: the LayerNorm listed before the
   * down projection must never be mistaken for it). Kernels are in tfjs layout [in, out].
   */
  private createVariables(name: string, site: SublayerSite, cfg: BottleneckConfig, H: number, d: number, shared: SeededRandom): Map<string, Variable> {
    // init_weights_seed: adapters reseeds per module, so every layer starts identical.
    const rng = cfg.init_weights_seed !== null ? new SeededRandom(cfg.init_weights_seed) : shared;
    const specs: { name: string; role: ParamRole; shape: number[]; fanIn?: number }[] = [];
    if (cfg.ln_before)
      specs.push({ name: 'adapter_norm_before.weight', role: 'layer_norm_weight', shape: [H] }, { name: 'adapter_norm_before.bias', role: 'layer_norm_bias', shape: [H] });
    // Compacter: PHM layers keep their own init (adapters' bert init only touches nn.Linear); made below.
    const phm: PhmSpec[] = cfg.phm_layer ? [...phmSpecs('adapter_down', H, d, cfg), ...phmSpecs('adapter_up', d, H, cfg)] : [];
    if (!cfg.phm_layer) {
      specs.push({ name: 'adapter_down.weight', role: 'down', shape: [H, d] }, { name: 'adapter_down.bias', role: 'down', shape: [d], fanIn: H });
      specs.push({ name: 'adapter_up.weight', role: 'up', shape: [d, H] }, { name: 'adapter_up.bias', role: 'up', shape: [H], fanIn: d });
    }
    if (cfg.ln_after)
      specs.push({ name: 'adapter_norm_after.weight', role: 'layer_norm_weight', shape: [H] }, { name: 'adapter_norm_after.bias', role: 'layer_norm_bias', shape: [H] });
    if (cfg.use_gating) specs.push({ name: 'gate.weight', role: 'gate', shape: [H, 1] }, { name: 'gate.bias', role: 'gate', shape: [1], fanIn: H });
    if (cfg.scaling === 'learned') specs.push({ name: 'scaling', role: 'scaling', shape: [1] });
    if (cfg.scaling === 'channel') specs.push({ name: 'scaling', role: 'scaling', shape: [H] });
    const vars = new Map<string, Variable>();
    for (const s of specs) {
      const values = initParam(cfg.init_weights, { role: s.role, shape: s.shape, fanIn: s.fanIn }, rng);
      const unique = `bottleneck/${name}/${site.key}.${s.name}#${variableCounter++}`;
      // Frozen until trainAdapter() marks it trainable (as adapters' add_adapter / train_adapter).
      const initial = tf.tensor(values, s.shape, 'float32');
      vars.set(s.name, tf.variable(initial, false, unique));
      initial.dispose(); // the variable holds its own reference to the data
    }
    for (const [k, v] of this.makeVariables(name, site.key, phm, rng)) vars.set(k, v);
    return vars;
  }

  private makeVariables(name: string, prefix: string, specs: PhmSpec[], rng: SeededRandom): Map<string, Variable> {
    const vars = new Map<string, Variable>();
    for (const s of specs) {
      const initial = tf.tensor(s.init(rng), s.shape, 'float32');
      vars.set(s.name, tf.variable(initial, false, `bottleneck/${name}/${prefix}.${s.name}#${variableCounter++}`));
      initial.dispose();
    }
    return vars;
  }

  /** A down/up projection: nn.Linear, or Compacter's PHM layer y = x·Σᵢ kron(ruleᵢ, Wᵢ) + b. */
  private project(m: Module, which: 'adapter_down' | 'adapter_up', x: Tensor): Tensor {
    const cfg = m.config;
    const v = (k: string) => m.vars.get(k)!;
    if (!cfg.phm_layer) return matMulLast(x, v(`${which}.weight`), v(`${which}.bias`));
    const p = cfg.phm_dim;
    const W = cfg.factorized_phm_W ? tf.matMul(v(`${which}.W_left`), v(`${which}.W_right`)) : v(`${which}.W`); // [p, a, b]
    const [, a, b] = W.shape as number[];
    const ruleVars = cfg.shared_phm_rule ? m.shared! : m.vars;
    const rp = cfg.shared_phm_rule ? '' : `${which}.`;
    const rule = cfg.factorized_phm_rule ? tf.matMul(ruleVars.get(`${rp}phm_rule_left`)!, ruleVars.get(`${rp}phm_rule_right`)!) : ruleVars.get(`${rp}phm_rule`)!; // [p, p, p]
    // kron(ruleᵢ [p, p], Wᵢ [a, b])[r·a + s, c·b + t] = ruleᵢ[r, c]·Wᵢ[s, t], summed over i.
    const kernel = rule
      .reshape([p, p, 1, p, 1])
      .mul(W.reshape([p, 1, a, 1, b]))
      .sum(0)
      .reshape([p * a, p * b]);
    return matMulLast(x, kernel, cfg.phm_bias ? v(`${which}.b`) : undefined);
  }

  override remove(name: string): void {
    if (!this.adapters.remove(name)) return;
    // A fusion over a deleted adapter cannot run any more.
    for (const f of [...this.fusions.values()]) if (f.adapters.includes(name)) this.deleteFusion(f.name);
  }

  // ------------------------------------------------------------------ AdapterFusion
  /** BertFusion modules at every sub-layer where one of the fused adapters sits. */
  addFusion(name: string, adapters: string[], config: AdapterFusionConfig, seed: number): void {
    if (this.fusions.has(name)) throw new AdapterError(`an AdapterFusion named '${name}' already exists`, name);
    if (adapters.length === 0) throw new AdapterError('AdapterFusion needs at least one adapter');
    for (const a of adapters) if (!this.adapters.has(a)) throw new AdapterError(`cannot fuse '${a}': it is not a bottleneck adapter of this model`, a);
    const sites = this.model.sublayerSites().filter((s) => adapters.some((a) => this.adapters.get(a).modules.has(s.key)));
    this.fusions.set(name, { name, adapters: [...adapters], config, modules: createFusionModules(name, sites, config, seed) });
  }

  deleteFusion(name: string): void {
    const f = this.fusions.get(name);
    if (!f) throw new AdapterError(`no AdapterFusion '${name}'`, name);
    for (const m of f.modules.values()) for (const v of m.vars.values()) v.dispose();
    this.fusions.delete(name);
  }

  fusion(name: string): FusionEntry | undefined {
    return this.fusions.get(name);
  }

  fusionVariables(name: string): Map<string, Variable> {
    const f = this.fusions.get(name);
    if (!f) throw new AdapterError(`no AdapterFusion '${name}'`, name);
    const out = new Map<string, Variable>();
    for (const [key, m] of f.modules) for (const [k, v] of m.vars) out.set(`${key}.adapter_fusion_layer.${name}.${k}`, v);
    return out;
  }

  setWeights(name: string, tensors: Map<string, Tensor>): void {
    const vars = this.variables(name);
    for (const [k, t] of tensors) {
      const v = vars.get(k);
      if (!v) throw new AdapterError(`bottleneck adapter '${name}' has no variable '${k}'`, name);
      v.assign(t);
    }
  }

  /** The config an adapter was created with (normalised). */
  config(name: string): BottleneckConfig | undefined {
    return this.adapters.find(name)?.config;
  }

  // ------------------------------------------------------------------ AdapterHub adapters files
  exportAdapters(name: string): { config: Record<string, unknown>; tensors: Map<string, FileTensor> } {
    const e = this.adapters.get(name);
    const config = adaptersBottleneckConfig(e.config);
    return { config, tensors: new Map(bottleneckSlots({ ...e, modules: [...e.modules.values()] }, name).map((slot) => [slot.key, slotTensor(slot)])) };
  }

  importAdapters(name: string, file: AdaptersFile, tensors: Map<string, FileTensor>): AdapterConfig {
    const config = bottleneckConfigFromAdapters(file.config);
    this.add(name, config, 0);
    const e = this.adapters.get(name);
    try {
      const parts = { ...e, modules: [...e.modules.values()] };
      checkSharedRule(parts, file.name, tensors);
      assignFileTensors(bottleneckSlots(parts, file.name), tensors, 'adapters file');
    } catch (err) {
      this.remove(name);
      throw err;
    }
    return e.config;
  }

  // ------------------------------------------------------------------ forward
  sublayer(site: SublayerSite, output: Tensor, residual: Tensor, ctx: ForwardContext): Tensor | undefined {
    // Nothing of ours acts here (no active adapter of ours at this site): the model's plain path.
    if (!this.actsAt('sublayer', site, ctx)) return undefined;
    const prims = this.primitives(site, ctx);
    return tf.tidy(() => {
      const rows = output.shape[0];
      const state = dispatch<BnState>(site.layer, { hs: output, r: residual, f: output, segs: [{ rows, last: null }] }, prims, ctx)!;
      return this.postForward(state, this.originalNorm(site));
    });
  }

  /**
   * The sub-layer's own norm where `adapters` hands it to the bottleneck (post-norm models); pre-norm models
   * pass layer_norm=None, and the "original LN" before/after the adapter is the residual add alone.
   */
  private originalNorm(site: SublayerSite): (x: Tensor) => Tensor {
    const post = this.model.postNorm;
    return site.norm === 'post' && post ? (x) => post.call(this.model, site, x) : (x) => x;
  }

  /** adapters' post_forward of the last adapter, per row range (rows of different adapters may differ in config). */
  private postForward(s: BnState, ln: (x: Tensor) => Tensor): Tensor {
    const finish = (name: string | null, hs: Tensor, f: Tensor, r: Tensor): Tensor => {
      const cfg = name === null ? null : this.adapters.get(name).config;
      if (!cfg) return hs.add(r); // no adapter acted on these rows: the plain residual add
      const out = cfg.is_parallel ? hs.add(f) : hs;
      return cfg.original_ln_after ? ln(out.add(r)) : out;
    };
    const segs = mergeSegments(s.segs);
    if (segs.length === 1) return finish(segs[0].last, s.hs, s.f, s.r);
    let start = 0;
    const parts = segs.map((g) => {
      const sl = (t: Tensor) => t.slice([start, 0, 0], [g.rows, -1, -1]);
      const y = finish(g.last, sl(s.hs), sl(s.f), sl(s.r));
      start += g.rows;
      return y;
    });
    return tf.concat(parts, 0);
  }

  private primitives(site: SublayerSite, ctx: ForwardContext): LayerPrimitives<BnState> {
    const moduleOf = (name: string) => this.adapters.find(name)?.modules.get(site.key);
    const sliceRows = (s: BnState, start: number, end: number): BnState => {
      const sl = (t: Tensor) => t.slice([start, 0, 0], [end - start, -1, -1]);
      return { hs: sl(s.hs), r: sl(s.r), f: sl(s.f), segs: sliceSegments(s.segs, start, end), up: s.up && sl(s.up) };
    };
    const prims: LayerPrimitives<BnState> = {
      has: (name) => moduleOf(name) !== undefined,
      single: (name, s) => this.runModule(moduleOf(name)!, name, s, ctx),
      rows: (s) => s.hs.shape[0],
      sliceRows,
      concatRows: (parts) =>
        parts.length === 1
          ? parts[0]
          : {
              hs: concatRows(parts, (p) => p.hs),
              r: concatRows(parts, (p) => p.r),
              f: concatRows(parts, (p) => p.f),
              segs: parts.flatMap((p) => p.segs),
              up: parts.every((p) => p.up) ? concatRows(parts, (p) => p.up!) : undefined,
            },
      // Σ wᵢ·hsᵢ with the block's weights (already normalised to sum 1; adapters' extra 1/n is not copied).
      average: (results, weights, input) => ({
        hs: results.map((r, i) => r.hs.mul(weights[i])).reduce((a, b) => a.add(b)),
        r: input.r,
        f: input.f,
        segs: results[results.length - 1].segs,
      }),
      split: (block, s, run) => this.split(block as CompositionBlock & { type: 'Split' }, s, run),
      fuse: (block, results, input) => this.fuse(site, block, results, input, prims, ctx),
    };
    return prims;
  }

  /**
   * adapters' compose_fuse: query and residual from the last fused adapter's pre_forward, then BertFusion's
   * attention over the children's up-projections; the last adapter's post_forward finishes.
   */
  private fuse(site: SublayerSite, block: CompositionBlock & { type: 'Fuse' }, results: BnState[], input: BnState, prims: LayerPrimitives<BnState>, ctx: ForwardContext): BnState {
    const fusion = this.fusions.get(block.name);
    if (!fusion) throw new AdapterError(`no AdapterFusion '${block.name}': add it with addAdapterFusion(model, Fuse(...)) before activating the Fuse block`, block.name);
    const m = fusion.modules.get(site.key);
    if (!m) throw new AdapterError(`AdapterFusion '${block.name}' has no layer at ${site.key}`, block.name);
    const ran = results.filter((_, i) => touches(block.children[i], prims));
    const lastLeaf = (c: AdapterComposition): string => (typeof c === 'string' ? c : lastLeaf(c.children[c.children.length - 1]));
    const leaves = block.children.filter((c) => touches(c, prims)).map(lastLeaf);
    const last = leaves[leaves.length - 1];
    const cfg = this.adapters.get(last).config;
    const { x, residual } = preForward(cfg, input, this.originalNorm(site));
    const query = cfg.is_parallel ? input.r : fusion.config.query_before_ln ? input.hs : x;
    const ups = tf.stack(
      ran.map((r) => r.up!),
      2,
    ); // [B, S, N, H]
    const hs = fusionForward(m, fusion.config, query, ups, residual, { training: ctx.training, seed: ctx.dropoutSeed(7919 + site.layer) });
    return { hs, r: input.r, f: input.f, segs: [{ rows: input.hs.shape[0], last }] };
  }

  /** Sequence split (adapters' compose_split): positions [0, s₀) to the first child, and so on. */
  private split(block: CompositionBlock & { type: 'Split' }, s: BnState, run: (child: AdapterComposition, s: BnState) => BnState): BnState {
    const L = s.hs.shape[1] as number;
    const total = block.splits.reduce((a, b) => a + b, 0);
    if (total !== L) throw new InputError(`Split splits [${block.splits}] sum to ${total} but the sequence has ${L} positions (at every layer the split applies to)`, 'splits');
    const parts: BnState[] = [];
    let start = 0;
    let segs = s.segs;
    block.children.forEach((child, i) => {
      const n = block.splits[i];
      if (n > 0) {
        const sl = (t: Tensor) => t.slice([0, start, 0], [-1, n, -1]);
        const out = run(child, { hs: sl(s.hs), r: sl(s.r), f: sl(s.f), segs: s.segs });
        parts.push(out);
        // As adapters: the last child that ran decides the post_forward for the whole sequence.
        if (out.segs.some((g) => g.last !== null)) segs = out.segs;
      }
      start += n;
    });
    const segments = parts.map((p) => p.hs); // of the sequence, in order
    return {
      hs: segments.length === 1 ? segments[0] : tf.concat(segments, 1),
      r: s.r,
      f: s.f,
      segs,
    };
  }

  /**
   * One adapter: its pre_forward (residual policy) then its forward (adapters' Adapter / ParallelAdapter).
   * Every leaf applies its own pre_forward, so a row range in Parallel/BatchSplit equals that adapter alone and
   * Stack(a, b) is adapters' compose_stack (pre_block before each child).
   */
  private runModule(m: Module, name: string, s: BnState, ctx: ForwardContext): BnState {
    const cfg = m.config;
    const v = (k: string) => m.vars.get(k)!;
    const { x, residual } = preForward(cfg, s, this.originalNorm(m.site));
    // ---- forward
    let h = cfg.ln_before ? layerNorm(x, v('adapter_norm_before.weight'), v('adapter_norm_before.bias')) : x;
    h = activation(cfg.non_linearity.toLowerCase(), this.project(m, 'adapter_down', h));
    let up = this.project(m, 'adapter_up', h);
    up = typeof cfg.scaling === 'number' ? (cfg.scaling === 1 ? up : up.mul(cfg.scaling)) : up.mul(v('scaling'));
    let out = ctx.training && cfg.dropout > 0 ? tf.dropout(up, cfg.dropout, undefined, ctx.dropoutSeed(m.salt * 31 + 17)) : up;
    if (cfg.use_gating) {
      // mean over the sequence of sigmoid(gate(x)): [B, 1, 1] in the encoder; causal [B, L, 1] in the decoder
      // (so cached decoding matches the full pass; see sequenceMeanGate)
      const gate = sequenceMeanGate(
        tf.sigmoid(matMulLast(x, v('gate.weight'), v('gate.bias'))),
        { causal: m.site.stack === 'decoder', key: `bottleneck:${name}:${m.site.key}` },
        ctx,
      );
      out = out.mul(gate);
    }
    if (cfg.is_parallel) {
      if (cfg.ln_after) out = layerNorm(out, v('adapter_norm_after.weight'), v('adapter_norm_after.bias'));
    } else {
      if (cfg.adapter_residual_before_ln) out = out.add(residual);
      if (cfg.ln_after) out = layerNorm(out, v('adapter_norm_after.weight'), v('adapter_norm_after.bias'));
      if (!cfg.adapter_residual_before_ln) out = out.add(residual);
    }
    return { hs: out, r: s.r, f: s.f, segs: [{ rows: s.hs.shape[0], last: name }], up };
  }
}

interface PhmSpec {
  name: string;
  shape: number[];
  init: (rng: SeededRandom) => Float32Array;
}

function normals(n: number, std: number, rng: SeededRandom): Float32Array {
  return new Float32Array(n).map(() => rng.normal(0, std));
}

/**
 * adapters' init_W: `if config["hypercomplex_nonlinearity"]:` is true for every allowed value, so every W slice
 * gets xavier_normal_ (std √(2 / (fan_in + fan_out)), torch's fan_in = size(1), fan_out = size(0)).
 */
function xavierNormalSlices(p: number, a: number, b: number, rng: SeededRandom): Float32Array {
  return normals(p * a * b, Math.sqrt(2 / (a + b)), rng);
}

/** The PHM rule: shared (init_shared_parameters: normal(phm_init_range) / uniform(±1)) or per layer (normal(0.01) / uniform(±0.01)). */
function phmRuleSpecs(prefix: string, cfg: BottleneckConfig, shared: boolean): PhmSpec[] {
  const p = cfg.phm_dim;
  const init = (n: number) => (rng: SeededRandom) =>
    cfg.phm_c_init === 'normal' ? normals(n, shared ? cfg.phm_init_range : 0.01, rng) : new Float32Array(n).map(() => rng.uniform(shared ? -1 : -0.01, shared ? 1 : 0.01));
  if (cfg.factorized_phm_rule)
    return [
      { name: `${prefix}phm_rule_left`, shape: [p, p, 1], init: init(p * p) },
      { name: `${prefix}phm_rule_right`, shape: [p, 1, p], init: init(p * p) },
    ];
  return [{ name: `${prefix}phm_rule`, shape: [p, p, p], init: init(p * p * p) }];
}

/** One PHM layer's own parameters (adapters' PHMLayer): W (factorized or not), bias, and a per-layer rule unless shared. */
function phmSpecs(prefix: string, inF: number, outF: number, cfg: BottleneckConfig): PhmSpec[] {
  const p = cfg.phm_dim;
  const a = inF / p;
  const b = outF / p;
  const k = cfg.phm_rank;
  const specs: PhmSpec[] = cfg.factorized_phm_W
    ? [
        { name: `${prefix}.W_left`, shape: [p, a, k], init: (rng) => xavierNormalSlices(p, a, k, rng) },
        { name: `${prefix}.W_right`, shape: [p, k, b], init: (rng) => xavierNormalSlices(p, k, b, rng) },
      ]
    : [{ name: `${prefix}.W`, shape: [p, a, b], init: (rng) => xavierNormalSlices(p, a, b, rng) }];
  if (cfg.phm_bias) specs.push({ name: `${prefix}.b`, shape: [outF], init: () => new Float32Array(outF) });
  if (!cfg.shared_phm_rule) specs.push(...phmRuleSpecs(`${prefix}.`, cfg, false));
  return specs;
}

/**
 * adapters' pre_forward (`ln`: the sub-layer's own norm for post-norm models, the identity for pre-norm ones):
 * the adapter's input `x` and the residual its forward adds back.
 */
function preForward(cfg: BottleneckConfig, s: BnState, ln: (x: Tensor) => Tensor): { x: Tensor; residual: Tensor } {
  // ParallelAdapter reads the sub-layer input.
  if (cfg.is_parallel) return { x: s.r, residual: s.r };
  let x = s.hs;
  let residual = s.hs; // residual_before_ln true: the sub-layer output before the residual add
  if (cfg.original_ln_before) {
    x = ln(s.hs.add(s.r));
    if (cfg.residual_before_ln === 'post_add') residual = x;
  }
  if (cfg.residual_before_ln === false) residual = x;
  return { x, residual };
}

function sliceSegments(segs: BnState['segs'], start: number, end: number): BnState['segs'] {
  const out: BnState['segs'] = [];
  let pos = 0;
  for (const g of segs) {
    const a = Math.max(start, pos);
    const b = Math.min(end, pos + g.rows);
    if (b > a) out.push({ rows: b - a, last: g.last });
    pos += g.rows;
  }
  return out;
}

function mergeSegments(segs: BnState['segs']): BnState['segs'] {
  const out: BnState['segs'] = [];
  for (const g of segs) {
    const prev = out[out.length - 1];
    if (prev && prev.last === g.last) prev.rows += g.rows;
    else out.push({ ...g });
  }
  return out;
}

/**
 * The composition an invertible adapter follows: `adapters` takes the first adapter of the active setup; here
 * that rule holds per row range, so Parallel and BatchSplit keep their branches and every other block
 * reduces to its first child.
 */
function firstPerBranch(node: AdapterComposition): AdapterComposition {
  if (typeof node === 'string') return node;
  if (node.type === 'Parallel' || node.type === 'BatchSplit') return { ...node, children: node.children.map(firstPerBranch) };
  return firstPerBranch(node.children[0]);
}
