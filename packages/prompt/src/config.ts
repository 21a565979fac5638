import { ConfigError, type AdapterConfig } from '@adapterkit/core';

/** How the prompt's first values are drawn: `adapters`' two ways, and PEFT's RANDOM and SAMPLE_VOCAB. */
export type PromptInit = 'random_uniform' | 'from_string' | 'random_normal' | 'sample_vocab';
/** Where the prompt goes: in front of the input, or after its first token (`adapters`' `prefix_after_bos`). */
export type PromptCombine = 'prefix' | 'prefix_after_bos';

/**
 * `adapters`' PromptTuningConfig, plus PEFT's two inits (`random_normal` = PEFT RANDOM, nn.Embedding's N(0, 1);
 * `sample_vocab` = embeddings of random vocabulary tokens) and `peft_submodules` (set by PEFT import).
 */
export interface PromptTuningConfig extends AdapterConfig {
  method: 'prompt_tuning';
  prompt_length: number;
  prompt_init: PromptInit;
  prompt_init_text: string | null;
  random_uniform_scale: number;
  combine: PromptCombine;
  init_weights_seed: number | null;
  /**
   * PEFT's num_transformer_submodules: a SEQ_2_SEQ_LM prompt saved by PEFT holds 2 × prompt_length rows, of
   * which PEFT's PROMPT_TUNING forward and generate use the first prompt_length (the encoder's); the rest is
   * kept only so that an export writes the tensor back unchanged.
   */
  peft_submodules: 1 | 2;
  /** The adapter_config.json a PEFT import came from (an export writes its fields back). */
  peft: Record<string, unknown> | null;
}

export const PROMPT_DEFAULTS: Omit<PromptTuningConfig, 'method'> = {
  prompt_length: 10,
  prompt_init: 'random_uniform',
  prompt_init_text: null,
  random_uniform_scale: 0.5,
  combine: 'prefix',
  init_weights_seed: null,
  peft_submodules: 1,
  peft: null,
};

const INITS: readonly PromptInit[] = ['random_uniform', 'from_string', 'random_normal', 'sample_vocab'];
const COMBINES: readonly PromptCombine[] = ['prefix', 'prefix_after_bos'];

/** Fills `adapters`' defaults and validates every option; unknown options are a ConfigError naming them. */
export function normalizePromptConfig(raw: AdapterConfig): PromptTuningConfig {
  if (raw.method !== 'prompt_tuning') throw new ConfigError(`prompt tuning configs have method 'prompt_tuning', got '${raw.method}'`, 'method');
  for (const key of Object.keys(raw)) {
    if (key !== 'method' && !(key in PROMPT_DEFAULTS)) throw new ConfigError(`unknown prompt_tuning option '${key}' (known: ${Object.keys(PROMPT_DEFAULTS).join(', ')})`, key);
  }
  const c = { ...PROMPT_DEFAULTS, ...raw, method: 'prompt_tuning' } as PromptTuningConfig;
  const bad = (key: string, want: string) => new ConfigError(`prompt_tuning option '${key}' must be ${want}, got ${JSON.stringify(c[key])}`, key);
  if (!Number.isInteger(c.prompt_length) || c.prompt_length < 0) throw bad('prompt_length', 'an integer ≥ 0');
  if (!INITS.includes(c.prompt_init)) throw bad('prompt_init', `one of ${INITS.join(', ')}`);
  if (!COMBINES.includes(c.combine)) throw bad('combine', `one of ${COMBINES.join(', ')}`);
  if (c.prompt_init_text !== null && typeof c.prompt_init_text !== 'string') throw bad('prompt_init_text', 'a string or null');
  if (c.prompt_init === 'from_string' && !c.prompt_init_text) throw bad('prompt_init_text', "a non-empty text when prompt_init is 'from_string'");
  if (typeof c.random_uniform_scale !== 'number' || !(c.random_uniform_scale >= 0) || !Number.isFinite(c.random_uniform_scale))
    throw bad('random_uniform_scale', 'a finite number ≥ 0');
  if (c.init_weights_seed !== null && !Number.isInteger(c.init_weights_seed)) throw bad('init_weights_seed', 'an integer or null');
  if (c.peft_submodules !== 1 && c.peft_submodules !== 2) throw bad('peft_submodules', '1 or 2');
  if (c.peft !== null && (typeof c.peft !== 'object' || Array.isArray(c.peft))) throw bad('peft', 'a PEFT adapter_config object or null');
  return c;
}
