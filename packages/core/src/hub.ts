import { isNode, nodeImport } from '@adapterkit/backend';
import { FileError, HubAuthError, HubError, type HubFileRef, HubIntegrityError, HubNotFoundError, HubOfflineError } from './errors.js';
import { exists, joinPath, readBytes } from './io.js';
import { type OptionKeys, rejectUnknownOptions } from './options.js';

/**
 * Hugging Face Hub ids (`org/name`, `org/name@revision`, `hf://name`) for models and adapters, resolved the
 * way huggingface_hub resolves them — `{endpoint}/{repo}/resolve/{revision}/{file}`, metadata from a HEAD
 * request (X-Repo-Commit, X-Linked-Etag/ETag, X-Linked-Size/Content-Length, redirects to a CDN) — and cached:
 * in Node in huggingface_hub's own cache layout (so Python and adapterkit share downloads), in a browser in
 * the Cache API.
 */

/** A directory of files, wherever it lives: a local path, a URL, or a Hub repository at a revision. */
export interface FileSource {
  /** What to call it in messages: the path, the URL or `org/name@revision`. */
  readonly label: string;
  /** Its last path segment (`my-lora` for `someone/my-lora`), a default name for what it holds. */
  readonly name: string;
  has(file: string): Promise<boolean>;
  read(file: string): Promise<Uint8Array>;
}

/** One step of a file's download. */
export interface HubProgress {
  repo: string;
  revision: string;
  file: string;
  /** Bytes received so far. */
  loaded: number;
  /** The size the Hub announced, when it did. */
  total?: number;
  done: boolean;
}

export interface HubOptions {
  /** Branch, tag or commit (default `main`, or the `@revision` of the id). */
  revision?: string;
  /** The Hub's address (default `HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string;
  /** Access token sent as `Authorization: Bearer` (default `HF_TOKEN`, else `$HF_HOME/token` in Node). */
  token?: string;
  /** Use the cache only, never the network (default: `HF_HUB_OFFLINE` is 1/true/yes/on). */
  offline?: boolean;
  /** Where downloads are kept: default huggingface_hub's cache directory in Node, the Cache API in a browser; null: none. */
  cache?: HubCache | null;
  /** Node: the cache directory (default `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). */
  cacheDir?: string;
  /** Called as each file downloads (not for files read from the cache). */
  onProgress?: (progress: HubProgress) => void;
}
export const HUB_OPTIONS = {
  revision: true,
  endpoint: true,
  token: true,
  offline: true,
  cache: true,
  cacheDir: true,
  onProgress: true,
} as const satisfies OptionKeys<HubOptions>;

/** What the Hub says about one version of a file. */
export interface HubFileMeta {
  /** The commit the revision resolved to (X-Repo-Commit). */
  commit: string;
  /** git blob sha1, or the sha256 of an LFS file (X-Linked-Etag, else ETag; quotes and W/ removed). */
  etag: string;
  /** Size in bytes (X-Linked-Size, else Content-Length). */
  size?: number;
  /** Where the bytes are (the resolve URL, or the CDN address it redirects to). */
  location: string;
}

/**
 * Where Hub downloads are kept. `get` answers without the network (offline, or a commit asked for by hash);
 * `getVersion` answers after the Hub named the file's commit and etag, so a new commit that keeps a file
 * reuses its bytes.
 */
export interface HubCache {
  readonly label: string;
  /** The file's bytes at `ref.revision`; 'missing' when the cache records that the repo lacks it there; undefined when unknown. */
  get(ref: HubFileRef): Promise<Uint8Array | 'missing' | undefined>;
  /** Whether the cache knows `repo` at `revision` at all (a file it lacks then is absent, offline). */
  hasRevision(repo: string, revision: string): Promise<boolean>;
  /** The bytes stored for this version of the file (by etag), recording them for `ref`; undefined when not stored. */
  getVersion(ref: HubFileRef, meta: HubFileMeta): Promise<Uint8Array | undefined>;
  put(ref: HubFileRef, meta: HubFileMeta, bytes: Uint8Array): Promise<void>;
  /** Records that the repo has no such file at `commit`. */
  putMissing(ref: HubFileRef, commit: string): Promise<void>;
}

