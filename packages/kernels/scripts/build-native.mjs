#!/usr/bin/env node
// Builds the optional native CPU kernels (native/kernels.cc → build/adapterkit_kernels.node) with the C++
// compiler (OpenMP) and Node's own headers — what Debian's Node and g++ ship; no other library. Optional
// by design: when something is missing it says what and exits 0, and the wasm backend keeps its own
// kernels. ADAPTERKIT_NATIVE_BUILD=0 skips it; =1 makes a failure an error.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'native', 'kernels.cc');
const header = join(root, 'native', 'gemm.h');
const target = join(root, 'build', 'adapterkit_kernels.node');
const mode = process.env.ADAPTERKIT_NATIVE_BUILD ?? 'auto';
if (!['auto', '0', '1'].includes(mode)) {
  console.error(`ADAPTERKIT_NATIVE_BUILD must be 0, 1 or unset, got '${mode}'`);
  process.exit(1);
}

function skip(reason) {
  if (mode === '1') {
    console.error(`native kernels: ${reason}`);
    process.exit(1);
  }
  console.log(`native kernels: skipped (${reason}); the wasm backend uses its own kernels`);
  process.exit(0);
}

if (mode === '0') skip('ADAPTERKIT_NATIVE_BUILD=0');
if (process.platform !== 'linux') skip(`no build recipe for ${process.platform} yet`);
// up to date when newer than its source and than this recipe (flags)
const newest = Math.max(statSync(source).mtimeMs, statSync(header).mtimeMs, statSync(fileURLToPath(import.meta.url)).mtimeMs);
if (existsSync(target) && statSync(target).mtimeMs > newest) process.exit(0);

// Node's headers: next to the running node (/usr/include/node for Debian's), or node-gyp's cache.
const nodeIncludes = [resolve(dirname(process.execPath), '..', 'include', 'node')];
const gypCache = join(process.env.HOME ?? '/root', '.cache', 'node-gyp', process.versions.node, 'include', 'node');
nodeIncludes.push(gypCache);
const nodeInclude = nodeIncludes.find((d) => existsSync(join(d, 'node_api.h')));
if (!nodeInclude) skip(`node_api.h not found (looked in ${nodeIncludes.join(', ')})`);

const compiler = process.env.CXX ?? 'c++';
// no errno, no FP traps: lets the exp/erf polynomials in `omp simd` loops vectorise (neither is ever read)
// -march=native: built where it runs (at install); -ffp-contract=fast: fused multiply-adds in the GEMM
const flags = [
  '-O3',
  '-march=native',
  '-fopenmp',
  '-ffp-contract=fast',
  '-fno-math-errno',
  '-fno-trapping-math',
  '-shared',
  '-fPIC',
  '-std=c++17',
  '-fvisibility=hidden',
  `-I${nodeInclude}`,
];
mkdirSync(dirname(target), { recursive: true });
const started = Date.now();
try {
  execFileSync(compiler, [...flags, source, '-o', target], { stdio: ['ignore', 'inherit', 'inherit'] });
} catch (e) {
  skip(`${compiler} failed (${e.message.split('\n')[0]})`);
}
console.log(`native kernels: built ${target} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
