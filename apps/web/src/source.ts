/**
 * Where the model comes from, and its download progress.
 *
 * `modelSourceUrl` is the one place a Hugging Face Hub id plugs in: today an `org/name` (optionally
 * `org/name@revision`) becomes the Hub's resolve URL, fetched without a cache; core's Hub resolver (with the
 * browser Cache API cache) replaces this function when it lands. Anything else is a URL, relative to the page.
 */
export function modelSourceUrl(input: string, pageUrl: string): string {
  const v = input.trim() || 'tiny-gated/';
  const hub = /^([A-Za-z0-9][\w.-]*\/[\w.-]+)(?:@([\w./-]+))?$/.exec(v);
  if (hub && !/^\.\.?\//.test(v) && !/^[\w-]+\.[a-z]{2,}\//i.test(v)) return `https://huggingface.co/${hub[1]}/resolve/${encodeURIComponent(hub[2] ?? 'main')}`;
  return new URL(v, pageUrl).href.replace(/\/+$/, '');
}

export interface DownloadProgress {
  /** The file being downloaded (last path segment). */
  file: string;
  /** Bytes received over every file so far. */
  loaded: number;
  /** Bytes announced (content-length) over every file started so far; 0 when unknown. */
  total: number;
  /** Files finished. */
  files: number;
}

/**
 * Runs `fn` while counting the bytes of every GET under `prefix` (the model loader fetches each file once),
 * so the page can show a progress bar for a loader that has no progress events yet. fetch is restored after.
 */
export async function withDownloadProgress<T>(prefix: string, onProgress: (p: DownloadProgress) => void, fn: () => Promise<T>): Promise<T> {
  const original = globalThis.fetch;
  const state: DownloadProgress = { file: '', loaded: 0, total: 0, files: 0 };
  globalThis.fetch = async (input, init) => {
    const res = await original(input, init);
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if ((init?.method ?? 'GET').toUpperCase() !== 'GET' || !url.startsWith(prefix) || !res.body || !res.ok) return res;
    const file = decodeURIComponent(new URL(url).pathname.split('/').pop() ?? '');
    state.total += Number(res.headers.get('content-length')) || 0;
    state.file = file;
    onProgress({ ...state });
    const counted = res.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, ctl) {
          state.loaded += chunk.byteLength;
          state.file = file;
          onProgress({ ...state });
          ctl.enqueue(chunk);
        },
        flush() {
          state.files++;
          onProgress({ ...state });
        },
      }),
    );
    return new Response(counted, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  try {
    return await fn();
  } finally {
    globalThis.fetch = original;
  }
}
