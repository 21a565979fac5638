import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  checkParameterBudget,
  AdapterTable,
  concatRows,
  TableRuntime,
  AdapterError,
  CompositionError,
  fnv1a,
  SeededRandom,
  sequenceMeanGate,
  UnsupportedError,
  type AdapterConfig,
  type AdaptersFile,
  type FileTensor,
  type ForwardContext,
  type HookKind,
  type LinearRole,
  type LinearSite,
  type LinearTerm,
  type MethodRuntime,
  type ModelAccess,
  type RowRange,
} from '@adapterkit/core';
import { dispatch, touches, type LayerPrimitives } from '@adapterkit/compose';
import { matMulLast } from '@adapterkit/kernels';
import { isVera, normalizeLoraConfig, scalingOf, type LoraConfig } from './config.js';
import { exportPeft, importPeft } from './peft.js';
import { exportAdapters, importAdapters } from './adapters-format.js';
import type { LoraAccess, LoraAdapter, SiteParams } from './types.js';
import { columnNorm, type Factors, factorsOf, initialValues, mergedKernel } from './variants.js';

/**
 * The state LoRA passes through a composition at one linear: the layer input `x` and three optional parts
 * of the update — `add` (the LoRA delta, chained by Stack), `scale` (IA3 output vector, DoRA's gain) and
 * `inScale` (IA3 input vector). Null means "nothing yet" (identity). The result is
 * base(x · inScale) · scale + add. `dora`: a DoRA adapter produced these rows (nothing may stack on it).
 */
interface LoraState {
  x: Tensor;
  add: Tensor | null;
  scale: Tensor | null;
  inScale: Tensor | null;
  dora: boolean;
}

type Part = 'add' | 'scale' | 'inScale';
const PARTS: Part[] = ['add', 'scale', 'inScale'];

/**
 * The symbolic state LoRA walks a composition with to declare its terms (LinearTerm) instead of computing
 * them: the row range the dispatcher is on, the terms so far (each over absolute row ranges), and whether
 * something cannot be declared (then the linear hook runs instead).
 */
interface TermPlan {
  start: number;
  end: number;
  terms: PlannedTerm[];
  undeclarable: boolean;
}
/** A term and its identity: slices of one term keep its id, so concatenated parts merge back into one. `dora`: a DoRA adapter's. */
type PlannedTerm = LinearTerm & { id: number; dora?: boolean };

let termIds = 0;

function restrict(terms: PlannedTerm[], start: number, end: number): PlannedTerm[] {
  const cut = <R extends RowRange>(rows: R[]) => rows.map((r) => ({ ...r, start: Math.max(r.start, start), end: Math.min(r.end, end) })).filter((r) => r.end > r.start);
  return terms.map((t) => ({ ...t, rows: cut(t.rows as RowRange[]) }) as PlannedTerm).filter((t) => t.rows.length > 0);
}

let variableCounter = 0;

/** A [1, n] vector repeated for each row of `x` ([rows, 1…, n]), so composition blocks slice and concatenate it like the delta. */
function perRow(x: Tensor, vec: Tensor): Tensor {
  const [rows, ...rest] = x.shape;
  const shape = [1, ...rest.slice(0, -1).map(() => 1), vec.shape[1] as number];
  return tf.ones([rows, ...shape.slice(1, -1), 1]).mul(vec.reshape(shape));
}

/** adapters' attn_matrices vocabulary → linear roles. */
const ATTENTION_MATRIX: Record<string, LinearRole> = { q: 'query', k: 'key', v: 'value' };

export class LoraRuntime extends TableRuntime<LoraAdapter> implements MethodRuntime, LoraAccess {
  readonly adapters = new AdapterTable<LoraAdapter>('LoRA', (a) => a.vars);
  /** Linears whose kernel holds a merged adapter, with the kernel to restore. */
  private readonly merged = new Map<string, { name: string; original: Tensor }>();

