import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import { AdaptersHeads, type AdaptersHeadInfo, prepareAdaptersHead, readAdaptersHeadFiles, refuseAdaptersHeadFiles } from './adapters-head.js';
import { type AdapterComposition, type CompositionBlock, checkAdapterName, checkBatchSizes, leavesWithAncestors, normalizeComposition, parallelChannels } from './composition.js';
import { ForwardContext, type SharedMemo } from './context.js';
import { AdapterError, CompositionError, ConfigError, FileError, ModelMismatchError, UnsupportedError, WeightError } from './errors.js';
import type {
  AdapterConfig,
  AdapterMethod,
  AdaptersFile,
  AnySite,
  AttentionSite,
  FileTensor,
  HookKind,
  InputEmbeddings,
  LinearGroup,
  LinearSite,
  LinearTerm,
  MethodRuntime,
  ModelAccess,
  PrefixKV,
  RowRange,
  StackName,
  SublayerSite,
} from './hooks.js';
import { type HubOptions, isHubId, openSource } from './hub.js';
import { exists, parseJson, resolveAtomicDir, writeDirAtomic } from './io.js';
import { methodForAdaptersArchitecture, methodForConfig, methodForPeftType, resolveConfig } from './registry.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { readTorchCheckpoint } from './torch-checkpoint.js';
import { writeTorchCheckpoint } from './torch-save.js';
import { fnv1a } from './rng.js';
import { type OptionKeys, rejectUnknownOptions } from './options.js';

export const ADAPTER_FORMAT_VERSION = 1;
/** The `adapters` release whose file format adapterkit writes (adapter_config.json's `version`: "adapters.<release>"). */
export const ADAPTERS_FORMAT_RELEASE = '1.2.0';

/** Adapter file formats: adapterkit's own, PEFT's, AdapterHub `adapters`'. */
export type AdapterFormat = 'adapterkit' | 'peft' | 'adapters';

/** How saveAdapter / serializeAdapterAsync write an adapter. */
export interface SaveAdapterOptions {
  /** adapterkit's own format (default), PEFT's, or AdapterHub `adapters`'. */
  format?: AdapterFormat;
  /**
   * Weights as safetensors (default, true) or, when false, as a `torch.save` archive: PEFT's `adapter_model.bin`
   * (its `safe_serialization=False`) or `adapters`' `pytorch_adapter.bin` (its `use_safetensors=False`, that
   * library's default). Only for `format: 'peft' | 'adapters'`: adapterkit's own format is always safetensors.
   */
  safeSerialization?: boolean;
}

/** Weight files an adapter directory may hold, in the order they are looked for (PEFT's, then `adapters`'). */
const ADAPTER_WEIGHT_FILES = ['adapter_model.safetensors', 'adapter_model.bin', 'adapter.safetensors', 'pytorch_adapter.bin'] as const;

/** JSON with keys sorted at every level, as `adapters` writes its configs (json.dump(sort_keys=True, indent=2)). */
function sortedJson(value: unknown): string {
  const sort = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sort)
      : v && typeof v === 'object'
        ? Object.fromEntries(
            Object.keys(v as object)
              .sort()
              .map((k) => [k, sort((v as Record<string, unknown>)[k])]),
          )
        : v;
  return `${JSON.stringify(sort(value), null, 2)}\n`;
}

/** While an adapter file loads: the parameters its weights file holds (a config asking for more is refused before allocating). */
const fileParameterCounts = new WeakMap<ModelAccess, number>();

/**
 * How many parameters one adapter may have before anything is allocated: `ratio` × the base model's
 * parameters, and never less than `floor` (small test models). An adapter larger than the model it adapts is
 * a mistake (`r: 1e8`, `reduction_factor: 1e-9`, `prefix_length: 1e9`), refused with a ConfigError naming the
 * field instead of gigabytes allocated or an untyped RangeError.
 */
export const ADAPTER_PARAMETER_BUDGET = { ratio: 1, floor: 2 ** 24 } as const;

/**
 * Throws a ConfigError naming `field` when an adapter of `parameters` parameters (exact, or an upper bound)
 * would exceed the budget of `model` (see ADAPTER_PARAMETER_BUDGET); while an adapter file loads, a WeightError
 * when `atLeast` (a lower bound of the count, when the method has one) exceeds what the file holds. Every
 * method calls it in `add` with its count, before creating variables.
 */
export function checkParameterBudget(model: ModelAccess, parameters: number, field: string, adapter: string, atLeast = parameters): void {
  const inFile = fileParameterCounts.get(model);
  if (inFile !== undefined && atLeast > inFile) {
    throw new WeightError(`adapter '${adapter}': its config needs at least ${atLeast} parameters but its weights file holds ${inFile}; '${field}' does not match the file`, field);
  }
  const base = (model as { baseParameterCount?(): number }).baseParameterCount?.() ?? 0;
  const budget = Math.max(ADAPTER_PARAMETER_BUDGET.floor, ADAPTER_PARAMETER_BUDGET.ratio * base);
  if (!(parameters <= budget)) {
    throw new ConfigError(
      `adapter '${adapter}' would have ${parameters.toExponential(3)} parameters, over the budget of ${budget.toExponential(3)} ` +
        `(${ADAPTER_PARAMETER_BUDGET.ratio}× the base model's ${base} parameters, at least ${ADAPTER_PARAMETER_BUDGET.floor}); lower '${field}'`,
      field,
    );
  }
}

/**
 * What an adapter directory may hold when a save swaps it whole (README.md is kept). A directory shared with
 * other content (the CLI's `train --out` holds `checkpoint/`) is written file by file instead.
 */
const ADAPTER_DIR_ENTRIES = {
  replaces: ['adapter_config.json', ...ADAPTER_WEIGHT_FILES],
  carries: ['README.md'],
  shared: 'in-place',
} as const;

interface AdapterRecord {
  name: string;
  config: AdapterConfig;
  parts: { method: AdapterMethod; config: AdapterConfig }[];
  /** Where it came from ('adapterkit' | 'peft'), for export defaults. */
  source: string;
}

