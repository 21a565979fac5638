import { defineConfig } from 'vitest/config';
// Tests run against sibling packages' TypeScript sources (the "@adapterkit/source" export condition),
// so a change in core is seen by t5's tests without a rebuild.
export default defineConfig({
  resolve: { conditions: ['@adapterkit/source'] },
  ssr: { resolve: { conditions: ['@adapterkit/source'], externalConditions: ['@adapterkit/source'] } },
  // Budgets from the measured worst case on a busy 2-core machine (load ≈ 20 plus `yes > /dev/null` ×2,
  // cpu + wasm): 47 s (Parallel of 5 LoRAs over a 140-token sequence on cpu), the next 10 s; ~2× headroom.
  test: { testTimeout: (process.env.ADAPTERKIT_BACKENDS ?? '').includes('webgpu') ? 300_000 : 100_000, hookTimeout: 120_000, pool: 'forks' },
});
