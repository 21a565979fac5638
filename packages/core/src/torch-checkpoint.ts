import { TorchCheckpointError } from './errors.js';
import { decodeTensorData, type SafeTensor } from './safetensors.js';

/**
 * A safe reader for PyTorch's `torch.save` zip format (pytorch_model.bin, adapter_model.bin): a zip archive of
 * stored (uncompressed) entries `<prefix>/data.pkl` — a pickle of the state dict — and `<prefix>/data/<key>`,
 * one raw little-endian storage per key.
 *
 * Nothing in the file is ever executed. The pickle is interpreted by a small stack machine that knows only the
 * opcodes torch.save emits for a dict of tensors, and only the globals that rebuild tensors: any other opcode
 * or global is refused with a TorchCheckpointError naming it. Every size is checked against the archive before
 * anything is allocated.
 */

// ------------------------------------------------------------------------------------------------ zip

interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  size: number;
  compressedSize: number;
  localOffset: number;
}

const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;

class Reader {
  readonly view: DataView;
  constructor(
    readonly bytes: Uint8Array,
    readonly file: string | undefined,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  fail(message: string): never {
    throw new TorchCheckpointError(message, this.file);
  }
  need(at: number, n: number, what: string) {
    if (at < 0 || n < 0 || at + n > this.bytes.byteLength) this.fail(`${what} at byte ${at} (${n} bytes) runs past the end of the file (${this.bytes.byteLength} bytes)`);
  }
  u16(at: number) {
    return this.view.getUint16(at, true);
  }
  u32(at: number) {
    return this.view.getUint32(at, true);
  }
  u64(at: number, what: string): number {
    const v = this.view.getUint32(at + 4, true) * 2 ** 32 + this.view.getUint32(at, true);
    if (!Number.isSafeInteger(v)) this.fail(`${what} ${v} is too large`);
    return v;
  }
}

function findEndOfCentralDirectory(r: Reader): number {
  const n = r.bytes.byteLength;
  // The record is 22 bytes plus a comment of at most 65535 bytes, at the very end of the archive.
  for (let at = n - 22; at >= Math.max(0, n - 22 - 0xffff); at--) {
    if (r.u32(at) === SIG_EOCD && at + 22 + r.u16(at + 20) === n) return at;
  }
  return r.fail('not a zip archive: no end-of-central-directory record (truncated or not a torch.save file)');
}

/** Reads the central directory: entry names → where their bytes are. */
function readZipDirectory(r: Reader): Map<string, ZipEntry> {
  const eocd = findEndOfCentralDirectory(r);
  if (r.u16(eocd + 4) !== 0 || r.u16(eocd + 6) !== 0) r.fail('multi-volume zip archives are not supported');
  let count = r.u16(eocd + 10);
  let cdSize = r.u32(eocd + 12);
  let cdOffset = r.u32(eocd + 16);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    // zip64: the locator sits just before the classic record and points at the zip64 record.
    const loc = eocd - 20;
    if (loc < 0 || r.u32(loc) !== SIG_EOCD64_LOCATOR) r.fail('zip64 archive without a zip64 end-of-central-directory locator');
    const rec = r.u64(loc + 8, 'zip64 record offset');
    r.need(rec, 56, 'zip64 end-of-central-directory record');
    if (r.u32(rec) !== SIG_EOCD64) r.fail(`no zip64 end-of-central-directory record at byte ${rec}`);
    count = r.u64(rec + 32, 'zip64 entry count');
    cdSize = r.u64(rec + 40, 'zip64 central directory size');
    cdOffset = r.u64(rec + 48, 'zip64 central directory offset');
  }
  if (cdOffset + cdSize > eocd) r.fail(`central directory [${cdOffset}, ${cdOffset + cdSize}) overlaps the end record at byte ${eocd}`);
  // Each central record takes at least 46 bytes: a count the directory cannot hold is a lie.
  if (count * 46 > cdSize) r.fail(`central directory of ${cdSize} bytes cannot hold ${count} entries`);
  const entries = new Map<string, ZipEntry>();
  const names = new TextDecoder('utf-8');
  let at = cdOffset;
  const end = cdOffset + cdSize;
  for (let i = 0; i < count; i++) {
    if (at + 46 > end) r.fail(`central directory entry ${i} runs past the directory's end`);
    if (r.u32(at) !== SIG_CENTRAL) r.fail(`central directory entry ${i} has a bad signature at byte ${at}`);
    const nameLen = r.u16(at + 28);
    const extraLen = r.u16(at + 30);
    const commentLen = r.u16(at + 32);
    const next = at + 46 + nameLen + extraLen + commentLen;
    if (next > end) r.fail(`central directory entry ${i} runs past the directory's end`);
    const name = names.decode(r.bytes.subarray(at + 46, at + 46 + nameLen));
    const entry: ZipEntry = {
      name,
      flags: r.u16(at + 8),
      method: r.u16(at + 10),
      compressedSize: r.u32(at + 20),
      size: r.u32(at + 24),
      localOffset: r.u32(at + 42),
    };
    readZip64Extra(r, entry, at + 46 + nameLen, extraLen);
    if (entries.has(name)) r.fail(`the archive lists '${name}' twice`);
    entries.set(name, entry);
    at = next;
  }
  return entries;
}

