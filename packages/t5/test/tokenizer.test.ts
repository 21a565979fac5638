/**
 * Tokenizer: ids, tokens and decoded text identical to what the Rust tokenizers library produced
 * (tokenizer-reference.json); batch encoding with padding and attention mask; text in, text out.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, readReference, initBackend } from './helpers.js';

const entries = readReference(`${FIXTURE_DIR}/tokenizer-reference.json`) as { text: string; ids: number[]; tokens: string[]; decoded: string }[];

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`tokenizer and generateText on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });
    afterAll(() => model.dispose());

    it(`matches tokenizer-reference.json on all ${entries.length} entries (ids, tokens, decoded)`, () => {
      const tok = model.tokenizer!;
      expect(tok).toBeDefined();
      for (const e of entries) {
        expect(tok.encode(e.text), e.text).toEqual(e.ids);
        expect(tok.tokenize(e.text), e.text).toEqual(e.tokens);
        expect(tok.decode(e.ids), e.text).toEqual(e.decoded);
      }
    });

    it('encodeBatch right-pads with the pad id and masks the padding; maxLength keeps </s>', () => {
      const tok = model.tokenizer!;
      const texts = entries.map((e) => e.text);
      const batch = tok.encodeBatch(texts);
      const longest = Math.max(...entries.map((e) => e.ids.length));
      entries.forEach((e, i) => {
        expect(batch.inputIds[i]).toHaveLength(longest);
        expect(batch.inputIds[i].slice(0, e.ids.length)).toEqual(e.ids);
        expect(batch.inputIds[i].slice(e.ids.length).every((t) => t === 0)).toBe(true);
        expect(batch.attentionMask[i]).toEqual([...new Array(e.ids.length).fill(1), ...new Array(longest - e.ids.length).fill(0)]);
      });
      const cut = tok.encodeBatch([texts[0]], { maxLength: 5 }).inputIds[0];
      expect(cut).toEqual([...entries[0].ids.slice(0, 4), 1]);
      expect(() => tok.encodeBatch([])).toThrow(/non-empty/);
    });

    it('generateText returns one decoded string per input, equal to decode(generate(encodeBatch))', async () => {
      const texts = ['the quick brown fox', 'lazy dog', ''];
      const out = await model.generateText(texts, { maxNewTokens: 6 });
      expect(out).toHaveLength(3);
      for (const s of out) expect(typeof s).toBe('string');
      const enc = model.tokenizer!.encodeBatch(texts);
      const ids = await model.generate({ ...enc, maxNewTokens: 6 });
      expect(out).toEqual(ids.map((r) => model.tokenizer!.decode(r)));
      // the copy task (shift 1) makes the output text-like, not empty
      expect(out[0].length).toBeGreaterThan(0);
    });
  });
}
