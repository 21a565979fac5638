import { tf, type Tensor } from '@adapterkit/backend';
import type { CompositionBlock, AdapterComposition } from './composition.js';
import { ConfigError, FileError, ModelMismatchError, UnsupportedError, WeightError } from './errors.js';
import type { ModelAccess } from './hooks.js';
import { parseJson } from './io.js';
import { readSafetensors } from './safetensors.js';
import { readTorchCheckpoint } from './torch-checkpoint.js';

/**
 * Prediction heads saved beside an AdapterHub `adapters` adapter (`save_adapter(dir, name, with_head=True)`,
 * the default for models with heads): `head_config.json` and `model_head.safetensors` or
 * `pytorch_model_head.bin` (adapters' HEAD_CONFIG_NAME, SAFE_HEAD_WEIGHTS_NAME, HEAD_WEIGHTS_NAME). Two
 * layouts, read from adapters' loading.py (PredictionHeadLoader) and heads/language_modeling.py:
 * - a flexible head (`T5AdapterModel`): `config` is the head's config (`head_type: 'seq2seq_lm'`, `layers`,
 *   `bias`, …) and the weights are `heads.<name>.<i>.weight`; one layer without bias is one Linear
 *   [vocab, d_model] applied to the decoder output after the model's own output scaling;
 * - a static head (`T5ForConditionalGeneration` with adapters.init): `config` is null and the weights are the
 *   model's own `lm_head.weight`, which adapters loads into the model itself.
 */
export const ADAPTERS_HEAD_CONFIG = 'head_config.json';
export const ADAPTERS_HEAD_WEIGHT_FILES = ['model_head.safetensors', 'pytorch_model_head.bin'] as const;

/** What a loaded adapter's `adapters` head is (AdapterHost.adapterHead). */
export interface AdaptersHeadInfo {
  /** `seq2seq_lm` (a flexible head) or `static_lm` (a static model's `lm_head.weight`). */
  headType: 'seq2seq_lm' | 'static_lm';
  /** The head's name in head_config.json (null for a static head). */
  headName: string | null;
  /** The weights file it came from. */
  file: string;
  /**
   * True when its weight equals the model's own LM head (tied embeddings, a head never trained): nothing is
   * replaced. False: the head is the output projection whenever its adapter is the composition's head.
   */
  sameAsModel: boolean;
}

/** A head ready to attach to an adapter: its info and, when it differs from the model's, its kernel [d_model, vocab]. */
export interface PreparedHead {
  info: AdaptersHeadInfo;
  kernel?: Tensor;
}

type Files = Record<string, Uint8Array>;

/**
 * The head files a source holds beside an `adapters` weights file (`adapter.safetensors`, `pytorch_adapter.bin`),
 * for loadAdapterFiles; other formats have none, so a PEFT adapter on the Hub costs no extra requests.
 */
export async function readAdaptersHeadFiles(source: { has(file: string): Promise<boolean>; read(file: string): Promise<Uint8Array> }, weightsFile: string): Promise<Files> {
  const out: Files = {};
  if (weightsFile !== 'adapter.safetensors' && weightsFile !== 'pytorch_adapter.bin') return out;
  for (const f of [ADAPTERS_HEAD_CONFIG, ...ADAPTERS_HEAD_WEIGHT_FILES]) if (await source.has(f)) out[f] = await source.read(f);
  return out;
}

function headFilesIn(files: Files): string[] {
  return [ADAPTERS_HEAD_CONFIG, ...ADAPTERS_HEAD_WEIGHT_FILES].filter((f) => files[f]);
}

/** Head files only come with `adapters`' format: beside another format's adapter they are refused, never ignored. */
export function refuseAdaptersHeadFiles(files: Files, format: string): void {
  const present = headFilesIn(files);
  if (present.length > 0) throw new UnsupportedError(`${present.join(', ')} (AdapterHub adapters prediction head files) beside a ${format} adapter cannot be loaded`, present[0]);
}

/** Seq2SeqLMHead's config keys (adapters' heads/language_modeling.py); `id2label` as the head loader adds it. */
const SEQ2SEQ_HEAD_KEYS = new Set(['head_type', 'vocab_size', 'layers', 'activation_function', 'layer_norm', 'bias', 'shift_labels', 'label2id', 'id2label']);

/**
 * Reads and checks an adapter directory's `adapters` head files (undefined when there are none), compares the
 * head with the model's own LM head and, when it differs, keeps its kernel. Everything is checked before the
 * kernel is allocated; anything that is not a one-layer seq2seq LM head is refused by name.
 */
