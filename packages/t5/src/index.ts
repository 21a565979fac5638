export { parseT5Config, FLAN_T5_SMALL_SHAPE, type T5Config } from './config.js';
export { T5Model, MASK_VALUE, type ForwardInput, type ForwardOutput, type DecoderState, type LayerCache } from './model.js';
export type { KeysValues } from './attention.js';
export { T5ForConditionalGeneration } from './pretrained.js';
export { T5Tokenizer, MAX_TEXT_LENGTH, type BatchEncoding } from './tokenizer.js';
export { generate, generateText, type GenerateOptions, type GenerationDefaults, type IdsInput, type Seq2SeqModel } from '@adapterkit/core';
export { PositionBias, relativePositionBucket } from './position-bias.js';
export { readCheckpoint, expectedWeights, validateWeights } from './weights.js';
