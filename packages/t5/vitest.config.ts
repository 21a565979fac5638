import { defineConfig } from 'vitest/config';
// Tests run against sibling packages' TypeScript sources (the "@adapterkit/source" export condition),
// so a change in core is seen by t5's tests without a rebuild.
export default defineConfig({
  resolve: { conditions: ['@adapterkit/source'] },
  ssr: { resolve: { conditions: ['@adapterkit/source'], externalConditions: ['@adapterkit/source'] } },
  // Budgets from the measured worst case on a busy 2-core machine (load ≈ 20 plus `yes > /dev/null` ×2,
  // cpu + wasm): the cpu fuzz of 1200 mutated checkpoints took 98 s, the next 53 s; ~2× headroom. WebGPU
  // (ADAPTERKIT_BACKENDS with webgpu, SwiftShader) is slower still: 83 s for one generation test when alone.
  test: { testTimeout: (process.env.ADAPTERKIT_BACKENDS ?? '').includes('webgpu') ? 400_000 : 200_000, hookTimeout: 120_000, pool: 'forks' },
});
