/**
 * Backend contract harness, modelled on TensorFlow.js's backend test pattern (`describeWithFlags` +
 * per-backend `setup_test.ts` exclude lists): a scenario is written once against the `tf` namespace,
 * runs on `cpu` first (the reference), then on every other backend, whose outputs must have the same
 * names and shapes and lie within the scenario's tolerance (max absolute difference) of cpu's.
 *
 * This module has no test-runner dependency: `test/contract.test.ts` wires it into vitest, and
 * `runContract()` runs the whole contract programmatically (scripts, benchmarks, a browser page).
 */
import { initBackend, tf, type BackendName } from '@adapterkit/backend';
import { EXCLUDES } from './excludes.js';

/** The `tf` namespace exported by @adapterkit/backend (one engine for the whole process). */
export type TF = typeof tf;

/** What a scenario returns: named tensors (the harness reads and disposes them) or plain numbers. */
export type ScenarioOutputs = Record<string, tf.Tensor | number[] | number>;

/** One output, read back to plain numbers. */
export interface Materialized {
  shape: number[];
  values: Float64Array;
}
export type MaterializedOutputs = Record<string, Materialized>;

export interface ScenarioContext {
  /** The backend the scenario is running on (scenarios should not branch on it; it is for messages). */
  backend: BackendName;
}

export interface Scenario {
  /** Unique name; also the key of exclude lists. */
  name: string;
  /**
   * Computes the outputs with the `tf` it is given. Create inputs deterministically (see `seeded`),
   * dispose intermediates (`tf.tidy`, `dispose`), read values only with `await t.data()`.
   */
  run: (tf: TF, ctx: ScenarioContext) => Promise<ScenarioOutputs> | ScenarioOutputs;
  /** Max absolute difference allowed against cpu, per element. Default `DEFAULT_TOLERANCE`. */
  tolerance?: number;
  /** Optional sanity check of the cpu reference itself (throw to fail), e.g. known values. */
  checkReference?: (ref: MaterializedOutputs) => void;
  /** Fail when the scenario leaves tensors behind (after its outputs are disposed). Default true. */
  checkLeaks?: boolean;
}

export const DEFAULT_TOLERANCE = 1e-4;
export const REFERENCE_BACKEND = 'cpu' satisfies BackendName;
/**
 * Every backend Node has here: the contract suite is the one place that checks all of them on every run
 * (37 s for cpu + wasm + webgpu on SwiftShader on two idle cores). Package tests run cpu and wasm only.
 */
export const DEFAULT_BACKENDS = 'cpu,wasm,webgpu';
const KNOWN_BACKENDS: readonly BackendName[] = ['cpu', 'wasm', 'webgpu', 'tensorflow'];

const registry = new Map<string, Scenario>();

/** Registers a scenario (import its file from `src/scenarios/index.ts`). Names must be unique. */
export function defineScenario(scenario: Scenario): Scenario {
  if (!scenario.name) throw new Error('defineScenario: a scenario needs a name');
  if (registry.has(scenario.name)) throw new Error(`defineScenario: duplicate scenario name '${scenario.name}'`);
  if (scenario.tolerance !== undefined && !(scenario.tolerance >= 0)) {
    throw new Error(`defineScenario: '${scenario.name}' has an invalid tolerance ${scenario.tolerance}`);
  }
  registry.set(scenario.name, scenario);
  return scenario;
}

/** Every registered scenario, in registration order. */
export function listScenarios(): Scenario[] {
  return [...registry.values()];
}

export function getScenario(name: string): Scenario {
  const s = registry.get(name);
  if (!s) throw new Error(`unknown scenario '${name}' (registered: ${[...registry.keys()].join(', ')})`);
  return s;
}

/** `{ scenario: reason }` for a backend; scenarios listed there are skipped on it, with the reason shown. */
export function excludesFor(backend: BackendName): Readonly<Record<string, string>> {
  return EXCLUDES[backend] ?? {};
}

/** Exclude-list entries naming no registered scenario (stale entries hide nothing and should go). */
export function staleExcludes(): string[] {
  const stale: string[] = [];
  for (const [backend, list] of Object.entries(EXCLUDES)) {
    for (const name of Object.keys(list)) if (!registry.has(name)) stale.push(`${backend}: ${name}`);
  }
  return stale;
}

