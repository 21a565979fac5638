/**
 * The backend contract: every registered scenario runs on cpu (the reference), then on each other backend
 * in ADAPTERKIT_BACKENDS (default 'cpu,wasm,webgpu'; `pnpm test:fast` drops webgpu), and must match cpu within the scenario's tolerance.
 * Scenarios excluded for a backend (src/excludes.ts) are reported as skipped with their reason.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@adapterkit/backend';
import {
  DEFAULT_TOLERANCE,
  REFERENCE_BACKEND,
  assertMatches,
  excludesFor,
  listScenarios,
  parseBackends,
  runScenarioOn,
  staleExcludes,
  type MaterializedOutputs,
  type Scenario,
} from '../src/index.js';

const backends = parseBackends(process.env.ADAPTERKIT_BACKENDS);
const scenarios = listScenarios();

// References are computed once, lazily, so `-t "wasm"` still works on its own.
const references = new Map<string, Promise<MaterializedOutputs>>();
function reference(s: Scenario): Promise<MaterializedOutputs> {
  let ref = references.get(s.name);
  if (!ref) {
    ref = runScenarioOn(REFERENCE_BACKEND, s).then((r) => {
      s.checkReference?.(r);
      return r;
    });
    references.set(s.name, ref);
  }
  return ref;
}

afterAll(async () => {
  await initBackend(REFERENCE_BACKEND);
});

describe('contract setup', () => {
  it('has scenarios, and every exclude entry names one of them', () => {
    expect(scenarios.length).toBeGreaterThan(0);
    expect(staleExcludes()).toEqual([]);
    expect(excludesFor(REFERENCE_BACKEND)).toEqual({});
  });
});

describe(`${REFERENCE_BACKEND} (reference)`, () => {
  for (const s of scenarios) {
    it(s.name, async () => {
      const ref = await reference(s);
      expect(Object.keys(ref).length).toBeGreaterThan(0);
      for (const [key, out] of Object.entries(ref)) {
        expect(out.values.every(Number.isFinite), `${s.name}: output '${key}' has NaN/Inf on cpu`).toBe(true);
      }
    });
  }
});

for (const backend of backends) {
  if (backend === REFERENCE_BACKEND) continue;
  describe(`${backend} vs ${REFERENCE_BACKEND}`, () => {
    beforeAll(async () => {
      // Fails the whole block with BackendUnavailableError (what to install) when the backend is missing;
      // drop it from ADAPTERKIT_BACKENDS on machines that cannot have it.
      await initBackend(backend);
    });
    const excluded = excludesFor(backend);
    for (const s of scenarios) {
      const reason = excluded[s.name];
      if (reason !== undefined) {
        it.skip(`${s.name} — excluded on ${backend}: ${reason}`, () => {});
        continue;
      }
      it(s.name, async () => {
        const ref = await reference(s);
        const actual = await runScenarioOn(backend, s);
        assertMatches(ref, actual, s.tolerance ?? DEFAULT_TOLERANCE, `'${s.name}' on ${backend}`);
      });
    }
  });
}