const COMMIT_HASH = /^[0-9a-f]{40}$/;
const SHA256 = /^[0-9a-f]{64}$/;
const DEFAULT_ENDPOINT = 'https://huggingface.co';

type NodeModules = { fs: typeof import('node:fs/promises'); path: typeof import('node:path'); os: typeof import('node:os') };
let nodeModulesOnce: Promise<NodeModules> | undefined;
/** Node's fs, path and os, imported once (never in a browser bundle). */
function node(): Promise<NodeModules> {
  nodeModulesOnce ??= Promise.all([nodeImport<NodeModules['fs']>('node:fs/promises'), nodeImport<NodeModules['path']>('node:path'), nodeImport<NodeModules['os']>('node:os')]).then(
    ([fs, path, os]) => ({ fs, path, os }),
  );
  return nodeModulesOnce;
}

function env(name: string): string | undefined {
  return isNode ? process.env[name] || undefined : undefined;
}

/** huggingface_hub's truthy environment values. */
function envFlag(name: string): boolean {
  return ['1', 'true', 'yes', 'on'].includes((env(name) ?? '').toLowerCase());
}

/** huggingface_hub's repo id rule: `name` or `namespace/name`, letters, digits, `-_.`, no `--` or `..`, ≤ 96 characters. */
function validRepoId(id: string): boolean {
  return id.length <= 96 && /^([\w.-]+\/)?[\w.-]+$/.test(id) && !id.includes('--') && !id.includes('..') && !/(^|\/)[.-]|[.-]($|\/)/.test(id);
}

/**
 * Splits `org/name@revision` (or `hf://org/name@revision`, which also allows a bare `name`) into repo and
 * revision; undefined when `source` is no Hub id.
 */
export function parseHubId(source: string): { repo: string; revision?: string } | undefined {
  const explicit = source.startsWith('hf://');
  const id = explicit ? source.slice(5) : source;
  const at = id.indexOf('@');
  const repo = at < 0 ? id : id.slice(0, at);
  const revision = at < 0 ? undefined : id.slice(at + 1);
  if (!validRepoId(repo) || (!explicit && !repo.includes('/'))) return undefined;
  if (revision !== undefined && !/^[\w./-]+$/.test(revision)) return undefined;
  return { repo, revision };
}

/** Whether `source` names a Hub repository rather than a path or URL (an existing local path wins in Node). */
export function isHubId(source: string): boolean {
  return source.startsWith('hf://') || (!/^[a-z][a-z0-9+.-]*:/i.test(source) && parseHubId(source) !== undefined);
}

/** `{endpoint}/{repo}/resolve/{revision}/{file}`, as huggingface_hub's hf_hub_url builds it. */
export function hubFileUrl(endpoint: string, repo: string, revision: string, file: string): string {
  return `${endpoint.replace(/\/+$/, '')}/${repo}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`;
}

/** huggingface_hub's cache directory: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub. Node only. */
export async function defaultHubCacheDir(): Promise<string> {
  const { path, os } = await node();
  const expand = (p: string) => (p.startsWith('~') ? path.join(os.homedir(), p.slice(1)) : p);
  const explicit = env('HF_HUB_CACHE') ?? env('HUGGINGFACE_HUB_CACHE');
  if (explicit) return expand(explicit);
  return path.join(await hfHome(), 'hub');
}

async function hfHome(): Promise<string> {
  const { path, os } = await node();
  const expand = (p: string) => (p.startsWith('~') ? path.join(os.homedir(), p.slice(1)) : p);
  return expand(env('HF_HOME') ?? path.join(env('XDG_CACHE_HOME') ?? path.join(os.homedir(), '.cache'), 'huggingface'));
}