/** Replaces saturated 32-bit sizes/offsets by the zip64 extended-information extra field's values. */
function readZip64Extra(r: Reader, entry: ZipEntry, at: number, len: number) {
  const fields = (['size', 'compressedSize', 'localOffset'] as const).filter((k) => entry[k] === 0xffffffff);
  if (fields.length === 0) return;
  const end = at + len;
  while (at + 4 <= end) {
    const id = r.u16(at);
    const size = r.u16(at + 2);
    if (at + 4 + size > end) break;
    if (id === 0x0001) {
      if (size < fields.length * 8) break;
      fields.forEach((k, i) => {
        entry[k] = r.u64(at + 4 + i * 8, `zip64 ${k} of '${entry.name}'`);
      });
      return;
    }
    at += 4 + size;
  }
  r.fail(`entry '${entry.name}' needs a zip64 extra field but has none`);
}

/** The bytes of a stored entry (torch.save never compresses); compressed or encrypted entries are refused. */
function entryBytes(r: Reader, e: ZipEntry): { start: number; size: number } {
  if (e.flags & 1) r.fail(`entry '${e.name}' is encrypted`);
  if (e.method !== 0)
    r.fail(
      `entry '${e.name}' is compressed (zip method ${e.method}); torch.save writes stored entries only — re-save the checkpoint with torch.save, or convert it to safetensors`,
    );
  if (e.compressedSize !== e.size) r.fail(`stored entry '${e.name}' has compressed size ${e.compressedSize} ≠ size ${e.size}`);
  r.need(e.localOffset, 30, `local header of '${e.name}'`);
  if (r.u32(e.localOffset) !== SIG_LOCAL) r.fail(`entry '${e.name}' has no local header at byte ${e.localOffset}`);
  const start = e.localOffset + 30 + r.u16(e.localOffset + 26) + r.u16(e.localOffset + 28);
  r.need(start, e.size, `data of '${e.name}'`);
  return { start, size: e.size };
}

// ------------------------------------------------------------------------------------------------ pickle values

/** What the pickle machine can build: plain data, and the few torch objects a state dict holds. */
type Value = null | boolean | number | string | Tuple | List | Dict | Global | StorageRef | TensorRef;

class Tuple {
  constructor(readonly items: Value[]) {}
}
class List {
  readonly items: Value[] = [];
}
class Dict {
  readonly map = new Map<string, Value>();
}
/** A resolved global from the allow-list (never a callable: REDUCE interprets it by name). */
class Global {
  constructor(
    readonly qualified: string,
    readonly storage?: StorageType,
  ) {}
}
/** A storage named by a persistent id: the archive entry `<prefix>/data/<key>`. */
class StorageRef {
  constructor(
    readonly key: string,
    readonly type: StorageType,
    readonly numel: number,
    readonly start: number,
  ) {}
}
class TensorRef {
  decoded?: SafeTensor;
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
  ) {}
}
interface StorageType {
  dtype: string;
  bytes: number;
}

