import { defineConfig } from 'vitest/config';
// Tests run against sibling packages' TypeScript sources (the "@adapterkit/source" export condition),
// so a change in core is seen by t5's tests without a rebuild.
export default defineConfig({
  resolve: { conditions: ['@adapterkit/source'] },
  ssr: { resolve: { conditions: ['@adapterkit/source'], externalConditions: ['@adapterkit/source'] } },
  test: { testTimeout: 120_000, hookTimeout: 120_000, pool: 'forks' },
});
