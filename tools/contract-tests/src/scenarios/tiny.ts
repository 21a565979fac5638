/**
 * The tiny T5 most model scenarios share (SwiftShader-sized: d_model 16, 2 heads × 8, 1 + 1 layers, vocab 32)
 * and one padded batch for it. Weights are random from a seed, so every backend computes the same thing.
 */
export const TINY_T5 = {
  model_type: 't5',
  vocab_size: 32,
  d_model: 16,
  d_kv: 8,
  d_ff: 24,
  num_layers: 1,
  num_decoder_layers: 1,
  num_heads: 2,
  relative_attention_num_buckets: 8,
  relative_attention_max_distance: 16,
  dropout_rate: 0,
  layer_norm_epsilon: 1e-6,
  decoder_start_token_id: 0,
  pad_token_id: 0,
  eos_token_id: 1,
};

/** flan-style: gated-gelu feed-forward with its own lm_head. */
export const TINY_GATED = { ...TINY_T5, feed_forward_proj: 'gated-gelu', tie_word_embeddings: false };

export const inputIds = [
  [5, 9, 13, 22, 30, 7, 1],
  [8, 2, 31, 4, 1, 0, 0],
];
export const attentionMask = [
  [1, 1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 1, 0, 0],
];
export const decoderInputIds = [
  [0, 4, 9, 17, 12],
  [0, 21, 3, 5, 26],
];
export const labels = decoderInputIds.map((r) => [...r.slice(1), 1]);
