// The example of packages/presets/README.md (guide.test.ts runs it and checks the README holds it verbatim).
import { initBackend } from '@adapterkit/backend';
import { MAM } from '@adapterkit/presets'; // also registers the bottleneck, LoRA/IA3 and prefix-tuning methods
import { T5ForConditionalGeneration } from '@adapterkit/t5';

await initBackend('wasm');
const model = await T5ForConditionalGeneration.fromPretrained('google/flan-t5-small');
model.addAdapter('mam', 'mam'); // prefix_tuning[bottleneck_size=800] | par_bn
model.addAdapter('unipelt', 'unipelt'); // gated prefix tuning + gated seq_bn + gated LoRA
model.addAdapter('small_mam', { ...MAM, configs: ['prefix_tuning[bottleneck_size=64]', 'par_bn[reduction_factor=8]'] });
model.addAdapter('mine', 'prefix_tuning[prefix_length=20]|lora[r=4]'); // any union, as `adapters`' ConfigUnion
for (const a of model.adapters.adapterSummary()) console.log(`${a.name}: ${a.method}, ${a.parameters} parameters`);

model.setActiveAdapters('unipelt');
console.log(await model.generateText(['summarize: adapters train a few parameters']));
model.dispose();
