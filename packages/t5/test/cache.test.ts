import { describe, it, expect, beforeAll } from 'vitest';
import { tf } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { T5ForConditionalGeneration } from '../src/index.js';
import { FIXTURE_DIR, initBackend } from './helpers.js';

const ids = [
  [28, 49, 59, 118, 69, 67, 60, 3, 1],
  [32, 96, 94, 82, 85, 16, 1, 0, 0],
];
const mask = [
  [1, 1, 1, 1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 1, 1, 1, 0, 0],
];
const targets = [
  [0, 60, 126, 60, 58, 102],
  [0, 60, 9, 97, 30, 115],
];

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`fixed-capacity KV cache on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE_DIR);
    });

    it('every cached step equals the full forward, also when the cache grows past its capacity', async () => {
      const full = model.forward({ inputIds: ids, attentionMask: mask, decoderInputIds: targets });
      for (const capacity of [1, 2, 6]) {
        const idT = tf.tensor2d(ids, undefined, 'int32');
        const maskT = tf.tensor2d(mask, undefined, 'int32');
        const state = model.startDecoding(idT, maskT, model.adapters.createContext(), capacity);
        for (let t = 0; t < targets[0].length; t++) {
          const tok = tf.tensor1d(
            targets.map((r) => r[t]),
            'int32',
          );
          const step = model.decodeStep(state, tok);
          const ref = full.logits.slice([0, t, 0], [2, 1, 128]).reshape([2, 128]);
          expect(await maxAbsDiff(step, ref)).toBeLessThan(1e-4);
          tf.dispose([tok, step, ref]);
        }
        expect(state.capacity).toBeGreaterThanOrEqual(targets[0].length);
        model.disposeDecoderState(state);
        tf.dispose([idT, maskT]);
      }
      tf.dispose([full.logits, full.encoderLastHiddenState]);
    });
  });
}
