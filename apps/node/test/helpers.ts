import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tf } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

export const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
export { PEFT_LORA_DIR as PEFT_LORA } from '@adapterkit/t5/test';

export function requireBuiltCli() {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build the CLI first (pnpm --filter @adapterkit/cli build)`);
}

export function tempDir(prefix = 'adapterkit-cli-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Runs the built CLI; resolves with exit code and output. */
export function runCli(
  args: string[],
  options: { input?: string; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  requireBuiltCli();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`adapterkit ${args.join(' ')} timed out; stderr: ${stderr}`));
    }, options.timeoutMs ?? 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** The method an adapter test can use: LoRA when @adapterkit/lora is registered, else a bottleneck. */
export function adapterConfigForTests(model: T5ForConditionalGeneration): string {
  try {
    model.addAdapter('__probe', 'lora[r=4,alpha=8]');
    model.deleteAdapter('__probe');
    return 'lora[r=4,alpha=8]';
  } catch {
    return 'seq_bn[reduction_factor=4]';
  }
}

/**
 * Adds an adapter whose every variable is seeded noise (LoRA's B is zero at init, which would make every
 * adapter equal the base model), so different adapters give visibly different outputs.
 */
export function addNoisyAdapter(model: T5ForConditionalGeneration, name: string, config: string, seed: number, scale = 0.5) {
  model.addAdapter(name, config, { seed });
  const rng = new SeededRandom(seed + 17);
  for (const v of model.adapters.adapterVariables(name).values()) {
    const values = Float32Array.from({ length: v.size }, () => rng.normal(0, scale));
    v.assign(tf.tensor(values, v.shape));
  }
}

/** Seeded shift-task style token rows: tokens in [3,128) then eos. */
export function randomRows(n: number, seed: number, len?: number): number[][] {
  const rng = new SeededRandom(seed);
  return Array.from({ length: n }, () => {
    const L = len ?? 4 + Math.floor(rng.next() * 5);
    return [...Array.from({ length: L }, () => 3 + Math.floor(rng.next() * 125)), 1];
  });
}
