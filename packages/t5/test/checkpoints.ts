/**
 * Test helpers: write Hugging Face style checkpoint directories (config.json + safetensors, optionally
 * sharded or in F16/BF16) into temp dirs, and an independent plain-tf T5 forward used as a reference.
 */
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf } from '@adapterkit/backend';
import { writeSafetensors, type SafeTensor } from '@adapterkit/core';
import { T5Model, expectedWeights, parseT5Config } from '../src/index.js';

export function tempDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `adapterkit-t5-${tag}-`));
}

/** Random weights for a raw config.json object (HF names and [out, in] layout). */
export function randomCheckpoint(raw: Record<string, unknown>, seed = 1): Map<string, SafeTensor> {
  const c = parseT5Config(raw);
  return T5Model.randomWeights(c, expectedWeights(c), seed);
}

/** float32 → IEEE half bits, round to nearest even (Node 20 has no Math.f16round). */
export function f32ToF16Bits(value: number): number {
  const f = new Float32Array([value]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (m / 1024);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + m / 1024);
}

/** float32 → bfloat16 bits, round to nearest even. */
export function f32ToBf16Bits(value: number): number {
  const u = new Uint32Array(new Float32Array([value]).buffer)[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Serialises tensors as F16 or BF16 safetensors (writeSafetensors in core writes F32 only). */
export function writeSafetensorsHalf(tensors: Map<string, SafeTensor>, dtype: 'F16' | 'BF16'): Uint8Array {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const n of names) {
    const t = tensors.get(n)!;
    header[n] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length * 2] };
    offset += t.data.length * 2;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += ' ';
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, hb.length, true);
  out.set(hb, 8);
  let pos = 8 + hb.length;
  const conv = dtype === 'F16' ? f32ToF16Bits : f32ToBf16Bits;
  for (const n of names) {
    for (const v of tensors.get(n)!.data) {
      view.setUint16(pos, conv(v), true);
      pos += 2;
    }
  }
  return out;
}

/** What a half-precision file decodes to: each value rounded through F16/BF16. */
export function roundThrough(tensors: Map<string, SafeTensor>, dtype: 'F16' | 'BF16'): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [n, t] of tensors) {
    const data = new Float32Array(t.data.length);
    t.data.forEach((v, i) => {
      data[i] = dtype === 'F16' ? f16BitsToF32(f32ToF16Bits(v)) : new Float32Array(new Uint32Array([f32ToBf16Bits(v) << 16]).buffer)[0];
    });
    out.set(n, { dtype: 'F32', shape: t.shape, data });
  }
  return out;
}

function asF32(tensors: Map<string, SafeTensor>): Map<string, { shape: number[]; data: Float32Array }> {
  return new Map([...tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
}

/** Writes config.json + model.safetensors (or `shards` shards with an index) into a new temp dir. */
export function writeCheckpoint(raw: unknown, tensors: Map<string, SafeTensor>, options: { shards?: number; dtype?: 'F32' | 'F16' | 'BF16'; dir?: string } = {}): string {
  const dir = options.dir ?? tempDir('ckpt');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), typeof raw === 'string' ? raw : JSON.stringify(raw, null, 2));
  const dtype = options.dtype ?? 'F32';
  const encode = (m: Map<string, SafeTensor>) => (dtype === 'F32' ? writeSafetensors(asF32(m), { format: 'pt' }) : writeSafetensorsHalf(m, dtype));
  const shards = options.shards ?? 1;
  if (shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), encode(tensors));
    return dir;
  }
  const names = [...tensors.keys()].sort();
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = new Map(names.filter((_, i) => i % shards === s).map((n) => [n, tensors.get(n)!]));
    for (const n of part.keys()) weightMap[n] = file;
    writeFileSync(join(dir, file), encode(part));
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return dir;
}

export function readFixtureFile(dir: string, name: string): Uint8Array {
  return new Uint8Array(readFileSync(join(dir, name)));
}

// ---------------------------------------------------------------------------------------------------
// An independent, deliberately plain T5 forward (HF names, [out, in] weights, tf ops only), written from
// the transformers modeling code's semantics, not from src/. Used to check the model on shapes the
// fixture does not cover (relu, tied head + rescale, d_kv ≠ d_model/heads, asymmetric depth).

function bucket(rel: number, bidirectional: boolean, numBuckets: number, maxDistance: number): number {
  let out = 0;
  let n = numBuckets;
  let r = rel;
  if (bidirectional) {
    n = Math.floor(n / 2);
    if (r > 0) out += n;
    r = Math.abs(r);
  } else r = Math.max(-r, 0);
  const exact = Math.floor(n / 2);
  if (r < exact) return out + r;
  const large = exact + Math.floor((Math.log(r / exact) / Math.log(maxDistance / exact)) * (n - exact));
  return out + Math.min(large, n - 1);
}

