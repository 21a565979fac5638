import type { AdapterMethod, BlockType, ModelAccess } from '@adapterkit/core';
import { normalizeBottleneckConfig, PRESETS } from './config.js';
import { BottleneckRuntime } from './runtime.js';

/**
 * Bottleneck adapters (AdapterHub `adapters`' BnConfig): seq_bn (Pfeiffer), double_seq_bn (Houlsby), par_bn
 * (He et al.), scaled_par_bn and the general `bn` config. Importing the package registers the method.
 */
export const bottleneckMethod: AdapterMethod<BottleneckRuntime> = {
  name: 'bottleneck',
  configMethods: ['bottleneck'],
  presets: PRESETS,
  // Fuse needs its fusion layers first: addAdapterFusion(model, Fuse('a', 'b')).
  supportedBlocks: new Set<BlockType>(['Stack', 'Parallel', 'BatchSplit', 'Average', 'Split', 'Fuse']),
  // a sequence gate averages over the sequence it has seen
  decodesRowwise: (config) => config.use_gating !== true,
  normalizeConfig: normalizeBottleneckConfig,
  adaptersArchitectures: ['bottleneck'],
  // `<sub-layer>.adapters.<name>.…`, the invertible adapter, Compacter's shared `shared_parameters.<name>.phm_*`
  ownsAdaptersKey: (key, name) => key.includes(`.adapters.${name}.`) || key.startsWith(`encoder.invertible_adapters.${name}.`) || key.startsWith(`shared_parameters.${name}.phm_`),
  attach: (model: ModelAccess) => new BottleneckRuntime(model),
};
