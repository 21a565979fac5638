// The guides' examples run: "Adding a method" (packages/core/README.md) on the fixture T5, and the first
// example of the backend, compose and presets READMEs (the model id they load is served by a local Hub stand-in).
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend, tf } from '@adapterkit/backend';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { FIXTURE_DIR, loadFixtureModel, logitsOf, maxDiff } from '@adapterkit/t5/test';
import { startHubServer } from '@adapterkit/core/test';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import './guide/scale-method.js';

describe("core README's method example (learned scale on every ffn_out)", () => {
  let model: T5ForConditionalGeneration;
  beforeAll(async () => {
    await initBackend('cpu');
    model = await loadFixtureModel();
  });
  afterAll(() => model.dispose());

  it('starts as the base model, and scaling an output equals scaling the kernel columns', async () => {
    const base = await logitsOf(model);
    model.addAdapter('sc', 'scale');
    model.setActiveAdapters('sc');
    expect(maxDiff((await logitsOf(model)).data, base.data)).toBeLessThan(1e-6);

    // seeded vectors on every feed-forward output projection
    const vars = model.adapters.adapterVariables('sc');
    expect(vars.size).toBe(model.linearSites().filter((s) => s.role === 'ffn_out').length);
    let i = 0;
    for (const v of vars.values()) v.assign(tf.tidy(() => tf.linspace(0.5, 1.5 + 0.1 * i++, v.size).reshape(v.shape)));
    const adapted = await logitsOf(model);
    expect(maxDiff(adapted.data, base.data)).toBeGreaterThan(1e-3);

    // the same effect folded into the frozen kernels [in, out] ⊙ vector [1, out]
    model.setActiveAdapters(null);
    const originals = new Map<string, tf.Tensor>();
    for (const [key, v] of vars) {
      const site = key.slice(0, -'.scale'.length);
      const kernel = model.readLinearWeight(site);
      originals.set(site, kernel);
      const scaled = kernel.mul(v);
      model.writeLinearWeight(site, scaled);
      scaled.dispose();
    }
    expect(maxDiff((await logitsOf(model)).data, adapted.data)).toBeLessThan(1e-4);
    for (const [site, kernel] of originals) model.writeLinearWeight(site, kernel);
    tf.dispose([...originals.values()]);
    expect(maxDiff((await logitsOf(model)).data, base.data)).toBe(0);
    model.deleteAdapter('sc');
  });

  it('refuses unknown options and unsupported compositions by name', () => {
    expect(() => model.addAdapter('x', { method: 'scale', rank: 4 })).toThrow(/unknown scale option 'rank'/);
    model.addAdapter('a', 'scale');
    model.addAdapter('b', 'scale');
    expect(() => model.setActiveAdapters({ type: 'Parallel', children: ['a', 'b'] } as never)).toThrow(/Parallel/);
    model.deleteAdapter('a');
    model.deleteAdapter('b');
  });
});

describe('the guides stay true', () => {
  it("core README's method example is scale-method.ts, verbatim", () => {
    const readme = readFileSync(fileURLToPath(new URL('../../../packages/core/README.md', import.meta.url)), 'utf8');
    const file = readFileSync(fileURLToPath(new URL('./guide/scale-method.ts', import.meta.url)), 'utf8');
    const code = file.slice(file.indexOf('import { tf }'));
    expect(readme).toContain(`\`\`\`ts\n${code}\`\`\``);
  });
});

const README_EXAMPLES = ['core', 'backend', 'compose', 'presets'] as const;

describe('package READMEs: the first example runs as written', () => {
  const cache = mkdtempSync(join(tmpdir(), 'adapterkit-guide-hub-'));
  let close: () => Promise<void> = async () => {};
  const saved = { HF_ENDPOINT: process.env.HF_ENDPOINT, HF_HUB_CACHE: process.env.HF_HUB_CACHE };
  beforeAll(async () => {
    const files = Object.fromEntries(
      readdirSync(FIXTURE_DIR, { withFileTypes: true })
        .filter((e) => e.isFile())
        .map((e) => [e.name, new Uint8Array(readFileSync(join(FIXTURE_DIR, e.name)))]),
    );
    const hub = await startHubServer({ 'google/flan-t5-small': { commit: '0'.repeat(40), files } });
    close = hub.close;
    process.env.HF_ENDPOINT = hub.endpoint;
    process.env.HF_HUB_CACHE = cache;
  });
  afterAll(async () => {
    await close();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(cache, { recursive: true, force: true });
  });

  for (const pkg of README_EXAMPLES) {
    it(`${pkg}: guide/${pkg}-example.ts runs, and the README holds it verbatim`, async () => {
      const readme = readFileSync(fileURLToPath(new URL(`../../../packages/${pkg}/README.md`, import.meta.url)), 'utf8');
      const file = readFileSync(fileURLToPath(new URL(`./guide/${pkg}-example.ts`, import.meta.url)), 'utf8');
      const code = file.slice(file.indexOf('import '));
      await import(`./guide/${pkg}-example.ts`);
      expect(readme).toContain(`\`\`\`ts\n${code}\`\`\``);
    });
  }
});
