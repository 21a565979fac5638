/** The page's pure parts, in Node: dataset parsing and split, name validation, streamed text, ZIP downloads, model sources. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { adapterNameProblem, DatasetParseError, detectFormat, nextFreeName, parseDataset, splitHeldOut, toJsonl } from '../src/dataset.js';
import { modelSourceUrl } from '../src/source.js';
import { textStream } from '../src/stream.js';
import { crc32 } from '@adapterkit/core';
import { zipFiles } from '../src/zip.js';

function parseError(text: string): DatasetParseError {
  try {
    parseDataset(text);
  } catch (e) {
    expect(e).toBeInstanceOf(DatasetParseError);
    return e as DatasetParseError;
  }
  throw new Error('expected a DatasetParseError');
}

describe('datasets', () => {
  it('JSONL: text rows and pre-tokenized rows, blank lines skipped', () => {
    expect(parseDataset('{"input": "a b", "target": "c"}\n\n{"target":"x","input":"y"}\r\n')).toEqual([
      { input: 'a b', target: 'c' },
      { input: 'y', target: 'x' },
    ]);
    expect(parseDataset('{"inputIds":[5,6,1],"targetIds":[7,1]}')).toEqual([{ inputIds: [5, 6, 1], targetIds: [7, 1] }]);
  });

  it('JSONL errors name the line', () => {
    expect(parseError('{"input":"a","target":"b"}\n{"input":"a"').message).toMatch(/^line 2: not valid JSON/);
    expect(parseError('{"input":"a","target":"b","extra":1}').message).toMatch(/^line 1: expected exactly .*got keys \[extra,input,target\]/);
    expect(parseError('\n{"input":"","target":"b"}').line).toBe(2);
    expect(parseError('{"inputIds":[1.5],"targetIds":[1]}').message).toMatch(/line 1/);
    expect(parseError('  \n').message).toMatch(/no examples/);
  });

  it('CSV/TSV: header optional, quotes with commas, doubled quotes and newlines; errors name the line', () => {
    const csv = 'input,target\n"hello, world","a ""quoted"" b"\r\nplain,"two\nlines"\n';
    expect(detectFormat(csv)).toBe('csv');
    expect(parseDataset(csv)).toEqual([
      { input: 'hello, world', target: 'a "quoted" b' },
      { input: 'plain', target: 'two\nlines' },
    ]);
    expect(detectFormat('a\tb\n')).toBe('tsv');
    expect(parseDataset('a,b\tc\nd\te\n')).toEqual([
      { input: 'a,b', target: 'c' },
      { input: 'd', target: 'e' },
    ]);
    expect(parseError('a,b\n"x",y,z\n').message).toBe('line 2: expected 2 columns (input,target), got 3');
    expect(parseError('a,b\n"open,b\n').message).toMatch(/^line 2: a quoted field is not closed/);
    expect(detectFormat('{"input":"a"}', 'data.csv')).toBe('csv'); // the file name wins
  });

  it('held-out split: seeded, disjoint, at least one row on each side', () => {
    const rows = Array.from({ length: 20 }, (_, i) => i);
    const a = splitHeldOut(rows, 0.25, 0);
    expect(a.heldOut).toHaveLength(5);
    expect([...a.train, ...a.heldOut].sort((x, y) => x - y)).toEqual(rows);
    expect(splitHeldOut(rows, 0.25, 0)).toEqual(a);
    expect(splitHeldOut(rows, 0.25, 1).heldOut).not.toEqual(a.heldOut);
    expect(splitHeldOut([1, 2], 0.01).heldOut).toHaveLength(1);
    expect(splitHeldOut([1, 2], 0.9).train).toHaveLength(1);
    expect(splitHeldOut([1], 0.5)).toEqual({ train: [1], heldOut: [] });
    expect(splitHeldOut(rows, 0).heldOut).toEqual([]);
    expect(() => splitHeldOut(rows, 1)).toThrow(/\[0, 1\)/);
  });

  it('the example dataset round-trips through JSONL', () => {
    const rows = [{ inputIds: [4, 5, 1], targetIds: [6, 7, 1] }];
    expect(parseDataset(toJsonl(rows))).toEqual(rows);
  });

  it('adapter names', () => {
    expect(adapterNameProblem('my-lora_2', [])).toBeUndefined();
    expect(adapterNameProblem('', [])).toMatch(/name/);
    expect(adapterNameProblem('2fast', [])).toMatch(/letter/);
    expect(adapterNameProblem('a,b', [])).toMatch(/letter/);
    expect(adapterNameProblem('x'.repeat(65), [])).toMatch(/64/);
    expect(adapterNameProblem('taken', ['taken'])).toMatch(/already exists/);
    expect(nextFreeName('lora', ['lora'])).toBe('lora-2');
    expect(nextFreeName('lora-2', ['lora-2', 'lora-3'])).toBe('lora-4');
  });
});

describe('streamed text', () => {
  it('shows only text up to the last space while streaming, never shrinks, and ends with the full text', () => {
    // A decoder whose last word changes as tokens arrive (as SentencePiece pieces do).
    const pieces: Record<number, string> = { 1: '▁hel', 2: 'lo', 3: '▁wor', 4: 'ld' };
    const s = textStream((ids) =>
      ids
        .map((i) => pieces[i])
        .join('')
        .replace(/▁/g, ' ')
        .trimStart(),
    );
    expect(s.push(1)).toBe('');
    expect(s.push(2)).toBe('');
    expect(s.push(3)).toBe('hello ');
    expect(s.push(4)).toBe('hello ');
    expect(s.end()).toBe('hello world');
  });

  it('skips the given ids (eos in id mode)', () => {
    const s = textStream((ids) => `${ids.join(' ')} `, [1]);
    expect(s.push(5)).toBe('5 ');
    expect(s.push(1)).toBe('5 ');
    expect(s.end()).toBe('5 ');
  });
});

describe('ZIP downloads', () => {
  it('crc32 of a known string', () => {
    expect(crc32(new TextEncoder().encode('123456789'))).toBe(0xcbf43926);
  });

  it('the system unzip (or Python zipfile) reads the archive back byte for byte', () => {
    const files = { 'adapter_config.json': new TextEncoder().encode('{"a":1}\n'), 'adapter_model.safetensors': Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 255) };
    const dir = mkdtempSync(join(tmpdir(), 'adapterkit-zip-'));
    const zip = join(dir, 'x.zip');
    writeFileSync(zip, zipFiles('my-adapter', files));
    try {
      execFileSync('unzip', ['-q', zip, '-d', dir]);
    } catch {
      execFileSync('python3', ['-m', 'zipfile', '-e', zip, dir]);
    }
    for (const [f, bytes] of Object.entries(files)) expect(Buffer.from(bytes).equals(readFileSync(join(dir, 'my-adapter', f))), f).toBe(true);
  });
});

describe('model sources', () => {
  const page = 'http://127.0.0.1:5173/app/index.html';
  it('URLs resolve against the page; Hub ids become resolve URLs', () => {
    expect(modelSourceUrl('tiny-gated/', page)).toBe('http://127.0.0.1:5173/app/tiny-gated');
    expect(modelSourceUrl('  ', page)).toBe('http://127.0.0.1:5173/app/tiny-gated');
    expect(modelSourceUrl('./models/t5', page)).toBe('http://127.0.0.1:5173/app/models/t5');
    expect(modelSourceUrl('https://example.com/m/', page)).toBe('https://example.com/m');
    expect(modelSourceUrl('google/flan-t5-small', page)).toBe('https://huggingface.co/google/flan-t5-small/resolve/main');
    expect(modelSourceUrl('google/flan-t5-small@refs/pr/1', page)).toBe('https://huggingface.co/google/flan-t5-small/resolve/refs%2Fpr%2F1');
  });
});
