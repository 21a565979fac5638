// The first example of packages/core/README.md (guide.test.ts runs it and checks the README holds it verbatim).
import { initBackend } from '@adapterkit/backend';
import { ConfigError, HubError, openSource, Parallel, readSafetensors } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '@adapterkit/lora'; // registers the LoRA and IA3 methods with core

await initBackend('wasm');
// A directory, a URL or a Hugging Face Hub id; Hub files are cached where huggingface_hub caches them.
const model = await T5ForConditionalGeneration.fromPretrained('google/flan-t5-small', {
  onProgress: (p) => p.done && console.log(`downloaded ${p.file} (${p.loaded} bytes)`),
});
model.addAdapter('a', 'lora[r=8,alpha=16]'); // the method's config string, as `adapters`
model.addAdapter('b', 'ia3');
model.setActiveAdapters(Parallel('a', 'b'));
console.log(model.adapters.adapterSummary());

try {
  model.addAdapter('c', 'lora[rank=8]');
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  console.log(e.message); // names the unknown option and the known ones
}

// One file of a Hub repository (served from the cache when it is there).
const files = await openSource('google/flan-t5-small', { revision: 'main' });
const { tensors } = readSafetensors(await files.read('model.safetensors'));
console.log(`${tensors.size} tensors`);
try {
  await files.read('no-such-file.json');
} catch (e) {
  if (!(e instanceof HubError)) throw e;
  console.log(e.reason, e.repo, e.file, e.revision); // not_found google/flan-t5-small no-such-file.json main
}
model.dispose();
