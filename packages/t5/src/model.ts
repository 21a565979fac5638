import { tf, tidyResult, type Tensor } from '@adapterkit/backend';
import {
  AdapterHost,
  type ForwardContext,
  InputError,
  WeightError,
  replicateRows,
  type AdapterComposition,
  type AdapterConfig,
  type SaveAdapterOptions,
  type AddAdapterOptions,
  type AverageAdapterOptions,
  type GenerationDefaults,
  type IdsInput,
  type RowPick,
  type RowwiseDecoder,
  type AttentionSite,
  type LinearGroup,
  type LinearSite,
  type ModelAccess,
  type ModelDims,
  type PrefixKV,
  type PrefixPositionRule,
  type SafeTensor,
  type SublayerSite,
  SeededRandom,
} from '@adapterkit/core';
import { cacheWrite, crossEntropy, linear, matMulLast, MASK_VALUE, reference, rmsNorm, type FusedActivation } from '@adapterkit/kernels';
import { regroupDecoderState } from './decode-rows.js';
import { additiveMask, attend, checkPrefix, keyMask, type KeysValues } from './attention.js';
import type { T5Config } from './config.js';
import { groupKernels, t5Layout, type AttentionLayout, type BlockLayout, type FeedForwardLayout, type T5Layout } from './layout.js';
import { PositionBias } from './position-bias.js';

export { MASK_VALUE };

/** Arguments that are attention masks (0/1), wherever ids are read (forward, loss, generate). */
const MASK_ARGUMENTS = new Set(['attentionMask', 'decoderAttentionMask']);
export type { IdsInput };

export interface ForwardInput {
  inputIds: IdsInput;
  attentionMask?: IdsInput;
  decoderInputIds: IdsInput;
  decoderAttentionMask?: IdsInput;
  /** Dropout in the base model and adapters (training). Default false. */
  training?: boolean;
  /** Override the active composition for this call. */
  composition?: AdapterComposition | null;
  seed?: number;
  /** Rows are already replicated for Parallel and expanded by this factor (beams): generation's uncached path. */
  expandedRows?: { rowMultiplier: number };
}

export interface ForwardOutput {
  /** [rows, target, vocab]; rows = batch × Parallel channels. */
  logits: Tensor;
  encoderLastHiddenState: Tensor;
}

/** Per decoder layer state of a cached generation. */
export interface LayerCache {
  /**
   * This layer's self-attention keys|values in packed rows [rows, capacity, 2·heads·d_kv]: slot t holds
   * token t's projections (written in place, constant shape across steps — WebGPU reuses its shaders).
   */
  self: Tensor;
  /** The decoder self-attention prefix (requested once, at step 0) and its length/position rule. */
  prefix?: { keys: Tensor; values: Tensor; length: number; rule: PrefixPositionRule };
  /** Additive key mask [rows, P + capacity] when the layer has a prefix (its padding), else undefined. */
  selfMask?: Tensor;
  /** Cross-attention keys/values (with any cross prefix and the encoder padding mask), computed once. */
  cross: KeysValues;
}

/** Per-sequence decoder state for cached generation. */
export interface DecoderState {
  ctx: ForwardContext;
  layers: LayerCache[];
  /** Token slots in each self cache (doubles when a generation runs past it, up to maxCapacity). */
  capacity: number;
  /** The most slots the cache grows to (generation's maxNewTokens); a step past it still gets one slot. */
  maxCapacity: number;
  /** Tokens decoded so far (the query position of the next step). */
  step: number;
  rows: number;
}

/** Options of one projection (a linear group) in a block. */
interface ProjectOptions {
  /** Name of the RMS norm weight applied to the input first. */
  norm?: string;
  normScale?: number;
  residual?: Tensor;
  activation?: FusedActivation;
  gated?: boolean;
}

/**
 * T5ForConditionalGeneration on TensorFlow.js. Weights are frozen tensors (never variables, never
 * differentiated); adapters attach through `this.adapters` at the sites of layout.ts (DESIGN.md §2).
 * Every block is built from the named ops of @adapterkit/kernels: a projection with its norm, adapter
 * terms and residual is one `linear`, every attention is one `attention`.
 */
export class T5Model implements ModelAccess, RowwiseDecoder<DecoderState> {
  readonly dims: ModelDims;
  readonly adapters: AdapterHost;
  readonly layout: T5Layout;
  /** Embeddings, layer norms, relative-attention tables (HF names). */
  private readonly weights = new Map<string, Tensor>();
  /** Projection kernels by group key, [in, Σ out]. */
  private readonly kernels = new Map<string, Tensor>();
  /**
   * The LM head [d_model, vocab]: lm_head.weight transposed, or (tied) shared.weight transposed — on wasm a
   * matMul with transposeB is ~8× slower than a plain one, and the head is a step's largest matMul.
   */
  private headKernel: Tensor;
  readonly encoderBias: PositionBias;
  readonly decoderBias: PositionBias;
  /** What generate uses when an option is absent (generation_config.json's, when loaded from a directory). */
  generationConfig: GenerationDefaults;
  /** What `adapters` records as the model class when it saves an adapter of this model. */
  readonly adaptersModelClass = 'T5ForConditionalGeneration';
  readonly adaptersBasePrefix = 'transformer.';
  /** PEFT's defaults for T5 (peft/utils/constants.py). */
  readonly peftTargets = { LORA: ['q', 'v'], IA3: ['k', 'v', 'wo'], IA3_FEEDFORWARD: ['wo'] };
  private disposed = false;

