import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/errors.js';
import { type OptionKeys, rejectUnknownOptions } from '../src/options.js';

interface Opts {
  a?: number;
  b: string;
}
const KNOWN = { a: true, b: true } as const satisfies OptionKeys<Opts>;

describe('rejectUnknownOptions', () => {
  it('accepts known keys, absent options and an empty object', () => {
    expect(() => rejectUnknownOptions({ a: 1, b: 'x' }, KNOWN, 'f')).not.toThrow();
    expect(() => rejectUnknownOptions(undefined, KNOWN, 'f')).not.toThrow();
    expect(() => rejectUnknownOptions({}, KNOWN, 'f')).not.toThrow();
  });

  it('an unknown key is a ConfigError naming it, the call and the known ones', () => {
    let caught: unknown;
    try {
      rejectUnknownOptions({ a: 1, combine_strategy: 'svd' }, KNOWN, 'averageAdapter');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).message).toBe("averageAdapter: unknown option 'combine_strategy' (known: a, b)");
    expect((caught as ConfigError).field).toBe('combine_strategy');
  });

  it('inherited properties do not count as known (no prototype tricks)', () => {
    expect(() => rejectUnknownOptions({ toString: 1 }, KNOWN, 'f')).toThrow(/unknown option 'toString'/);
  });
});
