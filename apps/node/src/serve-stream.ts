/**
 * Streamed text with transformers' TextStreamer rule: decode the whole sequence so far and emit only the
 * new stable part — up to the last space (a word piece may still change), never a trailing replacement
 * character (half of a multi-byte character). At the end the rest is emitted, so the streamed pieces
 * joined equal the final text. (core's TextStreamer will replace this; keep it this one function.)
 */
export function stableDelta(text: string, emitted: number, final: boolean): { delta: string; emitted: number } {
  let end = text.length;
  if (!final) {
    if (text.endsWith('\uFFFD')) end = 0;
    else if (!text.endsWith('\n')) end = text.lastIndexOf(' ') + 1;
  }
  // an earlier emission is never taken back: hold until the text grows past it again
  if (end <= emitted) return { delta: '', emitted };
  return { delta: text.slice(emitted, end), emitted: end };
}
