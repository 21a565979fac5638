import { describe, it, expect, beforeAll } from 'vitest';
import { tf, initBackend } from '@adapterkit/backend';
import { backendsUnderTest, maxAbsDiff } from '@adapterkit/backend/test';
import { Average, BatchSplit, CompositionError, Fuse, Parallel, Split, Stack, type AdapterComposition } from '@adapterkit/core';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import '../src/index.js';
import { FIXTURE, inputIds, attentionMask, decoderInputIds, perturb } from './fixture.js';

/** Method configs and the blocks `adapters` supports for each (DESIGN.md §3). */
const METHODS: { config: string; blocks: string[] }[] = [
  { config: 'seq_bn', blocks: ['Stack', 'Parallel', 'BatchSplit', 'Average'] },
  { config: 'double_seq_bn', blocks: ['Stack', 'Parallel', 'BatchSplit', 'Average'] },
  { config: 'par_bn', blocks: ['Stack', 'Parallel', 'BatchSplit', 'Average'] },
  { config: 'lora', blocks: ['Stack', 'Parallel', 'BatchSplit', 'Average'] },
  { config: 'ia3', blocks: ['Stack', 'Parallel', 'BatchSplit', 'Average'] },
  { config: 'prefix_tuning[prefix_length=4,bottleneck_size=16]', blocks: ['Stack', 'Parallel', 'BatchSplit'] },
];

function logitsFor(model: T5ForConditionalGeneration, comp: AdapterComposition | null, rows?: number[]) {
  const pick = <T>(a: T[]) => (rows ? rows.map((r) => a[r]) : a);
  const out = model.forward({ inputIds: pick(inputIds), attentionMask: pick(attentionMask), decoderInputIds: pick(decoderInputIds), composition: comp });
  out.encoderLastHiddenState.dispose();
  return out.logits;
}

async function expectClose(a: tf.Tensor, b: tf.Tensor, tol = 2e-5) {
  expect(a.shape).toEqual(b.shape);
  expect(await maxAbsDiff(a, b)).toBeLessThan(tol);
  tf.dispose([a, b]);
}

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`composition matrix on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await T5ForConditionalGeneration.fromPretrained(FIXTURE);
    });

    for (const { config, blocks } of METHODS) {
      describe(config, () => {
        beforeAll(() => {
          for (const n of ['a', 'b', 'c']) if (model.adapters.hasAdapter(n)) model.deleteAdapter(n);
          model.addAdapter('a', config, { seed: 1 });
          model.addAdapter('b', config, { seed: 2 });
          model.addAdapter('c', config, { seed: 3 });
          perturb(model, 'a', 11);
          perturb(model, 'b', 12);
          perturb(model, 'c', 13);
        });

        it('the adapter changes the output (the equivalences below are not vacuous)', async () => {
          const base = logitsFor(model, null);
          const a = logitsFor(model, 'a');
          expect(await maxAbsDiff(base, a)).toBeGreaterThan(1e-3);
          tf.dispose([base, a]);
        });

        it('Stack of one == the adapter', async () => {
          await expectClose(logitsFor(model, Stack('a')), logitsFor(model, 'a'));
        });

        if (blocks.includes('Parallel')) {
          it('Parallel slice i == adapter i alone', async () => {
            const both = logitsFor(model, Parallel('a', 'b'));
            expect(both.shape[0]).toBe(4);
            const [pa, pb] = tf.split(both, 2, 0);
            await expectClose(pa, logitsFor(model, 'a'));
            await expectClose(pb, logitsFor(model, 'b'));
            both.dispose();
          });

          it('generation under Parallel == per-adapter generation', async () => {
            const par = await model.generate({ inputIds, attentionMask, maxNewTokens: 5, composition: Parallel('a', 'b') });
            const a = await model.generate({ inputIds, attentionMask, maxNewTokens: 5, composition: 'a' });
            const b = await model.generate({ inputIds, attentionMask, maxNewTokens: 5, composition: 'b' });
            const pad = (rows: number[][], len: number) => rows.map((r) => [...r, ...new Array(len - r.length).fill(0)]);
            const len = par[0].length;
            expect(par).toEqual(pad([...a, ...b], len));
          });
        }

        if (blocks.includes('BatchSplit')) {
          it('BatchSplit rows == adapter alone on those rows, empty parts included', async () => {
            const split = logitsFor(model, BatchSplit('a', 'b', { batchSizes: [1, 1] }));
            const [r0, r1] = tf.split(split, 2, 0);
            await expectClose(r0, logitsFor(model, 'a', [0]));
            await expectClose(r1, logitsFor(model, 'b', [1]));
            split.dispose();
            await expectClose(logitsFor(model, BatchSplit('a', 'b', { batchSizes: [2, 0] })), logitsFor(model, 'a'));
            await expectClose(logitsFor(model, BatchSplit('a', 'b', { batchSizes: [0, 2] })), logitsFor(model, 'b'));
          });

          it('generation under BatchSplit == per-adapter generation on those rows (greedy and 2 beams)', async () => {
            for (const numBeams of [1, 2]) {
              const g = await model.generate({ inputIds, attentionMask, maxNewTokens: 5, numBeams, composition: BatchSplit('a', 'b', { batchSizes: [1, 1] }) });
              const a = await model.generate({ inputIds: [inputIds[0]], attentionMask: [attentionMask[0]], maxNewTokens: 5, numBeams, composition: 'a' });
              const b = await model.generate({ inputIds: [inputIds[1]], attentionMask: [attentionMask[1]], maxNewTokens: 5, numBeams, composition: 'b' });
              const strip = (r: number[]) => {
                const eos = r.indexOf(1, 1);
                return eos < 0 ? r : r.slice(0, eos + 1);
              };
              expect(g.map(strip)).toEqual([...a, ...b].map(strip));
            }
          });
        }

        if (blocks.includes('Average')) {
          it('Average with weight 1 on one branch == that branch', async () => {
            await expectClose(logitsFor(model, Average('a', 'b', { weights: [1, 0] })), logitsFor(model, 'a'));
          });
        } else {
          it('Average is refused at setActiveAdapters with a typed error naming block and method', () => {
            expect(() => model.setActiveAdapters(Average('a', 'b'))).toThrow(CompositionError);
          });
        }

        for (const block of ['Fuse', 'Split'].filter((b) => !blocks.includes(b))) {
          it(`${block} is refused with a typed error`, () => {
            const comp = block === 'Fuse' ? Fuse('a', 'b') : Split('a', 'b', { splits: [2, 2] });
            let err: unknown;
            try {
              model.setActiveAdapters(comp);
            } catch (e) {
              err = e;
            }
            // A method may implement Fuse/Split; if it refuses, the error must be a CompositionError.
            if (err) expect(err).toBeInstanceOf(CompositionError);
            model.setActiveAdapters(null);
          });
        }

        it('AdapterDrop: dropping every layer == base model', async () => {
          const all = Array.from({ length: model.config.numLayers + model.config.numDecoderLayers }, (_, i) => i);
          model.setActiveAdapters('a', { skipLayers: all });
          const dropped = logitsFor(model, undefined as any);
          model.setActiveAdapters(null);
          await expectClose(dropped, logitsFor(model, null), 1e-6);
        });
      });
    }
  });
}
