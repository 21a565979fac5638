import { type GenerateOptions, type GenerationDefaults, generate, generateText, type HubOptions, InputError, openSource, parseGenerationConfig, parseJson } from '@adapterkit/core';
import { parseT5Config, type T5Config } from './config.js';
import { T5Model } from './model.js';
import { T5Tokenizer } from './tokenizer.js';
import { expectedWeights, readCheckpoint, validateWeights } from './weights.js';

/**
 * T5ForConditionalGeneration: `fromPretrained(dirUrlOrHubId)` loads config.json, model.safetensors (or a sharded
 * index) — else pytorch_model.bin (or its sharded index), read safely without executing the pickle —,
 * generation_config.json and tokenizer.json from a Hugging Face model directory.
 */
export class T5ForConditionalGeneration extends T5Model {
  tokenizer?: T5Tokenizer;

  constructor(config: T5Config, weights: Parameters<typeof validateWeights>[1], tokenizer?: T5Tokenizer, generationConfig?: Partial<GenerationDefaults>) {
    super(config, validateWeights(config, weights));
    this.tokenizer = tokenizer;
    this.generationConfig = { ...this.generationConfig, ...generationConfig };
  }

  /**
   * Loads a model from a local directory, a URL, or a Hugging Face Hub id (`google/flan-t5-small`,
   * `org/name@revision`), cached as huggingface_hub caches (Node) or in the Cache API (browser).
   */
  static async fromPretrained(source: string, options: HubOptions = {}): Promise<T5ForConditionalGeneration> {
    const files = await openSource(source, options);
    const json = async (name: string) => parseJson(new TextDecoder().decode(await files.read(name)), name);
    const config = parseT5Config(await json('config.json'));
    const weights = await readCheckpoint(files);
    let tokenizer: T5Tokenizer | undefined;
    if (await files.has('tokenizer.json')) {
      const tokCfg = (await files.has('tokenizer_config.json')) ? await json('tokenizer_config.json') : {};
      tokenizer = new T5Tokenizer(await json('tokenizer.json'), tokCfg, config.padTokenId);
    }
    // generation_config.json: every field generate uses (transformers' names, snake_case → camelCase)
    const gen = (await files.has('generation_config.json')) ? parseGenerationConfig(await json('generation_config.json')) : {};
    return new T5ForConditionalGeneration(config, weights, tokenizer, gen);
  }

  /** A model of the given config.json contents with seeded random weights (benchmarks, tests). */
  static random(rawConfig: Record<string, unknown>, seed = 0): T5ForConditionalGeneration {
    const config = parseT5Config(rawConfig);
    return new T5ForConditionalGeneration(config, T5Model.randomWeights(config, expectedWeights(config), seed));
  }

  /** The tokenizer's ids for one text (`</s>` appended); methods use it to initialise from text (prompt tuning). */
  encodeText(text: string): number[] {
    if (!this.tokenizer) throw new InputError('this model has no tokenizer (tokenizer.json was not in its directory)', 'tokenizer');
    return this.tokenizer.encode(text);
  }

  generate(options: GenerateOptions): Promise<number[][]> {
    return generate(this, options);
  }

  generateText(texts: string[], options: Omit<GenerateOptions, 'inputIds' | 'attentionMask'> = {}): Promise<string[]> {
    return generateText(this, texts, options);
  }
}
