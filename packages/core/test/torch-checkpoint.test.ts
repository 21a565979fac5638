import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TorchCheckpointError } from '../src/errors.js';
import { SeededRandom } from '../src/rng.js';
import { readSafetensors } from '../src/safetensors.js';
import { isTorchCheckpoint, readTorchCheckpoint } from '../src/torch-checkpoint.js';

const fixture = (name: string) => {
  const buf = readFileSync(fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url)));
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
};

/** Asserts that `fn` throws a TorchCheckpointError (and not a RangeError/TypeError/…) whose message matches. */
function expectTorchError(fn: () => unknown, message?: RegExp): TorchCheckpointError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a throw').toBeDefined();
  expect(caught).toBeInstanceOf(TorchCheckpointError);
  const err = caught as TorchCheckpointError;
  expect(err.code).toBe('TORCH_CHECKPOINT');
  if (message) expect(err.message).toMatch(message);
  return err;
}

// ---------------------------------------------------------------------------------------------------------
// A minimal zip writer and reader (stored entries), and a pickle writer, to build checkpoints by hand.

interface Entry {
  name: string;
  data: Uint8Array;
  method?: number;
}

/** Writes a zip of stored entries the way torch.save lays them out (optionally with zip64 end records). */
function writeZip(entries: Entry[], options: { zip64?: boolean } = {}): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = enc.encode(e.name);
    const local = new Uint8Array(30 + name.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true);
    lv.setUint16(6, 0x0800, true);
    lv.setUint16(8, e.method ?? 0, true);
    lv.setUint32(18, e.data.length, true);
    lv.setUint32(22, e.data.length, true);
    lv.setUint16(26, name.length, true);
    local.set(name, 30);
    const cd = new Uint8Array(46 + name.length);
    const cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(8, 0x0800, true);
    cv.setUint16(10, e.method ?? 0, true);
    cv.setUint32(20, e.data.length, true);
    cv.setUint32(24, e.data.length, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, offset, true);
    cd.set(name, 46);
    parts.push(local, e.data);
    central.push(cd);
    offset += local.length + e.data.length;
  }
  const cdOffset = offset;
  const cdSize = central.reduce((s, c) => s + c.length, 0);
  parts.push(...central);
  offset += cdSize;
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, 0x06054b50, true);
  if (options.zip64) {
    const rec = new Uint8Array(56 + 20);
    const rv = new DataView(rec.buffer);
    rv.setUint32(0, 0x06064b50, true);
    rv.setBigUint64(4, 44n, true);
    rv.setBigUint64(24, BigInt(entries.length), true);
    rv.setBigUint64(32, BigInt(entries.length), true);
    rv.setBigUint64(40, BigInt(cdSize), true);
    rv.setBigUint64(48, BigInt(cdOffset), true);
    rv.setUint32(56, 0x07064b50, true);
    rv.setBigUint64(56 + 8, BigInt(offset), true);
    rv.setUint32(56 + 16, 1, true);
    parts.push(rec);
    ev.setUint16(8, 0xffff, true);
    ev.setUint16(10, 0xffff, true);
    ev.setUint32(12, 0xffffffff, true);
    ev.setUint32(16, 0xffffffff, true);
  } else {
    ev.setUint16(8, entries.length, true);
    ev.setUint16(10, entries.length, true);
    ev.setUint32(12, cdSize, true);
    ev.setUint32(16, cdOffset, true);
  }
  parts.push(eocd);
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The entries of a well-formed zip (a test-side reader, independent of the one under test). */
function readZipEntries(zip: Uint8Array): Entry[] {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const eocd = zip.length - 22;
  const count = v.getUint16(eocd + 10, true);
  let at = v.getUint32(eocd + 16, true);
  const out: Entry[] = [];
  for (let i = 0; i < count; i++) {
    const size = v.getUint32(at + 20, true);
    const nameLen = v.getUint16(at + 28, true);
    const name = new TextDecoder().decode(zip.subarray(at + 46, at + 46 + nameLen));
    const local = v.getUint32(at + 42, true);
    const start = local + 30 + v.getUint16(local + 26, true) + v.getUint16(local + 28, true);
    out.push({ name, data: zip.slice(start, start + size) });
    at += 46 + nameLen + v.getUint16(at + 30, true) + v.getUint16(at + 32, true);
  }
  return out;
}

