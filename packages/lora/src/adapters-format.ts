import { assignFileTensors, slotTensor, UnsupportedError, WeightError, type AdapterConfig, type AdaptersFile, type FileTensor, type TensorSlot } from '@adapterkit/core';
import { isVera, normalizeLoraConfig, scalingOf, type LoraConfig } from './config.js';
import type { LoraAccess, LoraAdapter, SiteParams } from './types.js';

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

/** `adapters`' VeRA trains these as full matrices initialised diagonal ([r, r] and [out, out]); slots hold their diagonals. */
const DIAGONAL_SUFFIXES = ['.vera_D', '.vera_B'];
const isDiagonalKey = (key: string) => DIAGONAL_SUFFIXES.some((s) => key.endsWith(s));

/**
 * One adapter's tensors at one linear under `adapters`' state-dict keys: LoRALinear wraps the linear at its
 * module path and keeps `loras.<name>.lora_A` [r, in], `lora_B` [out, r] (IA3: `lora_B` [out, 1]), a gate
 * `gate.weight` [1, in], `gate.bias` [1], DoRA's magnitude `m.weight` [out, 1] (an nn.Linear(1, out)) and
 * VeRA's `vera_D` [r, r], `vera_B` [out, out] (methods/lora.py) — PyTorch layout, the transposes of ours.
 * VeRA's two matrices are slots of their diagonals (λ_d, λ_b); exportAdapters/importAdapters expand and check them.
 */
function siteSlots(p: SiteParams, name: string): TensorSlot[] {
  const at = `${p.site.key}.loras.${name}`;
  const { inFeatures: inF, outFeatures: outF } = p.site;
  const out: TensorSlot[] = [];
  if (p.lambdaB) {
    const r = p.lambdaD!.shape[1] as number;
    out.push({ key: `${at}.vera_D`, shape: [r], variable: p.lambdaD!, transposed: false });
    out.push({ key: `${at}.vera_B`, shape: [outF], variable: p.lambdaB, transposed: false });
  } else if (p.A) {
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
  if (p.magnitude) out.push({ key: `${at}.m.weight`, shape: [outF, 1], variable: p.magnitude, transposed: false });
  return out;
}

/**
 * Every slot of an adapter: its sites', and VeRA's frozen projections, which `adapters` keeps once per adapter
 * in the base model's `shared_parameters.<name>.lora_A` [r, in] / `lora_B` [out, r] (one shape for all linears).
 */
function adapterSlots(ad: LoraAdapter, name: string): TensorSlot[] {
  const slots = [...ad.sites.values()].flatMap((p) => siteSlots(p, name));
  if (ad.projections) {
    const { A, B } = ad.projections;
    const [inMax, r] = A.shape as [number, number];
    const outMax = B.shape[1] as number;
    slots.push({ key: `shared_parameters.${name}.lora_A`, shape: [r, inMax], variable: A, transposed: true });
    slots.push({ key: `shared_parameters.${name}.lora_B`, shape: [outMax, r], variable: B, transposed: true });
  }
  return slots;
}

/** A diagonal vector as the square matrix `adapters` stores. */
function diagonalMatrix(v: FileTensor): FileTensor {
  const n = v.data.length;
  const data = new Float32Array(n * n);
  for (let i = 0; i < n; i++) data[i * n + i] = v.data[i];
  return { shape: [n, n], data };
}

/** The diagonal of a square matrix `adapters` trained; refused when anything off the diagonal is non-zero. */
function diagonalOf(key: string, t: FileTensor): FileTensor {
  const n = t.shape[0];
  if (t.shape.length !== 2 || t.shape[1] !== n) throw new WeightError(`adapters file tensor '${key}' has shape [${t.shape}], expected a square matrix`, key);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      const x = t.data[i * n + j];
      if (i === j) data[i] = x;
      else if (x !== 0)
        throw new UnsupportedError(
          `adapters file tensor '${key}' has a non-zero entry off its diagonal ([${i}, ${j}] = ${x}): adapters trains VeRA's vera_D/vera_B as full matrices, VeRA (PEFT, adapterkit) as vectors, which cannot hold it`,
          key,
        );
    }
  return { shape: [n], data };
}

/**
 * DoRA: `adapters` normalises by ‖W + B·A‖ (its delta_w carries no alpha/r) while its update is scaled,
 * PEFT — and adapterkit — by ‖W + (alpha/r)·B·A‖: the same model only when alpha/r = 1.
 */
