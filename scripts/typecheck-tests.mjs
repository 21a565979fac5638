#!/usr/bin/env node
// Type-checks every package's tests: runs the repo's own TypeScript (`tsc -p <pkg>/tsconfig.test.json`)
// for each package under packages/, apps/ and tools/ that has a tsconfig.test.json, one after another.
// Sibling packages resolve to their sources (the "@adapterkit/source" condition, as under vitest), except in
// apps/web, whose config extends its own tsconfig.json and sees siblings' built dist/*.d.ts (run `pnpm build`).
// Prints one line per package, keeps going after a failure (its errors are printed below its line),
// and exits 1 if any package failed.
// Usage: node scripts/typecheck-tests.mjs [package dir …]   (e.g. packages/core; default: all)
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');

const all = ['packages', 'apps', 'tools'].flatMap((group) => {
  const dir = join(root, group);
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(join(dir, e.name, 'tsconfig.test.json')))
    .map((e) => `${group}/${e.name}`)
    .sort();
});

const wanted = process.argv.slice(2).map((p) => relative(root, resolve(p)).replace(/\\/g, '/'));
const unknown = wanted.filter((p) => !all.includes(p));
if (unknown.length > 0) {
  console.error(`no tsconfig.test.json in: ${unknown.join(', ')}`);
  process.exit(2);
}
const pkgs = wanted.length > 0 ? wanted : all;

const failed = [];
for (const pkg of pkgs) {
  const started = Date.now();
  const r = spawnSync(process.execPath, [tsc, '-p', `${pkg}/tsconfig.test.json`, '--pretty', 'false'], { cwd: root, encoding: 'utf8' });
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  if (r.status === 0) {
    console.log(`ok    ${pkg} (${secs}s)`);
    continue;
  }
  // Tell errors in test files from those in the sources they import (another package's, possibly mid-edit).
  const files = [...out.matchAll(/^(.+?)\(\d+,\d+\): error TS\d+/gm)].map((m) => m[1].replace(/\\/g, '/'));
  const inTests = files.filter((f) => /(^|\/)test\/|(^|\/)vite(st)?\.config\.ts$/.test(f)).length;
  const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;
  const why = r.error
    ? r.error.message
    : files.length > 0
      ? `${plural(files.length, 'error')}: ${inTests} in tests, ${files.length - inTests} in sources`
      : `exit ${r.status ?? r.signal}`;
  console.log(`FAIL  ${pkg} (${why}, ${secs}s)`);
  if (out) console.log(out.replace(/^/gm, '      '));
  failed.push(pkg);
}

console.log(
  failed.length === 0 ? `\ntest type-check passed: ${pkgs.length} package(s)` : `\ntest type-check failed in ${failed.length} of ${pkgs.length} package(s): ${failed.join(', ')}`,
);
process.exit(failed.length === 0 ? 0 : 1);
