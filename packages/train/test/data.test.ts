import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import { BatchStream, DatasetError, collate, encodeRow, jsonlFileSource, jsonlSource, arraySource, Trainer, type DataSource, type EncoderOptions } from '../src/index.js';
import './bias-method.js';
import { loadTiny, shiftExamples } from './helpers.js';

const enc: EncoderOptions = { vocabSize: 128, maxSourceLength: 64, maxTargetLength: 64, truncation: 'truncate', eosTokenId: 1 };

/** Counts the rows a source hands out (to show that streaming reads lazily). */
function counting(src: DataSource): DataSource & { pulled: number } {
  const out = {
    name: src.name,
    inMemory: src.inMemory,
    pulled: 0,
    rows(skip?: number) {
      const it = src.rows(skip);
      return {
        next: async () => {
          const r = await it.next();
          if (!r.done) out.pulled++;
          return r;
        },
        return: async () => (await it.return?.()) ?? { done: true as const, value: undefined },
      };
    },
  };
  return out;
}

describe('data', () => {
  let dir: string;
  let file: string;
  const N = 3000;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'adapterkit-data-'));
    file = join(dir, 'big.jsonl');
    const rows = shiftExamples(N, 2, 11).map((e, i) =>
      JSON.stringify({ inputIds: [...e.inputIds.slice(0, -1), 3 + (i % 125), 3 + Math.floor(i / 125), 1], targetIds: e.targetIds, id: i }),
    );
    writeFileSync(file, `${rows.join('\n')}\n`);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('collate pads inputs with pad and labels with -100', () => {
    const b = collate([
      { inputIds: [5, 6, 1], targetIds: [7, 1] },
      { inputIds: [5, 1], targetIds: [8, 9, 1] },
    ]);
    expect(b.inputIds).toEqual([
      [5, 6, 1],
      [5, 1, 0],
    ]);
    expect(b.attentionMask).toEqual([
      [1, 1, 1],
      [1, 1, 0],
    ]);
    expect(b.labels).toEqual([
      [7, 1, -100],
      [8, 9, 1],
    ]);
    expect(b.targetTokens).toBe(5);
  });

  it('encodeRow: text rows via the tokenizer, truncation keeps eos, errors name the row', () => {
    const tok = { encode: (s: string) => [...s].map((c) => (c.charCodeAt(0) % 100) + 3).concat(1) };
    expect(encodeRow({ input: 'ab', target: 'c' }, 'row 0', 0, 'd', { ...enc, tokenizer: tok })).toEqual({ inputIds: [3 + 97, 3 + 98, 1], targetIds: [3 + 99, 1] });
    const warnings: string[] = [];
    expect(encodeRow({ inputIds: [5, 6, 7, 1], targetIds: [1] }, 'row 3', 3, 'd', { ...enc, maxSourceLength: 3, onWarning: (w) => warnings.push(w) }).inputIds).toEqual([5, 6, 1]);
    expect(warnings[0]).toMatch(/row 3: input truncated from 4 to 3/);
    expect(() => encodeRow({ input: 'x' }, 'row 4', 4, 'd', { ...enc, tokenizer: tok })).toThrow(/row 4: missing field 'target'/);
    expect(() => encodeRow({ input: 'x', target: 'y' }, 'row 4', 4, 'd', enc)).toThrow(/need a tokenizer/);
    expect(() => encodeRow(7, 'row 5', 5, 'd', enc)).toThrow(DatasetError);
    expect(() => encodeRow({ inputIds: [], targetIds: [1] }, 'row 6', 6, 'd', enc)).toThrow(/'inputIds' is empty/);
    expect(() => encodeRow({ inputIds: [1.5], targetIds: [1] }, 'row 6', 6, 'd', enc)).toThrow(/inputIds\[0\] = 1.5/);
  });

  it('streams a JSONL file lazily: one epoch covers every row once, reading at most one shuffle buffer ahead', async () => {
    const src = counting(jsonlFileSource(file));
    const stream = new BatchStream(src, { batchSize: 16, shuffle: true, shuffleBuffer: 200, bucketWindow: 4, padId: 0, encoder: enc }, new SeededRandom(1));
    await stream.next();
    expect(src.pulled).toBeLessThanOrEqual(201);
    const seen = new Set<string>();
    let rows = 16;
    while (stream.epoch === 0) {
      const b = await stream.next();
      if (stream.epoch > 0) break;
      rows += b.inputIds.length;
      b.inputIds.forEach((r, j) =>
        seen.add(
          r
            .slice(0, b.attentionMask[j].indexOf(0) < 0 ? r.length : b.attentionMask[j].indexOf(0))
            .slice(-3)
            .join(),
        ),
      );
      expect(src.pulled).toBeLessThanOrEqual(rows + 201);
    }
    expect(rows).toBe(N);
    expect(seen.size).toBe(N - 16); // every row after the first batch is distinct (and none repeats)
    await stream.close();
  });

  it('a streamed position restores to the same following batches', async () => {
    const opts = { batchSize: 8, shuffle: true, shuffleBuffer: 50, bucketWindow: 2, padId: 0, encoder: enc };
    const a = new BatchStream(jsonlFileSource(file), opts, new SeededRandom(4));
    for (let i = 0; i < 9; i++) await a.next();
    const pos = a.position;
    const state = a.rng.getState();
    const next = [await a.next(), await a.next(), await a.next()];
    const b = new BatchStream(jsonlFileSource(file), opts, new SeededRandom(99));
    await b.restore(pos);
    expect(b.rng.getState()).toBe(state);
    expect([await b.next(), await b.next(), await b.next()]).toEqual(next);
    await a.close();
    await b.close();
  });

  it('epochs reshuffle and an empty source fails', async () => {
    const s = new BatchStream(arraySource(shiftExamples(5, 2, 1)), { batchSize: 5, shuffle: true, bucketWindow: 1, padId: 0, encoder: enc }, new SeededRandom(2));
    const e0 = await s.next();
    const e1 = await s.next();
    expect(s.epoch).toBe(1);
    expect(e0.inputIds).not.toEqual(e1.inputIds);
    await expect(new BatchStream(jsonlSource('\n\n'), { batchSize: 2, shuffle: true, bucketWindow: 1, padId: 0, encoder: enc }, new SeededRandom(1)).next()).rejects.toThrow(
      /is empty/,
    );
  });

  it('trains from a streamed JSONL file', async () => {
    await initBackend('cpu');
    const model = await loadTiny();
    model.addAdapter('b', { method: 'testbias' }, { seed: 1 });
    const t = new Trainer(model, { adapters: 'b', trainData: jsonlFileSource(file), shuffleBuffer: 64, maxSteps: 3, batchSize: 8, lr: 1e-2 });
    const r = await t.train();
    expect(r.losses.every(Number.isFinite)).toBe(true);
    t.dispose();
    model.dispose();
  });
});