  constructor(
    readonly config: T5Config,
    weights: Map<string, SafeTensor>,
  ) {
    const c = config;
    this.dims = {
      modelType: 't5',
      dModel: c.dModel,
      dKv: c.dKv,
      numHeads: c.numHeads,
      dFf: c.dFf,
      numEncoderLayers: c.numLayers,
      numDecoderLayers: c.numDecoderLayers,
      vocabSize: c.vocabSize,
      feedForwardProj: c.feedForwardProj,
    };
    this.layout = t5Layout(c);
    const upload = (name: string) => {
      const t = weights.get(name);
      if (!t) throw new WeightError(`weight '${name}' is missing`, name);
      return tf.tensor(t.data as Float32Array, t.shape, 'float32');
    };
    const linearWeights = new Set(this.layout.linear.map((s) => `${s.key}.weight`));
    for (const [g, k] of groupKernels(this.layout, upload)) this.kernels.set(g, k);
    for (const name of weights.keys()) if (!linearWeights.has(name) && name !== 'lm_head.weight') this.weights.set(name, upload(name));
    const head = upload(c.tieWordEmbeddings ? 'shared.weight' : 'lm_head.weight');
    this.headKernel = tf.tidy(() => head.transpose());
    head.dispose();
    this.encoderBias = new PositionBias(
      this.weights.get('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight')!,
      true,
      c.relativeAttentionNumBuckets,
      c.relativeAttentionMaxDistance,
    );
    this.decoderBias = new PositionBias(
      this.weights.get('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight')!,
      false,
      c.relativeAttentionNumBuckets,
      c.relativeAttentionMaxDistance,
    );
    this.adapters = new AdapterHost(this);
    this.generationConfig = { decoderStartTokenId: c.decoderStartTokenId, eosTokenId: c.eosTokenId, padTokenId: c.padTokenId };
  }

  // ------------------------------------------------------------------ sites and weights
  linearSites(): LinearSite[] {
    return this.layout.linear;
  }
  sublayerSites(): SublayerSite[] {
    return this.layout.sublayer;
  }
  attentionSites(): AttentionSite[] {
    return this.layout.attention;
  }

  private member(key: string) {
    const m = this.layout.memberOf.get(key);
    if (!m) throw new WeightError(`no linear '${key}' in this model`, key);
    return m;
  }

  /** A copy of one linear's kernel [in, out] (its columns of its group); the caller owns it. */
  readLinearWeight(key: string): Tensor {
    const { group, start, end } = this.member(key);
    const k = this.kernels.get(group.key)!;
    return start === 0 && end === group.outFeatures ? k.clone() : tf.tidy(() => k.slice([0, start], [group.inFeatures, end - start]));
  }

  /** Replaces one linear's kernel [in, out] (rebuilds its group's kernel); the caller keeps `kernel`. */
  writeLinearWeight(key: string, kernel: Tensor): void {
    const { group, start, end } = this.member(key);
    if (kernel.shape.join(',') !== [group.inFeatures, end - start].join(','))
      throw new WeightError(`new kernel for '${key}' has shape [${kernel.shape}], expected [${[group.inFeatures, end - start]}]`, key);
    const old = this.kernels.get(group.key)!;
    const next = tf.tidy(() => {
      const parts: Tensor[] = [];
      if (start > 0) parts.push(old.slice([0, 0], [group.inFeatures, start]));
      parts.push(kernel);
      if (end < group.outFeatures) parts.push(old.slice([0, end], [group.inFeatures, group.outFeatures - end]));
      return parts.length === 1 ? kernel.clone() : tf.concat(parts, 1);
    });
    this.kernels.set(group.key, next);
    old.dispose();
  }