  constructor(readonly model: ModelAccess) {
    super();
  }

  /** The linear sites an adapter covers (adapters' LoRA placement by role, or an explicit module list). */
  selectSites(c: LoraConfig): LinearSite[] {
    const leaveOut = new Set(c.leave_out);
    const matrices = new Set((c.attn_matrices as string[]).map((m) => ATTENTION_MATRIX[m]));
    return this.model.linearSites().filter((s) => {
      if (leaveOut.has(s.layer)) return false;
      if (c.target_modules) return c.target_modules.includes(s.key);
      if (s.block === 'selfattn' || s.block === 'crossattn') return c.selfattn_lora && matrices.has(s.role);
      // A gated feed-forward's input: adapters wraps the multiplied projection (ffn_up), never the gate.
      if (s.role === 'ffn_in' || s.role === 'ffn_up') return c.intermediate_lora;
      if (s.role === 'ffn_out') return c.output_lora;
      return false;
    });
  }

  add(name: string, config: AdapterConfig, seed: number): void {
    this.adapters.assertNew(name);
    const c = normalizeLoraConfig(config);
    const rng = new SeededRandom(c.init_weights_seed ?? seed);
    const sites = new Map<string, SiteParams>();
    const vars = new Map<string, Variable>();
    const inputSide = new Set(c.input_scale_modules);
    const create = (key: string, values: Float32Array, shape: number[]) => {
      const initial = tf.tensor(values, shape, 'float32');
      const v = tf.variable(initial, false, `lora/${name}/${key}#${variableCounter++}`);
      initial.dispose(); // the variable holds its own reference to the data
      vars.set(key, v);
      return v;
    };
    const make = (key: string, role: 'lora_A' | 'lora_B' | 'gate', shape: number[], extra: { fanIn?: number; bias?: boolean } = {}) =>
      create(key, initialValues(c, { role, shape, ...extra }, rng), shape);
    const filled = (key: string, value: number, shape: number[]) => create(key, new Float32Array(shape.reduce((x, y) => x * y, 1)).fill(value), shape);
    const adapter: LoraAdapter = { name, config: c, scale: scalingOf(c), sites, vars };
    const perSite = (s: LinearSite) =>
      (c.composition_mode === 'add' ? c.r * (s.inFeatures + s.outFeatures) : inputSide.has(s.key) ? s.inFeatures : s.outFeatures) + (c.use_gating ? s.inFeatures + 1 : 0);
    const selected = this.selectSites(c);
    checkParameterBudget(
      this.model,
      selected.reduce((n, s) => n + perSite(s), 0),
      'r',
      name,
    );
    try {
      if (isVera(c) && selected.length > 0) {
        // One pair of frozen projections per adapter, as large as its largest linear (PEFT's _find_dim)
        const inMax = Math.max(...selected.map((s) => s.inFeatures));
        const outMax = Math.max(...selected.map((s) => s.outFeatures));
        adapter.projections = { A: make('vera_A', 'lora_A', [inMax, c.r]), B: make('vera_B', 'lora_B', [c.r, outMax]) };
      }
      for (const site of selected) {
        const p: SiteParams = { site };
        const k = site.key;
        if (c.composition_mode === 'add' && isVera(c)) {
          p.lambdaD = filled(`${k}.vera_lambda_d`, c.vera_d!, [1, c.r]);
          p.lambdaB = filled(`${k}.vera_lambda_b`, c.vera_b!, [1, site.outFeatures]);
        } else if (c.composition_mode === 'add') {
          p.A = make(`${k}.lora_A`, 'lora_A', [site.inFeatures, c.r]);
          p.B = make(`${k}.lora_B`, 'lora_B', [c.r, site.outFeatures]);
        } else if (inputSide.has(k)) {
          p.inVec = make(`${k}.ia3_in`, 'lora_B', [1, site.inFeatures]);
        } else {
          p.B = make(`${k}.lora_B`, 'lora_B', [1, site.outFeatures]);
        }
        if (c.use_gating) {
          p.gate = make(`${k}.gate`, 'gate', [site.inFeatures, 1]);
          p.gateBias = make(`${k}.gate_bias`, 'gate', [1], { fanIn: site.inFeatures, bias: true });
        }
        if (c.use_dora) {
          // m = ‖W + s·BA‖ as PEFT initialises it: the adapter starts as W + s·BA exactly (the base model when B = 0)
          const m = tf.tidy(() => {
            const w = this.model.readLinearWeight(k);
            const { a, b } = factorsOf(adapter, p, () => w);
            return columnNorm(w, a, b, adapter.scale);
          });
          p.magnitude = tf.variable(m, false, `lora/${name}/${k}.lora_magnitude_vector#${variableCounter++}`);
          m.dispose();
          vars.set(`${k}.lora_magnitude_vector`, p.magnitude);
        }
        sites.set(k, p);
      }
    } catch (e) {
      for (const v of vars.values()) v.dispose();
      throw e;
    }
    this.adapters.add(name, adapter);
  }

