import { ConfigError, UnsupportedError, WeightError, type ModelDims } from '@adapterkit/core';
import { normalizePromptConfig, type PromptInit, type PromptTuningConfig } from './config.js';

export type FloatTensor = { shape: number[]; data: Float32Array };

/** PEFT's prompt_tuning_init values and adapterkit's inits (they only say how the saved values were first drawn). */
const FROM_PEFT_INIT: Record<string, PromptInit> = { RANDOM: 'random_normal', TEXT: 'from_string', SAMPLE_VOCAB: 'sample_vocab' };

const isEmpty = (v: unknown) => v === undefined || v === null || (Array.isArray(v) && v.length === 0);

/**
 * A PEFT PROMPT_TUNING adapter (adapter_config.json + its `prompt_embeddings` tensor) as a prompt_tuning config
 * and the tensor's values. PEFT's PeftModelForSeq2SeqLM puts the first num_virtual_tokens rows in front of the
 * encoder's input embeddings and ones in front of the attention mask — in forward and in generate; the decoder
 * gets nothing (the second half of a num_transformer_submodules = 2 tensor is saved but never used).
 */
export function importPeftPrompt(dims: ModelDims, cfg: Record<string, unknown>, tensors: Map<string, FloatTensor>): { config: PromptTuningConfig; values: Float32Array } {
  if (cfg.peft_type !== 'PROMPT_TUNING') throw new UnsupportedError(`the prompt method imports PROMPT_TUNING adapters, not ${String(cfg.peft_type)}`, 'peft_type');
  if (cfg.task_type !== 'SEQ_2_SEQ_LM')
    throw new UnsupportedError(
      `PEFT prompt tuning of an encoder-decoder model runs as task_type SEQ_2_SEQ_LM (PeftModelForSeq2SeqLM), got ${JSON.stringify(cfg.task_type)}`,
      'task_type',
    );
  if (!isEmpty(cfg.modules_to_save))
    throw new UnsupportedError(`PEFT option modules_to_save = ${JSON.stringify(cfg.modules_to_save)} is not supported by @adapterkit/prompt`, 'modules_to_save');
  const P = cfg.num_virtual_tokens;
  if (!Number.isInteger(P) || (P as number) < 1)
    throw new ConfigError(`PEFT prompt config needs a positive integer 'num_virtual_tokens', got ${JSON.stringify(P)}`, 'num_virtual_tokens');
  if (cfg.token_dim !== undefined && cfg.token_dim !== null && cfg.token_dim !== dims.dModel)
    throw new UnsupportedError(`PEFT prompt has token_dim ${JSON.stringify(cfg.token_dim)} but this model's embeddings have d_model ${dims.dModel}`, 'token_dim');
  const submodules = cfg.num_transformer_submodules ?? 2; // PEFT's default for SEQ_2_SEQ_LM
  if (submodules !== 1 && submodules !== 2)
    throw new UnsupportedError(`PEFT num_transformer_submodules must be 1 or 2, got ${JSON.stringify(submodules)}`, 'num_transformer_submodules');
  const init = cfg.prompt_tuning_init ?? 'RANDOM';
  if (typeof init !== 'string' || !(init in FROM_PEFT_INIT))
    throw new ConfigError(`PEFT prompt_tuning_init must be RANDOM, TEXT or SAMPLE_VOCAB, got ${JSON.stringify(init)}`, 'prompt_tuning_init');

  for (const k of tensors.keys()) if (k !== 'prompt_embeddings') throw new WeightError(`PEFT prompt adapter has tensor '${k}'; PROMPT_TUNING saves only 'prompt_embeddings'`, k);
  const t = tensors.get('prompt_embeddings');
  if (!t) throw new WeightError(`PEFT prompt adapter has no 'prompt_embeddings' tensor`, 'prompt_embeddings');
  const want = [(P as number) * submodules, dims.dModel];
  if (t.shape.join(',') !== want.join(','))
    throw new WeightError(`PEFT prompt_embeddings has shape [${t.shape}], expected [${want}] (num_virtual_tokens × num_transformer_submodules, d_model)`, 'prompt_embeddings');
  if (!t.data.every(Number.isFinite)) throw new WeightError('PEFT prompt_embeddings contains NaN or Infinity', 'prompt_embeddings');

  const text = typeof cfg.prompt_tuning_init_text === 'string' && cfg.prompt_tuning_init_text ? cfg.prompt_tuning_init_text : null;
  const config = normalizePromptConfig({
    method: 'prompt_tuning',
    prompt_length: P as number,
    // a TEXT init without its text cannot be redrawn; the values are loaded anyway
    prompt_init: FROM_PEFT_INIT[init] === 'from_string' && !text ? 'random_normal' : FROM_PEFT_INIT[init],
    prompt_init_text: text,
    peft_submodules: submodules,
    peft: structuredClone(cfg),
  });
  return { config, values: t.data };
}

/**
 * adapter_config.json and tensors as PEFT saves a PROMPT_TUNING adapter for a SEQ_2_SEQ_LM model: the fields of
 * an imported adapter's config come back unchanged; a new one says num_transformer_submodules 1 (its tensor
 * holds the encoder prompt only, which is all PEFT's forward reads). `prefix_after_bos` has no PEFT form.
 */
export function exportPeftPrompt(dims: ModelDims, c: PromptTuningConfig, prompt: FloatTensor): { config: Record<string, unknown>; tensors: Map<string, FloatTensor> } {
  if (c.combine !== 'prefix') throw new UnsupportedError(`PEFT puts prompts in front of the input only; combine '${c.combine}' has no PEFT form`, 'combine');
  if (c.prompt_length === 0) throw new UnsupportedError('PEFT prompt tuning needs num_virtual_tokens ≥ 1; this adapter has prompt_length 0', 'prompt_length');
  const origin = c.peft ?? {};
  const config = {
    base_model_name_or_path: null,
    revision: null,
    task_type: 'SEQ_2_SEQ_LM',
    inference_mode: true,
    num_attention_heads: dims.numHeads,
    num_layers: dims.numEncoderLayers,
    modules_to_save: null,
    // inference_mode skips PEFT's init; TEXT without its tokenizer would fail PEFT's config check
    prompt_tuning_init: 'RANDOM',
    prompt_tuning_init_text: null,
    tokenizer_name_or_path: null,
    tokenizer_kwargs: null,
    ...origin,
    peft_type: 'PROMPT_TUNING',
    num_virtual_tokens: c.prompt_length,
    token_dim: dims.dModel,
    num_transformer_submodules: c.peft_submodules,
  };
  return { config, tensors: new Map([['prompt_embeddings', prompt]]) };
}