/**
 * The active adapters' terms at one linear group as inputs of the fused linear kernel
 * (@adapterkit/kernels' LinearAdapterInputs): y = ((x̂ ⊙ inScale)·W) ⊙ outScale + ((x̂·loraA) ⊙ loraScale)·loraB.
 */
export interface LinearInputs {
  loraA?: Tensor;
  loraB?: Tensor;
  loraScale?: Tensor;
  inScale?: Tensor;
  outScale?: Tensor;
}

const HOOK_METHOD: Record<HookKind, keyof MethodRuntime> = {
  linear: 'linear',
  sublayer: 'sublayer',
  attentionPrefix: 'attentionPrefix',
  embeddings: 'embeddings',
  inputEmbeddings: 'inputEmbeddings',
};

/** What each exclusive hook owns (error messages). */
const OWNS = { sublayer: "sub-layer's output", attentionPrefix: "attention's prefix", inputEmbeddings: "stack's input embeddings" } as const;

export interface AdapterSummaryRow {
  name: string;
  method: string;
  parameters: number;
  /** Parameters as a percentage of the base model's. */
  percent: number;
  active: boolean;
  trainable: boolean;
}

/** An adapter serialised to files (what saveAdapter writes, what a browser download carries). */
export type AdapterFiles = Record<string, Uint8Array>;

export interface AddAdapterOptions {
  /** Seed of the adapter's initialisation (default: a hash of its name). */
  seed?: number;
  /** Replace an existing adapter of that name. */
  overwrite?: boolean;
  /** Where it was loaded from (recorded in its summary). */
  source?: string;
}
const ADD_ADAPTER_OPTIONS = { seed: true, overwrite: true, source: true } as const satisfies OptionKeys<AddAdapterOptions>;

export interface AverageAdapterOptions {
  /** Divide the weights by their sum (default true, as `adapters`). */
  normalizeWeights?: boolean;
  /** `adapters`' combine_strategy: only 'linear' (every parameter averaged) is implemented; others are refused. */
  combineStrategy?: string;
}
const AVERAGE_ADAPTER_OPTIONS = { normalizeWeights: true, combineStrategy: true } as const satisfies OptionKeys<AverageAdapterOptions>;

/**
 * The adapter life cycle on one model: add/delete, activate a composition, choose what trains, save/load,
 * and the hook implementations the model calls. Model-agnostic: the model hands in a ModelAccess.
 */
export class AdapterHost {
  private readonly runtimes = new Map<string, MethodRuntime>();
  private readonly adapters = new Map<string, AdapterRecord>();
  private active: CompositionBlock | null = null;
  private skipLayers: ReadonlySet<number> = new Set();
  private trainable = new Set<string>();
  private readonly heads = new AdaptersHeads();

  constructor(readonly model: ModelAccess & { baseParameterCount?(): number }) {}

  // ---------------------------------------------------------------- life cycle
  addAdapter(name: string, config: string | AdapterConfig = 'seq_bn', options: AddAdapterOptions = {}): void {
    rejectUnknownOptions(options, ADD_ADAPTER_OPTIONS, 'addAdapter');
    checkAdapterName(name);
    if (this.adapters.has(name)) {
      if (!options.overwrite) throw new AdapterError(`an adapter named '${name}' already exists (delete it first or pass overwrite: true)`, name);
      this.deleteAdapter(name);
    }
    const resolved = resolveConfig(config);
    const partConfigs = resolved.method === 'union' ? (resolved.configs as AdapterConfig[]) : [resolved];
    const parts = partConfigs.map((c) => ({ method: methodForConfig(c), config: c }));
    const seed = options.seed ?? fnv1a(name);
    const added: MethodRuntime[] = [];
    try {
      parts.forEach((p, i) => {
        const rt = this.runtime(p.method);
        rt.add(name, p.config, seed + i * 7919);
        added.push(rt);
      });
    } catch (e) {
      for (const rt of added) rt.remove(name);
      throw e;
    }
    this.adapters.set(name, { name, config: resolved, parts, source: options.source ?? 'adapterkit' });
  }

  deleteAdapter(name: string): void {
    const rec = this.get(name);
    for (const p of rec.parts) this.runtime(p.method).remove(name);
    this.adapters.delete(name);
    this.heads.delete(name);
    this.trainable.delete(name);
    if (this.active && leavesWithAncestors(this.active).some((l) => l.name === name)) this.active = null;
  }

  listAdapters(): { name: string; method: string; config: AdapterConfig }[] {
    return [...this.adapters.values()].map((r) => ({ name: r.name, method: r.config.method, config: r.config }));
  }

  hasAdapter(name: string): boolean {
    return this.adapters.has(name);
  }

  /** Whether every method part of `name` lets its rows be regrouped between decode steps (AdapterMethod.decodesRowwise). */
  decodesRowwise(name: string): boolean {
    // rows of one decode batch share the output projection: an adapter with its own LM head cannot join
    return this.get(name).parts.every((p) => p.method.decodesRowwise?.(p.config) ?? true) && !this.heads.replacesHead(name);
  }

  adapterConfig(name: string): AdapterConfig {
    return this.get(name).config;
  }

  /** Activates a composition (a name, or a block); validates nesting and per-method support now, not in a forward. */
  setActiveAdapters(composition: AdapterComposition | null, options: { skipLayers?: Iterable<number> } = {}): void {
    if (composition === null || composition === undefined) {
      this.active = null;
      this.skipLayers = new Set(options.skipLayers ?? []);
      return;
    }
    const normalized = this.checkComposition(composition, 'activate');
    this.heads.projection(normalized); // LM heads it cannot apply are refused now, not in a forward
    const total = this.model.dims.numEncoderLayers + this.model.dims.numDecoderLayers;
    const skip = new Set(options.skipLayers ?? []);
    for (const l of skip) if (!Number.isInteger(l) || l < 0 || l >= total) throw new AdapterError(`skipLayers entry ${l} is not a layer id in [0, ${total})`);
    this.active = normalized;
    this.skipLayers = skip;
  }