/** The default cache of this runtime: huggingface_hub's directory in Node, the Cache API in a browser, else none. */
export async function defaultHubCache(cacheDir?: string): Promise<HubCache | null> {
  if (isNode) return new FsHubCache(cacheDir ?? (await defaultHubCacheDir()));
  if (typeof caches !== 'undefined') return new BrowserHubCache();
  return null;
}

/**
 * Opens a model or adapter directory: a URL, a local path (an existing path wins over a Hub id, as in
 * transformers), or a Hub id. Hub options are only for Hub ids.
 */
export async function openSource(source: string, options: HubOptions = {}): Promise<FileSource> {
  rejectUnknownOptions(options, HUB_OPTIONS, 'hub options');
  const hub = source.startsWith('hf://') || (isHubId(source) && !(isNode && (await exists(source)))) ? parseHubId(source) : undefined;
  if (source.startsWith('hf://') && !hub) throw new FileError(`${source} is not a valid Hub id (hf://org/name or hf://org/name@revision)`, source);
  if (!hub) {
    const dir = source.replace(/\/+$/, '') || source;
    return { label: dir, name: lastSegment(dir), has: (file) => exists(joinPath(dir, file)), read: (file) => readBytes(joinPath(dir, file)) };
  }
  if (hub.revision && options.revision && hub.revision !== options.revision) {
    throw new FileError(`${source} names revision '${hub.revision}' but the options ask for '${options.revision}'`, source);
  }
  const cache = options.cache !== undefined ? options.cache : await defaultHubCache(options.cacheDir);
  return new HubSource(hub.repo, hub.revision ?? options.revision ?? 'main', options, cache);
}

function lastSegment(path: string): string {
  return path.split(/[/\\]/).filter(Boolean).pop() ?? path;
}

type Resolved = { bytes: Uint8Array } | { meta: HubFileMeta } | { missing: 'remote' | 'unknown' };

class HubSource implements FileSource {
  readonly label: string;
  readonly name: string;
  private readonly endpoint: string;
  private readonly offline: boolean;
  private readonly resolved = new Map<string, Promise<Resolved>>();
  private token?: Promise<string | undefined>;

