/** Registers the WGSL kernels of the named ops for the 'webgpu' backend. */
export function registerWebGpuKernels(): void {
  // filled in with the WGSL programs
}
