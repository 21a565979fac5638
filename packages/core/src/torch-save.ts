import { TorchCheckpointError } from './errors.js';
import { crc32 } from './crc32.js';

/**
 * A writer for PyTorch's `torch.save` zip format, byte for byte what `torch.save(state_dict, "<archive>.bin")`
 * writes for a dict of contiguous float32 CPU tensors (the layout of PEFT's `adapter_model.bin` and `adapters`'
 * `pytorch_adapter.bin`), checked against files torch wrote:
 *
 * - zip entries, in this order: `<archive>/data.pkl`, `<archive>/data/<key>` (keys sorted as strings, as torch
 *   sorts them), `<archive>/version` ("3\n"). Every entry is stored (uncompressed), with zeroed times, a data
 *   descriptor after its bytes (flag bit 3) and a local "FB" extra field padding its data to a 64-byte boundary;
 *   the end of the archive carries zip64 end records, as torch's miniz writer always adds.
 * - data.pkl: a protocol-2 pickle (as CPython's C pickler writes it: BINPUT memo after every string, tuple and
 *   global; SETITEMS batches of 1000) of a plain dict name → `torch._utils._rebuild_tensor_v2(persistent
 *   ('storage', torch.FloatStorage, '<key>', 'cpu', numel), 0, size, stride, False, OrderedDict())`.
 *
 * That is the layout of the reference files in this repository (test fixtures). Current torch releases write
 * more records — `.format_version`, `.storage_alignment`, `byteorder` after data.pkl, storages in numeric key
 * order, and `.data/serialization_id` (a hash of the record names and CRCs) at the end — which torch.load does
 * not need: without `byteorder` it assumes little-endian, and it reads storages by key, in any order.
 * Tensors sharing one data array (tied weights, as readTorchCheckpoint returns them) are written once and
 * referenced again, as torch writes one tensor saved under several names.
 */

/** A tensor to write: float32, row-major. `dtype`, when given, must say so. */
export interface TorchSaveTensor {
  shape: readonly number[];
  data: Float32Array;
  dtype?: string;
}

const REBUILD_TENSOR = ['torch._utils', '_rebuild_tensor_v2'] as const;
const FLOAT_STORAGE = ['torch', 'FloatStorage'] as const;
const ORDERED_DICT = ['collections', 'OrderedDict'] as const;
/** CPython's pickler writes dict items in batches of this many (pickle.py's _BATCHSIZE). */
const PICKLE_BATCH = 1000;
/** torch aligns every record's data to this many bytes (caffe2's serialize kFieldAlignment). */
const FIELD_ALIGNMENT = 64;
const MAX_U32 = 0xffffffff;

// ------------------------------------------------------------------------------------------------ pickle

class PickleWriter {
  private readonly out: number[] = [];
  /** What the pickler has memoized (strings and globals that torch re-uses), by an identity key. */
  private readonly memo = new Map<unknown, number>();
  private memoSize = 0;
  private readonly utf8 = new TextEncoder();

  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
  op(...codes: number[]) {
    for (const c of codes) this.out.push(c);
  }
  private u32(v: number) {
    this.out.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  /** BINPUT / LONG_BINPUT of the value just written; `identity` lets a later `recall` find it. */
  put(identity?: unknown) {
    const index = this.memoSize++;
    if (identity !== undefined) this.memo.set(identity, index);
    if (index < 256) this.op(0x71, index);
    else {
      this.op(0x72);
      this.u32(index);
    }
  }
  /** BINGET / LONG_BINGET of a memoized value; false when it was never memoized. */
  recall(identity: unknown): boolean {
    const index = this.memo.get(identity);
    if (index === undefined) return false;
    if (index < 256) this.op(0x68, index);
    else {
      this.op(0x6a);
      this.u32(index);
    }
    return true;
  }
  /** BINUNICODE (protocol 2 has no short form), memoized; `identity` for strings Python would re-use (interned). */
  string(s: string, identity?: unknown) {
    if (identity !== undefined && this.recall(identity)) return;
    const bytes = this.utf8.encode(s);
    this.op(0x58);
    this.u32(bytes.length);
    for (const b of bytes) this.out.push(b);
    this.put(identity);
  }
  global([module, name]: readonly [string, string]) {
    const identity = `global:${module}.${name}`;
    if (this.recall(identity)) return;
    this.op(0x63, ...this.utf8.encode(`${module}\n${name}\n`));
    this.put(identity);
  }
  /** An int as CPython's save_long writes it at protocol 2: BININT1, BININT2, BININT, else LONG1. */
  int(v: number) {
    if (v >= 0 && v <= 0xff) this.op(0x4b, v);
    else if (v >= 0 && v <= 0xffff) this.op(0x4d, v & 0xff, v >>> 8);
    else if (v >= -(2 ** 31) && v < 2 ** 31) {
      this.op(0x4a);
      this.u32(v >>> 0);
    } else {
      // Minimal little-endian two's complement, as int.to_bytes in encode_long.
      let big = BigInt(v);
      const bytes: number[] = [];
      do {
        bytes.push(Number(big & 0xffn));
        big >>= 8n;
      } while (!(big === 0n && (bytes[bytes.length - 1] & 0x80) === 0) && !(big === -1n && (bytes[bytes.length - 1] & 0x80) !== 0));
      this.op(0x8a, bytes.length, ...bytes);
    }
  }
  /** A tuple of ints: EMPTY_TUPLE (never memoized), TUPLE1-3, or MARK … TUPLE; memoized. */
  intTuple(values: readonly number[]) {
    if (values.length === 0) {
      this.op(0x29);
      return;
    }
    if (values.length > 3) this.op(0x28);
    for (const v of values) this.int(v);
    this.op(values.length > 3 ? 0x74 : 0x84 + values.length);
    this.put();
  }
}

/** The contiguous row-major strides of a shape, as tensor.stride() gives them. */
function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let step = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = step;
    step *= shape[i];
  }
  return strides;
}