/** Parses a comma-separated backend list such as env ADAPTERKIT_BACKENDS (default 'cpu,wasm'). */
export function parseBackends(value: string | undefined = DEFAULT_BACKENDS): BackendName[] {
  const names = (value.trim() === '' ? DEFAULT_BACKENDS : value)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const n of names) {
    if (!KNOWN_BACKENDS.includes(n as BackendName)) {
      throw new Error(`unknown backend '${n}' in backend list '${value}' (known: ${KNOWN_BACKENDS.join(', ')})`);
    }
  }
  return [...new Set(names)] as BackendName[];
}

/** Deterministic pseudo-random values in [-scale, scale) (mulberry32), identical on every backend. */
export function seededValues(size: number, seed: number, scale = 1): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = (u * 2 - 1) * scale;
  }
  return out;
}

/** A float32 tensor of `seededValues` on the active backend. */
export function seeded(shape: number[], seed: number, scale = 1): tf.Tensor {
  return tf.tensor(
    seededValues(
      shape.reduce((a, b) => a * b, 1),
      seed,
      scale,
    ),
    shape,
    'float32',
  );
}

/** Reads every output with `await t.data()` (never dataSync: WebGPU in Node cannot) and disposes tensors. */
export async function materialize(outputs: ScenarioOutputs): Promise<MaterializedOutputs> {
  const result: MaterializedOutputs = {};
  try {
    for (const [key, value] of Object.entries(outputs)) {
      if (value instanceof tf.Tensor) {
        result[key] = { shape: [...value.shape], values: Float64Array.from(await value.data()) };
      } else if (typeof value === 'number') {
        result[key] = { shape: [], values: Float64Array.of(value) };
      } else if (Array.isArray(value)) {
        result[key] = { shape: [value.length], values: Float64Array.from(value) };
      } else {
        throw new Error(`output '${key}' is neither a tf.Tensor nor number[] nor number`);
      }
    }
  } finally {
    for (const value of Object.values(outputs)) if (value instanceof tf.Tensor && !value.isDisposed) value.dispose();
  }
  return result;
}

/** Starts `backend` (making it active) and runs one scenario on it, with a leak check. */
export async function runScenarioOn(backend: BackendName, scenario: Scenario): Promise<MaterializedOutputs> {
  await initBackend(backend);
  const before = tf.memory().numTensors;
  const outputs = await scenario.run(tf, { backend });
  const materialized = await materialize(outputs);
  const leaked = tf.memory().numTensors - before;
  if (scenario.checkLeaks !== false && leaked !== 0) {
    throw new Error(`scenario '${scenario.name}' on ${backend} leaked ${leaked} tensor(s)`);
  }
  return materialized;
}

export interface Comparison {
  ok: boolean;
  /** Largest |actual - reference| over all outputs (Infinity for NaN/shape problems). */
  maxAbsDiff: number;
  problems: string[];
}

/** Compares outputs element-wise: same names, same shapes, max |difference| <= tolerance, NaN-aware. */
export function compareOutputs(reference: MaterializedOutputs, actual: MaterializedOutputs, tolerance = DEFAULT_TOLERANCE): Comparison {
  const problems: string[] = [];
  let maxAbsDiff = 0;
  const refKeys = Object.keys(reference).sort();
  const actKeys = Object.keys(actual).sort();
  for (const k of refKeys) if (!(k in actual)) problems.push(`output '${k}' is missing`);
  for (const k of actKeys) if (!(k in reference)) problems.push(`output '${k}' is not in the reference`);
  for (const k of refKeys) {
    const r = reference[k]!;
    const a = actual[k];
    if (!a) continue;
    if (r.shape.length !== a.shape.length || r.shape.some((d, i) => d !== a.shape[i]) || r.values.length !== a.values.length) {
      problems.push(`output '${k}': shape [${a.shape}] differs from reference [${r.shape}]`);
      maxAbsDiff = Infinity;
      continue;
    }
    let worst = 0;
    let worstAt = -1;
    for (let i = 0; i < r.values.length; i++) {
      const rv = r.values[i]!;
      const av = a.values[i]!;
      let d: number;
      if (Number.isNaN(rv) || Number.isNaN(av)) d = Number.isNaN(rv) && Number.isNaN(av) ? 0 : Infinity;
      else if (!Number.isFinite(rv) || !Number.isFinite(av)) d = rv === av ? 0 : Infinity;
      else d = Math.abs(av - rv);
      if (d > worst || worstAt < 0) {
        worst = d;
        worstAt = i;
      }
    }
    maxAbsDiff = Math.max(maxAbsDiff, worst);
    if (worst > tolerance) {
      problems.push(
        `output '${k}' [${r.shape}]: max |diff| ${worst.toExponential(3)} > tolerance ${tolerance.toExponential(1)} ` +
          `at flat index ${worstAt} (reference ${r.values[worstAt]}, got ${a.values[worstAt]})`,
      );
    }
  }
  return { ok: problems.length === 0, maxAbsDiff, problems };
}

