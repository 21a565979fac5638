/** The one thing a streamer needs from a tokenizer. */
export interface TokenDecoder {
  decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string;
}

/** CJK ideographs end a "word" by themselves (transformers' TextStreamer._is_chinese_char). */
function isCjk(code: number): boolean {
  return (
    (code >= 0x4e00 && code <= 0x9fff) ||
    (code >= 0x3400 && code <= 0x4dbf) ||
    (code >= 0x20000 && code <= 0x2a6df) ||
    (code >= 0x2a700 && code <= 0x2b73f) ||
    (code >= 0x2b740 && code <= 0x2b81f) ||
    (code >= 0x2b820 && code <= 0x2ceaf) ||
    (code >= 0xf900 && code <= 0xfaff) ||
    (code >= 0x2f800 && code <= 0x2fa1f)
  );
}

/**
 * transformers' TextStreamer for one sequence: `put` token ids as they are generated; each time, the whole
 * sequence so far is decoded and only its new *stable* text is emitted — up to the last space (the word
 * after it may still change as word pieces join it), everything after a newline or a CJK character —
 * and nothing while the text ends in U+FFFD (a multi-byte character whose bytes are still arriving).
 * `end` flushes the rest. The emitted pieces always concatenate to the decoded text of all the ids.
 *
 * Unlike transformers, the token cache is never cut at a newline (decoding a suffix alone can drop a
 * leading space), and the space before the last word is held back with it (a tokenizer's clean-up may
 * still remove it, as in " ." → ".").
 */
export class TextStreamer {
  private readonly ids: number[] = [];
  private emitted = '';

  constructor(
    private readonly decoder: TokenDecoder,
    private readonly onText: (text: string, end: boolean) => void,
    private readonly options: { skipSpecialTokens?: boolean } = {},
  ) {}

  /** The text emitted so far. */
  get text(): string {
    return this.emitted;
  }

  put(ids: number | readonly number[]): void {
    if (typeof ids === 'number') this.ids.push(ids);
    else this.ids.push(...ids);
    const text = this.decode();
    if (text.endsWith('\uFFFD')) return;
    const lastChar = Array.from(text.slice(-2)).pop() ?? '';
    const wholeText = text.endsWith('\n') || isCjk(lastChar.codePointAt(0) ?? 0);
    this.emit(wholeText ? text : text.slice(0, Math.max(0, text.lastIndexOf(' '))), false);
  }

  /** Emits whatever is left (a final partial word, a trailing U+FFFD) and resets for the next sequence. */
  end(): void {
    const text = this.decode();
    this.emit(text, true);
    this.ids.length = 0;
    this.emitted = '';
  }

  private decode(): string {
    return this.decoder.decode(this.ids, { skipSpecialTokens: this.options.skipSpecialTokens ?? true });
  }

  /** Emits `upTo`'s part after what was emitted, when it extends it (text that changed is never re-emitted). */
  private emit(upTo: string, end: boolean): void {
    const fresh = upTo.length > this.emitted.length && upTo.startsWith(this.emitted) ? upTo.slice(this.emitted.length) : '';
    if (fresh) this.emitted = upTo;
    if (fresh || end) this.onText(fresh, end);
  }
}
