import { tf, type Tensor } from '@adapterkit/backend';
import type { ForwardContext } from '@adapterkit/core';

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
 * T5's relative position bias for one stack. Computed from layer 0's table for each distinct
 * (query range, key range, prefix) a forward needs — never padded once and reused, so layers with
 * different prefix lengths (or none, under AdapterDrop) each get a bias that fits them.
 */
export class PositionBias {
  private readonly scopes = new WeakMap<ForwardContext, Map<string, Tensor>>();

  constructor(
    readonly table: Tensor,
    readonly bidirectional: boolean,
    readonly numBuckets: number,
    readonly maxDistance: number,
  ) {}

  /** Bias [1, H, qLen, kLen] for query positions qStart.. and key positions kStart.. */
  compute(qStart: number, qLen: number, kStart: number, kLen: number): Tensor {
    const idx = new Int32Array(qLen * kLen);
    for (let i = 0; i < qLen; i++) {
      for (let j = 0; j < kLen; j++) idx[i * kLen + j] = relativePositionBucket(kStart + j - (qStart + i), this.bidirectional, this.numBuckets, this.maxDistance);
    }
    return tf.tidy(() => {
      const heads = this.table.shape[1] as number;
      return tf.gather(this.table, tf.tensor1d(idx, 'int32')).reshape([qLen, kLen, heads]).transpose([2, 0, 1]).expandDims(0);
    });
  }

  /**
   * Bias for `qLen` queries at qStart.. over `prefixLen` prefix keys followed by `kLen` real keys.
   * rule 'zero' (adapterkit): prefix columns get zero bias, real↔real bias is untouched.
   * rule 'past' (PEFT): the prefix acts as past keys at positions 0..P-1; queries and real keys sit after it.
   */
  private build(qStart: number, qLen: number, kLen: number, prefixLen: number, rule: 'zero' | 'past'): Tensor {
    if (prefixLen === 0) return this.compute(qStart, qLen, 0, kLen);
    if (rule === 'past') return this.compute(qStart + prefixLen, qLen, 0, prefixLen + kLen);
    return tf.tidy(() => tf.concat([tf.zeros([1, this.table.shape[1] as number, qLen, prefixLen]), this.compute(qStart, qLen, 0, kLen)], 3));
  }

  /** A per-forward accessor that memoises each distinct bias shape within the forward. */
  forward(ctx: ForwardContext) {
    let memo = this.scopes.get(ctx);
    if (!memo) {
      memo = new Map();
      this.scopes.set(ctx, memo);
    }
    const m = memo;
    return {
      get: (qStart: number, qLen: number, kLen: number, prefixLen: number, rule: 'zero' | 'past'): Tensor => {
        const key = `${qStart}:${qLen}:${kLen}:${prefixLen}:${rule}`;
        const hit = m.get(key);
        if (hit && !hit.isDisposed) return hit;
        const t = this.build(qStart, qLen, kLen, prefixLen, rule);
        m.set(key, t);
        return t;
      },
    };
  }

  /**
   * Bias for one step over a fixed-capacity cache: the query at position t over `prefixLen` prefix slots and
   * `capacity` token slots (slots after t are masked by the caller; their bias is irrelevant). Its shape
   * does not change from step to step.
   */
  forCachedStep(t: number, prefixLen: number, capacity: number, rule: 'zero' | 'past', ctx: ForwardContext): Tensor {
    return this.forward(ctx).get(t, 1, capacity, prefixLen, rule);
  }

  /** Bias for one cached decoding step: the query at position t over prefix + keys 0..t. */
  forStep(t: number, prefixLen: number, rule: 'zero' | 'past', ctx: ForwardContext): Tensor {
    return this.forward(ctx).get(t, 1, t + 1, prefixLen, rule);
  }

  dispose(): void {
    this.table.dispose();
  }
}