  constructor(
    readonly repo: string,
    readonly revision: string,
    private readonly options: HubOptions,
    private readonly cache: HubCache | null,
  ) {
    this.label = `${repo}@${revision}`;
    this.name = lastSegment(repo);
    this.endpoint = (options.endpoint ?? env('HF_ENDPOINT') ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
    this.offline = options.offline ?? envFlag('HF_HUB_OFFLINE');
  }

  async has(file: string): Promise<boolean> {
    return !('missing' in (await this.resolve(file)));
  }

  async read(file: string): Promise<Uint8Array> {
    const r = await this.resolve(file);
    const ref = this.ref(file);
    if ('bytes' in r) return r.bytes;
    if ('meta' in r) return this.download(ref, r.meta);
    if (r.missing === 'remote') throw new HubNotFoundError(`${this.repo} has no file ${file} at revision '${this.revision}' (${this.endpoint})`, ref);
    throw new HubOfflineError(
      `${file} of ${this.repo}@${this.revision} is not in the cache (${this.cache?.label ?? 'none'}) and offline mode is on (HF_HUB_OFFLINE or offline: true)`,
      ref,
    );
  }

  private ref(file: string): HubFileRef {
    return { repo: this.repo, file, revision: this.revision };
  }

  /** One resolution per file: `has` then `read` costs one HEAD request. */
  private resolve(file: string): Promise<Resolved> {
    let r = this.resolved.get(file);
    if (!r) {
      r = this.resolveUncached(this.ref(file));
      this.resolved.set(file, r);
    }
    return r;
  }

  private async resolveUncached(ref: HubFileRef): Promise<Resolved> {
    const cached = async (): Promise<Resolved | undefined> => {
      const c = await this.cache?.get(ref);
      if (c === 'missing') return { missing: 'remote' };
      return c ? { bytes: c } : undefined;
    };
    if (this.offline) {
      const c = await cached();
      if (c) return c;
      if (await this.cache?.hasRevision(ref.repo, ref.revision)) return { missing: 'unknown' };
      throw new HubOfflineError(`${ref.repo}@${ref.revision} is not in the cache (${this.cache?.label ?? 'none'}) and offline mode is on (HF_HUB_OFFLINE or offline: true)`, ref);
    }
    // A commit asked for by hash cannot change: what the cache holds for it is final.
    if (COMMIT_HASH.test(ref.revision)) {
      const c = await cached();
      if (c) return c;
    }
    let meta: HubFileMeta | { notFound: string | undefined };
    try {
      meta = await this.head(ref);
    } catch (e) {
      if (!(e instanceof NetworkFailure)) throw e;
      // As huggingface_hub: the Hub unreachable, the last download of this revision serves.
      const c = await cached();
      if (c) return c;
      throw new HubOfflineError(`cannot reach ${this.endpoint} for ${ref.file} of ${ref.repo}@${ref.revision} (${e.message}) and it is not in the cache`, ref, 'network');
    }
    if ('notFound' in meta) {
      if (meta.notFound) await this.cache?.putMissing(ref, meta.notFound);
      return { missing: 'remote' };
    }
    const bytes = await this.cache?.getVersion(ref, meta);
    return bytes ? { bytes } : { meta };
  }

  private async headers(withAuth: boolean): Promise<Record<string, string>> {
    // identity: Content-Length must be the file's size, as huggingface_hub asks.
    const h: Record<string, string> = { 'Accept-Encoding': 'identity' };
    if (withAuth) {
      this.token ??= this.options.token !== undefined ? Promise.resolve(this.options.token) : readToken();
      const token = await this.token;
      if (token) h.Authorization = `Bearer ${token}`;
    }
    return h;
  }

  /** HEAD without following redirects to other hosts (their headers are the CDN's, not the Hub's), as huggingface_hub. */
  private async head(ref: HubFileRef): Promise<HubFileMeta | { notFound: string | undefined }> {
    let url = hubFileUrl(this.endpoint, ref.repo, ref.revision, ref.file);
    const headers = await this.headers(true);
    for (let hop = 0; ; hop++) {
      let res = await request(url, { method: 'HEAD', headers, redirect: 'manual' });
      // Browsers hide a redirect's headers; there the final response's headers are what there is.
      if (res.type === 'opaqueredirect') res = await request(url, { method: 'HEAD', headers, redirect: 'follow' });
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location) {
        const target = new URL(location, url);
        // A relative redirect is the Hub's own (a renamed repo): follow it for the metadata.
        if (!/^[a-z][a-z0-9+.-]*:/i.test(location) && hop < 5) {
          url = target.href;
          continue;
        }
        return this.metadata(res, ref, target.href);
      }
      if (res.status === 404 && !['RepoNotFound', 'RevisionNotFound'].includes(res.headers.get('x-error-code') ?? '')) {
        return { notFound: res.headers.get('x-repo-commit') ?? undefined };
      }
      this.check(res, ref);
      return this.metadata(res, ref, res.url || url);
    }
  }

  private metadata(res: Response, ref: HubFileRef, location: string): HubFileMeta {
    const commit = res.headers.get('x-repo-commit');
    const etag = normalizeEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag'));
    const sizeHeader = res.headers.get('x-linked-size') ?? res.headers.get('content-length');
    const size = sizeHeader !== null && /^\d+$/.test(sizeHeader) ? Number(sizeHeader) : undefined;
    if (!commit || !etag) {
      throw new HubError(
        'protocol',
        `${this.endpoint} answered for ${ref.file} of ${ref.repo} without ${commit ? 'an ETag' : 'an X-Repo-Commit'} header: is it a Hugging Face Hub?`,
        ref,
      );
    }
    return { commit, etag, size, location };
  }

