import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HubAuthError, type HubError, HubIntegrityError, HubNotFoundError, HubOfflineError } from '../src/errors.js';
import { type HubOptions, type HubProgress, hubFileUrl, isHubId, openSource, parseHubId } from '../src/hub.js';
import { type HubServer, startHubServer } from './hub-server.js';

const COMMIT = 'a'.repeat(40);
const OLD_COMMIT = 'b'.repeat(40);
const weights = new Uint8Array(70_000).map((_, i) => (i * 7) & 0xff);
const config = '{"hidden_size":8}';
const root = mkdtempSync(join(tmpdir(), 'adapterkit-hub-'));
let hub: HubServer;
let n = 0;
/** A fresh cache directory per test: what one test downloads never serves another. */
const freshCache = () => join(root, `cache-${n++}`);
const repoDir = (cache: string) => join(cache, 'models--org--tiny');

beforeAll(async () => {
  hub = await startHubServer({
    'org/tiny': { commit: COMMIT, refs: ['main', 'v1'], files: { 'config.json': config, 'model.safetensors': weights, 'sub/extra.json': '{}' } },
    'org/private': { commit: COMMIT, files: { 'config.json': config }, token: 'hf_secret' },
  });
});
afterAll(async () => {
  await hub.close();
  rmSync(root, { recursive: true, force: true });
});
afterEach(() => {
  hub.truncate.clear();
  hub.corrupt.clear();
  hub.renamed.clear();
});

const opts = (cacheDir: string, extra: HubOptions = {}): HubOptions => ({ endpoint: hub.endpoint, cacheDir, ...extra });
const since = (start: number) => hub.log.slice(start);

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

describe('Hub ids', () => {
  it('parses org/name and @revision; paths and URLs are not ids', () => {
    expect(parseHubId('someone/small-model')).toEqual({ repo: 'someone/small-model', revision: undefined });
    expect(parseHubId('someone/small-model@refs/pr/1')).toEqual({ repo: 'someone/small-model', revision: 'refs/pr/1' });
    expect(parseHubId('hf://small-model')).toEqual({ repo: 'small-model', revision: undefined });
    for (const notId of ['./models/tiny', '/abs/dir', 'https://x.org/a', 'a/b/c', 'tiny', 'a--b/c', 'a/..', '../x']) expect(isHubId(notId), notId).toBe(false);
    expect(hubFileUrl('https://huggingface.co/', 'org/x', 'refs/pr/1', 'sub/model.bin')).toBe('https://huggingface.co/org/x/resolve/refs%2Fpr%2F1/sub/model.bin');
  });

  it('an existing local directory wins over a Hub id', async () => {
    const cwd = process.cwd();
    const dir = join(root, 'local');
    mkdirSync(join(dir, 'org', 'tiny'), { recursive: true });
    writeFileSync(join(dir, 'org', 'tiny', 'config.json'), 'local');
    process.chdir(dir);
    try {
      const src = await openSource('org/tiny', opts(freshCache()));
      expect(new TextDecoder().decode(await src.read('config.json'))).toBe('local');
    } finally {
      process.chdir(cwd);
    }
  });
});

