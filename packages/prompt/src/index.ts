/**
 * Prompt tuning for adapterkit (Lester et al. 2021; `adapters`' PromptTuningConfig, PEFT's PROMPT_TUNING):
 * learned virtual-token embeddings put into the encoder's input after the token embedding lookup, the
 * attention mask extended with ones. Importing this package registers the method ('prompt_tuning' configs)
 * and PEFT PROMPT_TUNING import/export.
 *
 * The model knows nothing of prompts: it calls core's input-embeddings hook with its embedded input and
 * mask, and uses the (longer) mask that comes back wherever the encoder's positions are attended to.
 */
import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  AdapterTable,
  assignFileTensors,
  slotTensor,
  type AdaptersFile,
  concatRows,
  ConfigError,
  SeededRandom,
  TableRuntime,
  UnsupportedError,
  WeightError,
  registerMethod,
  type AdapterConfig,
  type AdapterMethod,
  type AnySite,
  type BlockType,
  type ForwardContext,
  type HookKind,
  type InputEmbeddings,
  type MethodRuntime,
  type ModelAccess,
  type StackName,
} from '@adapterkit/core';
import { dispatch, touches, type LayerPrimitives } from '@adapterkit/compose';
import { normalizePromptConfig, type PromptTuningConfig } from './config.js';
import { exportPeftPrompt, importPeftPrompt, type FloatTensor } from './peft.js';
import { adaptersPromptConfig, promptConfigFromAdapters, promptSlot } from './adapters-format.js';

export { normalizePromptConfig, PROMPT_DEFAULTS, type PromptCombine, type PromptInit, type PromptTuningConfig } from './config.js';

/** The variable's save name (PEFT's tensor name too): [prompt_length × peft_submodules, d_model]. */
export const PROMPT_KEY = 'prompt_embeddings';

interface PromptAdapter {
  name: string;
  uid: number;
  config: PromptTuningConfig;
  vars: Map<string, Variable>;
}

let nextUid = 0;

/**
 * The prompt sits in front of every layer: AdapterDrop's skipped layers never remove it (the dispatcher's
 * layer id for the input is -1, which no layer has).
 */
const INPUT_LAYER = -1;

/** Pads a state at the end of the sequence to `length` with masked zero positions (real↔real distances are unchanged). */
function padTo(s: InputEmbeddings, length: number): InputEmbeddings {
  const [rows, len, d] = s.embeds.shape as number[];
  if (len === length) return s;
  return { embeds: tf.concat([s.embeds, tf.zeros([rows, length - len, d])], 1), mask: tf.concat([s.mask, tf.zeros([rows, length - len])], 1) };
}

class PromptRuntime extends TableRuntime<PromptAdapter> implements MethodRuntime {
  protected readonly adapters = new AdapterTable<PromptAdapter>('prompt', (a) => a.vars);

  constructor(readonly model: ModelAccess) {
    super();
  }

  add(name: string, config: AdapterConfig, seed: number): void {
    this.create(name, normalizePromptConfig(config), seed);
  }

  /** Creates the adapter with its initial values (drawn per its config, or `values` when given: imports). */
  create(name: string, c: PromptTuningConfig, seed: number, values?: Float32Array): void {
    this.adapters.assertNew(name);
    const rows = c.prompt_length * c.peft_submodules;
    const shape = [rows, this.model.dims.dModel];
    const initial = values ? tf.tensor2d(values, shape as [number, number]) : this.initialValues(c, rows, c.init_weights_seed ?? seed);
    const uid = nextUid++;
    const vars = new Map([[PROMPT_KEY, tf.variable(initial, true, `adapterkit/prompt/${name}#${uid}/${PROMPT_KEY}`)]]);
    initial.dispose(); // the variable holds its own reference to the data
    this.adapters.add(name, { name, uid, config: c, vars });
  }

