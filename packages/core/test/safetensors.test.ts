import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { SafetensorsError } from '../src/errors.js';
import { SeededRandom } from '../src/rng.js';
import { readSafetensors, readSafetensorsHeader, writeSafetensors } from '../src/safetensors.js';

/** Builds a safetensors file from a header string and raw data bytes (the length field is computed). */
function rawFile(header: string, data: Uint8Array = new Uint8Array(0), lengthOverride?: number): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, lengthOverride ?? h.length, true);
  view.setUint32(4, 0, true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

const file = (header: unknown, data?: Uint8Array) => rawFile(JSON.stringify(header), data);

function u16le(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setUint16(i * 2, v, true));
  return out;
}

/** Asserts that `fn` throws a SafetensorsError (and not a RangeError/TypeError/SyntaxError). */
function expectSafetensorsError(fn: () => unknown, message?: RegExp): SafetensorsError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a throw').toBeDefined();
  expect(caught).toBeInstanceOf(SafetensorsError);
  const err = caught as SafetensorsError;
  expect(err.code).toBe('SAFETENSORS_ERROR');
  if (message) expect(err.message).toMatch(message);
  return err;
}

describe('safetensors round trip', () => {
  it('write → read returns the same names, shapes, values and metadata', () => {
    const rng = new SeededRandom(1);
    const a = Float32Array.from({ length: 12 }, () => rng.normal());
    const b = Float32Array.from([1.5, -2.25, 3e-20, 7e30, 0, -0]);
    const scalar = Float32Array.from([42]);
    const bytes = writeSafetensors({ 'z.weight': { shape: [3, 4], data: a }, 'a.bias': { shape: [6], data: b }, s: { shape: [], data: scalar } }, { format: 'pt' });
    // Header is padded so that the data section starts 8-byte aligned.
    const headerLen = new DataView(bytes.buffer).getUint32(0, true);
    expect((8 + headerLen) % 8).toBe(0);
    const { tensors, metadata } = readSafetensors(bytes);
    expect(metadata).toEqual({ format: 'pt' });
    expect([...tensors.keys()].sort()).toEqual(['a.bias', 's', 'z.weight']);
    expect(tensors.get('z.weight')).toEqual({ dtype: 'F32', shape: [3, 4], data: a });
    expect(Array.from(tensors.get('a.bias')!.data)).toEqual(Array.from(b));
    expect(tensors.get('s')!.shape).toEqual([]);
    expect(Array.from(tensors.get('s')!.data)).toEqual([42]);
  });

  it('round-trips a Map, a subarray view and zero-size tensors', () => {
    const backing = Float32Array.from([9, 9, 1, 2, 3, 9]);
    const view = backing.subarray(2, 5);
    const bytes = writeSafetensors(
      new Map([
        ['v', { shape: [3], data: view }],
        ['empty', { shape: [0, 4], data: new Float32Array(0) }],
      ]),
    );
    const { tensors } = readSafetensors(bytes);
    expect(Array.from(tensors.get('v')!.data)).toEqual([1, 2, 3]);
    expect(tensors.get('empty')!.shape).toEqual([0, 4]);
    expect(tensors.get('empty')!.data.length).toBe(0);
  });

  it('reads from a Uint8Array that is a view into a larger buffer', () => {
    const bytes = writeSafetensors({ x: { shape: [2], data: Float32Array.from([1, 2]) } });
    const big = new Uint8Array(bytes.length + 3);
    big.set(bytes, 3);
    const { tensors } = readSafetensors(big.subarray(3));
    expect(Array.from(tensors.get('x')!.data)).toEqual([1, 2]);
  });

  it('writer refuses a shape/value-count mismatch with a SafetensorsError', () => {
    expectSafetensorsError(() => writeSafetensors({ x: { shape: [2, 2], data: new Float32Array(3) } }), /'x'/);
  });
});

