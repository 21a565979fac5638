#!/usr/bin/env node
// The `adapterkit` command. It is committed (dist/ is not), so package managers link it at install time,
// before the first build: `pnpm adapterkit …` from the repository root, `npx adapterkit …` after install.
import { existsSync } from 'node:fs';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('adapterkit: the CLI is not built yet; run `pnpm build` in the repository first\n');
  process.exit(1);
}
const { run } = await import(cli.href);
run(process.argv);
