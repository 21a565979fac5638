import { ConfigError, InputError, type SeededRandom } from '@adapterkit/core';

/** A text pair, tokenized with the model's tokenizer (`</s>` appended by it). */
export interface TextExample {
  input: string;
  target: string;
}
/** A pre-tokenized pair; used as given (append the eos id to targets yourself). */
export interface TokenizedExample {
  inputIds: number[];
  targetIds: number[];
}
export type ExampleRow = TextExample | TokenizedExample;

/** A padded batch: inputs padded with the pad id, labels with -100 (ignored by the loss). */
export interface Batch {
  inputIds: number[][];
  attentionMask: number[][];
  labels: number[][];
  /** Real (unpadded) target tokens: the loss's denominator. */
  targetTokens: number;
  sourceTokens: number;
}

/** A dataset row is malformed, or the dataset is empty. `row` is the 0-based row index (JSONL: line − 1 counts blank lines too). */
export class DatasetError extends InputError {
  constructor(
    message: string,
    readonly row?: number,
    readonly source?: string,
  ) {
    super(message, source);
  }
}

/** Where rows come from. `rows(skip)` starts a pass over the data, skipping the first `skip` rows (resume). */
export interface DataSource {
  readonly name: string;
  rows(skip?: number): AsyncIterator<{ row: unknown; index: number; where: string }>;
  /** Whole-pass shuffling fits in memory (arrays); streamed sources shuffle within buffers. */
  readonly inMemory: boolean;
}

export function arraySource(rows: readonly unknown[], name = 'dataset'): DataSource {
  if (!Array.isArray(rows)) throw new DatasetError(`${name} must be an array of {input, target} or {inputIds, targetIds} rows`, undefined, name);
  return inMemorySource(name, rows.length, (i) => ({ row: rows[i], where: `row ${i} of ${name}` }));
}

/** An in-memory source of `count` rows, row i made on demand by `at(i)` (so JSONL text parses lazily). */
function inMemorySource(name: string, count: number, at: (i: number) => { row: unknown; where: string }): DataSource {
  return {
    name,
    inMemory: true,
    rows(skip = 0) {
      let i = skip;
      return {
        next: async () => {
          if (i >= count) return { done: true, value: undefined };
          const value = { ...at(i), index: i };
          i++;
          return { done: false, value };
        },
      };
    },
  };
}

function parseLine(line: string, lineNo: number, name: string): unknown {
  try {
    return JSON.parse(line);
  } catch (e) {
    throw new DatasetError(`line ${lineNo} of ${name} is not valid JSON: ${(e as Error).message}`, lineNo - 1, name);
  }
}

/** JSONL given as a string (browser uploads, tests). Blank lines are skipped. */
export function jsonlSource(text: string, name = 'dataset.jsonl'): DataSource {
  const lines = text.split(/\r?\n/);
  const rows: { line: string; lineNo: number }[] = [];
  lines.forEach((line, i) => {
    if (line.trim()) rows.push({ line, lineNo: i + 1 });
  });
  return inMemorySource(name, rows.length, (i) => ({ row: parseLine(rows[i].line, rows[i].lineNo, name), where: `line ${rows[i].lineNo} of ${name}` }));
}

/**
 * JSONL streamed from a file with readline (Node): rows are read as training consumes them, so a dataset
 * larger than memory trains. Shuffling happens within buffers of rows (see `shuffleBuffer`).
 */
export function jsonlFileSource(path: string): DataSource {
  return {
    name: path,
    inMemory: false,
    rows(skip = 0) {
      let lines: AsyncIterator<string> | undefined;
      let close: (() => void) | undefined;
      let lineNo = 0;
      let index = 0;
      const open = async () => {
        const fs = await import(/* @vite-ignore */ 'node:fs' as string);
        const readline = await import(/* @vite-ignore */ 'node:readline' as string);
        if (!fs.existsSync(path)) throw new DatasetError(`dataset file not found: ${path}`, undefined, path);
        const stream = fs.createReadStream(path, { encoding: 'utf8' });
        const rl = readline.createInterface({ input: stream, crlfDelay: Infinity });
        close = () => {
          rl.close();
          stream.destroy();
        };
        lines = rl[Symbol.asyncIterator]();
      };
      return {
        next: async () => {
          if (!lines) await open();
          for (;;) {
            const r = await lines!.next();
            if (r.done) {
              close?.();
              return { done: true, value: undefined };
            }
            lineNo++;
            if (!r.value.trim()) continue;
            const i = index++;
            if (i < skip) continue; // resume: skipped rows are not even parsed
            return { done: false, value: { row: parseLine(r.value, lineNo, path), index: i, where: `line ${lineNo} of ${path}` } };
          }
        },
        return: async () => {
          close?.();
          return { done: true, value: undefined };
        },
      };
    },
  };
}

export type DataInput = DataSource | readonly ExampleRow[] | readonly unknown[];

export function toSource(data: DataInput, name = 'dataset'): DataSource {
  if (data && typeof (data as DataSource).rows === 'function' && !Array.isArray(data)) return data as DataSource;
  return arraySource(data as unknown[], name);
}

