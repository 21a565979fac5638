import cliProgress from 'cli-progress';
import type { HubProgress } from '@adapterkit/core';

/**
 * A training progress bar on stderr (cli-progress); silent in --json mode. Drawn from the first step that
 * runs, so a resumed run starts where its checkpoint was and a finished run asked again draws nothing.
 */
export function makeProgress(silent: boolean, total: number): { update(step: number, loss: number): void; stop(): void } {
  if (silent) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      format: 'training [{bar}] {value}/{total} steps | loss {loss} | {speed} steps/s | eta {eta_formatted}',
      stream: process.stderr,
      noTTYOutput: true,
      notTTYSchedule: 5000,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const t0 = performance.now();
  let start = -1;
  return {
    update(step, loss) {
      if (start < 0) {
        start = step - 1;
        bar.start(total, start, { loss: '-', speed: '-' });
      }
      const s = (performance.now() - t0) / 1000;
      bar.update(step, { loss: loss.toFixed(4), speed: ((step - start) / Math.max(s, 1e-3)).toFixed(1) });
    },
    stop() {
      if (start >= 0) bar.stop();
    },
  };
}

/** A download progress bar per Hub file on stderr (cli-progress); nothing in --json mode or for cached files. */
export function downloadProgress(silent: boolean): ((p: HubProgress) => void) | undefined {
  if (silent) return undefined;
  let bar: cliProgress.SingleBar | undefined;
  let t0 = 0;
  const mb = (n: number) => (n / 2 ** 20).toFixed(1);
  return (p) => {
    if (!bar) {
      bar = new cliProgress.SingleBar(
        {
          format: `{file} [{bar}] {percentage}% | {done}/{size} MiB | {speed} MiB/s`,
          stream: process.stderr,
          noTTYOutput: true,
          notTTYSchedule: 5000,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(p.total ?? 0, 0, { file: `${p.repo}/${p.file}`, done: '0.0', size: p.total === undefined ? '?' : mb(p.total), speed: '-' });
      t0 = performance.now();
    }
    const seconds = (performance.now() - t0) / 1000;
    bar.update(p.total === undefined ? 0 : p.loaded, { done: mb(p.loaded), speed: seconds > 0 ? (p.loaded / 2 ** 20 / seconds).toFixed(1) : '-' });
    if (p.done) {
      bar.stop();
      bar = undefined;
    }
  };
}
