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
