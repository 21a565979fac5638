/**
 * The GPU side of the side-by-side with PyTorch + PEFT (../shared/gpu/torch_t5_bench.py), on WebGPU
 * (Dawn over the machine's Vulkan driver): the same work on the same flan-t5-small shape with random
 * weights — greedy generation at batch 1 and 32 (source 128, 32 new tokens) and a LoRA (q, v; r 8) training
 * step with AdamW at batch 32, source 128, target 32 — plus kernels per decoding step. Prints one JSON line
 * per figure, as the PyTorch script does. Runs through tools/bench/gpu/run.sh (bundled, shipped in .devpack).
 *
 *   node tools/bench/dist/gpu.js [--backend webgpu] [--quick]
 *
 * --quick: small sizes (batch 2, source 16, 4 tokens, 1 training step) — a smoke run for SwiftShader.
 */
import { pathToFileURL } from 'node:url';
import { initBackend, tf, type BackendName } from '@adapterkit/backend';
import { SeededRandom } from '@adapterkit/core';
import { FLAN_T5_SMALL_SHAPE, T5ForConditionalGeneration } from '@adapterkit/t5';
import { Trainer } from '@adapterkit/train';
import '@adapterkit/lora';
import { eachFlag, randomBatch, randomIds } from './common.js';

const out = (k: Record<string, unknown>) => console.log(JSON.stringify(k));

export async function main(argv: string[]): Promise<void> {
  let backend: BackendName = 'webgpu';
  let quick = false;
  eachFlag(argv, (a, value) => {
    if (a === '--backend') backend = value() as BackendName;
    else if (a === '--quick') quick = true;
    else throw new Error(`unknown argument ${a} (usage: gpu.js [--backend webgpu] [--quick])`);
  });
  const info = await initBackend(backend);
  out({ what: 'device', backend: info.name, device: info.device, fallback: info.isFallbackAdapter });
  const src = quick ? 16 : 128;
  const newTokens = quick ? 4 : 32;
  const rng = new SeededRandom(0);
  const model = T5ForConditionalGeneration.random({ ...FLAN_T5_SMALL_SHAPE }, 0);
  try {
    for (const batch of quick ? [1, 2] : [1, 32]) {
      const inputIds = randomBatch(rng, batch, src, 32128);
      const gen = (n: number) => model.generate({ inputIds, maxNewTokens: n, eosTokenId: -1 });
      await gen(2);
      const runs = quick ? 1 : 3;
      const t0 = performance.now();
      for (let i = 0; i < runs; i++) await gen(newTokens);
      const s = (performance.now() - t0) / runs / 1000;
      out({ what: 'generate', batch, src, new_tokens: newTokens, seconds: +s.toFixed(4), tokens_per_s: +((batch * newTokens) / s).toFixed(1) });
    }
    const prof = await tf.profile(async () => void (await model.generate({ inputIds: [randomIds(rng, src, 32128)], maxNewTokens: 6, eosTokenId: -1 })));
    const prof2 = await tf.profile(async () => void (await model.generate({ inputIds: [randomIds(rng, src, 32128)], maxNewTokens: 2, eosTokenId: -1 })));
    out({ what: 'kernels_per_decode_step', kernels: (prof.kernels.length - prof2.kernels.length) / 4 });

    model.addAdapter('lora', 'lora[r=8,alpha=16]', { seed: 1 });
    const [B, S, T] = quick ? [2, 16, 8] : [32, 128, 32];
    const steps = quick ? 2 : 6;
    const rows = Array.from({ length: B * steps }, () => ({ inputIds: randomIds(rng, S, 32128), targetIds: randomIds(rng, T, 32128) }));
    const times: number[] = [];
    let last = performance.now();
    const trainer = new Trainer(model, {
      adapters: 'lora',
      trainData: rows,
      maxSteps: steps,
      batchSize: B,
      lr: 1e-4,
      shuffle: false,
      bucketWindow: 1,
      baseDropout: false,
      maxGradNorm: 0,
      onProgress: () => {
        const now = performance.now();
        times.push(now - last);
        last = now;
      },
    });
    const p = await tf.profile(async () => void (await trainer.train()));
    const measured = times.slice(1).sort((a, b) => a - b);
    out({
      what: 'lora_train_step',
      batch: B,
      src: S,
      tgt: T,
      ms: +measured[measured.length >> 1].toFixed(1),
      kernels_per_step: Math.round(p.kernels.length / steps),
      peak_mib: +(p.peakBytes / 2 ** 20).toFixed(1),
    });
  } finally {
    model.dispose();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
