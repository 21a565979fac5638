import { SafetensorsError } from './errors.js';

/** A tensor read from a safetensors file, converted to float32 (or int32 for integer dtypes). */
export interface SafeTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8, I16: 2, I8: 1, U8: 1, BOOL: 1 };
const MAX_HEADER = 100 * 1024 * 1024;

/** Parses the header only: names → {dtype, shape, byte range}. Validates everything it can without data. */
export function readSafetensorsHeader(bytes: Uint8Array, file?: string) {
  if (bytes.byteLength < 8) throw new SafetensorsError(`file is ${bytes.byteLength} bytes, shorter than the 8-byte header length`, file);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const headerLen = hi * 2 ** 32 + lo;
  if (headerLen === 0 || headerLen > MAX_HEADER || 8 + headerLen > bytes.byteLength) {
    throw new SafetensorsError(`header length ${headerLen} exceeds the file (${bytes.byteLength} bytes)`, file);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)));
  } catch (e) {
    throw new SafetensorsError(`header is not valid JSON (${(e as Error).message})`, file);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new SafetensorsError('header is not a JSON object', file);
  const dataStart = 8 + headerLen;
  const dataLen = bytes.byteLength - dataStart;
  const entries: { name: string; dtype: string; shape: number[]; begin: number; end: number }[] = [];
  let metadata: Record<string, string> | undefined;
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      // As in the reference format: an optional map of strings to strings.
      if (info === null) continue;
      if (typeof info !== 'object' || Array.isArray(info) || !Object.values(info).every((v) => typeof v === 'string')) {
        throw new SafetensorsError(`__metadata__ must map strings to strings, got ${JSON.stringify(info).slice(0, 100)}`, file);
      }
      metadata = info as Record<string, string>;
      continue;
    }
    if (!info || typeof info !== 'object') throw new SafetensorsError(`entry '${name}' is not an object`, file);
    const { dtype, shape, data_offsets } = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) throw new SafetensorsError(`tensor '${name}' has unknown dtype ${JSON.stringify(dtype)}`, file);
    if (!Array.isArray(shape) || !shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0))
      throw new SafetensorsError(`tensor '${name}' has an invalid shape ${JSON.stringify(shape)}`, file);
    if (!Array.isArray(data_offsets) || data_offsets.length !== 2 || !data_offsets.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new SafetensorsError(`tensor '${name}' has invalid data_offsets ${JSON.stringify(data_offsets)}`, file);
    }
    const [begin, end] = data_offsets as [number, number];
    if (begin > end || end > dataLen) throw new SafetensorsError(`tensor '${name}' data_offsets [${begin}, ${end}] fall outside the ${dataLen} data bytes`, file);
    const count = shape.reduce((a: number, b: number) => a * b, 1);
    if (count * DTYPE_BYTES[dtype] !== end - begin) {
      throw new SafetensorsError(`tensor '${name}' shape [${shape}] of ${dtype} needs ${count * DTYPE_BYTES[dtype]} bytes but data_offsets give ${end - begin}`, file);
    }
    entries.push({ name, dtype, shape, begin, end });
  }
  // Offsets must not overlap (the format requires a dense, non-overlapping layout).
  const sorted = [...entries].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) throw new SafetensorsError(`tensors '${sorted[i - 1].name}' and '${sorted[i].name}' overlap`, file);
  }
  return { entries, dataStart, metadata };
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** The other dtypes, element by element: floats load as float32, integers (I64 included) as int32. */
const ELEMENT_READERS: Record<string, { float: boolean; read: (view: DataView, at: number) => number } | undefined> = {
  F64: { float: true, read: (v, at) => v.getFloat64(at, true) },
  F16: { float: true, read: (v, at) => f16ToF32(v.getUint16(at, true)) },
  I64: { float: false, read: (v, at) => Number(v.getBigInt64(at, true)) },
  I32: { float: false, read: (v, at) => v.getInt32(at, true) },
  I16: { float: false, read: (v, at) => v.getInt16(at, true) },
  I8: { float: false, read: (v, at) => v.getInt8(at) },
  U8: { float: false, read: (v, at) => v.getUint8(at) },
  BOOL: { float: false, read: (v, at) => v.getUint8(at) },
};

/**
 * Reads every tensor of a safetensors file. Float dtypes become Float32Array, integer dtypes Int32Array.
 * F32 data is copied once from the file bytes (the copy also fixes alignment); nothing else is duplicated.
 */
export function readSafetensors(bytes: Uint8Array, file?: string): { tensors: Map<string, SafeTensor>; metadata?: Record<string, string> } {
  const { entries, dataStart, metadata } = readSafetensorsHeader(bytes, file);
  const tensors = new Map<string, SafeTensor>();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const { name, dtype, shape, begin, end } of entries) {
    tensors.set(name, { dtype, shape, data: decodeTensorData(bytes, view, dataStart + begin, dtype, (end - begin) / DTYPE_BYTES[dtype]) });
  }
  return { tensors, metadata };
}

/**
 * Decodes `n` little-endian elements of a safetensors dtype starting at byte `off` of `bytes` (`view` spans the
 * same bytes): float dtypes become a Float32Array, integer dtypes an Int32Array. The caller has checked that
 * the range lies inside `bytes`. Shared with the torch checkpoint reader.
 */
export function decodeTensorData(bytes: Uint8Array, view: DataView, off: number, dtype: string, n: number): Float32Array | Int32Array {
  if (dtype === 'F32') {
    const data = new Float32Array(n);
    new Uint8Array(data.buffer).set(bytes.subarray(off, off + n * 4));
    return data;
  }
  if (dtype === 'BF16') {
    // bfloat16 is the top half of a float32
    const u = new Uint32Array(n);
    for (let i = 0; i < n; i++) u[i] = view.getUint16(off + i * 2, true) << 16;
    return new Float32Array(u.buffer);
  }
  const { float, read } = ELEMENT_READERS[dtype]!;
  const size = DTYPE_BYTES[dtype];
  const data = float ? new Float32Array(n) : new Int32Array(n);
  for (let i = 0; i < n; i++) data[i] = read(view, off + i * size);
  return data;
}

/** Serialises float32 tensors to safetensors bytes (names sorted, 8-byte aligned header, as HF writes). */
export function writeSafetensors(
  tensors: Map<string, { shape: number[]; data: Float32Array }> | Record<string, { shape: number[]; data: Float32Array }>,
  metadata?: Record<string, string>,
): Uint8Array {
  const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  const names = [...map.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = map.get(name)!;
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new SafetensorsError(`tensor '${name}' has shape [${t.shape}] but ${t.data.length} values`);
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + count * 4] };
    offset += count * 4;
  }
  let json = JSON.stringify(header);
  while ((8 + new TextEncoder().encode(json).length) % 8 !== 0) json += ' ';
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, headerBytes.length, true);
  view.setUint32(4, 0, true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const name of names) {
    const t = map.get(name)!;
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}