  override remove(name: string): void {
    if ([...this.merged.values()].some((m) => m.name === name)) this.unmerge(name);
    super.remove(name);
  }

  config(name: string): LoraConfig {
    return this.adapters.get(name).config;
  }

  // ------------------------------------------------------------------ forward
  actsAt(_hook: HookKind, site: LinearSite, ctx: ForwardContext): boolean {
    const comp = ctx.composition;
    return !!comp && !ctx.isSkipped(site.layer) && touches(comp, { has: (n: string) => this.holds(n, site) });
  }

  /** Whether adapter `n` acts at this linear (a merged adapter is part of the kernel: it does not). */
  private holds(n: string, site: LinearSite): boolean {
    return n !== this.merged.get(site.key)?.name && (this.adapters.find(n)?.sites.has(site.key) ?? false);
  }

  /**
   * The fast path: the active composition at this linear as declared terms (LoRA deltas and IA3 vectors
   * per row range) for the model's fused kernel. Gating, dropout in training and LoRA stacked on LoRA
   * (a chained update) cannot be declared: 'hooks' then.
   */
  linearTerms(site: LinearSite, rows: number, ctx: ForwardContext): LinearTerm[] | 'hooks' | undefined {
    const prims: LayerPrimitives<TermPlan> = {
      has: (n) => this.holds(n, site),
      single: (n, s) => this.declare(this.adapters.get(n), site, s, ctx),
      rows: (s) => s.end - s.start,
      sliceRows: (s, start, end) => ({ start: s.start + start, end: s.start + end, terms: restrict(s.terms, s.start + start, s.start + end), undeclarable: s.undeclarable }),
      concatRows: (parts) => {
        const byId = new Map<number, PlannedTerm>();
        for (const p of parts) {
          for (const t of p.terms) {
            const seen = byId.get(t.id);
            if (seen) (seen.rows as RowRange[]).push(...(t.rows as RowRange[]));
            else byId.set(t.id, { ...t, rows: [...t.rows] } as PlannedTerm);
          }
        }
        return { start: parts[0].start, end: parts[parts.length - 1].end, terms: [...byId.values()], undeclarable: parts.some((p) => p.undeclarable) };
      },
      average: (results, weights, input) => {
        const terms = [...input.terms];
        let undeclarable = results.some((r) => r.undeclarable);
        results.forEach((r, i) => {
          for (const t of r.terms) {
            if (input.terms.includes(t)) continue;
            // Σ wᵢ·vᵢ of IA3 vectors is not a product of vectors: not declarable
            if (t.kind !== 'lora') undeclarable = true;
            else terms.push({ ...t, id: termIds++, rows: t.rows.map((row) => ({ ...row, scale: row.scale * weights[i] })) });
          }
        });
        return { start: input.start, end: input.end, terms, undeclarable };
      },
    };
    const out = dispatch(site.layer, { start: 0, end: rows, terms: [], undeclarable: false }, prims, ctx);
    if (!out) return undefined;
    if (out.undeclarable) return 'hooks';
    return out.terms.length ? out.terms.map(({ id: _id, dora: _dora, ...t }) => t as LinearTerm) : undefined;
  }

