/**
 * @adapterkit/lora on every backend: a tiny random-weight T5 (gated-gelu, d_model 16, 2 heads, 1+1 layers)
 * with LoRA (random nonzero A and B from a seed), IA3 (random vectors around 1), a merged LoRA, and the
 * gradient of the loss w.r.t. one LoRA's parameters. Weights and adapter values come from seeded JS
 * generators, so every backend computes the same thing.
 */
import '@adapterkit/lora';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { defineScenario, seededValues, type TF } from '../harness.js';
import { TINY_GATED as TINY, attentionMask, decoderInputIds, inputIds, labels } from './tiny.js';

/** LoRA on q/k/v of every attention, wi_1 and wo. */
const LORA = { method: 'lora', r: 2, alpha: 4, attn_matrices: ['q', 'k', 'v'], intermediate_lora: true, output_lora: true };

/** A tiny model with adapter `name` (config) whose variables hold seeded values (offset + U(-scale, scale)). */
function withAdapter(tf: TF, config: Record<string, unknown>, seed: number, offset = 0, scale = 0.3): T5ForConditionalGeneration {
  const model = T5ForConditionalGeneration.random(TINY, 21);
  model.addAdapter('x', config as { method: string });
  let s = seed;
  for (const v of model.adapters.adapterVariables('x').values()) {
    const values = seededValues(v.size, s++, scale).map((u) => u + offset);
    const t = tf.tensor(values, v.shape, 'float32');
    v.assign(t);
    t.dispose();
  }
  model.setActiveAdapters('x');
  return model;
}

/** Logits of the tiny model with one adapter active. */
function forwardScenario(name: string, config: Record<string, unknown>, seed: number, offset = 0, scale = 0.3) {
  defineScenario({
    name,
    run: (tf) => {
      const model = withAdapter(tf, config, seed, offset, scale);
      try {
        const out = model.forward({ inputIds, attentionMask, decoderInputIds });
        out.encoderLastHiddenState.dispose();
        return { logits: out.logits };
      } finally {
        model.dispose();
      }
    },
  });
}

forwardScenario('lora forward: LoRA on attention q/k/v, wi_1, wo (random nonzero B)', LORA, 100);
forwardScenario('lora forward: IA3 (k, v, wi_1 and wo vectors)', { method: 'ia3', output_lora: true }, 200, 1, 0.5);

defineScenario({
  name: 'lora forward: merged LoRA (folded into the kernels) and unmerged',
  run: (tf) => {
    const model = withAdapter(tf, LORA, 300);
    try {
      const unmerged = model.forward({ inputIds, attentionMask, decoderInputIds });
      model.mergeAdapter('x');
      const merged = model.forward({ inputIds, attentionMask, decoderInputIds });
      model.unmergeAdapter('x');
      tf.dispose([unmerged.encoderLastHiddenState, merged.encoderLastHiddenState]);
      return { unmerged: unmerged.logits, merged: merged.logits, difference: tf.tidy(() => merged.logits.sub(unmerged.logits).abs().max()) };
    } finally {
      model.dispose();
    }
  },
  checkReference: (ref) => {
    const d = ref.difference!.values[0]!;
    if (!(d < 1e-4)) throw new Error(`merged and unmerged logits differ by ${d}`);
  },
});

defineScenario({
  name: 'lora gradient: loss gradient w.r.t. one LoRA adapter',
  run: (tf) => {
    const model = withAdapter(tf, { ...LORA, attn_matrices: ['q', 'v'] }, 400);
    try {
      model.trainAdapter('x');
      const vars = model.adapters.adapterVariables('x');
      const { value, grads } = tf.variableGrads(() => model.loss({ inputIds, attentionMask, labels }) as ReturnType<TF['scalar']>, [...vars.values()]);
      const out: Record<string, ReturnType<TF['scalar']> | InstanceType<TF['Tensor']>> = { loss: value };
      for (const [name, v] of vars) out[name] = grads[v.name]!;
      return out;
    } finally {
      model.dispose();
    }
  },
});