  /**
   * Normalises a composition and checks it against this model's adapters: every name is a loaded adapter and
   * every block is one its methods support. A composition naming an unknown adapter is an error wherever it
   * is used (activation, forward, generate), never a silent run of the base model.
   */
  checkComposition(composition: AdapterComposition, use: 'activate' | 'use' = 'use'): CompositionBlock {
    const normalized = normalizeComposition(composition);
    for (const { name, ancestors } of leavesWithAncestors(normalized)) {
      const rec = this.adapters.get(name);
      if (!rec) throw new AdapterError(`cannot ${use} unknown adapter '${name}' (known: ${[...this.adapters.keys()].join(', ') || 'none'})`, name);
      for (const block of ancestors) {
        for (const part of rec.parts) {
          if (!part.method.supportedBlocks.has(block.type)) {
            throw new CompositionError(
              `${block.type} is not supported by ${part.method.name} adapters: '${name}' (${part.method.name}) cannot be a child of ${block.type}`,
              block.type,
              name,
              part.method.name,
            );
          }
        }
      }
    }
    return normalized;
  }

  get activeComposition(): CompositionBlock | null {
    return this.active;
  }

  get skippedLayers(): ReadonlySet<number> {
    return this.skipLayers;
  }

  /**
   * Only these adapters' variables train; everything else (the base model included) is frozen. As in
   * `adapters`' train_adapter, the adapters are activated (as a Stack) unless the active composition
   * already contains them all.
   */
  trainAdapter(names: string | string[]): void {
    const list = typeof names === 'string' ? [names] : names;
    for (const n of list) this.get(n);
    const activeNames = new Set(this.active ? leavesWithAncestors(this.active).map((l) => l.name) : []);
    if (!list.every((n) => activeNames.has(n))) this.setActiveAdapters({ type: 'Stack', children: [...list] }, { skipLayers: this.skipLayers });
    this.trainable = new Set(list);
    for (const rec of this.adapters.values()) {
      const on = this.trainable.has(rec.name);
      for (const v of this.adapterVariables(rec.name).values()) (v as { trainable: boolean }).trainable = on;
    }
  }

  trainingAdapters(): string[] {
    return [...this.trainable];
  }

  /** Variables of the adapters set by trainAdapter, in a stable order. */
  trainableVariables(): Variable[] {
    return [...this.trainable].flatMap((n) => [...this.adapterVariables(n).values()]);
  }

  adapterVariables(name: string): Map<string, Variable> {
    const rec = this.get(name);
    const out = new Map<string, Variable>();
    for (const p of rec.parts) {
      for (const [k, v] of this.runtime(p.method).variables(name)) {
        if (out.has(k)) throw new AdapterError(`adapter '${name}' has two variables named '${k}'`, name);
        out.set(k, v);
      }
    }
    return out;
  }

  adapterSummary(): AdapterSummaryRow[] {
    const base = this.model.baseParameterCount?.() ?? 0;
    const activeNames = new Set(this.active ? leavesWithAncestors(this.active).map((l) => l.name) : []);
    return [...this.adapters.values()].map((rec) => {
      const parameters = [...this.adapterVariables(rec.name).values()].reduce((a, v) => a + v.size, 0);
      return {
        name: rec.name,
        method: rec.config.method,
        parameters,
        percent: base ? (100 * parameters) / base : 0,
        active: activeNames.has(rec.name),
        trainable: this.trainable.has(rec.name),
      };
    });
  }

  /** Weighted linear average of adapters with identical configs, as `adapters`' average_adapter("linear"). */
  averageAdapter(newName: string, names: string[], weights?: number[], options: AverageAdapterOptions = {}): void {
    rejectUnknownOptions(options, AVERAGE_ADAPTER_OPTIONS, 'averageAdapter');
    const strategy = options.combineStrategy ?? 'linear';
    if (strategy !== 'linear')
      throw new UnsupportedError(`averageAdapter: combineStrategy '${strategy}' is not supported (only 'linear', the weighted average of every parameter)`, 'combineStrategy');
    if (names.length === 0) throw new AdapterError('averageAdapter needs at least one adapter');
    const recs = names.map((n) => this.get(n));
    const strip = (c: AdapterConfig) => JSON.stringify({ ...c, dropout: undefined, init_weights: undefined });
    for (const r of recs) if (strip(r.config) !== strip(recs[0].config)) throw new ConfigError(`averageAdapter: '${r.name}' has a different config from '${recs[0].name}'`);
    let w = weights ?? names.map(() => 1 / names.length);
    if (w.length !== names.length) throw new ConfigError(`averageAdapter: ${w.length} weights for ${names.length} adapters`);
    if (options.normalizeWeights ?? true) {
      const s = w.reduce((a, b) => a + b, 0);
      w = w.map((x) => x / s);
    }
    this.addAdapter(newName, recs[0].config);
    const target = this.adapterVariables(newName);
    const sources = names.map((n) => this.adapterVariables(n));
    for (const [k, v] of target) {
      const averaged = tf.tidy(() => sources.map((s, i) => s.get(k)!.mul(w[i])).reduce((a, b) => a.add(b)));
      v.assign(averaged);
      averaged.dispose(); // the variable keeps its own reference to the data
    }
  }

  /** Runs a method-specific operation (merge, unmerge, eject) on every part of an adapter that has it. */
  callMethod(name: string, op: 'merge' | 'unmerge' | 'eject'): void {
    const rec = this.get(name);
    let done = false;
    for (const p of rec.parts) {
      const rt = this.runtime(p.method);
      const fn = rt[op];
      if (fn) {
        fn.call(rt, name);
        done = true;
      }
    }
    if (!done) throw new UnsupportedError(`${op} is not available for adapter '${name}' (method ${rec.config.method})`, op);
  }

  /** The runtime a method has on this model, if one is attached (by name: inspection and tests). */
  runtimeFor(methodName: string): MethodRuntime | undefined {
    for (const [m, rt] of this.runtimes) if (m === methodName) return rt;
    return undefined;
  }

  /** A method's runtime on this model, attached now if needed, typed by the method's own `attach`. */
  runtimeOf<R extends MethodRuntime>(method: AdapterMethod<R>): R {
    return this.runtime(method) as R;
  }

