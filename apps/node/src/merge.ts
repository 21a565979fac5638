/**
 * Writes a model (with any merged LoRA folded into its kernels) as a Hugging Face checkpoint directory:
 * config.json, generation_config.json and tokenizer files copied, model.safetensors in Hugging Face's
 * names and layout (the model's stateDict).
 */
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { writeFilesAtomic, writeSafetensors } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

const COPIED = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'spiece.model'];

export async function writeCheckpoint(
  model: T5ForConditionalGeneration,
  sourceDir: string,
  outDir: string,
  metadata: Record<string, string> = {},
): Promise<{ tensors: number; files: string[] }> {
  const tensors = await model.stateDict();
  await writeFilesAtomic(outDir, { 'model.safetensors': writeSafetensors(tensors, { format: 'pt', ...metadata }) });
  const files = ['model.safetensors'];
  for (const f of COPIED) {
    if (existsSync(join(sourceDir, f))) {
      copyFileSync(join(sourceDir, f), join(outDir, f));
      files.push(f);
    }
  }
  return { tensors: tensors.size, files };
}
