import { tf, type Tensor } from '@adapterkit/backend';
import {
  AdapterHost,
  ForwardContext,
  InputError,
  LayoutError,
  WeightError,
  type AdapterComposition,
  type AdapterConfig,
  type AttentionSite,
  type LinearSite,
  type ModelAccess,
  type ModelDims,
  type PrefixKV,
  type SafeTensor,
  type StackName,
  type SublayerSite,
  SeededRandom,
} from '@adapterkit/core';
import type { T5Config } from './config.js';
import { PositionBias } from './position-bias.js';

/** Large finite negative for masked attention scores (WGSL may assume no infinities). */
export const MASK_VALUE = -1e9;

export type IdsInput = number[][] | Tensor;

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

interface AttnWeights {
  q: LinearSite;
  k: LinearSite;
  v: LinearSite;
  o: LinearSite;
  site: AttentionSite;
  norm: string;
  sublayer: SublayerSite;
}

interface FfnWeights {
  wi?: LinearSite;
  wi0?: LinearSite;
  wi1?: LinearSite;
  wo: LinearSite;
  norm: string;
  sublayer: SublayerSite;
}

interface BlockWeights {
  self: AttnWeights;
  cross?: AttnWeights;
  ffn: FfnWeights;
}

/** Keys/values of one attention, in the one cache layout [batch, heads, time, d_kv]. */
export interface KV {
  k: Tensor;
  v: Tensor;
}

/** Per-sequence decoder state for cached generation. */
export interface DecoderState {
  ctx: ForwardContext;
  /** Cross-attention keys/values per decoder layer (prefix included), computed once. */
  cross: KV[];
  /** Additive cross-attention mask per layer [rows, 1, 1, Lsrc (+ prefix)]. */
  crossMask: Tensor[];
  /**
   * Self-attention cache per layer, [rows, heads, P + capacity, d_kv]: a prefix (P slots, entered once at
   * step 0) then `capacity` token slots written in place. Fixed shapes across steps let WebGPU reuse its
   * compiled shaders (a cache grown by concatenation changes shape every step).
   */
  self: KV[];
  /** Additive mask per layer [rows, 1, 1, P + capacity]: MASK_VALUE on padded prefix positions, else 0. */
  selfMask: Tensor[];
  /** Prefix length and bias rule in each layer's self cache. */
  selfPrefix: { length: number; rule: 'zero' | 'past' }[];
  /** Token slots in the self cache (doubles when a generation runs past it). */
  capacity: number;
  /** Tokens decoded so far (the query position of the next step). */
  step: number;
  rows: number;
}

function assertRank(t: Tensor, rank: number, what: string) {
  if (t.rank !== rank) throw new LayoutError(`${what} must have rank ${rank} ([batch, heads, time, d_kv]), got shape [${t.shape}]`);
}

/**
 * T5ForConditionalGeneration on TensorFlow.js. Weights are frozen tensors (never variables, never
 * differentiated); adapters attach through `this.adapters` at the hook points of DESIGN.md §2.
 */