function checkDoraScaling(c: LoraConfig, name: string): void {
  if (c.use_dora && scalingOf(c) !== 1)
    throw new UnsupportedError(
      `adapter '${name}' is a DoRA adapter with alpha/r = ${c.alpha}/${c.r} ≠ 1: AdapterHub adapters normalises DoRA's weight by ‖W + B·A‖ without the alpha/r scaling, PEFT and adapterkit by ‖W + (alpha/r)·B·A‖, so the two agree only when alpha = r`,
      'alpha',
    );
}

/** Options adapterkit added for PEFT imports, which `adapters` cannot express: refused on export. */
function checkExpressible(c: LoraConfig, ad: LoraAdapter, name: string): void {
  const shapes = new Set([...ad.sites.values()].map((p) => `${p.site.inFeatures}→${p.site.outFeatures}`));
  const why =
    c.target_modules !== null
      ? 'selects its linears by module path (target_modules)'
      : c.input_scale_modules.length > 0
        ? 'scales linear inputs (input_scale_modules)'
        : c.use_rslora
          ? 'uses rsLoRA scaling (use_rslora)'
          : isVera(c) && shapes.size > 1
            ? `is a VeRA adapter on linears of different shapes (${[...shapes].join(', ')}; adapters shares one lora_A/lora_B of a single shape across them)`
            : null;
  if (why) throw new UnsupportedError(`adapter '${name}' ${why}, which AdapterHub adapters' LoRAConfig cannot express`, 'format');
  checkDoraScaling(c, name);
}

/** A LoRA/IA3 adapter as `adapters` saves it: its LoRAConfig dict and its tensors under `adapters`' keys. */
export function exportAdapters(rt: LoraAccess, name: string): { config: Record<string, unknown>; tensors: Map<string, FileTensor> } {
  const c = rt.config(name);
  const ad = rt.adapters.get(name);
  checkExpressible(c, ad, name);
  const config: Record<string, unknown> = { architecture: 'lora' };
  for (const f of ADAPTERS_FIELDS) config[f] = structuredClone(c[f]);
  const tensors = new Map(
    adapterSlots(ad, name).map((slot) => {
      const t = slotTensor(slot);
      return [slot.key, isDiagonalKey(slot.key) ? diagonalMatrix(t) : t];
    }),
  );
  return { config, tensors };
}

/**
 * Imports a LoRA/IA3/DoRA/VeRA adapter `adapters` saved (architecture 'lora'; composition_mode 'scale' is IA3).
 * Unknown config fields are a ConfigError; DoRA with alpha ≠ r, VeRA without its shared projections or with
 * off-diagonal vera_D/vera_B entries an UnsupportedError; every tensor must map to a parameter.
 */
export function importAdapters(rt: LoraAccess, name: string, file: AdaptersFile, tensors: Map<string, FileTensor>): AdapterConfig {
  const { architecture, ...options } = structuredClone(file.config);
  if (architecture !== 'lora') throw new UnsupportedError(`the LoRA method imports architecture 'lora', not ${JSON.stringify(architecture)}`, 'architecture');
  // adapters' loader (_fix_backward_compat): LoRA saved before adapters 1.1.0 was trained with scaling 1
  const release = /^adapters\.(\d+)\.(\d+)/.exec(file.version ?? '');
  if (release && (Number(release[1]) < 1 || (Number(release[1]) === 1 && Number(release[2]) < 1)) && options.r !== options.alpha) options.alpha = options.r;
  const config = normalizeLoraConfig({ method: options.composition_mode === 'scale' ? 'ia3' : 'lora', ...options });
  checkDoraScaling(config, file.name);
  const shared = `shared_parameters.${file.name}.lora_A`;
  if (isVera(config) && !tensors.has(shared))
    throw new UnsupportedError(
      `the VeRA adapter '${file.name}' lacks its shared projections ('${shared}', '…lora_B'): adapters saves them only from a model whose base model has a prefix (T5AdapterModel: 'transformer.shared_parameters.…') and otherwise re-creates them from torch's random generator (init_weights_seed), which adapterkit cannot reproduce`,
      'format',
    );
  const fileTensors = new Map([...tensors].map(([k, t]) => [k, isDiagonalKey(k) && k.includes(`.loras.${file.name}.`) ? diagonalOf(k, t) : t]));
  rt.add(name, config, 0);
  try {
    assignFileTensors(adapterSlots(rt.adapters.get(name), file.name), fileTensors, 'adapters file');
  } catch (e) {
    rt.remove(name);
    throw e;
  }
  return config;
}
