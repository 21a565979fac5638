/**
 * Row-wise edits of a T5 decoder state, for continuous batching (core's DecodeBatch): rows from several
 * states, each on its own timeline, become one state. A row with `length` cached tokens is placed so its
 * tokens end where the longest row's end; the slots in front of it are masked. T5's decoder attention
 * sees relative positions only, so the row computes exactly what it computes alone.
 *
 * Every tensor of the new state is ONE gather from its sources (flattened to slots, plus a filler slot),
 * with the slot index computed here: a regroup costs a few kernels per layer however many rows move.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { InputError, type ForwardContext, type RowPick } from '@adapterkit/core';
import { MASK_VALUE } from '@adapterkit/kernels';
import type { DecoderState, LayerCache } from './model.js';

/** Rows [n, slots, …] of each source, flattened to slots and followed by one `fill` slot; gathered at `index`. */
function gatherSlots(sources: Tensor[], fill: number, index: Tensor, shape: number[]): Tensor {
  return tf.tidy(() => {
    const width = sources[0].shape[2] ?? 1;
    const flat = sources.map((s) => s.reshape([-1, width]));
    flat.push(tf.fill([1, width], fill));
    return tf.gather(tf.concat(flat, 0), index).reshape(shape);
  });
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
  const R = picks.length;
  const T = Math.max(0, ...picks.map((p) => p.length));
  const C = Math.max(capacity, T + 1);
  const lengths = states.map((s) => s.layers[0].cross.packed.source.shape[1] as number);
  const L = Math.max(...lengths);
  // self caches: row r's tokens [step − length, step) of its source → slots [T − length, T); the rest is the zero slot
  const selfOffsets: number[] = [];
  const crossOffsets: number[] = [];
  let selfTotal = 0;
  let crossTotal = 0;
  states.forEach((s, k) => {
    selfOffsets.push(selfTotal);
    crossOffsets.push(crossTotal);
    selfTotal += s.rows * s.capacity;
    crossTotal += s.rows * lengths[k];
  });
  const selfIndex = new Int32Array(R * C).fill(selfTotal);
  const crossIndex = new Int32Array(R * L).fill(crossTotal);
  picks.forEach((p, r) => {
    const s = states[p.state];
    const from = selfOffsets[p.state] + p.row * s.capacity + s.step - p.length;
    for (let j = 0; j < p.length; j++) selfIndex[r * C + T - p.length + j] = from + j;
    const cross = crossOffsets[p.state] + p.row * lengths[p.state];
    for (let j = 0; j < lengths[p.state]; j++) crossIndex[r * L + j] = cross + j;
  });
  const selfSlots = tf.tensor1d(selfIndex, 'int32');
  const crossSlots = tf.tensor1d(crossIndex, 'int32');
  // Without prefixes (refused above) every layer's cross mask is the encoder's padding mask: gathered once.
  const masks = states.map((s, k) => {
    const m = s.layers[0].cross.mask;
    if (!m) return tf.zeros([s.rows, lengths[k], 1]);
    return (m.shape[0] === s.rows ? m : tf.tile(m, [s.rows, 1])).reshape([s.rows, lengths[k], 1]);
  });
  const crossMask = gatherSlots(masks, MASK_VALUE, crossSlots, [R, L]);
  tf.dispose(masks); // reshaped views: the sources keep their own
  const layers = states[0].layers.map((_, i): LayerCache => {
    const width = (t: Tensor) => t.shape[2] as number;
    const first = states[0].layers[i];
    return {
      self: gatherSlots(
        states.map((s) => s.layers[i].self),
        0,
        selfSlots,
        [R, C, width(first.self)],
      ),
      cross: {
        packed: {
          source: gatherSlots(
            states.map((s) => s.layers[i].cross.packed.source),
            0,
            crossSlots,
            [R, L, width(first.cross.packed.source)],
          ),
          kOffset: first.cross.packed.kOffset,
          vOffset: first.cross.packed.vOffset,
        },
        mask: i === 0 ? crossMask : crossMask.clone(),
      },
    };
  });
  tf.dispose([selfSlots, crossSlots]);
  // one additive self mask per layer when some row starts later than slot 0
  if (picks.some((p) => p.length < T)) {
    const mask = new Float32Array(R * C);
    picks.forEach((p, r) => mask.fill(MASK_VALUE, r * C, r * C + (T - p.length)));
    const m = tf.tensor2d(mask, [R, C]);
    for (const l of layers) l.selfMask = m.clone();
    m.dispose();
  }
  // DecodeBatch stops each row at its own maxNewTokens; the cache may grow as long as some row runs
  return { ctx, layers, capacity: C, maxCapacity: Number.POSITIVE_INFINITY, step: T, rows: R };
}
