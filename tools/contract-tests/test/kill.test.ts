// Issue 17, "atomic on disk": child processes that save an adapter or write training checkpoints are killed
// with SIGKILL (1) at every rename/removal of a save, one kill point per child, until a save completes, and
// (2) at seeded random moments while saving without end. After every kill the adapter directory loads as the
// previous save or the one in progress, never a mix, and training resumes from the newest complete
// checkpoint. ADAPTERKIT_FAULT_KILLS sets the number of random kills per kind (default 2).
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import '@adapterkit/lora';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, loadFixtureModel } from '@adapterkit/t5/test';
import { Trainer, readCheckpoint, shiftTaskExamples } from '@adapterkit/train';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const CHILD = fileURLToPath(new URL('./faults/save-child.mjs', import.meta.url));
const RANDOM_KILLS = Number(process.env.ADAPTERKIT_FAULT_KILLS ?? 2);
const root = mkdtempSync(join(tmpdir(), 'adapterkit-kill-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

type Mode = 'adapter' | 'checkpoint';

/**
 * Runs the child until it exits: with `killAt` it kills itself at that rename/removal; with `delayMs` the test
 * kills it that long after its first acknowledged write. Resolves when it is gone and its output read.
 */
function runChild(mode: Mode, dir: string, how: { killAt: number } | { delayMs: number }): Promise<{ lines: string[]; killed: boolean }> {
  return new Promise((resolve, reject) => {
    const args = [CHILD, mode, dir, FIXTURE_DIR, ...('killAt' in how ? [String(how.killAt)] : [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let stderr = '';
    let pending = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on('data', (d: Buffer) => {
      const parts = (pending + d.toString()).split('\n');
      pending = parts.pop()!;
      lines.push(...parts);
      if ('delayMs' in how && !timer && lines.some((l) => l !== 'ready')) timer = setTimeout(() => child.kill('SIGKILL'), how.delayMs);
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL') resolve({ lines, killed: true });
      else if (code === 0 && lines.includes('done')) resolve({ lines, killed: false });
      else reject(new Error(`child ${mode} failed (code ${code}, signal ${signal}): ${stderr.slice(-2000)}`));
    });
  });
}

const acknowledged = (lines: string[], prefix: string) => lines.filter((l) => l.startsWith(prefix)).map((l) => Number(l.slice(prefix.length)));
/** `.<name>.tmp-…` / `.new-…` / `.old-…` entries beside the saved directories. */
const leftovers = (dir: string) => readdirSync(dir).filter((e) => /\.(tmp|new|old)-/.test(e));

describe('kill -9 during saves and checkpoints', () => {
  let model: T5ForConditionalGeneration;
  const rng = new SeededRandom(17);
  beforeAll(async () => {
    await initBackend('cpu');
    model = await loadFixtureModel();
  });
  afterAll(() => model.dispose());

  /** Loads the adapter directory and returns its version, checking that config and weights are the same save. */
  const loadedVersion = async (dir: string): Promise<number> => {
    const name = await model.loadAdapter(dir, { name: 'loaded', overwrite: true });
    const alpha = model.adapters.adapterConfig(name).alpha as number;
    for (const [key, v] of model.adapters.adapterVariables(name))
      if (key.endsWith('lora_B')) expect(new Set(await v.data()), `${key} vs config alpha ${alpha}`).toEqual(new Set([alpha]));
    return alpha;
  };

  /** Resumes training from `dir` in this process and takes one more step; returns the step it resumed from. */
  const resume = async (dir: string, expectedAtLeast: number): Promise<number> => {
    if (model.adapters.hasAdapter('a')) model.deleteAdapter('a');
    model.addAdapter('a', 'lora[r=2]', { seed: 1 });
    const trainer = new Trainer(model, { adapters: ['a'], trainData: shiftTaskExamples(8, 1, 2), maxSteps: 1_000_000, batchSize: 2, seed: 1, checkpointDir: dir });
    await trainer.loadCheckpoint(dir); // restores weights, optimizer and data position, or throws
    const { files } = await readCheckpoint(dir);
    const from = JSON.parse(new TextDecoder().decode(files['trainer_state.json'])).step as number;
    expect(from).toBeGreaterThanOrEqual(expectedAtLeast);
    trainer.dispose();
    return from;
  };

  it('saveAdapter killed at each of its renames/removals: the directory is the old save or the new one', async () => {
    let points = 0;
    for (let n = 1; n < 20; n++) {
      const dir = join(root, `adapter-at-${n}`, 'a');
      const { lines, killed } = await runChild('adapter', dir, { killAt: n });
      expect(acknowledged(lines, 'saved ')[0]).toBe(1);
      expect([1, 2]).toContain(await loadedVersion(dir));
      if (!killed) break;
      points++;
    }
    expect(points).toBeGreaterThanOrEqual(2);
  });

  it('a checkpoint rewrite killed at each of its renames/removals: resume finds a complete checkpoint', async () => {
    let points = 0;
    for (let n = 1; n < 30; n++) {
      const dir = join(root, `checkpoint-at-${n}`);
      const { lines, killed } = await runChild('checkpoint', dir, { killAt: n });
      expect(acknowledged(lines, 'checkpoint ')[0]).toBe(1);
      expect(await resume(dir, 1)).toBe(1);
      if (!killed) break;
      points++;
    }
    expect(points).toBeGreaterThanOrEqual(2);
  });

  it(`saveAdapter killed at ${RANDOM_KILLS} seeded random moments: the last acknowledged save or the next, then a clean save`, async () => {
    const parent = join(root, 'random-adapter');
    const dir = join(parent, 'a');
    for (let k = 0; k < RANDOM_KILLS; k++) {
      const { lines } = await runChild('adapter', dir, { delayMs: Math.floor(rng.next() * 250) });
      const last = acknowledged(lines, 'saved ').at(-1) ?? 0;
      expect([last, last + 1], `kill ${k}`).toContain(await loadedVersion(dir));
    }
    await model.saveAdapter(dir, 'loaded');
    expect(leftovers(parent)).toEqual([]);
    expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
  });

  it(`training killed at ${RANDOM_KILLS} seeded random moments: each run resumes from the newest acknowledged checkpoint or later`, async () => {
    const dir = join(root, 'random-checkpoints');
    let newest = 0;
    for (let k = 0; k < RANDOM_KILLS; k++) {
      // each child resumes from what the previous kill left (a resume after a crash, in a fresh process)
      const { lines } = await runChild('checkpoint', dir, { delayMs: Math.floor(rng.next() * 1500) });
      newest = Math.max(newest, ...acknowledged(lines, 'checkpoint '));
      await resume(dir, newest);
    }
    expect(newest).toBeGreaterThan(0);
  });
});
