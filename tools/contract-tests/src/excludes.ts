import type { BackendName } from '@adapterkit/backend';

/**
 * Per-backend exclude lists, like tfjs's `setup_test.ts` in each backend package:
 * `{ 'scenario name': 'why it cannot pass on this backend (link an issue)' }`.
 * An excluded scenario is reported as skipped with its reason. Entries that name no registered
 * scenario fail the test suite (see `staleExcludes`), so this list cannot silently rot.
 * cpu is the reference and cannot exclude anything.
 */
export const EXCLUDES: Record<BackendName, Record<string, string>> = {
  cpu: {},
  wasm: {},
  webgpu: {},
  tensorflow: {},
};