/** data.pkl for the state dict; returns it and the storages in key order ('0', '1', … by first use). */
function statePickle(entries: [string, TorchSaveTensor][]): { pickle: Uint8Array; storages: Float32Array[] } {
  const p = new PickleWriter();
  const storages: Float32Array[] = [];
  p.op(0x80, 2, 0x7d); // PROTO 2, EMPTY_DICT
  p.put();
  const writeItem = ([name, t]: [string, TorchSaveTensor]) => {
    p.string(name);
    // One tensor under several names: torch memoizes the rebuilt tensor and recalls it.
    if (p.recall(t.data)) return;
    p.global(REBUILD_TENSOR);
    p.op(0x28, 0x28); // MARK (arguments), MARK (persistent id)
    p.string('storage', 'storage');
    p.global(FLOAT_STORAGE);
    p.string(String(storages.length));
    storages.push(t.data);
    p.string('cpu', 'cpu');
    p.int(t.data.length);
    p.op(0x74); // TUPLE
    p.put();
    p.op(0x51); // BINPERSID
    p.int(0); // storage offset
    p.intTuple(t.shape);
    p.intTuple(contiguousStrides(t.shape));
    p.op(0x89); // requires_grad = False
    p.global(ORDERED_DICT);
    p.op(0x29, 0x52); // () REDUCE: backward hooks, an empty OrderedDict
    p.put();
    p.op(0x74); // TUPLE of the six arguments
    p.put();
    p.op(0x52); // REDUCE
    p.put(t.data);
  };
  if (entries.length === 1) {
    writeItem(entries[0]);
    p.op(0x73); // SETITEM: CPython's special case for a one-item dict
  } else if (entries.length > 1) {
    // CPython writes MARK … SETITEMS per batch; a last full batch is followed by an empty one.
    for (let i = 0; ; i += PICKLE_BATCH) {
      p.op(0x28);
      for (const e of entries.slice(i, i + PICKLE_BATCH)) writeItem(e);
      p.op(0x75);
      if (i + PICKLE_BATCH > entries.length) break;
    }
  }
  p.op(0x2e); // STOP
  return { pickle: p.bytes(), storages };
}

// ------------------------------------------------------------------------------------------------ zip

