import { tf } from '@adapterkit/backend';

/**
 * 'fused': named ops run the fused kernel registered for the active backend when there is one, else their
 * reference. 'reference': always the reference (plain tfjs ops) — for debugging and for equivalence tests.
 * Set with ADAPTERKIT_KERNELS=reference|fused (Node) or setKernelMode().
 */
export type KernelMode = 'fused' | 'reference';

let mode: KernelMode | undefined;

function fromEnvironment(): KernelMode {
  const value = typeof process !== 'undefined' ? process.env?.ADAPTERKIT_KERNELS : undefined;
  if (value === undefined || value === '' || value === 'fused') return 'fused';
  if (value === 'reference') return 'reference';
  throw new Error(`ADAPTERKIT_KERNELS must be 'fused' or 'reference', got '${value}'`);
}

export function kernelMode(): KernelMode {
  mode ??= fromEnvironment();
  return mode;
}

export function setKernelMode(next: KernelMode): void {
  if (next !== 'fused' && next !== 'reference') throw new Error(`kernel mode must be 'fused' or 'reference', got '${String(next)}'`);
  mode = next;
}

/** Runs `work` with the given mode, restoring the previous one afterwards (tests, benchmarks). */
export function withKernelMode<T>(next: KernelMode, work: () => T): T {
  const previous = kernelMode();
  setKernelMode(next);
  try {
    return work();
  } finally {
    setKernelMode(previous);
  }
}

/** Whether `kernelName` runs fused now: fused mode and a kernel registered for the active backend. */
export function fusedKernelActive(kernelName: string): boolean {
  return kernelMode() === 'fused' && tf.getKernel(kernelName, tf.getBackend()) !== undefined;
}
