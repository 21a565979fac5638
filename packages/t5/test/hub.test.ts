import { readdirSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '@adapterkit/backend';
import { readSafetensors, type HubProgress } from '@adapterkit/core';
import { type HubServer, startHubServer } from '@adapterkit/core/test';
import { T5ForConditionalGeneration } from '../src/index.js';
import { writeCheckpoint } from './checkpoints.js';
import { FIXTURE_DIR, initBackend, maxAbsDiff, readReference, to2d } from './helpers.js';

// The fixture model (written by transformers) served as a Hub repository, whole and in 3 shards: loaded by id
// it must match transformers' logits and greedy ids, from the network and then from the cache.
const ref = readReference();
const files = (dir: string) =>
  Object.fromEntries(
    readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => [e.name, new Uint8Array(readFileSync(join(dir, e.name)))]),
  );
const root = mkdtempSync(join(tmpdir(), 'adapterkit-t5-hub-'));
let hub: HubServer;

beforeAll(async () => {
  await initBackend('cpu');
  const whole = files(FIXTURE_DIR);
  const sharded = writeCheckpoint(new TextDecoder().decode(whole['config.json']), readSafetensors(whole['model.safetensors']).tensors, { shards: 3, dir: join(root, 'sharded') });
  hub = await startHubServer({
    'org/tiny-gated': { commit: '1'.repeat(40), files: whole },
    'org/tiny-sharded': { commit: '2'.repeat(40), files: { ...files(sharded), 'tokenizer.json': whole['tokenizer.json'] } },
  });
});
afterAll(async () => {
  await hub?.close();
  rmSync(root, { recursive: true, force: true });
});

async function check(model: T5ForConditionalGeneration) {
  const out = model.forward({ inputIds: to2d(ref.inputs.input_ids), attentionMask: to2d(ref.inputs.attention_mask), decoderInputIds: to2d(ref.inputs.decoder_input_ids) });
  expect(await maxAbsDiff(out.logits, ref.logits.data)).toBeLessThan(1e-4);
  tf.dispose([out.logits, out.encoderLastHiddenState]);
  expect(await model.generate({ inputIds: to2d(ref.inputs.input_ids), attentionMask: to2d(ref.inputs.attention_mask), maxNewTokens: 8 })).toEqual(to2d(ref.greedy_ids));
}

describe('fromPretrained with a Hub id', () => {
  it('loads the fixture by id (progress reported), then from the cache offline, with the reference logits', async () => {
    const cacheDir = join(root, 'cache');
    const events: HubProgress[] = [];
    let t0 = performance.now();
    const model = await T5ForConditionalGeneration.fromPretrained('org/tiny-gated', { endpoint: hub.endpoint, cacheDir, onProgress: (p) => events.push(p) });
    const miss = performance.now() - t0;
    expect(model.tokenizer).toBeDefined();
    expect(
      events
        .filter((e) => e.done)
        .map((e) => e.file)
        .sort(),
    ).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json']);
    await check(model);
    model.dispose();
    const start = hub.log.length;
    t0 = performance.now();
    const cached = await T5ForConditionalGeneration.fromPretrained('org/tiny-gated', { endpoint: hub.endpoint, cacheDir, offline: true });
    const hit = performance.now() - t0;
    expect(hub.log.length).toBe(start);
    await check(cached);
    cached.dispose();
    console.info(`fromPretrained by Hub id: cache miss ${miss.toFixed(0)} ms, cache hit (offline) ${hit.toFixed(0)} ms`);
  });

  it('a sharded checkpoint (model.safetensors.index.json) loads shard by shard', async () => {
    const model = await T5ForConditionalGeneration.fromPretrained('org/tiny-sharded@main', { endpoint: hub.endpoint, cacheDir: join(root, 'cache') });
    const shards = hub.log.filter((r) => r.method === 'GET' && r.path.startsWith('/org/tiny-sharded/')).map((r) => r.path.split('/').pop());
    expect(shards).toContain('model.safetensors.index.json');
    await check(model);
    model.dispose();
  });
});
