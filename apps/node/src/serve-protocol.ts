/**
 * The messages between `serve`'s HTTP thread and its generation worker (serve-worker.ts). Plain data only:
 * they cross a worker_threads port.
 */

/** Generation parameters of one request (already checked by the HTTP thread). */
export interface GenerationParams {
  maxNewTokens: number;
  numBeams: number;
  doSample: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** transformers' logits processors (core's names). */
  repetitionPenalty?: number;
  noRepeatNgramSize?: number;
  encoderNoRepeatNgramSize?: number;
  minNewTokens?: number;
  typicalP?: number;
  badWordsIds?: number[][];
}

/** The params that select logits processors (their values are checked by core's generate). */
export const PROCESSOR_PARAMS = ['repetitionPenalty', 'noRepeatNgramSize', 'encoderNoRepeatNgramSize', 'minNewTokens', 'typicalP', 'badWordsIds'] as const;

/** One request's work. */
export interface Job {
  id: number;
  /** Token ids per input row (unpadded). */
  rows: number[][];
  /** Adapter name; null = the base model (unless `composition`). */
  adapter: string | null;
  /** A composition in the CLI's syntax ("Parallel(a,b)"); runs alone. */
  composition?: string;
  params: GenerationParams;
  /** Send each step's tokens back (Server-Sent Events). */
  stream: boolean;
}

export interface ErrorInfo {
  status: number;
  code: string;
  message: string;
}

export interface AdapterInfo {
  name: string;
  method: string;
  parameters: number;
  percent: number;
}

/** What the worker reports once its model is loaded. */
export interface WorkerReady {
  type: 'ready';
  backend: string;
  vocabSize: number;
  eosTokenId: number | number[];
  adapters: AdapterInfo[];
}

export type ToWorker = { type: 'generate'; job: Job } | { type: 'cancel'; id: number } | { type: 'load'; id: number; dir: string; name?: string };

export type FromWorker =
  | WorkerReady
  /** One decode step: the tokens of every streaming job in it, and how many rows it ran. */
  | { type: 'step'; rows: number; tokens: { id: number; tokens: number[] }[] }
  /** A job's final ids per row: after the start token, up to and including eos. */
  | { type: 'done'; id: number; ids: number[][] }
  | { type: 'failed'; id: number; error: ErrorInfo }
  | { type: 'loaded'; id: number; name: string; adapters: AdapterInfo[] }
  /** The backend failed in a way that leaves it unusable: the worker exits after this message. */
  | { type: 'fatal'; message: string };

/** What the worker is started with (workerData). */
export interface WorkerInit {
  backend: string;
  modelDir: string;
  /** Adapters to load at start: [name, directory]. */
  adapters: [string, string][];
  maxBatchRows: number;
  /** Threads of the native CPU kernels in the worker. */
  kernelThreads: number;
  /** Test-only: a job whose first row equals these ids makes the backend fail as wasm does on heap exhaustion. */
  poisonInput?: number[];
}
