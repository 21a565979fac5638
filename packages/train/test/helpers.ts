import { shiftTaskExamples } from '../src/tasks.js';

export { FIXTURE_DIR, loadFixtureModel as loadTiny } from '@adapterkit/t5/test';

/** The copy task of the fixture (see src/tasks.ts), with the shift given first as these tests use it. */
export function shiftExamples(n: number, shift: number, seed: number): { inputIds: number[]; targetIds: number[] }[] {
  return shiftTaskExamples(n, seed, shift);
}
