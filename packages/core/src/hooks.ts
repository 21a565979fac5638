import type { Tensor, Variable } from '@adapterkit/backend';
import type { AdapterComposition, BlockType, CompositionBlock } from './composition.js';
import type { ForwardContext } from './context.js';

/**
 * Hook points: the places in a model where an adapter method may act (DESIGN.md §2). The model calls the
 * hooks; methods implement them. Site keys use Hugging Face module paths so that PEFT target_modules and
 * checkpoint names map onto them directly.
 */
export type StackName = 'encoder' | 'decoder';
/**
 * What a linear does in its block — the vocabulary methods select linears by, whatever a model names them
 * (q/k/v/o and wi/wi₀/wi₁/wo in one, q_proj…out_proj and fc1/fc2 in another): an attention's query, key, value
 * and output projections; a feed-forward's input projection (`ffn_in`), a gated feed-forward's two input
 * projections (`ffn_gate` goes through the activation, `ffn_up` multiplies it) and its output (`ffn_out`).
 */
export type LinearRole = 'query' | 'key' | 'value' | 'output' | 'ffn_in' | 'ffn_gate' | 'ffn_up' | 'ffn_out';

export interface LayerRef {
  /** Global layer id as in `adapters` for encoder-decoder models: encoder 0..N-1, decoder N..N+M-1 (leave_out, AdapterDrop). */
  layer: number;
  stack: StackName;
  /** Index of the block inside its stack. */
  index: number;
}

/** A linear projection of a self-attention, a cross-attention or a feed-forward. */
export interface LinearSite extends LayerRef {
  block: 'selfattn' | 'crossattn' | 'ffn';
  role: LinearRole;
  inFeatures: number;
  outFeatures: number;
  /** The model's module path (Hugging Face's, so that PEFT target_modules and checkpoint names map onto it). */
  key: string;
}

/**
 * Linears a model computes as one projection — q|k|v of a self-attention, k|v of a cross-attention,
 * the two input projections of a gated feed-forward — each member owning a column range [start, end) of the group's
 * kernel. Adapter terms of every member enter the one fused kernel (see AdapterHost.linearInputs).
 */
export interface LinearGroup {
  key: string;
  inFeatures: number;
  outFeatures: number;
  members: { site: LinearSite; start: number; end: number }[];
}

/** Rows [start, end) of a forward's batch (after Parallel replication and beam expansion). */
export interface RowRange {
  start: number;
  end: number;
}

/**
 * One adapter's effect at one linear, declared rather than computed, so that the model's fused linear
 * kernel applies it (Δ = scale · x·a·b on the rows it covers; IA3 vectors, times their scale, multiply
 * the base projection's output or input on theirs).
 */
export type LinearTerm =
  | { kind: 'lora'; a: Tensor; b: Tensor; rows: (RowRange & { scale: number })[] }
  | { kind: 'outScale' | 'inScale'; vector: Tensor; scale: number; rows: RowRange[] };

/** The kinds of hook a method implements; `MethodRuntime.actsAt` answers per hook and site. */
export type HookKind = 'linear' | 'sublayer' | 'attentionPrefix' | 'embeddings' | 'inputEmbeddings';

/** A site of any hook: the embeddings hooks' site is their stack. */
export type AnySite = LinearSite | SublayerSite | AttentionSite | StackName;

/** The output of a sub-layer, where bottleneck adapters sit: after self-attention, cross-attention, FFN. */
export type SublayerLocation = 'mh' | 'cross' | 'output';
export interface SublayerSite extends LayerRef {
  location: SublayerLocation;
  hiddenSize: number;
  key: string;
  /**
   * Where the sub-layer's norm sits: 'pre' (on the sub-layer's input — `adapters` hands the bottleneck
   * no layer norm) or 'post' (BERT, BART: on output + residual — `ModelAccess.postNorm` applies it).
   */
  norm: 'pre' | 'post';
}

/** An attention's keys/values, where prefix tuning prepends its per-layer prefixes. */
export interface AttentionSite extends LayerRef {
  attention: 'self' | 'cross';
  numHeads: number;
  dKv: number;
  key: string;
}

/** Prefix keys/values for one attention call, in the one layout: [batch, heads, prefix, d_kv]. */
export interface PrefixKV {
  keys: Tensor;
  values: Tensor;
  /** [batch, prefix]: 1 where a prefix position is real, 0 where it pads a shorter prefix (BatchSplit). */
  mask: Tensor;
  /** How a model's position information treats the prefix (default 'zero'); see PrefixPositionRule. */
  positionRule?: PrefixPositionRule;
}

