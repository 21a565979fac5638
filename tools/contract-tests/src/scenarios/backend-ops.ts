/**
 * Backend-level scenarios: the ops (and gradients) adapterkit's models and training depend on.
 * Shapes are tiny on purpose: webgpu runs on SwiftShader in CI.
 */
import { defineScenario, seeded, type MaterializedOutputs } from '../harness.js';

function expectClose(actual: number, expected: number, what: string, tol = 1e-5): void {
  if (!(Math.abs(actual - expected) <= tol)) throw new Error(`${what}: expected ${expected}, got ${actual}`);
}

function rowsSumTo(ref: MaterializedOutputs, key: string, total: number): void {
  const { shape, values } = ref[key]!;
  const cols = shape[shape.length - 1]!;
  for (let r = 0; r < values.length / cols; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += values[r * cols + c]!;
    expectClose(s, total, `${key} row ${r} sum`);
  }
}

defineScenario({
  name: 'matmul',
  run: (tf) =>
    tf.tidy(() => {
      const a = seeded([5, 8], 1);
      const b = seeded([8, 6], 2);
      const [da, db] = tf.grads((x: typeof a, y: typeof b) => tf.sum(tf.mul(tf.matMul(x, y), seeded([5, 6], 3))))([a, b]);
      return {
        small: tf.matMul(
          tf.tensor2d([
            [1, 2],
            [3, 4],
          ]),
          tf.tensor2d([
            [5, 6],
            [7, 8],
          ]),
        ),
        ab: tf.matMul(a, b),
        aTb: tf.matMul(seeded([8, 5], 4), b, true, false),
        abT: tf.matMul(a, seeded([6, 8], 5), false, true),
        aTbT: tf.matMul(seeded([8, 5], 6), seeded([6, 8], 7), true, true),
        matVec: tf.matMul(a, seeded([8, 1], 8)),
        dA: da!,
        dB: db!,
      };
    }),
  checkReference: (ref) => {
    const v = Array.from(ref.small!.values);
    if (v.join(',') !== '19,22,43,50') throw new Error(`2x2 matmul gave ${v}`);
  },
});

defineScenario({
  name: 'batched matmul',
  run: (tf) =>
    tf.tidy(() => {
      const a = seeded([2, 3, 4], 11);
      const b = seeded([2, 4, 5], 12);
      const [da, db] = tf.grads((x: typeof a, y: typeof b) => tf.sum(tf.mul(tf.matMul(x, y), seeded([2, 3, 5], 13))))([a, b]);
      return {
        ab: tf.matMul(a, b),
        // Attention-style: q k^T over [batch, heads, seq, dim].
        qkT: tf.matMul(seeded([2, 2, 3, 4], 14), seeded([2, 2, 5, 4], 15), false, true),
        aTb: tf.matMul(seeded([2, 4, 3], 16), b, true, false),
        broadcastB: tf.matMul(a, seeded([1, 4, 5], 17)),
        dA: da!,
        dB: db!,
      };
    }),
});

defineScenario({
  name: 'softmax',
  run: (tf) =>
    tf.tidy(() => {
      const logits = seeded([3, 7], 21, 3);
      const w = seeded([3, 7], 22);
      const grad = tf.grad((x: typeof logits) => tf.sum(tf.mul(tf.softmax(x), w)))(logits);
      // Masked attention as T5 does it: a large finite negative, never -Infinity (WGSL may assume no Inf).
      const mask = tf.tensor2d([
        [0, 0, 0, -1e9, -1e9, -1e9, -1e9],
        [0, 0, 0, 0, 0, -1e9, -1e9],
        [0, 0, 0, 0, 0, 0, 0],
      ]);
      return {
        softmax: tf.softmax(logits),
        softmax3d: tf.softmax(seeded([2, 3, 5], 23, 4)),
        masked: tf.softmax(tf.add(logits, mask)),
        dLogits: grad,
      };
    }),
  checkReference: (ref) => {
    rowsSumTo(ref, 'softmax', 1);
    rowsSumTo(ref, 'masked', 1);
    const m = ref.masked!.values;
    for (let c = 3; c < 7; c++) expectClose(m[c]!, 0, `masked[0,${c}]`);
  },
});

defineScenario({
  name: 'logSoftmax',
  run: (tf) =>
    tf.tidy(() => {
      const logits = seeded([4, 6], 31, 3);
      const labels = tf.oneHot(tf.tensor1d([0, 5, 2, 2], 'int32'), 6).toFloat(); // built outside the grad
      const crossEntropy = (x: typeof logits) => tf.neg(tf.mean(tf.sum(tf.mul(tf.logSoftmax(x), labels), -1)));
      const { value, grad } = tf.valueAndGrad(crossEntropy)(logits);
      return {
        logSoftmax: tf.logSoftmax(logits),
        loss: value,
        dLogits: grad,
      };
    }),
  checkReference: (ref) => rowsSumTo(ref, 'dLogits', 0),
});