  /** [rows, d_model] as `adapters` (uniform ±scale, or the embeddings of the text's tokens repeated) or PEFT (N(0, 1), vocabulary samples) draws them. */
  private initialValues(c: PromptTuningConfig, rows: number, seed: number): Tensor {
    const d = this.model.dims.dModel;
    const rng = new SeededRandom(seed);
    if (c.prompt_init === 'random_uniform' || c.prompt_init === 'random_normal') {
      const v = new Float32Array(rows * d);
      const s = c.random_uniform_scale;
      for (let i = 0; i < v.length; i++) v[i] = c.prompt_init === 'random_uniform' ? rng.uniform(-s, s) : rng.normal(0, 1);
      return tf.tensor2d(v, [rows, d]);
    }
    if (!this.model.readInputEmbeddings)
      throw new UnsupportedError(`prompt_init '${c.prompt_init}' needs the model's input embeddings, which this model does not offer`, 'prompt_init');
    let ids: number[];
    if (c.prompt_init === 'sample_vocab') {
      const vocab = this.model.dims.vocabSize;
      ids = Array.from({ length: rows }, () => Math.min(vocab - 1, Math.floor(rng.uniform(0, vocab))));
    } else {
      if (!this.model.encodeText) throw new UnsupportedError("prompt_init 'from_string' needs the model's tokenizer, which this model does not have", 'prompt_init');
      const text = this.model.encodeText(c.prompt_init_text!);
      if (text.length === 0) throw new ConfigError(`prompt_init_text ${JSON.stringify(c.prompt_init_text)} has no tokens`, 'prompt_init_text');
      // as both libraries: the text's ids (special tokens included) repeated up to the prompt length, then cut
      ids = Array.from({ length: rows }, (_, i) => text[i % text.length]);
    }
    return rows === 0 ? tf.zeros([0, d]) : this.model.readInputEmbeddings(ids);
  }

  setWeights(name: string, tensors: Map<string, Tensor>): void {
    const v = this.adapters.get(name).vars.get(PROMPT_KEY)!;
    const t = tensors.get(PROMPT_KEY);
    if (!t) throw new WeightError(`prompt adapter '${name}' lacks tensor '${PROMPT_KEY}'`, PROMPT_KEY);
    if (t.shape.join(',') !== v.shape.join(',')) throw new WeightError(`tensor '${PROMPT_KEY}' has shape [${t.shape}] but '${name}' expects [${v.shape}]`, PROMPT_KEY);
    v.assign(t);
  }

  config(name: string): PromptTuningConfig {
    return this.adapters.get(name).config;
  }

  /** Whether a prompt of the active composition acts on this stack's input. */
  actsAt(hook: HookKind, site: AnySite, ctx: ForwardContext): boolean {
    return hook === 'inputEmbeddings' && site === 'encoder' && ctx.composition !== null && touches(ctx.composition, { has: (n) => this.holds(n) });
  }

  private holds(name: string): boolean {
    const a = this.adapters.find(name);
    return a !== undefined && a.config.prompt_length > 0;
  }

  /** One adapter on some rows: its prompt in front of (or after the first token of) what came so far. */
  private single(a: PromptAdapter, s: InputEmbeddings): InputEmbeddings {
    const P = a.config.prompt_length;
    const [rows, len, d] = s.embeds.shape as number[];
    const v = a.vars.get(PROMPT_KEY)!;
    // PEFT's forward uses the first num_virtual_tokens rows (the encoder's) of a SEQ_2_SEQ_LM prompt
    const prompt = tf.tile((a.config.peft_submodules === 1 ? v : v.slice([0, 0], [P, d])).expandDims(0), [rows, 1, 1]);
    const ones = tf.ones([rows, P]);
    if (a.config.combine === 'prefix') return { embeds: tf.concat([prompt, s.embeds], 1), mask: tf.concat([ones, s.mask], 1) };
    const first = <T extends Tensor>(t: T, rank: number) => t.slice(new Array(rank).fill(0), [rows, 1, ...(rank === 3 ? [d] : [])]);
    const rest = <T extends Tensor>(t: T, rank: number) => t.slice([0, 1, ...(rank === 3 ? [0] : [])], [rows, len - 1, ...(rank === 3 ? [d] : [])]);
    return {
      embeds: tf.concat([first(s.embeds, 3), prompt, rest(s.embeds, 3)], 1),
      mask: tf.concat([first(s.mask, 2), ones, rest(s.mask, 2)], 1),
    };
  }

