import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TorchCheckpointError } from '../src/errors.js';
import { readTorchCheckpoint } from '../src/torch-checkpoint.js';
import { type TorchSaveTensor, writeTorchCheckpoint } from '../src/torch-save.js';

const file = (path: string) => {
  const buf = readFileSync(fileURLToPath(new URL(path, import.meta.url)));
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
};

/** Files torch.save wrote (see the fixtures' READMEs): PEFT's LoRA state dict, and a T5 state dict with one storage tied under four names. */
const TORCH_FILES = [
  { path: './fixtures/peft-lora-adapter_model.bin', archive: 'adapter_model' },
  { path: '../../t5/test/fixtures/tiny-gated-bin/pytorch_model.bin', archive: 'pytorch_model' },
];

/** A zip's entries by name (a test-side reader of the central directory, independent of the writer). */
function zipEntries(zip: Uint8Array): Map<string, Uint8Array> {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const eocd = zip.length - 22;
  expect(v.getUint32(eocd, true)).toBe(0x06054b50);
  const out = new Map<string, Uint8Array>();
  let at = v.getUint32(eocd + 16, true);
  for (let i = 0; i < v.getUint16(eocd + 10, true); i++) {
    const size = v.getUint32(at + 24, true);
    const nameLen = v.getUint16(at + 28, true);
    const local = v.getUint32(at + 42, true);
    const start = local + 30 + v.getUint16(local + 26, true) + v.getUint16(local + 28, true);
    out.set(new TextDecoder().decode(zip.subarray(at + 46, at + 46 + nameLen)), zip.subarray(start, start + size));
    at += 46 + nameLen + v.getUint16(at + 30, true) + v.getUint16(at + 32, true);
  }
  return out;
}

function expectTorchError(fn: () => unknown, message: RegExp) {
  expect(fn).toThrow(TorchCheckpointError);
  expect(fn).toThrow(message);
}

describe('writeTorchCheckpoint', () => {
  for (const { path, archive } of TORCH_FILES) {
    it(`rewrites ${path.split('/').pop()} (written by torch.save) byte for byte from the tensors read out of it`, () => {
      const original = file(path);
      const { tensors } = readTorchCheckpoint(original);
      // The reader gives float data as Float32Array (these files hold F32 only), shared by tied names.
      const floats = new Map([...tensors].map(([k, t]) => [k, { ...t, data: t.data as Float32Array }]));
      const written = writeTorchCheckpoint(floats, archive);
      // Entry by entry first (a clearer failure), then the whole archive: padding, descriptors, CRCs, zip64 records.
      const ours = zipEntries(written);
      const torch = zipEntries(original);
      expect([...ours.keys()]).toEqual([...torch.keys()]);
      for (const [name, bytes] of torch) expect(Buffer.from(ours.get(name)!).equals(Buffer.from(bytes)), name).toBe(true);
      expect(written.length).toBe(original.length);
      expect(Buffer.from(written).equals(Buffer.from(original))).toBe(true);
      for (const [name, data] of ours) if (name.includes('/data/') || name.endsWith('data.pkl')) expect((written.byteOffset + data.byteOffset) % 64, name).toBe(0);
    });
  }

  it('round-trips through the reader bit for bit: scalars, empty and rank-4 tensors, -0, subnormals, extremes, tied data, 1001 names', () => {
    const tied = new Float32Array([1.5, -2.25, 3]);
    const tensors = new Map<string, TorchSaveTensor>([
      ['scalar', { shape: [], data: new Float32Array([-0]) }],
      ['empty', { shape: [0, 4], data: new Float32Array(0) }],
      ['r4', { shape: [2, 1, 3, 2], data: Float32Array.from({ length: 12 }, (_, i) => (i - 6) * 1e-40) }],
      ['extremes', { shape: [3], data: new Float32Array([3.4028234663852886e38, -1.401298464324817e-45, 1]) }],
      ['a', { shape: [3], data: tied }],
      ['b', { shape: [3], data: tied }],
      ['ünïcode.name', { shape: [1], data: new Float32Array([7]) }],
    ]);
    // More than one SETITEMS batch (1000 items) and memo indices past 255 (LONG_BINPUT/LONG_BINGET).
    for (let i = 0; i < 1001; i++) tensors.set(`layer.${i}.weight`, { shape: [1, 2], data: new Float32Array([i, -i]) });
    const back = readTorchCheckpoint(writeTorchCheckpoint(tensors, 'pytorch_adapter')).tensors;
    expect([...back.keys()]).toEqual([...tensors.keys()]);
    for (const [name, t] of tensors) {
      const got = back.get(name)!;
      expect(got.dtype, name).toBe('F32');
      expect(got.shape, name).toEqual(t.shape);
      expect(Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)), name).toBe(true);
    }
    expect(back.get('a')!.data).toBe(back.get('b')!.data);
    const entries = zipEntries(writeTorchCheckpoint(tensors, 'pytorch_adapter'));
    expect(entries.has('pytorch_adapter/data.pkl')).toBe(true);
    expect(entries.size).toBe(2 + tensors.size - 1); // data.pkl, version, one storage per distinct data array
  });

  it('an empty state dict and a one-item dict (SETITEM) read back', () => {
    expect(readTorchCheckpoint(writeTorchCheckpoint(new Map(), 'x')).tensors.size).toBe(0);
    const one = readTorchCheckpoint(writeTorchCheckpoint({ w: { shape: [2], data: new Float32Array([1, 2]) } }, 'x')).tensors;
    expect([...one.get('w')!.data]).toEqual([1, 2]);
  });

  it('refuses non-float32 data, a wrong dtype, non-finite values, shape mismatches and bad archive names, by name', () => {
    const ok = { shape: [2], data: new Float32Array([1, 2]) };
    expectTorchError(() => writeTorchCheckpoint({ w: { shape: [2], data: new Float64Array([1, 2]) as unknown as Float32Array } }, 'a'), /'w' is Float64Array; only float32/);
    expectTorchError(() => writeTorchCheckpoint({ w: { ...ok, dtype: 'F16' } }, 'a'), /'w' is F16/);
    expectTorchError(() => writeTorchCheckpoint({ w: { shape: [2], data: new Float32Array([1, Number.NaN]) } }, 'a'), /'w' holds NaN at index 1/);
    expectTorchError(() => writeTorchCheckpoint({ w: { shape: [1], data: new Float32Array([-Infinity]) } }, 'a'), /'w' holds -Infinity/);
    expectTorchError(() => writeTorchCheckpoint({ w: { shape: [3], data: new Float32Array(2) } }, 'a'), /'w' has shape \[3\] but 2 values/);
    expectTorchError(() => writeTorchCheckpoint({ a: ok, b: { shape: [1, 2], data: ok.data } }, 'a'), /'b' shares its data/);
    for (const name of ['', 'a/b', '..']) expectTorchError(() => writeTorchCheckpoint({ w: ok }, name), /archive name/);
  });
});
