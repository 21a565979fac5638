import * as tf from '@tensorflow/tfjs';

/** Number of live tensors in the engine. */
export function countTensors(): number {
  return tf.memory().numTensors;
}

/**
 * Runs `work` and throws if it left tensors behind. Use in tests:
 * `await expectNoLeaks(() => model.generate(...))`.
 */
export async function expectNoLeaks<T>(work: () => T | Promise<T>, label = 'work'): Promise<T> {
  const before = tf.memory().numTensors;
  const result = await work();
  const after = tf.memory().numTensors;
  if (after !== before) {
    throw new Error(`${label} leaked ${after - before} tensor(s): ${before} before, ${after} after`);
  }
  return result;
}

/** Like expectNoLeaks but returns the delta instead of throwing. */
export async function withLeakCheck<T>(work: () => T | Promise<T>): Promise<{ result: T; leaked: number }> {
  const before = tf.memory().numTensors;
  const result = await work();
  return { result, leaked: tf.memory().numTensors - before };
}