  /**
   * An add-mode adapter's factors at a linear in this forward (see variants.ts). LoRA's are its variables;
   * VeRA's and DoRA's are derived from them once per forward (or generation) and owned by the context.
   */
  private factors(a: LoraAdapter, p: SiteParams, ctx: ForwardContext): Factors {
    if (!p.magnitude && !p.lambdaB) return { a: p.A!, b: p.B! };
    const key = p.site.key;
    const weight = () => ctx.remember(`lora:kernel:${key}`, () => this.model.readLinearWeight(key));
    const derived = ctx.remember(`lora:factors:${a.name}:${key}`, () =>
      tf.tidy(() => {
        // the context disposes what it remembers: keep the adapter's own variables out of it
        const f = factorsOf(a, p, weight) as unknown as Record<string, Tensor>;
        return Object.fromEntries(Object.entries(f).filter(([, t]) => t && !(t instanceof tf.Variable)));
      }),
    );
    return { a: derived.a ?? p.A!, b: derived.b, gain: derived.gain };
  }

  /** One adapter's term over the plan's rows. */
  private declare(a: LoraAdapter, site: LinearSite, s: TermPlan, ctx: ForwardContext): TermPlan {
    const p = a.sites.get(site.key)!;
    const c = a.config;
    const undeclarable = () => ({ ...s, undeclarable: true });
    // nothing stacks on DoRA, nor DoRA on anything (the hook path says so by name)
    if (p.gate || (ctx.training && c.dropout > 0) || s.terms.some((t) => t.dora) || (p.magnitude && s.terms.length > 0)) return undeclarable();
    const rows = { start: s.start, end: s.end };
    if (c.composition_mode === 'add') {
      // LoRA on LoRA (Stack) chains on the update path, h_b = f_b(f_a(x)): a product, not a sum of terms
      if (s.terms.some((t) => t.kind === 'lora')) return undeclarable();
      const f = this.factors(a, p, ctx);
      const terms: PlannedTerm[] = [...s.terms, { id: termIds++, kind: 'lora', a: f.a, b: f.b, rows: [{ ...rows, scale: a.scale }], dora: !!f.gain }];
      // DoRA: y = (x·W) ⊙ g + s·(x·a)·(b ⊙ g): the gain is the base projection's output scale on these rows
      if (f.gain) terms.push({ id: termIds++, kind: 'outScale', vector: f.gain, scale: 1, rows: [rows], dora: true });
      return { ...s, terms };
    }
    return { ...s, terms: [...s.terms, { id: termIds++, kind: p.inVec ? 'inScale' : 'outScale', vector: (p.inVec ?? p.B)!, scale: a.scale, rows: [rows] }] };
  }

  linear(site: LinearSite, x: Tensor, base: (x: Tensor) => Tensor, ctx: ForwardContext): Tensor | undefined {
    const out = dispatch<LoraState>(site.layer, { x, add: null, scale: null, inScale: null, dora: false }, this.primitives(site, ctx, base), ctx);
    if (!out || (!out.add && !out.scale && !out.inScale)) return undefined;
    let y = base(out.inScale ? x.mul(out.inScale) : x);
    if (out.scale) y = y.mul(out.scale);
    if (out.add) y = y.add(out.add);
    return y;
  }