/** Pickle bytes, opcode by opcode (protocol 2, as torch.save writes; a few protocol-4 opcodes too). */
class Pickle {
  private readonly bytes: number[] = [];
  private memo = 0;
  op(...bytes: number[]): this {
    this.bytes.push(...bytes);
    return this;
  }
  private u32(n: number) {
    return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
  }
  str(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.op(0x58, ...this.u32(b.length), ...b);
  }
  shortStr(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.op(0x8c, b.length, ...b);
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.op(0x4b, n);
    if (n >= 0 && n < 65536) return this.op(0x4d, n & 0xff, n >> 8);
    if (n >= -(2 ** 31) && n < 2 ** 31) return this.op(0x4a, ...this.u32(n >>> 0));
    // LONG1, 8 bytes little-endian two's complement
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
    return this.op(0x8a, 8, ...b);
  }
  global(module: string, name: string): this {
    return this.op(0x63, ...new TextEncoder().encode(`${module}\n${name}\n`));
  }
  put(): number {
    this.op(0x71, this.memo & 0xff);
    return this.memo++;
  }
  get(i: number): this {
    return this.op(0x68, i);
  }
  mark(): this {
    return this.op(0x28);
  }
  tuple(): this {
    return this.op(0x74);
  }
  emptyDict(): this {
    return this.op(0x7d);
  }
  emptyTuple(): this {
    return this.op(0x29);
  }
  reduce(): this {
    return this.op(0x52);
  }
  ints(xs: number[]): this {
    this.mark();
    for (const x of xs) this.int(x);
    return this.tuple();
  }
  /** _rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict()). */
  tensor(t: TensorSpec): this {
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark()
      .str('storage')
      .global('torch', t.storageType ?? 'FloatStorage')
      .str(t.key)
      .str(t.location ?? 'cpu')
      .int(t.numel)
      .tuple()
      .op(0x51);
    this.int(t.offset ?? 0)
      .ints(t.shape)
      .ints(t.stride ?? contiguous(t.shape))
      .op(0x89);
    this.global('collections', 'OrderedDict').emptyTuple().reduce();
    return this.tuple().reduce();
  }
  stop(): Uint8Array {
    return Uint8Array.from([...this.bytes, 0x2e]);
  }
}

interface TensorSpec {
  key: string;
  numel: number;
  shape: number[];
  stride?: number[];
  offset?: number;
  storageType?: string;
  location?: string;
}

