/**
 * @adapterkit/backend — the only package that imports TensorFlow.js backend packages.
 *
 * Every other adapterkit package imports `tf` from here, so that one tfjs engine (one set of registered
 * kernels and gradients) serves the whole process.
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmFallbackKernels } from './wasm-kernels.js';

export { tf };
export type { Tensor, Variable, Rank } from '@tensorflow/tfjs';
export { expectNoLeaks, withLeakCheck, countTensors } from './leaks.js';
/** Where the wasm backend fetches its .wasm files in a browser bundle; call before initBackend('wasm'). */
export { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

export type BackendName = 'cpu' | 'wasm' | 'webgpu' | 'tensorflow';
export type BackendRequest = BackendName | 'auto';

export interface BackendInfo {
  /** The tfjs backend that is active. */
  name: BackendName;
  /** Human-readable device, e.g. "NVIDIA H100 (webgpu/vulkan)" or "SwiftShader (software)". */
  device: string;
  /** True when the device is a software/fallback adapter (SwiftShader, CPU emulation). */
  isFallbackAdapter: boolean;
  /** Whether gradients work for every op adapterkit trains with. */
  supportsTraining: boolean;
  /** 'node' or 'browser'. */
  platform: 'node' | 'browser';
}

/** Thrown when a backend cannot be started; says which package, why, and how to fix it. */
export class BackendUnavailableError extends Error {
  readonly code = 'BACKEND_UNAVAILABLE';
  constructor(
    readonly backend: BackendName,
    readonly packageName: string,
    readonly reason: string,
    readonly howToInstall: string,
  ) {
    super(`Backend '${backend}' is unavailable: ${reason}. It needs ${packageName}; ${howToInstall}`);
    this.name = 'BackendUnavailableError';
  }
}

/** True in Node (not in a browser, nor in a bundle running in one): the one place this is decided. */
export const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof (globalThis as { window?: unknown }).window === 'undefined';

/**
 * Imports a module by a name the bundler cannot see (Node built-ins, optional packages), typed by the
 * caller: `nodeImport<typeof import('node:fs')>('node:fs')`. Keeps bundlers from bundling Node-only code.
 */
export const nodeImport = <T>(name: string): Promise<T> => import(/* @vite-ignore */ name);

/** The parts of WebGPU this module touches (TypeScript's DOM typings do not include WebGPU). */
interface GpuAdapterInfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}
interface GpuLike {
  requestAdapter(options?: { powerPreference?: string }): Promise<{ info?: GpuAdapterInfoLike; isFallbackAdapter?: boolean } | null>;
}
/** The `webgpu` npm package (Dawn for Node). */
interface DawnModule {
  globals: object;
  create(flags: string[]): GpuLike;
}
const globalWithGpu = globalThis as { navigator?: { gpu?: GpuLike } };

let wasmKernelsRegistered = false;
let webgpuAdapterInfo: { description: string; isFallback: boolean } | undefined;
let current: BackendInfo | undefined;

/** Start a backend (idempotent for the same name) and make it tfjs's active backend. */
export async function initBackend(request: BackendRequest = 'auto', options: { quiet?: boolean } = {}): Promise<BackendInfo> {
  if (request === 'auto') return initAuto();
  if (current?.name === request && tf.getBackend() === backendKey(request)) return current;
  switch (request) {
    case 'cpu':
      await activate('cpu');
      current = { name: 'cpu', device: 'JavaScript (cpu)', isFallbackAdapter: false, supportsTraining: true, platform: platform() };
      break;
    case 'wasm':
      if (!wasmKernelsRegistered) {
        registerWasmFallbackKernels();
        wasmKernelsRegistered = true;
      }
      await activate('wasm');
      current = { name: 'wasm', device: 'WebAssembly (XNNPACK, SIMD)', isFallbackAdapter: false, supportsTraining: true, platform: platform() };
      break;
    case 'webgpu':
      current = await initWebGpu(options);
      break;
    case 'tensorflow':
      current = await initTensorflow();
      break;
    default:
      throw new BackendUnavailableError(request as BackendName, 'nothing', `unknown backend name '${String(request)}'`, "use one of 'cpu', 'wasm', 'webgpu', 'tensorflow', 'auto'");
  }
  return current!;
}

/** The active backend's description, or undefined before initBackend. */
export function currentBackend(): BackendInfo | undefined {
  return current;
}

function platform(): 'node' | 'browser' {
  return isNode ? 'node' : 'browser';
}

function backendKey(name: BackendName): string {
  return name === 'tensorflow' ? 'tensorflow' : name;
}

async function activate(name: string): Promise<void> {
  const ok = await tf.setBackend(name);
  if (!ok)
    throw new BackendUnavailableError(name as BackendName, `tfjs backend '${name}'`, 'tf.setBackend returned false', 'check the console for the backend initialisation error');
  await tf.ready();
  // tfjs's cpu backend prints a "Hi, looks like you are running TensorFlow.js in Node.js … install tfjs-node"
  // banner on its first tensor in Node. The backend was chosen on purpose (and tfjs-node is `tensorflow`, also
  // offered): mark the first use as done rather than silence every tfjs warning (PROD/IS_TEST would).
  if (name === 'cpu' && isNode) {
    const cpu = tf.backend() as { firstUse?: boolean };
    if (cpu.firstUse === true) cpu.firstUse = false;
  }
}

