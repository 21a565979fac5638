import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HubServer, startHubServer } from '@adapterkit/core/test';
import { initBackend } from '@adapterkit/backend';
import { readSafetensors } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { BUNDLED_MODEL, trimGenerated } from '../src/common.js';
import { PEFT_LORA, runCli, tempDir } from './helpers.js';

// The CLI with Hub ids (a local stand-in for the Hub, see @adapterkit/core/test), the tfjs banner, and a
// finished training asked again.
const files = (dir: string) => Object.fromEntries(readdirSync(dir).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
let hub: HubServer;
const cache = tempDir('adapterkit-cli-hub-');

beforeAll(async () => {
  await initBackend('cpu');
  hub = await startHubServer({
    'org/tiny': { commit: 'e'.repeat(40), files: files(BUNDLED_MODEL) },
    'org/lora': { commit: 'f'.repeat(40), files: files(PEFT_LORA) },
  });
});
afterAll(() => hub?.close());

describe('adapterkit with Hub ids', () => {
  it('--model and --adapter take Hub ids: downloads show a progress bar, then --offline reads the cache; same output as local paths', async () => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '' };
    const args = ['generate', '-b', 'cpu', '--ids', '--max-new-tokens', '4', '12,14,53,1'];
    const model = await T5ForConditionalGeneration.fromPretrained(BUNDLED_MODEL);
    model.setActiveAdapters(await model.loadAdapter(PEFT_LORA));
    const [expected] = await model.generate({ inputIds: [[12, 14, 53, 1]], maxNewTokens: 4 });
    model.dispose();
    const local = { stdout: `${trimGenerated(expected, model.generationConfig.eosTokenId).join(',')}\n` };
    const first = await runCli([...args, '-m', 'org/tiny', '-a', 'org/lora'], { env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toBe(local.stdout);
    expect(first.stderr).toMatch(/org\/tiny\/model\.safetensors \[.*\] 100%/);
    expect(first.stderr).toMatch(/org\/lora\/adapter_model\.safetensors/);
    const requests = hub.log.length;
    const offline = await runCli([...args, '-m', 'org/tiny', '-a', 'org/lora', '--offline'], { env });
    expect(offline.code, offline.stderr).toBe(0);
    expect(offline.stdout).toBe(local.stdout);
    expect(offline.stderr).not.toMatch(/MiB/);
    expect(offline.stderr).not.toMatch(/looks like you are running TensorFlow\.js/);
    expect(hub.log.length).toBe(requests);
    const missing = await runCli([...args, '-m', 'org/other', '--offline'], { env });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/HubOfflineError|HUB_ERROR/);
  });

  it('merge takes a Hub model id: the written checkpoint carries the Hub copy of config and tokenizer, and equals the local merge', async () => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '' };
    const dir = tempDir();
    const viaHub = await runCli(['merge', '-b', 'cpu', '--json', '-m', 'org/tiny', '-a', 'org/lora', '-o', join(dir, 'hub')], { env });
    expect(viaHub.code, viaHub.stderr).toBe(0);
    const local = await runCli(['merge', '-b', 'cpu', '--json', '-a', PEFT_LORA, '-o', join(dir, 'local')]);
    expect(local.code, local.stderr).toBe(0);
    expect(JSON.parse(viaHub.stdout).files.sort()).toEqual(JSON.parse(local.stdout).files.sort());
    for (const f of JSON.parse(local.stdout).files as string[]) {
      const a = readFileSync(join(dir, 'hub', f));
      const b = readFileSync(join(dir, 'local', f));
      if (f !== 'model.safetensors') {
        expect(a.equals(b), f).toBe(true);
        continue;
      }
      // the header records the merged adapters' names (org/lora's last segment vs the local directory's): compare tensors
      const ta = readSafetensors(new Uint8Array(a), 'hub').tensors;
      const tb = readSafetensors(new Uint8Array(b), 'local').tensors;
      expect([...ta.keys()].sort()).toEqual([...tb.keys()].sort());
      for (const [k, t] of ta)
        expect(
          Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from(tb.get(k)!.data.buffer, tb.get(k)!.data.byteOffset, tb.get(k)!.data.byteLength)),
          k,
        ).toBe(true);
    }
  });

  it('prints no tfjs "running TensorFlow.js in Node.js" banner on wasm (cpu: above)', async () => {
    const r = await runCli(['generate', '-b', 'wasm', '--ids', '--max-new-tokens', '2', '12,14,1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/looks like you are running TensorFlow\.js/);
  });

  it('train asked again after it finished says so (no loss NaN)', async () => {
    const dir = tempDir();
    const data = join(dir, 'train.jsonl');
    writeFileSync(data, `${Array.from({ length: 8 }, (_, i) => JSON.stringify({ input_ids: [3 + i, 9, 1], labels: [5 + i, 1] })).join('\n')}\n`);
    const args = ['train', '-b', 'cpu', '-d', data, '-o', join(dir, 'out'), '--steps', '2', '--batch-size', '4', '--config', 'lora[r=2]'];
    expect((await runCli(args)).code).toBe(0);
    const again = await runCli(args);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/already trained for 2 steps/);
    expect(again.stdout).not.toMatch(/NaN/);
    const json = await runCli([...args, '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ alreadyTrained: true, steps: 2, firstLoss: null, lastLoss: null });
  });
});
