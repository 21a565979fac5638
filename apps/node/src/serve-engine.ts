/**
 * The generation side of `serve` (it runs in the worker thread): continuous batching of greedy requests
 * over one core DecodeBatch — a request joins the running batch at the next decode step and leaves when
 * it finishes, base-model rows and every adapter's rows in one BatchSplit step, each request with its own
 * parameters (greedy or seeded sampling, logits processors) — and requests that cannot share rows (a
 * composition, beam search, a prefix or gated adapter) run alone between steps.
 */
import { AdapterkitError, DecodeBatch, type DecodeEntry } from '@adapterkit/core';
import type { DecoderState, T5ForConditionalGeneration } from '@adapterkit/t5';
import { padRows, parseComposition, trimGenerated } from './common.js';
import type { ErrorInfo, FromWorker, Job } from './serve-protocol.js';

/** A failure after which the backend cannot be trusted (wasm heap exhaustion, an abort): restart. */
export class BackendFailure extends Error {}

/** wasm reports a corrupted or exhausted heap as these; nothing that runs afterwards can be trusted. */
export function isUnrecoverable(e: unknown): boolean {
  if (e instanceof WebAssembly.RuntimeError) return true;
  const m = e instanceof Error ? e.message : String(e);
  return /memory access out of bounds|Aborted\(|out of memory|unreachable|Array buffer allocation failed/i.test(m);
}

/** An error as the HTTP thread answers it. */
export function errorInfo(e: unknown): ErrorInfo {
  if (e instanceof AdapterkitError) {
    const status = e.code === 'FILE_ERROR' ? 404 : e.code === 'ADAPTER_ERROR' ? 409 : 400;
    return { status, code: e.code.toLowerCase(), message: e.message };
  }
  return { status: 500, code: 'internal', message: e instanceof Error ? e.message : String(e) };
}

class Cancelled extends Error {}

export interface EngineOptions {
  emit: (m: FromWorker) => void;
  poisonInput?: number[];
}

export class GenerationEngine {
  private readonly batch: DecodeBatch<DecoderState>;
  private readonly entries = new Map<DecodeEntry, Job>();
  private readonly byId = new Map<number, DecodeEntry>();
  private readonly alone: Job[] = [];
  private readonly cancelled = new Set<number>();
  private wake: (() => void) | undefined;
  private stopped = false;
  readonly finished: Promise<void>;

  constructor(
    private readonly model: T5ForConditionalGeneration,
    private readonly options: EngineOptions,
  ) {
    this.batch = new DecodeBatch(model);
    this.finished = this.loop();
  }

  submit(job: Job): void {
    if (this.sharesRows(job)) {
      const { maxNewTokens, ...options } = job.params;
      const entry: DecodeEntry = { rows: job.rows, adapter: job.adapter, maxNewTokens, options };
      try {
        this.batch.join(entry);
      } catch (e) {
        this.options.emit({ type: 'failed', id: job.id, error: errorInfo(e) });
        return;
      }
      this.entries.set(entry, job);
      this.byId.set(job.id, entry);
    } else this.alone.push(job);
    this.wake?.();
  }

  /** A client went away: its rows leave at the next step, or its queued job is dropped. */
  cancel(id: number): void {
    const entry = this.byId.get(id);
    if (entry) {
      this.batch.leave(entry);
      this.forget(entry);
      return;
    }
    const i = this.alone.findIndex((j) => j.id === id);
    if (i >= 0) this.alone.splice(i, 1);
    else this.cancelled.add(id); // running alone: stopped at its next token
  }

  stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    return this.finished;
  }

  /**
   * Requests on one adapter (or the base model) whose state is row-wise share the running batch, each with
   * its own parameters (greedy or sampling, logits processors); beam search (it reorders its rows every
   * step) and compositions decode alone.
   */
  private sharesRows(job: Job): boolean {
    if (job.composition || job.params.numBeams > 1) return false;
    return job.adapter === null || this.model.adapters.decodesRowwise(job.adapter);
  }

  private forget(entry: DecodeEntry) {
    const job = this.entries.get(entry);
    this.entries.delete(entry);
    if (job) this.byId.delete(job.id);
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      if (this.batch.entries === 0 && this.alone.length === 0) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      try {
        const job = this.alone.shift();
        if (job) await this.runAlone(job);
        if (this.batch.entries > 0) await this.step();
      } catch (e) {
        if (isUnrecoverable(e)) {
          this.options.emit({ type: 'fatal', message: e instanceof Error ? e.message : String(e) });
          throw new BackendFailure(String(e));
        }
        // A step failed for an ordinary reason: every job in it gets the error; the batch starts afresh.
        for (const [entry, j] of this.entries) {
          this.options.emit({ type: 'failed', id: j.id, error: errorInfo(e) });
          this.batch.leave(entry);
          this.forget(entry);
        }
      }
      // let messages in (new jobs, cancellations) between steps
      await new Promise((r) => setImmediate(r));
    }
    this.batch.dispose();
  }

  private async step() {
    const poison = this.options.poisonInput;
    if (poison && [...this.entries.values()].some((j) => j.rows[0].join() === poison.join())) {
      throw new WebAssembly.RuntimeError('memory access out of bounds');
    }
    const eos = this.model.generationConfig.eosTokenId;
    const results = await this.batch.step();
    const tokens: { id: number; tokens: number[] }[] = [];
    for (const r of results) {
      const job = this.entries.get(r.entry);
      if (job?.stream) tokens.push({ id: job.id, tokens: r.tokens });
    }
    // the step's tokens first, then the answers it completed
    this.options.emit({ type: 'step', rows: results.reduce((a, r) => a + r.tokens.length, 0), tokens });
    for (const r of results) {
      const job = this.entries.get(r.entry);
      if (!job || !r.done) continue;
      this.forget(r.entry);
      this.options.emit({ type: 'done', id: job.id, ids: r.sequences.map((s) => trimGenerated(s, eos)) });
    }
  }

  private async runAlone(job: Job) {
    const { inputIds, attentionMask } = padRows(job.rows);
    const composition = job.composition ? parseComposition(job.composition) : job.adapter;
    try {
      const out = await this.model.generate({
        inputIds,
        attentionMask,
        composition,
        ...job.params,
        onToken: (_step, tokens) => {
          if (this.cancelled.delete(job.id)) throw new Cancelled();
          // beams' per-step tokens belong to beams, not to the answer: beam search streams its result at the end
          if (job.stream && job.params.numBeams === 1) this.options.emit({ type: 'step', rows: tokens.length, tokens: [{ id: job.id, tokens }] });
        },
      });
      this.options.emit({ type: 'done', id: job.id, ids: out.map((row) => trimGenerated(row, this.model.generationConfig.eosTokenId)) });
    } catch (e) {
      if (e instanceof Cancelled) return;
      if (isUnrecoverable(e)) throw e;
      this.options.emit({ type: 'failed', id: job.id, error: errorInfo(e) });
    } finally {
      this.cancelled.delete(job.id);
    }
  }
}