describe('download and cache (huggingface_hub layout)', () => {
  it('downloads through the CDN redirect, reports progress, and lays out blobs, refs and snapshot symlinks', async () => {
    const cache = freshCache();
    const events: HubProgress[] = [];
    const start = hub.log.length;
    const src = await openSource('org/tiny', opts(cache, { onProgress: (p) => events.push(p) }));
    expect(src.name).toBe('tiny');
    expect(await src.read('model.safetensors')).toEqual(weights);
    expect(new TextDecoder().decode(await src.read('config.json'))).toBe(config);
    // The LFS file: HEAD (302 to the CDN, headers read there), then GET from the CDN only.
    expect(since(start).map((r) => `${r.method} ${r.path.startsWith('/cdn/') ? 'cdn' : r.path}`)).toEqual([
      'HEAD /org/tiny/resolve/main/model.safetensors',
      'GET cdn',
      'HEAD /org/tiny/resolve/main/config.json',
      'GET /org/tiny/resolve/main/config.json',
    ]);
    const last = events.filter((e) => e.file === 'model.safetensors').at(-1);
    expect(last).toMatchObject({ repo: 'org/tiny', revision: 'main', loaded: weights.byteLength, total: weights.byteLength, done: true });

    const dir = repoDir(cache);
    expect(readFileSync(join(dir, 'refs', 'main'), 'utf8')).toBe(COMMIT);
    const sha = (await import('node:crypto')).createHash('sha256').update(weights).digest('hex');
    const pointer = join(dir, 'snapshots', COMMIT, 'model.safetensors');
    expect(lstatSync(pointer).isSymbolicLink()).toBe(true);
    expect(readlinkSync(pointer)).toBe(`../../blobs/${sha}`);
    expect(readFileSync(join(dir, 'blobs', sha))).toEqual(Buffer.from(weights));
    expect(readdirSync(join(dir, 'blobs')).some((f) => f.includes('incomplete'))).toBe(false);
  });

  it('a second load is served from the cache: online it asks only for metadata, offline not at all', async () => {
    const cache = freshCache();
    await (await openSource('org/tiny', opts(cache))).read('model.safetensors');
    let start = hub.log.length;
    expect(await (await openSource('org/tiny', opts(cache))).read('model.safetensors')).toEqual(weights);
    expect(since(start).map((r) => r.method)).toEqual(['HEAD']);
    start = hub.log.length;
    expect(await (await openSource('org/tiny', opts(cache, { offline: true }))).read('model.safetensors')).toEqual(weights);
    expect(since(start)).toEqual([]);
    // A commit asked for by hash never changes: no request either, online.
    expect(await (await openSource(`org/tiny@${COMMIT}`, opts(cache))).read('model.safetensors')).toEqual(weights);
    expect(since(start)).toEqual([]);
    // Another ref to the same commit reuses the blob (metadata only).
    await (await openSource('org/tiny@v1', opts(cache))).read('model.safetensors');
    expect(since(start).map((r) => r.method)).toEqual(['HEAD']);
    expect(readFileSync(join(repoDir(cache), 'refs', 'v1'), 'utf8')).toBe(COMMIT);
  });

  it('a file the repo lacks: has() is false, recorded in .no_exist, and read() names repo, file and revision', async () => {
    const cache = freshCache();
    const src = await openSource('org/tiny', opts(cache));
    expect(await src.has('tokenizer_config.json')).toBe(false);
    expect(lstatSync(join(repoDir(cache), '.no_exist', COMMIT, 'tokenizer_config.json')).isFile()).toBe(true);
    const err = await rejection(src.read('tokenizer_config.json'));
    expect(err).toBeInstanceOf(HubNotFoundError);
    expect(err.message).toMatch(/org\/tiny has no file tokenizer_config\.json at revision 'main'/);
    expect(await (await openSource('org/tiny', opts(cache, { offline: true }))).has('tokenizer_config.json')).toBe(false);
    expect(await src.has('sub/extra.json')).toBe(true);
  });

  it('404 for a revision, 401 for a private repo without a token; the token goes to the Hub, not to the CDN', async () => {
    const cache = freshCache();
    const rev = await rejection((await openSource('org/tiny@nope', opts(cache))).read('config.json'));
    expect(rev).toBeInstanceOf(HubNotFoundError);
    expect(rev.message).toMatch(/revision 'nope' not found in org\/tiny/);
    const auth = await rejection((await openSource('org/private', opts(cache))).read('config.json'));
    expect(auth).toBeInstanceOf(HubAuthError);
    expect(auth.message).toMatch(/HTTP 401 .*org\/private.*HF_TOKEN/);
    expect((auth as HubError).file).toBe('config.json');
    const wrong = await rejection((await openSource('org/private', opts(cache, { token: 'bad' }))).read('config.json'));
    expect(wrong.message).toMatch(/token was refused/);
    expect(new TextDecoder().decode(await (await openSource('org/private', opts(cache, { token: 'hf_secret' }))).read('config.json'))).toBe(config);

    const start = hub.log.length;
    await (await openSource('org/tiny', opts(freshCache(), { token: 'hf_other' }))).read('model.safetensors');
    expect(since(start).map((r) => [r.path.startsWith('/cdn/') ? 'cdn' : 'hub', r.auth])).toEqual([
      ['hub', true],
      ['cdn', false],
    ]);
  });

  it('a renamed repo (relative redirect) is followed', async () => {
    hub.renamed.set('old/tiny', 'org/tiny');
    expect(new TextDecoder().decode(await (await openSource('old/tiny', opts(freshCache()))).read('config.json'))).toBe(config);
  });

  it('a truncated or corrupted download is an integrity error and leaves nothing in the cache', async () => {
    for (const mode of ['truncate', 'corrupt'] as const) {
      hub[mode].add('model.safetensors');
      const cache = freshCache();
      const err = await rejection((await openSource('org/tiny', opts(cache))).read('model.safetensors'));
      expect(err, mode).toBeInstanceOf(HubIntegrityError);
      expect(err.message).toMatch(mode === 'truncate' ? /ended after \d+ of 70000 bytes/ : /sha256 [0-9a-f]{64} differs/);
      const blobs = join(repoDir(cache), 'blobs');
      expect(existsSync(blobs) ? readdirSync(blobs) : []).toEqual([]);
      hub[mode].clear();
    }
  });

  it('offline and not cached, or the Hub unreachable and not cached, is an offline error; unreachable but cached serves the cache', async () => {
    const cache = freshCache();
    const offline = await rejection((await openSource('org/tiny', opts(cache, { offline: true }))).read('config.json'));
    expect(offline).toBeInstanceOf(HubOfflineError);
    expect(offline.message).toMatch(/org\/tiny@main is not in the cache .* offline mode is on/);
    const saved = process.env.HF_HUB_OFFLINE;
    process.env.HF_HUB_OFFLINE = '1';
    try {
      expect(await rejection((await openSource('org/tiny', opts(cache))).has('config.json'))).toBeInstanceOf(HubOfflineError);
    } finally {
      if (saved === undefined) delete process.env.HF_HUB_OFFLINE;
      else process.env.HF_HUB_OFFLINE = saved;
    }
    await (await openSource('org/tiny', opts(cache))).read('config.json');
    const down = { endpoint: 'http://127.0.0.1:9', cacheDir: cache };
    expect(new TextDecoder().decode(await (await openSource('org/tiny', down)).read('config.json'))).toBe(config);
    const err = await rejection((await openSource('org/tiny', down)).read('model.safetensors'));
    expect(err).toBeInstanceOf(HubOfflineError);
    expect((err as HubError).reason).toBe('network');
  });
});