  private primitives(site: LinearSite, ctx: ForwardContext, base: (x: Tensor) => Tensor): LayerPrimitives<LoraState> {
    const identityOf = (s: LoraState, part: Part): Tensor => {
      const [rows, ...rest] = s.x.shape;
      if (part === 'add') return tf.zeros([rows, ...rest.slice(0, -1), site.outFeatures]);
      const ones = rest.slice(0, -1).map(() => 1);
      return tf.ones([rows, ...ones, part === 'scale' ? site.outFeatures : site.inFeatures]);
    };
    return {
      has: (n) => this.holds(n, site),
      single: (n, s) => this.single(this.adapters.get(n), site, s, ctx, base),
      rows: (s) => s.x.shape[0],
      sliceRows: (s, start, end) => {
        const cut = (t: Tensor | null) => (t ? t.slice([start], [end - start]) : null);
        return { x: cut(s.x)!, add: cut(s.add), scale: cut(s.scale), inScale: cut(s.inScale), dora: s.dora };
      },
      concatRows: (parts) => {
        if (parts.length === 1) return parts[0];
        const out: LoraState = {
          x: concatRows(parts, (p) => p.x),
          add: null,
          scale: null,
          inScale: null,
          dora: parts.some((p) => p.dora),
        };
        for (const part of PARTS) {
          // A row part that no adapter touched gets the identity (zero delta, unit vector) of that part.
          if (parts.some((p) => p[part])) out[part] = concatRows(parts, (p) => p[part] ?? identityOf(p, part));
        }
        return out;
      },
      average: (results, weights, input) => {
        if (results.some((r) => r.inScale) && results.some((r) => r.scale)) {
          throw new CompositionError(`Average cannot mix input-side and output-side IA3 scaling at '${site.key}'`, 'Average');
        }
        const out: LoraState = { x: input.x, add: null, scale: null, inScale: null, dora: results.some((r) => r.dora) };
        for (const part of PARTS) {
          if (results.some((r) => r[part])) out[part] = results.map((r, i) => (r[part] ?? identityOf(r, part)).mul(weights[i])).reduce((a, b) => a.add(b));
        }
        return out;
      },
    };
  }

  /** One adapter at one linear. LoRA chains on the update path (Stack: h_b = f_b(f_a(x))); IA3 multiplies vectors. */
  private single(a: LoraAdapter, site: LinearSite, s: LoraState, ctx: ForwardContext, base: (x: Tensor) => Tensor): LoraState {
    const p = a.sites.get(site.key)!;
    const c = a.config;
    if (s.dora || (p.magnitude && (s.add || s.scale || s.inScale))) {
      // DoRA normalises the whole projection: another adapter before or after it at one linear has no defined meaning
      throw new CompositionError(
        `cannot Stack DoRA adapter${s.dora ? 's' : ` '${a.name}'`} with another adapter at '${site.key}' (DoRA normalises the whole projection)`,
        'Stack',
        a.name,
        'lora',
      );
    }
    // adapters: with gating, Δ *= mean_seq(sigmoid(gate(x))) and alpha/r is not applied.
    const factor = (t: Tensor): Tensor => {
      if (!p.gate) return t.mul(a.scale);
      const g = tf.sigmoid(matMulLast(s.x, p.gate).add(p.gateBias!));
      // Cross-attention k/v read encoder states (a plain mean); everything else in the decoder reads the
      // decoder's own sequence (a causal mean, so cached decoding matches the full pass).
      const readsEncoder = site.stack === 'encoder' || (site.block === 'crossattn' && (site.role === 'key' || site.role === 'value'));
      const mean = g.rank === 3 ? sequenceMeanGate(g, { causal: !readsEncoder, key: `lora:${a.name}:${site.key}` }, ctx) : g;
      if (ctx.options.recordGates) ctx.gates.set(`${a.name}/${site.key}`, tf.keep(mean.clone()));
      return t.mul(mean);
    };
    if (c.composition_mode === 'add') {
      let input = s.add ?? s.x;
      if (input.shape[input.rank - 1] !== site.inFeatures) {
        throw new CompositionError(
          `cannot Stack LoRA '${a.name}' on another LoRA at '${site.key}': the previous update has ${input.shape[input.rank - 1]} features, this linear takes ${site.inFeatures}`,
          'Stack',
          a.name,
          'lora',
        );
      }
      const dropped = ctx.training && c.dropout > 0;
      if (dropped) input = tf.dropout(input, c.dropout, undefined, ctx.dropoutSeed(fnv1a(`${a.name}/${site.key}`) % 1_000_000));
      const f = this.factors(a, p, ctx);
      const add = factor(matMulLast(matMulLast(input, f.a), f.b));
      if (!f.gain) return { ...s, add };
      // DoRA. PEFT with dropout in training: W·x + (g − 1) ⊙ W·drop(x) + g ⊙ s·BA·drop(x); else g ⊙ (W·x + s·BA·x)
      if (dropped) return { ...s, add: add.add(base(input).mul(f.gain.sub(1))), dora: true };
      return { ...s, add, scale: perRow(s.x, f.gain), dora: true };
    }
    const v = factor(perRow(s.x, (p.inVec ?? p.B)!));
    if (p.inVec) return { ...s, inScale: s.inScale ? s.inScale.mul(v) : v };
    return { ...s, scale: s.scale ? s.scale.mul(v) : v };
  }

