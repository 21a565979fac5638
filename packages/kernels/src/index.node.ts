/**
 * The Node entry point: everything in index.ts, plus the native CPU kernels (OpenBLAS GEMM, fused
 * attention) registered for the wasm backend when the addon was built (see scripts/build-native.mjs).
 */
export * from './index.js';
import { registerNativeKernels } from './native/register.js';

registerNativeKernels();