/**
 * How a model's relative position information treats prefix keys. 'zero' (adapterkit's own prefix tuning): prefix
 * columns get no position bias, real↔real positions are unchanged. 'past' (PEFT): the prefix acts as past keys at
 * positions 0..P-1, queries and real keys sit after it (real↔real unchanged). 'shifted' (AdapterHub `adapters`):
 * key column c is at position c — the prefix at 0..P-1, real keys after it — while queries keep their own
 * positions, so every real↔real distance grows by P.
 */
export type PrefixPositionRule = 'zero' | 'past' | 'shifted';

/**
 * A stack's input after the token embedding lookup: embeddings [rows, L, d] and the 0/1 mask of those
 * positions [rows, L]. The input-embeddings hook may return a longer sequence (prompt tuning's virtual
 * tokens) with its mask; the model uses that mask wherever the stack's positions are attended to.
 */
export interface InputEmbeddings {
  embeds: Tensor;
  mask: Tensor;
}

export interface ModelDims {
  modelType: string;
  dModel: number;
  dKv: number;
  numHeads: number;
  dFf: number;
  numEncoderLayers: number;
  numDecoderLayers: number;
  vocabSize: number;
  feedForwardProj: string;
}

/** What a model offers the methods: its dims, its sites, and access to its frozen weights (for merging). */
export interface ModelAccess {
  readonly dims: ModelDims;
  linearSites(): LinearSite[];
  sublayerSites(): SublayerSite[];
  attentionSites(): AttentionSite[];
  /** A copy of a linear's kernel in tfjs layout [in, out]; the caller owns (and disposes) it. */
  readLinearWeight(key: string): Tensor;
  /** Replaces a linear's kernel [in, out] (the model keeps its own copy; the caller still owns `kernel`). */
  writeLinearWeight(key: string, kernel: Tensor): void;
  /** A post-norm sub-layer's own norm (what `adapters` passes to the bottleneck as layer_norm). */
  postNorm?(site: SublayerSite, x: Tensor): Tensor;
  /**
   * PEFT's defaults for this model type when an adapter_config.json has no target_modules (PEFT's
   * TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING): module names per PEFT type, and IA3's feed-forward
   * (input-side) modules.
   */
  readonly peftTargets?: { LORA?: string[]; IA3?: string[]; IA3_FEEDFORWARD?: string[] };
  /** The model class `adapters` records in an adapter_config.json it saves (`model_class`). */
  readonly adaptersModelClass?: string;
  /** The prefix of this model's modules in the state dict of `adapters`' model with heads (its base_model_prefix and a dot). */
  readonly adaptersBasePrefix?: string;
  /**
   * A copy of the output projection (LM head) kernel [d_model, vocab] in tfjs layout, as the model applies it to
   * its (scaled) decoder output; the caller owns it. An AdapterHub `adapters` LM head loaded with an adapter is
   * compared with it, and replaces it while that adapter is the composition's head (AdapterHost.outputProjection).
   */
  readOutputProjection?(): Tensor;
  /** Rows of the input (token) embedding matrix for these ids, [n, d_model]; the caller owns it (prompts initialised from tokens). */
  readInputEmbeddings?(ids: number[]): Tensor;
  /** The model's tokenizer on one text, special tokens included as its tokenizer adds them (prompts initialised from a text). */
  encodeText?(text: string): number[];
}

/** A method's config: plain JSON with a `method` field plus the method's options. */
export interface AdapterConfig {
  method: string;
  [option: string]: unknown;
}

/**
 * A method plugin (bottleneck, lora, prefix…). Registered with core by its package; a model attaches one
 * runtime per method and dispatches its hook calls to it.
 */
export interface AdapterMethod<R extends MethodRuntime = MethodRuntime> {
  readonly name: string;
  /** Config `method` values this method owns, e.g. ['lora', 'ia3']. */
  readonly configMethods: readonly string[];
  /** String ids → configs, e.g. 'seq_bn' → { method: 'bottleneck', … }. */
  readonly presets: Readonly<Record<string, AdapterConfig>>;
  /** Composition blocks its layers implement (as `adapters`' supported_compositions). */
  readonly supportedBlocks: ReadonlySet<BlockType>;
  /** Fills defaults and validates; throws ConfigError naming the option. */
  normalizeConfig(raw: AdapterConfig): AdapterConfig;
  attach(model: ModelAccess): R;
  /** PEFT `peft_type`s this method imports. */
  readonly peftTypes?: readonly string[];
  /** AdapterHub `adapters` config `architecture`s this method imports (a missing architecture is 'bottleneck', as `adapters` reads it). */
  readonly adaptersArchitectures?: readonly string[];
  /**
   * Whether a key of an AdapterHub `adapters` state dict belongs to this method's adapter saved as `name`: a
   * union's file (`architecture: "union"`, e.g. MAM) holds every part's keys in one file.
   */
  ownsAdaptersKey?(key: string, name: string): boolean;
  /**
   * Whether rows of an adapter with this (normalized) config may be regrouped between decode steps
   * (continuous batching): false when it keeps per-sequence decoding state (a decoder prefix, a sequence
   * gate) or changes the encoder's length (a prompt). Missing: true.
   */
  decodesRowwise?(config: AdapterConfig): boolean;
}

