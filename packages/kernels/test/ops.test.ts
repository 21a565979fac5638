import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf, type Tensor } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import {
  adamW,
  attention,
  cacheWrite,
  crossEntropy,
  KERNEL,
  linear,
  MASK_VALUE,
  reference,
  rmsNorm,
  setKernelMode,
  withKernelMode,
  type AttentionOptions,
  type LinearOptions,
} from '../src/index.node.js';
import { registerDelegatingKernels, unregisterDelegatingKernels } from './delegate.js';

function values(shape: number[], seed: number, scale = 1): Tensor {
  let a = seed >>> 0;
  const n = shape.reduce((x, y) => x * y, 1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a * 1664525 + 1013904223) >>> 0;
    out[i] = ((a / 4294967296) * 2 - 1) * scale;
  }
  return tf.tensor(out, shape);
}

/** Naive T5 attention in plain JS (for the reference's own check). */
function naiveAttention(
  q: number[][][],
  k: number[][][],
  v: number[][][],
  h: number,
  d: number,
  bias: (hh: number, i: number, j: number) => number,
  mask: (b: number, j: number) => number,
  causal?: number,
): number[][][] {
  return q.map((rows, b) =>
    rows.map((qi, i) => {
      const out = new Array(h * d).fill(0);
      for (let hh = 0; hh < h; hh++) {
        const scores = k[b].map((kj, j) => {
          let s = 0;
          for (let e = 0; e < d; e++) s += qi[hh * d + e] * kj[hh * d + e];
          s += bias(hh, i, j) + mask(b, j);
          if (causal !== undefined && j > i + causal) s += MASK_VALUE;
          return s;
        });
        const mx = Math.max(...scores);
        const ex = scores.map((s) => Math.exp(s - mx));
        const sum = ex.reduce((x, y) => x + y, 0);
        ex.forEach((w, j) => {
          for (let e = 0; e < d; e++) out[hh * d + e] += (w / sum) * v[b][j][hh * d + e];
        });
      }
      return out;
    }),
  );
}

