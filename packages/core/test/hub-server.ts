import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A local stand-in for the Hugging Face Hub's file endpoints, as huggingface_hub's file_download.py reads
 * them: `/{repo}/resolve/{revision}/{file}` answers HEAD and GET with X-Repo-Commit and an ETag (the git blob
 * sha1); LFS files (here: *.safetensors, *.bin) answer 302 to a CDN address with X-Linked-Etag (their sha256)
 * and X-Linked-Size. Errors carry X-Error-Code as the Hub does: 401 RepoNotFound for an unknown or private
 * repo without a token, 404 RevisionNotFound, 404 EntryNotFound (with X-Repo-Commit).
 */
export interface HubRepo {
  commit: string;
  /** Branch and tag names that resolve to `commit` (besides the commit itself); default ['main']. */
  refs?: string[];
  files: Record<string, Uint8Array | string>;
  /** Only answered with `Authorization: Bearer <token>`. */
  token?: string;
}

export interface HubServer {
  endpoint: string;
  /** Every request: method, path, whether it carried an Authorization header. */
  log: { method: string; path: string; auth: boolean }[];
  /** CDN downloads of these files send half their bytes, then close the connection. */
  truncate: Set<string>;
  /** CDN downloads of these files send other bytes of the right length. */
  corrupt: Set<string>;
  /** Old repo ids answered with a relative redirect to the new one (a renamed repo). */
  renamed: Map<string, string>;
  close(): Promise<void>;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const gitBlobSha1 = (b: Uint8Array) => createHash('sha1').update(`blob ${b.byteLength}\0`).update(b).digest('hex');
const isLfs = (file: string) => /\.(safetensors|bin)$/.test(file);

export async function startHubServer(repos: Record<string, HubRepo>): Promise<HubServer> {
  const bytes = (v: Uint8Array | string) => (typeof v === 'string' ? new TextEncoder().encode(v) : v);
  const blobs = new Map<string, { file: string; data: Uint8Array }>();
  for (const repo of Object.values(repos)) for (const [file, v] of Object.entries(repo.files)) if (isLfs(file)) blobs.set(sha256(bytes(v)), { file, data: bytes(v) });

  const state: Omit<HubServer, 'endpoint' | 'close'> = { log: [], truncate: new Set(), corrupt: new Set(), renamed: new Map() };
  // The CDN is another origin (another port), as the Hub's is: the token must not follow the redirect there.
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    state.log.push({ method: req.method ?? '', path: url.pathname, auth: req.headers.authorization !== undefined });
    const send = (status: number, headers: Record<string, string>, body?: Uint8Array) => {
      res.writeHead(status, headers);
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const cdn = url.pathname.match(/^\/cdn\/([0-9a-f]{64})$/);
    if (cdn) {
      const blob = blobs.get(cdn[1]);
      if (!blob) return send(404, {});
      const headers = { 'Content-Length': String(blob.data.byteLength), ETag: `"${cdn[1]}"` };
      if (req.method === 'GET' && state.truncate.has(blob.file)) {
        res.writeHead(200, headers);
        res.write(blob.data.subarray(0, blob.data.byteLength >> 1));
        setTimeout(() => res.destroy(), 20);
        return;
      }
      const data = state.corrupt.has(blob.file) ? blob.data.map((b) => b ^ 0xff) : blob.data;
      return send(200, headers, data);
    }
    const m = url.pathname.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    if (!m) return send(404, {});
    const [, repoId, revision, file] = [m[0], m[1], decodeURIComponent(m[2]), decodeURIComponent(m[3])];
    const moved = state.renamed.get(repoId);
    if (moved) return send(307, { Location: url.pathname.replace(repoId, moved) });
    const repo = repos[repoId];
    if (!repo || (repo.token && req.headers.authorization !== `Bearer ${repo.token}`)) return send(401, { 'X-Error-Code': 'RepoNotFound' });
    if (revision !== repo.commit && !(repo.refs ?? ['main']).includes(revision)) return send(404, { 'X-Error-Code': 'RevisionNotFound' });
    const content = repo.files[file];
    if (content === undefined) return send(404, { 'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': repo.commit });
    const data = bytes(content);
    if (isLfs(file)) {
      const sha = sha256(data);
      return send(302, {
        Location: `http://127.0.0.1:${(cdnServer.address() as AddressInfo).port}/cdn/${sha}`,
        'X-Repo-Commit': repo.commit,
        'X-Linked-Etag': `"${sha}"`,
        'X-Linked-Size': String(data.byteLength),
        ETag: `W/"${gitBlobSha1(data)}"`,
      });
    }
    send(200, { 'X-Repo-Commit': repo.commit, ETag: `"${gitBlobSha1(data)}"`, 'Content-Length': String(data.byteLength) }, data);
  };
  const server = createServer(handler);
  const cdnServer = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  await new Promise<void>((resolve) => cdnServer.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    ...state,
    endpoint,
    close: async () => {
      for (const s of [server, cdnServer]) {
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
    },
  };
}