  // ---------------------------------------------------------------- save / load
  /**
   * Serialises an adapter to its two files (reads tensors asynchronously: works on WebGPU) — what saveAdapter
   * writes, as bytes (browser downloads). `format: 'peft' | 'adapters'` gives those libraries' files for methods that export to them,
   * with `safeSerialization: false` their `torch.save` weights (`adapter_model.bin`, `pytorch_adapter.bin`).
   */
  async serializeAdapterAsync(name: string, options: SaveAdapterOptions = {}): Promise<AdapterFiles> {
    rejectUnknownOptions(options, { format: true, safeSerialization: true } satisfies OptionKeys<SaveAdapterOptions>, 'serializeAdapterAsync');
    if (options.format !== undefined && options.format !== 'adapterkit' && options.format !== 'peft' && options.format !== 'adapters')
      throw new ConfigError(`format must be 'adapterkit', 'peft' or 'adapters', got ${JSON.stringify(options.format)}`, 'format');
    const safe = options.safeSerialization ?? true;
    if (typeof safe !== 'boolean') throw new ConfigError(`safeSerialization must be true or false, got ${JSON.stringify(safe)}`, 'safeSerialization');
    if (options.format === 'peft' || options.format === 'adapters') return this.exportedFiles(name, options.format, safe);
    if (!safe)
      throw new ConfigError(
        "safeSerialization: false (a torch.save .bin file) is only for format 'peft' or 'adapters'; adapterkit's own format is always safetensors",
        'safeSerialization',
      );
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [k, v] of this.adapterVariables(name)) tensors.set(k, { shape: v.shape, data: (await v.data()) as Float32Array });
    return this.adapterFiles(name, tensors);
  }

  /** Synchronous variant for cpu/wasm (WebGPU cannot read tensors synchronously). */
  serializeAdapter(name: string): AdapterFiles {
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [k, v] of this.adapterVariables(name)) tensors.set(k, { shape: v.shape, data: v.dataSync() as Float32Array });
    return this.adapterFiles(name, tensors);
  }

  private adapterFiles(name: string, tensors: Map<string, { shape: number[]; data: Float32Array }>): AdapterFiles {
    const rec = this.get(name);
    const d = this.model.dims;
    const config = {
      format: 'adapterkit',
      format_version: ADAPTER_FORMAT_VERSION,
      name,
      config: rec.config,
      model_type: d.modelType,
      dims: { ...this.shapeDims(), vocab_size: d.vocabSize, feed_forward_proj: d.feedForwardProj },
    };
    return {
      'adapter_config.json': new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`),
      'adapter_model.safetensors': writeSafetensors(tensors, { format: 'adapterkit' }),
    };
  }

  /** The files of an adapter exported by its method to PEFT's or AdapterHub `adapters`' format. */
  private async exportedFiles(name: string, format: 'peft' | 'adapters', safe: boolean): Promise<AdapterFiles> {
    const rec = this.get(name);
    // a union (MAM, UniPELT) has no PEFT form; in `adapters` it is one file with every part's keys
    const parts = format === 'peft' && rec.parts.length > 1 ? [] : rec.parts.map((p) => this.runtime(p.method));
    const exporters = parts.map((rt) => (format === 'peft' ? rt.exportPeft : rt.exportAdapters));
    if (parts.length === 0 || exporters.some((e) => !e))
      throw new UnsupportedError(`adapter '${name}' (${rec.config.method}) cannot be exported to ${JSON.stringify(format)} format`, 'format');
    // exporters read synchronously: download the data first (WebGPU cannot read synchronously otherwise).
    await Promise.all([...this.adapterVariables(name).values()].map((v) => v.data()));
    const exported = parts.map((rt, i) => exporters[i]!.call(rt, name));
    const config = exported.length === 1 ? exported[0].config : { architecture: 'union', configs: exported.map((e) => e.config) };
    const tensors = new Map<string, FileTensor>();
    for (const e of exported)
      for (const [k, t] of e.tensors) {
        if (tensors.has(k)) throw new UnsupportedError(`adapter '${name}': two parts of its union both save '${k}'`, 'format');
        tensors.set(k, t);
      }
    // The file names and torch archive names (the file's stem) PEFT's save_pretrained and `adapters`' save_adapter use.
    const stem = format === 'peft' ? 'adapter_model' : 'pytorch_adapter';
    const [weightsFile, weights] = safe
      ? [format === 'peft' ? 'adapter_model.safetensors' : 'adapter.safetensors', writeSafetensors(tensors, { format: 'pt' })]
      : [`${stem}.bin`, writeTorchCheckpoint(tensors, stem)];
    const encode = (text: string) => new TextEncoder().encode(text);
    if (format === 'peft') return { 'adapter_config.json': encode(`${JSON.stringify(config, null, 2)}\n`), [weightsFile]: weights };
    const d = this.model.dims;
    // `adapters`' build_full_config: model-wide fields around the method's config
    const full = {
      config,
      hidden_size: d.dModel,
      model_class: this.model.adaptersModelClass ?? null,
      model_name: null,
      model_type: d.modelType,
      name,
      version: `adapters.${ADAPTERS_FORMAT_RELEASE}`,
    };
    return { 'adapter_config.json': encode(sortedJson(full)), [weightsFile]: weights };
  }

  /**
   * Saves an adapter: adapterkit's format (default), PEFT's (`adapter_model.safetensors`) or AdapterHub `adapters`'
   * (`adapter.safetensors` with the state-dict keys `adapters` saves), the last two for methods that export them;
   * `safeSerialization: false` writes those two as `torch.save` files (`adapter_model.bin`, `pytorch_adapter.bin`).
   * The directory ends up holding exactly one weights file.
   */
  async saveAdapter(dir: string, name: string, options: SaveAdapterOptions = {}): Promise<void> {
    await writeDirAtomic(dir, await this.serializeAdapterAsync(name, options), ADAPTER_DIR_ENTRIES);
  }

  /**
   * Loads an adapter directory (adapterkit, PEFT or AdapterHub `adapters` format, detected) from a path, a URL or
   * a Hugging Face Hub id (`org/name`, `org/name@revision`; `hub` options: revision, token, offline, cache,
   * progress); returns its name.
   */
  async loadAdapter(dir: string, options: { name?: string; overwrite?: boolean; hub?: HubOptions } = {}): Promise<string> {
    const { hub, ...rest } = options;
    // A save interrupted between its two renames leaves the complete copy beside the directory: read that.
    const local = isHubId(dir) && !(await exists(dir)) ? dir : await resolveAtomicDir(dir);
    const files = await openSource(local, hub);
    if (!(await files.has('adapter_config.json'))) throw new FileError(`${files.label} is not an adapter directory: adapter_config.json is missing`, files.label);
    // .bin files are torch.save archives (PEFT before safetensors; `adapters` by default)
    let weightsFile: string | undefined;
    for (const f of ADAPTER_WEIGHT_FILES) if (!weightsFile && (await files.has(f))) weightsFile = f;
    if (!weightsFile) throw new FileError(`${files.label} is not an adapter directory: none of ${ADAPTER_WEIGHT_FILES.join(', ')} is there`, files.label);
    const bytes: AdapterFiles = {
      'adapter_config.json': await files.read('adapter_config.json'),
      [weightsFile]: await files.read(weightsFile),
      ...(await readAdaptersHeadFiles(files, weightsFile)),
    };
    return this.loadAdapterFiles(bytes, { ...rest, name: rest.name, fallbackName: files.name || 'adapter' });
  }

  /** Loads an adapter from its files' bytes (browser file pickers, tests). */
  loadAdapterFiles(files: AdapterFiles, options: { name?: string; overwrite?: boolean; fallbackName?: string } = {}): string {
    const cfgBytes = files['adapter_config.json'];
    const weightsFile = ADAPTER_WEIGHT_FILES.find((f) => files[f]);
    if (!cfgBytes || !weightsFile) throw new FileError(`an adapter needs adapter_config.json and one of ${ADAPTER_WEIGHT_FILES.join(', ')}`);
    const cfg = parseJson(new TextDecoder().decode(cfgBytes), 'adapter_config.json');
    if (!cfg || typeof cfg !== 'object') throw new FileError('adapter_config.json is not a JSON object', 'adapter_config.json');
    const weightBytes = files[weightsFile];
    const { tensors } = weightsFile.endsWith('.bin') ? readTorchCheckpoint(weightBytes, weightsFile) : readSafetensors(weightBytes, weightsFile);
    const floats = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [k, t] of tensors) {
      // Adapter weights are floats; an integer tensor would be cast silently into different numbers.
      if (!(t.data instanceof Float32Array)) throw new WeightError(`adapter tensor '${k}' has integer dtype ${t.dtype}; adapter weights must be F32, F16 or BF16`, k);
      floats.set(k, { shape: t.shape, data: t.data });
    }

    if (typeof cfg.peft_type === 'string') {
      const method = methodForPeftType(cfg.peft_type);
      if (!method)
        throw new UnsupportedError(
          `PEFT adapter type '${cfg.peft_type}' is not supported (import @adapterkit/lora for LORA/IA3, @adapterkit/prefix for PREFIX_TUNING, @adapterkit/prompt for PROMPT_TUNING)`,
          'peft_type',
        );
      const name = options.name ?? options.fallbackName ?? 'default';
      refuseAdaptersHeadFiles(files, 'PEFT');
      return this.importForeign(name, 'peft', options.overwrite, [{ method, importer: (rt) => rt.importPeft?.(name, cfg, floats) }]);
    }

    // AdapterHub `adapters`: { config: { architecture, … }, name, model_type, hidden_size, version: "adapters.x" }
    if (cfg.format !== 'adapterkit' && cfg.config && typeof cfg.config === 'object' && typeof cfg.name === 'string') {
      const d = this.model.dims;
      if (cfg.model_type && cfg.model_type !== d.modelType) throw new ModelMismatchError(`adapter was made for model type '${cfg.model_type}', this model is '${d.modelType}'`);
      if (typeof cfg.hidden_size === 'number' && cfg.hidden_size !== d.dModel)
        throw new ModelMismatchError(`adapter was made for hidden_size ${cfg.hidden_size}, this model has ${d.dModel}`);
      const name = options.name ?? cfg.name;
      const file = { name: cfg.name, config: cfg.config, version: typeof cfg.version === 'string' ? cfg.version : undefined };
      // a model with heads saves its base model's modules under a prefix (`adapters`' base_model_prefix)
      const prefix = this.model.adaptersBasePrefix;
      const keys = [...floats.keys()];
      if (prefix && keys.length > 0 && keys.every((k) => k.startsWith(prefix))) {
        for (const k of keys) {
          floats.set(k.slice(prefix.length), floats.get(k)!);
          floats.delete(k);
        }
      }
      const head = prepareAdaptersHead(files, this.model);
      try {
        this.importAdaptersFile(name, file, floats, options.overwrite);
      } catch (e) {
        head?.kernel?.dispose();
        throw e;
      }
      if (head) this.heads.set(name, head);
      return name;
    }

    if (cfg.format !== 'adapterkit' || !cfg.config)
      throw new FileError(
        "adapter_config.json is neither an adapterkit adapter (format: 'adapterkit'), a PEFT adapter (peft_type) nor an AdapterHub adapters adapter (config, name)",
        'adapter_config.json',
      );
    this.checkDims(cfg);
    refuseAdaptersHeadFiles(files, 'adapterkit');
    const name = options.name ?? cfg.name ?? options.fallbackName ?? 'adapter';
    if (options.name === undefined && cfg.name !== undefined) checkAdapterName(cfg.name, 'adapter_config.json names the adapter');
    this.prepareName(name, options.overwrite);
    fileParameterCounts.set(
      this.model,
      [...floats.values()].reduce((n, t) => n + t.data.length, 0),
    );
    try {
      this.addAdapter(name, cfg.config as AdapterConfig);
    } finally {
      fileParameterCounts.delete(this.model);
    }
    try {
      const vars = this.adapterVariables(name);
      for (const key of floats.keys()) if (!vars.has(key)) throw new WeightError(`adapter file has unexpected tensor '${key}'`, key);
      for (const [key, v] of vars) {
        const t = floats.get(key);
        if (!t) throw new WeightError(`adapter file lacks tensor '${key}'`, key);
        if (t.shape.join(',') !== v.shape.join(',')) throw new WeightError(`tensor '${key}' has shape [${t.shape}] but the adapter expects [${v.shape}]`, key);
        if (!t.data.every(Number.isFinite)) throw new WeightError(`tensor '${key}' contains NaN or Infinity`, key);
        const value = tf.tensor(t.data, t.shape);
        v.assign(value);
        value.dispose(); // the variable keeps its own reference to the data
      }
    } catch (e) {
      this.deleteAdapter(name);
      throw e;
    }
    return name;
  }

  /**
   * Imports an AdapterHub `adapters` file: one method's adapter, or a union (`architecture: "union"`, e.g.
   * MAM) whose parts each import the keys their method owns. A key no part owns is a WeightError.
   */
  private importAdaptersFile(name: string, file: AdaptersFile, floats: Map<string, FileTensor>, overwrite: boolean | undefined): void {
    const methodOf = (arch: unknown) => {
      const method = methodForAdaptersArchitecture(arch as string | null | undefined);
      if (!method)
        throw new UnsupportedError(
          `AdapterHub adapters architecture '${String(arch ?? 'bottleneck')}' is not supported (import @adapterkit/bottleneck for bottleneck, @adapterkit/lora for lora, @adapterkit/prefix for prefix_tuning, @adapterkit/prompt for prompt_tuning)`,
          'architecture',
        );
      return method;
    };
    if (file.config.architecture !== 'union') {
      this.importForeign(name, 'adapters', overwrite, [{ method: methodOf(file.config.architecture), importer: (rt) => rt.importAdapters?.(name, file, floats) }]);
      return;
    }
    const configs = file.config.configs;
    if (!Array.isArray(configs) || configs.length === 0 || configs.some((c) => !c || typeof c !== 'object' || Array.isArray(c)))
      throw new FileError("adapter_config.json: a union config needs a non-empty 'configs' list of configs", 'configs');
    const parts = (configs as Record<string, unknown>[]).map((config) => ({ config, method: methodOf(config.architecture), tensors: new Map<string, FileTensor>() }));
    for (const [i, p] of parts.entries()) {
      const twice = parts.findIndex((q) => q.method === p.method);
      if (twice !== i)
        throw new UnsupportedError(`the union holds two ${p.method.name} configs (parts ${twice} and ${i}); adapterkit's unions hold one config per method`, 'configs');
      if (!p.method.ownsAdaptersKey) throw new UnsupportedError(`${p.method.name} adapters cannot be part of an AdapterHub adapters union file here`, 'configs');
    }
    for (const [key, t] of floats) {
      const owners = parts.filter((p) => p.method.ownsAdaptersKey!(key, file.name));
      if (owners.length !== 1)
        throw new WeightError(
          owners.length === 0
            ? `adapters file has tensor '${key}', which belongs to no part of the union`
            : `adapters file tensor '${key}' could belong to ${owners.map((p) => p.method.name).join(' or ')}`,
          key,
        );
      owners[0].tensors.set(key, t);
    }
    this.importForeign(
      name,
      'adapters',
      overwrite,
      parts.map((p) => ({ method: p.method, importer: (rt) => rt.importAdapters?.(name, { ...file, config: p.config }, p.tensors) })),
    );
  }

  /**
   * Registers an adapter that methods imported from another library's files: one part, or a union's parts
   * (an importer returning undefined: that method cannot). A part that fails removes the parts before it.
   */
  private importForeign(
    name: string,
    source: 'peft' | 'adapters',
    overwrite: boolean | undefined,
    parts: { method: AdapterMethod; importer: (rt: MethodRuntime) => AdapterConfig | undefined }[],
  ): string {
    this.prepareName(name, overwrite);
    const imported: { method: AdapterMethod; config: AdapterConfig }[] = [];
    try {
      for (const p of parts) {
        const config = p.importer(this.runtime(p.method));
        if (!config) throw new UnsupportedError(`${p.method.name} cannot import ${source === 'peft' ? 'PEFT' : 'AdapterHub adapters'} adapters`, 'format');
        imported.push({ method: p.method, config });
      }
    } catch (e) {
      for (const p of imported) this.runtime(p.method).remove(name);
      throw e;
    }
    const config = imported.length === 1 ? imported[0].config : { method: 'union', configs: imported.map((p) => p.config) };
    this.adapters.set(name, { name, config, parts: imported, source });
    return name;
  }

  private prepareName(name: string, overwrite?: boolean) {
    checkAdapterName(name);
    if (this.adapters.has(name)) {
      if (!overwrite) throw new AdapterError(`an adapter named '${name}' already exists (pass overwrite: true or another name)`, name);
      this.deleteAdapter(name);
    }
  }

  /** The model dimensions an adapter file records (config.json names) and a loaded one must match. */
  private shapeDims(): Record<string, number> {
    const d = this.model.dims;
    return { d_model: d.dModel, d_kv: d.dKv, num_heads: d.numHeads, d_ff: d.dFf, num_layers: d.numEncoderLayers, num_decoder_layers: d.numDecoderLayers };
  }

  private checkDims(cfg: { model_type?: unknown; dims?: Record<string, unknown> }) {
    const d = this.model.dims;
    if (cfg.model_type && cfg.model_type !== d.modelType) throw new ModelMismatchError(`adapter was made for model type '${cfg.model_type}', this model is '${d.modelType}'`);
    for (const [k, v] of Object.entries(this.shapeDims())) {
      if (cfg.dims && cfg.dims[k] !== undefined && cfg.dims[k] !== v) throw new ModelMismatchError(`adapter was made for ${k}=${cfg.dims[k]}, this model has ${k}=${v}`);
    }
  }

  // ---------------------------------------------------------------- forward
  /** A context for one forward call (or one whole generation). */
  createContext(
    options: {
      training?: boolean;
      baseDropout?: boolean;
      seed?: number;
      rowMultiplier?: number;
      composition?: AdapterComposition | null;
      skipLayers?: Iterable<number>;
      recordGates?: boolean;
      /** Input rows of the call (before Parallel/beam replication): BatchSplit sizes must add up to it. */
      batch?: number;
    } = {},
  ): ForwardContext {
    const comp = options.composition !== undefined ? (options.composition === null ? null : this.checkComposition(options.composition)) : this.active;
    if (comp && options.batch !== undefined) checkBatchSizes(comp, options.batch);
    this.heads.projection(comp); // a composition whose LM heads cannot apply is refused before any compute
    return new ForwardContext(comp, {
      training: options.training,
      skipLayers: options.skipLayers ? new Set(options.skipLayers) : this.skipLayers,
      parallelChannels: parallelChannels(comp),
      seed: options.seed,
      rowMultiplier: options.rowMultiplier,
      baseDropout: options.baseDropout,
      recordGates: options.recordGates,
    });
  }

  /** Rows the model must run per input row (Parallel replicates the batch at the input). */
  parallelChannels(): number {
    return parallelChannels(this.active);
  }

  linear(site: LinearSite, x: Tensor, base: (x: Tensor) => Tensor, ctx: ForwardContext): Tensor {
    let fn = base;
    for (const rt of this.runtimes.values()) {
      if (!rt.linear) continue;
      const inner = fn;
      fn = (input) => rt.linear!(site, input, inner, ctx) ?? inner(input);
    }
    return fn(x);
  }

  /** Whether any method acts at this site in this forward (see MethodRuntime.actsAt). */
  actsAt(hook: HookKind, site: AnySite, ctx: ForwardContext): boolean {
    if (!ctx.composition) return false;
    for (const rt of this.runtimes.values()) {
      if (!rt[HOOK_METHOD[hook]]) continue;
      if (rt.actsAt ? rt.actsAt(hook, site, ctx) : true) return true;
    }
    return false;
  }

  /**
   * Every method's terms at a linear group, assembled once per forward (or generation) into the fused
   * kernel's inputs: undefined when no adapter acts there, 'hooks' when some term cannot be declared
   * (the model then runs the linear hook per member). `rows` is the batch the group sees.
   */
  linearInputs(group: LinearGroup, rows: number, ctx: ForwardContext): LinearInputs | 'hooks' | undefined {
    if (!ctx.composition) return undefined;
    const key = `linear-inputs:${group.key}:${rows}`;
    const decided = ctx.memo.get(`${key}:decision`) as 'none' | 'hooks' | 'terms' | undefined;
    if (decided === 'none') return undefined;
    if (decided === 'hooks') return 'hooks';
    if (decided === 'terms') return ctx.memo.get(key) as LinearInputs;
    const perMember: { member: LinearGroup['members'][number]; terms: LinearTerm[] }[] = [];
    let verdict: 'none' | 'hooks' | 'terms' = 'none';
    for (const member of group.members) {
      const terms: LinearTerm[] = [];
      for (const rt of this.runtimes.values()) {
        if (!rt.linear && !rt.linearTerms) continue;
        const t = rt.linearTerms ? rt.linearTerms(member.site, rows, ctx) : rt.actsAt?.('linear', member.site, ctx) === false ? undefined : 'hooks';
        if (t === 'hooks') verdict = 'hooks';
        else if (t) terms.push(...t);
      }
      if (terms.some((t) => t.kind === 'inScale') && group.members.length > 1) verdict = 'hooks'; // one input for all members
      if (terms.length) perMember.push({ member, terms });
    }
    if (verdict !== 'hooks' && perMember.length > 0) verdict = 'terms';
    ctx.memo.set(`${key}:decision`, verdict);
    if (verdict !== 'terms') return verdict === 'hooks' ? 'hooks' : undefined;
    return ctx.remember(key, () => assembleLinearInputs(group, rows, perMember, ctx.sharedMemo));
  }

  /**
   * The sub-layer hook. One method owns a sub-layer's output in a forward: two methods acting at the same
   * sub-layer (each would replace the residual add) is a CompositionError naming both, never a silent pick.
   */
  sublayer(site: SublayerSite, output: Tensor, residual: Tensor, ctx: ForwardContext): Tensor {
    const rts = this.acting('sublayer', site, ctx);
    if (rts.length === 0) return output.add(residual);
    return rts[0][1].sublayer!(site, output, residual, ctx) ?? output.add(residual);
  }

  /** The prefix hook; as for sub-layers, at most one method may put a prefix at an attention. */
  attentionPrefix(site: AttentionSite, hidden: Tensor, ctx: ForwardContext): PrefixKV | undefined {
    const rts = this.acting('attentionPrefix', site, ctx);
    return rts.length === 0 ? undefined : rts[0][1].attentionPrefix!(site, hidden, ctx);
  }

  /**
   * The input-embeddings hook (prompt tuning): a stack's embedded input and mask, possibly lengthened;
   * as for sub-layers, at most one method may change a stack's input.
   */
  inputEmbeddings(stack: StackName, input: InputEmbeddings, ctx: ForwardContext): InputEmbeddings {
    const rts = this.acting('inputEmbeddings', stack, ctx);
    return (rts.length === 0 ? undefined : rts[0][1].inputEmbeddings!(stack, input, ctx)) ?? input;
  }

  /** Runtimes with the hook that act at the site; more than one is refused by name. */
  private acting(hook: keyof typeof OWNS, site: SublayerSite | AttentionSite | StackName, ctx: ForwardContext): [string, MethodRuntime][] {
    const rts = [...this.runtimes].filter(([, rt]) => rt[hook] && (rt.actsAt ? rt.actsAt(hook, site, ctx) : true));
    if (rts.length > 1) {
      const where = typeof site === 'string' ? `the ${site}'s input` : `${hook === 'sublayer' ? 'sub-layer' : 'attention'} ${site.key}`;
      throw new CompositionError(`methods ${rts.map(([m]) => m).join(' and ')} both act at ${where}; only one method may own a ${OWNS[hook]}`, 'Stack');
    }
    return rts;
  }

  embeddings(stack: StackName, embeds: Tensor, ctx: ForwardContext, inverse = false): Tensor {
    let out = embeds;
    for (const rt of this.runtimes.values()) out = rt.embeddings?.(stack, out, ctx, inverse) ?? out;
    return out;
  }

  /** The `adapters` prediction head loaded with an adapter (head_config.json beside it), if any. */
  adapterHead(name: string): AdaptersHeadInfo | undefined {
    this.get(name);
    return this.heads.info(name);
  }

  /**
   * The output projection [d_model, vocab] the model uses in this context instead of its own LM head: the
   * `adapters` LM head of the composition's head adapter, when it has one that differs from the model's.
   */
  outputProjection(ctx: ForwardContext): Tensor | undefined {
    return this.heads.projection(ctx.composition);
  }

  /** True when no adapter can act (lets the model skip hook bookkeeping entirely). */
  get isIdle(): boolean {
    return this.active === null;
  }

  dispose(): void {
    for (const name of [...this.adapters.keys()]) this.deleteAdapter(name);
  }

  // ---------------------------------------------------------------- helpers
  private get(name: string): AdapterRecord {
    const rec = this.adapters.get(name);
    if (!rec) throw new AdapterError(`unknown adapter '${name}' (known: ${[...this.adapters.keys()].join(', ') || 'none'})`, name);
    return rec;
  }

  private runtime(method: AdapterMethod): MethodRuntime {
    let rt = this.runtimes.get(method.name);
    if (!rt) {
      rt = method.attach(this.model);
      this.runtimes.set(method.name, rt);
    }
    return rt;
  }
}