describe('safetensors dtypes', () => {
  it('decodes F16: normals, subnormals, signed zero, infinities and NaN', () => {
    const halves = [0x3c00, 0xc000, 0x3555, 0x7bff, 0x0001, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x3800];
    const bytes = file({ h: { dtype: 'F16', shape: [2, 5], data_offsets: [0, 20] } }, u16le(halves));
    const t = readSafetensors(bytes).tensors.get('h')!;
    expect(t.dtype).toBe('F16');
    expect(t.shape).toEqual([2, 5]);
    expect(t.data).toBeInstanceOf(Float32Array);
    const d = Array.from(t.data);
    expect(d[0]).toBe(1);
    expect(d[1]).toBe(-2);
    expect(d[2]).toBeCloseTo(0.333251953125, 10);
    expect(d[3]).toBe(65504);
    expect(d[4]).toBeCloseTo(2 ** -24, 30);
    expect(Object.is(d[5], -0)).toBe(true);
    expect(d[6]).toBe(Infinity);
    expect(d[7]).toBe(-Infinity);
    expect(Number.isNaN(d[8])).toBe(true);
    expect(d[9]).toBe(0.5);
  });

  it('decodes BF16 (the upper 16 bits of an F32)', () => {
    const vals = [0x3f80, 0xc000, 0x4049, 0x8000, 0x7f80, 0xbf80];
    const bytes = file({ b: { dtype: 'BF16', shape: [6], data_offsets: [0, 12] } }, u16le(vals));
    const d = Array.from(readSafetensors(bytes).tensors.get('b')!.data);
    expect(d[0]).toBe(1);
    expect(d[1]).toBe(-2);
    expect(d[2]).toBe(3.140625);
    expect(Object.is(d[3], -0)).toBe(true);
    expect(d[4]).toBe(Infinity);
    expect(d[5]).toBe(-1);
  });

  it('decodes F64 to float32 and integer dtypes to Int32Array', () => {
    const data = new Uint8Array(8 * 2 + 8 * 2 + 4 + 2 + 1 + 1 + 1);
    const v = new DataView(data.buffer);
    v.setFloat64(0, 0.1, true);
    v.setFloat64(8, -3, true);
    v.setBigInt64(16, -5n, true);
    v.setBigInt64(24, 123456789n, true);
    v.setInt32(32, -7, true);
    v.setInt16(36, -300, true);
    v.setInt8(38, -128);
    v.setUint8(39, 255);
    v.setUint8(40, 1);
    const bytes = file(
      {
        f64: { dtype: 'F64', shape: [2], data_offsets: [0, 16] },
        i64: { dtype: 'I64', shape: [2], data_offsets: [16, 32] },
        i32: { dtype: 'I32', shape: [1], data_offsets: [32, 36] },
        i16: { dtype: 'I16', shape: [1], data_offsets: [36, 38] },
        i8: { dtype: 'I8', shape: [1], data_offsets: [38, 39] },
        u8: { dtype: 'U8', shape: [1], data_offsets: [39, 40] },
        bool: { dtype: 'BOOL', shape: [1], data_offsets: [40, 41] },
      },
      data,
    );
    const { tensors } = readSafetensors(bytes);
    expect(tensors.get('f64')!.data).toBeInstanceOf(Float32Array);
    expect(Array.from(tensors.get('f64')!.data)).toEqual([Math.fround(0.1), -3]);
    expect(tensors.get('i64')!.data).toBeInstanceOf(Int32Array);
    expect(Array.from(tensors.get('i64')!.data)).toEqual([-5, 123456789]);
    expect(Array.from(tensors.get('i32')!.data)).toEqual([-7]);
    expect(Array.from(tensors.get('i16')!.data)).toEqual([-300]);
    expect(Array.from(tensors.get('i8')!.data)).toEqual([-128]);
    expect(Array.from(tensors.get('u8')!.data)).toEqual([255]);
    expect(Array.from(tensors.get('bool')!.data)).toEqual([1]);
  });

  it('the header reader reports entries, data start and metadata without decoding data', () => {
    const bytes = file({ __metadata__: { k: 'v' }, a: { dtype: 'F16', shape: [2], data_offsets: [0, 4] } }, u16le([0x3c00, 0x3c00]));
    const { entries, dataStart, metadata } = readSafetensorsHeader(bytes);
    expect(metadata).toEqual({ k: 'v' });
    expect(entries).toEqual([{ name: 'a', dtype: 'F16', shape: [2], begin: 0, end: 4 }]);
    expect(dataStart).toBe(bytes.length - 4);
  });
});