/** tensorflow > webgpu on real hardware > wasm > cpu. */
async function initAuto(): Promise<BackendInfo> {
  try {
    return await initBackend('tensorflow');
  } catch {
    /* optional: skipped silently */
  }
  try {
    await ensureWebGpuRegistered();
    if (webgpuAdapterInfo && !webgpuAdapterInfo.isFallback) return await initBackend('webgpu');
  } catch {
    /* no GPU reachable */
  }
  try {
    return await initBackend('wasm');
  } catch {
    return initBackend('cpu');
  }
}

async function ensureWebGpuRegistered(): Promise<void> {
  // The factory may already be registered by someone else (e.g. an app importing tfjs-backend-webgpu in a
  // browser); we still need the adapter description, so only return early once we have both.
  if (tf.findBackendFactory('webgpu') && webgpuAdapterInfo) return;
  if (!globalWithGpu.navigator?.gpu) {
    if (!isNode) {
      throw new BackendUnavailableError(
        'webgpu',
        'a browser with WebGPU',
        'navigator.gpu is absent',
        'use a WebGPU-capable browser (Chromium: --enable-unsafe-webgpu) or the wasm backend',
      );
    }
    // Node: Dawn through the `webgpu` package. In CI there is no GPU; SwiftShader's Vulkan driver
    // (shipped with Debian's chromium) stands in when nothing else is configured.
    if (!process.env.VK_ICD_FILENAMES && !hasHardwareVulkan()) {
      const swiftshader = '/usr/lib/chromium/vk_swiftshader_icd.json';
      if (await fileExists(swiftshader)) process.env.VK_ICD_FILENAMES = swiftshader;
    }
    if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
    let webgpu: DawnModule;
    try {
      webgpu = await nodeImport<DawnModule>('webgpu');
    } catch (e) {
      throw new BackendUnavailableError(
        'webgpu',
        'webgpu (npm, Dawn for Node)',
        `cannot import it (${(e as Error).message})`,
        'run `pnpm add webgpu` and install the Vulkan loader (`apt-get install libvulkan1`)',
      );
    }
    Object.assign(globalThis, webgpu.globals);
    const gpu = webgpu.create([]);
    globalWithGpu.navigator ??= {};
    Object.defineProperty(globalWithGpu.navigator, 'gpu', { value: gpu, configurable: true });
  }
  const gpu = globalWithGpu.navigator!.gpu!;
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    throw new BackendUnavailableError(
      'webgpu',
      'a WebGPU adapter',
      'navigator.gpu.requestAdapter() returned null (no Vulkan driver found)',
      'install the Vulkan loader (`apt-get install libvulkan1`) and a driver (GPU vendor driver, or Debian chromium for SwiftShader)',
    );
  }
  const info = adapter.info ?? {};
  const description = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ') || 'unknown adapter';
  const isFallback = Boolean(adapter.isFallbackAdapter || info.isFallbackAdapter) || /swiftshader|llvmpipe|lavapipe/i.test(description);
  webgpuAdapterInfo = { description, isFallback };
  // Register the tfjs webgpu backend only now: it registers itself at import time iff navigator.gpu exists.
  if (!tf.findBackendFactory('webgpu')) await import('@tensorflow/tfjs-backend-webgpu');
}

function hasHardwareVulkan(): boolean {
  return false; // Dawn picks a hardware ICD itself when the system has one; we only set SwiftShader when nothing is set.
}

async function fileExists(path: string): Promise<boolean> {
  try {
    const fs = await nodeImport<typeof import('node:fs')>('node:fs');
    return fs.existsSync(path);
  } catch {
    return false;
  }
}

async function initWebGpu(_options: { quiet?: boolean }): Promise<BackendInfo> {
  await ensureWebGpuRegistered();
  // Small ops silently run on the CPU by default; that both hides WebGPU bugs and skews timings.
  tf.env().set('WEBGPU_CPU_FORWARD', false);
  await activate('webgpu');
  return {
    name: 'webgpu',
    device: `${webgpuAdapterInfo!.description} (webgpu)`,
    isFallbackAdapter: webgpuAdapterInfo!.isFallback,
    supportsTraining: true,
    platform: platform(),
  };
}

async function initTensorflow(): Promise<BackendInfo> {
  if (!isNode) {
    throw new BackendUnavailableError('tensorflow', '@tensorflow/tfjs-node-gpu', 'it only runs in Node', "use 'webgpu' or 'wasm' in the browser");
  }
  const reasons: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await nodeImport(pkg);
      await activate('tensorflow');
      return { name: 'tensorflow', device: `libtensorflow (${pkg})`, isFallbackAdapter: false, supportsTraining: true, platform: 'node' };
    } catch (e) {
      const msg = (e as Error).message ?? String(e);
      reasons.push(/Cannot find (module|package)/.test(msg) ? `${pkg} is not installed` : `${pkg} failed to load: ${msg.split('\n')[0]}`);
    }
  }
  throw new BackendUnavailableError(
    'tensorflow',
    '@tensorflow/tfjs-node-gpu (or @tensorflow/tfjs-node)',
    reasons.join('; '),
    'install it with `pnpm add @tensorflow/tfjs-node-gpu@4.22.0` (needs CUDA 11.2 + cuDNN 8.1 and network access to download libtensorflow 2.9.1), or use the webgpu backend',
  );
}

/** Read a tensor's values without blocking (WebGPU in Node cannot read synchronously). */
export async function readFloat32(t: tf.Tensor): Promise<Float32Array> {
  return (await t.data()) as Float32Array;
}

/**
 * tf.tidy for a function returning a structure of tensors (objects and arrays of any depth, with other
 * values beside them): tensors inside the result survive the scope, every other tensor made in it is freed.
 */
export function tidyResult<T>(fn: () => T): T {
  return tf.tidy(fn as () => tf.TensorContainer) as T;
}
