import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/errors.js';
import type { AdapterConfig, AdapterMethod, MethodRuntime } from '../src/hooks.js';
import { methodByName, methodForConfig, methodForPeftType, registeredMethods, registerMethod, registerPreset, resolveConfig } from '../src/registry.js';

/** A minimal method: fills defaults for r/alpha and validates r. */
function fakeMethod(name: string, defaults: Record<string, unknown>, presets: Record<string, AdapterConfig>, peftTypes?: string[]): AdapterMethod {
  return {
    name,
    configMethods: [name],
    presets,
    supportedBlocks: new Set(['Stack', 'Parallel']),
    peftTypes,
    normalizeConfig(raw: AdapterConfig): AdapterConfig {
      const cfg = { ...defaults, ...raw, method: name };
      if ('r' in cfg && (!Number.isInteger(cfg.r) || (cfg.r as number) <= 0)) throw new ConfigError(`${name}: r must be a positive integer, got ${JSON.stringify(cfg.r)}`, 'r');
      return cfg;
    },
    attach(): MethodRuntime {
      throw new Error('not used in these tests');
    },
  };
}

const fake = registerMethod(fakeMethod('fake', { r: 8, alpha: 8, flag: false }, { fake: { method: 'fake' }, fake_big: { method: 'fake', r: 64, alpha: 128 } }, ['FAKE']));
const other = registerMethod(fakeMethod('other', { k: 1 }, { other: { method: 'other' } }));

function expectConfigError(fn: () => unknown, message?: RegExp): ConfigError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a throw').toBeInstanceOf(ConfigError);
  const err = caught as ConfigError;
  expect(err.code).toBe('CONFIG_ERROR');
  if (message) expect(err.message).toMatch(message);
  return err;
}

describe('method registry', () => {
  it('registers methods and finds them by name, config method and PEFT type', () => {
    expect(registeredMethods()).toEqual(expect.arrayContaining([fake, other]));
    expect(methodByName('fake')).toBe(fake);
    expect(methodByName('nope')).toBeUndefined();
    expect(methodForConfig({ method: 'other' })).toBe(other);
    expect(methodForPeftType('FAKE')).toBe(fake);
    expect(methodForPeftType('LORA')).toBeUndefined();
  });

  it('registering the same method twice is a no-op', () => {
    const before = registeredMethods().length;
    expect(registerMethod(fake)).toBe(fake);
    expect(registeredMethods().length).toBe(before);
  });

  it('an unknown method is a ConfigError that names it and the registered ones', () => {
    const err = expectConfigError(() => methodForConfig({ method: 'lorax' }), /unknown adapter method 'lorax'.*fake/);
    expect(err.field).toBe('method');
    expectConfigError(() => resolveConfig({ method: 'lorax' }), /lorax/);
  });
});

describe('config strings', () => {
  it('a preset id resolves to the preset with the method defaults', () => {
    expect(resolveConfig('fake')).toEqual({ method: 'fake', r: 8, alpha: 8, flag: false });
    expect(resolveConfig('fake_big')).toEqual({ method: 'fake', r: 64, alpha: 128, flag: false });
    expect(resolveConfig('  fake  ')).toEqual(resolveConfig('fake'));
  });

  it("overrides separated by ',': fake[r=4,alpha=8]", () => {
    expect(resolveConfig('fake[r=4,alpha=8]')).toEqual({ method: 'fake', r: 4, alpha: 8, flag: false });
  });

  it("overrides separated by '|': fake[a=1|b=true]", () => {
    expect(resolveConfig('fake[a=1|b=true]')).toEqual({ method: 'fake', r: 8, alpha: 8, flag: false, a: 1, b: true });
  });

  it('value types: numbers, booleans (both spellings), null/None, strings, quoted strings', () => {
    const c = resolveConfig('fake[n=-2.5,e=1e-3,t=True,f=false,z=None,nn=null,s=relu,q=\'x y\', dq="q"]');
    expect(c).toMatchObject({ n: -2.5, e: 0.001, t: true, f: false, z: null, nn: null, s: 'relu', q: 'x y', dq: 'q' });
  });

  it('lists and objects: x=[1,2], y={"a":1}, commas inside brackets do not split', () => {
    const c = resolveConfig('fake[x=[1,2],r=2,y={"a":1,"b":[3,4]},names=["q","v"]]');
    expect(c).toMatchObject({ x: [1, 2], r: 2, y: { a: 1, b: [3, 4] }, names: ['q', 'v'] });
  });

  it('overrides do not leak into the registered preset', () => {
    resolveConfig('fake_big[r=2,extra=[1]]');
    expect(resolveConfig('fake_big')).toEqual({ method: 'fake', r: 64, alpha: 128, flag: false });
  });

  it('the method validates the overridden config', () => {
    const err = expectConfigError(() => resolveConfig('fake[r=0]'), /r must be a positive integer/);
    expect(err.field).toBe('r');
  });

  it('unknown preset → ConfigError naming it and the known ones', () => {
    const err = expectConfigError(() => resolveConfig('fakee[r=4]'), /unknown adapter config 'fakee'/);
    expect(err.message).toContain('fake_big');
    expect(err.field).toBe('config');
  });

  it('malformed strings → ConfigError', () => {
    expectConfigError(() => resolveConfig('fake[r]'), /'r' .*not key=value/);
    expectConfigError(() => resolveConfig('fake[x=[1,2]'), /cannot parse/);
    expectConfigError(() => resolveConfig('fake[x=[1,2}]'), /cannot parse config value/);
    expectConfigError(() => resolveConfig('fa ke'), /cannot parse adapter config string/);
    expectConfigError(() => resolveConfig(''), /cannot parse/);
    expectConfigError(() => resolveConfig('fake[=3]'), /invalid key/);
    expectConfigError(() => resolveConfig('fake[__proto__={"r":1}]'), /invalid key/);
  });

  it('objects: defaults filled, input not mutated; non-objects rejected', () => {
    const input = { method: 'fake', r: 2 };
    expect(resolveConfig(input)).toEqual({ method: 'fake', r: 2, alpha: 8, flag: false });
    expect(input).toEqual({ method: 'fake', r: 2 });
    expectConfigError(() => resolveConfig({} as AdapterConfig), /'method' field/);
    expectConfigError(() => resolveConfig(null as unknown as AdapterConfig), /'method' field/);
    expectConfigError(() => resolveConfig({ method: 3 } as unknown as AdapterConfig), /'method' field/);
  });
});