  /** Turns an error status into the typed error that says what to do. */
  private check(res: Response, ref: HubFileRef): void {
    if (res.ok) return;
    const code = res.headers.get('x-error-code');
    const what = `${ref.file} of ${ref.repo}@${ref.revision} (${this.endpoint})`;
    if (res.status === 401 || res.status === 403) {
      const hint =
        code === 'GatedRepo'
          ? `${ref.repo} is gated: accept its conditions on its Hub page, then use a token of that account`
          : this.options.token !== undefined || env('HF_TOKEN')
            ? `the token was refused: it needs read access to ${ref.repo} (or the repository does not exist)`
            : `${ref.repo} is private or gated, or does not exist: set HF_TOKEN (or pass token) with read access`;
      throw new HubAuthError(`HTTP ${res.status} for ${what}: ${hint}`, ref);
    }
    if (res.status === 404) {
      if (code === 'RevisionNotFound') throw new HubNotFoundError(`revision '${ref.revision}' not found in ${ref.repo} (${this.endpoint})`, ref);
      if (code === 'RepoNotFound') throw new HubNotFoundError(`repository ${ref.repo} not found on ${this.endpoint}`, ref);
      throw new HubNotFoundError(`${ref.repo} has no file ${ref.file} at revision '${ref.revision}' (${this.endpoint})`, ref);
    }
    throw new HubError('network', `HTTP ${res.status} for ${what}`, ref);
  }

  private async download(ref: HubFileRef, meta: HubFileMeta): Promise<Uint8Array> {
    // The token goes only to the Hub, never to the CDN a file redirects to (as huggingface_hub).
    const sameOrigin = new URL(meta.location).origin === new URL(this.endpoint).origin;
    const res = await request(meta.location, { headers: await this.headers(sameOrigin), redirect: 'follow' }).catch((e: NetworkFailure) => {
      throw new HubOfflineError(`cannot download ${ref.file} of ${ref.repo}@${ref.revision}: ${e.message}`, ref, 'network');
    });
    this.check(res, ref);
    const total = meta.size;
    const progress = (loaded: number, done: boolean) => this.options.onProgress?.({ repo: ref.repo, revision: ref.revision, file: ref.file, loaded, total, done });
    const chunks: Uint8Array[] = [];
    let loaded = 0;
    const short = () => new HubIntegrityError(`download of ${ref.file} of ${ref.repo}@${ref.revision} ended after ${loaded} of ${total ?? '?'} bytes`, ref);
    if (total !== undefined) checkDownloadSize(total, ref);
    progress(0, false);
    try {
      const reader = res.body?.getReader();
      if (reader) {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          chunks.push(value);
          loaded += value.byteLength;
          if (total !== undefined && loaded > total) throw new HubIntegrityError(`download of ${ref.file} of ${ref.repo} is larger than the ${total} bytes announced`, ref);
          progress(loaded, false);
        }
      }
    } catch (e) {
      if (e instanceof HubError) throw e;
      throw short();
    }
    if (total !== undefined && loaded !== total) throw short();
    const bytes = concat(chunks, loaded);
    // LFS files' etag is their sha256; git blobs' (a sha1 of the git object) is not checked.
    if (SHA256.test(meta.etag)) {
      const digest = hex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>)));
      if (digest !== meta.etag) throw new HubIntegrityError(`${ref.file} of ${ref.repo}@${ref.revision}: sha256 ${digest} differs from the ${meta.etag} the Hub announced`, ref);
    }
    await this.cache?.put(ref, meta, bytes);
    progress(loaded, true);
    return bytes;
  }
}

/** A file larger than an ArrayBuffer can hold is refused before anything is allocated. */
function checkDownloadSize(total: number, ref: HubFileRef): void {
  const limit = 2 ** 32;
  if (total > limit)
    throw new HubError('protocol', `${ref.file} of ${ref.repo} is ${total} bytes; files above ${limit} bytes cannot be read into memory (use a sharded checkpoint)`, ref);
}

/** The network could not be reached (fetch rejected): the case where the cache may answer instead. */
class NetworkFailure extends Error {}

async function request(url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new NetworkFailure(cause?.code ?? cause?.message ?? (e as Error).message);
  }
}

