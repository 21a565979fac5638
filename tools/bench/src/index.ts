/**
 * `node tools/bench/dist/index.js [--suite t5,compose,lora,peer,fastpath] [flags]` (the root `pnpm bench`, and
 * `pnpm --filter @adapterkit/bench bench`): runs the benchmarks one after another, each printing its own
 * table (see t5.ts, compose.ts, lora.ts; each also runs alone: `node tools/bench/dist/<suite>.js`).
 *
 * Flags go to every suite that knows them (--backends, --runs, --warmup, --source, --new-tokens, --quick,
 * --json to all; --models, --no-uncached to t5; --model to compose and lora; --target, --adapters, --rows,
 * --parallel, --parallel-batch to compose; --batch, --prefix-length to lora). Each suite keeps its own
 * defaults (t5: source 128, 32 new tokens, wasm and cpu; compose and lora: source 64, wasm).
 * --quick: a smoke check of everything — compose and lora use the tiny shape, and t5 gets `--models tiny`
 * unless --models is given. With --json each suite prints its own JSON document, in turn.
 */
import { pathToFileURL } from 'node:url';
import type { FlagSpec } from './common.js';
import { COMPOSE_FLAGS, main as composeMain } from './compose.js';
import { LORA_FLAGS, main as loraMain } from './lora.js';
import { main as t5Main } from './t5.js';
import { main as peerMain } from './peer.js';
import { main as fastpathMain } from './fastpath.js';
import { SERVE_FLAGS, main as serveMain } from './serve.js';

/** t5.ts's flags (its parseArgs). */
const T5_FLAGS: FlagSpec[] = [
  ...['--backends', '--models', '--runs', '--warmup', '--source', '--target', '--new-tokens'].map((name) => ({ name, value: true })),
  ...['--quick', '--no-uncached', '--json'].map((name) => ({ name, value: false })),
];

function flagsOf(withValue: string[], switches: string[]): FlagSpec[] {
  return [...withValue.map((name) => ({ name, value: true })), ...switches.map((name) => ({ name, value: false }))];
}

interface Suite {
  flags: FlagSpec[];
  run: (argv: string[]) => Promise<unknown>;
}

export const SUITES: Record<string, Suite> = {
  t5: { flags: T5_FLAGS, run: t5Main },
  compose: { flags: COMPOSE_FLAGS, run: composeMain },
  lora: { flags: LORA_FLAGS, run: loraMain },
  peer: { flags: flagsOf(['--peer', '--batches', '--runs', '--source', '--target', '--threads'], ['--no-reference', '--json']), run: peerMain },
  fastpath: {
    flags: flagsOf(['--backends', '--cases', '--tokens', '--runs', '--train-backends', '--batch', '--source', '--target', '--steps'], ['--no-reference', '--json']),
    run: fastpathMain,
  },
  serve: { flags: SERVE_FLAGS, run: serveMain },
};

/** Run when no --suite is given: peer needs ../shared/peer and onnxruntime-node, fastpath takes minutes on SwiftShader, serve about a minute. */
const DEFAULT_SUITES = ['t5', 'compose', 'lora'];

const USAGE = `usage: node tools/bench/dist/index.js [--suite ${Object.keys(SUITES).join(',')}] (default ${DEFAULT_SUITES.join(',')}) [flags of the suites: see t5.ts, compose.ts, lora.ts, peer.ts, fastpath.ts] [--quick] [--json]`;

/** Splits argv into the suites to run and each suite's own arguments. */
export function route(argv: string[]): { suites: string[]; args: Record<string, string[]> } {
  let suites = DEFAULT_SUITES;
  const args: Record<string, string[]> = Object.fromEntries(Object.keys(SUITES).map((s) => [s, []]));
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--suite') {
      const v = argv[++i];
      if (v === undefined) throw new Error('--suite needs a value');
      suites = v.split(',').map((s) => s.trim());
      for (const s of suites) if (!SUITES[s]) throw new Error(`unknown suite '${s}' (${Object.keys(SUITES).join(', ')})`);
      continue;
    }
    if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    }
    const takers = Object.entries(SUITES).filter(([, s]) => s.flags.some((f) => f.name === a));
    if (takers.length === 0) throw new Error(`unknown argument ${a}\n${USAGE}`);
    const takesValue = takers[0][1].flags.find((f) => f.name === a)!.value;
    const value = takesValue ? argv[++i] : undefined;
    if (takesValue && value === undefined) throw new Error(`${a} needs a value`);
    for (const [name] of takers) args[name].push(a, ...(value === undefined ? [] : [value]));
  }
  // A quick smoke check of t5 too: its own --quick keeps the flan shape (1 run), which takes minutes.
  if (args.t5.includes('--quick') && !args.t5.includes('--models')) args.t5.push('--models', 'tiny');
  return { suites, args };
}

export async function main(argv: string[]): Promise<void> {
  const { suites, args } = route(argv);
  for (const name of suites) {
    if (!args[name].includes('--json')) console.log(`\n=== ${name} ===`);
    await SUITES[name].run(args[name]);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