describe('reference semantics (cpu)', () => {
  beforeAll(async () => {
    await initBackend('cpu');
  });

  it('attention reference equals a naive T5 attention with bias, mask and causality', async () => {
    const [b, lq, lk, h, d] = [2, 3, 4, 2, 3];
    const q = values([b, lq, h * d], 1);
    const kv = values([b, lk, 2 * h * d], 2);
    const table = values([5, h], 3);
    const index = tf.tensor2d(
      Array.from({ length: lq * lk }, (_, i) => (i % 6) - 1),
      [lq, lk],
      'int32',
    );
    const maskArr = [
      [0, 0, MASK_VALUE, 0],
      [0, 0, 0, 0],
    ];
    const mask = tf.tensor2d(maskArr);
    const out = attention(q, { source: kv, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d, bias: { table, index }, mask, causalOffset: 1 });
    const qa = (await q.array()) as number[][][];
    const kva = (await kv.array()) as number[][][];
    const k = kva.map((r) => r.map((c) => c.slice(0, h * d)));
    const v = kva.map((r) => r.map((c) => c.slice(h * d)));
    const ta = (await table.array()) as number[][];
    const ia = (await index.array()) as number[][];
    const expected = naiveAttention(
      qa,
      k,
      v,
      h,
      d,
      (hh, i, j) => (ia[i][j] < 0 ? 0 : ta[ia[i][j]][hh]),
      (bb, j) => maskArr[bb][j],
      1,
    );
    expect(await maxAbsDiff(out, expected.flat(2))).toBeLessThan(1e-5);
    tf.dispose([q, kv, table, index, mask, out]);
  });

  it('prefix keys come first: attention over a prefix equals attention over the concatenated keys', async () => {
    const [b, lq, lk, p, h, d] = [2, 2, 3, 2, 2, 4];
    const q = values([b, lq, h * d], 4);
    const kv = values([b, lk, 2 * h * d], 5);
    const pk = values([1, h, p, d], 6);
    const pv = values([1, h, p, d], 7);
    const out = attention(q, { source: kv, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d, prefix: { keys: pk, values: pv } });
    // the same keys written as packed rows: prefix rows first
    const toRows = (t: Tensor) => tf.tile(t.transpose([0, 2, 1, 3]).reshape([1, p, h * d]), [b, 1, 1]);
    const packed = tf.concat([tf.concat([toRows(pk), toRows(pv)], 2), kv], 1);
    const expected = attention(q, { source: packed, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d });
    expect(await maxAbsDiff(out, expected)).toBeLessThan(1e-6);
    tf.dispose([q, kv, pk, pv, out, packed, expected]);
  });

  it('linear reference: norm, LoRA terms per row, IA3 vectors, gating, residual', async () => {
    const [rows, len, inF, out, r] = [3, 2, 4, 3, 2];
    const x = values([rows, len, inF], 8);
    const w = values([inF, 2 * out], 9);
    const nw = values([inF], 10);
    const A = values([inF, r], 11);
    const B = values([r, 2 * out], 12);
    const S = tf.tensor2d([
      [0.5, 0.5],
      [0, 0],
      [2, 1],
    ]);
    const inS = values([1, inF], 13);
    const outS = values([rows, 2 * out], 14);
    const res = values([rows, len, out], 15);
    const y = linear(x, w, {
      norm: { weight: nw, eps: 1e-6 },
      gated: true,
      activation: 'relu',
      residual: res,
      adapters: { loraA: A, loraB: B, loraScale: S, inScale: inS, outScale: outS },
    });
    // by hand, row by row
    const xa = (await x.array()) as number[][][];
    const [wa, nwa, Aa, Ba, Sa, inSa, outSa, resa] = (await Promise.all([w, nw, A, B, S, inS, outS, res].map((t) => t.array()))) as any[];
    const expected: number[] = [];
    for (let b = 0; b < rows; b++) {
      for (let t = 0; t < len; t++) {
        const row = xa[b][t];
        const rms = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / inF + 1e-6);
        const xn = row.map((v, i) => v * rms * nwa[i]);
        const pre = new Array(2 * out).fill(0).map((_, j) => {
          let base = 0;
          for (let i = 0; i < inF; i++) base += xn[i] * inSa[0][i] * wa[i][j];
          let lora = 0;
          for (let k = 0; k < r; k++) {
            let down = 0;
            for (let i = 0; i < inF; i++) down += xn[i] * Aa[i][k];
            lora += down * Sa[b][k] * Ba[k][j];
          }
          return base * outSa[b][j] + lora;
        });
        for (let j = 0; j < out; j++) expected.push(Math.max(pre[j], 0) * pre[out + j] + resa[b][t][j]);
      }
    }
    expect(await maxAbsDiff(y, expected)).toBeLessThan(1e-5);
    tf.dispose([x, w, nw, A, B, S, inS, outS, res, y]);
  });
});

