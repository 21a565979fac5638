import { Tokenizer } from '@huggingface/tokenizers';
import { ConfigError, InputError } from '@adapterkit/core';

export interface BatchEncoding {
  inputIds: number[][];
  attentionMask: number[][];
}

/**
 * The longest text encode accepts, in characters, checked before tokenizing: the tokenizer's recursion
 * overflows the stack somewhere above 100k characters (a RangeError), and its time grows with the text long
 * after the model's input limit. 64 Ki characters is far above any T5 input (512 tokens ≈ 2–3k characters).
 */
export const MAX_TEXT_LENGTH = 65536;

/** T5's tokenizer.json (Unigram, Metaspace, `</s>` appended) through @huggingface/tokenizers. */
export class T5Tokenizer {
  private readonly tok: Tokenizer;
  constructor(
    tokenizerJson: unknown,
    tokenizerConfig: unknown = {},
    readonly padTokenId = 0,
  ) {
    if (!tokenizerJson || typeof tokenizerJson !== 'object') throw new ConfigError('tokenizer.json must be a JSON object');
    try {
      this.tok = new Tokenizer(tokenizerJson as object, (tokenizerConfig ?? {}) as object);
    } catch (e) {
      throw new ConfigError(`tokenizer.json cannot be loaded: ${(e as Error).message}`);
    }
  }

  /** Token ids of one text, with `</s>` appended (add_special_tokens, as transformers). */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    checkText(text);
    return this.tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  tokenize(text: string): string[] {
    checkText(text);
    return this.tok.encode(text).tokens;
  }

  decode(ids: number[], options: { skipSpecialTokens?: boolean } = {}): string {
    return this.tok.decode(ids, { skip_special_tokens: options.skipSpecialTokens ?? true });
  }

  /** Encodes a batch, right-padded with the pad id, with its attention mask; optional truncation. */
  encodeBatch(texts: string[], options: { maxLength?: number } = {}): BatchEncoding {
    if (!Array.isArray(texts) || texts.length === 0) throw new InputError('encodeBatch needs a non-empty list of strings', 'texts');
    const rows = texts.map((t) => {
      const ids = this.encode(t);
      return options.maxLength && ids.length > options.maxLength ? [...ids.slice(0, options.maxLength - 1), ids[ids.length - 1]] : ids;
    });
    const len = Math.max(...rows.map((r) => r.length));
    return {
      inputIds: rows.map((r) => [...r, ...new Array(len - r.length).fill(this.padTokenId)]),
      attentionMask: rows.map((r) => [...new Array(r.length).fill(1), ...new Array(len - r.length).fill(0)]),
    };
  }
}

function checkText(text: unknown): asserts text is string {
  if (typeof text !== 'string') throw new InputError(`encode expects a string, got ${typeof text}`, 'text');
  if (text.length > MAX_TEXT_LENGTH) throw new InputError(`text of ${text.length} characters is longer than the ${MAX_TEXT_LENGTH} the tokenizer accepts`, 'text');
}