export interface EncoderOptions {
  tokenizer?: { encode(text: string): number[] };
  vocabSize: number;
  maxSourceLength: number;
  maxTargetLength: number;
  /** Too-long rows: 'truncate' (with a warning; the final eos is kept) or 'error'. */
  truncation: 'truncate' | 'error';
  eosTokenId: number;
  onWarning?: (message: string) => void;
}

/** Validates and tokenizes one row; errors name the row. */
export function encodeRow(row: unknown, where: string, index: number, source: string, o: EncoderOptions): TokenizedExample {
  const fail = (msg: string) => new DatasetError(`${where}: ${msg}`, index, source);
  if (!row || typeof row !== 'object' || Array.isArray(row)) throw fail('a row must be an object {input, target} or {inputIds, targetIds}');
  const r = row as Record<string, unknown>;
  const ids = (field: 'inputIds' | 'targetIds'): number[] => {
    const v = r[field];
    if (!Array.isArray(v)) throw fail(`'${field}' must be an array of token ids`);
    if (v.length === 0) throw fail(`'${field}' is empty`);
    v.forEach((id, j) => {
      if (!Number.isInteger(id) || id < 0 || id >= o.vocabSize) throw fail(`${field}[${j}] = ${JSON.stringify(id)} is not a token id in [0, ${o.vocabSize})`);
    });
    return v as number[];
  };
  const text = (field: 'input' | 'target'): number[] => {
    const v = r[field];
    if (v === undefined) throw fail(`missing field '${field}'`);
    if (typeof v !== 'string') throw fail(`'${field}' must be a string, got ${typeof v}`);
    if (!o.tokenizer) throw new ConfigError(`${where}: text rows need a tokenizer, and this model has none (give pre-tokenized {inputIds, targetIds})`, 'tokenizer');
    const out = o.tokenizer.encode(v);
    if (out.length === 0) throw fail(`'${field}' tokenizes to nothing`);
    return out;
  };
  let inputIds: number[];
  let targetIds: number[];
  if ('inputIds' in r || 'targetIds' in r) {
    inputIds = ids('inputIds');
    targetIds = ids('targetIds');
  } else {
    if (!('input' in r) && !('target' in r)) throw fail("missing fields 'input' and 'target' (or 'inputIds' and 'targetIds')");
    inputIds = text('input');
    targetIds = text('target');
  }
  const fit = (seq: number[], max: number, what: string): number[] => {
    if (seq.length <= max) return seq;
    if (o.truncation === 'error')
      throw fail(`${what} has ${seq.length} tokens, more than the maximum ${max} (raise max${what === 'input' ? 'Source' : 'Target'}Length or set truncation: 'truncate')`);
    o.onWarning?.(`${where}: ${what} truncated from ${seq.length} to ${max} tokens`);
    const last = seq[seq.length - 1];
    return last === o.eosTokenId ? [...seq.slice(0, max - 1), last] : seq.slice(0, max);
  };
  return { inputIds: fit(inputIds, o.maxSourceLength, 'input'), targetIds: fit(targetIds, o.maxTargetLength, 'target') };
}

/** Pads examples into one batch (inputs with `padId`, labels with -100). */
export function collate(examples: TokenizedExample[], padId = 0): Batch {
  const srcLen = Math.max(...examples.map((e) => e.inputIds.length));
  const tgtLen = Math.max(...examples.map((e) => e.targetIds.length));
  let sourceTokens = 0;
  let targetTokens = 0;
  const inputIds: number[][] = [];
  const attentionMask: number[][] = [];
  const labels: number[][] = [];
  for (const e of examples) {
    const s = e.inputIds.length;
    const t = e.targetIds.length;
    sourceTokens += s;
    targetTokens += t;
    inputIds.push([...e.inputIds, ...new Array(srcLen - s).fill(padId)]);
    attentionMask.push([...new Array(s).fill(1), ...new Array(srcLen - s).fill(0)]);
    labels.push([...e.targetIds, ...new Array(tgtLen - t).fill(-100)]);
  }
  return { inputIds, attentionMask, labels, sourceTokens, targetTokens };
}

/** Where a BatchStream stands; enough to resume on exactly the same batches. */
export interface DataPosition {
  epoch: number;
  /** Rows of this epoch read before the current buffer. */
  rowsBefore: number;
  /** RNG state when the current buffer was shuffled. */
  bufferRngState: number;
  /** Batches of the current buffer already handed out. */
  batchIndex: number;
}

export interface BatchStreamOptions {
  batchSize: number;
  shuffle: boolean;
  /** Rows shuffled together (default: the whole dataset in memory, 10,000 rows for streamed files). */
  shuffleBuffer?: number;
  /** Length bucketing: sort windows of batchSize × bucketWindow rows by length before batching (1 = off). */
  bucketWindow: number;
  padId: number;
  encoder: EncoderOptions;
}

/**
 * Endless stream of training batches over epochs. Each buffer of rows is shuffled (seeded), split into
 * windows that are sorted by length (so batches hold similar lengths: less padding) and cut into batches,
 * whose order is shuffled again. The position (epoch, rows before the buffer, RNG state at the buffer,
 * batch index) is saved in checkpoints so a resumed run sees exactly the batches an uninterrupted one would.
 */