/** Per-row 0/1 column [rows, 1] marking the row ranges, or null when they cover every row. */
function rowMask(ranges: RowRange[], rows: number): Float32Array | null {
  const m = new Float32Array(rows);
  for (const r of ranges) m.fill(1, r.start, r.end);
  return m.every((v) => v === 1) ? null : m;
}

/** Builds the fused kernel's adapter inputs from the members' declared terms (differentiable in the adapters' variables). */
function assembleLinearInputs(
  group: LinearGroup,
  rows: number,
  perMember: { member: LinearGroup['members'][number]; terms: LinearTerm[] }[],
  shared: SharedMemo | undefined,
): Record<string, Tensor> {
  return tf.tidy(() => {
    const out: Record<string, Tensor> = {};
    const total = group.outFeatures;
    // LoRA factors: the down projections side by side, the up projections placed at their members' columns
    const factors: { a: Tensor; b: Tensor; start: number; end: number }[] = [];
    const scaleColumns: (RowRange & { scale: number })[][] = [];
    let outScale: Tensor | null = null;
    let inScale: Tensor | null = null;
    // a vector per row range: 1 + mask·(v − 1), so rows outside the ranges keep 1
    const onRows = (v: Tensor, ranges: RowRange[]) => {
      const m = rowMask(ranges, rows);
      return m ? tf.tensor2d(m, [rows, 1]).mul(v.sub(1)).add(1) : v;
    };
    for (const { member, terms } of perMember) {
      for (const t of terms) {
        if (t.kind === 'lora') {
          const r = t.a.shape[1] as number;
          factors.push({ a: t.a, b: t.b, start: member.start, end: member.end });
          for (let i = 0; i < r; i++) scaleColumns.push(t.rows);
        } else if (t.kind === 'outScale') {
          const vector = t.scale === 1 ? t.vector : t.vector.mul(t.scale);
          const wide =
            member.start === 0 && member.end === total
              ? vector
              : tf.pad(
                  vector,
                  [
                    [0, 0],
                    [member.start, total - member.end],
                  ],
                  1,
                );
          const v = onRows(wide, t.rows);
          outScale = outScale ? outScale.mul(v) : v;
        } else {
          const v = onRows(t.scale === 1 ? t.vector : t.vector.mul(t.scale), t.rows);
          inScale = inScale ? inScale.mul(v) : v;
        }
      }
    }
    if (factors.length) {
      const stack = () => {
        const ups = factors.map((f) =>
          f.start === 0 && f.end === total
            ? f.b
            : tf.pad(f.b, [
                [0, 0],
                [f.start, total - f.end],
              ]),
        );
        return [
          factors.length === 1
            ? factors[0].a
            : tf.concat(
                factors.map((f) => f.a),
                1,
              ),
          ups.length === 1 ? ups[0] : tf.concat(ups, 0),
        ];
      };
      // Shared across contexts when the factors are the adapters' variables: keyed by them (tensor ids) and
      // rebuilt when their data change (assign). The memo owns its tensors: never a variable itself.
      const sharable = shared && factors.every((f) => f.a instanceof tf.Variable && f.b instanceof tf.Variable);
      const [a, b] = sharable
        ? shared.get(
            `lora-stack:${group.key}:${factors.map((f) => `${f.a.id}/${f.b.id}@${f.start}-${f.end}`).join(',')}`,
            factors.flatMap((f) => [f.a.dataId, f.b.dataId]),
            () => stack().map((t) => (t instanceof tf.Variable ? t.clone() : t)),
          )
        : stack();
      out.loraA = a;
      out.loraB = b;
      const R = scaleColumns.length;
      const s = new Float32Array(rows * R);
      scaleColumns.forEach((ranges, j) => {
        for (const r of ranges) for (let i = r.start; i < r.end; i++) s[i * R + j] = r.scale;
      });
      let uniform = true;
      for (let i = 1; i < rows && uniform; i++)
        for (let j = 0; j < R; j++)
          if (s[i * R + j] !== s[j]) {
            uniform = false;
            break;
          }
      out.loraScale = uniform ? tf.tensor2d(s.subarray(0, R), [1, R]) : tf.tensor2d(s, [rows, R]);
    }
    if (outScale) out.outScale = outScale;
    if (inScale) out.inScale = inScale;
    // The context owns (and disposes) what it remembers, but the shared memo's tensors: never hand it an adapter's variable itself.
    for (const [k, t] of Object.entries(out)) if (t instanceof tf.Variable) out[k] = t.clone();
    return out;
  });
}
