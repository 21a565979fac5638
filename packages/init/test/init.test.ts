import { ConfigError, InputError, SeededRandom } from '@adapterkit/core';
import { describe, expect, it } from 'vitest';
import { HOULSBY_CLIP, INIT_NAMES, initParam, initParams, type InitName, kaimingUniformBound, type ParamRole, type ParamSpec } from '../src/index.js';

const stats = (x: Float32Array) => {
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of x) {
    sum += v;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const mean = sum / x.length;
  let sq = 0;
  for (const v of x) sq += (v - mean) ** 2;
  return { mean, std: Math.sqrt(sq / x.length), min, max };
};
const allEqual = (x: Float32Array, v: number) => x.every((y) => Object.is(y, v) || (v === 0 && y === 0));
const init = (strategy: InitName, spec: ParamSpec, seed = 1) => initParam(strategy, spec, new SeededRandom(seed));

function expectThrows<E extends Error>(fn: () => unknown, cls: new (...a: any[]) => E, message?: RegExp): E {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a throw').toBeInstanceOf(cls);
  if (message) expect((caught as Error).message).toMatch(message);
  return caught as E;
}

describe('kaimingUniformBound', () => {
  it('is √(6 / ((1 + a²) fan_in)); with a = √5 it is 1/√fan_in', () => {
    expect(kaimingUniformBound(64, Math.sqrt(5))).toBeCloseTo(1 / 8, 12);
    expect(kaimingUniformBound(100, Math.sqrt(5))).toBeCloseTo(0.1, 12);
    expect(kaimingUniformBound(64)).toBeCloseTo(1 / 8, 12); // a defaults to √5
    expect(kaimingUniformBound(6, 0)).toBeCloseTo(1, 12); // He uniform: √(6/fan_in)
    expect(kaimingUniformBound(24, 1)).toBeCloseTo(Math.sqrt(6 / 48), 12);
  });

  it('refuses a non-positive fan_in', () => {
    expectThrows(() => kaimingUniformBound(0), InputError, /fan_in/);
    expectThrows(() => kaimingUniformBound(NaN), InputError);
  });
});

describe('bert', () => {
  it('weights N(0, 0.02), biases 0', () => {
    for (const role of ['down', 'up', 'gate', 'lora_A', 'lora_B', 'fusion', 'prefix_mlp', 'prefix_embedding'] as ParamRole[]) {
      const w = init('bert', { role, shape: [128, 64] });
      const s = stats(w);
      expect(Math.abs(s.mean), role).toBeLessThan(0.001);
      expect(Math.abs(s.std - 0.02), role).toBeLessThan(0.001);
    }
    expect(allEqual(init('bert', { role: 'down', shape: [64] }), 0)).toBe(true);
    expect(allEqual(init('bert', { role: 'bias', shape: [64] }), 0)).toBe(true);
    expect(allEqual(init('bert', { role: 'up', shape: [16], bias: true }), 0)).toBe(true);
  });

  it('layer norm weight 1 and bias 0', () => {
    expect(allEqual(init('bert', { role: 'layer_norm_weight', shape: [32] }), 1)).toBe(true);
    expect(allEqual(init('bert', { role: 'layer_norm_bias', shape: [32] }), 0)).toBe(true);
  });
});

