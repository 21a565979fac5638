import cliProgress from 'cli-progress';

/** A training progress bar on stderr (cli-progress); silent in --json mode. */
export function makeProgress(silent: boolean, total: number, start = 0): { update(step: number, loss: number): void; stop(): void } {
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
  bar.start(total, start, { loss: '-', speed: '-' });
  return {
    update(step, loss) {
      const s = (performance.now() - t0) / 1000;
      bar.update(step, { loss: loss.toFixed(4), speed: ((step - start) / Math.max(s, 1e-3)).toFixed(1) });
    },
    stop() {
      bar.stop();
    },
  };
}
