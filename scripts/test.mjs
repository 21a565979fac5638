#!/usr/bin/env node
// `pnpm test`: build, the house-rule checks, then every package's tests. Every step after the build runs
// and reports even when an earlier one failed (no fail-fast hiding the rest); exits 1 if any step failed.
// The house rules (written down in CONTRIBUTING.md): Biome lint + format, no duplicated code in
// packages/*/src (jscpd, ≥ 6 lines), the package boundaries, type-checked tests.
import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const steps = [
  { name: 'build', cmd: 'pnpm', args: ['exec', 'turbo', 'run', 'build'], required: true },
  { name: 'lint + format (Biome)', cmd: 'pnpm', args: ['exec', 'biome', 'ci', '--error-on-warnings', '.'] },
  { name: 'duplicates (jscpd over packages/*/src)', cmd: 'sh', args: ['-c', 'pnpm exec jscpd packages/*/src'] },
  { name: 'package boundaries', cmd: 'node', args: ['scripts/check-boundaries.mjs'] },
  { name: 'type-check tests', cmd: 'node', args: ['scripts/typecheck-tests.mjs'] },
  { name: 'tests', cmd: 'pnpm', args: ['exec', 'turbo', 'run', 'test', '--concurrency=1', '--continue'] },
];

const results = [];
for (const step of steps) {
  console.log(`\n==> ${step.name}`);
  const started = Date.now();
  const r = spawnSync(step.cmd, step.args, { cwd: root, stdio: 'inherit' });
  const ok = r.status === 0;
  results.push({ name: step.name, ok, secs: (Date.now() - started) / 1000 });
  if (!ok && step.required) break;
}

console.log('\n==> summary');
for (const r of results) console.log(`${r.ok ? 'ok  ' : 'FAIL'}  ${r.name} (${r.secs.toFixed(0)} s)`);
const skipped = steps.slice(results.length).map((s) => s.name);
if (skipped.length > 0) console.log(`not run (the build failed): ${skipped.join(', ')}`);
process.exit(results.every((r) => r.ok) && skipped.length === 0 ? 0 : 1);
