/**
 * Compositions on every backend (the equivalences themselves are proven on cpu/wasm in
 * packages/presets/test/matrix.test.ts; here every backend must reproduce cpu's numbers): Parallel,
 * BatchSplit with an empty part and Average/Stack across LoRA, bottleneck and prefix tuning; a prefix
 * gradient (prefix tuning trains on every backend); and the CLI server's batching — greedy generation of
 * two LoRA tenants under one BatchSplit.
 */
import '@adapterkit/presets';
import { Average, BatchSplit, Parallel, Stack, type AdapterComposition } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { defineScenario, seededValues, type TF } from '../harness.js';
import { TINY_GATED as TINY, attentionMask, decoderInputIds, inputIds, labels } from './tiny.js';

const ADAPTERS: Record<string, Record<string, unknown>> = {
  la: { method: 'lora', r: 2, alpha: 4, attn_matrices: ['q', 'k', 'v'] },
  lb: { method: 'lora', r: 2, alpha: 4, attn_matrices: ['q', 'v'], output_lora: true },
  bn: 'seq_bn[reduction_factor=4]' as unknown as Record<string, unknown>,
  px: { method: 'prefix_tuning', prefix_length: 3, bottleneck_size: 8 },
};

/** A tiny model holding the named adapters, each with seeded nonzero values. */
function modelWith(tf: TF, names: string[]): T5ForConditionalGeneration {
  const model = T5ForConditionalGeneration.random(TINY, 33);
  let seed = 500;
  for (const name of names) {
    model.addAdapter(name, ADAPTERS[name] as unknown as { method: string });
    for (const v of model.adapters.adapterVariables(name).values()) {
      const t = tf.tensor(seededValues(v.size, seed++, 0.3), v.shape, 'float32');
      v.assign(t);
      t.dispose();
    }
  }
  return model;
}

function logitsScenario(name: string, names: string[], composition: AdapterComposition) {
  defineScenario({
    name,
    run: (tf) => {
      const model = modelWith(tf, names);
      try {
        const out = model.forward({ inputIds, attentionMask, decoderInputIds, composition });
        out.encoderLastHiddenState.dispose();
        return { logits: out.logits };
      } finally {
        model.dispose();
      }
    },
  });
}

logitsScenario('compose: Parallel(LoRA, bottleneck, prefix) logits', ['la', 'bn', 'px'], Parallel('la', 'bn', 'px'));
logitsScenario('compose: BatchSplit(LoRA, prefix, LoRA) with an empty part [1, 0, 1]', ['la', 'px', 'lb'], BatchSplit('la', 'px', 'lb', { batchSizes: [1, 0, 1] }));
logitsScenario('compose: Stack(bottleneck, Average(LoRA a, LoRA b))', ['la', 'lb', 'bn'], Stack('bn', Average('la', 'lb', { weights: [0.7, 0.3] })));

defineScenario({
  name: 'compose: prefix tuning gradient (MLP reparameterisation)',
  run: (tf) => {
    const model = modelWith(tf, ['px']);
    try {
      model.trainAdapter('px');
      const vars = model.adapters.trainableVariables();
      const { value, grads } = tf.variableGrads(() => model.loss({ inputIds, attentionMask, labels }) as ReturnType<TF['scalar']>, vars);
      const out: Record<string, ReturnType<TF['scalar']>> = { loss: value };
      vars.forEach((v, i) => (out[`grad${i}`] = grads[v.name] as ReturnType<TF['scalar']>));
      return out;
    } finally {
      model.dispose();
    }
  },
});

defineScenario({
  name: 'apps/serve: two LoRA tenants batched by BatchSplit, greedy ids (as the CLI server batches requests)',
  tolerance: 0,
  run: async (tf) => {
    const model = modelWith(tf, ['la', 'lb']);
    try {
      const ids = await model.generate({ inputIds, attentionMask, maxNewTokens: 4, composition: BatchSplit('la', 'lb', { batchSizes: [1, 1] }) });
      return { ids: ids.flat() };
    } finally {
      model.dispose();
    }
  },
});