describe('mam_adapter', () => {
  it("'down' weight U(−1/√fan_in, 1/√fan_in) with fan_in = shape[0] ([in, out] kernel), bias 0", () => {
    const w = init('mam_adapter', { role: 'down', shape: [256, 32] });
    const bound = 1 / 16;
    const s = stats(w);
    expect(s.min).toBeGreaterThanOrEqual(-bound);
    expect(s.max).toBeLessThanOrEqual(bound);
    // fills the range: uniform std = bound/√3
    expect(s.max).toBeGreaterThan(0.99 * bound);
    expect(s.min).toBeLessThan(-0.99 * bound);
    expect(Math.abs(s.std - bound / Math.sqrt(3))).toBeLessThan(0.02 * bound);
    expect(Math.abs(s.mean)).toBeLessThan(0.02 * bound);
    expect(allEqual(init('mam_adapter', { role: 'down', shape: [32] }), 0)).toBe(true);
  });

  it('an explicit fanIn overrides the shape', () => {
    const w = init('mam_adapter', { role: 'down', shape: [32, 256], fanIn: 256 });
    expect(stats(w).max).toBeLessThanOrEqual(1 / 16);
    expect(stats(w).max).toBeGreaterThan(0.9 / 16);
  });

  it("'up' weight and bias are zeros (the adapter starts as an exact no-op)", () => {
    expect(allEqual(init('mam_adapter', { role: 'up', shape: [32, 256] }), 0)).toBe(true);
    expect(allEqual(init('mam_adapter', { role: 'up', shape: [256] }), 0)).toBe(true);
  });

  it("'gate' is bert: N(0, 0.02), bias 0", () => {
    const s = stats(init('mam_adapter', { role: 'gate', shape: [512, 16] }));
    expect(Math.abs(s.std - 0.02)).toBeLessThan(0.001);
    expect(allEqual(init('mam_adapter', { role: 'gate', shape: [1] }), 0)).toBe(true);
  });

  it('roles it does not cover are a ConfigError naming strategy and role', () => {
    expectThrows(() => init('mam_adapter', { role: 'lora_A', shape: [8, 4] }), ConfigError, /'mam_adapter'.*'lora_A'/);
  });
});

describe('houlsby', () => {
  it('down/up weights: truncated normal std 1e-2 clipped to [−2e-2, 2e-2]; biases 0', () => {
    for (const role of ['down', 'up'] as const) {
      const w = init('houlsby', { role, shape: [200, 100] });
      const s = stats(w);
      expect(s.min).toBeGreaterThanOrEqual(-HOULSBY_CLIP);
      expect(s.max).toBeLessThanOrEqual(HOULSBY_CLIP);
      expect(s.max).toBeGreaterThan(0.019);
      expect(Math.abs(s.mean)).toBeLessThan(2e-4);
      // std of N(0, σ²) truncated at ±2σ is ≈ 0.8796 σ
      expect(Math.abs(s.std - 0.8796e-2)).toBeLessThan(2e-4);
      expect(allEqual(init('houlsby', { role, shape: [100] }), 0)).toBe(true);
    }
  });

  it('gate: PyTorch nn.Linear default — weight and bias U(±1/√fan_in)', () => {
    const w = init('houlsby', { role: 'gate', shape: [400, 1] });
    const s = stats(w);
    expect(s.max).toBeLessThanOrEqual(1 / 20);
    expect(s.min).toBeGreaterThanOrEqual(-1 / 20);
    expect(s.max).toBeGreaterThan(0.9 / 20);
    const b = init('houlsby', { role: 'gate', shape: [1], fanIn: 400 });
    expect(Math.abs(b[0])).toBeLessThanOrEqual(1 / 20);
    expect(b[0]).not.toBe(0);
    const many = init('houlsby', { role: 'gate', shape: [4000], bias: true, fanIn: 16 });
    expect(stats(many).max).toBeLessThanOrEqual(0.25);
    expect(stats(many).max).toBeGreaterThan(0.24);
  });

  it('a gate bias without fanIn is an InputError (its fan_in is not in its shape)', () => {
    expectThrows(() => init('houlsby', { role: 'gate', shape: [1] }), InputError, /fanIn/);
  });
});

describe('lora / ia3', () => {
  it('lora: lora_A kaiming_uniform(a=√5) over fan_in = in, lora_B zeros', () => {
    const a = init('lora', { role: 'lora_A', shape: [64, 8] }); // tfjs layout [in, r]
    const s = stats(a);
    expect(s.max).toBeLessThanOrEqual(1 / 8);
    expect(s.min).toBeGreaterThanOrEqual(-1 / 8);
    expect(s.max).toBeGreaterThan(0.9 / 8);
    expect(allEqual(init('lora', { role: 'lora_B', shape: [8, 64] }), 0)).toBe(true);
    expect(Math.abs(stats(init('lora', { role: 'gate', shape: [256, 1] })).std - 0.02)).toBeLessThan(0.003);
    expectThrows(() => init('lora', { role: 'down', shape: [8, 4] }), ConfigError, /'lora'.*'down'/);
  });

  it('ia3: ones (the IA3 vector, and LoRA A/B as in `adapters`)', () => {
    expect(allEqual(init('ia3', { role: 'ia3', shape: [64] }), 1)).toBe(true);
    expect(allEqual(init('ia3', { role: 'lora_B', shape: [64, 1] }), 1)).toBe(true);
    expect(allEqual(init('ia3', { role: 'lora_A', shape: [64, 1] }), 1)).toBe(true);
  });
});

