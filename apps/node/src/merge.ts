/**
 * Writes a model (with any merged LoRA folded into its kernels) as a Hugging Face checkpoint directory:
 * config.json, generation_config.json and tokenizer files copied, model.safetensors in Hugging Face's
 * names and layout (the model's stateDict).
 */
import { type FileSource, writeFilesAtomic, writeSafetensors } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

const COPIED = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'spiece.model'];

/** `source`: where the model came from (a directory or a Hub id, opened with core's openSource). */
export async function writeCheckpoint(
  model: T5ForConditionalGeneration,
  source: FileSource,
  outDir: string,
  metadata: Record<string, string> = {},
): Promise<{ tensors: number; files: string[] }> {
  const tensors = await model.stateDict();
  const files: Record<string, Uint8Array> = { 'model.safetensors': writeSafetensors(tensors, { format: 'pt', ...metadata }) };
  for (const f of COPIED) if (await source.has(f)) files[f] = await source.read(f);
  await writeFilesAtomic(outDir, files);
  return { tensors: tensors.size, files: Object.keys(files) };
}
