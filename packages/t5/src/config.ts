import { ConfigError } from '@adapterkit/core';

/** A T5 config, normalised from config.json of transformers v4 or v5. */
export interface T5Config {
  vocabSize: number;
  dModel: number;
  dKv: number;
  dFf: number;
  numLayers: number;
  numDecoderLayers: number;
  numHeads: number;
  relativeAttentionNumBuckets: number;
  relativeAttentionMaxDistance: number;
  dropoutRate: number;
  layerNormEpsilon: number;
  feedForwardProj: string;
  /** Activation of the feed-forward ('relu' | 'gelu' | 'gelu_new' | 'silu'). */
  denseActFn: 'relu' | 'gelu' | 'gelu_new' | 'silu';
  isGatedAct: boolean;
  tieWordEmbeddings: boolean;
  /** Multiply the decoder output by d_model^-0.5 before the LM head. */
  scaleDecoderOutputs: boolean;
  padTokenId: number;
  eosTokenId: number | number[];
  decoderStartTokenId: number;
  modelType: string;
}

const ACTS: Record<string, T5Config['denseActFn']> = {
  relu: 'relu',
  gelu: 'gelu',
  gelu_new: 'gelu_new',
  'gelu-new': 'gelu_new',
  silu: 'silu',
  swish: 'silu',
  gelu_pytorch_tanh: 'gelu_new',
};

function int(raw: Record<string, unknown>, key: string, fallback?: number, min = 1): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new ConfigError(`config.json: '${key}' must be an integer ≥ ${min}, got ${JSON.stringify(raw[key])}`, key);
  }
  return v;
}

function num(raw: Record<string, unknown>, key: string, fallback: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ConfigError(`config.json: '${key}' must be a non-negative number, got ${JSON.stringify(raw[key])}`, key);
  return v;
}

/**
 * Reads a T5 config.json (transformers v4 and v5 semantics):
 * - feed_forward_proj: "relu" | "gelu" | "gated-gelu" | "gated-silu" …; "gated-gelu" uses gelu_new, as transformers does.
 * - d_kv is independent of d_model / num_heads; num_decoder_layers defaults to num_layers.
 * - LM head: tied unless tie_word_embeddings is false (v4 flan-t5 carries its own lm_head.weight).
 * - Decoder output rescaling: `scale_decoder_outputs` where present (v5), else `tie_word_embeddings` (v4).
 */
export function parseT5Config(raw: unknown): T5Config {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('config.json must be a JSON object');
  const c = raw as Record<string, unknown>;
  const modelType = c.model_type ?? 't5';
  if (modelType !== 't5' && modelType !== 'mt5') throw new ConfigError(`config.json: unsupported model_type '${String(modelType)}' (supported: t5, mt5)`, 'model_type');
  const ffp = c.feed_forward_proj ?? 'relu';
  if (typeof ffp !== 'string') throw new ConfigError(`config.json: 'feed_forward_proj' must be a string`, 'feed_forward_proj');
  const parts = ffp.split('-');
  const isGated = parts[0] === 'gated';
  if ((isGated && parts.length !== 2) || (!isGated && parts.length !== 1)) {
    throw new ConfigError(`config.json: feed_forward_proj '${ffp}' is not a valid activation (use 'relu', 'gelu', 'gated-gelu', 'gated-silu', …)`, 'feed_forward_proj');
  }
  let actName = parts[parts.length - 1];
  if (ffp === 'gated-gelu') actName = 'gelu_new'; // transformers' backwards-compatibility rule
  const act = ACTS[actName];
  if (!act) throw new ConfigError(`config.json: feed_forward_proj '${ffp}' uses unsupported activation '${actName}'`, 'feed_forward_proj');
  const tie = c.tie_word_embeddings ?? true;
  if (typeof tie !== 'boolean') throw new ConfigError("config.json: 'tie_word_embeddings' must be a boolean", 'tie_word_embeddings');
  const scale = c.scale_decoder_outputs ?? tie;
  if (typeof scale !== 'boolean') throw new ConfigError("config.json: 'scale_decoder_outputs' must be a boolean", 'scale_decoder_outputs');
  const numLayers = int(c, 'num_layers', 6);
  const vocabSize = int(c, 'vocab_size', 32128);
  // Buckets: at least 4 (so both directions have an exact range), and a max distance beyond the exact
  // range — otherwise transformers' log-bucket formula yields negative or NaN bucket indices.
  const numBuckets = int(c, 'relative_attention_num_buckets', 32, 4);
  const maxDistance = int(c, 'relative_attention_max_distance', 128);
  if (maxDistance <= Math.floor(numBuckets / 2)) {
    throw new ConfigError(
      `config.json: 'relative_attention_max_distance' (${maxDistance}) must exceed relative_attention_num_buckets / 2 (${Math.floor(numBuckets / 2)})`,
      'relative_attention_max_distance',
    );
  }
  const padTokenId = int(c, 'pad_token_id', 0, 0);
  const decoderStartTokenId = int(c, 'decoder_start_token_id', padTokenId, 0);
  for (const [key, id] of [
    ['pad_token_id', padTokenId],
    ['decoder_start_token_id', decoderStartTokenId],
  ] as const) {
    if (id >= vocabSize) throw new ConfigError(`config.json: '${key}' (${id}) must be below vocab_size (${vocabSize})`, key);
  }
  const eos = c.eos_token_id ?? 1;
  if (!(typeof eos === 'number' || (Array.isArray(eos) && eos.every((e) => typeof e === 'number'))))
    throw new ConfigError("config.json: 'eos_token_id' must be an integer or a list", 'eos_token_id');
  return {
    vocabSize,
    dModel: int(c, 'd_model', 512),
    dKv: int(c, 'd_kv', 64),
    dFf: int(c, 'd_ff', 2048),
    numLayers,
    numDecoderLayers: c.num_decoder_layers == null ? numLayers : int(c, 'num_decoder_layers'),
    numHeads: int(c, 'num_heads', 8),
    relativeAttentionNumBuckets: numBuckets,
    relativeAttentionMaxDistance: maxDistance,
    dropoutRate: num(c, 'dropout_rate', 0.1),
    layerNormEpsilon: num(c, 'layer_norm_epsilon', 1e-6),
    feedForwardProj: ffp,
    denseActFn: act,
    isGatedAct: isGated,
    tieWordEmbeddings: tie,
    scaleDecoderOutputs: scale,
    padTokenId,
    eosTokenId: eos as number | number[],
    decoderStartTokenId,
    modelType: modelType as string,
  };
}

/** Random-weight configs used by benchmarks: the flan-t5-small shape. */
export const FLAN_T5_SMALL_SHAPE = {
  model_type: 't5',
  vocab_size: 32128,
  d_model: 512,
  d_kv: 64,
  d_ff: 1024,
  num_layers: 8,
  num_decoder_layers: 8,
  num_heads: 6,
  relative_attention_num_buckets: 32,
  relative_attention_max_distance: 128,
  feed_forward_proj: 'gated-gelu',
  tie_word_embeddings: false,
  dropout_rate: 0.1,
  layer_norm_epsilon: 1e-6,
  decoder_start_token_id: 0,
  pad_token_id: 0,
  eos_token_id: 1,
};
