import { exists, generate, generateText, InputError, joinPath, parseGenerationConfig, parseJson, readText, type GenerateOptions, type GenerationDefaults } from '@adapterkit/core';
import { parseT5Config, type T5Config } from './config.js';
import { T5Model } from './model.js';
import { T5Tokenizer } from './tokenizer.js';
import { expectedWeights, readCheckpoint, validateWeights } from './weights.js';

/**
 * T5ForConditionalGeneration: `fromPretrained(dirOrUrl)` loads config.json, model.safetensors (or a sharded
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

  static async fromPretrained(source: string): Promise<T5ForConditionalGeneration> {
    const config = parseT5Config(parseJson(await readText(joinPath(source, 'config.json')), 'config.json'));
    const weights = await readCheckpoint(source);
    let tokenizer: T5Tokenizer | undefined;
    if (await exists(joinPath(source, 'tokenizer.json'))) {
      const tokCfgPath = joinPath(source, 'tokenizer_config.json');
      const tokCfg = (await exists(tokCfgPath)) ? parseJson(await readText(tokCfgPath), 'tokenizer_config.json') : {};
      tokenizer = new T5Tokenizer(parseJson(await readText(joinPath(source, 'tokenizer.json')), 'tokenizer.json'), tokCfg, config.padTokenId);
    }
    // generation_config.json: every field generate uses (transformers' names, snake_case → camelCase)
    const genPath = joinPath(source, 'generation_config.json');
    const gen = (await exists(genPath)) ? parseGenerationConfig(parseJson(await readText(genPath), 'generation_config.json')) : {};
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
