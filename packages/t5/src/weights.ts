import { FileError, type FileSource, joinPath, openSource, parseJson, readSafetensors, readTorchCheckpoint, type SafeTensor, WeightError } from '@adapterkit/core';
import type { T5Config } from './config.js';

/** The checkpoint layouts fromPretrained accepts, in order of preference: safetensors first, then torch.save files. */
const CHECKPOINT_FORMATS = [
  { single: 'model.safetensors', read: (bytes: Uint8Array, file: string) => readSafetensors(bytes, file).tensors },
  { single: 'pytorch_model.bin', read: (bytes: Uint8Array, file: string) => readTorchCheckpoint(bytes, file).tensors },
];

/**
 * Reads model.safetensors, or every shard listed in model.safetensors.index.json; without either, the same from
 * pytorch_model.bin or pytorch_model.bin.index.json (torch.save zip files, read without executing anything).
 */
export async function readCheckpoint(source: string | FileSource): Promise<Map<string, SafeTensor>> {
  const files = typeof source === 'string' ? await openSource(source) : source;
  for (const { single, read } of CHECKPOINT_FORMATS) {
    if (await files.has(single)) return read(await files.read(single), single);
    const indexName = `${single}.index.json`;
    if (!(await files.has(indexName))) continue;
    const index = joinPath(files.label, indexName);
    const idx = parseJson(new TextDecoder().decode(await files.read(indexName)), indexName);
    const weightMap = idx?.weight_map;
    if (!weightMap || typeof weightMap !== 'object' || Array.isArray(weightMap))
      throw new FileError(`${indexName} has no 'weight_map' object (got ${JSON.stringify(weightMap) ?? 'nothing'})`, index);
    const shards = new Set<string>();
    for (const [name, shard] of Object.entries(weightMap)) {
      // a shard is a file name in the checkpoint's own directory: no paths, no hidden or special names
      if (typeof shard !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(shard) || shard.includes('..'))
        throw new FileError(`${indexName} maps weight '${name}' to an invalid shard ${JSON.stringify(shard)} (a file name in the same directory)`, index);
      shards.add(shard);
    }
    const out = new Map<string, SafeTensor>();
    for (const shard of shards) for (const [k, v] of read(await files.read(shard), shard)) out.set(k, v);
    for (const name of Object.keys(weightMap)) if (!out.has(name)) throw new WeightError(`weight '${name}' is listed in the index but missing from its shard`, name);
    return out;
  }
  throw new FileError(`${files.label} has neither model.safetensors (or model.safetensors.index.json) nor pytorch_model.bin (or pytorch_model.bin.index.json)`, files.label);
}

/** The weight names and shapes (HF layout, [out, in] for linears) a T5 of this config must have. */
export function expectedWeights(c: T5Config): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const inner = c.numHeads * c.dKv;
  m.set('shared.weight', [c.vocabSize, c.dModel]);
  if (!c.tieWordEmbeddings) m.set('lm_head.weight', [c.vocabSize, c.dModel]);
  const ff = (prefix: string) => {
    if (c.isGatedAct) {
      m.set(`${prefix}.DenseReluDense.wi_0.weight`, [c.dFf, c.dModel]);
      m.set(`${prefix}.DenseReluDense.wi_1.weight`, [c.dFf, c.dModel]);
    } else m.set(`${prefix}.DenseReluDense.wi.weight`, [c.dFf, c.dModel]);
    m.set(`${prefix}.DenseReluDense.wo.weight`, [c.dModel, c.dFf]);
    m.set(`${prefix}.layer_norm.weight`, [c.dModel]);
  };
  const attn = (prefix: string, name: string, bias: boolean) => {
    for (const p of ['q', 'k', 'v']) m.set(`${prefix}.${name}.${p}.weight`, [inner, c.dModel]);
    m.set(`${prefix}.${name}.o.weight`, [c.dModel, inner]);
    if (bias) m.set(`${prefix}.${name}.relative_attention_bias.weight`, [c.relativeAttentionNumBuckets, c.numHeads]);
    m.set(`${prefix}.layer_norm.weight`, [c.dModel]);
  };
  for (let i = 0; i < c.numLayers; i++) {
    attn(`encoder.block.${i}.layer.0`, 'SelfAttention', i === 0);
    ff(`encoder.block.${i}.layer.1`);
  }
  m.set('encoder.final_layer_norm.weight', [c.dModel]);
  for (let i = 0; i < c.numDecoderLayers; i++) {
    attn(`decoder.block.${i}.layer.0`, 'SelfAttention', i === 0);
    attn(`decoder.block.${i}.layer.1`, 'EncDecAttention', false);
    ff(`decoder.block.${i}.layer.2`);
  }
  m.set('decoder.final_layer_norm.weight', [c.dModel]);
  return m;
}

/** Names some checkpoints carry as copies of shared.weight (tied embeddings). */
const TIED_COPIES = new Set(['encoder.embed_tokens.weight', 'decoder.embed_tokens.weight']);

function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}

/** Checks names, shapes, dtypes and finiteness against the config; returns the weights with the `transformer.`/`model.` prefix stripped. */
export function validateWeights(c: T5Config, tensors: Map<string, SafeTensor>): Map<string, SafeTensor> {
  // Every layer has weights of its own: a config declaring more layers than the file has tensors (num_layers: 1e9)
  // is refused before the list of expected weights is built.
  if (c.numLayers + c.numDecoderLayers > tensors.size)
    throw new WeightError(`config.json declares ${c.numLayers} + ${c.numDecoderLayers} layers but the checkpoint holds only ${tensors.size} tensors`, 'num_layers');
  const expected = expectedWeights(c);
  const out = new Map<string, SafeTensor>();
  const copies = new Map<string, [string, SafeTensor]>();
  const check = (rawName: string, t: SafeTensor, shape: number[]) => {
    if (shape.join(',') !== t.shape.join(',')) throw new WeightError(`weight '${rawName}' has shape [${t.shape}] but config.json implies [${shape}]`, rawName);
    if (!(t.data instanceof Float32Array)) throw new WeightError(`weight '${rawName}' has integer dtype ${t.dtype}; a float dtype is required`, rawName);
    // A NaN/Inf weight is a valid file but a broken model: every forward through it would produce NaN.
    const bad = firstNonFinite(t.data);
    if (bad >= 0) throw new WeightError(`weight '${rawName}' has a non-finite value (${t.data[bad]}) at flat index ${bad}`, rawName);
  };
  for (const [rawName, t] of tensors) {
    const name = rawName.replace(/^(transformer|model)\./, '');
    if (TIED_COPIES.has(name)) {
      copies.set(name, [rawName, t]);
      continue;
    }
    if (name === 'lm_head.weight' && c.tieWordEmbeddings) continue; // tied: the head is shared.weight
    const shape = expected.get(name);
    if (!shape) throw new WeightError(`the checkpoint has unexpected weight '${rawName}' for this config`, rawName);
    if (out.has(name)) throw new WeightError(`the checkpoint has weight '${name}' twice (with and without a prefix)`, rawName);
    check(rawName, t, shape);
    out.set(name, t);
  }
  // Some files store the embedding only under a tied copy's name.
  const copy = copies.get('encoder.embed_tokens.weight') ?? copies.get('decoder.embed_tokens.weight');
  if (!out.has('shared.weight') && copy) {
    check(copy[0], copy[1], expected.get('shared.weight')!);
    out.set('shared.weight', copy[1]);
  }
  for (const name of expected.keys()) {
    if (!out.has(name)) throw new WeightError(`the checkpoint lacks weight '${name}'`, name);
  }
  return out;
}