// Fused kernels against their references, on every backend under test. On a backend without a fused
// kernel for an op, the test registers a kernel that delegates to the reference: the values then match
// trivially, but the gradients come from the registered gradient formulas — which is what is checked.
for (const backend of backendsUnderTest()) {
  describe(`fused == reference on ${backend} (values and gradients)`, () => {
    let delegated: string[] = [];
    beforeAll(async () => {
      await initBackend(backend);
      delegated = registerDelegatingKernels(backend);
    });
    afterAll(() => {
      unregisterDelegatingKernels(backend, delegated);
      setKernelMode('fused');
    });

    /** Compares value and gradients of f (w.r.t. xs) between the fused and reference modes. */
    async function compare(f: (...xs: Tensor[]) => Tensor, xs: Tensor[], tol = 1e-5) {
      const run = (mode: 'fused' | 'reference') =>
        withKernelMode(mode, () => {
          const { value, grads } = tf.valueAndGrads(
            (...args: Tensor[]) =>
              f(...args)
                .square()
                .sum() as tf.Scalar,
          )(xs);
          const y = f(...xs);
          return { y, value, grads };
        });
      const a = run('fused');
      const b = run('reference');
      expect(await maxAbsDiff(a.y, b.y)).toBeLessThan(tol);
      const scale = Math.max(1, Math.abs((await b.value.data())[0]));
      expect(Math.abs((await a.value.data())[0] - (await b.value.data())[0]) / scale).toBeLessThan(tol);
      for (let i = 0; i < xs.length; i++) {
        const ref = b.grads[i];
        const mag = Math.max(1, ...Array.from(await ref.abs().max().data()));
        expect((await maxAbsDiff(a.grads[i], ref)) / mag, `gradient ${i}`).toBeLessThan(tol);
      }
      tf.dispose([a.y, a.value, ...a.grads, b.y, b.value, ...b.grads]);
    }

    it('rmsNorm', async () => {
      const x = values([3, 5, 8], 20);
      const w = values([8], 21);
      await compare((xx, ww) => rmsNorm(xx, ww, 1e-6), [x, w]);
      tf.dispose([x, w]);
    });

    for (const opt of [
      { name: 'plain', o: {} },
      { name: 'norm + residual', o: { norm: true, residual: true } },
      { name: 'gated gelu_new + LoRA rows', o: { norm: true, gated: true, activation: 'gelu_new', lora: true } },
      { name: 'relu + IA3 in/out', o: { activation: 'relu', ia3: true } },
      { name: 'gelu + silu-free bias + LoRA + IA3', o: { activation: 'gelu', bias: true, lora: true, ia3: true, norm: true } },
      { name: 'silu gated', o: { activation: 'silu', gated: true } },
    ] as const) {
      it(`linear: ${opt.name}`, async () => {
        const o = opt.o as Record<string, unknown>;
        const [rows, len, inF, outF, r] = [3, 4, 8, 6, 4];
        const pre = o.gated ? 2 * outF : outF;
        const x = values([rows, len, inF], 30, 2);
        const w = values([inF, pre], 31, 0.5);
        const nw = values([inF], 32);
        const res = values([rows, len, outF], 33);
        const bias = values([pre], 34);
        const A = values([inF, r], 35, 0.5);
        const B = values([r, pre], 36, 0.5);
        const S = tf.tensor2d([
          [1, 1, 0, 0],
          [0, 0, 2, 2],
          [0.5, 0.5, 0.5, 0.5],
        ]);
        const inS = values([1, inF], 37);
        const outS = values([rows, pre], 38);
        // differentiate w.r.t. x, the kernel and whichever adapter inputs the case uses
        const names = ['x', 'w', ...(o.lora ? ['A', 'B'] : []), ...(o.ia3 ? ['inS', 'outS'] : [])];
        const all: Record<string, Tensor> = { x, w, A, B, inS, outS };
        await compare(
          (...args) => {
            const t: Record<string, Tensor> = {};
            names.forEach((n, i) => (t[n] = args[i]));
            const options: LinearOptions = {
              norm: o.norm ? { weight: nw, eps: 1e-6 } : undefined,
              residual: o.residual ? res : undefined,
              bias: o.bias ? bias : undefined,
              gated: Boolean(o.gated),
              activation: (o.activation as LinearOptions['activation']) ?? 'linear',
              adapters: { ...(o.lora ? { loraA: t.A, loraB: t.B, loraScale: S } : {}), ...(o.ia3 ? { inScale: t.inS, outScale: t.outS } : {}) },
            };
            return linear(t.x, t.w, options);
          },
          names.map((n) => all[n]),
        );
        tf.dispose([x, w, nw, res, bias, A, B, S, inS, outS]);
      });
    }

    // head sizes: the native kernel's run-time small-head loop (4, 12), its compile-time ones (8, 16, 32), its GEMM (64)
    for (const d of [4, 8, 12, 16, 32, 64])
      it(`attention: packed q|k|v, prefix, bias, mask, causal (heads of ${d})`, async () => {
        const [b, l, p, h] = [2, 5, 3, 2];
        const qkv = values([b, l, 3 * h * d], 40);
        const pk = values([b, h, p, d], 41);
        const pv = values([b, h, p, d], 42);
        const table = values([6, h], 43);
        const index = tf.tensor2d(
          Array.from({ length: l * (p + l) }, (_, i) => (i % (p + l) < p ? -1 : i % 6)),
          [l, p + l],
          'int32',
        );
        const mask = tf.tensor2d([
          [MASK_VALUE, 0, 0, 0, 0, 0, 0, MASK_VALUE],
          [0, 0, 0, 0, 0, 0, 0, 0],
        ]);
        const options = (pkk: Tensor, pvv: Tensor): AttentionOptions => ({
          numHeads: h,
          headDim: d,
          prefix: { keys: pkk, values: pvv },
          bias: { table, index },
          mask,
          causalOffset: 0,
        });
        await compare((x, pkk, pvv) => attention(x, { source: x, kOffset: h * d, vOffset: 2 * h * d }, options(pkk, pvv)), [qkv, pk, pv]);
        tf.dispose([qkv, pk, pv, table, index, mask]);
      });

    it('attention: one cached step over a cache (causal offset), cross-attention without bias', async () => {
      const [b, cap, h, d] = [3, 6, 2, 4];
      const q = values([b, 1, h * d], 50);
      const cache = values([b, cap, 2 * h * d], 51);
      await compare((qq, cc) => attention(qq, { source: cc, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d, causalOffset: 2 }), [q, cache]);
      const enc = values([b, 7, 2 * h * d], 52);
      const mask = tf.tensor2d([[0, 0, 0, 0, 0, MASK_VALUE, MASK_VALUE]]);
      await compare((qq, ee) => attention(qq, { source: ee, kOffset: 0, vOffset: h * d }, { numHeads: h, headDim: d, mask }), [q, enc]);
      tf.dispose([q, cache, enc, mask]);
    });

    it('cacheWrite', async () => {
      const cache = values([2, 5, 6], 60);
      const src = values([2, 1, 9], 61);
      await compare((c, s) => cacheWrite(c, s, 3, 2), [cache, src]);
      tf.dispose([cache, src]);
    });

    it('adamW: one step equals its reference (torch.optim.AdamW)', async () => {
      const p = values([5, 7], 80);
      const g = values([5, 7], 81);
      const m = values([5, 7], 82, 0.1);
      const v = values([5, 7], 83, 0.1).abs();
      const s = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 3 };
      const fused = adamW(p, g, m, v, s);
      const ref = withKernelMode('reference', () => adamW(p, g, m, v, s));
      for (let i = 0; i < 3; i++) expect(await maxAbsDiff(fused[i], ref[i])).toBeLessThan(1e-6);
      // by hand for one element
      const [pp, gg, mm, vv] = await Promise.all([p, g, m, v].map(async (t) => (await t.data())[0]));
      const m1 = 0.9 * mm + 0.1 * gg;
      const v1 = 0.999 * vv + 0.001 * gg * gg;
      const want = pp * (1 - 1e-2 * 0.01) - (1e-2 / (1 - 0.9 ** 3)) * (m1 / (Math.sqrt(v1) / Math.sqrt(1 - 0.999 ** 3) + 1e-8));
      expect(Math.abs((await fused[0].data())[0] - want)).toBeLessThan(1e-6);
      tf.dispose([p, g, m, v, ...fused, ...ref]);
    });

    it('crossEntropy with ignored labels and label smoothing', async () => {
      const logits = values([6, 11], 70, 3);
      const labels = tf.tensor1d([3, -100, 0, 10, 5, -100], 'int32');
      await compare((l) => crossEntropy(l, labels, 0), [logits]);
      await compare((l) => crossEntropy(l, labels, 0.1), [logits]);
      tf.dispose([logits, labels]);
    });
  });
}

