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

export async function readBytes(source: string): Promise<Uint8Array> {
  if (isNode && !/^(https?|blob|data):/i.test(source)) {
    const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
    try {
      const buf: Uint8Array = await fs.readFile(source);
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (e) {
      const code = (e as { code?: string }).code;
      throw new FileError(code === 'ENOENT' ? `file not found: ${source}` : `cannot read ${source}: ${(e as Error).message}`, source);
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
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * Single-page-app servers (Vite's dev server and preview, many static hosts) answer a missing path with
 * index.html and status 200: an HTML response for a file that is not .html means the file is not there.
 */
function isHtmlFallback(source: string, res: Response): boolean {
  const type = res.headers.get('content-type') ?? '';
  return /^\s*text\/html/i.test(type) && !/\.html?$/i.test(new URL(source, 'http://x/').pathname);
}

export async function readText(source: string): Promise<string> {
  return new TextDecoder().decode(await readBytes(source));
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
