/**
 * Adapter training for the CLI, on @adapterkit/train's Trainer: only the adapter's variables get gradients
 * (the base model is frozen), progress events feed the progress bar, and `checkpointDir` makes a run
 * resumable (the Trainer's checkpoints carry the adapter, the optimizer state and the data position).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Trainer, type TrainProgress } from '@adapterkit/train';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import type { Example } from './task.js';

export interface TrainOptions {
  steps: number;
  lr: number;
  batchSize: number;
  seed: number;
  schedule?: 'constant' | 'linear' | 'cosine';
  warmupSteps?: number;
  /** Write a checkpoint every N steps (and at the end) under `checkpointDir`; resume from it when present. */
  checkpointDir?: string;
  checkpointEvery?: number;
  onProgress?: (e: TrainProgress) => void;
}

export interface TrainResult {
  startStep: number;
  steps: number;
  firstLoss: number;
  lastLoss: number;
  losses: number[];
  seconds: number;
}

/** True when `dir` holds a Trainer checkpoint to resume from. */
export function hasCheckpoint(dir: string): boolean {
  return existsSync(join(dir, 'latest.json')) || existsSync(join(dir, 'trainer_state.json'));
}

/** Trains adapter `name` (already added to the model) on `examples`; resumes from `checkpointDir` if it holds a checkpoint. */
export async function trainAdapter(model: T5ForConditionalGeneration, name: string, examples: Example[], o: TrainOptions): Promise<TrainResult> {
  const trainer = new Trainer(model, {
    adapters: name,
    trainData: examples.map((e) => ({ inputIds: e.inputIds, targetIds: e.labels })),
    maxSteps: o.steps,
    lr: o.lr,
    optimizer: 'adamw',
    optimizerOptions: { weightDecay: 0 },
    schedule: o.schedule ?? 'constant',
    ...(o.warmupSteps !== undefined ? { warmupSteps: o.warmupSteps } : {}),
    batchSize: o.batchSize,
    seed: o.seed,
    ...(o.checkpointDir ? { checkpointDir: o.checkpointDir, checkpointEvery: o.checkpointEvery ?? o.steps } : {}),
    onProgress: o.onProgress,
  });
  try {
    if (o.checkpointDir && hasCheckpoint(o.checkpointDir)) await trainer.loadCheckpoint(o.checkpointDir);
    const startStep = trainer.currentStep;
    const t0 = performance.now();
    const r = await trainer.train();
    if (o.checkpointDir && r.step % (o.checkpointEvery ?? o.steps) !== 0) await trainer.saveCheckpoint();
    model.setActiveAdapters(name);
    return { startStep, steps: r.step, firstLoss: r.losses[0] ?? NaN, lastLoss: r.losses[r.losses.length - 1] ?? NaN, losses: r.losses, seconds: (performance.now() - t0) / 1000 };
  } finally {
    trainer.dispose();
  }
}
