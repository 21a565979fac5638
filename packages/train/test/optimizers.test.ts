import { describe, expect, it, beforeAll } from 'vitest';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { AdamW, Adafactor, SGD, clipByGlobalNorm, createSchedule } from '../src/index.js';

const values = (n: number, seed: number) => Array.from({ length: n }, (_, i) => Math.sin(seed * 12.9898 + i * 78.233) * 0.5);
const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol: number) => {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(b[i])));
};

/** torch.optim.AdamW's update, written out in float64. */
function adamwReference(p: number[], grads: number[][], lr: number, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01): number[] {
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  let x = [...p];
  grads.forEach((g, k) => {
    const t = k + 1;
    x = x.map((xi) => xi * (1 - lr * wd));
    for (let i = 0; i < x.length; i++) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const bc1 = 1 - b1 ** t;
      const bc2 = 1 - b2 ** t;
      x[i] -= (lr / bc1) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps));
    }
  });
  return x;
}

/** transformers' Adafactor (scale_parameter=False, relative_step=False, beta1=None) on a 2-D param, float64. */
function adafactorReference(p: number[], shape: [number, number], grads: number[][], lr: number, eps1 = 1e-30, clip = 1, decay = -0.8): number[] {
  const [R, C] = shape;
  const row = new Array(R).fill(0);
  const col = new Array(C).fill(0);
  const x = [...p];
  grads.forEach((g, k) => {
    const t = k + 1;
    const beta2t = 1 - t ** decay;
    const sq = g.map((gi) => gi * gi + eps1);
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += sq[r * C + c];
      row[r] = beta2t * row[r] + (1 - beta2t) * (s / C);
    }
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let r = 0; r < R; r++) s += sq[r * C + c];
      col[c] = beta2t * col[c] + (1 - beta2t) * (s / R);
    }
    const rowMean = row.reduce((a, b) => a + b, 0) / R;
    const upd = g.map((gi, i) => gi * (1 / Math.sqrt(row[Math.floor(i / C)] / rowMean)) * (1 / Math.sqrt(col[i % C])));
    const rms = Math.sqrt(upd.reduce((a, u) => a + u * u, 0) / upd.length);
    const denom = Math.max(1, rms / clip);
    for (let i = 0; i < x.length; i++) x[i] -= (lr * upd[i]) / denom;
  });
  return x;
}

function adafactorVectorReference(p: number[], grads: number[][], lr: number, eps1 = 1e-30, clip = 1, decay = -0.8): number[] {
  const v = p.map(() => 0);
  const x = [...p];
  grads.forEach((g, k) => {
    const beta2t = 1 - (k + 1) ** decay;
    for (let i = 0; i < v.length; i++) v[i] = beta2t * v[i] + (1 - beta2t) * (g[i] * g[i] + eps1);
    const upd = g.map((gi, i) => gi / Math.sqrt(v[i]));
    const rms = Math.sqrt(upd.reduce((a, u) => a + u * u, 0) / upd.length);
    for (let i = 0; i < x.length; i++) x[i] -= (lr * upd[i]) / Math.max(1, rms / clip);
  });
  return x;
}

async function runOptimizer(opt: AdamW | Adafactor | SGD, p0: number[], shape: number[], grads: number[][], lr: number) {
  const v = tf.variable(tf.tensor(p0, shape), true, `p${Math.random()}`);
  for (const g of grads) {
    const gt = tf.tensor(g, shape);
    opt.apply([{ name: 'p', variable: v }], [gt], lr);
    gt.dispose();
  }
  const out = Array.from((await v.data()) as Float32Array);
  v.dispose();
  opt.dispose();
  return out;
}