/** torch's storage classes (the persistent ids' storage_type) → safetensors dtype names. */
const STORAGE_TYPES: Record<string, StorageType> = {
  'torch.FloatStorage': { dtype: 'F32', bytes: 4 },
  'torch.HalfStorage': { dtype: 'F16', bytes: 2 },
  'torch.BFloat16Storage': { dtype: 'BF16', bytes: 2 },
  'torch.DoubleStorage': { dtype: 'F64', bytes: 8 },
  'torch.LongStorage': { dtype: 'I64', bytes: 8 },
  'torch.IntStorage': { dtype: 'I32', bytes: 4 },
  'torch.ShortStorage': { dtype: 'I16', bytes: 2 },
  'torch.CharStorage': { dtype: 'I8', bytes: 1 },
  'torch.ByteStorage': { dtype: 'U8', bytes: 1 },
  'torch.BoolStorage': { dtype: 'BOOL', bytes: 1 },
};
const REBUILD_TENSOR = 'torch._utils._rebuild_tensor_v2';
const REBUILD_PARAMETER = 'torch._utils._rebuild_parameter';
const ORDERED_DICT = 'collections.OrderedDict';
const CALLABLE_GLOBALS = new Set([REBUILD_TENSOR, REBUILD_PARAMETER, ORDERED_DICT]);

function typeName(v: Value | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v !== 'object') return typeof v;
  if (v instanceof Global) return `global ${v.qualified}`;
  return v.constructor.name.replace(/Ref$/, '').toLowerCase();
}

// ------------------------------------------------------------------------------------------------ pickle machine

/*
 * The opcodes interpreted (what torch.save's pickle protocol 2 emits for a state dict, plus the protocol-4
 * equivalents and a few inert data opcodes): PROTO, FRAME, STOP, MARK, EMPTY_DICT, EMPTY_TUPLE, EMPTY_LIST,
 * TUPLE, TUPLE1-3, BINUNICODE, SHORT_BINUNICODE, BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET, GLOBAL,
 * STACK_GLOBAL, BININT, BININT1, BININT2, LONG1, NONE, NEWTRUE, NEWFALSE, BINFLOAT, REDUCE, BUILD, BINPERSID,
 * SETITEM, SETITEMS, APPEND, APPENDS. Every other opcode is refused.
 */
/** Names of well-known opcodes the machine refuses, so the error says which one it met. */
const REFUSED_OPCODE_NAMES = new Map<number, string>([
  [0x69, 'INST'],
  [0x6f, 'OBJ'],
  [0x81, 'NEWOBJ'],
  [0x92, 'NEWOBJ_EX'],
  [0x50, 'PERSID'],
  [0x82, 'EXT1'],
  [0x83, 'EXT2'],
  [0x84, 'EXT4'],
  [0x56, 'UNICODE'],
  [0x53, 'STRING'],
  [0x54, 'BINSTRING'],
  [0x55, 'SHORT_BINSTRING'],
  [0x42, 'BINBYTES'],
  [0x43, 'SHORT_BINBYTES'],
  [0x8e, 'BINBYTES8'],
  [0x8d, 'BINUNICODE8'],
  [0x96, 'BYTEARRAY8'],
  [0x97, 'NEXT_BUFFER'],
  [0x98, 'READONLY_BUFFER'],
  [0x49, 'INT'],
  [0x4c, 'LONG'],
  [0x8b, 'LONG4'],
  [0x46, 'FLOAT'],
  [0x70, 'PUT'],
  [0x67, 'GET'],
  [0x6c, 'LIST'],
  [0x64, 'DICT'],
  [0x30, 'POP'],
  [0x31, 'POP_MARK'],
  [0x32, 'DUP'],
  [0x8f, 'EMPTY_SET'],
  [0x90, 'ADDITEMS'],
  [0x91, 'FROZENSET'],
]);

