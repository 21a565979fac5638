import { ConfigError } from '@adapterkit/core';

export type ScheduleName = 'constant' | 'linear' | 'cosine';

export interface ScheduleConfig {
  type: ScheduleName;
  /** Steps of linear warmup from 0 to the peak lr (default 0). */
  warmupSteps?: number;
  /** Alternative to warmupSteps: a fraction of the total steps. */
  warmupRatio?: number;
  /** Cosine only: number of half-waves (transformers' num_cycles, default 0.5 = decay to 0 once). */
  numCycles?: number;
}

/** lr multiplier at a step (0-based: the multiplier used for the update that makes step `step + 1`). */
export type Schedule = (step: number) => number;

/**
 * The learning-rate schedules of transformers' get_scheduler, as multipliers of the peak lr:
 * constant (with optional warmup), linear warmup + linear decay to 0 at `totalSteps`, and linear warmup +
 * cosine decay.
 */
export function createSchedule(config: ScheduleName | ScheduleConfig | Schedule, totalSteps: number): Schedule {
  if (typeof config === 'function') return config;
  const c: ScheduleConfig = typeof config === 'string' ? { type: config } : config;
  if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new ConfigError(`a schedule needs a total step count ≥ 1, got ${totalSteps}`, 'maxSteps');
  const warmup = c.warmupSteps ?? Math.ceil((c.warmupRatio ?? 0) * totalSteps);
  if (!Number.isInteger(warmup) || warmup < 0) throw new ConfigError(`warmupSteps must be an integer ≥ 0, got ${warmup}`, 'warmupSteps');
  const warm = (step: number) => (warmup > 0 && step < warmup ? step / warmup : undefined);
  switch (c.type) {
    case 'constant':
      return (step) => warm(step) ?? 1;
    case 'linear':
      return (step) => warm(step) ?? Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmup));
    case 'cosine': {
      const cycles = c.numCycles ?? 0.5;
      return (step) => {
        const w = warm(step);
        if (w !== undefined) return w;
        const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
        return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 2 * cycles * progress)));
      };
    }
    default:
      throw new ConfigError(`unknown schedule '${String((c as { type: unknown }).type)}' (known: constant, linear, cosine)`, 'schedule');
  }
}
