import { describe, it, expect, beforeAll } from 'vitest';
import { tf, initBackend } from '@adapterkit/backend';
import { ForwardContext, sequenceMeanGate } from '../src/index.js';

describe('sequenceMeanGate', () => {
  let gates: tf.Tensor;
  beforeAll(async () => {
    await initBackend('cpu');
    gates = tf.tensor3d([
      [[0.1], [0.5], [0.9]],
      [[0.2], [0.4], [0.0]],
    ]); // [2 rows, 3 positions, 1]
  });

  it('over an encoder sequence: the plain mean, [rows, 1, k]', async () => {
    const g = sequenceMeanGate(gates, { causal: false, key: 'k' }, new ForwardContext(null));
    expect(g.shape).toEqual([2, 1, 1]);
    const d = await g.data();
    expect(d[0]).toBeCloseTo(0.5, 6);
    expect(d[1]).toBeCloseTo(0.2, 6);
  });

  it('over the decoder sequence: causal mean, equal to a running mean over cached steps (with beam reordering)', async () => {
    const full = (await sequenceMeanGate(gates, { causal: true, key: 'k' }, new ForwardContext(null)).array()) as number[][][];
    expect(full[0].map((r) => r[0])).toEqual([0.1, 0.3, 0.5].map((x) => expect.closeTo(x, 6)));
    const ctx = new ForwardContext(null);
    const stepwise: number[][] = [[], []];
    for (let t = 0; t < 3; t++) {
      const g = ctx.atDecodingPosition(t, () => sequenceMeanGate(gates.slice([0, t, 0], [2, 1, 1]), { causal: true, key: 'k' }, ctx));
      const d = await g.data();
      stepwise[0].push(d[0]);
      stepwise[1].push(d[1]);
      g.dispose();
    }
    expect(stepwise[0]).toEqual(full[0].map((r) => expect.closeTo(r[0], 6)));
    expect(stepwise[1]).toEqual(full[1].map((r) => expect.closeTo(r[0], 6)));
    // a beam reorder swaps rows: the running sums follow
    ctx.reorderRows([1, 0]);
    const next = await ctx.atDecodingPosition(3, () => sequenceMeanGate(tf.tensor3d([[[1]], [[1]]]), { causal: true, key: 'k' }, ctx)).data();
    expect(next[0]).toBeCloseTo((0.2 + 0.4 + 0.0 + 1) / 4, 6);
    expect(next[1]).toBeCloseTo((0.1 + 0.5 + 0.9 + 1) / 4, 6);
    const before = tf.memory().numTensors;
    ctx.dispose();
    expect(tf.memory().numTensors).toBeLessThan(before);
  });
});