describe('malformed safetensors files throw SafetensorsError', () => {
  const okData = new Uint8Array(16);

  it('file shorter than 8 bytes', () => {
    for (let n = 0; n < 8; n++) expectSafetensorsError(() => readSafetensors(new Uint8Array(n)), /shorter than the 8-byte/);
  });

  it('header length beyond the file, zero, or huge', () => {
    const good = file({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, okData);
    const headerLen = new DataView(good.buffer).getUint32(0, true);
    for (const len of [good.length, good.length - 7, 2 ** 32 - 1, 0]) {
      const b = good.slice();
      new DataView(b.buffer).setUint32(0, len, true);
      expectSafetensorsError(() => readSafetensors(b), /header length/);
    }
    const hi = good.slice();
    new DataView(hi.buffer).setUint32(4, 1, true); // 2^32 + headerLen
    expectSafetensorsError(() => readSafetensors(hi), /header length/);
    // the exact length works
    expect(readSafetensors(good).tensors.size).toBe(1);
    expect(headerLen).toBeGreaterThan(0);
  });

  it('names the file in the message when given', () => {
    const err = expectSafetensorsError(() => readSafetensors(new Uint8Array(3), '/x/model.safetensors'));
    expect(err.message).toContain('/x/model.safetensors');
    expect(err.file).toBe('/x/model.safetensors');
  });

  it('non-JSON header (syntax error, invalid UTF-8)', () => {
    expectSafetensorsError(() => readSafetensors(rawFile('{"a": ', okData)), /not valid JSON/);
    expectSafetensorsError(() => readSafetensors(rawFile('not json at all', okData)), /not valid JSON/);
    const bad = rawFile('{"\u00e9": 1}');
    bad[10] = 0xff; // breaks the UTF-8 sequence
    expectSafetensorsError(() => readSafetensors(bad), /not valid JSON/);
  });

  it('header that is JSON but not an object', () => {
    for (const h of ['[]', '[1,2]', 'null', '42', '"str"', 'true']) {
      expectSafetensorsError(() => readSafetensors(rawFile(h)), /not a JSON object/);
    }
  });

  it('entry that is not an object', () => {
    expectSafetensorsError(() => readSafetensors(file({ a: 5 })), /'a' is not an object/);
    expectSafetensorsError(() => readSafetensors(file({ a: null })), /'a' is not an object/);
  });

  it('unknown dtype (including names inherited from Object.prototype)', () => {
    for (const dtype of ['F8', 'f32', '', 7, null, 'toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      expectSafetensorsError(() => readSafetensors(file({ a: { dtype, shape: [4], data_offsets: [0, 16] } }, okData)), /unknown dtype/);
    }
    expectSafetensorsError(() => readSafetensors(file({ a: { shape: [4], data_offsets: [0, 16] } }, okData)), /unknown dtype/);
  });

  it('bad shape', () => {
    for (const shape of [[-1], [1.5], ['4'], '4', null, [2 ** 53], [NaN], undefined]) {
      expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape, data_offsets: [0, 16] } }, okData)), /invalid shape/);
    }
  });

  it('bad or out-of-range data_offsets', () => {
    for (const data_offsets of [[0], [0, 16, 32], [-4, 12], [0, 1.5], ['0', '16'], null, 'x']) {
      expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape: [4], data_offsets } }, okData)), /invalid data_offsets/);
    }
    expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape: [4], data_offsets: [4, 20] } }, okData)), /outside/);
    expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, okData)), /outside/);
    expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(12))), /outside/);
  });

  it('overlapping offsets', () => {
    const data = new Uint8Array(24);
    expectSafetensorsError(
      () => readSafetensors(file({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } }, data)),
      /overlap/,
    );
    expectSafetensorsError(
      () => readSafetensors(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, data)),
      /overlap/,
    );
  });

  it('shape / byte count mismatch', () => {
    expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, okData)), /needs 12 bytes but data_offsets give 16/);
    expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F16', shape: [2, 2], data_offsets: [0, 16] } }, okData)), /needs 8 bytes/);
    expectSafetensorsError(() => readSafetensors(file({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 16] } }, okData)), /needs/);
  });

  it('__metadata__ must map strings to strings', () => {
    for (const metadata of [5, 'x', [1], { k: 1 }, { k: { n: 'v' } }]) {
      expectSafetensorsError(() => readSafetensors(file({ __metadata__: metadata })), /__metadata__/);
    }
    expect(readSafetensors(file({ __metadata__: { a: 'b' } })).metadata).toEqual({ a: 'b' });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Fuzz: seeded random mutations of a real model file. Every outcome must be a parse or a SafetensorsError.

const fixturePath = fileURLToPath(new URL('./fixtures/peft-lora-adapter_model.safetensors', import.meta.url));

function loadFixture(): Uint8Array {
  const buf = readFileSync(fixturePath);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

const JSON_CHARS = '{}[]":,0123456789-.eE \u0000\\'.split('').map((c) => c.charCodeAt(0));
const INTERESTING_NUMBERS = [0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 4096, 65536, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 1e308, -1e308, 0.5, 1.5, -0];
const INTERESTING_VALUES: unknown[] = [null, true, 'F16', 'BF16', 'I64', 'BOOL', 'toString', '__proto__', [], {}, [[]], [1, 2, 3], 'x', ...INTERESTING_NUMBERS];

type Mutation = (b: Uint8Array, rng: SeededRandom, headerEnd: number) => Uint8Array;

const int = (rng: SeededRandom, n: number) => Math.floor(rng.next() * n);
const pick = <T>(rng: SeededRandom, xs: readonly T[]): T => xs[int(rng, xs.length)];

function rebuild(header: unknown, data: Uint8Array): Uint8Array {
  return rawFile(JSON.stringify(header), data);
}

/** Mutates a parsed header (keeps it valid JSON) so that the deeper validation paths are exercised. */
function mutateHeaderJson(b: Uint8Array, rng: SeededRandom): Uint8Array {
  if (b.length < 8) return b; // an earlier mutation truncated the length prefix: nothing to parse
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const len = view.getUint32(0, true);
  if (8 + len > b.length) return b;
  let header: any;
  try {
    header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + len)));
  } catch {
    return b;
  }
  if (!header || typeof header !== 'object') return b;
  const data = b.subarray(8 + len);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const name = names.length ? pick(rng, names) : '__metadata__';
  const entry = header[name];
  switch (int(rng, 8)) {
    case 0: // a field of an entry set to something interesting
      if (entry && typeof entry === 'object') entry[pick(rng, ['dtype', 'shape', 'data_offsets'])] = pick(rng, INTERESTING_VALUES);
      break;
    case 1: // an offset nudged
      if (entry?.data_offsets && Array.isArray(entry.data_offsets)) entry.data_offsets[int(rng, 2)] += pick(rng, [-8, -4, -1, 1, 4, 8, 4096]);
      break;
    case 2: // a dim changed
      if (Array.isArray(entry?.shape) && entry.shape.length) entry.shape[int(rng, entry.shape.length)] = pick(rng, INTERESTING_NUMBERS);
      break;
    case 3: // dtype swapped for another real one
      if (entry && typeof entry === 'object') entry.dtype = pick(rng, ['F32', 'F16', 'BF16', 'F64', 'I32', 'I64', 'I16', 'I8', 'U8', 'BOOL']);
      break;
    case 4: // entry replaced wholesale
      header[name] = pick(rng, INTERESTING_VALUES);
      break;
    case 5: // metadata replaced
      header.__metadata__ = pick(rng, [...INTERESTING_VALUES, { a: 'b' }, { a: 1 }]);
      break;
    case 6: // a second entry aliasing the first's bytes
      if (entry && typeof entry === 'object') header[`${name}.copy`] = structuredClone(entry);
      break;
    default: // entry deleted
      delete header[name];
  }
  return rebuild(header, data);
}