describe('generic strategies', () => {
  it('zeros / ones fill every role; normal is N(0, 1)', () => {
    expect(allEqual(init('zeros', { role: 'prefix_embedding', shape: [10, 8] }), 0)).toBe(true);
    expect(allEqual(init('ones', { role: 'down', shape: [10, 8] }), 1)).toBe(true);
    expect(allEqual(init('ones', { role: 'bias', shape: [8] }), 1)).toBe(true);
    const s = stats(init('normal', { role: 'prefix_embedding', shape: [20_000] }));
    expect(Math.abs(s.mean)).toBeLessThan(0.03);
    expect(Math.abs(s.std - 1)).toBeLessThan(0.03);
  });

  it('kaiming_uniform: weight and bias U(±1/√fan_in) (nn.Linear default)', () => {
    const w = stats(init('kaiming_uniform', { role: 'prefix_mlp', shape: [100, 50] }));
    expect(w.max).toBeLessThanOrEqual(0.1);
    expect(w.max).toBeGreaterThan(0.09);
    const b = stats(init('kaiming_uniform', { role: 'prefix_mlp', shape: [50], fanIn: 100 }));
    expect(b.max).toBeLessThanOrEqual(0.1);
    expect(b.min).toBeLessThan(0);
  });

  it('layer norm weight 1 / bias 0 and scaling 1 whatever the strategy', () => {
    for (const strategy of INIT_NAMES) {
      expect(allEqual(init(strategy, { role: 'layer_norm_weight', shape: [16] }), 1), strategy).toBe(true);
      expect(allEqual(init(strategy, { role: 'layer_norm_bias', shape: [16] }), 0), strategy).toBe(true);
      expect(allEqual(init(strategy, { role: 'scaling', shape: [16] }), 1), strategy).toBe(true);
      expect(allEqual(init(strategy, { role: 'scaling', shape: [] }), 1), strategy).toBe(true);
    }
  });

  it('shapes: output length is the element count (scalars, zero-size)', () => {
    expect(init('bert', { role: 'down', shape: [3, 5] }).length).toBe(15);
    expect(init('ones', { role: 'scaling', shape: [] }).length).toBe(1);
    expect(init('bert', { role: 'down', shape: [0, 5] }).length).toBe(0);
    expect(init('bert', { role: 'down', shape: [3, 5] })).toBeInstanceOf(Float32Array);
  });
});

describe('errors', () => {
  it('unknown strategy → ConfigError naming it', () => {
    const err = expectThrows(() => init('xavier' as InitName, { role: 'down', shape: [4, 4] }), ConfigError, /unknown init strategy 'xavier'/);
    expect(err.message).toContain('mam_adapter');
    expect(err.field).toBe('init_weights');
  });

  it('unknown role, bad shape or fanIn → InputError', () => {
    expectThrows(() => init('bert', { role: 'head' as ParamRole, shape: [4] }), InputError, /role "head"/);
    expectThrows(() => init('bert', { role: 'down', shape: [4, -1] }), InputError, /shape/);
    expectThrows(() => init('bert', { role: 'down', shape: [4, 1.5] }), InputError, /shape/);
    expectThrows(() => init('mam_adapter', { role: 'down', shape: [4, 4], fanIn: 0 }), InputError, /fanIn/);
  });
});