export function referenceForward(raw: Record<string, any>, W: Map<string, SafeTensor>, ids: number[][], mask: number[][], dec: number[][]): tf.Tensor {
  const dModel = raw.d_model as number;
  const H = raw.num_heads as number;
  const dKv = raw.d_kv as number;
  const eps = (raw.layer_norm_epsilon as number) ?? 1e-6;
  const nb = (raw.relative_attention_num_buckets as number) ?? 32;
  const md = (raw.relative_attention_max_distance as number) ?? 128;
  const ffp = (raw.feed_forward_proj as string) ?? 'relu';
  const gated = ffp.startsWith('gated-');
  const actName = ffp === 'gated-gelu' ? 'gelu_new' : ffp.replace('gated-', '');
  const tie = raw.tie_word_embeddings ?? true;
  // transformers v5: scale_decoder_outputs when given; v4: rescale iff the embeddings are tied.
  const rescale = raw.scale_decoder_outputs ?? tie;
  const nDec = raw.num_decoder_layers ?? raw.num_layers;
  return tf.tidy(() => {
    const w = (n: string) => {
      const t = W.get(n);
      if (!t) throw new Error(`reference: no weight ${n}`);
      return tf.tensor(t.data as Float32Array, t.shape);
    };
    const lin = (x: tf.Tensor, n: string) => {
      const [b, l, d] = x.shape;
      return tf.matMul(x.reshape([b * l, d]), w(`${n}.weight`), false, true).reshape([b, l, -1]);
    };
    const norm = (x: tf.Tensor, n: string) => x.mul(tf.rsqrt(x.square().mean(-1, true).add(eps))).mul(w(n));
    const act = (x: tf.Tensor): tf.Tensor => {
      if (actName === 'relu') return tf.relu(x);
      if (actName === 'silu') return x.mul(tf.sigmoid(x));
      if (actName === 'gelu') return x.mul(0.5).mul(tf.erf(x.div(Math.SQRT2)).add(1));
      return x.mul(0.5).mul(tf.tanh(x.add(x.pow(3).mul(0.044715)).mul(Math.sqrt(2 / Math.PI))).add(1));
    };
    const split = (x: tf.Tensor) => x.reshape([x.shape[0], x.shape[1]!, H, dKv]).transpose([0, 2, 1, 3]);
    const attention = (x: tf.Tensor, src: tf.Tensor, n: string, add: tf.Tensor) => {
      const q = split(lin(x, `${n}.q`));
      const k = split(lin(src, `${n}.k`));
      const v = split(lin(src, `${n}.v`));
      const p = tf.softmax(tf.matMul(q, k, false, true).add(add));
      const o = tf
        .matMul(p, v)
        .transpose([0, 2, 1, 3])
        .reshape([x.shape[0], x.shape[1]!, H * dKv]);
      return lin(o, `${n}.o`);
    };
    const posBias = (table: string, q: number, k: number, bidir: boolean) => {
      const idx: number[] = [];
      for (let i = 0; i < q; i++) for (let j = 0; j < k; j++) idx.push(bucket(j - i, bidir, nb, md));
      return tf.gather(w(table), tf.tensor1d(idx, 'int32')).reshape([q, k, H]).transpose([2, 0, 1]).expandDims(0);
    };
    const ffn = (h: tf.Tensor, n: string) => {
      const x = norm(h, `${n}.layer_norm.weight`);
      const inner = gated ? act(lin(x, `${n}.DenseReluDense.wi_0`)).mul(lin(x, `${n}.DenseReluDense.wi_1`)) : act(lin(x, `${n}.DenseReluDense.wi`));
      return h.add(lin(inner, `${n}.DenseReluDense.wo`));
    };
    const B = ids.length;
    const L = ids[0].length;
    const T = dec[0].length;
    const big = -1e9;
    const encMask = tf.tensor2d(mask).sub(1).mul(-big).reshape([B, 1, 1, L]);
    let h = tf.gather(w('shared.weight'), tf.tensor2d(ids, undefined, 'int32'));
    const encBias = posBias('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight', L, L, true);
    for (let i = 0; i < raw.num_layers; i++) {
      const n = `encoder.block.${i}.layer.0`;
      h = h.add(attention(norm(h, `${n}.layer_norm.weight`), norm(h, `${n}.layer_norm.weight`), `${n}.SelfAttention`, encBias.add(encMask)));
      h = ffn(h, `encoder.block.${i}.layer.1`);
    }
    const enc = norm(h, 'encoder.final_layer_norm.weight');
    const causal = tf.tensor2d(Array.from({ length: T }, (_, i) => Array.from({ length: T }, (_, j) => (j > i ? big : 0)))).reshape([1, 1, T, T]);
    const decBias = posBias('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight', T, T, false);
    let d = tf.gather(w('shared.weight'), tf.tensor2d(dec, undefined, 'int32'));
    for (let i = 0; i < nDec; i++) {
      const s = `decoder.block.${i}.layer.0`;
      const xs = norm(d, `${s}.layer_norm.weight`);
      d = d.add(attention(xs, xs, `${s}.SelfAttention`, decBias.add(causal)));
      const c = `decoder.block.${i}.layer.1`;
      d = d.add(attention(norm(d, `${c}.layer_norm.weight`), enc, `${c}.EncDecAttention`, encMask));
      d = ffn(d, `decoder.block.${i}.layer.2`);
    }
    let out = norm(d, 'decoder.final_layer_norm.weight');
    if (rescale) out = out.mul(dModel ** -0.5);
    const head = tie ? w('shared.weight') : w('lm_head.weight');
    return tf.matMul(out.reshape([B * T, dModel]), head, false, true).reshape([B, T, -1]);
  });
}