describe('argument checks', () => {
  it('names the op and the misfit', async () => {
    await initBackend('cpu');
    const x = tf.zeros([2, 3, 4]);
    expect(() => linear(x, tf.zeros([5, 2]))).toThrow(/linear: kernel \[5,2\] does not take inputs of 4 features/);
    expect(() => attention(tf.zeros([2, 1, 8]), { source: tf.zeros([2, 3, 8]), kOffset: 0, vOffset: 4 }, { numHeads: 2, headDim: 4 })).toThrow(/exceed/);
    expect(() =>
      attention(
        tf.zeros([2, 1, 8]),
        { source: tf.zeros([2, 3, 16]), kOffset: 0, vOffset: 8 },
        { numHeads: 2, headDim: 4, prefix: { keys: tf.zeros([2, 3, 4]), values: tf.zeros([2, 3, 4]) } },
      ),
    ).toThrow(/prefix keys\/values must be \[batch, heads, P, d_kv\]/);
    expect(() => cacheWrite(tf.zeros([1, 4, 8]), tf.zeros([1, 1, 8]), 0, 4)).toThrow(/position 4 is outside the cache's 4 slots/);
    expect(() => crossEntropy(tf.zeros([2, 3]), tf.tensor1d([0, 1], 'float32'))).toThrow(/labels must be int32/);
    expect(KERNEL.linear).toBe('AdapterkitLinear');
    expect(reference.causalMask(1, 0, 3, 2)).toBeNull();
  });
});