describe.each(backendsUnderTest(['cpu', 'wasm']))('optimizers on %s', (backend) => {
  beforeAll(async () => {
    await initBackend(backend);
  });

  it('AdamW: one step and three steps equal PyTorch formula (defaults lr 1e-3, wd 0.01)', async () => {
    const p0 = values(12, 1);
    const g = [values(12, 2), values(12, 3), values(12, 4)];
    close(await runOptimizer(new AdamW(), p0, [3, 4], g.slice(0, 1), 1e-3), adamwReference(p0, g.slice(0, 1), 1e-3), 2e-6);
    close(await runOptimizer(new AdamW(), p0, [3, 4], g, 1e-3), adamwReference(p0, g, 1e-3), 2e-6);
    close(await runOptimizer(new AdamW({ betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.1 }), p0, [12], g, 0.05), adamwReference(p0, g, 0.05, 0.8, 0.99, 1e-6, 0.1), 2e-6);
  });

  it('Adafactor: factored (2-D) and unfactored (1-D) steps equal transformers formula', async () => {
    const p0 = values(12, 5);
    const g = [values(12, 6), values(12, 7)];
    close(await runOptimizer(new Adafactor(), p0, [3, 4], g.slice(0, 1), 1e-3), adafactorReference(p0, [3, 4], g.slice(0, 1), 1e-3), 2e-6);
    close(await runOptimizer(new Adafactor(), p0, [3, 4], g, 1e-2), adafactorReference(p0, [3, 4], g, 1e-2), 2e-6);
    close(await runOptimizer(new Adafactor(), p0, [12], g, 1e-2), adafactorVectorReference(p0, g, 1e-2), 2e-6);
    // small gradients: the RMS clip (threshold 1) is inactive at step 2
    const small = [values(12, 8).map((x) => x * 1e-3), values(12, 9).map((x) => x * 1e-3)];
    close(await runOptimizer(new Adafactor(), p0, [4, 3], small, 1e-2), adafactorReference(p0, [4, 3], small, 1e-2), 2e-6);
  });

  it('SGD: p − lr·g', async () => {
    const p0 = values(6, 1);
    const g = values(6, 2);
    close(
      await runOptimizer(new SGD(), p0, [6], [g], 0.5),
      p0.map((x, i) => x - 0.5 * g[i]),
      1e-6,
    );
  });

  it('optimizer state round-trips and holds only the given variables', async () => {
    const p0 = values(12, 1);
    const g = [values(12, 2), values(12, 3)];
    const a = new AdamW();
    const v = tf.variable(tf.tensor(p0, [3, 4]), true, `q${Math.random()}`);
    const g0 = tf.tensor(g[0], [3, 4]);
    a.apply([{ name: 'lora/x', variable: v }], [g0], 1e-3);
    const state = await a.getState();
    expect([...state.slots.keys()].sort()).toEqual(['lora/x:exp_avg', 'lora/x:exp_avg_sq']);
    const b = new AdamW();
    b.setState(state);
    expect(b.step).toBe(1);
    const g1 = tf.tensor(g[1], [3, 4]);
    const v2 = tf.variable(v.clone(), true, `r${Math.random()}`);
    a.apply([{ name: 'lora/x', variable: v }], [g1], 1e-3);
    b.apply([{ name: 'lora/x', variable: v2 }], [g1], 1e-3);
    expect(Array.from(await v.data())).toEqual(Array.from(await v2.data()));
    expect(() => new Adafactor().setState(state)).toThrow(/optimizer state was saved/);
    tf.dispose([v, v2, g0, g1]);
    a.dispose();
    b.dispose();
  });

  it('clipByGlobalNorm scales by maxNorm / norm only when the norm is larger', async () => {
    const a = tf.tensor([3, 0]);
    const b = tf.tensor([[4]]);
    const { grads, norm } = await clipByGlobalNorm([a, b], 1);
    expect(norm).toBeCloseTo(5, 5);
    close(Array.from(await grads[0].data()), [0.6, 0], 1e-5);
    close(Array.from(await grads[1].data()), [0.8], 1e-5);
    const un = await clipByGlobalNorm([a, b], 10);
    close(Array.from(await un.grads[1].data()), [4], 1e-7);
    tf.dispose([a, b, ...grads, ...un.grads]);
  });
});

describe('schedules', () => {
  it('constant, linear and cosine with warmup have transformers values', () => {
    const c = createSchedule({ type: 'constant', warmupSteps: 2 }, 10);
    expect([0, 1, 2, 9].map(c)).toEqual([0, 0.5, 1, 1]);
    const l = createSchedule({ type: 'linear', warmupSteps: 2 }, 10);
    expect([0, 1, 2, 6, 10].map(l)).toEqual([0, 0.5, 1, 0.5, 0]);
    const cos = createSchedule({ type: 'cosine', warmupSteps: 2 }, 10);
    expect(cos(1)).toBe(0.5);
    expect(cos(2)).toBeCloseTo(1, 12);
    expect(cos(6)).toBeCloseTo(0.5, 12);
    expect(cos(10)).toBeCloseTo(0, 12);
    expect(createSchedule('constant', 5)(3)).toBe(1);
    expect(createSchedule({ type: 'linear', warmupRatio: 0.1 }, 100)(5)).toBe(0.5);
    expect(() => createSchedule('nope' as 'linear', 5)).toThrow(/unknown schedule/);
  });
});