export function prepareAdaptersHead(files: Files, model: ModelAccess): PreparedHead | undefined {
  const present = headFilesIn(files);
  if (present.length === 0) return undefined;
  const weightsFile = ADAPTERS_HEAD_WEIGHT_FILES.find((f) => files[f]);
  if (!files[ADAPTERS_HEAD_CONFIG]) throw new FileError(`${weightsFile} is there but ${ADAPTERS_HEAD_CONFIG} is missing: the head's type is unknown`, ADAPTERS_HEAD_CONFIG);
  if (!weightsFile) throw new FileError(`${ADAPTERS_HEAD_CONFIG} is there but its weights (${ADAPTERS_HEAD_WEIGHT_FILES.join(' or ')}) are missing`, ADAPTERS_HEAD_CONFIG);
  const cfg = parseJson(new TextDecoder().decode(files[ADAPTERS_HEAD_CONFIG]), ADAPTERS_HEAD_CONFIG);
  if (!cfg || typeof cfg !== 'object' || Array.isArray(cfg)) throw new FileError(`${ADAPTERS_HEAD_CONFIG} is not a JSON object`, ADAPTERS_HEAD_CONFIG);
  const d = model.dims;
  if (cfg.model_type !== undefined && cfg.model_type !== d.modelType)
    throw new ModelMismatchError(`${ADAPTERS_HEAD_CONFIG}: the head was made for model type '${cfg.model_type}', this model is '${d.modelType}'`);
  if (typeof cfg.hidden_size === 'number' && cfg.hidden_size !== d.dModel)
    throw new ModelMismatchError(`${ADAPTERS_HEAD_CONFIG}: the head was made for hidden_size ${cfg.hidden_size}, this model has ${d.dModel}`);

  let key: string;
  let info: Omit<AdaptersHeadInfo, 'sameAsModel'>;
  if (cfg.config === null || cfg.config === undefined) {
    // a static head: the model class's own output layer
    if (cfg.model_class !== model.adaptersModelClass)
      throw new UnsupportedError(
        `${ADAPTERS_HEAD_CONFIG}: a static prediction head of model class '${cfg.model_class}' cannot be loaded (only ${model.adaptersModelClass ?? 'none'}'s LM head)`,
        'model_class',
      );
    key = 'lm_head.weight';
    info = { headType: 'static_lm', headName: null, file: weightsFile };
  } else {
    const head = cfg.config;
    if (typeof head !== 'object' || Array.isArray(head)) throw new ConfigError(`${ADAPTERS_HEAD_CONFIG}: 'config' must be an object or null`, 'config');
    if (typeof head.head_type !== 'string') throw new ConfigError(`${ADAPTERS_HEAD_CONFIG}: config.head_type is missing`, 'head_type');
    if (head.head_type !== 'seq2seq_lm')
      throw new UnsupportedError(
        `${ADAPTERS_HEAD_CONFIG} (${weightsFile}): prediction head type '${head.head_type}' is not supported; only 'seq2seq_lm' heads load (load the adapter without its head files)`,
        'head_type',
      );
    if (typeof cfg.name !== 'string' || cfg.name === '') throw new ConfigError(`${ADAPTERS_HEAD_CONFIG}: 'name' (the head's name) is missing`, 'name');
    for (const k of Object.keys(head)) if (!SEQ2SEQ_HEAD_KEYS.has(k)) throw new ConfigError(`${ADAPTERS_HEAD_CONFIG}: unknown seq2seq_lm head option '${k}'`, k);
    const layers = head.layers ?? 1;
    if (!Number.isInteger(layers) || layers < 1)
      throw new ConfigError(`${ADAPTERS_HEAD_CONFIG}: config.layers must be a positive integer, got ${JSON.stringify(layers)}`, 'layers');
    if (layers !== 1) throw new UnsupportedError(`${ADAPTERS_HEAD_CONFIG}: a seq2seq_lm head of ${layers} layers is not supported (only 1: the output projection)`, 'layers');
    for (const flag of ['layer_norm', 'bias'] as const) {
      if (head[flag] !== undefined && typeof head[flag] !== 'boolean') throw new ConfigError(`${ADAPTERS_HEAD_CONFIG}: config.${flag} must be a boolean`, flag);
      if (head[flag]) throw new UnsupportedError(`${ADAPTERS_HEAD_CONFIG}: a seq2seq_lm head with ${flag} is not supported`, flag);
    }
    if (head.vocab_size !== undefined && head.vocab_size !== d.vocabSize)
      throw new ModelMismatchError(`${ADAPTERS_HEAD_CONFIG}: the head has vocab_size ${head.vocab_size}, this model has ${d.vocabSize}`);
    key = `heads.${cfg.name}.0.weight`;
    info = { headType: 'seq2seq_lm', headName: cfg.name, file: weightsFile };
  }

  const { tensors } = weightsFile.endsWith('.bin') ? readTorchCheckpoint(files[weightsFile], weightsFile) : readSafetensors(files[weightsFile], weightsFile);
  for (const k of tensors.keys()) if (k !== key) throw new WeightError(`${weightsFile}: unexpected tensor '${k}' (a ${info.headType} head holds only '${key}')`, k);
  const t = tensors.get(key);
  if (!t) throw new WeightError(`${weightsFile} lacks tensor '${key}'`, key);
  if (t.shape.join(',') !== [d.vocabSize, d.dModel].join(',')) throw new WeightError(`${weightsFile}: '${key}' has shape [${t.shape}], expected [${d.vocabSize},${d.dModel}]`, key);
  if (!(t.data instanceof Float32Array)) throw new WeightError(`${weightsFile}: '${key}' has integer dtype ${t.dtype}`, key);
  if (!t.data.every(Number.isFinite)) throw new WeightError(`${weightsFile}: '${key}' contains NaN or Infinity`, key);
  if (!model.readOutputProjection) throw new UnsupportedError(`${weightsFile}: this model declares no output projection an LM head could replace`, 'head');

  const own = model.readOutputProjection();
  const kernel = tf.tidy(() => tf.tensor2d(t.data as Float32Array, [d.vocabSize, d.dModel]).transpose());
  const equal = tf.tidy(() => tf.equal(kernel, own).all());
  const same = equal.dataSync()[0] === 1;
  tf.dispose([equal, own]);
  if (same) {
    kernel.dispose();
    return { info: { ...info, sameAsModel: true } };
  }
  if (info.headType === 'static_lm') {
    kernel.dispose();
    // adapters loads a static head into the model itself (tied: into the input embeddings too), for every later forward
    throw new UnsupportedError(
      `${weightsFile}: its '${key}' differs from this model's LM head; adapters would overwrite the model's own head (and, tied, its input embeddings) with it — not supported`,
      key,
    );
  }
  return { info: { ...info, sameAsModel: false }, kernel };
}