/** Throws a descriptive error when `actual` does not match `reference` within `tolerance`. */
export function assertMatches(reference: MaterializedOutputs, actual: MaterializedOutputs, tolerance = DEFAULT_TOLERANCE, label = 'outputs'): Comparison {
  const c = compareOutputs(reference, actual, tolerance);
  if (!c.ok) throw new ContractMismatchError(`${label} do not match the ${REFERENCE_BACKEND} reference:\n  ${c.problems.join('\n  ')}`, c);
  return c;
}

export class ContractMismatchError extends Error {
  constructor(
    message: string,
    readonly comparison: Comparison,
  ) {
    super(message);
    this.name = 'ContractMismatchError';
  }
}

export type ContractStatus = 'pass' | 'fail' | 'excluded' | 'reference' | 'reference-failed';

export interface ContractResult {
  backend: BackendName;
  scenario: string;
  status: ContractStatus;
  maxAbsDiff?: number;
  /** Failure message, or the exclusion reason. */
  detail?: string;
  ms: number;
}

export interface ContractReport {
  ok: boolean;
  results: ContractResult[];
}

/**
 * Runs every registered scenario (or `only` those) on cpu, then on each other backend, comparing with cpu.
 * Never throws for a scenario failure: failures are in the report (`ok` is false). Backends that
 * cannot start do throw (BackendUnavailableError) — list only backends this machine has.
 */
export async function runContract(
  backends: BackendName[] = parseBackends(DEFAULT_BACKENDS),
  options: { only?: string[]; onResult?: (r: ContractResult) => void } = {},
): Promise<ContractReport> {
  const selected = options.only ? options.only.map(getScenario) : listScenarios();
  const results: ContractResult[] = [];
  const push = (r: ContractResult) => {
    results.push(r);
    options.onResult?.(r);
  };
  const references = new Map<string, MaterializedOutputs>();
  for (const s of selected) {
    const t0 = performance.now();
    try {
      const ref = await runScenarioOn(REFERENCE_BACKEND, s);
      s.checkReference?.(ref);
      references.set(s.name, ref);
      push({ backend: REFERENCE_BACKEND, scenario: s.name, status: 'reference', ms: performance.now() - t0 });
    } catch (e) {
      push({ backend: REFERENCE_BACKEND, scenario: s.name, status: 'reference-failed', detail: String(e), ms: performance.now() - t0 });
    }
  }
  for (const backend of backends) {
    if (backend === REFERENCE_BACKEND) continue;
    const excluded = excludesFor(backend);
    for (const s of selected) {
      const t0 = performance.now();
      const reason = excluded[s.name];
      if (reason !== undefined) {
        push({ backend, scenario: s.name, status: 'excluded', detail: reason, ms: 0 });
        continue;
      }
      const ref = references.get(s.name);
      if (!ref) {
        push({ backend, scenario: s.name, status: 'fail', detail: 'no cpu reference (the reference run failed)', ms: 0 });
        continue;
      }
      try {
        const actual = await runScenarioOn(backend, s);
        const c = assertMatches(ref, actual, s.tolerance ?? DEFAULT_TOLERANCE, `${s.name} on ${backend}`);
        push({ backend, scenario: s.name, status: 'pass', maxAbsDiff: c.maxAbsDiff, ms: performance.now() - t0 });
      } catch (e) {
        push({ backend, scenario: s.name, status: 'fail', detail: String(e), ms: performance.now() - t0 });
      }
    }
  }
  await initBackend(REFERENCE_BACKEND);
  return { ok: results.every((r) => r.status !== 'fail' && r.status !== 'reference-failed'), results };
}