  /** Rows of the shared token embedding for these ids, [n, d_model] (a copy the caller owns). */
  readInputEmbeddings(ids: number[]): Tensor {
    for (const id of ids)
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) throw new InputError(`${id} is not a token id in [0, ${this.config.vocabSize})`, 'ids');
    return tf.tidy(() => this.embed(tf.tensor1d(ids, 'int32')));
  }

  /** A copy of the LM head kernel [d_model, vocab] (an `adapters` LM head is compared with it); the caller owns it. */
  readOutputProjection(): Tensor {
    return this.headKernel.clone();
  }

  baseParameterCount(): number {
    let n = 0;
    for (const t of this.weights.values()) n += t.size;
    for (const t of this.kernels.values()) n += t.size;
    if (!this.config.tieWordEmbeddings) n += this.headKernel.size;
    return n;
  }

  /**
   * Every base tensor the model holds, by name (projection groups as `<group>.kernel` in tfjs [in, out]
   * layout) — for tests that check the weights stay frozen.
   */
  baseTensors(): Map<string, Tensor> {
    const out = new Map<string, Tensor>(this.weights);
    for (const [k, v] of this.kernels) out.set(`${k}.kernel`, v);
    out.set('lm_head.kernel', this.headKernel);
    return out;
  }

  /** The weights in Hugging Face's names and layout ([out, in] linears), read asynchronously: a checkpoint. */
  async stateDict(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    const put = async (name: string, t: Tensor) => out.set(name, { shape: t.shape, data: (await t.data()) as Float32Array });
    for (const [name, t] of this.weights) await put(name, t);
    for (const site of this.layout.linear) {
      const w = tf.tidy(() => {
        const k = this.readLinearWeight(site.key);
        return k.transpose();
      });
      await put(`${site.key}.weight`, w);
      w.dispose();
    }
    if (!this.config.tieWordEmbeddings) {
      const w = tf.tidy(() => this.headKernel.transpose());
      await put('lm_head.weight', w);
      w.dispose();
    }
    return out;
  }

  // ------------------------------------------------------------------ adapter API (delegates to the host)
  addAdapter(name: string, config?: string | AdapterConfig, options?: AddAdapterOptions): void {
    this.adapters.addAdapter(name, config, options);
  }
  deleteAdapter(name: string): void {
    this.adapters.deleteAdapter(name);
  }
  setActiveAdapters(composition: AdapterComposition | null, options?: { skipLayers?: Iterable<number> }): void {
    this.adapters.setActiveAdapters(composition, options);
  }
  trainAdapter(names: string | string[]): void {
    this.adapters.trainAdapter(names);
  }
  saveAdapter(dir: string, name: string, options?: SaveAdapterOptions): Promise<void> {
    return this.adapters.saveAdapter(dir, name, options);
  }
  loadAdapter(dir: string, options?: Parameters<AdapterHost['loadAdapter']>[1]): Promise<string> {
    return this.adapters.loadAdapter(dir, options);
  }
  listAdapters() {
    return this.adapters.listAdapters();
  }
  adapterSummary() {
    return this.adapters.adapterSummary();
  }
  averageAdapter(newName: string, names: string[], weights?: number[], options?: AverageAdapterOptions) {
    this.adapters.averageAdapter(newName, names, weights, options);
  }
  /** Folds a LoRA/IA3 adapter into the base weights (fast single-adapter inference). */
  mergeAdapter(name: string): void {
    this.adapters.callMethod(name, 'merge');
  }
  unmergeAdapter(name: string): void {
    this.adapters.callMethod(name, 'unmerge');
  }
  /** Replaces a prefix adapter's MLP reparameterisation by the flat prefixes it produces. */
  ejectPrefix(name: string): void {
    this.adapters.callMethod(name, 'eject');
  }

  // ------------------------------------------------------------------ inputs
  /** Validates ids (rectangular, non-empty, integers in [0, vocab); -100 too with allowNegative, for labels) and returns an int32 tensor. */
  toIds(input: IdsInput, argument: string, options: { allowNegative?: boolean } = {}): Tensor {
    this.checkAlive(); // every entry point (generate included) reads its ids here first
    // An attention mask (generate reads its mask through here too) holds 0 and 1 only: other values would change the output silently.
    if (MASK_ARGUMENTS.has(argument)) return this.toMaskValues(input, argument);
    if (input instanceof tf.Tensor) {
      if (input.rank !== 2) throw new InputError(`${argument} must be 2-D [batch, length], got shape [${input.shape}]`, argument);
      if (input.shape[0] === 0 || input.shape[1] === 0) throw new InputError(`${argument} is empty (shape [${input.shape}])`, argument);
      if (input.dtype !== 'int32') throw new InputError(`${argument} must be an int32 tensor, got ${input.dtype}`, argument);
      // Out-of-range ids make gather read garbage (wasm) or throw deep inside tfjs (cpu): check them here.
      // webgpu cannot read synchronously; there, tensor ids are trusted (number[][] inputs are always checked).
      if (tf.getBackend() !== 'webgpu') {
        const d = input.dataSync();
        for (let i = 0; i < d.length; i++) {
          if ((d[i] < 0 && !(options.allowNegative && d[i] === -100)) || d[i] >= this.config.vocabSize) {
            throw new InputError(`${argument}[${Math.floor(i / input.shape[1]!)}][${i % input.shape[1]!}] = ${d[i]} is not a token id in [0, ${this.config.vocabSize})`, argument);
          }
        }
      }
      return input.clone();
    }
    if (!Array.isArray(input) || input.length === 0) throw new InputError(`${argument} is an empty batch`, argument);
    const len = Array.isArray(input[0]) ? input[0].length : -1;
    if (len <= 0) throw new InputError(`${argument} must be a non-empty number[][]`, argument);
    const flat = new Int32Array(input.length * len);
    input.forEach((row, r) => {
      if (!Array.isArray(row) || row.length !== len)
        throw new InputError(`${argument} row ${r} has length ${Array.isArray(row) ? row.length : 'n/a'}, expected ${len} (pad rows to one length)`, argument);
      row.forEach((id, j) => {
        const ok = Number.isInteger(id) && (id >= 0 || (options.allowNegative === true && id === -100)) && id < this.config.vocabSize;
        if (!ok) throw new InputError(`${argument}[${r}][${j}] = ${id} is not a token id in [0, ${this.config.vocabSize})`, argument);
        flat[r * len + j] = id;
      });
    });
    return tf.tensor2d(flat, [input.length, len], 'int32');
  }

  /** A 0/1 mask as an int32 tensor; any other value (or shape) is an InputError naming the argument and position. */
  private toMaskValues(mask: IdsInput, argument: string): Tensor {
    const isTensor = mask instanceof tf.Tensor;
    if (
      isTensor
        ? mask.rank !== 2 || mask.size === 0
        : !Array.isArray(mask) || mask.length === 0 || !mask.every((r) => Array.isArray(r) && r.length === mask[0].length && r.length > 0)
    )
      throw new InputError(`${argument} must be a non-empty rectangular [batch, length] of 0/1`, argument);
    // webgpu cannot read synchronously; there a tensor mask's values are trusted (number[][] masks are always checked)
    if (!isTensor || tf.getBackend() !== 'webgpu') {
      const values = isTensor ? (mask as Tensor).dataSync() : (mask as number[][]).flat();
      const width = isTensor ? ((mask as Tensor).shape[1] as number) : (mask as number[][])[0].length;
      const bad = values.findIndex((v: number) => v !== 0 && v !== 1);
      if (bad >= 0) throw new InputError(`${argument}[${Math.floor(bad / width)}][${bad % width}] = ${values[bad]}; an attention mask holds 0 and 1 only`, argument);
    }
    return isTensor ? (mask as Tensor).cast('int32') : tf.tensor2d((mask as number[][]).flat(), [(mask as number[][]).length, (mask as number[][])[0].length], 'int32');
  }

  private toMask(mask: IdsInput | undefined, ids: Tensor, argument: string): Tensor {
    if (mask === undefined) return tf.onesLike(ids);
    const m = this.toMaskValues(mask, argument);
    if (m.shape.join(',') !== ids.shape.join(',')) {
      m.dispose();
      throw new InputError(`${argument} has shape [${m.shape}] but the ids have shape [${ids.shape}]`, argument);
    }
    return m;
  }

  // ------------------------------------------------------------------ building blocks
  private get eps(): number {
    return this.config.layerNormEpsilon;
  }

  private weight(name: string): Tensor {
    return this.weights.get(name)!;
  }

  /** Base-model dropout: only in training, and only when asked for (Trainer's baseDropout). */
  private dropsOut(ctx: ForwardContext): boolean {
    return ctx.baseDropout && this.config.dropoutRate > 0;
  }

  private dropout(x: Tensor, ctx: ForwardContext, salt: number): Tensor {
    return this.dropsOut(ctx) ? tf.dropout(x, this.config.dropoutRate, undefined, ctx.dropoutSeed(salt)) : x;
  }

  /**
   * One projection group with its norm, the active adapters' terms, activation and residual — one fused
   * kernel. When a method cannot declare its terms (gating, chained LoRA, dropout in training), the
   * members run through the linear hooks instead, sharing one base projection.
   */
  private project(group: LinearGroup, x: Tensor, ctx: ForwardContext, o: ProjectOptions = {}): Tensor {
    const rows = x.shape[0] as number;
    const inputs = ctx.composition ? this.adapters.linearInputs(group, rows, ctx) : undefined;
    const norm = o.norm ? { weight: this.weight(o.norm), eps: this.eps, scale: o.normScale } : undefined;
    if (inputs !== 'hooks') return linear(x, this.kernels.get(group.key)!, { norm, residual: o.residual, activation: o.activation, gated: o.gated, adapters: inputs });
    return tf.tidy(() => {
      const xn = norm ? reference.normalisedInput(x, { norm }) : x;
      const kernel = this.kernels.get(group.key)!;
      let full: Tensor | undefined;
      const outputs = group.members.map((m) => {
        const cols = (y: Tensor) =>
          m.start === 0 && m.end === group.outFeatures ? y : y.slice([...new Array(y.rank - 1).fill(0), m.start], [...y.shape.slice(0, -1), m.end - m.start]);
        // the unmodified input shares one projection of the whole group; a method that changes the input
        // (IA3 on the input side) gets this member's own columns
        const base = (input: Tensor) => {
          if (input !== xn) return matMulLast(input, cols(kernel));
          full ??= matMulLast(xn, kernel);
          return cols(full);
        };
        return this.adapters.linear(m.site, xn, base, ctx);
      });
      const pre = outputs.length === 1 ? outputs[0] : tf.concat(outputs, -1);
      const y = reference.activate(pre, { activation: o.activation, gated: o.gated });
      return o.residual ? y.add(o.residual) : y;
    });
  }

  /**
   * A sub-layer's output projection and the residual: fused into the projection when no adapter acts at
   * the sub-layer; otherwise the projection alone, then the sub-layer hook (bottleneck adapters).
   */
  private projectOut(group: LinearGroup, site: SublayerSite, x: Tensor, residual: Tensor, ctx: ForwardContext, salt: number): Tensor {
    const hooked = this.adapters.actsAt('sublayer', site, ctx);
    if (!hooked && !this.dropsOut(ctx)) return this.project(group, x, ctx, { residual });
    const out = this.dropout(this.project(group, x, ctx), ctx, salt);
    return hooked ? this.adapters.sublayer(site, out, residual, ctx) : out.add(residual);
  }

  private feedForward(f: FeedForwardLayout, h: Tensor, ctx: ForwardContext): Tensor {
    const inner = this.project(f.wi, h, ctx, { norm: f.norm, activation: this.config.denseActFn, gated: this.config.isGatedAct });
    return this.projectOut(f.wo, f.sublayer, this.dropout(inner, ctx, f.wo.members[0].site.layer * 13 + 1), h, ctx, f.wo.members[0].site.layer * 13 + 2);
  }

  /**
   * THE attention sub-layer: queries over keys/values (with prefix, bias, mask, causality), output
   * projection, residual or sub-layer hook. Encoder, full decoder, cached step and cross-attention all
   * come here; they differ only in where their keys/values come from.
   */
  private attentionBlock(a: AttentionLayout, h: Tensor, q: Tensor, qOffset: number, kv: KeysValues, ctx: ForwardContext): Tensor {
    const layer = a.site.layer;
    const salt = a.site.attention === 'self' ? 3 : 5;
    const drop = this.dropsOut(ctx) ? { rate: this.config.dropoutRate, seed: ctx.dropoutSeed(layer * 13 + salt) } : undefined;
    const heads = attend(q, qOffset, kv, this.config.numHeads, this.config.dKv, drop);
    return this.projectOut(a.o, a.sublayer, heads, h, ctx, layer * 13 + salt + 1);
  }

  /** The prefix a method puts at this attention (undefined when none acts), checked against its rows. */
  private prefixAt(site: AttentionSite, gateInput: () => Tensor, rows: number, ctx: ForwardContext): PrefixKV | undefined {
    if (!this.adapters.actsAt('attentionPrefix', site, ctx)) return undefined;
    const prefix = this.adapters.attentionPrefix(site, gateInput(), ctx);
    if (prefix) checkPrefix(prefix, rows, this.config.numHeads, this.config.dKv);
    return prefix;
  }

  /** Self-attention over a whole sequence (encoder; decoder's full pass): q|k|v from one projection. */
  private selfAttention(a: AttentionLayout, h: Tensor, realMask: Tensor | undefined, ctx: ForwardContext): Tensor {
    const [rows, len] = h.shape as number[];
    const { numHeads: H, dKv: D } = this.config;
    const decoder = a.site.stack === 'decoder';
    const qkv = this.project(a.qkv!, h, ctx, { norm: a.norm });
    // The decoder's self-attention prefix sees only position 0 (the decoder start token): cached generation
    // requests it once, at step 0, so a gate reading the hidden states gives the same value on both paths.
    const gateInput = () => rmsNorm(decoder ? h.slice([0, 0, 0], [rows, 1, h.shape[2] as number]) : h, this.weight(a.norm), this.eps);
    const prefix = this.prefixAt(a.site, gateInput, rows, ctx);
    const p = prefix ? (prefix.keys.shape[2] as number) : 0;
    const bias = decoder ? this.decoderBias : this.encoderBias;
    const kv: KeysValues = {
      packed: { source: qkv, kOffset: H * D, vOffset: 2 * H * D },
      prefix: prefix && { keys: prefix.keys, values: prefix.values },
      mask: keyMask(prefix, realMask, rows, len),
      bias: { table: bias.table, index: bias.index(0, len, len, p, prefix?.positionRule ?? 'zero', ctx) },
      causalOffset: decoder ? 0 : undefined,
    };
    return this.attentionBlock(a, h, qkv, 0, kv, ctx);
  }

  /** Cross-attention keys/values from the encoder states (with any cross prefix), computed once per sequence. */
  private crossKeysValues(a: AttentionLayout, enc: Tensor, encMask: Tensor, ctx: ForwardContext): KeysValues {
    const [rows, len] = enc.shape as number[];
    const kv = this.project(a.kv!, enc, ctx);
    // the cross prefix gate reads the encoder states (the attention's key/value source)
    const prefix = this.prefixAt(a.site, () => enc, rows, ctx);
    return {
      packed: { source: kv, kOffset: 0, vOffset: this.config.numHeads * this.config.dKv },
      prefix: prefix && { keys: prefix.keys, values: prefix.values },
      mask: keyMask(prefix, encMask, rows, len),
    };
  }

  private crossAttention(a: AttentionLayout, h: Tensor, kv: KeysValues, ctx: ForwardContext): Tensor {
    return this.attentionBlock(a, h, this.project(a.q!, h, ctx, { norm: a.norm }), 0, kv, ctx);
  }

  private embed(ids: Tensor): Tensor {
    return tf.gather(this.weight('shared.weight'), ids);
  }

  /** Replicates rows for Parallel (core's replicateRows: branch-major). */
  private replicate(t: Tensor, ctx: ForwardContext): Tensor {
    return replicateRows(t, ctx.parallelChannels);
  }

  // ------------------------------------------------------------------ encoder / decoder
  /**
   * Encoder over already-replicated ids: the final hidden states [rows, L', d] and the 0/1 mask of those
   * positions (cross-attention's key mask). L' = L unless a method puts virtual tokens into the input
   * (prompt tuning, after the invertible adapters as in `adapters`).
   */
  encodeIds(ids: Tensor, mask: Tensor, ctx: ForwardContext): { states: Tensor; mask: Tensor } {
    let h = this.dropout(this.embed(ids), ctx, 101);
    if (this.adapters.actsAt('embeddings', 'encoder', ctx)) h = this.adapters.embeddings('encoder', h, ctx);
    if (this.adapters.actsAt('inputEmbeddings', 'encoder', ctx)) ({ embeds: h, mask } = this.adapters.inputEmbeddings('encoder', { embeds: h, mask }, ctx));
    const padding = additiveMask(mask);
    for (const block of this.layout.encoder) {
      h = this.selfAttention(block.self, h, padding, ctx);
      h = this.feedForward(block.ffn, h, ctx);
    }
    return { states: this.dropout(rmsNorm(h, this.weight('encoder.final_layer_norm.weight'), this.eps), ctx, 102), mask };
  }

  /** Decoder hidden states → logits [rows·T, vocab] (2-D): final norm, output scaling and head in one projection. */
  private lmHead(h: Tensor, ctx: ForwardContext): Tensor {
    const d = this.config.dModel;
    const scale = this.config.scaleDecoderOutputs ? d ** -0.5 : undefined;
    const norm = this.weight('decoder.final_layer_norm.weight');
    // an adapter's own LM head (AdapterHub `adapters` seq2seq_lm head) applies to the same scaled output
    const head = this.adapters.outputProjection(ctx) ?? this.headKernel;
    if (!this.dropsOut(ctx) && !this.adapters.actsAt('embeddings', 'decoder', ctx)) {
      return linear(h.reshape([-1, d]), head, { norm: { weight: norm, eps: this.eps, scale } });
    }
    let x = this.dropout(rmsNorm(h, norm, this.eps), ctx, 103);
    if (scale !== undefined) x = x.mul(scale);
    // invertible adapters run their inverse on [rows, T, d] (their compositions slice rows)
    x = this.adapters.embeddings('decoder', x, ctx, true);
    return linear(x.reshape([-1, d]), head);
  }

  /** Full (uncached) decoder over target ids: logits [rows·T, vocab]. */
  private decodeFull(decIds: Tensor, decMask: Tensor | null, enc: Tensor, encMask: Tensor, ctx: ForwardContext): Tensor {
    let h = this.dropout(this.embed(decIds), ctx, 104);
    if (this.adapters.actsAt('embeddings', 'decoder', ctx)) h = this.adapters.embeddings('decoder', h, ctx);
    const selfMask = decMask ? additiveMask(decMask) : undefined;
    const encPadding = additiveMask(encMask);
    for (const block of this.layout.decoder) {
      h = this.selfAttention(block.self, h, selfMask, ctx);
      h = this.crossAttention(block.cross!, h, this.crossKeysValues(block.cross!, enc, encPadding, ctx), ctx);
      h = this.feedForward(block.ffn, h, ctx);
    }
    return this.lmHead(h, ctx);
  }

  /**
   * Full forward: logits [rows, T, vocab] and the encoder's last hidden state. rows = batch × Parallel
   * channels (adapter-major). Returned tensors belong to the caller.
   */
  forward(input: ForwardInput): ForwardOutput {
    this.checkAlive();
    const ids = this.toIds(input.inputIds, 'inputIds');
    const dec = (() => {
      try {
        return this.toIds(input.decoderInputIds, 'decoderInputIds');
      } catch (e) {
        ids.dispose();
        throw e;
      }
    })();
    if (dec.shape[0] !== ids.shape[0]) {
      ids.dispose();
      dec.dispose();
      throw new InputError(`decoderInputIds has ${dec.shape[0]} rows but inputIds has ${ids.shape[0]}`, 'decoderInputIds');
    }
    let mask: Tensor | undefined;
    let decMask: Tensor | undefined;
    try {
      mask = this.toMask(input.attentionMask, ids, 'attentionMask');
      decMask = input.decoderAttentionMask === undefined ? undefined : this.toMask(input.decoderAttentionMask, dec, 'decoderAttentionMask');
    } catch (e) {
      tf.dispose([ids, dec, mask!]);
      throw e;
    }
    const ctx = (() => {
      try {
        const batch = input.expandedRows ? undefined : (ids.shape[0] as number);
        return this.adapters.createContext({ training: input.training, seed: input.seed, composition: input.composition, rowMultiplier: input.expandedRows?.rowMultiplier, batch });
      } catch (e) {
        tf.dispose([ids, dec, mask!, decMask!]);
        throw e;
      }
    })();
    const rep = (t: Tensor) => (input.expandedRows ? t : this.replicate(t, ctx));
    try {
      return tf.tidy(() => {
        const rIds = rep(ids);
        const rMask = rep(mask!);
        const { states: enc, mask: encMask } = this.encodeIds(rIds, rMask, ctx);
        const logits = this.decodeFull(rep(dec), decMask ? rep(decMask) : null, enc, encMask, ctx).reshape([-1, dec.shape[1] as number, this.config.vocabSize]);
        return { logits, encoderLastHiddenState: enc };
      });
    } finally {
      ctx.dispose();
      tf.dispose([ids, dec, mask!, decMask!].filter(Boolean) as Tensor[]);
    }
  }

  /**
   * Mean token cross-entropy over labels ≠ -100 (decoder inputs = labels shifted right, as transformers).
   * Differentiable w.r.t. adapter variables; use inside tf.variableGrads. Returns a scalar.
   */
  /** `baseDropout` (training): dropout in the base model too; with `ctx`, the context's own options apply. */
  loss(input: {
    inputIds: IdsInput;
    attentionMask?: IdsInput;
    labels: IdsInput;
    decoderInputIds?: IdsInput;
    training?: boolean;
    labelSmoothing?: number;
    seed?: number;
    ctx?: ForwardContext;
    baseDropout?: boolean;
  }): Tensor {
    this.checkAlive();
    const labelsArr = input.labels instanceof tf.Tensor ? (input.labels.arraySync() as number[][]) : input.labels;
    // Validate every input before anything else (a bad one must not leak the tensors made before it).
    const made: Tensor[] = [];
    const keep = (t: Tensor) => {
      made.push(t);
      return t;
    };
    let ctx: ForwardContext;
    let ids: Tensor, labels: Tensor, decIds: Tensor, mask: Tensor;
    try {
      ids = keep(this.toIds(input.inputIds, 'inputIds'));
      labels = keep(this.toIds(labelsArr, 'labels', { allowNegative: true }));
      decIds = keep(input.decoderInputIds !== undefined ? this.toIds(input.decoderInputIds, 'decoderInputIds') : this.toIds(this.shiftRight(labelsArr), 'labels'));
      mask = keep(this.toMask(input.attentionMask, ids, 'attentionMask'));
      if (labels.shape[0] !== ids.shape[0] || decIds.shape[0] !== ids.shape[0])
        throw new InputError(`labels has ${labels.shape[0]} rows but inputIds has ${ids.shape[0]}`, 'labels');
      const ls = input.labelSmoothing ?? 0;
      if (!(ls >= 0 && ls < 1)) throw new InputError(`labelSmoothing must be in [0, 1), got ${input.labelSmoothing}`, 'labelSmoothing');
      if (decIds.shape[1] !== labels.shape[1]) throw new InputError(`decoderInputIds has length ${decIds.shape[1]} but labels has ${labels.shape[1]}`, 'decoderInputIds');
      ctx = input.ctx ?? this.adapters.createContext({ training: input.training, baseDropout: input.baseDropout, seed: input.seed, batch: ids.shape[0] as number });
    } catch (e) {
      tf.dispose(made);
      throw e;
    }
    try {
      return tf.tidy(() => {
        const rIds = this.replicate(ids, ctx);
        const rMask = this.replicate(mask, ctx);
        const enc = this.encodeIds(rIds, rMask, ctx);
        const logits = this.decodeFull(this.replicate(decIds, ctx), null, enc.states, enc.mask, ctx);
        return T5Model.crossEntropy(logits, this.replicate(labels, ctx), input.labelSmoothing ?? 0);
      });
    } finally {
      if (!input.ctx) ctx.dispose();
      tf.dispose([ids, labels, decIds, mask]);
    }
  }

  /** labels → decoder inputs: prepend decoder_start, drop the last, replace -100 by pad. */
  shiftRight(labels: number[][]): number[][] {
    return labels.map((row) => [this.config.decoderStartTokenId, ...row.slice(0, -1)].map((t) => (t === -100 ? this.config.padTokenId : t)));
  }

  /** Mean cross-entropy of logits [B, T, V] (or [B·T, V]) against labels [B, T] (int32, -100 ignored), with optional label smoothing. */
  static crossEntropy(logits: Tensor, labels: Tensor, labelSmoothing = 0): Tensor {
    return tf.tidy(() => {
      const V = logits.shape[logits.rank - 1] as number;
      const flatLabels = labels.reshape([-1]).cast('int32');
      const perToken = crossEntropy(logits.reshape([-1, V]), flatLabels, labelSmoothing);
      const count = flatLabels.notEqual(-100).cast('float32').sum();
      return perToken.sum().div(count.maximum(1));
    });
  }

  // ------------------------------------------------------------------ cached decoding
  /**
   * Encodes the source once and prepares per-layer cross keys/values and empty self caches. `ids`/`mask`
   * are already replicated/expanded to the decoding rows. The state's tensors live until
   * disposeDecoderState().
   */
  startDecoding(ids: Tensor, mask: Tensor, ctx: ForwardContext, capacity = 32, maxCapacity = Number.POSITIVE_INFINITY): DecoderState {
    this.checkAlive();
    const rows = ids.shape[0] as number;
    const cap = Math.max(1, Math.floor(capacity));
    const width = 2 * this.config.numHeads * this.config.dKv;
    const layers = tidyResult(() => {
      const enc = this.encodeIds(ids, mask, ctx);
      const encPadding = additiveMask(enc.mask);
      return this.layout.decoder.map((block): LayerCache => ({ self: tf.zeros([rows, cap, width]), cross: this.crossKeysValues(block.cross!, enc.states, encPadding, ctx) }));
    });
    for (const l of layers) {
      tf.keep(l.self);
      keepKeysValues(l.cross);
    }
    return { ctx, layers, capacity: cap, maxCapacity: Math.max(cap, maxCapacity), step: 0, rows };
  }

  /**
   * Doubles the token slots of every self cache when a generation runs past them (at most up to the
   * state's maxCapacity): the cache grows with the output, so a short answer never pays for maxNewTokens.
   */
  private growDecoderState(state: DecoderState): void {
    const extra = Math.max(1, Math.min(state.capacity, state.maxCapacity - state.capacity));
    const grow = (t: Tensor, axis: number) => {
      const shape = [...t.shape];
      shape[axis] = extra;
      const out = tf.tidy(() => tf.concat([t, tf.zeros(shape)], axis));
      t.dispose();
      return out;
    };
    for (const l of state.layers) {
      l.self = grow(l.self, 1);
      if (l.selfMask) l.selfMask = grow(l.selfMask, 1);
    }
    state.capacity += extra;
  }

  /**
   * Bytes a generation holds at its longest: self KV caches at `targetLength` slots (twice: the copy made
   * while the cache doubles or beams reorder it), cross keys/values, the encoder's largest activations
   * (its feed-forward and, unfused, its attention scores) and a step's logits (device, log-softmax, host).
   */
  estimateGenerationBytes({ rows, sourceLength, targetLength }: { rows: number; sourceLength: number; targetLength: number }): number {
    const c = this.config;
    const width = 2 * c.numHeads * c.dKv;
    const selfKv = 2 * rows * targetLength * c.numDecoderLayers * width;
    const crossKv = rows * sourceLength * c.numDecoderLayers * width;
    const encoder = 2 * rows * sourceLength * Math.max(c.dModel, c.dFf * (c.isGatedAct ? 2 : 1), c.numHeads * sourceLength);
    const logits = 3 * rows * c.vocabSize;
    return 4 * (selfKv + crossKv + encoder + logits);
  }

  /** The decoder self-attention prefix of a layer enters the state once, at step 0 (gate input: position 0). */
  private enterPrefix(state: DecoderState, l: LayerCache, a: AttentionLayout, h: Tensor): void {
    const prefix = this.prefixAt(a.site, () => rmsNorm(h, this.weight(a.norm), this.eps), state.rows, state.ctx);
    if (!prefix) return;
    const p = prefix.keys.shape[2] as number;
    l.prefix = { keys: tf.keep(prefix.keys.clone()), values: tf.keep(prefix.values.clone()), length: p, rule: prefix.positionRule ?? 'zero' };
    l.selfMask = tf.keep(keyMask(prefix, undefined, state.rows, state.capacity)!.clone());
  }

  /**
   * One decoder step for every row: writes this step's keys/values into each layer's cache and returns
   * logits [rows, vocab]. The caller owns the logits; the state is updated in place.
   */
  decodeStep(state: DecoderState, tokens: Tensor): Tensor {
    this.checkAlive();
    const ctx = state.ctx;
    const t = state.step;
    if (t >= state.capacity) this.growDecoderState(state);
    const { numHeads: H, dKv: D } = this.config;
    const { logits, caches } = ctx.atDecodingPosition(t, () =>
      tidyResult(() => {
        let h = this.embed(tokens.reshape([state.rows, 1]));
        if (this.adapters.actsAt('embeddings', 'decoder', ctx)) h = this.adapters.embeddings('decoder', h, ctx);
        const caches: Tensor[] = [];
        this.layout.decoder.forEach((block: BlockLayout, i) => {
          const a = block.self;
          const l = state.layers[i];
          if (t === 0) tf.tidy(() => this.enterPrefix(state, l, a, h));
          const qkv = this.project(a.qkv!, h, ctx, { norm: a.norm });
          const cache = cacheWrite(l.self, qkv, H * D, t);
          caches.push(cache);
          const p = l.prefix?.length ?? 0;
          const kv: KeysValues = {
            packed: { source: cache, kOffset: 0, vOffset: H * D },
            prefix: l.prefix,
            mask: l.selfMask,
            bias: { table: this.decoderBias.table, index: this.decoderBias.indexTensor(t, 1, state.capacity, p, l.prefix?.rule ?? 'zero') },
            causalOffset: t,
          };
          h = this.attentionBlock(a, h, qkv, 0, kv, ctx);
          h = this.crossAttention(block.cross!, h, l.cross, ctx);
          h = this.feedForward(block.ffn, h, ctx);
        });
        return { logits: this.lmHead(h, ctx), caches };
      }),
    );
    state.layers.forEach((l, i) => {
      l.self.dispose();
      l.self = caches[i];
    });
    state.step += 1;
    return logits;
  }

  /** Reorders every row of the state (beam search): row r takes row index[r]. */
  reorderDecoderState(state: DecoderState, index: number[]): void {
    const idx = tf.tensor1d(index, 'int32');
    const pick = (t: Tensor) => {
      const out = tf.gather(t, idx);
      t.dispose();
      return out;
    };
    for (const l of state.layers) {
      l.self = pick(l.self);
      if (l.selfMask) l.selfMask = pick(l.selfMask);
      if (l.prefix) l.prefix = { ...l.prefix, keys: pick(l.prefix.keys), values: pick(l.prefix.values) };
    }
    idx.dispose();
    state.ctx.reorderRows(index);
  }

  /** Rows of several states, each on its own timeline, as one state (continuous batching; decode-rows.ts). */
  regroupDecoderRows(states: DecoderState[], picks: RowPick[], capacity: number, ctx: ForwardContext): DecoderState {
    try {
      return regroupDecoderState(states, picks, capacity, ctx);
    } finally {
      for (const s of states) this.disposeDecoderState(s);
    }
  }

  disposeDecoderState(state: DecoderState): void {
    for (const l of state.layers) {
      tf.dispose([l.self, l.cross.packed.source]);
      if (l.cross.prefix) tf.dispose([l.cross.prefix.keys, l.cross.prefix.values]);
      if (l.cross.mask) l.cross.mask.dispose();
      if (l.selfMask) l.selfMask.dispose();
      if (l.prefix) tf.dispose([l.prefix.keys, l.prefix.values]);
    }
    state.ctx.dispose();
  }

  /** Replicates ids for the active composition's Parallel channels (public for generation). */
  replicateForParallel(t: Tensor, ctx: ForwardContext): Tensor {
    return this.replicate(t, ctx);
  }

  private checkAlive() {
    if (this.disposed) throw new InputError('this model has been disposed', 'model');
  }

  /** True once dispose() ran (generate and forward refuse with an InputError). */
  get isDisposed(): boolean {
    return this.disposed;
  }

  dispose(): void {
    if (this.disposed) return;
    this.adapters.dispose();
    tf.dispose([...this.weights.values(), ...this.kernels.values(), this.headKernel]);
    this.disposed = true;
  }

  /** A model with random weights of a given config (benchmarks, tests). Deterministic per seed. */
  static randomWeights(_config: T5Config, expected: Map<string, number[]>, seed = 0): Map<string, SafeTensor> {
    const rng = new SeededRandom(seed);
    const out = new Map<string, SafeTensor>();
    for (const [name, shape] of expected) {
      const size = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(size);
      if (name.endsWith('layer_norm.weight')) data.fill(1);
      else {
        const std = name.includes('shared') || name.includes('lm_head') ? 1 : name.includes('relative_attention_bias') ? 0.1 : 1 / Math.sqrt(shape[1] ?? shape[0]);
        for (let i = 0; i < size; i++) data[i] = rng.normal(0, std);
      }
      out.set(name, { dtype: 'F32', shape, data });
    }
    return out;
  }
}

/** Keeps the tensors of cross keys/values (they outlive the tidy that made them). */
function keepKeysValues(kv: KeysValues): void {
  tf.keep(kv.packed.source);
  if (kv.prefix) {
    tf.keep(kv.prefix.keys);
    tf.keep(kv.prefix.values);
  }
  if (kv.mask) tf.keep(kv.mask);
}
