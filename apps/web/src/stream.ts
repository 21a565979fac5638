/**
 * Streamed generation text: each new token re-decodes the whole sequence so far (a piece alone decodes
 * wrongly: SentencePiece's word-start marker, multi-token characters) and shows only the stable part — the
 * text up to the last space, which later tokens cannot change. `end()` gives the full text.
 * One small function on purpose: core's TextStreamer replaces it when it lands.
 */
export function textStream(decode: (ids: number[]) => string, skipIds: readonly number[] = []) {
  const ids: number[] = [];
  let shown = '';
  return {
    /** Adds a token; returns the text that is stable so far (only ever grows). */
    push(id: number): string {
      if (!skipIds.includes(id)) ids.push(id);
      const text = decode(ids);
      const stable = text.endsWith('\n') ? text : text.slice(0, text.lastIndexOf(' ') + 1);
      if (stable.length > shown.length && stable.startsWith(shown)) shown = stable;
      return shown;
    },
    end(): string {
      shown = decode(ids);
      return shown;
    },
  };
}