/** What an AdapterHub `adapters` adapter_config.json says about its adapter: the name its keys carry, its method config, the release that wrote it. */
export interface AdaptersFile {
  name: string;
  config: Record<string, unknown>;
  /** "adapters.<release>" (absent in files from adapter-transformers). */
  version?: string;
}

/** A tensor as adapter files carry it (row-major float32). */
export interface FileTensor {
  shape: number[];
  data: Float32Array;
}

export interface MethodRuntime {
  /** Creates the adapter's variables at every site it covers. Deterministic given the seed. */
  add(name: string, config: AdapterConfig, seed: number): void;
  remove(name: string): void;
  has(name: string): boolean;
  /** The adapter's variables under stable names (the save format's tensor names). */
  variables(name: string): Map<string, Variable>;
  /**
   * Linear hook: return base(x) transformed, or undefined when no adapter of this method acts here.
   * `base` is the frozen projection (already including any earlier method's change).
   */
  linear?(site: LinearSite, x: Tensor, base: (x: Tensor) => Tensor, ctx: ForwardContext): Tensor | undefined;
  /**
   * The fast path of the linear hook: this method's active adapters at a linear as declared terms for the
   * fused kernel, for a forward of `rows` rows; undefined when none acts here; 'hooks' when one cannot be
   * declared (gating, chained updates, dropout…) — then the model calls `linear` instead.
   */
  linearTerms?(site: LinearSite, rows: number, ctx: ForwardContext): LinearTerm[] | 'hooks' | undefined;
  /**
   * Whether an active adapter of this method acts at this site in this forward (lets the model keep a
   * fused path — a residual inside the projection kernel, no normalised copy of the input — where no
   * method needs the hook). A method with the hook but without `actsAt` is assumed to act.
   */
  actsAt?(hook: HookKind, site: AnySite, ctx: ForwardContext): boolean;
  /** Sub-layer hook: given sub-layer output and its residual input, return the new hidden state (incl. residual), or undefined. */
  sublayer?(site: SublayerSite, output: Tensor, residual: Tensor, ctx: ForwardContext): Tensor | undefined;
  /** Prefix hook: keys/values to prepend at this attention, or undefined. `hidden` is the attention input (for gating). */
  attentionPrefix?(site: AttentionSite, hidden: Tensor, ctx: ForwardContext): PrefixKV | undefined;
  /**
   * Input-embeddings hook (prompt tuning): the stack's embedded input and its mask, possibly lengthened by
   * virtual tokens; undefined when nothing changes. At most one method acts here in a forward.
   */
  inputEmbeddings?(stack: StackName, input: InputEmbeddings, ctx: ForwardContext): InputEmbeddings | undefined;
  /** Embedding hook (invertible adapters): `inverse` on the way back to the LM head. */
  embeddings?(stack: StackName, embeds: Tensor, ctx: ForwardContext, inverse: boolean): Tensor | undefined;
  /** Load tensors saved by `variables` (names as returned there). */
  setWeights?(name: string, tensors: Map<string, Tensor>): void;
  /** Method-specific import of a PEFT adapter directory's contents. */
  importPeft?(name: string, peftConfig: Record<string, unknown>, tensors: Map<string, { shape: number[]; data: Float32Array }>): AdapterConfig;
  /** Folds an adapter into the model's weights (LoRA/IA3) and back. */
  merge?(name: string): void;
  unmerge?(name: string): void;
  /** Replaces a reparameterised adapter by what it produces (prefix tuning's MLP by its prefixes). */
  eject?(name: string): void;
  /** Method-specific export to PEFT (LoRA). */
  exportPeft?(name: string): { config: Record<string, unknown>; tensors: Map<string, { shape: number[]; data: Float32Array }> };
  /**
   * AdapterHub `adapters` format: the adapter's `adapters` config (adapter_config.json's `config`) and its tensors
   * under the state-dict keys `adapters` saves (module paths from the model's sites, the method's own module names).
   */
  exportAdapters?(name: string): { config: Record<string, unknown>; tensors: Map<string, FileTensor> };
  /** Imports what `exportAdapters` describes, as adapter `name` (the file's keys carry `file.name`). */
  importAdapters?(name: string, file: AdaptersFile, tensors: Map<string, FileTensor>): AdapterConfig;
}

export type { AdapterComposition, CompositionBlock };
