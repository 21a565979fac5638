import { isNode, nodeImport } from '@adapterkit/backend';
import { FileError } from './errors.js';

/**
 * File access that works in Node (paths) and browsers (URLs, via fetch). Writes are Node-only and atomic:
 * each file goes to a temporary name in the same directory and is renamed into place.
 */
export function isUrl(source: string): boolean {
  return /^(https?|blob|data|file):/i.test(source) || (!isNode && !source.startsWith('/'));
}

export function joinPath(base: string, name: string): string {
  if (base.endsWith('/')) return base + name;
  return `${base}/${name}`;
}

/** The most bytes readBytes reads from one file unless told otherwise (what one Uint8Array can hold). */
export const MAX_FILE_BYTES = 2 ** 32;
/** The most bytes readText / readJson read (configs, tokenizer.json): text files are never gigabytes. */
export const MAX_TEXT_BYTES = 256 * 2 ** 20;

export interface ReadOptions {
  /** Refuse a file larger than this (FileError) before reading it; default MAX_FILE_BYTES. */
  maxBytes?: number;
}

/** What a non-regular file is, for the error message. */
function fileKind(st: import('node:fs').Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Reads a whole file (Node path) or URL (fetch). In Node only a regular file is read, and only up to its size
 * at open (never a FIFO that blocks, a device such as /dev/zero that never ends, or a directory, symlinked or
 * not), and only when that size is within `maxBytes`.
 */
export async function readBytes(source: string, options: ReadOptions = {}): Promise<Uint8Array> {
  const maxBytes = options.maxBytes ?? MAX_FILE_BYTES;
  if (isNode && !/^(https?|blob|data):/i.test(source)) {
    const fs = await nodeImport<typeof import('node:fs')>('node:fs');
    let handle: import('node:fs/promises').FileHandle;
    try {
      // O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer.
      handle = await fs.promises.open(source, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
    } catch (e) {
      const code = (e as { code?: string }).code;
      throw new FileError(code === 'ENOENT' ? `file not found: ${source}` : `cannot read ${source}: ${(e as Error).message}`, source);
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new FileError(`cannot read ${source}: it is ${fileKind(st)}; only regular files are read`, source);
      if (st.size > maxBytes) throw new FileError(`cannot read ${source}: ${st.size} bytes is over the limit of ${maxBytes} bytes for this file`, source);
      const out = new Uint8Array(st.size);
      let offset = 0;
      while (offset < st.size) {
        const { bytesRead } = await handle.read(out, offset, st.size - offset, offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
      }
      if (offset !== st.size) throw new FileError(`cannot read ${source}: the file shrank from ${st.size} to ${offset} bytes while being read`, source);
      return out;
    } catch (e) {
      throw e instanceof FileError ? e : new FileError(`cannot read ${source}: ${(e as Error).message}`, source);
    } finally {
      await handle.close();
    }
  }
  let res: Response;
  try {
    res = await fetch(source);
  } catch (e) {
    throw new FileError(`cannot fetch ${source}: ${(e as Error).message}`, source);
  }
  if (!res.ok) throw new FileError(`cannot fetch ${source}: HTTP ${res.status}`, source);
  if (isHtmlFallback(source, res))
    throw new FileError(
      `cannot fetch ${source}: the server answered with an HTML page instead of the file (no such file; a dev server or static host serves index.html for missing paths)`,
      source,
    );
  const declared = Number(res.headers.get('content-length') ?? Number.NaN);
  if (declared > maxBytes) throw new FileError(`cannot fetch ${source}: ${declared} bytes is over the limit of ${maxBytes} bytes for this file`, source);
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (bytes.byteLength > maxBytes) throw new FileError(`cannot fetch ${source}: ${bytes.byteLength} bytes is over the limit of ${maxBytes} bytes for this file`, source);
  return bytes;
}

/**
 * Single-page-app servers (Vite's dev server and preview, many static hosts) answer a missing path with
 * index.html and status 200: an HTML response for a file that is not .html means the file is not there.
 */
function isHtmlFallback(source: string, res: Response): boolean {
  const type = res.headers.get('content-type') ?? '';
  return /^\s*text\/html/i.test(type) && !/\.html?$/i.test(new URL(source, 'http://x/').pathname);
}

export async function readText(source: string, options: ReadOptions = {}): Promise<string> {
  return new TextDecoder().decode(await readBytes(source, { maxBytes: options.maxBytes ?? MAX_TEXT_BYTES }));
}

export async function exists(source: string): Promise<boolean> {
  if (isNode && !/^(https?|blob|data):/i.test(source)) {
    const fs = await nodeImport<typeof import('node:fs')>('node:fs');
    return fs.existsSync(source);
  }
  try {
    const res = await fetch(source, { method: 'HEAD' });
    return res.ok && !isHtmlFallback(source, res);
  } catch {
    return false;
  }
}

/**
 * Parses JSON, turning syntax errors into a FileError that names the file. The result is whatever the file
 * holds: every caller validates it field by field (config parsers), so it is typed as such.
 */
// biome-ignore lint/suspicious/noExplicitAny: untrusted JSON, validated field by field by each caller
export function parseJson(text: string, source: string): any {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FileError(`${source} is not valid JSON: ${(e as Error).message}`, source);
  }
}

// biome-ignore lint/suspicious/noExplicitAny: as parseJson
export async function readJson(source: string): Promise<any> {
  return parseJson(await readText(source), source);
}

/** Writes every file into `dir` atomically (temp file + rename); creates `dir`. Node only. */
export async function writeFilesAtomic(dir: string, files: Record<string, Uint8Array | string>): Promise<void> {
  if (!isNode) throw new FileError('writing files needs Node; in a browser use the serialised bytes (e.g. a download)', dir);
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const path = await nodeImport<typeof import('node:path')>('node:path');
  const temps: [string, string][] = [];
  try {
    // Inside the try: a `dir` that exists as a file (or cannot be created) is a FileError too.
    await fs.mkdir(dir, { recursive: true });
    for (const [name, content] of Object.entries(files)) {
      const target = path.join(dir, name);
      const tmp = `${target}.tmp-${process.pid}-${Date.now()}`;
      const handle = await fs.open(tmp, 'w');
      // Recorded before writing, so a failed write's temp file is removed as well.
      temps.push([tmp, target]);
      try {
        await handle.writeFile(content);
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    for (const [tmp, target] of temps) await fs.rename(tmp, target);
  } catch (e) {
    for (const [tmp] of temps) await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw new FileError(`cannot write into ${dir}: ${(e as Error).message}`, dir);
  }
}

/**
 * Atomic directories. A directory `<parent>/<base>` is written as `.<base>.tmp-<tag>` (every file synced),
 * renamed to `.<base>.new-<tag>` when complete, and then swapped in: the old copy is renamed aside to
 * `.<base>.old-<tag>`, the new one renamed to `<base>`, the old one removed. A crash at any moment leaves
 * `<base>` complete (old or new), or — only between the two renames — absent with a complete `.new-` (and
 * `.old-`) beside it, which readers fall back to (resolveAtomicDir) and the next write rolls into place.
 * A `.tmp-` directory is never complete and is only ever removed.
 */
const LEFTOVER = /^\.(.+)\.(tmp|new|old)-(\d+)-(\d+)-[0-9a-f]+$/;

/** Whether a process of that id still runs (a live writer's leftovers are its work in progress). */
function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const handle = await fs.open(dir, 'r').catch(() => undefined);
  if (!handle) return;
  // Directory fsync makes the renames durable; some platforms refuse it (EISDIR, EPERM), which is harmless.
  await handle.sync().catch(() => undefined);
  await handle.close();
}

/** The complete copies beside a missing atomic directory, best first: newest `.new-` (complete, unrenamed), then newest `.old-`. */
async function completeLeftovers(parent: string, base: string, live: 'skip' | 'include'): Promise<{ news: string[]; olds: string[]; temps: string[] }> {
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const out = { news: [] as [number, string][], olds: [] as [number, string][], temps: [] as [number, string][] };
  let entries: string[];
  try {
    entries = await fs.readdir(parent);
  } catch {
    return { news: [], olds: [], temps: [] };
  }
  for (const e of entries) {
    const m = LEFTOVER.exec(e);
    if (!m || m[1] !== base) continue;
    if (live === 'skip' && processAlive(Number(m[3]))) continue;
    const list = m[2] === 'new' ? out.news : m[2] === 'old' ? out.olds : out.temps;
    list.push([Number(m[4]), e]);
  }
  const newest = (l: [number, string][]) => l.sort((a, b) => b[0] - a[0]).map(([, e]) => e);
  return { news: newest(out.news), olds: newest(out.olds), temps: newest(out.temps) };
}

/**
 * The directory to read for an atomically written `dir`: `dir` itself when it exists, else the complete copy
 * a crash between the two renames of a write left beside it (the new one, else the old one); `dir` when
 * there is none (the caller then reports it missing). Reads only: never moves or removes anything.
 */
export async function resolveAtomicDir(dir: string): Promise<string> {
  if (!isNode || isUrl(dir) || (await exists(dir))) return dir;
  const path = await nodeImport<typeof import('node:path')>('node:path');
  const resolved = path.resolve(dir);
  const { news, olds } = await completeLeftovers(path.dirname(resolved), path.basename(resolved), 'include');
  const pick = news[0] ?? olds[0];
  return pick ? path.join(path.dirname(resolved), pick) : dir;
}

/**
 * Cleans what interrupted atomic writes left in `parent` (for one `base`, or every base): a missing directory
 * gets its newest complete copy back, then temporary, superseded and old copies are removed. Leftovers of a
 * process that still runs are left alone (its write is in progress).
 */
export async function cleanAtomicLeftovers(parent: string, base?: string): Promise<void> {
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const path = await nodeImport<typeof import('node:path')>('node:path');
  let bases: string[];
  if (base !== undefined) bases = [base];
  else {
    const entries = await fs.readdir(parent).catch(() => [] as string[]);
    bases = [...new Set(entries.map((e) => LEFTOVER.exec(e)?.[1]).filter((b): b is string => !!b))];
  }
  for (const b of bases) {
    const { news, olds, temps } = await completeLeftovers(parent, b, 'skip');
    const target = path.join(parent, b);
    const complete = news[0] ?? olds[0];
    const restored = complete !== undefined && !(await exists(target));
    if (restored) await fs.rename(path.join(parent, complete), target);
    for (const e of [...news, ...olds, ...temps]) if (!(restored && e === complete)) await fs.rm(path.join(parent, e), { recursive: true, force: true });
  }
}

export interface WriteDirOptions {
  /** Entries an existing directory may hold besides the new files' own: replaced (dropped) by the write. */
  replaces?: readonly string[];
  /** Entries an existing directory may hold that are copied into the new one (regular files, e.g. README.md). */
  carries?: readonly string[];
  /**
   * An existing directory that holds anything else (or is the working directory or above it) is not ours to
   * swap: 'refuse' (default) is a FileError; 'in-place' writes the files into it one by one instead, each
   * atomically (writeFilesAtomic), as a directory shared with other content cannot be swapped whole, and then
   * removes the `replaces` entries the new files do not overwrite.
   */
  shared?: 'refuse' | 'in-place';
}

/**
 * Writes `files` (paths relative to `dir`, '/'-separated, subdirectories allowed) as the whole new content of
 * `dir`, atomically (see above): readers see the old directory or the new one, never a mix, and the old one is
 * removed only after the new one is in place. An existing `dir` holding anything else than the new files'
 * names, `replaces` and `carries` is refused (FileError): it is not ours to replace. Node only.
 */
export async function writeDirAtomic(dir: string, files: Record<string, Uint8Array | string>, options: WriteDirOptions = {}): Promise<void> {
  if (!isNode) throw new FileError('writing files needs Node; in a browser use the serialised bytes (e.g. a download)', dir);
  const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
  const path = await nodeImport<typeof import('node:path')>('node:path');
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  const base = path.basename(target);
  if (!base || target === parent) throw new FileError(`cannot write into ${dir}: not a directory that can be replaced`, dir);
  const topLevel = new Set<string>();
  for (const rel of Object.keys(files)) {
    const parts = rel.split('/');
    if (path.isAbsolute(rel) || parts.some((p) => p === '' || p === '.' || p === '..' || p.includes('\\')))
      throw new FileError(`cannot write into ${dir}: '${rel}' is not a path inside the directory`, dir);
    topLevel.add(parts[0]);
  }
  const tag = `${process.pid}-${Date.now()}-${Math.floor(Math.random() * 2 ** 32).toString(16)}`;
  const tmp = path.join(parent, `.${base}.tmp-${tag}`);
  const ready = path.join(parent, `.${base}.new-${tag}`);
  const old = path.join(parent, `.${base}.old-${tag}`);
  let movedAside = false;
  try {
    await fs.mkdir(parent, { recursive: true });
    await cleanAtomicLeftovers(parent, base);
    const existing = await fs.lstat(target).catch((e: { code?: string }) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    let carry: string[] = [];
    if (existing) {
      if (!existing.isDirectory()) throw new Error(`${target} exists and is ${existing.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}`);
      const entries: string[] = await fs.readdir(target);
      const foreign = entries.filter((e) => !topLevel.has(e) && !options.replaces?.includes(e) && !options.carries?.includes(e));
      const holdsCwd = `${process.cwd()}${path.sep}`.startsWith(`${target}${path.sep}`);
      if ((foreign.length || holdsCwd) && options.shared === 'in-place') {
        await writeFilesAtomic(dir, files);
        // What the write replaces goes after the new files are in place (e.g. a weights file of another format).
        for (const e of entries) if (!topLevel.has(e) && options.replaces?.includes(e)) await fs.rm(path.join(target, e));
        return;
      }
      if (holdsCwd) throw new Error('it is the working directory or contains it');
      if (foreign.length) throw new Error(`it holds ${foreign.map((e) => `'${e}'`).join(', ')}, which this write would drop; write into an empty or new directory`);
      carry = entries.filter((e) => !topLevel.has(e) && options.carries?.includes(e));
    }
    await fs.mkdir(tmp);
    for (const [rel, content] of Object.entries(files)) {
      const file = path.join(tmp, ...rel.split('/'));
      await fs.mkdir(path.dirname(file), { recursive: true });
      const handle = await fs.open(file, 'wx');
      try {
        await handle.writeFile(content);
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    for (const e of carry) if ((await fs.lstat(path.join(target, e))).isFile()) await fs.copyFile(path.join(target, e), path.join(tmp, e));
    await syncDirectory(tmp);
    await fs.rename(tmp, ready); // complete from here on
    if (existing) {
      await fs.rename(target, old);
      movedAside = true;
    }
    await fs.rename(ready, target);
    movedAside = false;
    await syncDirectory(parent);
    await fs.rm(old, { recursive: true, force: true });
  } catch (e) {
    if (movedAside) await fs.rename(old, target).catch(() => undefined);
    for (const leftover of [tmp, ready]) await fs.rm(leftover, { recursive: true, force: true }).catch(() => undefined);
    throw e instanceof FileError ? e : new FileError(`cannot write into ${dir}: ${(e as Error).message}`, dir);
  }
}
