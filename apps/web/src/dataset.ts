/**
 * The user's training examples: JSONL (`{"input": ..., "target": ...}` per line, or pre-tokenized
 * `{"inputIds": [...], "targetIds": [...]}`) or CSV/TSV (two columns, input and target, an optional
 * `input,target` header, RFC 4180 quoting). Errors name the line. Pure functions: unit-tested in Node.
 */
import { SeededRandom } from '@adapterkit/core';
import type { ExampleRow } from '@adapterkit/train';

export class DatasetParseError extends Error {
  override name = 'DatasetParseError';
  constructor(
    message: string,
    readonly line?: number,
  ) {
    super(line === undefined ? message : `line ${line}: ${message}`);
  }
}

export type DatasetFormat = 'jsonl' | 'csv' | 'tsv';

/** JSONL when the first non-blank character opens an object; TSV when the first line has a tab; else CSV. */
export function detectFormat(text: string, fileName = ''): DatasetFormat {
  if (/\.jsonl?$/i.test(fileName)) return 'jsonl';
  if (/\.tsv$/i.test(fileName)) return 'tsv';
  if (/\.csv$/i.test(fileName)) return 'csv';
  const first = text.trimStart();
  if (first.startsWith('{')) return 'jsonl';
  return first.split(/\r?\n/, 1)[0].includes('\t') ? 'tsv' : 'csv';
}

export function parseDataset(text: string, format: DatasetFormat = detectFormat(text)): ExampleRow[] {
  const rows = format === 'jsonl' ? parseJsonl(text) : parseDelimited(text, format === 'tsv' ? '\t' : ',');
  if (rows.length === 0) throw new DatasetParseError('no examples: paste or upload at least one {"input": ..., "target": ...} line or input,target row');
  return rows;
}

const isIds = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t) && t >= 0);

function parseJsonl(text: string): ExampleRow[] {
  const rows: ExampleRow[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    if (!raw.trim()) return;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      throw new DatasetParseError(`not valid JSON (${(e as Error).message})`, i + 1);
    }
    const o = v as Record<string, unknown>;
    if (!o || typeof o !== 'object' || Array.isArray(o)) throw new DatasetParseError('expected an object {"input": ..., "target": ...}', i + 1);
    const keys = Object.keys(o).sort().join(',');
    if (keys === 'input,target' && typeof o.input === 'string' && typeof o.target === 'string') {
      if (!o.input.trim() || !o.target.trim()) throw new DatasetParseError('"input" and "target" must not be empty', i + 1);
      rows.push({ input: o.input, target: o.target });
    } else if (keys === 'inputIds,targetIds' && isIds(o.inputIds) && isIds(o.targetIds)) {
      rows.push({ inputIds: o.inputIds as number[], targetIds: o.targetIds as number[] });
    } else throw new DatasetParseError(`expected exactly {"input": string, "target": string} (or {"inputIds": [...], "targetIds": [...]}), got keys [${keys}]`, i + 1);
  });
  return rows;
}

/** CSV/TSV records (quoted fields may hold delimiters, quotes as "" and newlines); each with its first line number. */
function records(text: string, delim: string): { fields: string[]; line: number }[] {
  const out: { fields: string[]; line: number }[] = [];
  let fields: string[] = [];
  let field = '';
  let quoted = false;
  let line = 1;
  let start = 1;
  const endRecord = () => {
    fields.push(field);
    if (fields.length > 1 || fields[0].trim() !== '') out.push({ fields, line: start });
    fields = [];
    field = '';
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else {
        if (c === '\n') line++;
        field += c;
      }
    } else if (c === '"' && field === '') quoted = true;
    else if (c === delim) {
      fields.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      endRecord();
      line++;
      start = line;
    } else field += c;
  }
  if (quoted) throw new DatasetParseError('a quoted field is not closed', start);
  if (field !== '' || fields.length) endRecord();
  return out;
}

function parseDelimited(text: string, delim: string): ExampleRow[] {
  const recs = records(text, delim);
  if (recs.length && recs[0].fields.map((f) => f.trim().toLowerCase()).join(',') === 'input,target') recs.shift();
  return recs.map(({ fields, line }) => {
    if (fields.length !== 2) throw new DatasetParseError(`expected 2 columns (input${delim === '\t' ? '<tab>' : ','}target), got ${fields.length}`, line);
    if (!fields[0].trim() || !fields[1].trim()) throw new DatasetParseError('input and target must not be empty', line);
    return { input: fields[0], target: fields[1] };
  });
}

/**
 * A seeded held-out split: `fraction` of the rows (at least 1 when fraction > 0 and there are 2+ rows; at
 * least 1 row always trains) go to evaluation.
 */
export function splitHeldOut<T>(rows: readonly T[], fraction: number, seed = 0): { train: T[]; heldOut: T[] } {
  if (!(fraction >= 0 && fraction < 1)) throw new DatasetParseError(`the held-out fraction must be in [0, 1), got ${fraction}`);
  const order = rows.map((_, i) => i);
  new SeededRandom(seed).shuffle(order);
  const n = fraction === 0 || rows.length < 2 ? 0 : Math.min(rows.length - 1, Math.max(1, Math.round(rows.length * fraction)));
  const held = new Set(order.slice(0, n));
  return { train: rows.filter((_, i) => !held.has(i)), heldOut: rows.filter((_, i) => held.has(i)) };
}

/** Rows as JSONL text (how the built-in example dataset fills the text box). */
export function toJsonl(rows: readonly ExampleRow[]): string {
  return `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`;
}

/** Adapter names the page accepts: a letter, then letters, digits, `_` or `-` (they appear in composition strings and file names). */
export function adapterNameProblem(name: string, taken: readonly string[]): string | undefined {
  if (!name) return 'give the adapter a name';
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,63}$/.test(name)) return 'use a letter, then letters, digits, _ or - (at most 64 characters)';
  if (taken.includes(name)) return `an adapter named '${name}' already exists`;
  return undefined;
}

/** A free name like `name` for the next adapter: `name-2`, `name-3`, … */
export function nextFreeName(name: string, taken: readonly string[]): string {
  const m = /^(.*?)-(\d+)$/.exec(name);
  const stem = m ? m[1] : name;
  let n = m ? Number(m[2]) + 1 : 2;
  while (taken.includes(`${stem}-${n}`)) n++;
  return `${stem}-${n}`;
}
