import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const here = dirname(fileURLToPath(import.meta.url));

// tfjs-backend-wasm is a dependency of @adapterkit/backend (pnpm keeps it out of this app's node_modules),
// so its .wasm files are found from there and served/emitted under /tfjs-wasm/ (see setWasmPaths in main.ts).
const requireFromBackend = createRequire(createRequire(import.meta.url).resolve('@adapterkit/backend/package.json'));
const wasmDir = join(dirname(requireFromBackend.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist');
const WASM_FILES = ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm'];

function tfjsWasmFiles(): Plugin {
  return {
    name: 'adapterkit-tfjs-wasm-files',
    configureServer(server) {
      server.middlewares.use((req, res, next) => {
        const m = /^\/tfjs-wasm\/([\w.-]+\.wasm)$/.exec(req.url ?? '');
        if (!m || !WASM_FILES.includes(m[1])) return next();
        res.setHeader('content-type', 'application/wasm');
        res.end(readFileSync(join(wasmDir, m[1])));
      });
    },
    generateBundle() {
      for (const f of WASM_FILES) {
        if (existsSync(join(wasmDir, f))) this.emitFile({ type: 'asset', fileName: `tfjs-wasm/${f}`, source: readFileSync(join(wasmDir, f)) });
      }
    },
  };
}

export default defineConfig({
  // Relative asset URLs: the built site works from any folder of a static host (the page resolves the model
  // and the .wasm files against document.baseURI).
  base: './',
  // The bundled tiny model lives once in the repo, in the CLI package: served from there at /tiny-gated/.
  publicDir: join(here, '../node/models'),
  plugins: [tfjsWasmFiles()],
  build: { target: 'es2022', chunkSizeWarningLimit: 4000 },
  preview: { host: '127.0.0.1' },
  server: { host: '127.0.0.1' },
  test: { testTimeout: 240_000, hookTimeout: 240_000, pool: 'forks' },
} as Parameters<typeof defineConfig>[0]);
