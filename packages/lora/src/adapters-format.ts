import { assignFileTensors, slotTensor, UnsupportedError, type AdapterConfig, type AdaptersFile, type FileTensor, type TensorSlot } from '@adapterkit/core';
import { isVera, normalizeLoraConfig, type LoraConfig } from './config.js';
import type { LoraAccess, SiteParams } from './types.js';

/** `adapters`' LoRAConfig fields, in its order (what its config.to_dict() writes besides `architecture`). */
const ADAPTERS_FIELDS = [
  'selfattn_lora',
  'intermediate_lora',
  'output_lora',
  'leave_out',
  'r',
  'alpha',
  'dropout',
  'attn_matrices',
  'composition_mode',
  'init_weights',
  'init_weights_seed',
  'use_gating',
  'use_dora',
  'vera_d',
  'vera_b',
  'dtype',
] as const;

/**
 * One adapter's tensors at one linear under `adapters`' state-dict keys: LoRALinear wraps the linear at its
 * module path and keeps `loras.<name>.lora_A` [r, in], `lora_B` [out, r] (IA3: `lora_B` [out, 1]) and a
 * gate `gate.weight` [1, in], `gate.bias` [1] (methods/lora.py) — PyTorch layout, the transposes of ours.
 */
function siteSlots(p: SiteParams, name: string): TensorSlot[] {
  const at = `${p.site.key}.loras.${name}`;
  const { inFeatures: inF, outFeatures: outF } = p.site;
  const out: TensorSlot[] = [];
  if (p.A) {
    const r = p.A.shape[1] as number;
    out.push({ key: `${at}.lora_A`, shape: [r, inF], variable: p.A, transposed: true });
    out.push({ key: `${at}.lora_B`, shape: [outF, r], variable: p.B!, transposed: true });
  } else {
    out.push({ key: `${at}.lora_B`, shape: [outF, 1], variable: p.B!, transposed: false });
  }
  if (p.gate) {
    out.push({ key: `${at}.gate.weight`, shape: [1, inF], variable: p.gate, transposed: false });
    out.push({ key: `${at}.gate.bias`, shape: [1], variable: p.gateBias!, transposed: false });
  }
  return out;
}

/** Options adapterkit added for PEFT imports, which `adapters` cannot express: refused on export. */
function checkExpressible(c: LoraConfig, name: string): void {
  const why =
    c.target_modules !== null
      ? 'selects its linears by module path (target_modules)'
      : c.input_scale_modules.length > 0
        ? 'scales linear inputs (input_scale_modules)'
        : c.use_rslora
          ? 'uses rsLoRA scaling (use_rslora)'
          : c.use_dora
            ? 'is a DoRA adapter (use_dora; its magnitude has no mapping to adapters files here yet)'
            : isVera(c)
              ? 'is a VeRA adapter (its vectors have no mapping to adapters files here yet)'
              : null;
  if (why) throw new UnsupportedError(`adapter '${name}' ${why}, which AdapterHub adapters' LoRAConfig cannot express`, 'format');
}

/** A LoRA/IA3 adapter as `adapters` saves it: its LoRAConfig dict and its tensors under `adapters`' keys. */
export function exportAdapters(rt: LoraAccess, name: string): { config: Record<string, unknown>; tensors: Map<string, FileTensor> } {
  const c = rt.config(name);
  checkExpressible(c, name);
  const config: Record<string, unknown> = { architecture: 'lora' };
  for (const f of ADAPTERS_FIELDS) config[f] = structuredClone(c[f]);
  const slots = [...rt.adapters.get(name).sites.values()].flatMap((p) => siteSlots(p, name));
  const tensors = new Map(slots.map((slot) => [slot.key, slotTensor(slot)]));
  return { config, tensors };
}

/**
 * Imports a LoRA/IA3 adapter `adapters` saved (architecture 'lora'; composition_mode 'scale' is IA3). Unknown
 * config fields are a ConfigError, DoRA/VeRA an UnsupportedError; every tensor must map to a parameter.
 */
export function importAdapters(rt: LoraAccess, name: string, file: AdaptersFile, tensors: Map<string, FileTensor>): AdapterConfig {
  const { architecture, ...options } = structuredClone(file.config);
  if (architecture !== 'lora') throw new UnsupportedError(`the LoRA method imports architecture 'lora', not ${JSON.stringify(architecture)}`, 'architecture');
  // adapters' loader (_fix_backward_compat): LoRA saved before adapters 1.1.0 was trained with scaling 1
  const release = /^adapters\.(\d+)\.(\d+)/.exec(file.version ?? '');
  if (release && (Number(release[1]) < 1 || (Number(release[1]) === 1 && Number(release[2]) < 1)) && options.r !== options.alpha) options.alpha = options.r;
  const config = normalizeLoraConfig({ method: options.composition_mode === 'scale' ? 'ia3' : 'lora', ...options });
  // adapters keeps DoRA's magnitude and VeRA's matrices under keys this mapping does not cover yet
  if (config.use_dora || isVera(config)) throw new UnsupportedError(`importing a ${config.use_dora ? 'DoRA' : 'VeRA'} adapter from adapters files is not supported yet`, 'format');
  rt.add(name, config, 0);
  try {
    assignFileTensors(
      [...rt.adapters.get(name).sites.values()].flatMap((p) => siteSlots(p, file.name)),
      tensors,
      'adapters file',
    );
  } catch (e) {
    rt.remove(name);
    throw e;
  }
  return config;
}