describe('union configs', () => {
  it('resolves each part (objects and strings) with its defaults', () => {
    const u = resolveConfig({ method: 'union', configs: [{ method: 'fake', r: 4 }, 'other[k=3]'] });
    expect(u).toEqual({
      method: 'union',
      configs: [
        { method: 'fake', r: 4, alpha: 8, flag: false },
        { method: 'other', k: 3 },
      ],
    });
  });

  it("`adapters`' union strings: \"fake[r=4]|other[k=3]\" is a union; '|' inside brackets still separates overrides", () => {
    expect(resolveConfig('fake[r=4]|other[k=3]')).toEqual(resolveConfig({ method: 'union', configs: ['fake[r=4]', 'other[k=3]'] }));
    expect(resolveConfig(' fake | other ')).toEqual(resolveConfig({ method: 'union', configs: ['fake', 'other'] }));
    expect(resolveConfig('fake[r=4|alpha=2]')).toEqual({ method: 'fake', r: 4, alpha: 2, flag: false });
    expectConfigError(() => resolveConfig('fake|fake_big'), /'fake' appears twice/);
    expectConfigError(() => resolveConfig('fake|nope'), /unknown adapter config 'nope'/);
  });

  it('two parts of the same method are rejected', () => {
    expectConfigError(() => resolveConfig({ method: 'union', configs: ['fake', 'fake_big'] }), /'fake' appears twice/);
    expectConfigError(() => resolveConfig({ method: 'union', configs: [{ method: 'fake' }, { method: 'fake', r: 2 }] }), /'fake' appears twice/);
  });

  it('empty, nested or invalid unions are rejected', () => {
    expectConfigError(() => resolveConfig({ method: 'union', configs: [] }), /non-empty 'configs'/);
    expectConfigError(() => resolveConfig({ method: 'union' }), /non-empty 'configs'/);
    expectConfigError(() => resolveConfig({ method: 'union', configs: [{ method: 'union', configs: ['fake'] }] }), /cannot be nested/);
    expectConfigError(() => resolveConfig({ method: 'union', configs: ['fake', 'nope'] }), /unknown adapter config 'nope'/);
    expectConfigError(() => resolveConfig({ method: 'union', configs: ['fake[r=-1]', 'other'] }), /r must be a positive integer/);
  });

  it('a registered union preset takes "<index>.<option>" overrides, for object and string parts', () => {
    registerPreset('combo', { method: 'union', configs: [{ method: 'fake', r: 16 }, 'other'] });
    expect(resolveConfig('combo')).toEqual({
      method: 'union',
      configs: [
        { method: 'fake', r: 16, alpha: 8, flag: false },
        { method: 'other', k: 1 },
      ],
    });
    const c = resolveConfig('combo[0.r=4|1.k=9]');
    expect(c).toEqual({
      method: 'union',
      configs: [
        { method: 'fake', r: 4, alpha: 8, flag: false },
        { method: 'other', k: 9 },
      ],
    });
    // the preset itself is unchanged
    expect((resolveConfig('combo').configs as AdapterConfig[])[1]).toEqual({ method: 'other', k: 1 });
    expectConfigError(() => resolveConfig('combo[r=4]'), /'<index>.<option>'/);
    expectConfigError(() => resolveConfig('combo[5.r=4]'), /'<index>.<option>'/);
    expectConfigError(() => resolveConfig('combo[x.r=4]'), /'<index>.<option>'/);
  });
});