/** The adapter whose head `adapters` activates for a composition: the last adapter of a block (AdapterCompositionBlock.last()). */
function lastAdapter(c: AdapterComposition): string {
  return typeof c === 'string' ? c : lastAdapter(c.children[c.children.length - 1]!);
}

/** The `adapters` heads loaded with adapters, by adapter name, and which one is the output projection of a composition. */
export class AdaptersHeads {
  private readonly heads = new Map<string, PreparedHead>();

  set(adapter: string, head: PreparedHead): void {
    this.delete(adapter);
    this.heads.set(adapter, head);
  }

  delete(adapter: string): void {
    this.heads.get(adapter)?.kernel?.dispose();
    this.heads.delete(adapter);
  }

  info(adapter: string): AdaptersHeadInfo | undefined {
    return this.heads.get(adapter)?.info;
  }

  /** Whether the adapter's head replaces the model's output projection. */
  replacesHead(adapter: string): boolean {
    return this.heads.get(adapter)?.kernel !== undefined;
  }

  /**
   * The output projection [d_model, vocab] of a composition's head when it replaces the model's, as
   * adapters' parse_heads_from_composition picks it: a name, or a Stack's last child. Parallel and BatchSplit
   * would need a head per branch: refused when any branch's head replaces the model's.
   */
  projection(composition: CompositionBlock | null): Tensor | undefined {
    if (!composition || this.heads.size === 0) return undefined;
    const final = composition.type === 'Stack' ? composition.children[composition.children.length - 1]! : composition;
    if (typeof final === 'string') return this.heads.get(final)?.kernel;
    if (final.type === 'Parallel' || final.type === 'BatchSplit') {
      const own = final.children.map(lastAdapter).filter((n) => this.replacesHead(n));
      if (own.length > 0)
        throw new UnsupportedError(
          `${final.type}: a head per branch is not supported, and adapter '${own[0]}' has its own LM head (${this.heads.get(own[0]!)!.info.file})`,
          final.type,
        );
    }
    return undefined;
  }
}
