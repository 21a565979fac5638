/**
 * Keeps `serve`'s generation worker running: starts it, forwards its messages, and when it dies (the
 * backend failed unrecoverably, or the thread crashed) reports what was lost and starts a fresh one with
 * the same model and adapters.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { FromWorker, ToWorker, WorkerInit, WorkerReady } from './serve-protocol.js';

export type WorkerStatus = 'starting' | 'ready' | 'restarting' | 'stopped';

/** The built worker script (dist/serve-worker.js), also when this module runs from src/ under a test runner. */
function workerScript(): URL {
  const here = new URL('./serve-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const built = new URL('../dist/serve-worker.js', import.meta.url);
  if (!existsSync(fileURLToPath(built))) throw new Error(`${fileURLToPath(built)} is missing: build the CLI first (pnpm --filter @adapterkit/cli build)`);
  return built;
}

export class WorkerSupervisor {
  status: WorkerStatus = 'starting';
  restarts = 0;
  info: WorkerReady | undefined;
  private worker: Worker | undefined;
  private lastFatal: string | undefined;
  private failuresInARow = 0;

  constructor(
    private readonly init: WorkerInit,
    private readonly handlers: {
      message: (m: FromWorker) => void;
      /** The worker died: every job it held is lost (`reason` says why). */
      down: (reason: string) => void;
      /** A fresh worker is ready. */
      up: (info: WorkerReady) => void;
      log: (line: string) => void;
    },
  ) {}

  /** Starts the first worker; rejects if it cannot load the model. */
  start(): Promise<WorkerReady> {
    return new Promise((resolve, reject) => {
      this.spawn(resolve, reject);
    });
  }

  /** Adapters a restarted worker must load too (loaded over HTTP after start). */
  rememberAdapter(name: string, dir: string) {
    this.init.adapters = [...this.init.adapters.filter(([n]) => n !== name), [name, dir]];
  }

  post(m: ToWorker): boolean {
    if (this.status !== 'ready' || !this.worker) return false;
    this.worker.postMessage(m);
    return true;
  }

  async stop(): Promise<void> {
    this.status = 'stopped';
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
  }

  private spawn(onFirstReady?: (info: WorkerReady) => void, onFirstFail?: (e: Error) => void) {
    // execArgv: [] — the worker loads the built packages, whatever conditions the parent runs under (a test runner's)
    const worker = new Worker(workerScript(), { workerData: this.init, execArgv: [] });
    this.worker = worker;
    this.lastFatal = undefined;
    worker.on('message', (m: FromWorker) => {
      if (worker !== this.worker) return;
      if (m.type === 'ready') {
        this.info = m;
        this.status = 'ready';
        this.failuresInARow = 0;
        if (onFirstReady) onFirstReady(m);
        else this.handlers.up(m);
        onFirstReady = undefined;
        onFirstFail = undefined;
        return;
      }
      if (m.type === 'fatal') this.lastFatal = m.message;
      this.handlers.message(m);
    });
    worker.on('error', (e) => {
      this.lastFatal ??= e.message;
    });
    worker.on('exit', (code) => {
      if (worker !== this.worker || this.status === 'stopped') return;
      const reason = this.lastFatal ?? `the generation worker exited with code ${code}`;
      this.worker = undefined;
      if (onFirstFail) {
        this.status = 'stopped';
        onFirstFail(new Error(`the generation worker could not start: ${reason}`));
        return;
      }
      this.status = 'restarting';
      this.restarts++;
      this.failuresInARow++;
      this.handlers.log(JSON.stringify({ event: 'worker_restart', reason, restarts: this.restarts }));
      this.handlers.down(reason);
      // a worker that keeps dying is restarted less and less often (up to every 10 s)
      const delay = Math.min(10_000, 50 * 2 ** (this.failuresInARow - 1));
      setTimeout(() => {
        if (this.status === 'restarting') this.spawn();
      }, delay).unref();
    });
  }
}