  // ------------------------------------------------------------------ merging
  /**
   * Folds the adapter into the base kernels: W + scale·A·B (LoRA, VeRA with its factors; DoRA rescales each
   * output feature to its magnitude), W·l on columns (IA3 output) or rows (IA3 input).
   */
  merge(name: string): void {
    const a = this.adapters.get(name);
    if (a.config.use_gating) throw new UnsupportedError(`cannot merge adapter '${name}': it uses gating (use_gating), which depends on the input`, 'use_gating');
    for (const key of a.sites.keys()) {
      const m = this.merged.get(key);
      if (m) throw new AdapterError(`cannot merge '${name}': '${key}' already holds merged adapter '${m.name}' (unmerge it first)`, name);
    }
    for (const [key, p] of a.sites) {
      const original = this.model.readLinearWeight(key);
      const updated = tf.tidy(() => {
        if (p.A || p.lambdaB) return mergedKernel(a, p, original);
        if (p.inVec) return original.mul(p.inVec.reshape([-1, 1]).mul(a.scale));
        return original.mul(p.B!.mul(a.scale));
      });
      this.model.writeLinearWeight(key, updated);
      updated.dispose();
      this.merged.set(key, { name, original });
    }
  }

  /** Restores the kernels saved at merge time (exactly). */
  unmerge(name: string): void {
    this.adapters.get(name); // an unknown name is an AdapterError
    const keys = [...this.merged].filter(([, m]) => m.name === name).map(([k]) => k);
    if (keys.length === 0) throw new AdapterError(`adapter '${name}' is not merged`, name);
    for (const key of keys) {
      const { original } = this.merged.get(key)!;
      this.model.writeLinearWeight(key, original);
      original.dispose();
      this.merged.delete(key);
    }
  }

  isMerged(name: string): boolean {
    return [...this.merged.values()].some((m) => m.name === name);
  }

  // ------------------------------------------------------------------ PEFT
  importPeft(name: string, peftConfig: Record<string, unknown>, tensors: Map<string, { shape: number[]; data: Float32Array }>): AdapterConfig {
    return importPeft(this, name, peftConfig, tensors);
  }

  exportPeft(name: string): { config: Record<string, unknown>; tensors: Map<string, { shape: number[]; data: Float32Array }> } {
    return exportPeft(this, name);
  }

  importAdapters(name: string, file: AdaptersFile, tensors: Map<string, FileTensor>): AdapterConfig {
    return importAdapters(this, name, file, tensors);
  }

  exportAdapters(name: string): { config: Record<string, unknown>; tensors: Map<string, FileTensor> } {
    return exportAdapters(this, name);
  }
}
