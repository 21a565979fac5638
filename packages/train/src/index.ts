export {
  Optimizer,
  AdamW,
  Adafactor,
  SGD,
  createOptimizer,
  clipByGlobalNorm,
  globalNorm,
  scaleToNorm,
  type NamedVariable,
  type OptimizerState,
  type OptimizerName,
  type AdamWOptions,
  type AdafactorOptions,
  type SgdOptions,
} from './optimizers.js';
export { createSchedule, type Schedule, type ScheduleConfig, type ScheduleName } from './schedules.js';
export {
  DatasetError,
  arraySource,
  jsonlSource,
  jsonlFileSource,
  toSource,
  encodeRow,
  collate,
  BatchStream,
  evalBatches,
  type DataSource,
  type DataInput,
  type ExampleRow,
  type TextExample,
  type TokenizedExample,
  type Batch,
  type DataPosition,
  type EncoderOptions,
} from './data.js';
export { CHECKPOINT_FORMAT, CHECKPOINT_VERSION, packCheckpoint, unpackCheckpoint, writeCheckpoint, readCheckpoint, type CheckpointFiles, type TrainerState } from './checkpoint.js';
export { Trainer, type TrainableModel, type TrainerOptions, type TrainProgress, type EvalResult, type EvalMetric, type TrainResult } from './trainer.js';
export { NonFiniteLossError } from '@adapterkit/core';
export { shiftTaskExamples, shiftTaskToken } from './tasks.js';
