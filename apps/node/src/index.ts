/** Programmatic access to the CLI's pieces (used by its tests and by tools/bench). */
export { buildProgram, main } from './cli.js';
export { BUNDLED_MODEL, UsageError, parseAdapterSpec, parseComposition, parseIds, padRows, trimGenerated, loadModel, loadAdapters, startBackend } from './common.js';
export { createAdapterServer, type AdapterServer, type ServeOptions, type ServerStats } from './serve.js';
export { shiftExamples, shiftToken, greedyIds, evaluate, scoreOutputs, batchOf, type Example } from './task.js';
export { trainAdapter, hasCheckpoint, type TrainOptions, type TrainResult } from './training.js';
export { writeCheckpoint } from './merge.js';
export { runDemo } from './demo.js';
