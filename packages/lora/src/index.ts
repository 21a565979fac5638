import { registerMethod, type AdapterMethod, type BlockType, type ModelAccess } from '@adapterkit/core';
import { normalizeLoraConfig, PRESETS } from './config.js';
import { LoraRuntime } from './runtime.js';

/**
 * LoRA and IA3 as one method (as `adapters`: IA3 is LoRA with composition_mode 'scale'). Importing this
 * package registers it with core, so configs 'lora', 'ia3' and "lora[r=4,alpha=8]" resolve and PEFT
 * LORA / IA3 and AdapterHub `adapters` (architecture 'lora') directories load.
 */
export const loraMethod: AdapterMethod = {
  name: 'lora',
  configMethods: ['lora', 'ia3'],
  presets: PRESETS,
  supportedBlocks: new Set<BlockType>(['Stack', 'Parallel', 'BatchSplit', 'Average']),
  // a sequence gate averages over the sequence it has seen
  decodesRowwise: (config) => config.use_gating !== true,
  peftTypes: ['LORA', 'IA3', 'VERA'],
  adaptersArchitectures: ['lora'],
  // `<module>.loras.<name>.…`; VeRA's shared projections `shared_parameters.<name>.lora_A|lora_B`
  ownsAdaptersKey: (key, name) => key.includes(`.loras.${name}.`) || key.startsWith(`shared_parameters.${name}.lora_`),
  normalizeConfig: normalizeLoraConfig,
  attach: (model: ModelAccess) => new LoraRuntime(model),
};

registerMethod(loraMethod);

export { LoraRuntime } from './runtime.js';
export { moduleMatches } from './peft.js';
export { normalizeLoraConfig, scalingOf, LORA_DEFAULTS, IA3_DEFAULTS, PRESETS, type LoraConfig, type LoraOptions } from './config.js';
export { importPeft, exportPeft } from './peft.js';
export { importAdapters, exportAdapters } from './adapters-format.js';
