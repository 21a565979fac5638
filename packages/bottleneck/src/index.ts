import { registerMethod } from '@adapterkit/core';
import { bottleneckMethod } from './method.js';

registerMethod(bottleneckMethod);

export { bottleneckMethod } from './method.js';

export { normalizeBottleneckConfig, reductionFactorAt, PRESETS, NON_LINEARITIES, BN_INITS, type BottleneckConfig } from './config.js';
export { BottleneckRuntime } from './runtime.js';
export {
  addAdapterFusion,
  deleteAdapterFusion,
  adapterFusionVariables,
  trainAdapterFusion,
  fusionRegularizationLoss,
  saveAdapterFusion,
  loadAdapterFusion,
} from './fusion-api.js';
export { normalizeFusionConfig, FUSION_PRESETS, type AdapterFusionConfig } from './fusion.js';