describe('a cache huggingface_hub wrote', () => {
  it('is found through HF_HOME and read offline: refs → snapshot symlinks → blobs', async () => {
    // The layout huggingface_hub's hf_hub_download leaves (file_download.py): blobs named by etag, refs/<branch>
    // holding the commit, snapshots/<commit>/<file> relative symlinks, .no_exist markers for absent files.
    const home = join(root, 'hf-home');
    const dir = join(home, 'hub', 'models--org--py');
    mkdirSync(join(dir, 'blobs'), { recursive: true });
    mkdirSync(join(dir, 'refs'));
    mkdirSync(join(dir, 'snapshots', OLD_COMMIT, 'sub'), { recursive: true });
    mkdirSync(join(dir, '.no_exist', OLD_COMMIT), { recursive: true });
    writeFileSync(join(dir, 'refs', 'main'), OLD_COMMIT);
    writeFileSync(join(dir, 'blobs', 'c'.repeat(64)), weights);
    writeFileSync(join(dir, 'blobs', 'd'.repeat(40)), config);
    symlinkSync(`../../blobs/${'c'.repeat(64)}`, join(dir, 'snapshots', OLD_COMMIT, 'model.safetensors'));
    symlinkSync(`../../../blobs/${'d'.repeat(40)}`, join(dir, 'snapshots', OLD_COMMIT, 'sub', 'config.json'));
    writeFileSync(join(dir, '.no_exist', OLD_COMMIT, 'tokenizer.json'), '');
    const saved = { HF_HOME: process.env.HF_HOME, HF_HUB_CACHE: process.env.HF_HUB_CACHE, HF_HUB_OFFLINE: process.env.HF_HUB_OFFLINE };
    process.env.HF_HOME = home;
    delete process.env.HF_HUB_CACHE;
    process.env.HF_HUB_OFFLINE = 'true';
    try {
      const src = await openSource('org/py');
      expect(await src.read('model.safetensors')).toEqual(weights);
      expect(new TextDecoder().decode(await src.read('sub/config.json'))).toBe(config);
      expect(await src.has('tokenizer.json')).toBe(false);
      // Not recorded either way: absent as far as the cached snapshot goes, but reading it says offline.
      expect(await src.has('generation_config.json')).toBe(false);
      expect(await rejection(src.read('generation_config.json'))).toBeInstanceOf(HubOfflineError);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
