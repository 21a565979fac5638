// The example of packages/compose/README.md (guide.test.ts runs it and checks the README holds it verbatim).
import { initBackend } from '@adapterkit/backend';
import { Average, BatchSplit, Parallel, Stack } from '@adapterkit/compose';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '@adapterkit/lora';
import '@adapterkit/bottleneck';

await initBackend('wasm');
const model = await T5ForConditionalGeneration.fromPretrained('google/flan-t5-small');
model.addAdapter('de', 'lora[r=8]');
model.addAdapter('fr', 'lora[r=8]');
model.addAdapter('style', 'seq_bn');

// One after the other in every layer: LoRA in the projections, then the bottleneck.
model.setActiveAdapters(Stack('de', 'style'));
console.log(await model.generateText(['translate English to German: hello']));

// Every adapter on the same input: one row out per adapter, branch-major ('de' first, then 'fr').
model.setActiveAdapters(Parallel('de', 'fr'));
const [de, fr] = await model.generateText(['translate: hello']);
console.log(de, fr);

// One batch, an adapter per group of rows: row 0 through 'de', rows 1 and 2 through 'fr'.
model.setActiveAdapters(BatchSplit('de', 'fr', { batchSizes: [1, 2] }));
console.log(await model.generateText(['hello', 'good morning', 'thank you']));

// The adapters' outputs averaged (weights normalised to sum 1).
model.setActiveAdapters(Average('de', 'fr', { weights: [0.7, 0.3] }));

// AdapterDrop: the same composition, but no adapter acts in layers 0 and 1.
model.setActiveAdapters(Stack('de', 'style'), { skipLayers: [0, 1] });
console.log(await model.generateText(['translate English to German: hello']));
model.dispose();
