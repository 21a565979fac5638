import { describe, it, expect, beforeAll } from 'vitest';
import { tf, expectNoLeaks } from '@adapterkit/backend';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, readReference, to2d, maxAbsDiff, testBackends, initBackend } from './helpers.js';

const ref = readReference();
const inputs = {
  inputIds: to2d(ref.inputs.input_ids),
  attentionMask: to2d(ref.inputs.attention_mask),
  decoderInputIds: to2d(ref.inputs.decoder_input_ids),
};

for (const backend of testBackends()) {
  describe(`T5 vs transformers fixture on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });

    it('logits and encoder states within 1e-4', async () => {
      const out = model.forward(inputs);
      expect(out.logits.shape).toEqual(ref.logits.shape);
      expect(await maxAbsDiff(out.logits, ref.logits.data)).toBeLessThan(1e-4);
      expect(await maxAbsDiff(out.encoderLastHiddenState, ref.encoder_last_hidden_state.data)).toBeLessThan(1e-4);
      tf.dispose([out.logits, out.encoderLastHiddenState]);
    });

    it('loss within 1e-5 relative', async () => {
      const loss = model.loss({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, labels: to2d(ref.inputs.labels) });
      const v = (await loss.data())[0];
      loss.dispose();
      expect(Math.abs(v - ref.loss) / Math.abs(ref.loss)).toBeLessThan(1e-5);
    });

    it('greedy ids identical', async () => {
      const ids = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 });
      expect(ids).toEqual(to2d(ref.greedy_ids));
    });

    it('3-beam ids identical', async () => {
      const ids = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8, numBeams: 3, earlyStopping: true, lengthPenalty: 1.0 });
      expect(ids).toEqual(to2d(ref.beam3_ids));
    });

    it('task examples answered as the reference does', async () => {
      const expected = to2d(ref.task_greedy_ids);
      const ids = await model.generate({ inputIds: to2d(ref.task_inputs), maxNewTokens: expected[0].length - 1 });
      expect(ids).toEqual(expected);
    });

    it('cached generation equals uncached recomputation', async () => {
      const a = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8 });
      const b = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8, useCache: false });
      expect(a).toEqual(b);
      const c = await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 8, numBeams: 3, useCache: false, earlyStopping: true });
      expect(c).toEqual(to2d(ref.beam3_ids));
    });

    it('generate leaks no tensors', async () => {
      await model.generate({ inputIds: inputs.inputIds, maxNewTokens: 4 }); // warm
      await expectNoLeaks(async () => {
        for (let i = 0; i < (backend === 'webgpu' ? 10 : 100); i++) await model.generate({ inputIds: inputs.inputIds, attentionMask: inputs.attentionMask, maxNewTokens: 3 });
      }, 'generate');
    });
  });
}
