/**
 * AdapterHub `adapters` format for bottleneck adapters (adapter_config.json + adapter.safetensors, keys
 * `<sub-layer>.adapters.<name>.adapter_down.<i>|adapter_up|adapter_norm_*|gate|scaling`). No file here was
 * written by `adapters` itself (no PyTorch in this environment, no such fixture in the repository): these are
 * round trips through adapterkit's writer, key names and layouts read from `adapters`' sources
 * (methods/modeling.py Adapter, methods/bottleneck.py BottleneckLayer, models/t5/mixin_t5.py).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '@adapterkit/backend';
import { backendsUnderTest } from '@adapterkit/backend/test';
import { readSafetensors, UnsupportedError, type AdapterConfig } from '@adapterkit/core';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';
import { loadModel, logits, maxDiff } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'adapterkit-bn-adapters-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

for (const backend of backendsUnderTest(['cpu', 'wasm'])) {
  describe(`AdapterHub adapters format (bottleneck) on ${backend}`, () => {
    let model: T5ForConditionalGeneration;
    beforeAll(async () => {
      await initBackend(backend);
      model = await loadModel();
    });
    afterAll(() => model.dispose());

    const values = async (name: string) =>
      new Map(await Promise.all([...model.adapters.adapterVariables(name)].map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)));
    /** Adds, saves in `adapters` format, loads back: config equal, values bit-exact, logits equal. Returns the file's tensors and config. */
    const roundTrip = async (name: string, config: string | AdapterConfig) => {
      model.addAdapter(name, config, { seed: 7 });
      // make every parameter non-trivial (bert init leaves LayerNorms at 1/0 and may zero the up-projection)
      for (const v of model.adapters.adapterVariables(name).values()) v.assign(v.add(0.01).mul(1.5));
      const dir = join(tmp, name);
      await model.saveAdapter(dir, name, { format: 'adapters' });
      const loaded = await model.loadAdapter(dir, { name: `${name}2` });
      expect(model.adapters.adapterConfig(loaded)).toEqual(model.adapters.adapterConfig(name));
      const [a, b] = [await values(name), await values(loaded)];
      for (const [k, v] of a) expect(b.get(k), k).toEqual(v);
      expect(maxDiff(await logits(model, { composition: name }), await logits(model, { composition: loaded }))).toBe(0);
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      const { tensors } = readSafetensors(readFileSync(join(dir, 'adapter.safetensors')));
      model.deleteAdapter(name);
      model.deleteAdapter(loaded);
      return { cfg, tensors };
    };

    it("seq_bn: BnConfig fields with architecture null; adapter_down.0 [down, H], adapter_up [H, down] under the FF sub-layer's adapters.<name>", async () => {
      const { cfg, tensors } = await roundTrip('sb', 'seq_bn');
      const H = model.dims.dModel;
      expect(cfg.config).toMatchObject({ architecture: null, mh_adapter: false, output_adapter: true, reduction_factor: 16, non_linearity: 'relu', original_ln_before: true });
      expect(cfg.config.method).toBeUndefined();
      expect(cfg.name).toBe('sb');
      expect(tensors.get('encoder.block.0.layer.1.adapters.sb.adapter_down.0.weight')!.shape).toEqual([H / 16, H]);
      expect(tensors.get('encoder.block.0.layer.1.adapters.sb.adapter_up.weight')!.shape).toEqual([H, H / 16]);
      expect(tensors.has('decoder.block.1.layer.2.adapters.sb.adapter_up.bias')).toBe(true);
      expect([...tensors.keys()].every((k) => /\.layer\.(1|2)\.adapters\.sb\./.test(k))).toBe(true);
    });

    it('ln_before (LayerNorm named twice, Linear at adapter_down.1), ln_after, gating, learned scaling, mh/cross/output: round trip bit-exact', async () => {
      const { tensors } = await roundTrip('full', {
        method: 'bottleneck',
        mh_adapter: true,
        cross_adapter: true,
        output_adapter: true,
        reduction_factor: 4,
        non_linearity: 'gelu',
        ln_before: true,
        ln_after: true,
        use_gating: true,
        scaling: 'learned',
        leave_out: [0],
      });
      const at = 'decoder.block.0.layer.1.adapters.full';
      for (const k of [
        'adapter_norm_before.weight',
        'adapter_down.0.weight',
        'adapter_down.1.weight',
        'adapter_up.bias',
        'adapter_norm_after.bias',
        'gate.weight',
        'gate.bias',
        'scaling',
      ])
        expect(tensors.has(`${at}.${k}`), k).toBe(true);
      expect(tensors.get(`${at}.adapter_down.0.weight`)!.data).toEqual(tensors.get(`${at}.adapter_norm_before.weight`)!.data);
      expect(tensors.get(`${at}.gate.weight`)!.shape).toEqual([1, model.dims.dModel]);
      expect([...tensors.keys()].some((k) => k.startsWith('encoder.block.0.'))).toBe(false); // leave_out
    });

    it('par_bn (ParallelAdapter, same parameter names) round trips', async () => {
      const { cfg } = await roundTrip('pb', 'par_bn');
      expect(cfg.config.is_parallel).toBe(true);
    });

    it('Compacter and invertible adapters are refused by name (not mapped yet)', async () => {
      model.addAdapter('c', 'compacter[reduction_factor=8]');
      model.addAdapter('i', 'seq_bn_inv');
      await expect(model.saveAdapter(join(tmp, 'c'), 'c', { format: 'adapters' })).rejects.toThrow(UnsupportedError);
      await expect(model.saveAdapter(join(tmp, 'c'), 'c', { format: 'adapters' })).rejects.toThrow(/phm_layer/);
      await expect(model.saveAdapter(join(tmp, 'i'), 'i', { format: 'adapters' })).rejects.toThrow(/inv_adapter/);
      model.deleteAdapter('c');
      model.deleteAdapter('i');
    });
  });
}
