/**
 * @adapterkit/bottleneck on every backend: seq_bn, double_seq_bn, par_bn, seq_bn_inv, compacter++ and AdapterFusion on a tiny random T5 — logits
 * with non-zero adapter weights, and the loss gradient w.r.t. every adapter variable.
 */
import { addAdapterFusion, adapterFusionVariables, trainAdapterFusion } from '@adapterkit/bottleneck';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { defineScenario, seededValues, type ScenarioOutputs } from '../harness.js';

/** A tiny gated-gelu T5 (SwiftShader-sized): d_model 16, 2 heads × 4, 1 + 1 layers, vocab 32. */
const TINY = {
  model_type: 't5',
  d_model: 16,
  d_kv: 4,
  num_heads: 2,
  d_ff: 32,
  num_layers: 1,
  num_decoder_layers: 1,
  vocab_size: 32,
  feed_forward_proj: 'gated-gelu',
  relative_attention_num_buckets: 8,
  relative_attention_max_distance: 20,
  tie_word_embeddings: true,
  scale_decoder_outputs: false,
  dropout_rate: 0,
  decoder_start_token_id: 0,
  pad_token_id: 0,
  eos_token_id: 1,
};
const INPUT_IDS = [
  [5, 9, 12, 7, 1],
  [3, 14, 1, 0, 0],
];
const MASK = [
  [1, 1, 1, 1, 1],
  [1, 1, 1, 0, 0],
];
const LABELS = [
  [6, 10, 13, 1],
  [4, 15, 1, -100],
];

for (const [i, preset] of [
  'seq_bn[reduction_factor=4]',
  'double_seq_bn[reduction_factor=4]',
  'par_bn[reduction_factor=4]',
  'seq_bn_inv[reduction_factor=4]',
  'compacter++[reduction_factor=4]',
].entries()) {
  defineScenario({
    name: `bottleneck ${preset.slice(0, preset.indexOf('['))} forward + gradient`,
    run: async (tf) => {
      const model = T5ForConditionalGeneration.random(TINY, 7);
      try {
        model.addAdapter('a', preset, { seed: 11 });
        // Non-zero weights everywhere (par_bn's mam_adapter init starts with up = 0), identical on every backend.
        let seed = 100 + 10 * i;
        for (const v of model.adapters.adapterVariables('a').values()) {
          const t = tf.tensor(seededValues(v.size, seed++, 0.3), v.shape);
          v.assign(t);
          t.dispose();
        }
        model.trainAdapter('a');
        const out: ScenarioOutputs = {};
        const fwd = model.forward({ inputIds: INPUT_IDS, attentionMask: MASK, decoderInputIds: model.shiftRight(LABELS) });
        out.logits = fwd.logits;
        fwd.encoderLastHiddenState.dispose();
        const vars = model.adapters.trainableVariables();
        const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: INPUT_IDS, attentionMask: MASK, labels: LABELS }) as ReturnType<typeof tf.scalar>, vars);
        out.loss = value;
        for (const [name, v] of model.adapters.adapterVariables('a')) out[`grad ${name}`] = grads[v.name];
        return out;
      } finally {
        model.dispose();
      }
    },
  });
}

defineScenario({
  name: 'bottleneck AdapterFusion (dynamic) forward + gradient',
  run: async (tf) => {
    const model = T5ForConditionalGeneration.random(TINY, 7);
    try {
      model.addAdapter('a', 'seq_bn[reduction_factor=4]', { seed: 1 });
      model.addAdapter('b', 'seq_bn[reduction_factor=8]', { seed: 2 });
      const fuse = { type: 'Fuse' as const, children: ['a', 'b'], name: 'a,b' };
      addAdapterFusion(model, fuse, 'dynamic', { seed: 3 });
      let seed = 200;
      const vars = [...model.adapters.adapterVariables('a').values(), ...model.adapters.adapterVariables('b').values(), ...adapterFusionVariables(model, 'a,b').values()];
      for (const v of vars) {
        const t = tf.tensor(seededValues(v.size, seed++, 0.3), v.shape);
        v.assign(t);
        t.dispose();
      }
      const fusionVars = trainAdapterFusion(model, fuse);
      const out: ScenarioOutputs = {};
      const fwd = model.forward({ inputIds: INPUT_IDS, attentionMask: MASK, decoderInputIds: model.shiftRight(LABELS) });
      out.logits = fwd.logits;
      fwd.encoderLastHiddenState.dispose();
      const { value, grads } = tf.variableGrads(() => model.loss({ inputIds: INPUT_IDS, attentionMask: MASK, labels: LABELS }) as ReturnType<typeof tf.scalar>, fusionVars);
      out.loss = value;
      for (const [name, v] of adapterFusionVariables(model, 'a,b')) out[`grad ${name}`] = grads[v.name];
      return out;
    } finally {
      model.dispose();
    }
  },
});
