import type { Variable } from '@adapterkit/backend';
import { UnsupportedError, type AdapterConfig, type SublayerSite, type TensorSlot } from '@adapterkit/core';
import { normalizeBottleneckConfig, type BottleneckConfig } from './config.js';

/**
 * AdapterHub `adapters`' file format for bottleneck adapters. In `adapters` the layer that owns a sub-layer's
 * adapters (BottleneckLayer) is the model's sub-layer module itself — the site's module path — and keeps them in
 * `adapters.<name>`; each `Adapter`/`ParallelAdapter` (methods/modeling.py) registers
 *   adapter_norm_before (LayerNorm, ln_before) — also as adapter_down.0, the first entry of the Sequential,
 *   adapter_down.<i> (Linear [down, H]; i = 1 after that LayerNorm, else 0), then the activation (no parameters),
 *   adapter_up (Linear [H, down]), adapter_norm_after (ln_after), gate (Linear [1, H]), scaling ('learned' [1], 'channel' [H]),
 * so a state dict names the ln_before LayerNorm twice. PyTorch layout: the transposes of our [in, out] kernels.
 */
export function bottleneckSlots(config: BottleneckConfig, modules: Iterable<{ site: SublayerSite; vars: Map<string, Variable> }>, name: string): TensorSlot[] {
  const slots: TensorSlot[] = [];
  for (const m of modules) {
    const at = `${m.site.key}.adapters.${name}`;
    const add = (key: string, param: string, transposed = false) => {
      const variable = m.vars.get(param)!;
      const shape = transposed ? [variable.shape[1] as number, variable.shape[0] as number] : [...variable.shape];
      slots.push({ key: `${at}.${key}`, shape, variable, transposed });
    };
    const down = config.ln_before ? 1 : 0;
    for (const p of ['weight', 'bias']) {
      if (config.ln_before) {
        add(`adapter_norm_before.${p}`, `adapter_norm_before.${p}`);
        add(`adapter_down.0.${p}`, `adapter_norm_before.${p}`);
      }
      add(`adapter_down.${down}.${p}`, `adapter_down.${p}`, p === 'weight');
      add(`adapter_up.${p}`, `adapter_up.${p}`, p === 'weight');
      if (config.ln_after) add(`adapter_norm_after.${p}`, `adapter_norm_after.${p}`);
      if (config.use_gating) add(`gate.${p}`, `gate.${p}`, p === 'weight');
    }
    if (config.scaling === 'learned' || config.scaling === 'channel') add('scaling', 'scaling');
  }
  return slots;
}

/** Parts of a bottleneck config whose parameters live elsewhere in `adapters`' state dict: not mapped yet, refused by name. */
function checkMapped(c: BottleneckConfig): void {
  if (c.phm_layer) throw new UnsupportedError('Compacter (phm_layer) adapters are not mapped to the AdapterHub adapters format yet', 'phm_layer');
  if (c.inv_adapter) throw new UnsupportedError('invertible adapters (inv_adapter) are not mapped to the AdapterHub adapters format yet', 'inv_adapter');
}

/** The config `adapters` saves for a bottleneck adapter: its BnConfig fields, `architecture` null (as BnConfig's to_dict writes it). */
export function adaptersBottleneckConfig(c: BottleneckConfig): Record<string, unknown> {
  checkMapped(c);
  const fields: Record<string, unknown> = structuredClone(c);
  delete fields.method;
  return { architecture: null, ...fields };
}

/** A bottleneck config from an `adapters` one (unknown fields: ConfigError, as for any config). */
export function bottleneckConfigFromAdapters(raw: Record<string, unknown>): AdapterConfig {
  const c = normalizeBottleneckConfig({ ...structuredClone(raw), method: 'bottleneck' });
  checkMapped(c);
  return c;
}