class PickleMachine {
  private pos: number;
  private readonly end: number;
  /** The values above the latest MARK; `marks` keeps the stacks below each open MARK (as CPython's metastack). */
  private stack: Value[] = [];
  private readonly marks: Value[][] = [];
  private readonly memo = new Map<number, Value>();
  private readonly storages = new Map<string, StorageRef>();
  private readonly utf8 = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private readonly r: Reader,
    start: number,
    size: number,
    private readonly storageEntry: (key: string) => { start: number; size: number } | undefined,
  ) {
    this.pos = start;
    this.end = start + size;
  }

  private fail(message: string): never {
    return this.r.fail(`data.pkl: ${message}`);
  }
  private take(n: number): number {
    if (this.pos + n > this.end) this.fail(`truncated pickle (needs ${n} more byte(s) at offset ${this.pos})`);
    const at = this.pos;
    this.pos += n;
    return at;
  }
  private pop(): Value {
    const v = this.stack.pop();
    if (v === undefined) this.fail('stack underflow');
    return v;
  }
  private top(): Value {
    if (this.stack.length === 0) this.fail(`stack underflow at ${this.pos}`);
    return this.stack[this.stack.length - 1];
  }
  /** Pops everything above the latest MARK (and the mark). */
  private popMark(): Value[] {
    const items = this.stack;
    const outer = this.marks.pop();
    if (!outer) this.fail('no MARK to pop to');
    this.stack = outer;
    return items;
  }
  private string(at: number, n: number): string {
    const at0 = at;
    try {
      return this.utf8.decode(this.r.bytes.subarray(at0, at0 + n));
    } catch {
      return this.fail(`invalid UTF-8 string at offset ${at0}`);
    }
  }
  private line(): string {
    const bytes = this.r.bytes;
    let i = this.pos;
    while (i < this.end && bytes[i] !== 0x0a) i++;
    if (i >= this.end) this.fail('truncated GLOBAL');
    const s = this.string(this.pos, i - this.pos);
    this.pos = i + 1;
    return s;
  }
  private memoize(index: number) {
    this.memo.set(index, this.top());
  }
  private recall(index: number) {
    const v = this.memo.get(index);
    if (v === undefined) this.fail(`memo entry ${index} is read before it is written`);
    this.stack.push(v);
  }

  private global(module: string, name: string): Global {
    const qualified = `${module}.${name}`;
    const storage = STORAGE_TYPES[qualified];
    if (storage && Object.hasOwn(STORAGE_TYPES, qualified)) return new Global(qualified, storage);
    if (CALLABLE_GLOBALS.has(qualified)) return new Global(qualified);
    return this.fail(
      `Forbidden global '${qualified}': only the globals torch.save emits for tensors (${[...CALLABLE_GLOBALS].join(', ')}, torch.*Storage) are allowed; nothing in the file was executed`,
    );
  }

  private int(v: Value, what: string, min = 0): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) this.fail(`${what} must be an integer ≥ ${min}, got ${typeof v === 'number' ? v : typeName(v)}`);
    return v;
  }
  private ints(v: Value, what: string): number[] {
    if (!(v instanceof Tuple)) this.fail(`${what} must be a tuple, got ${typeName(v)}`);
    return v.items.map((x, i) => this.int(x, `${what}[${i}]`));
  }

  /** storage persistent id: ('storage', storage_type, key, location, numel). */
  private persistentLoad(pid: Value): StorageRef {
    if (!(pid instanceof Tuple) || pid.items.length !== 5 || pid.items[0] !== 'storage') this.fail("a persistent id must be ('storage', type, key, location, numel)");
    const [, type, key, location, numelValue] = pid.items;
    if (!(type instanceof Global) || !type.storage) this.fail(`persistent id storage type must be a torch storage class, got ${typeName(type)}`);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(key) || key.includes('..')) this.fail(`invalid storage key ${JSON.stringify(key)}`);
    if (typeof location !== 'string') this.fail(`storage '${key}' location must be a string, got ${typeName(location)}`);
    const numel = this.int(numelValue, `storage '${key}' element count`);
    const known = this.storages.get(key);
    if (known) {
      if (known.type !== type.storage || known.numel !== numel) this.fail(`storage '${key}' is declared twice with different types or sizes`);
      return known;
    }
    const entry = this.storageEntry(key);
    if (!entry) this.fail(`storage '${key}' has no archive entry data/${key}`);
    if (numel * type.storage.bytes > entry.size)
      this.fail(`storage '${key}' declares ${numel} ${type.storage.dtype} elements (${numel * type.storage.bytes} bytes) but its entry holds ${entry.size} bytes`);
    const ref = new StorageRef(key, type.storage, numel, entry.start);
    this.storages.set(key, ref);
    return ref;
  }

  /** _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]). */
  private rebuildTensor(args: Value[]): TensorRef {
    if (args.length !== 6 && args.length !== 7) this.fail(`${REBUILD_TENSOR} takes 6 or 7 arguments, got ${args.length}`);
    const [storage, offsetValue, sizeValue, strideValue, requiresGrad, hooks, metadata] = args;
    if (!(storage instanceof StorageRef)) this.fail(`${REBUILD_TENSOR}'s storage must be a persistent storage, got ${typeName(storage)}`);
    const offset = this.int(offsetValue, 'storage offset');
    const shape = this.ints(sizeValue, 'tensor size');
    const stride = this.ints(strideValue, 'tensor stride');
    if (typeof requiresGrad !== 'boolean') this.fail(`requires_grad must be a bool, got ${typeName(requiresGrad)}`);
    if (!(hooks instanceof Dict) || hooks.map.size > 0) this.fail('backward hooks must be an empty OrderedDict');
    if (metadata !== undefined && metadata !== null && !(metadata instanceof Dict)) this.fail(`tensor metadata must be a dict, got ${typeName(metadata)}`);
    if (stride.length !== shape.length) this.fail(`tensor size [${shape}] and stride [${stride}] differ in rank`);
    let numel = 1;
    for (const d of shape) {
      numel *= d;
      if (!Number.isSafeInteger(numel)) this.fail(`tensor size [${shape}] is too large`);
    }
    if (numel > 0) {
      let expected = 1;
      for (let i = shape.length - 1; i >= 0; i--) {
        if (shape[i] !== 1 && stride[i] !== expected)
          this.fail(`tensor of size [${shape}] has non-contiguous stride [${stride}]; only row-major contiguous tensors are supported (save tensor.contiguous())`);
        expected *= shape[i];
      }
    }
    if (offset + numel > storage.numel) this.fail(`tensor of size [${shape}] at offset ${offset} exceeds its storage '${storage.key}' (${storage.numel} elements)`);
    return new TensorRef(storage, offset, shape);
  }

  private reduce(fn: Value, args: Value): Value {
    if (!(fn instanceof Global)) this.fail(`REDUCE of ${typeName(fn)}: only allowed globals may be called`);
    if (!(args instanceof Tuple)) this.fail(`REDUCE arguments must be a tuple, got ${typeName(args)}`);
    switch (fn.qualified) {
      case ORDERED_DICT:
        if (args.items.length !== 0) this.fail(`${ORDERED_DICT} takes no arguments here, got ${args.items.length}`);
        return new Dict();
      case REBUILD_TENSOR:
        return this.rebuildTensor(args.items);
      case REBUILD_PARAMETER: {
        const [data, requiresGrad, hooks] = args.items;
        if (args.items.length !== 3 || !(data instanceof TensorRef) || typeof requiresGrad !== 'boolean' || !(hooks instanceof Dict))
          this.fail(`${REBUILD_PARAMETER} takes (tensor, requires_grad, backward_hooks)`);
        return data;
      }
      default:
        return this.fail(`'${fn.qualified}' cannot be called`);
    }
  }

  private setItems(target: Value, items: Value[]) {
    if (!(target instanceof Dict)) this.fail(`SETITEM(S) on ${typeName(target)}, not a dict`);
    if (items.length % 2 !== 0) this.fail('SETITEMS with an odd number of items');
    for (let i = 0; i < items.length; i += 2) {
      const key = items[i];
      if (typeof key !== 'string') this.fail(`dict key must be a string, got ${typeName(key)}`);
      target.map.set(key, items[i + 1]);
    }
  }

  run(): Value {
    const { r } = this;
    for (;;) {
      const op = r.bytes[this.take(1)];
      switch (op) {
        case 0x80: {
          const proto = r.bytes[this.take(1)];
          if (proto > 5) this.fail(`unsupported pickle protocol ${proto}`);
          break;
        }
        case 0x95: // FRAME: a length hint only
          this.take(8);
          break;
        case 0x2e: {
          // STOP
          if (this.marks.length > 0 || this.stack.length !== 1) this.fail(`STOP with ${this.stack.length} value(s) and ${this.marks.length} open MARK(s)`);
          return this.pop();
        }
        case 0x28: // MARK
          this.marks.push(this.stack);
          this.stack = [];
          break;
        case 0x7d:
          this.stack.push(new Dict());
          break;
        case 0x29:
          this.stack.push(new Tuple([]));
          break;
        case 0x5d:
          this.stack.push(new List());
          break;
        case 0x74: {
          const items = this.popMark(); // before reading this.stack: popping the mark replaces it
          this.stack.push(new Tuple(items));
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {
          const n = op - 0x84;
          const items: Value[] = [];
          for (let i = 0; i < n; i++) items.unshift(this.pop());
          this.stack.push(new Tuple(items));
          break;
        }
        case 0x58: {
          const n = r.u32(this.take(4));
          this.stack.push(this.string(this.take(n), n));
          break;
        }
        case 0x8c: {
          const n = r.bytes[this.take(1)];
          this.stack.push(this.string(this.take(n), n));
          break;
        }
        case 0x71:
          this.memoize(r.bytes[this.take(1)]);
          break;
        case 0x72:
          this.memoize(r.u32(this.take(4)));
          break;
        case 0x94:
          this.memoize(this.memo.size);
          break;
        case 0x68:
          this.recall(r.bytes[this.take(1)]);
          break;
        case 0x6a:
          this.recall(r.u32(this.take(4)));
          break;
        case 0x63: {
          const module = this.line();
          this.stack.push(this.global(module, this.line()));
          break;
        }
        case 0x93: {
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== 'string' || typeof name !== 'string') this.fail('STACK_GLOBAL needs two strings');
          this.stack.push(this.global(module, name));
          break;
        }
        case 0x4a:
          this.stack.push(r.view.getInt32(this.take(4), true));
          break;
        case 0x4b:
          this.stack.push(r.bytes[this.take(1)]);
          break;
        case 0x4d:
          this.stack.push(r.u16(this.take(2)));
          break;
        case 0x8a: {
          const n = r.bytes[this.take(1)];
          if (n > 8) this.fail(`LONG1 of ${n} bytes is out of range`);
          const at = this.take(n);
          let v = 0n;
          for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(r.bytes[at + i]);
          if (n > 0 && r.bytes[at + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
          if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) this.fail(`integer ${v} is out of range`);
          this.stack.push(Number(v));
          break;
        }
        case 0x4e:
          this.stack.push(null);
          break;
        case 0x88:
          this.stack.push(true);
          break;
        case 0x89:
          this.stack.push(false);
          break;
        case 0x47:
          this.stack.push(r.view.getFloat64(this.take(8), false));
          break;
        case 0x52: {
          const args = this.pop();
          this.stack.push(this.reduce(this.pop(), args));
          break;
        }
        case 0x62: {
          // BUILD: a state dict's `_metadata` (module versions) set on the OrderedDict — data, ignored.
          this.pop();
          const target = this.top();
          if (!(target instanceof Dict) && !(target instanceof TensorRef)) this.fail(`BUILD on ${typeName(target)}`);
          break;
        }
        case 0x51:
          this.stack.push(this.persistentLoad(this.pop()));
          break;
        case 0x73: {
          const value = this.pop();
          const key = this.pop();
          this.setItems(this.top(), [key, value]);
          break;
        }
        case 0x75: {
          const items = this.popMark();
          this.setItems(this.top(), items);
          break;
        }
        case 0x61: {
          const value = this.pop();
          const list = this.top();
          if (!(list instanceof List)) this.fail(`APPEND on ${typeName(list)}, not a list`);
          list.items.push(value);
          break;
        }
        case 0x65: {
          const items = this.popMark();
          const list = this.top();
          if (!(list instanceof List)) this.fail(`APPENDS on ${typeName(list)}, not a list`);
          for (const v of items) list.items.push(v);
          break;
        }
        default: {
          const name = REFUSED_OPCODE_NAMES.get(op);
          this.fail(`unsupported pickle opcode ${name ?? `0x${op.toString(16).padStart(2, '0')}`} at offset ${this.pos - 1}: a torch.save state dict does not use it`);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ reader

/** Whether bytes look like a torch.save zip (as opposed to safetensors or the legacy pickle format). */
export function isTorchCheckpoint(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 0x03 && bytes[3] === 0x04;
}

/**
 * Reads every tensor of a `torch.save` zip checkpoint (a state dict: names → tensors), as readSafetensors does
 * for safetensors: float dtypes become Float32Array, integer dtypes Int32Array. Names that are the same tensor
 * (tied weights saved as one storage range) share one data array; treat the data as read-only.
 * Throws TorchCheckpointError for anything else, without executing any part of the file.
 */
export function readTorchCheckpoint(bytes: Uint8Array, file?: string): { tensors: Map<string, SafeTensor> } {
  const r: Reader = new Reader(bytes, file);
  if (bytes.byteLength > 0 && bytes[0] === 0x80)
    r.fail(
      'this is the legacy (pre-1.6, non-zip) torch.save format, which cannot be read safely; re-save it with a current PyTorch (torch.save(torch.load(path), path)) or convert it to safetensors',
    );
  if (!isTorchCheckpoint(bytes)) r.fail('not a torch.save checkpoint: a zip archive (starting with "PK") was expected');
  const entries = readZipDirectory(r);
  const pickles = [...entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pickles.length !== 1) r.fail(pickles.length ? `the archive has ${pickles.length} <prefix>/data.pkl entries` : 'the archive has no <prefix>/data.pkl entry');
  const prefix = pickles[0].slice(0, -'data.pkl'.length);
  const order = entries.get(`${prefix}byteorder`);
  if (order) {
    const { start, size } = entryBytes(r, order);
    const text = new TextDecoder().decode(bytes.subarray(start, start + size)).trim();
    if (text === 'big') r.fail('the checkpoint was saved big-endian; only little-endian checkpoints are supported (re-save it on a little-endian machine)');
    if (text !== 'little') r.fail(`unknown byteorder ${JSON.stringify(text.slice(0, 20))}`);
  }
  const pkl = entryBytes(r, entries.get(pickles[0])!);
  const storageEntry = (key: string) => {
    const e = entries.get(`${prefix}data/${key}`);
    return e ? entryBytes(r, e) : undefined;
  };
  const root = new PickleMachine(r, pkl.start, pkl.size, storageEntry).run();
  if (!(root instanceof Dict)) r.fail(`data.pkl holds ${typeName(root)}, not a state dict (a dict of tensors)`);

  const tensors = new Map<string, SafeTensor>();
  const views = new Map<string, SafeTensor>();
  let decodedBytes = 0;
  for (const [name, value] of root.map) {
    if (!(value instanceof TensorRef)) r.fail(`entry '${name}' of the state dict is ${typeName(value)}, not a tensor`);
    if (!value.decoded) {
      const { storage, offset, shape } = value;
      const numel = shape.reduce((a, b) => a * b, 1);
      const viewKey = `${storage.key}:${offset}:${shape}`;
      let decoded = views.get(viewKey);
      if (!decoded) {
        // Distinct views are each decoded once; together they cannot ask for more than the file holds.
        decodedBytes += numel * storage.type.bytes;
        if (decodedBytes > bytes.byteLength) r.fail(`the state dict's tensors add up to more bytes than the file holds (${bytes.byteLength})`);
        const data = decodeTensorData(bytes, r.view, storage.start + offset * storage.type.bytes, storage.type.dtype, numel);
        decoded = { dtype: storage.type.dtype, shape, data };
        views.set(viewKey, decoded);
      }
      value.decoded = decoded;
    }
    tensors.set(name, value.decoded);
  }
  return { tensors };
}