export class T5Model implements ModelAccess {
  readonly dims: ModelDims;
  readonly adapters: AdapterHost;
  private readonly weights = new Map<string, Tensor>();
  private readonly kernels = new Map<string, Tensor>();
  private readonly encoderBlocks: BlockWeights[] = [];
  private readonly decoderBlocks: BlockWeights[] = [];
  private readonly sites: { linear: LinearSite[]; sublayer: SublayerSite[]; attention: AttentionSite[] } = { linear: [], sublayer: [], attention: [] };
  readonly encoderBias: PositionBias;
  readonly decoderBias: PositionBias;
  private disposed = false;
  /**
   * Tied models: shared.weight transposed to [d_model, vocab] for the LM head. On wasm a matMul with
   * transposeB is ~8× slower than a plain one (and the head is the largest matMul of a step), so the
   * head keeps its own [in, out] copy; untied heads are stored transposed as kernel 'lm_head' instead.
   */
  private tiedHeadKernel: Tensor | null = null;

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
    for (const [name, t] of weights) {
      const tensor = tf.tensor(t.data as Float32Array, t.shape, 'float32');
      if (name === 'lm_head.weight' || (name.endsWith('.weight') && t.shape.length === 2 && /\.(q|k|v|o|wi|wi_0|wi_1|wo)\.weight$/.test(name))) {
        // HF Linear weights are [out, in]; tfjs matMul wants [in, out]. Transposed once, at load.
        this.kernels.set(name.slice(0, -'.weight'.length), tf.tidy(() => tensor.transpose()));
        tensor.dispose();
      } else this.weights.set(name, tensor);
    }
    if (c.tieWordEmbeddings) this.tiedHeadKernel = tf.tidy(() => this.weights.get('shared.weight')!.transpose());
    this.buildSites();
    this.encoderBias = new PositionBias(this.weights.get('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight')!, true, c.relativeAttentionNumBuckets, c.relativeAttentionMaxDistance);
    this.decoderBias = new PositionBias(this.weights.get('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight')!, false, c.relativeAttentionNumBuckets, c.relativeAttentionMaxDistance);
    this.adapters = new AdapterHost(this);
  }

  // ------------------------------------------------------------------ sites
  private buildSites() {
    const c = this.config;
    const inner = c.numHeads * c.dKv;
    const lin = (key: string, ref: { layer: number; stack: StackName; index: number }, block: LinearSite['block'], linear: LinearSite['linear'], inF: number, outF: number): LinearSite => {
      const s: LinearSite = { ...ref, block, linear, inFeatures: inF, outFeatures: outF, key };
      this.sites.linear.push(s);
      return s;
    };
    const attn = (prefix: string, module: string, ref: { layer: number; stack: StackName; index: number }, kind: 'self' | 'cross', location: 'mh' | 'cross'): AttnWeights => {
      const block = kind === 'self' ? 'selfattn' : 'crossattn';
      const site: AttentionSite = { ...ref, attention: kind, numHeads: c.numHeads, dKv: c.dKv, key: `${prefix}.${module}` };
      const sublayer: SublayerSite = { ...ref, location, hiddenSize: c.dModel, key: prefix };
      this.sites.attention.push(site);
      this.sites.sublayer.push(sublayer);
      return {
        q: lin(`${prefix}.${module}.q`, ref, block, 'q', c.dModel, inner),
        k: lin(`${prefix}.${module}.k`, ref, block, 'k', c.dModel, inner),
        v: lin(`${prefix}.${module}.v`, ref, block, 'v', c.dModel, inner),
        o: lin(`${prefix}.${module}.o`, ref, block, 'o', inner, c.dModel),
        site,
        norm: `${prefix}.layer_norm.weight`,
        sublayer,
      };
    };
    const ffn = (prefix: string, ref: { layer: number; stack: StackName; index: number }): FfnWeights => {
      const sublayer: SublayerSite = { ...ref, location: 'output', hiddenSize: c.dModel, key: prefix };
      this.sites.sublayer.push(sublayer);
      const p = `${prefix}.DenseReluDense`;
      return c.isGatedAct
        ? { wi0: lin(`${p}.wi_0`, ref, 'ffn', 'wi_0', c.dModel, c.dFf), wi1: lin(`${p}.wi_1`, ref, 'ffn', 'wi_1', c.dModel, c.dFf), wo: lin(`${p}.wo`, ref, 'ffn', 'wo', c.dFf, c.dModel), norm: `${prefix}.layer_norm.weight`, sublayer }
        : { wi: lin(`${p}.wi`, ref, 'ffn', 'wi', c.dModel, c.dFf), wo: lin(`${p}.wo`, ref, 'ffn', 'wo', c.dFf, c.dModel), norm: `${prefix}.layer_norm.weight`, sublayer };
    };
    for (let i = 0; i < c.numLayers; i++) {
      const ref = { layer: i, stack: 'encoder' as const, index: i };
      this.encoderBlocks.push({ self: attn(`encoder.block.${i}.layer.0`, 'SelfAttention', ref, 'self', 'mh'), ffn: ffn(`encoder.block.${i}.layer.1`, ref) });
    }
    for (let i = 0; i < c.numDecoderLayers; i++) {
      const ref = { layer: c.numLayers + i, stack: 'decoder' as const, index: i };
      this.decoderBlocks.push({
        self: attn(`decoder.block.${i}.layer.0`, 'SelfAttention', ref, 'self', 'mh'),
        cross: attn(`decoder.block.${i}.layer.1`, 'EncDecAttention', ref, 'cross', 'cross'),
        ffn: ffn(`decoder.block.${i}.layer.2`, ref),
      });
    }
  }

  linearSites(): LinearSite[] {
    return this.sites.linear;
  }
  sublayerSites(): SublayerSite[] {
    return this.sites.sublayer;
  }
  attentionSites(): AttentionSite[] {
    return this.sites.attention;
  }
  getLinearWeight(key: string): Tensor {
    const k = this.kernels.get(key);
    if (!k) throw new WeightError(`no linear '${key}' in this model`, key);
    return k;
  }
  setLinearWeight(key: string, kernel: Tensor): void {
    const old = this.getLinearWeight(key);
    if (old.shape.join(',') !== kernel.shape.join(',')) throw new WeightError(`new kernel for '${key}' has shape [${kernel.shape}], expected [${old.shape}]`, key);
    this.kernels.set(key, tf.keep(kernel));
    old.dispose();
  }
  baseParameterCount(): number {
    let n = 0;
    for (const t of this.weights.values()) n += t.size;
    for (const t of this.kernels.values()) n += t.size;
    return n;
  }
  /** Every base tensor by HF name (kernels in tfjs [in, out] layout) — for tests that check weights stay frozen. */
  baseTensors(): Map<string, Tensor> {
    const out = new Map<string, Tensor>(this.weights);
    for (const [k, v] of this.kernels) out.set(`${k}.kernel`, v);
    return out;
  }

  // ------------------------------------------------------------------ adapter API (delegates to the host)
  addAdapter(name: string, config?: string | AdapterConfig, options?: { seed?: number; overwrite?: boolean }): void {
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
  saveAdapter(dir: string, name: string, options?: { format?: 'adapterkit' | 'peft' }): Promise<void> {
    return this.adapters.saveAdapter(dir, name, options);
  }
  loadAdapter(dir: string, options?: { name?: string; overwrite?: boolean }): Promise<string> {
    return this.adapters.loadAdapter(dir, options);
  }
  listAdapters() {
    return this.adapters.listAdapters();
  }
  adapterSummary() {
    return this.adapters.adapterSummary();
  }
  averageAdapter(newName: string, names: string[], weights?: number[]) {
    this.adapters.averageAdapter(newName, names, weights);
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
      if (!Array.isArray(row) || row.length !== len) throw new InputError(`${argument} row ${r} has length ${Array.isArray(row) ? row.length : 'n/a'}, expected ${len} (pad rows to one length)`, argument);
      row.forEach((id, j) => {
        const ok = Number.isInteger(id) && (id >= 0 || (options.allowNegative === true && id === -100)) && id < this.config.vocabSize;
        if (!ok) throw new InputError(`${argument}[${r}][${j}] = ${id} is not a token id in [0, ${this.config.vocabSize})`, argument);
        flat[r * len + j] = id;
      });
    });
    return tf.tensor2d(flat, [input.length, len], 'int32');
  }

  private toMask(mask: IdsInput | undefined, ids: Tensor, argument: string): Tensor {
    if (mask === undefined) return tf.onesLike(ids);
    const m = mask instanceof tf.Tensor ? mask.cast('int32') : this.toIds(mask, argument);
    if (m.shape.join(',') !== ids.shape.join(',')) {
      m.dispose();
      throw new InputError(`${argument} has shape [${m.shape}] but the ids have shape [${ids.shape}]`, argument);
    }
    return m;
  }

  // ------------------------------------------------------------------ building blocks
  private rmsNorm(x: Tensor, weightName: string): Tensor {
    const w = this.weights.get(weightName)!;
    const variance = x.square().mean(-1, true);
    return x.mul(variance.add(this.config.layerNormEpsilon).rsqrt()).mul(w);
  }

  private linear(site: LinearSite, x: Tensor, ctx: ForwardContext): Tensor {
    const kernel = this.kernels.get(site.key)!;
    const base = (input: Tensor) => {
      const shape = input.shape;
      const y = tf.matMul(input.reshape([-1, shape[shape.length - 1]]), kernel);
      return y.reshape([...shape.slice(0, -1), kernel.shape[1] as number]);
    };
    return ctx.composition ? this.adapters.linear(site, x, base, ctx) : base(x);
  }

  private dropout(x: Tensor, ctx: ForwardContext, salt: number): Tensor {
    return ctx.training && this.config.dropoutRate > 0 && (ctx.memo.get('baseDropout') ?? false) ? tf.dropout(x, this.config.dropoutRate, undefined, ctx.dropoutSeed(salt)) : x;
  }

  private act(x: Tensor): Tensor {
    switch (this.config.denseActFn) {
      case 'relu':
        return tf.relu(x);
      case 'silu':
        return x.mul(tf.sigmoid(x));
      case 'gelu':
        return x.mul(0.5).mul(tf.erf(x.mul(Math.SQRT1_2)).add(1));
      case 'gelu_new': {
        // x·x·x rather than pow(x, 3): tfjs-wasm's Pow is a slow generic kernel (~20× a Mul here).
        const inner = x.add(x.square().mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
        return x.mul(0.5).mul(tf.tanh(inner).add(1));
      }
    }
  }

  private feedForward(f: FfnWeights, h: Tensor, ctx: ForwardContext): Tensor {
    const x = this.rmsNorm(h, f.norm);
    let inner: Tensor;
    if (f.wi0) inner = this.act(this.linear(f.wi0, x, ctx)).mul(this.linear(f.wi1!, x, ctx));
    else inner = this.act(this.linear(f.wi!, x, ctx));
    const out = this.dropout(this.linear(f.wo, this.dropout(inner, ctx, f.wo.layer * 13 + 1), ctx), ctx, f.wo.layer * 13 + 2);
    return ctx.composition ? this.adapters.sublayer(f.sublayer, out, h, ctx) : out.add(h);
  }

  /** [B, L, H*d] → [B, H, L, d], using the tensor's own batch (never a cached batch size). */
  private splitHeads(x: Tensor): Tensor {
    const [b, l] = x.shape;
    return x.reshape([b, l, this.config.numHeads, this.config.dKv]).transpose([0, 2, 1, 3]);
  }

  private mergeHeads(x: Tensor): Tensor {
    const [b, , l] = x.shape;
    return x.transpose([0, 2, 1, 3]).reshape([b, l, this.config.numHeads * this.config.dKv]);
  }

  /** softmax(q·kᵀ + bias + mask)·v; q [B,H,Lq,d], k/v [B,H,Lk,d], bias [1|B,H,Lq,Lk] or null, mask [B|1,1,1|Lq,Lk]. */
  private attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | null, mask: Tensor | null, ctx: ForwardContext, salt: number): Tensor {
    assertRank(q, 4, 'attention queries');
    assertRank(k, 4, 'attention keys');
    assertRank(v, 4, 'attention values');
    if (k.shape[0] !== q.shape[0] || k.shape[2] !== v.shape[2]) {
      throw new LayoutError(`attention batch/time mismatch: queries [${q.shape}], keys [${k.shape}], values [${v.shape}]`);
    }
    let scores = tf.matMul(q, k, false, true); // T5 does not scale by 1/sqrt(d)
    if (bias) scores = scores.add(bias);
    if (mask) scores = scores.add(mask);
    const weights = this.dropout(tf.softmax(scores), ctx, salt);
    return tf.matMul(weights, v);
  }

  /** Prepends a prefix to keys/values and extends mask and bias for it (per layer, from the unpadded bias). */
  private withPrefix(
    prefix: PrefixKV | undefined,
    k: Tensor,
    v: Tensor,
    mask: Tensor | null,
    bias: { get(qStart: number, qLen: number, kLen: number, prefixLen: number, rule: 'zero' | 'past'): Tensor } | null,
    qStart: number,
    qLen: number,
  ): { k: Tensor; v: Tensor; mask: Tensor | null; bias: Tensor | null } {
    const kLen = k.shape[2] as number;
    if (!prefix) return { k, v, mask, bias: bias ? bias.get(qStart, qLen, kLen, 0, 'zero') : null };
    assertRank(prefix.keys, 4, 'prefix keys');
    assertRank(prefix.values, 4, 'prefix values');
    const rows = k.shape[0] as number;
    if (prefix.keys.shape[0] !== rows || prefix.keys.shape[1] !== this.config.numHeads || prefix.keys.shape[3] !== this.config.dKv) {
      throw new LayoutError(`prefix keys [${prefix.keys.shape}] do not fit keys [${k.shape}] ([batch, heads, time, d_kv])`);
    }
    const p = prefix.keys.shape[2] as number;
    const pm = tf.sub(1, prefix.mask.cast('float32')).mul(MASK_VALUE).reshape([rows, 1, 1, p]);
    const base = mask ?? tf.zeros([rows, 1, 1, kLen]);
    const qDim = base.shape[2] as number;
    const fullMask = tf.concat([qDim === 1 ? pm : tf.tile(pm, [1, 1, qDim, 1]), base.shape[0] === rows ? base : tf.tile(base, [rows, 1, 1, 1])], 3);
    const rule = prefix.positionRule ?? 'zero';
    return {
      k: tf.concat([prefix.keys, k], 2),
      v: tf.concat([prefix.values, v], 2),
      mask: fullMask,
      bias: bias ? bias.get(qStart, qLen, kLen, p, rule) : null,
    };
  }

  private selfAttentionFull(a: AttnWeights, h: Tensor, mask: Tensor | null, biasTable: PositionBias, ctx: ForwardContext): Tensor {
    const x = this.rmsNorm(h, a.norm);
    const q = this.splitHeads(this.linear(a.q, x, ctx));
    const k0 = this.splitHeads(this.linear(a.k, x, ctx));
    const v0 = this.splitHeads(this.linear(a.v, x, ctx));
    // The decoder's self-attention prefix sees only position 0 (the decoder start token): cached generation
    // requests it once, at step 0, so a gate reading the hidden states gives the same value on both paths.
    const gateInput = a.site.stack === 'decoder' ? x.slice([0, 0, 0], [x.shape[0] as number, 1, x.shape[2] as number]) : x;
    const prefix = ctx.composition ? this.adapters.attentionPrefix(a.site, gateInput, ctx) : undefined;
    const L = x.shape[1] as number;
    const { k, v, mask: m, bias } = this.withPrefix(prefix, k0, v0, mask, biasTable.forward(ctx), 0, L);
    const out = this.linear(a.o, this.mergeHeads(this.attend(q, k, v, bias, m, ctx, a.o.layer * 13 + 3)), ctx);
    const dropped = this.dropout(out, ctx, a.o.layer * 13 + 4);
    return ctx.composition ? this.adapters.sublayer(a.sublayer, dropped, h, ctx) : dropped.add(h);
  }

  /** Cross-attention keys/values (with any cross prefix) and mask, computed once per sequence. */
  private crossKV(a: AttnWeights, enc: Tensor, encMask: Tensor, ctx: ForwardContext): { kv: KV; mask: Tensor; prefixLen: number } {
    const k0 = this.splitHeads(this.linear(a.k, enc, ctx));
    const v0 = this.splitHeads(this.linear(a.v, enc, ctx));
    // The cross prefix gate reads the encoder states (the attention's key/value source).
    const prefix = ctx.composition ? this.adapters.attentionPrefix(a.site, enc, ctx) : undefined;
    const { k, v, mask } = this.withPrefix(prefix, k0, v0, encMask, null, 0, 1);
    return { kv: { k, v }, mask: mask!, prefixLen: prefix ? (prefix.keys.shape[2] as number) : 0 };
  }

  private crossAttention(a: AttnWeights, h: Tensor, kv: KV, mask: Tensor, ctx: ForwardContext): Tensor {
    const x = this.rmsNorm(h, a.norm);
    const q = this.splitHeads(this.linear(a.q, x, ctx));
    const out = this.linear(a.o, this.mergeHeads(this.attend(q, kv.k, kv.v, null, mask, ctx, a.o.layer * 13 + 5)), ctx);
    const dropped = this.dropout(out, ctx, a.o.layer * 13 + 6);
    return ctx.composition ? this.adapters.sublayer(a.sublayer, dropped, h, ctx) : dropped.add(h);
  }

  private embed(ids: Tensor): Tensor {
    return tf.gather(this.weights.get('shared.weight')!, ids);
  }

  /** Additive padding mask [B, 1, 1, L] from a 0/1 mask [B, L]. */
  private paddingMask(mask: Tensor): Tensor {
    const [b, l] = mask.shape;
    return tf.sub(1, mask.cast('float32')).mul(MASK_VALUE).reshape([b, 1, 1, l]);
  }

  /** Replicates rows for Parallel (adapter-major: rows [i·B, (i+1)·B) belong to the i-th branch). */
  private replicate(t: Tensor, ctx: ForwardContext): Tensor {
    const n = ctx.parallelChannels;
    if (n === 1) return t;
    return tf.tile(t, [n, ...new Array(t.rank - 1).fill(1)]);
  }

  // ------------------------------------------------------------------ encoder / decoder
  /** Encoder over already-replicated ids. Returns the final hidden states [rows, L, d]. */
  encodeIds(ids: Tensor, mask: Tensor, ctx: ForwardContext): Tensor {
    let h = this.dropout(this.embed(ids), ctx, 101);
    if (ctx.composition) h = this.adapters.embeddings('encoder', h, ctx);
    const additive = this.paddingMask(mask);
    for (const block of this.encoderBlocks) {
      h = this.selfAttentionFull(block.self, h, additive, this.encoderBias, ctx);
      h = this.feedForward(block.ffn, h, ctx);
    }
    return this.dropout(this.rmsNorm(h, 'encoder.final_layer_norm.weight'), ctx, 102);
  }

  /** Decoder hidden states → logits [rows·T, vocab] (2-D). */
  private lmHead(h: Tensor, ctx: ForwardContext): Tensor {
    let x = this.dropout(this.rmsNorm(h, 'decoder.final_layer_norm.weight'), ctx, 103);
    if (this.config.scaleDecoderOutputs) x = x.mul(this.config.dModel ** -0.5);
    if (ctx.composition) x = this.adapters.embeddings('decoder', x, ctx, true);
    const head = this.tiedHeadKernel ?? this.kernels.get('lm_head')!; // [d_model, vocab]
    return tf.matMul(x.reshape([-1, this.config.dModel]), head);
  }

  /** Full (uncached) decoder over target ids. */
  private decodeFull(decIds: Tensor, decMask: Tensor | null, enc: Tensor, encMask: Tensor, ctx: ForwardContext): Tensor {
    const [rows, T] = decIds.shape;
    let h = this.dropout(this.embed(decIds), ctx, 104);
    if (ctx.composition) h = this.adapters.embeddings('decoder', h, ctx);
    // Causal mask [1, 1, T, T] (built in JS: bandPart costs ~10 kernels) plus the decoder padding mask,
    // tiled to the rows once for all layers.
    const causal = new Float32Array(T * T);
    for (let i = 0; i < T; i++) causal.fill(MASK_VALUE, i * T + i + 1, (i + 1) * T);
    let selfMask = tf.tensor4d(causal, [1, 1, T, T]);
    if (decMask) selfMask = selfMask.add(this.paddingMask(decMask));
    if (selfMask.shape[0] !== rows) selfMask = tf.tile(selfMask, [rows, 1, 1, 1]);
    const encAdd = this.paddingMask(encMask);
    for (const block of this.decoderBlocks) {
      h = this.selfAttentionFull(block.self, h, selfMask, this.decoderBias, ctx);
      const { kv, mask } = this.crossKV(block.cross!, enc, encAdd, ctx);
      h = this.crossAttention(block.cross!, h, kv, mask, ctx);
      h = this.feedForward(block.ffn, h, ctx);
    }
    return this.lmHead(h, ctx).reshape([rows, T, this.config.vocabSize]);
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
    const ctx = this.adapters.createContext({ training: input.training, originalBatchSize: ids.shape[0], seed: input.seed, composition: input.composition, rowMultiplier: input.expandedRows?.rowMultiplier });
    const rep = (t: Tensor) => (input.expandedRows ? t : this.replicate(t, ctx));
    try {
      return tf.tidy(() => {
        const rIds = rep(ids);
        const rMask = rep(mask!);
        const enc = this.encodeIds(rIds, rMask, ctx);
        const logits = this.decodeFull(rep(dec), decMask ? rep(decMask) : null, enc, rMask, ctx);
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
  loss(input: { inputIds: IdsInput; attentionMask?: IdsInput; labels: IdsInput; decoderInputIds?: IdsInput; training?: boolean; labelSmoothing?: number; seed?: number; ctx?: ForwardContext; baseDropout?: boolean }): Tensor {
    this.checkAlive();
    const labelsArr = input.labels instanceof tf.Tensor ? (input.labels.arraySync() as number[][]) : input.labels;
    // Validate every input before anything else (a bad one must not leak the tensors made before it).
    const made: Tensor[] = [];
    const keep = (t: Tensor) => (made.push(t), t);
    let ids: Tensor, labels: Tensor, decIds: Tensor, mask: Tensor;
    try {
      ids = keep(this.toIds(input.inputIds, 'inputIds'));
      labels = keep(this.toIds(labelsArr, 'labels', { allowNegative: true }));
      decIds = keep(input.decoderInputIds !== undefined ? this.toIds(input.decoderInputIds, 'decoderInputIds') : this.toIds(this.shiftRight(labelsArr), 'labels'));
      mask = keep(this.toMask(input.attentionMask, ids, 'attentionMask'));
      if (labels.shape[0] !== ids.shape[0] || decIds.shape[0] !== ids.shape[0]) throw new InputError(`labels has ${labels.shape[0]} rows but inputIds has ${ids.shape[0]}`, 'labels');
      const ls = input.labelSmoothing ?? 0;
      if (!(ls >= 0 && ls < 1)) throw new InputError(`labelSmoothing must be in [0, 1), got ${input.labelSmoothing}`, 'labelSmoothing');
      if (decIds.shape[1] !== labels.shape[1]) throw new InputError(`decoderInputIds has length ${decIds.shape[1]} but labels has ${labels.shape[1]}`, 'decoderInputIds');
    } catch (e) {
      tf.dispose(made);
      throw e;
    }
    const ctx = input.ctx ?? this.adapters.createContext({ training: input.training, originalBatchSize: ids.shape[0], seed: input.seed });
    if (input.baseDropout) ctx.memo.set('baseDropout', true);
    try {
      return tf.tidy(() => {
        const rIds = this.replicate(ids, ctx);
        const rMask = this.replicate(mask, ctx);
        const enc = this.encodeIds(rIds, rMask, ctx);
        const logits = this.decodeFull(this.replicate(decIds, ctx), null, enc, rMask, ctx);
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

  /** Mean cross-entropy of logits [B, T, V] against labels [B, T] (int32, -100 ignored), with optional label smoothing. */
  static crossEntropy(logits: Tensor, labels: Tensor, labelSmoothing = 0): Tensor {
    return tf.tidy(() => {
      const V = logits.shape[logits.rank - 1];
      const logp = tf.logSoftmax(logits.reshape([-1, V]));
      const flatLabels = labels.reshape([-1]);
      const valid = flatLabels.notEqual(-100);
      const safe = tf.where(valid, flatLabels, tf.zerosLike(flatLabels));
      const n = flatLabels.shape[0];
      const index = tf.range(0, n, 1, 'int32').mul(tf.scalar(V, 'int32')).add(safe.cast('int32'));
      const picked = tf.gather(logp.reshape([-1]), index);
      let perToken = picked.neg();
      if (labelSmoothing > 0) perToken = perToken.mul(1 - labelSmoothing).add(logp.mean(1).neg().mul(labelSmoothing));
      const w = valid.cast('float32');
      return perToken.mul(w).sum().div(w.sum().maximum(1));
    });
  }

  // ------------------------------------------------------------------ cached decoding
  /**
   * Encodes the source once and prepares per-layer cross keys/values and self caches (with any prefix).
   * `ids`/`mask` are already replicated/expanded to the decoding rows. Tensors in the state are kept alive
   * until disposeDecoderState().
   */
  startDecoding(ids: Tensor, mask: Tensor, ctx: ForwardContext, capacity = 32): DecoderState {
    const rows = ids.shape[0] as number;
    const cap = Math.max(1, Math.floor(capacity));
    const { numHeads: H, dKv: D } = this.config;
    const state = tf.tidy((() => {
      const enc = this.encodeIds(ids, mask, ctx);
      const encAdd = this.paddingMask(mask);
      const cross: KV[] = [];
      const crossMask: Tensor[] = [];
      const self: KV[] = [];
      const selfMask: Tensor[] = [];
      const selfPrefix: { length: number; rule: 'zero' | 'past' }[] = [];
      for (const block of this.decoderBlocks) {
        const c = this.crossKV(block.cross!, enc, encAdd, ctx);
        cross.push(c.kv);
        crossMask.push(c.mask);
        // Empty token slots; a decoder self-attention prefix enters in front of them at step 0 (decodeStep).
        self.push({ k: tf.zeros([rows, H, cap, D]), v: tf.zeros([rows, H, cap, D]) });
        selfMask.push(tf.zeros([rows, 1, 1, cap]));
        selfPrefix.push({ length: 0, rule: 'zero' });
      }
      return { cross, crossMask, self, selfMask, selfPrefix };
    }) as any) as unknown as Pick<DecoderState, 'cross' | 'crossMask' | 'self' | 'selfMask' | 'selfPrefix'>;
    const keepAll = (kvs: KV[]) => kvs.forEach((kv) => (tf.keep(kv.k), tf.keep(kv.v)));
    keepAll(state.cross);
    keepAll(state.self);
    state.crossMask.forEach((t) => tf.keep(t));
    state.selfMask.forEach((t) => tf.keep(t));
    return { ctx, ...state, capacity: cap, step: 0, rows };
  }

  /** Doubles the token slots of every self cache (a generation ran past the capacity it started with). */
  private growDecoderState(state: DecoderState): void {
    const { numHeads: H, dKv: D } = this.config;
    const extra = state.capacity;
    const grow = (t: Tensor, shape: number[], axis: number) => {
      const out = tf.tidy(() => tf.concat([t, tf.zeros(shape)], axis));
      t.dispose();
      return out;
    };
    state.self = state.self.map((kv) => ({ k: grow(kv.k, [state.rows, H, extra, D], 2), v: grow(kv.v, [state.rows, H, extra, D], 2) }));
    state.selfMask = state.selfMask.map((m) => grow(m, [state.rows, 1, 1, extra], 3));
    state.capacity += extra;
  }

  /**
   * One decoder step for every row: writes this step's keys/values into the cache and returns logits
   * [rows, vocab]. The caller owns the logits; the state is updated in place.
   */
  decodeStep(state: DecoderState, tokens: Tensor): Tensor {
    const ctx = state.ctx;
    const t = state.step;
    if (t >= state.capacity) this.growDecoderState(state);
    ctx.decodingPosition = t;
    const result = tf.tidy((() => {
      let h = this.embed(tokens.reshape([state.rows, 1]));
      if (ctx.composition) h = this.adapters.embeddings('decoder', h, ctx);
      const newSelf: KV[] = [];
      const newMask: Tensor[] = [];
      // Per prefix length: the one-hot of this step's slot and the mask hiding slots not yet written.
      const slotTensors = new Map<number, { write: Tensor; keep: Tensor; visible: Tensor }>();
      const slotsFor = (p: number) => {
        let hit = slotTensors.get(p);
        if (!hit) {
          const n = p + state.capacity;
          const write = new Float32Array(n);
          write[p + t] = 1;
          const keep = write.map((w) => 1 - w);
          const visible = new Float32Array(n);
          for (let j = p + t + 1; j < n; j++) visible[j] = MASK_VALUE;
          hit = { write: tf.tensor4d(write, [1, 1, n, 1]), keep: tf.tensor4d(keep, [1, 1, n, 1]), visible: tf.tensor4d(visible, [1, 1, 1, n]) };
          slotTensors.set(p, hit);
        }
        return hit;
      };
      this.decoderBlocks.forEach((block, i) => {
        const a = block.self;
        const x = this.rmsNorm(h, a.norm);
        const q = this.splitHeads(this.linear(a.q, x, ctx));
        const k1 = this.splitHeads(this.linear(a.k, x, ctx));
        const v1 = this.splitHeads(this.linear(a.v, x, ctx));
        let cache = state.self[i];
        let cacheMask = state.selfMask[i];
        if (t === 0 && ctx.composition) {
          // The prefix enters the self-attention cache once, at the first step, in the [B, H, T, d] layout.
          const prefix = this.adapters.attentionPrefix(a.site, x, ctx);
          if (prefix) {
            assertRank(prefix.keys, 4, 'prefix keys');
            assertRank(prefix.values, 4, 'prefix values');
            const p = prefix.keys.shape[2] as number;
            cache = { k: tf.concat([prefix.keys, cache.k], 2), v: tf.concat([prefix.values, cache.v], 2) };
            cacheMask = tf.concat([tf.sub(1, prefix.mask.cast('float32')).mul(MASK_VALUE).reshape([state.rows, 1, 1, p]), cacheMask], 3);
            state.selfPrefix[i] = { length: p, rule: prefix.positionRule ?? 'zero' };
          }
        }
        assertRank(cache.k, 4, 'cached keys');
        const { length: p, rule } = state.selfPrefix[i];
        const slot = slotsFor(p);
        // write slot p + t in place with a one-hot multiply-add: constant shapes from step to step, and
        // native broadcasting (tf.where would tile its inputs, which is slow on wasm)
        const k = cache.k.mul(slot.keep).add(k1.mul(slot.write));
        const v = cache.v.mul(slot.keep).add(v1.mul(slot.write));
        newSelf.push({ k, v });
        newMask.push(cacheMask);
        const bias = this.decoderBias.forCachedStep(t, p, state.capacity, rule, ctx);
        // without a prefix the cache mask is all zeros: the step's visibility mask alone will do
        const mask = p === 0 ? slot.visible : cacheMask.add(slot.visible);
        const attnOut = this.linear(a.o, this.mergeHeads(this.attend(q, k, v, bias, mask, ctx, 0)), ctx);
        h = ctx.composition ? this.adapters.sublayer(a.sublayer, attnOut, h, ctx) : attnOut.add(h);
        h = this.crossAttention(block.cross!, h, state.cross[i], state.crossMask[i], ctx);
        h = this.feedForward(block.ffn, h, ctx);
      });
      return { logits: this.lmHead(h, ctx), newSelf, newMask };
    }) as any) as unknown as { logits: Tensor; newSelf: KV[]; newMask: Tensor[] };
    ctx.decodingPosition = undefined;
    state.self.forEach((kv) => tf.dispose([kv.k, kv.v]));
    state.selfMask.forEach((m, i) => {
      if (m !== result.newMask[i]) m.dispose();
    });
    state.self = result.newSelf;
    state.selfMask = result.newMask;
    state.step += 1;
    return result.logits;
  }

  /** Reorders every row of the state (beam search): row r takes row index[r]. */
  reorderDecoderState(state: DecoderState, index: number[]): void {
    const idx = tf.tensor1d(index, 'int32');
    const pick = (t: Tensor) => {
      const out = tf.gather(t, idx);
      t.dispose();
      return out;
    };
    state.self = state.self.map((kv) => ({ k: pick(kv.k), v: pick(kv.v) }));
    state.selfMask = state.selfMask.map(pick);
    idx.dispose();
    state.ctx.reorderRows(index);
  }

  disposeDecoderState(state: DecoderState): void {
    tf.dispose([...state.cross.flatMap((kv) => [kv.k, kv.v]), ...state.crossMask, ...state.self.flatMap((kv) => [kv.k, kv.v]), ...state.selfMask]);
    state.ctx.dispose();
  }

  /** Replicates ids for the active composition's Parallel channels (public for generation). */
  replicateForParallel(t: Tensor, ctx: ForwardContext): Tensor {
    return this.replicate(t, ctx);
  }

  private checkAlive() {
    if (this.disposed) throw new InputError('this model has been disposed');
  }

  dispose(): void {
    if (this.disposed) return;
    this.adapters.dispose();
    tf.dispose([...this.weights.values(), ...this.kernels.values()]);
    this.tiedHeadKernel?.dispose();
    this.encoderBias.dispose();
    this.decoderBias.dispose();
    this.disposed = true;
  }

  /** A model with random weights of a given config (benchmarks, tests). Deterministic per seed. */
  static randomWeights(config: T5Config, expected: Map<string, number[]>, seed = 0): Map<string, SafeTensor> {
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
