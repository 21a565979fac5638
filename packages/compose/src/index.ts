export * from './dispatch.js';
// Re-export the block constructors so users can `import { Stack, Parallel } from '@adapterkit/compose'`.
export { Stack, Parallel, BatchSplit, Fuse, Average, Split, normalizeComposition, parallelChannels } from '@adapterkit/core';
