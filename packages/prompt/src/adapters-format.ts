import type { Variable } from '@adapterkit/backend';
import { UnsupportedError, type TensorSlot } from '@adapterkit/core';
import { normalizePromptConfig, type PromptTuningConfig } from './config.js';

/**
 * Where `adapters` keeps a prompt: its PromptTuningLayer (`prompt_tuning` on the base model) holds
 * `prompt_tunings.<name>`, a PromptTuning module whose only parameter is `prompt_embedding` (nn.Embedding
 * [prompt_length, d_model]), so the state-dict key is `prompt_tuning.prompt_tunings.<name>.prompt_embedding.weight`.
 * An imported PEFT prompt of 2P rows contributes its first P (the encoder's, all that PEFT's forward reads).
 */
export function promptSlot(variable: Variable, promptLength: number, name: string): TensorSlot {
  return { key: `prompt_tuning.prompt_tunings.${name}.prompt_embedding.weight`, shape: [promptLength, variable.shape[1] as number], variable, transposed: false };
}

/**
 * The config `adapters` saves for a prompt (PromptTuningConfig's dataclass fields; `random_uniform_scale` is a plain
 * class attribute there, not a field, so it is not written). `adapters` runs the init when it adds the adapter, before
 * loading the values, and knows only `random_uniform` and `from_string` (which needs a tokenizer path in the model
 * config): every export says `random_uniform` — the init only drew the first values, the file's values replace them.
 */
export function adaptersPromptConfig(c: PromptTuningConfig, name: string): Record<string, unknown> {
  if (c.prompt_length === 0) throw new UnsupportedError(`prompt adapter '${name}' has prompt_length 0, which has no adapters file here`, 'prompt_length');
  return {
    architecture: 'prompt_tuning',
    prompt_length: c.prompt_length,
    prompt_init: 'random_uniform',
    prompt_init_text: c.prompt_init_text,
    combine: c.combine,
    init_weights_seed: c.init_weights_seed,
  };
}

/** A prompt_tuning config from an `adapters` one (unknown fields: ConfigError). */
export function promptConfigFromAdapters(raw: Record<string, unknown>, name: string): PromptTuningConfig {
  const { architecture, ...options } = structuredClone(raw);
  if (architecture !== 'prompt_tuning') throw new UnsupportedError(`the prompt method imports architecture 'prompt_tuning', not ${JSON.stringify(architecture)}`, 'architecture');
  const c = normalizePromptConfig({ method: 'prompt_tuning', ...options });
  if (c.prompt_length === 0) throw new UnsupportedError(`adapters prompt '${name}' has prompt_length 0, which has no parameters here`, 'prompt_length');
  return c;
}
