// The example of packages/backend/README.md (guide.test.ts runs it and checks the README holds it verbatim).
import { BackendUnavailableError, expectNoLeaks, initBackend, tf } from '@adapterkit/backend';

const info = await initBackend('wasm'); // 'cpu' | 'wasm' | 'webgpu' | 'tensorflow' | 'auto'
console.log(`${info.name} on ${info.device}; training: ${info.supportsTraining}`);

// Every tensor made inside is disposed by the end, or expectNoLeaks throws naming the count.
const product = await expectNoLeaks(async () => {
  const t = tf.tidy(() => tf.tensor2d([1, 2, 3, 4], [2, 2]).matMul(tf.ones([2, 1])));
  const values = await t.data(); // async: WebGPU cannot read synchronously
  t.dispose();
  return Array.from(values);
});
console.log(product); // [3, 7]

try {
  await initBackend('tensorflow');
} catch (e) {
  if (!(e instanceof BackendUnavailableError)) throw e;
  console.log(e.howToInstall); // e.g. pnpm add @tensorflow/tfjs-node-gpu
  await initBackend('wasm');
}
