import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import { HubNotFoundError } from '@adapterkit/core';
import { type HubServer, startHubServer } from '@adapterkit/core/test';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE_DIR, PEFT_LORA_DIR, logitsOf, maxDiff, readJson } from './helpers.js';

// PEFT's LoRA fixture served as a Hub repository: loaded by id it gives PEFT's logits.
const ref = readJson(`${PEFT_LORA_DIR}/reference.json`);
const root = mkdtempSync(join(tmpdir(), 'adapterkit-lora-hub-'));
let hub: HubServer;

beforeAll(async () => {
  await initBackend('cpu');
  const files = Object.fromEntries(readdirSync(PEFT_LORA_DIR).map((f) => [f, new Uint8Array(readFileSync(join(PEFT_LORA_DIR, f)))]));
  hub = await startHubServer({ 'someone/peft-lora': { commit: 'c'.repeat(40), files } });
});
afterAll(async () => {
  await hub?.close();
  rmSync(root, { recursive: true, force: true });
});

describe('loadAdapter with a Hub id', () => {
  it('loads a PEFT LoRA by id (named after the repo) with PEFT logits; a missing repo file is a typed error', async () => {
    const model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    const hubOptions = { endpoint: hub.endpoint, cacheDir: join(root, 'cache') };
    const name = await model.loadAdapter('someone/peft-lora', { hub: hubOptions });
    expect(name).toBe('peft-lora');
    model.setActiveAdapters(name);
    expect(maxDiff((await logitsOf(model)).data, ref.logits.data)).toBeLessThan(1e-4);
    await expect(model.loadAdapter('someone/peft-lora@nope', { hub: hubOptions })).rejects.toBeInstanceOf(HubNotFoundError);
    model.dispose();
  });
});
