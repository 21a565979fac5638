/**
 * @adapterkit/contract-tests — every scenario written once, run on every backend, compared with cpu.
 * Importing this module registers all scenarios (src/scenarios/index.ts).
 */
export {
  DEFAULT_BACKENDS,
  DEFAULT_TOLERANCE,
  REFERENCE_BACKEND,
  ContractMismatchError,
  assertMatches,
  compareOutputs,
  defineScenario,
  excludesFor,
  getScenario,
  listScenarios,
  materialize,
  parseBackends,
  runContract,
  runScenarioOn,
  seeded,
  seededValues,
  staleExcludes,
} from './harness.js';
export type {
  Comparison,
  ContractReport,
  ContractResult,
  ContractStatus,
  Materialized,
  MaterializedOutputs,
  Scenario,
  ScenarioContext,
  ScenarioOutputs,
  TF,
} from './harness.js';
export { EXCLUDES } from './excludes.js';
import './scenarios/index.js';
