#!/usr/bin/env node
// House rule (DESIGN.md §1): the model never leaks into the layers below or beside it. Fails when a
// T5 name — the model's module names, its family's names — appears in a package's sources other than
// packages/t5, and when a package imports one it must not (the dependency direction).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const T5_NAMES = /\bT5\b|\bt5\b|flan-t5|\bmt5\b|SelfAttention|EncDecAttention|DenseReluDense|\bwi_0\b|\bwi_1\b|relative_attention_bias/i;
// what each package may import among adapterkit's (the one-way direction)
const ALLOWED = {
  backend: [],
  kernels: ['backend'],
  core: ['backend'],
  init: ['backend', 'core'],
  compose: ['backend', 'core'],
  bottleneck: ['backend', 'kernels', 'core', 'init', 'compose'],
  lora: ['backend', 'kernels', 'core', 'init', 'compose'],
  prefix: ['backend', 'kernels', 'core', 'init', 'compose'],
  prompt: ['backend', 'core', 'compose'],
  presets: ['backend', 'core', 'bottleneck', 'lora', 'prefix'],
  t5: ['backend', 'kernels', 'core'],
  train: ['backend', 'kernels', 'core'],
};

const files = (dir) => readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? files(join(dir, f)) : /\.ts$/.test(f) ? [join(dir, f)] : []));
const problems = [];
for (const pkg of readdirSync(join(root, 'packages'))) {
  const src = join(root, 'packages', pkg, 'src');
  try {
    statSync(src);
  } catch {
    continue;
  }
  if (!(pkg in ALLOWED)) problems.push(`packages/${pkg}: not in scripts/check-boundaries.mjs's dependency table`);
  for (const file of files(src)) {
    const text = readFileSync(file, 'utf8');
    text.split('\n').forEach((line, i) => {
      if (pkg !== 't5' && T5_NAMES.test(line)) problems.push(`${relative(root, file)}:${i + 1}: T5 name outside packages/t5: ${line.trim()}`);
      for (const m of line.matchAll(/from '@adapterkit\/([a-z0-9-]+)/g)) {
        if (m[1] !== pkg && !(ALLOWED[pkg] ?? []).includes(m[1])) problems.push(`${relative(root, file)}:${i + 1}: ${pkg} must not import @adapterkit/${m[1]}`);
      }
    });
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  console.error(`\ncheck-boundaries: ${problems.length} problem(s)`);
  process.exit(1);
}
console.log('check-boundaries: no T5 name outside packages/t5; every import follows the dependency direction');