/** The archive torch's PyTorchStreamWriter writes for these records (all small enough for 32-bit offsets). */
function writeTorchZip(records: [string, Uint8Array][]): Uint8Array {
  const enc = new TextEncoder();
  const layout = records.map(([name, data]) => ({ name: enc.encode(name), data, crc: crc32(data), offset: 0, pad: 0 }));
  let size = 0;
  for (const r of layout) {
    r.offset = size;
    const start = size + 30 + r.name.length + 4;
    r.pad = (FIELD_ALIGNMENT - (start % FIELD_ALIGNMENT)) % FIELD_ALIGNMENT;
    size = start + r.pad + r.data.length + 16;
  }
  const cdOffset = size;
  const cdSize = layout.reduce((s, r) => s + 46 + r.name.length, 0);
  size += cdSize;
  if (size + 56 + 20 + 22 > MAX_U32)
    throw new TorchCheckpointError(`the checkpoint would be ${size} bytes; writing torch.save archives over 4 GiB (zip64 entries) is not supported`);
  const out = new Uint8Array(size + 56 + 20 + 22);
  const v = new DataView(out.buffer);
  for (const r of layout) {
    // Local header: version 0, flags 0x0808 (UTF-8 names, sizes in the data descriptor), stored, zero time/CRC/sizes.
    v.setUint32(r.offset, 0x04034b50, true);
    v.setUint16(r.offset + 6, 0x0808, true);
    v.setUint16(r.offset + 26, r.name.length, true);
    v.setUint16(r.offset + 28, 4 + r.pad, true);
    out.set(r.name, r.offset + 30);
    let at = r.offset + 30 + r.name.length;
    out[at] = 0x46; // 'F'
    out[at + 1] = 0x42; // 'B'
    v.setUint16(at + 2, r.pad, true);
    out.fill(0x5a, at + 4, at + 4 + r.pad); // 'Z'
    at += 4 + r.pad;
    out.set(r.data, at);
    at += r.data.length;
    v.setUint32(at, 0x08074b50, true);
    v.setUint32(at + 4, r.crc, true);
    v.setUint32(at + 8, r.data.length, true);
    v.setUint32(at + 12, r.data.length, true);
  }
  let at = cdOffset;
  for (const r of layout) {
    v.setUint32(at, 0x02014b50, true);
    v.setUint16(at + 8, 0x0808, true);
    v.setUint32(at + 16, r.crc, true);
    v.setUint32(at + 20, r.data.length, true);
    v.setUint32(at + 24, r.data.length, true);
    v.setUint16(at + 28, r.name.length, true);
    v.setUint32(at + 42, r.offset, true);
    out.set(r.name, at + 46);
    at += 46 + r.name.length;
  }
  // zip64 end of central directory record (version made by 3.0/UNIX, needed 4.5) and its locator.
  const eocd64 = at;
  v.setUint32(at, 0x06064b50, true);
  v.setBigUint64(at + 4, 44n, true);
  v.setUint16(at + 12, 0x031e, true);
  v.setUint16(at + 14, 45, true);
  v.setBigUint64(at + 24, BigInt(layout.length), true);
  v.setBigUint64(at + 32, BigInt(layout.length), true);
  v.setBigUint64(at + 40, BigInt(cdSize), true);
  v.setBigUint64(at + 48, BigInt(cdOffset), true);
  at += 56;
  v.setUint32(at, 0x07064b50, true);
  v.setBigUint64(at + 8, BigInt(eocd64), true);
  v.setUint32(at + 16, 1, true);
  at += 20;
  v.setUint32(at, 0x06054b50, true);
  v.setUint16(at + 8, layout.length, true);
  v.setUint16(at + 10, layout.length, true);
  v.setUint32(at + 12, cdSize, true);
  v.setUint32(at + 16, cdOffset, true);
  return out;
}

// ------------------------------------------------------------------------------------------------ writer

/**
 * Writes float32 tensors as `torch.save(state_dict, "<archiveName>.bin")` does (see above): names in the given
 * order, each tensor its own storage, except tensors that share one data array (written once, as torch writes
 * a tied tensor). `archiveName` is the file name without `.bin` (torch names the archive after the file):
 * `adapter_model` for PEFT, `pytorch_adapter` for `adapters`. Throws TorchCheckpointError for a tensor that is not
 * float32, whose shape does not match its data, or that holds a NaN or infinity.
 */
export function writeTorchCheckpoint(tensors: Map<string, TorchSaveTensor> | Record<string, TorchSaveTensor>, archiveName: string): Uint8Array {
  if (typeof archiveName !== 'string' || !archiveName || /[/\\]/.test(archiveName) || archiveName === '.' || archiveName === '..')
    throw new TorchCheckpointError(`archive name must be a file name without directories, got ${JSON.stringify(archiveName)}`);
  const entries = [...(tensors instanceof Map ? tensors : new Map(Object.entries(tensors)))];
  const shapes = new Map<Float32Array, readonly number[]>();
  for (const [name, t] of entries) {
    if (!(t.data instanceof Float32Array) || (t.dtype !== undefined && t.dtype !== 'F32'))
      throw new TorchCheckpointError(`tensor '${name}' is ${t.dtype ?? t.data?.constructor?.name}; only float32 (F32) tensors are written`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || t.shape.reduce((a, b) => a * b, 1) !== t.data.length)
      throw new TorchCheckpointError(`tensor '${name}' has shape [${t.shape}] but ${t.data.length} values`);
    const seen = shapes.get(t.data);
    if (seen && seen.join() !== t.shape.join())
      throw new TorchCheckpointError(`tensor '${name}' shares its data with another tensor of shape [${seen}] but has shape [${t.shape}]`);
    shapes.set(t.data, t.shape);
    const bad = t.data.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new TorchCheckpointError(`tensor '${name}' holds ${t.data[bad]} at index ${bad}; only finite values are written`);
  }
  const { pickle, storages } = statePickle(entries);
  const keys = storages.map((_, i) => String(i)).sort();
  const records: [string, Uint8Array][] = [[`${archiveName}/data.pkl`, pickle]];
  for (const key of keys) {
    const data = storages[Number(key)];
    records.push([`${archiveName}/data/${key}`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength)]);
  }
  records.push([`${archiveName}/version`, new TextEncoder().encode('3\n')]);
  return writeTorchZip(records);
}
