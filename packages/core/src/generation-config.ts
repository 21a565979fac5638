import { ConfigError } from './errors.js';
import type { ProcessorSettings } from './logits-processors.js';

/** The generation settings a call or a generation_config.json may set (camelCase of transformers' names). */
export interface GenerationSettings extends ProcessorSettings {
  /** Tokens to generate after the decoder start token. */
  maxNewTokens?: number;
  /** Total decoder length, decoder start token included (transformers' max_length); maxNewTokens wins. */
  maxLength?: number;
  numBeams?: number;
  /** Sequences returned per input: the best finished beams, or independent samples. */
  numReturnSequences?: number;
  lengthPenalty?: number;
  /** true | false | 'never', as transformers. */
  earlyStopping?: boolean | 'never';
  doSample?: boolean;
}

/** generation_config.json's values (or the model config's) that generate uses when an option is absent. */
export interface GenerationDefaults extends GenerationSettings {
  decoderStartTokenId: number;
  eosTokenId: number | number[];
  padTokenId: number;
}

type Check = (v: unknown) => string | undefined;
const isInt = (v: unknown, min: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min;
const int =
  (min: number): Check =>
  (v) =>
    isInt(v, min) ? undefined : `an integer ≥ ${min}`;
const positive: Check = (v) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? undefined : 'a finite number > 0');
const inRange =
  (lowOpen: boolean): Check =>
  (v) =>
    typeof v === 'number' && (lowOpen ? v > 0 : v >= 0) && v <= 1 ? undefined : `a number in ${lowOpen ? '(0' : '[0'}, 1]`;
const idOrIds: Check = (v) => (isInt(v, 0) || (Array.isArray(v) && v.length > 0 && v.every((x) => isInt(x, 0))) ? undefined : 'a token id or a non-empty list of token ids');

/** Every setting with its check: one place for what generate options and generation_config.json accept. */
const SETTINGS: { readonly [K in keyof Required<GenerationSettings>]: Check } = {
  maxNewTokens: int(0),
  maxLength: int(1),
  minLength: int(0),
  minNewTokens: int(0),
  numBeams: int(1),
  numReturnSequences: int(1),
  lengthPenalty: (v) => (typeof v === 'number' && Number.isFinite(v) ? undefined : 'a finite number'),
  earlyStopping: (v) => (typeof v === 'boolean' || v === 'never' ? undefined : "true, false or 'never'"),
  doSample: (v) => (typeof v === 'boolean' ? undefined : 'a boolean'),
  temperature: positive,
  topK: int(0),
  topP: inRange(false),
  typicalP: inRange(true),
  repetitionPenalty: positive,
  noRepeatNgramSize: int(0),
  encoderNoRepeatNgramSize: int(0),
  badWordsIds: (v) =>
    Array.isArray(v) && v.length > 0 && v.every((w) => Array.isArray(w) && w.length > 0 && w.every((x) => isInt(x, 0)))
      ? undefined
      : 'a non-empty list of non-empty lists of token ids',
  forcedBosTokenId: int(0),
  forcedEosTokenId: idOrIds,
};

export const GENERATION_SETTING_NAMES = Object.keys(SETTINGS) as (keyof GenerationSettings)[];

/** Why `value` is not acceptable for `key` ("an integer ≥ 0"), or undefined when it is. */
export function checkGenerationSetting(key: keyof GenerationSettings, value: unknown): string | undefined {
  return SETTINGS[key](value);
}

const snake = (camel: string) => camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/**
 * Reads generation_config.json as transformers does: each known field (snake_case) becomes the camelCase
 * default of generate; null means unset; fields generate does not use (output_scores, …) are ignored; a
 * known field of the wrong type or range is a ConfigError naming it.
 */
export function parseGenerationConfig(raw: unknown, file = 'generation_config.json'): Partial<GenerationDefaults> {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${file} must be a JSON object`);
  const r = raw as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  const read = (camel: string, check: Check) => {
    const v = r[snake(camel)];
    if (v === null || v === undefined) return;
    const problem = check(v);
    if (problem) throw new ConfigError(`${file}: '${snake(camel)}' must be ${problem}, got ${JSON.stringify(v)}`, snake(camel));
    out[camel] = v;
  };
  read('decoderStartTokenId', int(0));
  read('eosTokenId', idOrIds);
  read('padTokenId', int(0));
  for (const key of GENERATION_SETTING_NAMES) read(key, SETTINGS[key]);
  return out as Partial<GenerationDefaults>;
}
