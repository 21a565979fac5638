/** What the native CPU kernels are doing in this process (Node only; elsewhere they are never available). */
export interface NativeKernelsInfo {
  available: boolean;
  /** Why not, when unavailable. */
  reason?: string;
  /** Threads the kernels use (OMP_NUM_THREADS, else every processor). */
  threads?: number;
  /** The vector instructions the GEMM was built for. */
  simd?: string;
}

let info: NativeKernelsInfo = { available: false, reason: 'not loaded (the browser build has no native kernels)' };

export function nativeKernelsInfo(): NativeKernelsInfo {
  return info;
}

export function setNativeKernelsInfo(next: NativeKernelsInfo): void {
  info = next;
}

let threadSetter: ((n: number) => void) | undefined;

/** Called by the loader when the addon can change its thread count. */
export function setNativeThreadSetter(set: (n: number) => void): void {
  threadSetter = set;
}

/**
 * Sets how many threads the native kernels use from now on, in the whole process (a server's generation
 * worker leaves a core to its HTTP thread). Returns the count in effect, or undefined where there are no
 * native kernels (the browser, an addon that was not built): a no-op there.
 */
export function setNativeKernelThreads(threads: number): number | undefined {
  if (!Number.isInteger(threads) || threads < 1 || threads > 1024) throw new RangeError(`native kernel threads must be an integer in 1..1024, got ${threads}`);
  if (!info.available || !threadSetter) return undefined;
  threadSetter(threads);
  info = { ...info, threads };
  return threads;
}
