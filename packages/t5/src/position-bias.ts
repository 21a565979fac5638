import { tf, type Tensor } from '@adapterkit/backend';
import type { ForwardContext, PrefixPositionRule } from '@adapterkit/core';
import { reference } from '@adapterkit/kernels';

const f = Math.fround;

/**
 * transformers' T5Attention._relative_position_bucket, with its float32 arithmetic emulated so that
 * bucket boundaries fall exactly where PyTorch puts them.
 */
export function relativePositionBucket(relative: number, bidirectional: boolean, numBuckets: number, maxDistance: number): number {
  let buckets = 0;
  let n = numBuckets;
  let rel = relative;
  if (bidirectional) {
    n = Math.floor(n / 2);
    if (rel > 0) buckets += n;
    rel = Math.abs(rel);
  } else {
    rel = -Math.min(rel, 0);
  }
  const maxExact = Math.floor(n / 2);
  if (rel < maxExact) return buckets + rel;
  const large = maxExact + Math.trunc(f(f(f(Math.log(f(rel / maxExact))) / f(Math.log(maxDistance / maxExact))) * (n - maxExact)));
  return buckets + Math.min(large, n - 1);
}

/**
 * T5's relative position bias for one stack: layer 0's table [buckets, heads] and, per attention shape,
 * the bucket of every (query, key column) — never a bias padded once and reused, so layers with different
 * prefix lengths (or none, under AdapterDrop) each get an index that fits them (seed failure 1). The
 * attention kernel reads table[index] itself; index −1 means no bias.
 */
export class PositionBias {
  constructor(
    readonly table: Tensor,
    readonly bidirectional: boolean,
    readonly numBuckets: number,
    readonly maxDistance: number,
  ) {}

  /**
   * Buckets [qLen, prefixLen + kLen] for queries at qStart.. over `prefixLen` prefix columns and `kLen`
   * real keys at positions 0..kLen-1.
   * rule 'zero' (adapterkit): prefix columns get no bias (−1), real↔real buckets are those without prefix.
   * rule 'past' (PEFT): the prefix acts as past keys at positions 0..P-1; queries and real keys sit after it.
   * rule 'shifted' (`adapters`: T5Attention.compute_bias(query_length, P + kLen) over the concatenated keys): column
   * j is at position j, queries at their own positions qStart + i.
   */
  buckets(qStart: number, qLen: number, kLen: number, prefixLen: number, rule: PrefixPositionRule): Int32Array {
    const n = prefixLen + kLen;
    const idx = new Int32Array(qLen * n);
    for (let i = 0; i < qLen; i++) {
      for (let j = 0; j < n; j++) {
        let bucket: number;
        if (rule === 'shifted') bucket = relativePositionBucket(j - (qStart + i), this.bidirectional, this.numBuckets, this.maxDistance);
        else if (rule === 'past') bucket = relativePositionBucket(j - (qStart + prefixLen + i), this.bidirectional, this.numBuckets, this.maxDistance);
        else bucket = j < prefixLen ? -1 : relativePositionBucket(j - prefixLen - (qStart + i), this.bidirectional, this.numBuckets, this.maxDistance);
        idx[i * n + j] = bucket;
      }
    }
    return idx;
  }

  /** The buckets as an int32 tensor [qLen, prefixLen + kLen], made once per forward context and shape. */
  index(qStart: number, qLen: number, kLen: number, prefixLen: number, rule: PrefixPositionRule, ctx: ForwardContext): Tensor {
    return ctx.remember(`position-bias:${this.bidirectional}:${qStart}:${qLen}:${kLen}:${prefixLen}:${rule}`, () => this.indexTensor(qStart, qLen, kLen, prefixLen, rule));
  }

  /** The buckets as a fresh int32 tensor (a cached decoding step's, which changes every step). */
  indexTensor(qStart: number, qLen: number, kLen: number, prefixLen: number, rule: PrefixPositionRule): Tensor {
    return tf.tensor2d(this.buckets(qStart, qLen, kLen, prefixLen, rule), [qLen, prefixLen + kLen], 'int32');
  }

  /** The materialised bias [1, heads, qLen, prefixLen + kLen] (for inspection and tests). */
  bias(qStart: number, qLen: number, kLen: number, prefixLen: number, rule: PrefixPositionRule): Tensor {
    return tf.tidy(() => reference.gatherBias(this.table, this.indexTensor(qStart, qLen, kLen, prefixLen, rule)));
  }

  dispose(): void {
    this.table.dispose();
  }
}