export class BatchStream {
  private iter?: AsyncIterator<{ row: unknown; index: number; where: string }>;
  private batches: TokenizedExample[][] = [];
  private pos: DataPosition;
  private rowsInBuffer = 0;
  private epochHadRows = false;
  private started = false;

  constructor(
    readonly source: DataSource,
    readonly options: BatchStreamOptions,
    readonly rng: SeededRandom,
  ) {
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1) throw new ConfigError(`batchSize must be an integer ≥ 1, got ${options.batchSize}`, 'batchSize');
    this.pos = { epoch: 0, rowsBefore: 0, bufferRngState: rng.getState(), batchIndex: 0 };
  }

  get position(): DataPosition {
    return { ...this.pos };
  }
  get epoch(): number {
    return this.pos.epoch;
  }

  private bufferSize(): number {
    return this.options.shuffleBuffer ?? (this.source.inMemory ? Number.MAX_SAFE_INTEGER : 10_000);
  }

  /** Reads the next buffer of rows and turns it into batches; false at the end of the epoch. */
  private async fillBuffer(): Promise<boolean> {
    const rows: TokenizedExample[] = [];
    const max = this.bufferSize();
    while (rows.length < max) {
      const r = await this.iter!.next();
      if (r.done) break;
      rows.push(encodeRow(r.value.row, r.value.where, r.value.index, this.source.name, this.options.encoder));
    }
    if (rows.length === 0) return false;
    this.epochHadRows = true;
    this.rowsInBuffer = rows.length;
    this.pos.bufferRngState = this.rng.getState();
    this.batches = this.makeBatches(rows);
    this.pos.batchIndex = 0;
    return true;
  }

  private makeBatches(rows: TokenizedExample[]): TokenizedExample[][] {
    const { batchSize, shuffle, bucketWindow } = this.options;
    const order = rows.map((_, i) => i);
    if (shuffle) this.rng.shuffle(order);
    const window = batchSize * Math.max(1, bucketWindow);
    const batches: TokenizedExample[][] = [];
    for (let w = 0; w < order.length; w += window) {
      const part = order.slice(w, w + window);
      if (bucketWindow > 1) part.sort((a, b) => rows[b].inputIds.length - rows[a].inputIds.length || a - b);
      for (let i = 0; i < part.length; i += batchSize) batches.push(part.slice(i, i + batchSize).map((j) => rows[j]));
    }
    if (shuffle && bucketWindow > 1) this.rng.shuffle(batches);
    return batches;
  }

  private async startEpoch(skipRows: number) {
    await this.iter?.return?.();
    this.iter = this.source.rows(skipRows);
    this.epochHadRows = skipRows > 0;
  }

  async next(): Promise<Batch> {
    for (;;) {
      if (this.started && this.pos.batchIndex < this.batches.length) {
        const b = this.batches[this.pos.batchIndex++];
        return collate(b, this.options.padId);
      }
      if (!this.started) {
        // first call: open epoch 0
        this.started = true;
        await this.startEpoch(0);
        this.batches = [];
        this.pos.rowsBefore = 0;
        this.rowsInBuffer = 0;
      }
      this.pos.rowsBefore += this.rowsInBuffer;
      this.rowsInBuffer = 0;
      if (await this.fillBuffer()) continue;
      if (!this.epochHadRows) throw new DatasetError(`${this.source.name} is empty: no training rows`, undefined, this.source.name);
      this.pos.epoch += 1;
      this.pos.rowsBefore = 0;
      await this.startEpoch(0);
    }
  }

  /** Restores a saved position: re-reads the buffer it was in and skips the batches already used. */
  async restore(p: DataPosition): Promise<void> {
    this.pos = { ...p };
    this.started = true;
    await this.startEpoch(p.rowsBefore);
    this.rng.setState(p.bufferRngState);
    this.rowsInBuffer = 0;
    const batchIndex = p.batchIndex;
    if (!(await this.fillBuffer()))
      throw new DatasetError(`cannot resume: ${this.source.name} has no rows after row ${p.rowsBefore} (a different dataset?)`, p.rowsBefore, this.source.name);
    this.pos.batchIndex = batchIndex;
  }

  async close(): Promise<void> {
    await this.iter?.return?.();
  }
}

/** One ordered pass over a dataset in batches (evaluation). */
export async function* evalBatches(source: DataSource, batchSize: number, padId: number, encoder: EncoderOptions): AsyncGenerator<{ batch: Batch; examples: TokenizedExample[] }> {
  const it = source.rows(0);
  let pending: TokenizedExample[] = [];
  let any = false;
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    any = true;
    pending.push(encodeRow(r.value.row, r.value.where, r.value.index, source.name, encoder));
    if (pending.length === batchSize) {
      yield { batch: collate(pending, padId), examples: pending };
      pending = [];
    }
  }
  if (pending.length) yield { batch: collate(pending, padId), examples: pending };
  if (!any) throw new DatasetError(`${source.name} is empty: no evaluation rows`, undefined, source.name);
}
