export interface NativeKernelsInfo {
  available: boolean;
  /** Why not, when unavailable. */
  reason?: string;
  threads?: number;
  blas?: string;
}

let info: NativeKernelsInfo = { available: false, reason: 'not loaded' };

export function nativeKernelsInfo(): NativeKernelsInfo {
  return info;
}

export function registerNativeKernels(): void {
  info = { available: false, reason: 'not built' };
}
