/**
 * @adapterkit/t5 on every backend: a tiny random-weight T5 (d_model 16, 2 heads, d_kv 8, 1+1 layers,
 * vocab 32 — SwiftShader-sized). Encoder states, full-forward logits, the loss, cached decoder steps and
 * greedy ids must match cpu. Weights come from a seeded JS generator, so every backend builds the same model.
 */
import type { Tensor } from '@adapterkit/backend';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { defineScenario } from '../harness.js';
import { TINY_T5 as TINY, attentionMask, decoderInputIds, inputIds } from './tiny.js';

// v4-style relu with the tied, rescaled head; and flan-style gated-gelu with its own lm_head.
const RELU_TIED = { ...TINY, feed_forward_proj: 'relu' };
const GATED_UNTIED = { ...TINY, feed_forward_proj: 'gated-gelu', tie_word_embeddings: false };

defineScenario({
  name: 't5 forward: encoder states, logits, loss (relu, tied + rescaled head)',
  run: async () => {
    const model = T5ForConditionalGeneration.random(RELU_TIED, 11);
    try {
      const out = model.forward({ inputIds, attentionMask, decoderInputIds });
      const labels = decoderInputIds.map((r) => [...r.slice(1), 1]);
      labels[1][4] = -100;
      const loss = model.loss({ inputIds, attentionMask, labels });
      return { encoderLastHiddenState: out.encoderLastHiddenState, logits: out.logits, loss };
    } finally {
      model.dispose();
    }
  },
});

defineScenario({
  name: 't5 cached decoding: decoder steps with KV cache, greedy ids (gated-gelu, untied head)',
  run: async (tf) => {
    const model = T5ForConditionalGeneration.random(GATED_UNTIED, 12);
    try {
      // Three cached decoder steps fed with decoderInputIds' first tokens: logits per step.
      const ids = tf.tensor2d(inputIds, undefined, 'int32');
      const mask = tf.tensor2d(attentionMask, undefined, 'int32');
      const ctx = model.adapters.createContext();
      const state = model.startDecoding(ids, mask, ctx);
      const steps: Tensor[] = [];
      for (let t = 0; t < 3; t++) {
        const tokens = tf.tensor1d(
          decoderInputIds.map((r) => r[t]),
          'int32',
        );
        steps.push(model.decodeStep(state, tokens));
        tokens.dispose();
      }
      model.disposeDecoderState(state);
      tf.dispose([ids, mask]);
      const stepLogits = tf.stack(steps, 1); // [rows, 3, vocab]
      tf.dispose(steps);
      // The uncached forward over the same 3 tokens, for checkReference.
      const full = model.forward({ inputIds, attentionMask, decoderInputIds: decoderInputIds.map((r) => r.slice(0, 3)) });
      full.encoderLastHiddenState.dispose();
      const greedy = await model.generate({ inputIds, attentionMask, maxNewTokens: 5 });
      return { stepLogits, fullLogits: full.logits, greedyIds: greedy.flat() };
    } finally {
      model.dispose();
    }
  },
  checkReference: (ref) => {
    // On cpu, cached steps equal the uncached forward.
    const a = ref.stepLogits!.values;
    const b = ref.fullLogits!.values;
    for (let i = 0; i < a.length; i++) {
      if (!(Math.abs(a[i]! - b[i]!) <= 1e-4)) throw new Error(`cached step logits differ from the full forward at ${i}: ${a[i]} vs ${b[i]}`);
    }
  },
});