const MUTATIONS: Record<string, Mutation> = {
  bitFlipHeader: (b, rng, headerEnd) => {
    const i = int(rng, Math.min(headerEnd, b.length));
    b[i] ^= 1 << int(rng, 8);
    return b;
  },
  byteOverwriteHeader: (b, rng, headerEnd) => {
    const i = 8 + int(rng, Math.max(1, Math.min(headerEnd, b.length) - 8));
    if (i < b.length) b[i] = rng.next() < 0.6 ? pick(rng, JSON_CHARS) : int(rng, 256);
    return b;
  },
  digitSwapHeader: (b, rng, headerEnd) => {
    // A digit replaced by another keeps the JSON valid but breaks shapes/offsets.
    const end = Math.min(headerEnd, b.length);
    for (let tries = 0; tries < 64; tries++) {
      const i = 8 + int(rng, Math.max(1, end - 8));
      if (b[i] >= 0x30 && b[i] <= 0x39) {
        b[i] = 0x30 + int(rng, 10);
        return b;
      }
    }
    return b;
  },
  byteOverwriteAnywhere: (b, rng) => {
    if (b.length) b[int(rng, b.length)] = int(rng, 256);
    return b;
  },
  bitFlipAnywhere: (b, rng) => {
    if (b.length) b[int(rng, b.length)] ^= 1 << int(rng, 8);
    return b;
  },
  truncate: (b, rng, headerEnd) => {
    const r = rng.next();
    const n = r < 0.2 ? int(rng, 9) : r < 0.6 ? int(rng, Math.min(headerEnd + 1, b.length + 1)) : int(rng, b.length + 1);
    return b.slice(0, n);
  },
  extend: (b, rng) => {
    const extra = new Uint8Array(1 + int(rng, 64));
    for (let i = 0; i < extra.length; i++) extra[i] = int(rng, 256);
    const out = new Uint8Array(b.length + extra.length);
    out.set(b);
    out.set(extra, b.length);
    return out;
  },
  headerLengthField: (b, rng) => {
    if (b.length < 8) return b;
    const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const len = view.getUint32(0, true);
    const choice = int(rng, 5);
    if (choice === 0) view.setUint32(0, (len + pick(rng, [-8, -2, -1, 1, 2, 8])) >>> 0, true);
    else if (choice === 1) view.setUint32(0, int(rng, 2 ** 32), true);
    else if (choice === 2) view.setUint32(4, 1 + int(rng, 2 ** 32 - 1), true);
    else if (choice === 3) view.setUint32(0, int(rng, b.length + 16), true);
    else view.setUint32(0, pick(rng, [0, 1, 2, 100 * 1024 * 1024, 100 * 1024 * 1024 + 1, 2 ** 32 - 1]), true);
    return b;
  },
  headerJson: (b, rng) => mutateHeaderJson(b, rng),
};