defineScenario({
  name: 'gather + gradient',
  run: (tf) =>
    tf.tidy(() => {
      const table = seeded([10, 4], 41); // an embedding table
      const ids = tf.tensor2d(
        [
          [1, 3, 3],
          [9, 0, 1],
        ],
        undefined,
        'int32',
      ); // repeated ids accumulate
      const w = seeded([2, 3, 4], 42);
      const { value, grad } = tf.valueAndGrad((t: typeof table) => tf.sum(tf.mul(tf.gather(t, ids), w)))(table);
      const cols = tf.tensor1d([3, 0], 'int32');
      const dCols = tf.grad((t: typeof table) => tf.sum(tf.mul(tf.gather(t, cols, 1), seeded([10, 2], 43))))(table);
      return {
        gathered: tf.gather(table, ids),
        loss: value,
        dTable: grad,
        gatheredAxis1: tf.gather(table, cols, 1),
        dTableAxis1: dCols,
      };
    }),
  checkReference: (ref) => {
    // Row 2 of the table is never looked up: its gradient is exactly zero.
    const d = ref.dTable!.values;
    for (let c = 0; c < 4; c++) expectClose(d[2 * 4 + c]!, 0, `dTable[2,${c}]`, 0);
  },
});

defineScenario({
  name: 'layer norm + gradient',
  run: (tf) =>
    tf.tidy(() => {
      const x = seeded([2, 3, 8], 51, 2);
      const gamma = tf.add(1, seeded([8], 52, 0.1));
      const beta = seeded([8], 53, 0.1);
      const w = seeded([2, 3, 8], 54);
      const layerNorm = (v: typeof x, g: typeof gamma, b: typeof beta) => {
        const { mean, variance } = tf.moments(v, -1, true);
        return tf.add(tf.mul(tf.mul(tf.sub(v, mean), tf.rsqrt(tf.add(variance, 1e-6))), g), b);
      };
      const [dx, dGamma, dBeta] = tf.grads((v: typeof x, g: typeof gamma, b: typeof beta) => tf.sum(tf.mul(layerNorm(v, g, b), w)))([x, gamma, beta]);
      return { y: layerNorm(x, gamma, beta), dx: dx!, dGamma: dGamma!, dBeta: dBeta! };
    }),
});

defineScenario({
  name: 'RMS norm + gradient',
  run: (tf) =>
    tf.tidy(() => {
      // T5's LayerNorm: no mean subtraction, no bias.
      const x = seeded([2, 3, 8], 61, 2);
      const weight = tf.add(1, seeded([8], 62, 0.1));
      const w = seeded([2, 3, 8], 63);
      const rmsNorm = (v: typeof x, g: typeof weight) => tf.mul(tf.mul(v, tf.rsqrt(tf.add(tf.mean(tf.square(v), -1, true), 1e-6))), g);
      const [dx, dWeight] = tf.grads((v: typeof x, g: typeof weight) => tf.sum(tf.mul(rmsNorm(v, g), w)))([x, weight]);
      return { y: rmsNorm(x, weight), dx: dx!, dWeight: dWeight! };
    }),
});

defineScenario({
  name: 'concat/slice gradient',
  run: (tf) =>
    tf.tidy(() => {
      const a = seeded([2, 3], 71);
      const b = seeded([2, 2], 72);
      const c = seeded([1, 5], 73);
      const f = (x: typeof a, y: typeof b, z: typeof c) => {
        const ab = tf.concat([x, y], 1); // [2, 5]
        const abc = tf.concat([ab, z], 0); // [3, 5]
        const s = tf.slice(abc, [1, 1], [2, 3]); // crosses both concat seams
        return tf.sum(tf.mul(s, seeded([2, 3], 74)));
      };
      const [da, db, dc] = tf.grads(f)([a, b, c]);
      return {
        concat: tf.concat([tf.concat([a, b], 1), c], 0),
        slice: tf.slice(tf.concat([a, b], 1), [0, 2], [2, 2]),
        dA: da!,
        dB: db!,
        dC: dc!,
      };
    }),
});

defineScenario({
  name: 'adam step',
  run: async (tf) => {
    const x = seeded([6, 4], 81);
    const y = seeded([6, 3], 82);
    const w0 = seeded([4, 3], 83, 0.5);
    const b0 = tf.zeros([3]);
    // tf.variable shares the initial tensor's data but the initial tensor still needs disposing.
    const W = tf.variable(w0, true);
    const b = tf.variable(b0, true);
    tf.dispose([w0, b0]);
    const optimizer = tf.train.adam(0.05);
    const losses: number[] = [];
    try {
      for (let step = 0; step < 3; step++) {
        const cost = optimizer.minimize(() => tf.mean(tf.square(tf.sub(tf.add(tf.matMul(x, W), b), y))), true, [W, b]);
        losses.push((await cost!.data())[0]!);
        cost!.dispose();
      }
      return { W: W.clone(), b: b.clone(), losses };
    } finally {
      optimizer.dispose();
      tf.dispose([x, y, W, b]);
    }
  },
  checkReference: (ref) => {
    const l = ref.losses!.values;
    if (!(l[2]! < l[0]!)) throw new Error(`Adam did not reduce the loss: ${Array.from(l)}`);
  },
});