async function readToken(): Promise<string | undefined> {
  const fromEnv = env('HF_TOKEN') ?? env('HUGGING_FACE_HUB_TOKEN');
  if (fromEnv || !isNode) return fromEnv;
  const { fs, path } = await node();
  try {
    return (await fs.readFile(env('HF_TOKEN_PATH') ?? path.join(await hfHome(), 'token'), 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** huggingface_hub's _normalize_etag: weak prefix and quotes removed. */
function normalizeEtag(etag: string | null): string | undefined {
  if (!etag) return undefined;
  return etag.replace(/^W\//, '').replace(/^"|"$/g, '') || undefined;
}

function concat(chunks: Uint8Array[], length: number): Uint8Array {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * huggingface_hub's cache layout (Node):
 * `models--org--name/{blobs/<etag>, refs/<revision> (the commit), snapshots/<commit>/<file> → ../../blobs/<etag>,
 * .no_exist/<commit>/<file>}`. Blobs are written to a temporary name and renamed into place.
 */
export class FsHubCache implements HubCache {
  constructor(readonly dir: string) {}

  get label(): string {
    return this.dir;
  }

  private async repoDir(repo: string): Promise<string> {
    const { path } = await node();
    return path.join(this.dir, `models--${repo.replace('/', '--')}`);
  }

  private async commitOf(repo: string, revision: string): Promise<string | undefined> {
    if (COMMIT_HASH.test(revision)) return revision;
    const { fs, path } = await node();
    try {
      return (await fs.readFile(path.join(await this.repoDir(repo), 'refs', revision), 'utf8')).trim() || undefined;
    } catch {
      return undefined;
    }
  }

  async get(ref: HubFileRef): Promise<Uint8Array | 'missing' | undefined> {
    const commit = await this.commitOf(ref.repo, ref.revision);
    if (!commit) return undefined;
    const { path } = await node();
    const dir = await this.repoDir(ref.repo);
    if (await isFile(path.join(dir, '.no_exist', commit, ref.file))) return 'missing';
    return readIfPresent(path.join(dir, 'snapshots', commit, ref.file));
  }

  async hasRevision(repo: string, revision: string): Promise<boolean> {
    const commit = await this.commitOf(repo, revision);
    const { fs, path } = await node();
    if (!commit) return false;
    for (const sub of ['snapshots', '.no_exist']) {
      if (
        await fs.stat(path.join(await this.repoDir(repo), sub, commit)).then(
          (s) => s.isDirectory(),
          () => false,
        )
      )
        return true;
    }
    return false;
  }

  async getVersion(ref: HubFileRef, meta: HubFileMeta): Promise<Uint8Array | undefined> {
    const { path } = await node();
    const dir = await this.repoDir(ref.repo);
    const pointer = path.join(dir, 'snapshots', meta.commit, ref.file);
    const bytes = (await readIfPresent(pointer)) ?? (await readIfPresent(path.join(dir, 'blobs', meta.etag)));
    if (bytes) await this.link(ref, meta);
    return bytes;
  }

  async put(ref: HubFileRef, meta: HubFileMeta, bytes: Uint8Array): Promise<void> {
    const { fs, path } = await node();
    const blob = path.join(await this.repoDir(ref.repo), 'blobs', meta.etag);
    try {
      await fs.mkdir(path.dirname(blob), { recursive: true });
      const tmp = `${blob}.${process.pid}-${Date.now()}.incomplete`;
      try {
        await fs.writeFile(tmp, bytes);
        await fs.rename(tmp, blob);
      } catch (e) {
        await fs.rm(tmp, { force: true });
        throw e;
      }
      await this.link(ref, meta);
    } catch (e) {
      throw new FileError(`cannot write ${ref.file} of ${ref.repo} into the Hub cache ${this.dir}: ${(e as Error).message}`, blob);
    }
  }

  async putMissing(ref: HubFileRef, commit: string): Promise<void> {
    const { fs, path } = await node();
    const marker = path.join(await this.repoDir(ref.repo), '.no_exist', commit, ref.file);
    await fs.mkdir(path.dirname(marker), { recursive: true });
    await fs.writeFile(marker, '');
    await this.writeRef(ref.repo, ref.revision, commit);
  }

  /** snapshots/<commit>/<file> → the blob (a relative symlink; a copy where links are refused), and refs/<revision>. */
  private async link(ref: HubFileRef, meta: HubFileMeta): Promise<void> {
    const { fs, path } = await node();
    const dir = await this.repoDir(ref.repo);
    const blob = path.join(dir, 'blobs', meta.etag);
    const pointer = path.join(dir, 'snapshots', meta.commit, ...ref.file.split('/'));
    await this.writeRef(ref.repo, ref.revision, meta.commit);
    if (await isFile(pointer)) return;
    await fs.mkdir(path.dirname(pointer), { recursive: true });
    const tmp = `${pointer}.${process.pid}-${Date.now()}.incomplete`;
    try {
      await fs.symlink(path.relative(path.dirname(pointer), blob), tmp);
    } catch {
      await fs.copyFile(blob, tmp);
    }
    await fs.rename(tmp, pointer);
  }

  private async writeRef(repo: string, revision: string, commit: string): Promise<void> {
    if (revision === commit) return;
    const { fs, path } = await node();
    const file = path.join(await this.repoDir(repo), 'refs', ...revision.split('/'));
    if ((await this.commitOf(repo, revision)) === commit) return;
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}-${Date.now()}.incomplete`;
    await fs.writeFile(tmp, commit);
    await fs.rename(tmp, file);
  }
}

async function isFile(file: string): Promise<boolean> {
  const { fs } = await node();
  return fs.stat(file).then(
    (s) => s.isFile(),
    () => false,
  );
}

async function readIfPresent(file: string): Promise<Uint8Array | undefined> {
  if (!(await isFile(file))) return undefined;
  const { fs } = await node();
  const buf = await fs.readFile(file);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * The browser's Cache API as a Hub cache: one entry per repo, revision and file, its etag and commit in the
 * stored response's headers; a file the repo lacks is an entry marked missing.
 */
export class BrowserHubCache implements HubCache {
  constructor(readonly name = 'adapterkit-hub') {}

  get label(): string {
    return `Cache API '${this.name}'`;
  }

  private key(repo: string, revision: string, file = ''): string {
    return `https://hub.cache.adapterkit/${repo}/resolve/${encodeURIComponent(revision)}/${file}`;
  }

  async get(ref: HubFileRef): Promise<Uint8Array | 'missing' | undefined> {
    const res = await (await caches.open(this.name)).match(this.key(ref.repo, ref.revision, ref.file));
    if (!res) return undefined;
    if (res.headers.get('x-missing') === '1') return 'missing';
    return new Uint8Array(await res.arrayBuffer());
  }

  async hasRevision(repo: string, revision: string): Promise<boolean> {
    const prefix = this.key(repo, revision);
    return (await (await caches.open(this.name)).keys()).some((r) => r.url.startsWith(prefix));
  }

  async getVersion(ref: HubFileRef, meta: HubFileMeta): Promise<Uint8Array | undefined> {
    const res = await (await caches.open(this.name)).match(this.key(ref.repo, ref.revision, ref.file));
    if (!res || res.headers.get('etag') !== meta.etag) return undefined;
    return new Uint8Array(await res.arrayBuffer());
  }

  async put(ref: HubFileRef, meta: HubFileMeta, bytes: Uint8Array): Promise<void> {
    const body = new Uint8Array(bytes).buffer;
    await (await caches.open(this.name)).put(this.key(ref.repo, ref.revision, ref.file), new Response(body, { headers: { etag: meta.etag, 'x-repo-commit': meta.commit } }));
  }

  async putMissing(ref: HubFileRef, commit: string): Promise<void> {
    await (await caches.open(this.name)).put(this.key(ref.repo, ref.revision, ref.file), new Response('', { headers: { 'x-missing': '1', 'x-repo-commit': commit } }));
  }
}
