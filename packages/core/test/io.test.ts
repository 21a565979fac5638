import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileError } from '../src/errors.js';
import {
  MAX_FILE_BYTES,
  MAX_TEXT_BYTES,
  cleanAtomicLeftovers,
  exists,
  isUrl,
  joinPath,
  parseJson,
  readBytes,
  readJson,
  readText,
  resolveAtomicDir,
  writeDirAtomic,
  writeFilesAtomic,
} from '../src/io.js';

const root = mkdtempSync(join(tmpdir(), 'adapterkit-io-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Every file under `dir`, recursively, relative to it. */
function listAll(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}
const temps = (dir: string) => listAll(dir).filter((f) => f.includes('.tmp-'));

async function expectFileError(p: Promise<unknown>, message?: RegExp): Promise<FileError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a rejection').toBeInstanceOf(FileError);
  const err = caught as FileError;
  expect(err.code).toBe('FILE_ERROR');
  if (message) expect(err.message).toMatch(message);
  return err;
}

describe('writeFilesAtomic', () => {
  it('writes every file (bytes and strings), creating the directory, and leaves no temp files', async () => {
    const dir = join(root, 'out', 'nested');
    await writeFilesAtomic(dir, { 'a.json': '{"x":1}', 'b.bin': Uint8Array.from([1, 2, 3, 255]) });
    expect(listAll(dir)).toEqual(['a.json', 'b.bin']);
    expect(readFileSync(join(dir, 'a.json'), 'utf8')).toBe('{"x":1}');
    expect([...readFileSync(join(dir, 'b.bin'))]).toEqual([1, 2, 3, 255]);
  });

  it('replaces existing files', async () => {
    const dir = join(root, 'replace');
    await writeFilesAtomic(dir, { 'a.txt': 'old' });
    await writeFilesAtomic(dir, { 'a.txt': 'new' });
    expect(readFileSync(join(dir, 'a.txt'), 'utf8')).toBe('new');
    expect(temps(dir)).toEqual([]);
  });

  it('a target directory that is a file → FileError naming it, no temp files', async () => {
    const parent = join(root, 'dir-is-file');
    mkdirSync(parent);
    const target = join(parent, 'adapter');
    writeFileSync(target, 'I am a file');
    const err = await expectFileError(writeFilesAtomic(target, { 'a.json': '{}' }), /cannot write into/);
    expect(err.path).toBe(target);
    expect(err.message).toContain(target);
    expect(temps(parent)).toEqual([]);
    expect(readFileSync(target, 'utf8')).toBe('I am a file');
  });

  it('a directory below a file → FileError', async () => {
    const parent = join(root, 'below-file');
    mkdirSync(parent);
    writeFileSync(join(parent, 'f'), 'x');
    await expectFileError(writeFilesAtomic(join(parent, 'f', 'sub'), { 'a.json': '{}' }));
    expect(temps(parent)).toEqual([]);
  });

  it('a rename that fails (target is a directory) → FileError, every temp file removed', async () => {
    const dir = join(root, 'rename-fails');
    mkdirSync(join(dir, 'b.bin'), { recursive: true });
    await expectFileError(writeFilesAtomic(dir, { 'a.json': '{}', 'b.bin': new Uint8Array(4), 'c.json': '{}' }));
    expect(temps(dir)).toEqual([]);
  });

  it('a write that fails midway → FileError, its temp file and the earlier ones removed', async () => {
    const dir = join(root, 'write-fails');
    await expectFileError(writeFilesAtomic(dir, { 'a.json': '{}', 'b.bin': 42 as unknown as Uint8Array }));
    expect(temps(dir)).toEqual([]);
    expect(listAll(dir)).toEqual([]);
  });

  it('a file in a missing subdirectory → FileError, no temp files', async () => {
    const dir = join(root, 'missing-sub');
    await expectFileError(writeFilesAtomic(dir, { 'a.json': '{}', 'no/such/b.json': '{}' }));
    expect(temps(dir)).toEqual([]);
  });
});

describe('reading', () => {
  it('readBytes / readText / readJson read what was written', async () => {
    const dir = join(root, 'read');
    await writeFilesAtomic(dir, { 'c.json': '{"a":[1,2]}', 'd.bin': Uint8Array.from([7, 8]) });
    expect([...(await readBytes(join(dir, 'd.bin')))]).toEqual([7, 8]);
    expect(await readText(join(dir, 'c.json'))).toBe('{"a":[1,2]}');
    expect(await readJson(join(dir, 'c.json'))).toEqual({ a: [1, 2] });
    expect(await exists(join(dir, 'c.json'))).toBe(true);
    expect(await exists(join(dir, 'nope.json'))).toBe(false);
  });

  it('readBytes of a missing file → FileError naming the path', async () => {
    const missing = join(root, 'does', 'not', 'exist.safetensors');
    const err = await expectFileError(readBytes(missing), /file not found/);
    expect(err.message).toContain(missing);
    expect(err.path).toBe(missing);
  });

  it('readBytes of a directory → FileError naming the path', async () => {
    const err = await expectFileError(readBytes(root), /cannot read/);
    expect(err.path).toBe(root);
  });

  it('parseJson / readJson errors name the file', async () => {
    const err = (() => {
      try {
        parseJson('{"a":', '/models/x/config.json');
      } catch (e) {
        return e as FileError;
      }
    })();
    expect(err).toBeInstanceOf(FileError);
    expect(err!.message).toContain('/models/x/config.json');
    expect(err!.message).toMatch(/not valid JSON/);
    expect(err!.path).toBe('/models/x/config.json');
    const bad = join(root, 'bad.json');
    writeFileSync(bad, 'not json');
    const err2 = await expectFileError(readJson(bad), /not valid JSON/);
    expect(err2.message).toContain(bad);
  });
});

describe('path helpers', () => {
  it('joinPath and isUrl', () => {
    expect(joinPath('a/b', 'c.json')).toBe('a/b/c.json');
    expect(joinPath('https://h/x/', 'c.json')).toBe('https://h/x/c.json');
    expect(isUrl('https://huggingface.co/x')).toBe(true);
    expect(isUrl('file:///tmp/x')).toBe(true);
    expect(isUrl('/tmp/x')).toBe(false);
    expect(isUrl('relative/path')).toBe(false); // Node: a relative path, not a URL
  });
});

describe('reading over HTTP from a server with an index.html fallback (Vite dev/preview, static hosts)', () => {
  // Answers every unknown path with index.html and status 200, as a single-page-app server does.
  async function spaServer(files: Record<string, { type: string; body: string }>) {
    const { createServer } = await import('node:http');
    const server = createServer((req, res) => {
      const f = files[(req.url ?? '/').split('?')[0]] ?? { type: 'text/html', body: '<!doctype html><html></html>' };
      res.writeHead(200, { 'content-type': f.type, 'content-length': Buffer.byteLength(f.body) });
      res.end(req.method === 'HEAD' ? undefined : f.body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { server, base: `http://127.0.0.1:${(server.address() as { port: number }).port}` };
  }

  it('a missing file answered with HTML does not exist, and reading it is a FileError, not a JSON parse error', async () => {
    const { server, base } = await spaServer({ '/m/config.json': { type: 'application/json', body: '{"a":1}' }, '/page.html': { type: 'text/html', body: '<p>hi</p>' } });
    try {
      expect(await exists(`${base}/m/config.json`)).toBe(true);
      expect(await readJson(`${base}/m/config.json`)).toEqual({ a: 1 });
      expect(await exists(`${base}/m/tokenizer_config.json`)).toBe(false);
      const err = await expectFileError(readJson(`${base}/m/tokenizer_config.json`), /HTML page instead of the file/);
      expect(err.path).toBe(`${base}/m/tokenizer_config.json`);
      // An .html file is still read as HTML.
      expect(await exists(`${base}/page.html`)).toBe(true);
      expect(await readText(`${base}/page.html`)).toBe('<p>hi</p>');
    } finally {
      server.close();
    }
  });
});

describe('hostile files (issue 17)', () => {
  it('refuses a FIFO at once (never blocks), a device, a symlink to /dev/zero, a directory symlink', async () => {
    const dir = join(root, 'hostile');
    mkdirSync(dir);
    const fifo = join(dir, 'adapter_model.safetensors');
    execFileSync('mkfifo', [fifo]);
    await expectFileError(readBytes(fifo), /FIFO; only regular files are read/);
    await expectFileError(readBytes('/dev/zero'), /device; only regular files are read/);
    const zero = join(dir, 'model.safetensors');
    symlinkSync('/dev/zero', zero);
    await expectFileError(readBytes(zero), /device/);
    symlinkSync(root, join(dir, 'config.json'));
    await expectFileError(readText(join(dir, 'config.json')), /directory/);
  });

  it('refuses a file over the size limit before reading it; text files have a smaller default limit', async () => {
    const big = join(root, 'big.bin');
    writeFileSync(big, new Uint8Array(1000));
    await expectFileError(readBytes(big, { maxBytes: 999 }), /1000 bytes is over the limit of 999/);
    expect((await readBytes(big, { maxBytes: 1000 })).length).toBe(1000);
    expect(MAX_TEXT_BYTES).toBeLessThan(MAX_FILE_BYTES);
  });
});

describe('writeDirAtomic', () => {
  const entries = (parent: string) => readdirSync(parent).sort();

  it('writes a new directory (nested paths too) and replaces an existing one whole, leaving nothing beside it', async () => {
    const parent = join(root, 'atomic');
    const dir = join(parent, 'a');
    await writeDirAtomic(dir, { 'x.json': '1', 'sub/y.bin': Uint8Array.from([1]) });
    expect(listAll(dir)).toEqual(['sub', 'sub/y.bin', 'x.json']);
    writeFileSync(join(dir, 'README.md'), 'keep me');
    await writeDirAtomic(dir, { 'x.json': '2' }, { replaces: ['sub'], carries: ['README.md'] });
    expect(listAll(dir)).toEqual(['README.md', 'x.json']);
    expect(readFileSync(join(dir, 'x.json'), 'utf8')).toBe('2');
    expect(readFileSync(join(dir, 'README.md'), 'utf8')).toBe('keep me');
    expect(entries(parent)).toEqual(['a']);
  });

  it('refuses to replace a directory holding other things, a file, or paths outside the directory', async () => {
    const dir = join(root, 'foreign');
    mkdirSync(dir);
    writeFileSync(join(dir, 'model.safetensors'), 'not mine');
    await expectFileError(writeDirAtomic(dir, { 'x.json': '1' }), /'model.safetensors', which this write would drop/);
    expect(readFileSync(join(dir, 'model.safetensors'), 'utf8')).toBe('not mine');
    // shared: 'in-place' writes beside the other content instead (each file atomically)
    await writeDirAtomic(dir, { 'x.json': '1' }, { shared: 'in-place' });
    expect(entries(dir)).toEqual(['model.safetensors', 'x.json']);
    // … and removes what it replaces that the new files do not overwrite
    writeFileSync(join(dir, 'stale.bin'), 'old weights');
    await writeDirAtomic(dir, { 'x.json': '2' }, { shared: 'in-place', replaces: ['stale.bin', 'absent.bin'] });
    expect(entries(dir)).toEqual(['model.safetensors', 'x.json']);
    rmSync(join(dir, 'x.json'));
    await expectFileError(writeDirAtomic(join(dir, 'model.safetensors'), { 'x.json': '1' }), /not a directory/);
    await expectFileError(writeDirAtomic(join(root, 'escape'), { '../x.json': '1' }), /not a path inside/);
    expect(entries(dir)).toEqual(['model.safetensors']);
  });

  it('a crash between the two renames: readers get the complete copy beside it, the next write rolls it in and cleans up', async () => {
    const parent = join(root, 'crashed');
    const dir = join(parent, 'b');
    await writeDirAtomic(dir, { 'x.json': 'old' });
    // what a kill after "rename old aside" leaves: no `b`, a complete .new-, the .old-, a half-written .tmp-
    const dead = 2 ** 22 + 7; // above any pid Linux hands out by default
    renameSync(dir, join(parent, `.b.old-${dead}-1-aa`));
    mkdirSync(join(parent, `.b.new-${dead}-1-aa`));
    writeFileSync(join(parent, `.b.new-${dead}-1-aa`, 'x.json'), 'new');
    mkdirSync(join(parent, `.b.tmp-${dead}-2-bb`));
    expect(await resolveAtomicDir(dir)).toBe(join(parent, `.b.new-${dead}-1-aa`));
    await cleanAtomicLeftovers(parent);
    expect(entries(parent)).toEqual(['b']);
    expect(readFileSync(join(dir, 'x.json'), 'utf8')).toBe('new');
  });
});
