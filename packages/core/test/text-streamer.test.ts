/**
 * TextStreamer on model-free decoders: a byte-level one (multi-byte characters arrive one byte at a time
 * and decode to U+FFFD until complete) and a word-level one with a tokenizer's space clean-up.
 */
import { describe, expect, it } from 'vitest';
import { TextStreamer, type TokenDecoder } from '../src/index.js';

/** Ids are UTF-8 bytes; 256 is a special token. Incomplete characters decode to U+FFFD, as byte-fallback tokenizers do. */
const bytes: TokenDecoder = {
  decode: (ids, o) => new TextDecoder().decode(Uint8Array.from(ids.filter((i) => i < 256 || !o?.skipSpecialTokens))),
};

function stream(decoder: TokenDecoder, ids: number[]): { chunks: string[]; ends: number } {
  const chunks: string[] = [];
  let ends = 0;
  const s = new TextStreamer(decoder, (text, end) => {
    if (text) chunks.push(text);
    if (end) ends++;
  });
  for (const id of ids) s.put(id);
  s.end();
  return { chunks, ends };
}

describe('TextStreamer', () => {
  it('emits whole words, never half a multi-byte character, and ends with exactly the decoded text', () => {
    const text = 'héllo wörld 😀 done';
    const ids = [...new TextEncoder().encode(text), 256];
    const { chunks, ends } = stream(bytes, ids);
    expect(chunks.join('')).toBe(text);
    expect(ends).toBe(1);
    for (const c of chunks) expect(c).not.toContain('\uFFFD');
    expect(chunks).toEqual(['héllo', ' wörld', ' 😀', ' done']);
  });

  it('CJK characters and newlines are emitted as soon as they are complete', () => {
    const text = '你好 a\nb';
    const seen: string[] = [];
    const s = new TextStreamer(bytes, (t) => seen.push(t));
    for (const b of new TextEncoder().encode('你')) s.put(b);
    expect(seen.join('')).toBe('你'); // three bytes, then the character at once
    for (const b of new TextEncoder().encode(text).slice(3)) s.put(b);
    expect(seen.join('')).toBe('你好 a\n');
    s.end();
    expect(seen.join('')).toBe(text);
  });

  it("holds the space before the last word back, so a decoder's clean-up (' .' → '.') never contradicts the stream", () => {
    const words = ['Hello', 'world', '.', 'Bye', ',', 'now'];
    const cleanup: TokenDecoder = {
      decode: (ids) =>
        ids
          .map((i) => words[i])
          .join(' ')
          .replace(/ ([.,])/g, '$1'),
    };
    const { chunks } = stream(cleanup, [0, 1, 2, 3, 4, 5]);
    expect(chunks.join('')).toBe('Hello world. Bye, now');
  });

  it('a streamer per row: rows interleaved step by step stream independently; end() resets for reuse', () => {
    const rows = ['one two', 'três quatro'].map((t) => [...new TextEncoder().encode(t)]);
    const out = ['', ''];
    const streamers = out.map((_, r) => new TextStreamer(bytes, (t) => (out[r] += t)));
    for (let step = 0; step < Math.max(...rows.map((r) => r.length)); step++) rows.forEach((ids, r) => step < ids.length && streamers[r].put(ids[step]));
    streamers.forEach((s) => s.end());
    expect(out).toEqual(['one two', 'três quatro']);
    streamers[0].put([...new TextEncoder().encode('again ')]);
    expect(streamers[0].text).toBe('again');
  });
});