function contiguous(shape: number[]): number[] {
  const s = shape.map(() => 1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

/** A state dict pickle: {name: tensor} in order (protocol 2, plain dict as PEFT saves). */
function stateDictPickle(tensors: [string, TensorSpec][]): Uint8Array {
  const p = new Pickle().op(0x80, 2).emptyDict().mark();
  for (const [name, t] of tensors) p.str(name).tensor(t);
  return p.op(0x75).stop();
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

/** A checkpoint zip: `<prefix>/data.pkl`, `<prefix>/data/<key>` storages, `<prefix>/version`. */
function checkpoint(pickle: Uint8Array, storages: Record<string, Uint8Array>, options: { prefix?: string; byteorder?: string; zip64?: boolean; method?: number } = {}): Uint8Array {
  const prefix = options.prefix ?? 'archive';
  const entries: Entry[] = [{ name: `${prefix}/data.pkl`, data: pickle, method: options.method }];
  if (options.byteorder !== undefined) entries.push({ name: `${prefix}/byteorder`, data: new TextEncoder().encode(options.byteorder) });
  for (const [key, data] of Object.entries(storages)) entries.push({ name: `${prefix}/data/${key}`, data });
  entries.push({ name: `${prefix}/version`, data: new TextEncoder().encode('3\n') });
  return writeZip(entries, options);
}

const values12 = Array.from({ length: 12 }, (_, i) => i * 0.5 - 2);

// ---------------------------------------------------------------------------------------------------------

describe('torch checkpoint: real files', () => {
  it('parses the PEFT LoRA adapter_model.bin; its tensors equal the safetensors copy bit for bit', () => {
    const bin = fixture('peft-lora-adapter_model.bin');
    expect(isTorchCheckpoint(bin)).toBe(true);
    const { tensors } = readTorchCheckpoint(bin, 'adapter_model.bin');
    const { tensors: expected } = readSafetensors(fixture('peft-lora-adapter_model.safetensors'));
    expect(tensors.size).toBe(24);
    expect([...tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, t] of tensors) {
      const e = expected.get(name)!;
      expect(t.dtype, name).toBe('F32');
      expect(t.data).toBeInstanceOf(Float32Array);
      expect(t.shape, name).toEqual(e.shape);
      expect(t.shape, name).toEqual(name.includes('lora_A') ? [4, 32] : [32, 4]);
      expect(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength)), name).toBe(true);
    }
  });

  it('reads from a Uint8Array that is a view into a larger buffer', () => {
    const bin = fixture('peft-lora-adapter_model.bin');
    const big = new Uint8Array(bin.length + 5);
    big.set(bin, 5);
    expect(readTorchCheckpoint(big.subarray(5)).tensors.size).toBe(24);
  });

  it('refuses the hostile file by naming the forbidden global, before anything could run', () => {
    const err = expectTorchError(() => readTorchCheckpoint(fixture('hostile-pytorch_model.bin'), 'pytorch_model.bin'), /Forbidden global 'posix\.system'/);
    expect(err.file).toBe('pytorch_model.bin');
    expect(err.message).toContain('pytorch_model.bin');
  });

  it('cannot execute anything: the reader imports nothing but errors and safetensors, and has no eval-like calls', () => {
    const src = readFileSync(fileURLToPath(new URL('../src/torch-checkpoint.ts', import.meta.url)), 'utf8');
    const imports = [...src.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]);
    expect(imports.sort()).toEqual(['./errors.js', './safetensors.js']);
    expect(src).not.toMatch(/\beval\s*\(|new Function|\bimport\s*\(|require\s*\(|child_process|process\.|globalThis/);
  });
});

describe('torch checkpoint: layouts torch.save writes', () => {
  it('views into one storage (offsets), scalars, zero-size tensors and an arbitrary archive prefix', () => {
    const pickle = stateDictPickle([
      ['a', { key: '0', numel: 12, shape: [2, 3] }],
      ['b', { key: '0', numel: 12, shape: [6], offset: 6 }],
      ['s', { key: '1', numel: 1, shape: [] }],
      ['empty', { key: '2', numel: 0, shape: [0, 4] }],
    ]);
    const { tensors } = readTorchCheckpoint(checkpoint(pickle, { 0: f32Bytes(values12), 1: f32Bytes([42]), 2: new Uint8Array(0) }, { prefix: 'my model' }));
    expect(tensors.get('a')).toEqual({ dtype: 'F32', shape: [2, 3], data: Float32Array.from(values12.slice(0, 6)) });
    expect(Array.from(tensors.get('b')!.data)).toEqual(values12.slice(6));
    expect(tensors.get('s')!.shape).toEqual([]);
    expect(Array.from(tensors.get('s')!.data)).toEqual([42]);
    expect(tensors.get('empty')!.data.length).toBe(0);
  });

  it('tied weights: four names of one storage share identical data (memoised tensor and separate rebuilds)', () => {
    // (1) the same tensor object under four names (BINGET of the memoised tensor)
    const p = new Pickle().op(0x80, 2).emptyDict().mark();
    p.str('shared.weight').tensor({ key: '0', numel: 12, shape: [4, 3] });
    const memo = p.put();
    for (const n of ['encoder.embed.weight', 'decoder.embed.weight', 'head.weight']) p.str(n).get(memo);
    const storage = { 0: f32Bytes(values12) };
    const one = readTorchCheckpoint(checkpoint(p.op(0x75).stop(), storage)).tensors;
    // (2) four rebuild calls naming the same storage key
    const names = ['shared.weight', 'encoder.embed.weight', 'decoder.embed.weight', 'head.weight'];
    const two = readTorchCheckpoint(checkpoint(stateDictPickle(names.map((n) => [n, { key: '0', numel: 12, shape: [4, 3] }])), storage)).tensors;
    for (const tensors of [one, two]) {
      expect([...tensors.keys()]).toEqual(names);
      const shared = tensors.get('shared.weight')!;
      expect(Array.from(shared.data)).toEqual(values12);
      for (const n of names) {
        expect(tensors.get(n)!.shape).toEqual([4, 3]);
        expect(tensors.get(n)!.data).toBe(shared.data);
      }
    }
  });

  it('F16, BF16, F64 storages load as float32; I64, I32, U8, BOOL as int32', () => {
    const bytes = (n: number, fill: (v: DataView) => void) => {
      const b = new Uint8Array(n);
      fill(new DataView(b.buffer));
      return b;
    };
    const pickle = stateDictPickle([
      ['h', { key: 'h', numel: 2, shape: [2], storageType: 'HalfStorage' }],
      ['b', { key: 'b', numel: 2, shape: [2], storageType: 'BFloat16Storage' }],
      ['d', { key: 'd', numel: 1, shape: [1], storageType: 'DoubleStorage' }],
      ['l', { key: 'l', numel: 2, shape: [2], storageType: 'LongStorage' }],
      ['i', { key: 'i', numel: 1, shape: [1], storageType: 'IntStorage' }],
      ['u', { key: 'u', numel: 1, shape: [1], storageType: 'ByteStorage' }],
      ['t', { key: 't', numel: 1, shape: [1], storageType: 'BoolStorage' }],
    ]);
    const { tensors } = readTorchCheckpoint(
      checkpoint(pickle, {
        h: bytes(4, (v) => {
          v.setUint16(0, 0x3c00, true);
          v.setUint16(2, 0xc000, true);
        }),
        b: bytes(4, (v) => {
          v.setUint16(0, 0x4049, true);
          v.setUint16(2, 0xbf80, true);
        }),
        d: bytes(8, (v) => v.setFloat64(0, 0.1, true)),
        l: bytes(16, (v) => {
          v.setBigInt64(0, -5n, true);
          v.setBigInt64(8, 123456789n, true);
        }),
        i: bytes(4, (v) => v.setInt32(0, -7, true)),
        u: bytes(1, (v) => v.setUint8(0, 255)),
        t: bytes(1, (v) => v.setUint8(0, 1)),
      }),
    );
    const get = (n: string) => tensors.get(n)!;
    expect([get('h').dtype, get('b').dtype, get('d').dtype, get('l').dtype, get('i').dtype, get('u').dtype, get('t').dtype]).toEqual([
      'F16',
      'BF16',
      'F64',
      'I64',
      'I32',
      'U8',
      'BOOL',
    ]);
    expect(Array.from(get('h').data)).toEqual([1, -2]);
    expect(Array.from(get('b').data)).toEqual([3.140625, -1]);
    expect(Array.from(get('d').data)).toEqual([Math.fround(0.1)]);
    expect(get('l').data).toBeInstanceOf(Int32Array);
    expect(Array.from(get('l').data)).toEqual([-5, 123456789]);
    expect(Array.from(get('i').data)).toEqual([-7]);
    expect(Array.from(get('u').data)).toEqual([255]);
    expect(Array.from(get('t').data)).toEqual([1]);
  });

  it('an OrderedDict state dict with _metadata (BUILD), protocol-4 opcodes, parameters and zip64 end records', () => {
    // collections.OrderedDict() via STACK_GLOBAL, FRAME, SHORT_BINUNICODE, MEMOIZE; items; then BUILD {'_metadata': {'': {'version': 1}}}
    const p = new Pickle().op(0x80, 4).op(0x95, 0, 0, 0, 0, 0, 0, 0, 0);
    p.shortStr('collections').shortStr('OrderedDict').op(0x93, 0x94).emptyTuple().reduce().op(0x94).mark();
    p.shortStr('w')
      .global('torch._utils', '_rebuild_parameter')
      .mark()
      .tensor({ key: '0', numel: 12, shape: [3, 4] })
      .op(0x88);
    p.global('collections', 'OrderedDict').emptyTuple().reduce().tuple().reduce();
    p.shortStr('n').op(0x4e); // a value that is not a tensor
    const withNone = p.op(0x75).stop();
    expectTorchError(() => readTorchCheckpoint(checkpoint(withNone, { 0: f32Bytes(values12) })), /entry 'n' of the state dict is None, not a tensor/);

    const q = new Pickle().op(0x80, 4).op(0x95, 0, 0, 0, 0, 0, 0, 0, 0);
    q.shortStr('collections').shortStr('OrderedDict').op(0x93, 0x94).emptyTuple().reduce().op(0x94).mark();
    q.shortStr('w')
      .global('torch._utils', '_rebuild_parameter')
      .mark()
      .tensor({ key: '0', numel: 12, shape: [3, 4] })
      .op(0x88);
    q.global('collections', 'OrderedDict').emptyTuple().reduce().tuple().reduce();
    q.op(0x75);
    q.emptyDict().shortStr('_metadata').emptyDict().shortStr('').emptyDict().shortStr('version').int(1).op(0x73, 0x73, 0x73, 0x62);
    const { tensors } = readTorchCheckpoint(checkpoint(q.stop(), { 0: f32Bytes(values12) }, { zip64: true, byteorder: 'little' }));
    expect([...tensors.keys()]).toEqual(['w']);
    expect(tensors.get('w')).toEqual({ dtype: 'F32', shape: [3, 4], data: Float32Array.from(values12) });
  });
});

describe('torch checkpoint: refusals', () => {
  const ok = (pickle = stateDictPickle([['a', { key: '0', numel: 12, shape: [3, 4] }]]), options = {}) => checkpoint(pickle, { 0: f32Bytes(values12) }, options);

  it('the well-formed base case parses', () => {
    expect(readTorchCheckpoint(ok()).tensors.get('a')!.shape).toEqual([3, 4]);
  });

  it('forbidden globals, by GLOBAL or STACK_GLOBAL, are named', () => {
    for (const [module, name] of [
      ['os', 'system'],
      ['posix', 'system'],
      ['builtins', 'eval'],
      ['builtins', 'getattr'],
      ['subprocess', 'Popen'],
      ['torch', 'load'],
      ['torch._utils', '_rebuild_tensor'],
      ['torch', 'ComplexFloatStorage'],
      ['collections', 'constructor'],
      ['', '__proto__'],
    ]) {
      const viaGlobal = new Pickle().op(0x80, 2).global(module, name).str('x').op(0x85).reduce().stop();
      expectTorchError(() => readTorchCheckpoint(ok(viaGlobal)), new RegExp(`Forbidden global '${`${module}.${name}`.replace(/\./g, '\\.')}'`));
      const viaStack = new Pickle().op(0x80, 4).shortStr(module).shortStr(name).op(0x93).stop();
      expectTorchError(() => readTorchCheckpoint(ok(viaStack)), /Forbidden global/);
    }
  });

  it('opcodes outside the state-dict subset are named', () => {
    const cases: [number[], RegExp][] = [
      [[0x69, ...new TextEncoder().encode('os\nsystem\n')], /INST/],
      [[0x28, 0x6f], /OBJ/],
      [[0x81], /NEWOBJ/],
      [[0x50, ...new TextEncoder().encode('1\n')], /PERSID/],
      [[0x82, 1], /EXT1/],
      [[0x53], /STRING/],
      [[0x42, 0, 0, 0, 0], /BINBYTES/],
      [[0x32], /DUP/],
      [[0xff], /0xff/],
    ];
    for (const [bytes, message] of cases) {
      expectTorchError(
        () =>
          readTorchCheckpoint(
            ok(
              new Pickle()
                .op(0x80, 2)
                .op(...bytes)
                .stop(),
            ),
          ),
        message,
      );
    }
  });

  it('REDUCE only calls the rebuild functions; storage classes and data are not callable', () => {
    expectTorchError(() => readTorchCheckpoint(ok(new Pickle().op(0x80, 2).global('torch', 'FloatStorage').emptyTuple().reduce().stop())), /cannot be called/);
    expectTorchError(() => readTorchCheckpoint(ok(new Pickle().op(0x80, 2).str('x').emptyTuple().reduce().stop())), /REDUCE of string/);
    expectTorchError(() => readTorchCheckpoint(ok(new Pickle().op(0x80, 2).global('collections', 'OrderedDict').str('a').op(0x85).reduce().stop())), /takes no arguments/);
  });

  it('the legacy (non-zip) format is refused with how to convert it', () => {
    const legacy = Uint8Array.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
    const err = expectTorchError(() => readTorchCheckpoint(legacy, 'old.bin'), /legacy/);
    expect(err.message).toMatch(/torch\.save/);
    expect(err.message).toMatch(/safetensors/);
    expect(isTorchCheckpoint(legacy)).toBe(false);
  });

  it('not a zip at all, empty, truncated, or without data.pkl', () => {
    expectTorchError(() => readTorchCheckpoint(new Uint8Array(0)), /zip archive/);
    expectTorchError(() => readTorchCheckpoint(new TextEncoder().encode('{"a": 1}')), /zip archive/);
    const good = ok();
    for (const n of [4, 30, good.length - 23, good.length - 1]) expectTorchError(() => readTorchCheckpoint(good.slice(0, n)));
    expectTorchError(() => readTorchCheckpoint(writeZip([{ name: 'archive/other.pkl', data: new Uint8Array(3) }])), /no <prefix>\/data\.pkl/);
    const two = writeZip([
      { name: 'a/data.pkl', data: new Uint8Array(1) },
      { name: 'b/data.pkl', data: new Uint8Array(1) },
    ]);
    expectTorchError(() => readTorchCheckpoint(two), /2 <prefix>\/data\.pkl/);
    const dup = writeZip([
      { name: 'a/data.pkl', data: new Uint8Array(1) },
      { name: 'a/data.pkl', data: new Uint8Array(1) },
    ]);
    expectTorchError(() => readTorchCheckpoint(dup), /twice/);
  });

  it('an archive whose directory lies about sizes, offsets or counts is refused', () => {
    /** Sets a field of the data.pkl's central record (the first) or of the end record. */
    const patch = (where: 'central' | 'end', field: number, value: number, width: 2 | 4 = 4) => {
      const b = ok();
      const v = new DataView(b.buffer);
      const at = where === 'end' ? b.length - 22 : v.getUint32(b.length - 22 + 16, true);
      if (width === 2) v.setUint16(at + field, value, true);
      else v.setUint32(at + field, value, true);
      return b;
    };
    const size = ok().length;
    expectTorchError(() => readTorchCheckpoint(patch('central', 20, size)), /compressed size/);
    const both = patch('central', 20, size);
    new DataView(both.buffer).setUint32(new DataView(both.buffer).getUint32(both.length - 22 + 16, true) + 24, size, true);
    expectTorchError(() => readTorchCheckpoint(both), /data of 'archive\/data\.pkl'.*runs past the end of the file/);
    expectTorchError(() => readTorchCheckpoint(patch('central', 42, 7)), /no local header at byte 7/);
    expectTorchError(() => readTorchCheckpoint(patch('central', 42, size + 100)), /local header .* runs past the end/);
    expectTorchError(() => readTorchCheckpoint(patch('central', 8, 1, 2)), /encrypted/);
    expectTorchError(() => readTorchCheckpoint(patch('central', 0, 0x12345678)), /bad signature/);
    expectTorchError(() => readTorchCheckpoint(patch('central', 28, 0xffff, 2)), /runs past the directory's end/);
    expectTorchError(() => readTorchCheckpoint(patch('end', 10, 500, 2)), /cannot hold 500 entries/);
    expectTorchError(() => readTorchCheckpoint(patch('end', 16, size)), /overlaps the end record/);
    expectTorchError(() => readTorchCheckpoint(patch('end', 4, 1, 2)), /multi-volume/);
    expectTorchError(() => readTorchCheckpoint(patch('end', 16, 0xffffffff)), /zip64 .*locator/);
    expectTorchError(() => readTorchCheckpoint(patch('central', 24, 0xffffffff)), /zip64 extra field/);
  });

  it('compressed entries are refused', () => {
    expectTorchError(() => readTorchCheckpoint(ok(undefined, { method: 8 })), /compressed \(zip method 8\)/);
  });

  it('big-endian or unknown byte order is refused', () => {
    expectTorchError(() => readTorchCheckpoint(ok(undefined, { byteorder: 'big' })), /big-endian/);
    expectTorchError(() => readTorchCheckpoint(ok(undefined, { byteorder: 'middle' })), /byteorder/);
    expect(readTorchCheckpoint(ok(undefined, { byteorder: 'little' })).tensors.size).toBe(1);
  });

  it('non-contiguous strides are refused; size-1 dimensions may have any stride', () => {
    const t = (shape: number[], stride: number[]) => stateDictPickle([['a', { key: '0', numel: 12, shape, stride }]]);
    expectTorchError(() => readTorchCheckpoint(ok(t([3, 4], [1, 3]))), /non-contiguous stride \[1,3\]/);
    expectTorchError(() => readTorchCheckpoint(ok(t([3, 4], [4, 2]))), /contiguous/);
    expectTorchError(() => readTorchCheckpoint(ok(t([3, 4], [4]))), /rank/);
    expect(readTorchCheckpoint(ok(t([1, 12], [99, 1]))).tensors.get('a')!.shape).toEqual([1, 12]);
  });

  it('sizes are checked before anything is allocated', () => {
    const t = (spec: Partial<TensorSpec>) => stateDictPickle([['a', { key: '0', numel: 12, shape: [3, 4], ...spec }]]);
    // the storage declares more elements than its entry holds
    expectTorchError(() => readTorchCheckpoint(ok(t({ numel: 13, shape: [13] }))), /declares 13 F32 elements \(52 bytes\) but its entry holds 48/);
    expectTorchError(() => readTorchCheckpoint(ok(t({ numel: 2 ** 40, shape: [2 ** 40] }))), /entry holds 48/);
    // the tensor exceeds its storage
    expectTorchError(() => readTorchCheckpoint(ok(t({ shape: [4, 4] }))), /exceeds its storage/);
    expectTorchError(() => readTorchCheckpoint(ok(t({ offset: 1 }))), /exceeds its storage/);
    // negative, huge or non-integer sizes
    expectTorchError(() => readTorchCheckpoint(ok(t({ shape: [-1, 4] }))), /integer ≥ 0/);
    expectTorchError(() => readTorchCheckpoint(ok(t({ shape: [2 ** 40, 2 ** 40], stride: [2 ** 40, 1] }))), /too large/);
    expectTorchError(() => readTorchCheckpoint(ok(t({ offset: -1 }))), /storage offset/);
    // a storage with no entry, a key that tries to escape
    expectTorchError(() => readTorchCheckpoint(ok(t({ key: '7' }))), /no archive entry data\/7/);
    expectTorchError(() => readTorchCheckpoint(ok(t({ key: '../data.pkl' }))), /invalid storage key/);
    // one key declared with two different types
    const twice = stateDictPickle([
      ['a', { key: '0', numel: 12, shape: [12] }],
      ['b', { key: '0', numel: 24, shape: [24], storageType: 'HalfStorage' }],
    ]);
    expectTorchError(() => readTorchCheckpoint(ok(twice)), /declared twice/);
  });

  it('many distinct views of one storage cannot make the reader allocate more than the file holds', () => {
    const n = 4096;
    const views: [string, TensorSpec][] = Array.from({ length: 400 }, (_, i) => [`v${i}`, { key: '0', numel: n, shape: [n - i], offset: i }]);
    const big = checkpoint(stateDictPickle(views), { 0: new Uint8Array(n * 4) });
    expectTorchError(() => readTorchCheckpoint(big), /more bytes than the file holds/);
  });

  it('malformed pickles: underflow, unbalanced MARK, missing STOP, bad memo, bad UTF-8, non-dict root, non-string keys', () => {
    const p = () => new Pickle().op(0x80, 2);
    expectTorchError(() => readTorchCheckpoint(ok(p().op(0x85).stop())), /stack underflow/);
    expectTorchError(() => readTorchCheckpoint(ok(p().emptyDict().mark().stop())), /open MARK/);
    expectTorchError(() => readTorchCheckpoint(ok(p().emptyDict().tuple().stop())), /no MARK/);
    expectTorchError(() => readTorchCheckpoint(ok(Uint8Array.from([0x80, 2, 0x7d]))), /truncated pickle/);
    expectTorchError(() => readTorchCheckpoint(ok(p().get(3).stop())), /memo entry 3/);
    expectTorchError(() => readTorchCheckpoint(ok(p().op(0x58, 2, 0, 0, 0, 0xc3, 0x28).stop())), /UTF-8/);
    expectTorchError(() => readTorchCheckpoint(ok(p().op(0x58, 0xff, 0xff, 0xff, 0x7f).stop())), /truncated/);
    expectTorchError(() => readTorchCheckpoint(ok(p().emptyTuple().stop())), /holds tuple, not a state dict/);
    expectTorchError(() => readTorchCheckpoint(ok(p().emptyDict().int(1).int(2).op(0x73).stop())), /key must be a string/);
    expectTorchError(() => readTorchCheckpoint(ok(p().emptyDict().emptyDict().stop())), /STOP with 2 value/);
    expectTorchError(() => readTorchCheckpoint(ok(new Pickle().op(0x80, 9).stop())), /protocol 9/);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Fuzz: seeded random mutations of a real torch.save file. Every outcome must be a parse or a TorchCheckpointError.

type Mutation = (b: Uint8Array, rng: SeededRandom) => Uint8Array;

const int = (rng: SeededRandom, n: number) => Math.floor(rng.next() * n);
const pick = <T>(rng: SeededRandom, xs: readonly T[]): T => xs[int(rng, xs.length)];

/** Bytes that matter to the pickle machine: opcodes (allowed and refused), small ints, newline, high bytes. */
const PICKLE_BYTES = [
  0x80, 0x95, 0x2e, 0x28, 0x7d, 0x29, 0x5d, 0x74, 0x85, 0x86, 0x87, 0x58, 0x8c, 0x71, 0x72, 0x94, 0x68, 0x6a, 0x63, 0x93, 0x4a, 0x4b, 0x4d, 0x8a, 0x4e, 0x88, 0x89, 0x47, 0x52,
  0x62, 0x51, 0x73, 0x75, 0x61, 0x65, 0x69, 0x6f, 0x81, 0x00, 0x01, 0x02, 0x04, 0x08, 0x0a, 0x20, 0x7f, 0xff,
];
const INTERESTING_U32 = [0, 1, 2, 4, 8, 0xff, 0xffff, 0xfffe, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

function u32At(b: Uint8Array, at: number, value: number) {
  if (at >= 0 && at + 4 <= b.length) new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, value >>> 0, true);
}

/** Mutates data.pkl and re-zips (the archive stays consistent), so the pickle machine's paths are exercised. */
function mutatePickle(b: Uint8Array, rng: SeededRandom): Uint8Array {
  let entries: Entry[];
  try {
    entries = readZipEntries(b);
  } catch {
    return b; // an earlier mutation broke the archive: nothing to re-zip
  }
  const pkl = entries.find((e) => e.name.endsWith('/data.pkl'));
  if (!pkl) return b;
  let d = pkl.data;
  const at = int(rng, d.length);
  switch (int(rng, 6)) {
    case 0: // an opcode or argument byte overwritten
      d = d.slice();
      d[at] = pick(rng, PICKLE_BYTES);
      break;
    case 1: {
      // a range deleted
      const n = 1 + int(rng, 16);
      d = Uint8Array.from([...d.subarray(0, at), ...d.subarray(at + n)]);
      break;
    }
    case 2: {
      // a range duplicated in place (repeats items, memo puts, marks)
      const n = 1 + int(rng, 64);
      d = Uint8Array.from([...d.subarray(0, at + n), ...d.subarray(at, at + n), ...d.subarray(at + n)]);
      break;
    }
    case 3: // a byte inserted
      d = Uint8Array.from([...d.subarray(0, at), pick(rng, PICKLE_BYTES), ...d.subarray(at)]);
      break;
    case 4: {
      // a BININT1/BININT2 argument (sizes, strides, offsets, numel) changed
      const ops = [...d.keys()].filter((i) => d[i] === 0x4b || d[i] === 0x4d);
      d = d.slice();
      if (ops.length) {
        const i = pick(rng, ops);
        if (i + 1 < d.length) d[i + 1] = pick(rng, [0, 1, 2, 3, 4, 31, 32, 33, 64, 127, 128, 255]);
      }
      break;
    }
    default: {
      // a storage key string swapped for another (shared storages, missing keys)
      d = d.slice();
      const keys = [...d.keys()].filter((i) => d[i] === 0x58 && d[i + 1] <= 2 && d[i + 2] === 0 && d[i + 5] >= 0x30 && d[i + 5] <= 0x39);
      if (keys.length) d[pick(rng, keys) + 5] = 0x30 + int(rng, 10);
    }
  }
  return writeZip(entries.map((e) => (e === pkl ? { name: e.name, data: d } : e)));
}

const MUTATIONS: Record<string, Mutation> = {
  bitFlipAnywhere: (b, rng) => {
    if (b.length) b[int(rng, b.length)] ^= 1 << int(rng, 8);
    return b;
  },
  pickleBytes: (b, rng) => {
    // the data.pkl entry of the fixture starts at byte 64 and holds 3256 bytes
    const i = 64 + int(rng, 3256);
    if (i < b.length) b[i] = pick(rng, PICKLE_BYTES);
    return b;
  },
  centralDirectory: (b, rng) => {
    // a size, offset, method, name or extra length of one central record, or a field of the end records
    if (b.length < 22) return b;
    const cd = new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(b.length - 22 + 16, true);
    const records = [];
    for (let at = cd; at + 46 <= b.length && records.length < 64; ) {
      if (new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true) !== 0x02014b50) break;
      records.push(at);
      const v = new DataView(b.buffer, b.byteOffset + at, 46);
      at += 46 + v.getUint16(28, true) + v.getUint16(30, true) + v.getUint16(32, true);
    }
    if (records.length === 0 || rng.next() < 0.25) {
      const field = pick(rng, [8, 10, 12, 16, 20]);
      const eocd = b.length - 22;
      if (field === 20 || field === 8 || field === 10) {
        new DataView(b.buffer, b.byteOffset, b.byteLength).setUint16(eocd + field, pick(rng, [0, 1, 0xffff, 26, 27, 25]), true);
      } else u32At(b, eocd + field, pick(rng, INTERESTING_U32));
      return b;
    }
    const rec = pick(rng, records);
    const field = pick(rng, [10, 20, 24, 28, 30, 32, 42]);
    if (field === 10 || (field >= 28 && field <= 32)) new DataView(b.buffer, b.byteOffset, b.byteLength).setUint16(rec + field, pick(rng, [0, 1, 8, 12, 0xffff]), true);
    else
      u32At(
        b,
        rec + field,
        rng.next() < 0.5 ? pick(rng, INTERESTING_U32) : new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(rec + field, true) + pick(rng, [-64, -4, -1, 1, 4, 64]),
      );
    return b;
  },
  truncate: (b, rng) => b.slice(0, int(rng, b.length + 1)),
  extend: (b, rng) => {
    const out = new Uint8Array(b.length + 1 + int(rng, 64));
    out.set(b);
    for (let i = b.length; i < out.length; i++) out[i] = int(rng, 256);
    return out;
  },
  rezippedPickle: (b, rng) => mutatePickle(b, rng),
};

describe('torch checkpoint fuzz (seeded mutations of a real torch.save file)', () => {
  it('every mutation either parses or throws TorchCheckpointError — never another error, never a hang', () => {
    const original = fixture('peft-lora-adapter_model.bin');
    expect(readTorchCheckpoint(original).tensors.size).toBe(24);
    expect(new DataView(original.buffer, original.byteOffset).getUint32(original.length - 22 + 16, true)).toBeGreaterThan(3256);

    const rng = new SeededRandom(20240612);
    const names = Object.keys(MUTATIONS);
    const ITERATIONS = 2400;
    const outcomes: Record<string, { ok: number; error: number }> = Object.fromEntries(names.map((n) => [n, { ok: 0, error: 0 }]));
    const failures: string[] = [];
    let slowest = 0;
    const t0 = performance.now();
    for (let iter = 0; iter < ITERATIONS; iter++) {
      const first = names[iter % names.length];
      const applied = [first];
      let bytes = MUTATIONS[first](original.slice(), rng);
      const more = int(rng, 3);
      for (let k = 0; k < more; k++) {
        const m = pick(rng, names);
        applied.push(m);
        bytes = MUTATIONS[m](bytes, rng);
      }
      const start = performance.now();
      try {
        const { tensors } = readTorchCheckpoint(bytes, 'fuzz.bin');
        for (const [name, t] of tensors) {
          const count = t.shape.reduce((a, b) => a * b, 1);
          if (t.data.length !== count) failures.push(`#${iter} ${applied}: '${name}' has ${t.data.length} values for shape [${t.shape}]`);
        }
        outcomes[first].ok++;
      } catch (e) {
        if (!(e instanceof TorchCheckpointError)) failures.push(`#${iter} ${applied}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
        else outcomes[first].error++;
      }
      slowest = Math.max(slowest, performance.now() - start);
    }
    if (process.env.FUZZ_STATS) console.log(JSON.stringify(outcomes), slowest);
    expect(failures).toEqual([]);
    const total = names.reduce((s, n) => s + outcomes[n].ok + outcomes[n].error, 0);
    expect(total).toBe(ITERATIONS);
    for (const n of names) expect(outcomes[n].ok + outcomes[n].error).toBeGreaterThan(300);
    // Both outcomes happen, and the targeted mutations reach the refusals.
    expect(names.reduce((s, n) => s + outcomes[n].error, 0)).toBeGreaterThan(ITERATIONS / 4);
    expect(names.reduce((s, n) => s + outcomes[n].ok, 0)).toBeGreaterThan(50);
    for (const n of ['pickleBytes', 'centralDirectory', 'rezippedPickle', 'truncate']) expect(outcomes[n].error, n).toBeGreaterThan(50);
    // No single parse may take long (a hang would show up here or as the test timeout).
    expect(slowest).toBeLessThan(1000);
    expect(performance.now() - t0).toBeLessThan(30_000);
  }, 60_000);
});
