/**
 * @adapterkit/kernels — the named ops the models and methods are built from (DESIGN.md §7): RMS norm,
 * linear with adapter terms, attention with position bias/mask/prefix/causality, cache write,
 * cross-entropy. Each has a reference made of plain tfjs ops and fused kernels registered by name per
 * backend (WGSL programs on WebGPU; native CPU kernels for wasm in Node, from the `node` entry point).
 * ADAPTERKIT_KERNELS=reference (or setKernelMode('reference')) forces the reference everywhere.
 */
import { registerFusedGradients } from './gradients.js';
import { registerWebGpuKernels } from './webgpu/register.js';

export * from './types.js';
export { rmsNorm, linear, attention, cacheWrite, crossEntropy, linearBackward, attentionBackward, adamW, KernelArgumentError, type AdamWStep } from './ops.js';
export { LINEAR_GRADIENTS, ATTENTION_GRADIENTS, type LinearGradient, type AttentionGradient } from './backward.js';
export { kernelMode, setKernelMode, withKernelMode, fusedKernelActive, type KernelMode } from './mode.js';
export { ACTIVATIONS, FUSED_ACTIVATIONS, activation, isActivation, type ActivationName, type FusedActivation } from './activations.js';
export { matMulLast, perRow } from './reference.js';
export * as reference from './reference.js';
export { nativeKernelsInfo, setNativeKernelThreads, type NativeKernelsInfo } from './native/info.js';

registerFusedGradients();
registerWebGpuKernels();
