import { defineConfig } from 'vitest/config';
// Tests run against sibling packages' TypeScript sources (the "@adapterkit/source" export condition),
// so a change in core is seen by t5's tests without a rebuild.
export default defineConfig({
  resolve: { conditions: ['@adapterkit/source'] },
  ssr: { resolve: { conditions: ['@adapterkit/source'], externalConditions: ['@adapterkit/source'] } },
  // Budgets from the measured worst case on a busy 2-core machine (load ≈ 20 plus `yes > /dev/null` ×2):
  // 8.8 s for cpu + wasm (a README example loading a model through the Hub stand-in); WebGPU on SwiftShader
  // (the default set includes it) is slower per scenario under such load, hence the generous budget.
  test: { testTimeout: 300_000, hookTimeout: 120_000, pool: 'forks' },
});
