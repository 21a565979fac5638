/**
 * Row-wise edits of a T5 decoder state, for continuous batching (core's DecodeBatch): rows from several
 * states, each on its own timeline, become one state. A row with `length` cached tokens is placed so its
 * tokens end where the longest row's end; the slots in front of it are masked. T5's decoder attention
 * sees relative positions only, so the row computes exactly what it computes alone.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { InputError, type ForwardContext, type RowPick } from '@adapterkit/core';
import { MASK_VALUE } from '@adapterkit/kernels';
import type { DecoderState, LayerCache } from './model.js';

/** Consecutive picks from one state with one length: one gather and one slice per layer. */
interface Segment {
  state: number;
  rows: number[];
  length: number;
}

function segmentsOf(picks: RowPick[]): Segment[] {
  const out: Segment[] = [];
  for (const p of picks) {
    const last = out[out.length - 1];
    if (last && last.state === p.state && last.length === p.length) last.rows.push(p.row);
    else out.push({ state: p.state, rows: [p.row], length: p.length });
  }
  return out;
}

/** The regrouped state (see RowwiseDecoder.regroupDecoderRows); the sources are left to the caller to dispose. */
export function regroupDecoderState(states: DecoderState[], picks: RowPick[], capacity: number, ctx: ForwardContext): DecoderState {
  for (const s of states) {
    if (s.layers.some((l) => l.prefix || l.cross.prefix))
      throw new InputError('a decoder state with prefix keys/values cannot be regrouped by rows (prefix tuning decodes alone)', 'composition');
  }
  for (const p of picks) {
    const s = states[p.state];
    if (!s || p.row < 0 || p.row >= s.rows || p.length > s.step) throw new InputError(`row pick ${JSON.stringify(p)} is outside its state`, 'picks');
  }
  const segments = segmentsOf(picks);
  const T = Math.max(0, ...picks.map((p) => p.length));
  const C = Math.max(capacity, T + 1);
  const L = Math.max(...states.map((s) => s.layers[0].cross.packed.source.shape[1] as number));
  const layers = states[0].layers.map((_, i): LayerCache => {
    return tf.tidy(() => {
      const selfParts: Tensor[] = [];
      const crossParts: Tensor[] = [];
      const crossMasks: Tensor[] = [];
      for (const seg of segments) {
        const s = states[seg.state];
        const l = s.layers[i];
        const idx = tf.tensor1d(seg.rows, 'int32');
        const n = seg.rows.length;
        const width = l.self.shape[2] as number;
        // the row's tokens: source slots [step − length, step) → new slots [T − length, T)
        const tokens = seg.length > 0 ? tf.gather(l.self, idx).slice([0, s.step - seg.length, 0], [n, seg.length, width]) : undefined;
        selfParts.push(
          tokens
            ? tf.pad(tokens, [
                [0, 0],
                [T - seg.length, C - T],
                [0, 0],
              ])
            : tf.zeros([n, C, width]),
        );
        const src = tf.gather(l.cross.packed.source, idx);
        const len = src.shape[1] as number;
        crossParts.push(
          tf.pad(src, [
            [0, 0],
            [0, L - len],
            [0, 0],
          ]),
        );
        const m = l.cross.mask ? (l.cross.mask.shape[0] === s.rows ? tf.gather(l.cross.mask, idx) : tf.tile(l.cross.mask, [n, 1])) : tf.zeros([n, len]);
        crossMasks.push(
          tf.pad(
            m,
            [
              [0, 0],
              [0, L - len],
            ],
            MASK_VALUE,
          ),
        );
      }
      const first = states[0].layers[i].cross.packed;
      return {
        self: tf.concat(selfParts, 0),
        cross: { packed: { source: tf.concat(crossParts, 0), kOffset: first.kOffset, vOffset: first.vOffset }, mask: tf.concat(crossMasks, 0) },
      };
    });
  });
  // one additive self mask per layer when some row starts later than slot 0
  const shifted = segments.some((s) => s.length < T);
  if (shifted) {
    const mask = new Float32Array(picks.length * C);
    picks.forEach((p, r) => mask.fill(MASK_VALUE, r * C, r * C + (T - p.length)));
    const m = tf.tensor2d(mask, [picks.length, C]);
    for (const l of layers) l.selfMask = m.clone();
    m.dispose();
  }
  return { ctx, layers, capacity: C, step: T, rows: picks.length };
}
