/**
 * @adapterkit/prefix on every backend: a tiny random T5 (d_model 16, 2 heads × d_kv 4 = 8 ≠ d_model, 1+1
 * layers) with prefix adapters — MLP prefix forward, flat prefix forward, and one cached decode step with a
 * prefix in the KV cache. Tiny shapes: webgpu runs on SwiftShader in CI.
 */
import '@adapterkit/prefix';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { defineScenario } from '../harness.js';

const CONFIG = {
  d_model: 16,
  d_kv: 4,
  num_heads: 2,
  d_ff: 24,
  num_layers: 1,
  num_decoder_layers: 1,
  vocab_size: 32,
  feed_forward_proj: 'gated-gelu',
  relative_attention_num_buckets: 8,
  relative_attention_max_distance: 16,
};
const INPUT = {
  inputIds: [
    [4, 9, 13, 1],
    [7, 2, 1, 0],
  ],
  attentionMask: [
    [1, 1, 1, 1],
    [1, 1, 1, 0],
  ],
  decoderInputIds: [
    [0, 5, 8],
    [0, 3, 3],
  ],
};

function withModel<T>(config: string, run: (model: T5ForConditionalGeneration) => T): T {
  const model = T5ForConditionalGeneration.random(CONFIG, 3);
  try {
    model.addAdapter('p', config, { seed: 17 });
    model.setActiveAdapters('p');
    return run(model);
  } finally {
    model.dispose();
  }
}

for (const [kind, config] of [
  ['MLP', 'prefix_tuning[prefix_length=3,bottleneck_size=8]'],
  ['flat', 'prefix_tuning_flat[prefix_length=3]'],
] as const) {
  defineScenario({
    name: `prefix: ${kind} prefix forward (encoder, self and cross prefixes)`,
    run: () =>
      withModel(config, (model) => {
        const out = model.forward(INPUT);
        return { logits: out.logits, encoder: out.encoderLastHiddenState };
      }),
  });
}

defineScenario({
  name: 'prefix: cached decode steps with a decoder self-attention prefix',
  run: (tf) =>
    withModel('prefix_tuning[prefix_length=3,bottleneck_size=8]', (model) => {
      const ids = tf.tensor2d(INPUT.inputIds, undefined, 'int32');
      const mask = tf.tensor2d(INPUT.attentionMask, undefined, 'int32');
      const state = model.startDecoding(ids, mask, model.adapters.createContext());
      try {
        const first = tf.tensor1d([0, 0], 'int32');
        const second = tf.tensor1d([5, 3], 'int32');
        const l0 = model.decodeStep(state, first);
        const l1 = model.decodeStep(state, second);
        tf.dispose([ids, mask, first, second]);
        return { step0: l0, step1: l1, cache: state.layers[0].self.clone(), prefixKeys: state.layers[0].prefix!.keys.clone() };
      } finally {
        model.disposeDecoderState(state);
      }
    }),
});
