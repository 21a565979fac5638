/**
 * Writes a model (with any merged LoRA folded into its kernels) as a Hugging Face checkpoint directory:
 * config.json, generation_config.json and tokenizer files copied, model.safetensors with every linear
 * kernel transposed back to HF's [out, in] layout.
 */
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { writeFilesAtomic, writeSafetensors } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { tf } from '@adapterkit/backend';

const COPIED = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'spiece.model'];

export async function writeCheckpoint(model: T5ForConditionalGeneration, sourceDir: string, outDir: string, metadata: Record<string, string> = {}): Promise<{ tensors: number; files: string[] }> {
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of model.baseTensors()) {
    if (name.endsWith('.kernel')) {
      // tfjs kernel [in, out] → HF Linear weight [out, in].
      const w = tf.tidy(() => t.transpose());
      tensors.set(name.slice(0, -'.kernel'.length) + '.weight', { shape: w.shape, data: (await w.data()) as Float32Array });
      w.dispose();
    } else tensors.set(name, { shape: t.shape, data: (await t.data()) as Float32Array });
  }
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
