/**
 * What `serve` checks about its callers before it reads a body: the Host (DNS rebinding: a page on
 * evil.example resolving to 127.0.0.1 sends `Host: evil.example`), the Origin (a cross-site page posting
 * to a local server), the content type (a `text/plain` post needs no CORS preflight, so only JSON is
 * accepted), the API key; and where adapters may be loaded from over HTTP.
 */
import { timingSafeEqual, createHash } from 'node:crypto';
import { lstat, readdir, realpath, stat } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export interface GuardOptions {
  /** Host names (without port) a request may name besides 127.0.0.1, localhost and [::1]. */
  allowedHosts?: string[];
  /** Origins (scheme://host[:port]) allowed to call besides this server's own. */
  allowedOrigins?: string[];
  apiKey?: string;
}

const LOCAL_HOSTS = ['127.0.0.1', 'localhost', '[::1]'];

/** Checks Host, Origin and the API key; `port` is the port the server listens on. */
export function checkCaller(req: IncomingMessage, port: number, o: GuardOptions, path: string): void {
  const host = req.headers.host;
  const hosts = new Set([...LOCAL_HOSTS, ...(o.allowedHosts ?? [])].map((h) => h.toLowerCase()));
  const [name, hostPort] = splitHost(host ?? '');
  if (!host || !hosts.has(name) || (hostPort !== undefined && Number(hostPort) !== port)) {
    throw new HttpError(403, 'bad_host', `Host '${host ?? ''}' is not served here (allowed: ${[...hosts].join(', ')}; --allowed-host adds one)`);
  }
  const origin = req.headers.origin;
  if (origin !== undefined) {
    const own = [...LOCAL_HOSTS].map((h) => `http://${h}:${port}`);
    const allowed = new Set([...own, ...(o.allowedOrigins ?? [])].map((x) => x.toLowerCase().replace(/\/$/, '')));
    if (!allowed.has(origin.toLowerCase())) throw new HttpError(403, 'bad_origin', `Origin '${origin}' may not call this server (--allowed-origin adds one)`);
  }
  if (o.apiKey !== undefined && path !== '/health') {
    const auth = req.headers.authorization;
    const given = typeof auth === 'string' && /^Bearer /i.test(auth) ? auth.slice(7).trim() : req.headers['x-api-key'];
    if (typeof given !== 'string' || !sameSecret(given, o.apiKey)) {
      throw new HttpError(401, 'unauthorized', 'a valid API key is required (Authorization: Bearer <key> or X-API-Key)', { 'www-authenticate': 'Bearer' });
    }
  }
}

function splitHost(host: string): [string, string | undefined] {
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d+))?$/.exec(host.toLowerCase());
  return m ? [m[1], m[2]] : [host.toLowerCase(), undefined];
}

/** Constant-time comparison (of digests, so lengths do not leak either). */
function sameSecret(a: string, b: string): boolean {
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

/** A POST body must be JSON: anything else could come from a cross-site form or `text/plain` fetch. */
export function checkJson(req: IncomingMessage): void {
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') throw new HttpError(415, 'unsupported_media_type', `the body must be application/json, got '${req.headers['content-type'] ?? 'none'}'`);
}

/** Adapter names: no path separators, `..`, control characters or composition syntax. */
export function checkAdapterName(name: string): void {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(name) || name.includes('..')) {
    throw new HttpError(400, 'bad_name', `adapter name '${name.slice(0, 64)}' must be letters, digits, '_', '-', '.' (no '..'), at most 128 characters`);
  }
}

/**
 * Resolves an adapter directory requested over HTTP inside `root` (relative paths are taken from it).
 * Symlinks are resolved first, for the directory and every entry in it: nothing may lead out of the root,
 * and only regular files and directories are read. 403 outside.
 */
export async function adapterDirInside(root: string, requested: string): Promise<string> {
  const realRoot = await realpath(root);
  const inside = (p: string) => {
    const rel = relative(realRoot, p);
    return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
  };
  const target = isAbsolute(requested) ? requested : resolve(realRoot, requested);
  let real: string;
  try {
    real = await realpath(target);
  } catch {
    if (!inside(resolve(target))) throw outside(requested);
    throw new HttpError(404, 'file_error', `no adapter directory '${requested}' under the adapter root`);
  }
  if (!inside(real)) throw outside(requested);
  if (!(await stat(real)).isDirectory()) throw new HttpError(400, 'not_a_directory', `'${requested}' is not a directory`);
  for (const entry of await readdir(real)) {
    const p = join(real, entry);
    const link = (await lstat(p)).isSymbolicLink();
    const target = link ? await realpath(p).catch(() => undefined) : p;
    if (!target || !inside(target)) throw outside(`${requested}/${entry}`);
    const st = await stat(target);
    // a FIFO would block the reader, a device (/dev/zero) never ends
    if (!st.isFile() && !st.isDirectory()) throw new HttpError(403, 'not_a_file', `'${requested}/${entry}' is not a regular file`);
  }
  return real;
}

const outside = (p: string) => new HttpError(403, 'outside_adapter_root', `'${p}' is outside the adapter root`);