describe('determinism', () => {
  it('same seed → bit-identical values, for every strategy and role it covers', () => {
    const roles: ParamRole[] = ['down', 'up', 'gate', 'lora_A', 'lora_B', 'ia3', 'prefix_embedding', 'prefix_mlp', 'fusion'];
    for (const strategy of INIT_NAMES) {
      for (const role of roles) {
        let a: Float32Array;
        try {
          a = init(strategy, { role, shape: [16, 8] }, 123);
        } catch (e) {
          expect(e).toBeInstanceOf(ConfigError); // a role the strategy does not cover
          continue;
        }
        const b = init(strategy, { role, shape: [16, 8] }, 123);
        expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer)), `${strategy}/${role}`).toBe(true);
      }
    }
  });

  it('different seeds → different values; one generator gives consecutive, reproducible parameters', () => {
    expect(init('bert', { role: 'down', shape: [8, 8] }, 1)).not.toEqual(init('bert', { role: 'down', shape: [8, 8] }, 2));
    const specs = [
      { name: 'down', role: 'down' as const, shape: [16, 4] },
      { name: 'up', role: 'up' as const, shape: [4, 16] },
    ];
    const a = initParams('houlsby', specs, new SeededRandom(5));
    const b = initParams('houlsby', specs, new SeededRandom(5));
    expect(a).toEqual(b);
    expect(a.get('down')).not.toEqual(a.get('up'));
  });

  it('pinned values (a change here changes every adapter initialised so far)', () => {
    const w = init('mam_adapter', { role: 'down', shape: [4, 1] }, 1);
    // U(−0.5, 0.5) from mulberry32(1): 0.6270739405881613 → 0.12707394…
    expect(w[0]).toBe(Math.fround(-0.5 + 0.6270739405881613));
    expect(w[1]).toBe(Math.fround(-0.5 + 0.002735721180215478));
  });
});

describe('role addressing', () => {
  it('ln_before + mam_adapter init addresses projections by role (adapters #745)', () => {
    // adapters' Sequential(LayerNorm, Linear, act) with ln_before: indexing adapter_down[0] found the LayerNorm.
    // Listed in that order here, each parameter still gets its role's rule.
    const H = 64;
    const d = 16;
    const params = [
      { name: 'adapter_down.0.weight', role: 'layer_norm_weight' as const, shape: [H] },
      { name: 'adapter_down.0.bias', role: 'layer_norm_bias' as const, shape: [H] },
      { name: 'adapter_down.1.kernel', role: 'down' as const, shape: [H, d] },
      { name: 'adapter_down.1.bias', role: 'down' as const, shape: [d] },
      { name: 'adapter_up.kernel', role: 'up' as const, shape: [d, H] },
      { name: 'adapter_up.bias', role: 'up' as const, shape: [H] },
    ];
    const values = initParams('mam_adapter', params, new SeededRandom(745));

    // LayerNorm weight: all ones (not kaiming-initialised as the down projection), bias zeros.
    expect(allEqual(values.get('adapter_down.0.weight')!, 1)).toBe(true);
    expect(allEqual(values.get('adapter_down.0.bias')!, 0)).toBe(true);
    // Down projection: the kaiming bound 1/√H, and the range is actually used (not zeros, not ones).
    const down = stats(values.get('adapter_down.1.kernel')!);
    const bound = kaimingUniformBound(H, Math.sqrt(5));
    expect(bound).toBeCloseTo(1 / 8, 12);
    expect(down.max).toBeLessThanOrEqual(bound);
    expect(down.min).toBeGreaterThanOrEqual(-bound);
    expect(down.max).toBeGreaterThan(0.9 * bound);
    expect(down.min).toBeLessThan(-0.9 * bound);
    expect(allEqual(values.get('adapter_down.1.bias')!, 0)).toBe(true);
    // Up projection: zeros, so the adapter is an exact no-op at start.
    expect(allEqual(values.get('adapter_up.kernel')!, 0)).toBe(true);
    expect(allEqual(values.get('adapter_up.bias')!, 0)).toBe(true);

    // The same parameters without the LayerNorm in front: the down kernel is bit-identical (LN draws nothing),
    // i.e. adding ln_before changes nothing about how the projections are initialised.
    const without = initParams('mam_adapter', params.slice(2), new SeededRandom(745));
    expect(without.get('adapter_down.1.kernel')).toEqual(values.get('adapter_down.1.kernel'));
  });

  it('initParams refuses a duplicated name', () => {
    expectThrows(
      () =>
        initParams(
          'bert',
          [
            { name: 'w', role: 'down', shape: [2, 2] },
            { name: 'w', role: 'up', shape: [2, 2] },
          ],
          new SeededRandom(1),
        ),
      InputError,
      /'w' is listed twice/,
    );
  });
});
