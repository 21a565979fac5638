/**
 * End-to-end: the built page in Debian's Chromium (headless, WebGPU on SwiftShader) must report the webgpu
 * backend, generate, load adapters from files (adapterkit and PEFT format), hot-swap them, train a LoRA and
 * offer it for download — and its generated ids must equal what Node computes for the same model, adapter
 * and input.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import '@adapterkit/lora';
import { T5ForConditionalGeneration } from '@adapterkit/t5';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIST = join(ROOT, 'dist');
const MODEL = join(ROOT, '../node/models/tiny-gated');
const RESULTS = join(ROOT, 'test-results');
const CHROMIUM = '/usr/bin/chromium';
const INPUT = [12, 14, 53, 14, 77, 1];
const MAX_NEW = 8;

const MIME: Record<string, string> = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.safetensors': 'application/octet-stream',
};

/** A tiny static server for dist/ on 127.0.0.1 (GET and HEAD, as the model loader probes files with HEAD). */
function serve(dir: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent((req.url ?? '/').split('?')[0])).replace(/^(\.\.[/\\])+/, '');
    let file = join(dir, path);
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
    if (!existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    const body = readFileSync(file);
    res.writeHead(200, { 'content-type': MIME[extname(file)] ?? 'application/octet-stream', 'content-length': body.length });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/` })));
}

function noisyLora(model: T5ForConditionalGeneration, name: string, seed: number) {
  model.addAdapter(name, 'lora[r=4,alpha=8]', { seed });
  const rng = new SeededRandom(seed);
  for (const v of model.adapters.adapterVariables(name).values())
    v.assign(
      tf.tensor(
        Float32Array.from({ length: v.size }, () => rng.normal(0, 0.5)),
        v.shape,
      ),
    );
}

function trim(row: number[]): number[] {
  const out: number[] = [];
  for (const t of row.slice(1)) {
    out.push(t);
    if (t === 1) break;
  }
  return out;
}

describe.skipIf(!existsSync(CHROMIUM))('web page in headless Chromium (WebGPU)', () => {
  let browser: Browser;
  let page: Page;
  let server: Server;
  let url: string;
  const expected: Record<string, number[]> = {};
  const dirs: Record<string, string> = {};

  beforeAll(async () => {
    if (!existsSync(join(DIST, 'index.html'))) {
      const { build } = await import('vite');
      await build({ root: ROOT, logLevel: 'warn' });
    }
    // Node side: the same model, two LoRA adapters (saved in adapterkit and PEFT format), greedy ids on cpu.
    await initBackend('cpu');
    const model = await T5ForConditionalGeneration.fromPretrained(MODEL);
    noisyLora(model, 'alpha', 11);
    noisyLora(model, 'beta', 22);
    const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-web-'));
    dirs.alpha = join(tmp, 'alpha');
    dirs.beta = join(tmp, 'beta-peft');
    await model.saveAdapter(dirs.alpha, 'alpha');
    await model.saveAdapter(dirs.beta, 'beta', { format: 'peft' });
    for (const comp of [null, 'alpha', 'beta']) expected[comp ?? 'base'] = trim((await model.generate({ inputIds: [INPUT], maxNewTokens: MAX_NEW, composition: comp }))[0]);
    expect(new Set(Object.values(expected).map((x) => JSON.stringify(x))).size).toBe(3);
    model.dispose();

    ({ server, url } = await serve(DIST));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    page.on('console', (m) => {
      if (m.type() === 'error') console.log(`[page] ${m.text()}`);
    });
    await page.goto(url);
    await page.waitForSelector('#model-status[data-state="ready"]', { timeout: 120_000 });
  });

  afterAll(async () => {
    await browser?.close();
    server?.close();
  });

  async function generateInPage(): Promise<number[]> {
    await page.fill('#gen-input', INPUT.join(','));
    await page.fill('#gen-max', String(MAX_NEW));
    await page.click('#generate');
    await page.waitForFunction(() => (document.getElementById('gen-output') as HTMLElement).dataset.ids !== '', undefined, { timeout: 120_000 });
    return JSON.parse((await page.getAttribute('#gen-output', 'data-ids'))!);
  }

  async function loadAdapter(dir: string, name: string) {
    await page.fill('#adapter-name', name);
    await page.setInputFiles('#adapter-files', [join(dir, 'adapter_config.json'), join(dir, 'adapter_model.safetensors')]);
    await page.waitForFunction((n) => document.getElementById('adapter-status')!.textContent!.includes(`'${n}'`), name, { timeout: 60_000 });
  }

  it('reports the WebGPU backend', async () => {
    expect(await page.getAttribute('#backend', 'data-backend')).toBe('webgpu');
    expect(await page.textContent('#backend')).toMatch(/webgpu/);
  });

  it('generates the same ids as Node, loads adapters from files and hot-swaps them', async () => {
    expect(await generateInPage()).toEqual(expected.base);
    await loadAdapter(dirs.alpha, 'alpha');
    expect(await generateInPage()).toEqual(expected.alpha);
    await loadAdapter(dirs.beta, 'beta'); // PEFT format
    expect(await generateInPage()).toEqual(expected.beta);
    await page.check('#adapter-list input[value="alpha"]');
    expect(await generateInPage()).toEqual(expected.alpha);
    await page.check('#adapter-list input[value=""]');
    expect(await generateInPage()).toEqual(expected.base);
    // Swapping never reloaded the base model.
    expect(await page.getAttribute('#model-status', 'data-loads')).toBe('1');
  });

  it('falls back to wasm, visibly, when navigator.gpu is absent, and generates the same ids', async () => {
    const p2 = await browser.newPage();
    await p2.addInitScript(() => {
      delete (Navigator.prototype as { gpu?: unknown }).gpu;
    });
    await p2.goto(url);
    await p2.waitForSelector('#model-status[data-state="ready"]', { timeout: 120_000 });
    expect(await p2.getAttribute('#backend', 'data-backend')).toBe('wasm');
    expect(await p2.isVisible('#backend-note')).toBe(true);
    expect(await p2.textContent('#backend-note')).toMatch(/navigator\.gpu is absent/);
    await p2.fill('#gen-input', INPUT.join(','));
    await p2.fill('#gen-max', String(MAX_NEW));
    await p2.click('#generate');
    await p2.waitForFunction(() => (document.getElementById('gen-output') as HTMLElement).dataset.ids !== '', undefined, { timeout: 60_000 });
    expect(JSON.parse((await p2.getAttribute('#gen-output', 'data-ids'))!)).toEqual(expected.base);
    mkdirSync(RESULTS, { recursive: true });
    await p2.screenshot({ path: join(RESULTS, 'e2e-wasm-fallback.png') });
    await p2.close();
  });

  it('trains a LoRA in the tab with a live loss chart and offers it for download', async () => {
    await page.fill('#train-steps', '3');
    await page.fill('#train-batch', '4');
    await page.click('#train');
    await page.waitForSelector('#train-status[data-done]', { timeout: 180_000 });
    expect(await page.getAttribute('#train-status', 'data-steps')).toBe('3');
    const download = page.waitForEvent('download');
    await page.click('#download');
    expect((await download).suggestedFilename()).toMatch(/adapter_(config\.json|model\.safetensors)$/);
    // The trained adapter is active and generates.
    const ids = await generateInPage();
    expect(ids.length).toBeGreaterThan(0);
    expect(await page.getAttribute('#gen-output', 'data-adapter')).toMatch(/^lora/);
    mkdirSync(RESULTS, { recursive: true });
    await page.screenshot({ path: join(RESULTS, 'e2e.png'), fullPage: true });
  });
});
