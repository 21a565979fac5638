/**
 * TextStreamer with the fixture's real tokenizer (Unigram, Metaspace): word pieces are never split, the
 * stream equals the final decoded text, one streamer per row of a batched generation.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { TextStreamer } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, readJson } from './fixture-model.js';
import { initBackend } from './helpers.js';

const cases: { text: string; ids: number[]; decoded: string }[] = readJson(`${FIXTURE_DIR}/tokenizer-reference.json`);

describe('TextStreamer with the fixture tokenizer', () => {
  let model: T5ForConditionalGeneration;
  beforeAll(async () => {
    await initBackend('cpu');
    model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
  });

  it('streams whole words (word pieces joined) and ends with the decoded text', () => {
    const tok = model.tokenizer!;
    for (const c of cases) {
      const chunks: string[] = [];
      const s = new TextStreamer(tok, (t) => t && chunks.push(t));
      for (const id of c.ids) s.put(id);
      s.end();
      expect(chunks.join('')).toBe(c.decoded);
      expect(chunks.join('')).toBe(tok.decode(c.ids));
      // every chunk is whole words: it ends where the final text has a space or ends
      let at = 0;
      for (const chunk of chunks) {
        at += chunk.length;
        expect([' ', undefined]).toContain(c.decoded[at]);
      }
    }
    const first = cases[0];
    expect(first.decoded.startsWith('translate english')).toBe(true);
  });

  it('one streamer per row of a batched generation streams exactly each row’s final text', async () => {
    const tok = model.tokenizer!;
    const enc = tok.encodeBatch(cases.map((c) => c.text));
    const texts = cases.map(() => '');
    const streamers = cases.map((_, r) => new TextStreamer(tok, (t) => (texts[r] += t)));
    const done = cases.map(() => false);
    const out = await model.generate({
      ...enc,
      maxNewTokens: 12,
      onToken: (_step, tokens) =>
        tokens.forEach((t, r) => {
          if (done[r]) return;
          streamers[r].put(t);
          done[r] = t === 1;
        }),
    });
    streamers.forEach((s) => s.end());
    expect(texts).toEqual(out.map((row) => tok.decode(row)));
    expect(texts.some((t) => t.length > 0)).toBe(true);
  });
});