  inputEmbeddings(stack: StackName, input: InputEmbeddings, ctx: ForwardContext): InputEmbeddings | undefined {
    if (stack !== 'encoder') return undefined;
    const prims: LayerPrimitives<InputEmbeddings> = {
      has: (n) => this.holds(n),
      // Stack composes the prepends: Stack(a, b) gives [b's prompt, a's prompt, input]
      single: (n, s) => this.single(this.adapters.get(n), s),
      rows: (s) => s.embeds.shape[0] as number,
      sliceRows: (s, start, end) => ({
        embeds: s.embeds.slice([start, 0, 0], [end - start, -1, -1]),
        mask: s.mask.slice([start, 0], [end - start, -1]),
      }),
      // Parallel branches / BatchSplit parts with shorter prompts (or none) are padded with masked positions at the end.
      concatRows: (parts) => {
        const longest = Math.max(...parts.map((p) => p.embeds.shape[1] as number));
        const padded = parts.map((p) => padTo(p, longest));
        return { embeds: concatRows(padded, (p) => p.embeds), mask: concatRows(padded, (p) => p.mask) };
      },
    };
    return dispatch(INPUT_LAYER, { embeds: input.embeds, mask: input.mask.cast('float32') }, prims, ctx);
  }

  importPeft(name: string, cfg: Record<string, unknown>, tensors: Map<string, FloatTensor>): AdapterConfig {
    const { config, values } = importPeftPrompt(this.model.dims, cfg, tensors);
    this.create(name, config, 0, values);
    return config;
  }

  exportPeft(name: string): { config: Record<string, unknown>; tensors: Map<string, FloatTensor> } {
    const v = this.adapters.get(name).vars.get(PROMPT_KEY)!;
    return exportPeftPrompt(this.model.dims, this.config(name), { shape: v.shape, data: Float32Array.from(v.dataSync() as Float32Array) });
  }

  exportAdapters(name: string): { config: Record<string, unknown>; tensors: Map<string, FloatTensor> } {
    const c = this.config(name);
    const config = adaptersPromptConfig(c, name);
    const slot = promptSlot(this.adapters.get(name).vars.get(PROMPT_KEY)!, c.prompt_length, name);
    const t = slotTensor(slot);
    // the first prompt_length rows (a PEFT import may hold 2P; its forward reads the first P)
    return { config, tensors: new Map([[slot.key, { shape: slot.shape, data: t.data.subarray(0, slot.shape[0] * slot.shape[1]) }]]) };
  }

  importAdapters(name: string, file: AdaptersFile, tensors: Map<string, FloatTensor>): AdapterConfig {
    const config = promptConfigFromAdapters(file.config, file.name);
    this.create(name, config, 0, new Float32Array(config.prompt_length * this.model.dims.dModel));
    try {
      assignFileTensors([promptSlot(this.adapters.get(name).vars.get(PROMPT_KEY)!, config.prompt_length, file.name)], tensors, 'adapters file');
    } catch (e) {
      this.remove(name);
      throw e;
    }
    return config;
  }
}

const SUPPORTED: ReadonlySet<BlockType> = new Set<BlockType>(['Stack', 'Parallel', 'BatchSplit']);

export const promptTuning: AdapterMethod = {
  name: 'prompt',
  configMethods: ['prompt_tuning'],
  presets: { prompt_tuning: { method: 'prompt_tuning' } },
  supportedBlocks: SUPPORTED,
  // a prompt lengthens its rows' encoder input
  decodesRowwise: () => false,
  peftTypes: ['PROMPT_TUNING'],
  adaptersArchitectures: ['prompt_tuning'],
  ownsAdaptersKey: (key, name) => key.startsWith(`prompt_tuning.prompt_tunings.${name}.`),
  normalizeConfig: normalizePromptConfig,
  attach: (model) => new PromptRuntime(model),
};

registerMethod(promptTuning);
