/**
 * The pieces every T5 attention shares — encoder self-attention, the decoder's full pass, its cached
 * step and cross-attention all end in `attend` with keys/values described the same way (packed rows,
 * an optional prefix in [batch, heads, P, d_kv], one additive key mask, optional bias and causality).
 * Prefix masks and key masks are assembled in one place, `keyMask`.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { LayoutError, type PrefixKV } from '@adapterkit/core';
import { attention, MASK_VALUE, type PackedKeysValues } from '@adapterkit/kernels';

/** Everything one attention call attends over. */
export interface KeysValues {
  packed: PackedKeysValues;
  prefix?: { keys: Tensor; values: Tensor };
  /** Additive [rows | 1, P + Lk]. */
  mask?: Tensor;
  bias?: { table: Tensor; index: Tensor };
  /** Causal: real key j visible to query i iff j ≤ i + causalOffset. */
  causalOffset?: number;
}

/** Additive padding mask [rows, L] (0 where the 0/1 mask is 1, MASK_VALUE where it is 0). */
export function additiveMask(mask01: Tensor): Tensor {
  return tf.tidy(() => tf.sub(1, mask01.cast('float32')).mul(MASK_VALUE));
}

/** Checks a prefix against the attention it enters (the one cache layout, [batch, heads, P, d_kv]). */
export function checkPrefix(prefix: PrefixKV, rows: number, heads: number, dKv: number): void {
  const k = prefix.keys;
  if (k.rank !== 4 || prefix.values.rank !== 4)
    throw new LayoutError(`prefix keys/values must have rank 4 ([batch, heads, time, d_kv]), got [${k.shape}] and [${prefix.values.shape}]`);
  if (k.shape[0] !== rows || k.shape[1] !== heads || k.shape[3] !== dKv)
    throw new LayoutError(`prefix keys [${k.shape}] do not fit ${rows} rows of ${heads} heads × d_kv ${dKv} ([batch, heads, time, d_kv])`);
}

/**
 * The key mask of an attention: the prefix's padding (BatchSplit pads shorter prefixes with masked
 * positions) in front of the real keys' mask. [rows | 1, P + Lk], or undefined when nothing is masked.
 */
export function keyMask(prefix: PrefixKV | undefined, real: Tensor | undefined, rows: number, realLength: number): Tensor | undefined {
  if (!prefix) return real;
  return tf.tidy(() => {
    const p = prefix.keys.shape[2] as number;
    const prefixPart = additiveMask(prefix.mask.reshape([rows, p]));
    const realPart = real ? (real.shape[0] === rows ? real : tf.tile(real, [rows, 1])) : tf.zeros([rows, realLength]);
    return tf.concat([prefixPart, realPart], 1);
  });
}

/** One attention: queries (columns from qOffset) over the keys/values → [rows, Lq, heads·d_kv]. */
export function attend(q: Tensor, qOffset: number, kv: KeysValues, heads: number, dKv: number, dropout?: { rate: number; seed: number }): Tensor {
  return attention(q, kv.packed, {
    numHeads: heads,
    headDim: dKv,
    qOffset,
    prefix: kv.prefix,
    bias: kv.bias,
    mask: kv.mask,
    causalOffset: kv.causalOffset,
    dropout,
  });
}