describe('safetensors fuzz (seeded mutations of a real PEFT-written file)', () => {
  it('every mutation either parses or throws SafetensorsError — never another error, never a hang', () => {
    const original = loadFixture();
    const clean = readSafetensors(original);
    expect(clean.tensors.size).toBeGreaterThan(10);
    const headerEnd = 8 + new DataView(original.buffer, original.byteOffset).getUint32(0, true);

    const rng = new SeededRandom(20240611);
    const names = Object.keys(MUTATIONS);
    const ITERATIONS = 1500;
    const outcomes: Record<string, { ok: number; error: number }> = Object.fromEntries(names.map((n) => [n, { ok: 0, error: 0 }]));
    const failures: string[] = [];
    let slowest = 0;
    const t0 = performance.now();

    for (let iter = 0; iter < ITERATIONS; iter++) {
      // Cycle through the kinds so each is exercised, then stack 0-2 further random mutations on top.
      const first = names[iter % names.length];
      const applied = [first];
      let bytes = MUTATIONS[first](original.slice(), rng, headerEnd);
      const more = int(rng, 3);
      for (let k = 0; k < more; k++) {
        const m = pick(rng, names);
        applied.push(m);
        bytes = MUTATIONS[m](bytes, rng, headerEnd);
      }
      const start = performance.now();
      try {
        const { tensors } = readSafetensors(bytes, 'fuzz.safetensors');
        for (const [name, t] of tensors) {
          const count = t.shape.reduce((a, b) => a * b, 1);
          if (t.data.length !== count) failures.push(`#${iter} ${applied}: '${name}' has ${t.data.length} values for shape [${t.shape}]`);
        }
        outcomes[first].ok++;
      } catch (e) {
        if (!(e instanceof SafetensorsError)) failures.push(`#${iter} ${applied}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
        else outcomes[first].error++;
      }
      slowest = Math.max(slowest, performance.now() - start);
    }

    if (process.env.FUZZ_STATS) console.log(JSON.stringify(outcomes));
    expect(failures).toEqual([]);
    // Each mutation kind was applied and the mix produced both outcomes.
    const total = names.reduce((s, n) => s + outcomes[n].ok + outcomes[n].error, 0);
    expect(total).toBe(ITERATIONS);
    for (const n of names) expect(outcomes[n].ok + outcomes[n].error).toBeGreaterThan(100);
    expect(names.reduce((s, n) => s + outcomes[n].error, 0)).toBeGreaterThan(ITERATIONS / 4);
    expect(names.reduce((s, n) => s + outcomes[n].ok, 0)).toBeGreaterThan(10);
    expect(outcomes.headerLengthField.error).toBeGreaterThan(0);
    expect(outcomes.headerJson.error).toBeGreaterThan(0);
    // No single parse may take long (a hang would show up here or as the test timeout).
    expect(slowest).toBeLessThan(1000);
    expect(performance.now() - t0).toBeLessThan(30_000);
  }, 60_000);
});
