import type { Variable } from '@adapterkit/backend';
import { WeightError, type AdapterConfig, type FileTensor, type SublayerSite, type TensorSlot } from '@adapterkit/core';
import { LOCATION_OPTION, normalizeBottleneckConfig, type BottleneckConfig } from './config.js';
import type { AdapterFusionConfig } from './fusion.js';

/** What the slots of one adapter are made from: its config, its modules, the shared Compacter rule and the invertible adapter. */
export interface BottleneckParts {
  config: BottleneckConfig;
  modules: Iterable<{ site: SublayerSite; vars: Map<string, Variable> }>;
  shared?: Map<string, Variable>;
  inv?: Map<string, Variable>;
}

/**
 * AdapterHub `adapters`' file format for bottleneck adapters. In `adapters` the layer that owns a sub-layer's
 * adapters (BottleneckLayer) is the model's sub-layer module itself — the site's module path — and keeps them in
 * `adapters.<name>`; each `Adapter`/`ParallelAdapter` (methods/modeling.py) registers
 *   adapter_norm_before (LayerNorm, ln_before) — also as adapter_down.0, the first entry of the Sequential,
 *   adapter_down.<i> (Linear [down, H], or a PHMLayer; i = 1 after that LayerNorm, else 0), then the activation,
 *   adapter_up (Linear [H, down] or PHMLayer), adapter_norm_after (ln_after), gate (Linear [1, H]), scaling,
 * so a state dict names the ln_before LayerNorm twice. Linear weights are PyTorch [out, in]: the transposes of
 * our [in, out] kernels. A PHMLayer keeps W_left [p, in/p, rank] and W_right [p, rank, out/p] (W [p, in/p, out/p]
 * unfactorized), b [out] and, unless the rule is shared, phm_rule [p, p, p] (phm_rule_left [p, p, 1] and
 * phm_rule_right [p, 1, p] factorized); it computes x @ Σ kron(rule, W), so these are our layouts as they are.
 * The shared rule lives in the base model's `shared_parameters.<name>` (init_shared_parameters), the invertible
 * adapter in the encoder stack (`invertible_adapters_base_name`): `encoder.invertible_adapters.<name>.{F,G}.{0,2}` (NICECouplingBlock's two
 * Linear–activation–Linear subnets).
 */
export function bottleneckSlots(parts: BottleneckParts, name: string): TensorSlot[] {
  const slots: TensorSlot[] = [];
  // a 2-D `.weight` is an nn.Linear's; LayerNorm weights and PHM factors keep their layout
  const add = (key: string, variable: Variable) => {
    const transposed = variable.rank === 2 && key.endsWith('.weight');
    const shape = transposed ? [variable.shape[1] as number, variable.shape[0] as number] : [...variable.shape];
    slots.push({ key, shape, variable, transposed });
  };
  const down = parts.config.ln_before ? 1 : 0;
  for (const m of parts.modules) {
    const at = `${m.site.key}.adapters.${name}`;
    for (const [param, variable] of m.vars) {
      if (param.startsWith('adapter_norm_before.')) {
        add(`${at}.${param}`, variable);
        add(`${at}.adapter_down.0.${param.slice('adapter_norm_before.'.length)}`, variable);
      } else if (param.startsWith('adapter_down.')) add(`${at}.adapter_down.${down}.${param.slice('adapter_down.'.length)}`, variable);
      else add(`${at}.${param}`, variable);
    }
  }
  for (const [param, variable] of parts.shared ?? []) add(`shared_parameters.${name}.${param}`, variable);
  for (const [param, variable] of parts.inv ?? []) add(`encoder.invertible_adapters.${name}.${param}`, variable);
  return slots;
}

/**
 * A file's lack of the shared PHM rule, explained: `adapters` saves the keys its filter_func matches, and
 * `".shared_parameters.{}.".format(adapter_name) in x` needs a dot before `shared_parameters`, which only a model
 * with heads gives (`<base_model_prefix>.shared_parameters.…`, e.g. an AdapterModel); a model without heads keeps it
 * at the top of its state dict (its base_model is itself), so `adapters` leaves it out of the file.
 */
export function checkSharedRule(parts: BottleneckParts, name: string, tensors: Map<string, FileTensor>): void {
  for (const param of parts.shared?.keys() ?? []) {
    const key = `shared_parameters.${name}.${param}`;
    if (!tensors.has(key))
      throw new WeightError(
        `adapters file lacks the shared Compacter rule '${key}' (adapters leaves a top-level shared_parameters entry out of what it saves from a model without heads; save from a model with heads, or use shared_phm_rule: false)`,
        key,
      );
  }
}

/** The config `adapters` saves for a bottleneck adapter: its BnConfig fields, `architecture` null (as BnConfig's to_dict writes it). */
export function adaptersBottleneckConfig(c: BottleneckConfig): Record<string, unknown> {
  const fields: Record<string, unknown> = structuredClone(c);
  delete fields.method;
  return { architecture: null, ...fields };
}

/** A bottleneck config from an `adapters` one (unknown fields: ConfigError, as for any config; unimplemented options: UnsupportedError). */
export function bottleneckConfigFromAdapters(raw: Record<string, unknown>): AdapterConfig {
  return normalizeBottleneckConfig({ ...structuredClone(raw), method: 'bottleneck' });
}

// ---------------------------------------------------------------------- AdapterFusion

/**
 * `adapters`' AdapterFusionLoader keys: each sub-layer module keeps its BertFusion modules in
 * `adapter_fusion_layer.<fusion name>` (methods/bottleneck.py: `self.adapter_fusion_layer[fusion_name] = fusion`),
 * with query and key Linear(H, H) and value Linear(H, H, bias=False): our variable names, weights transposed.
 */
export function fusionSlots(vars: Map<string, Variable>): TensorSlot[] {
  return [...vars].map(([key, variable]) => {
    const transposed = variable.rank === 2;
    return { key, shape: transposed ? [variable.shape[1] as number, variable.shape[0] as number] : [...variable.shape], variable, transposed };
  });
}

/**
 * The sub-layers where `adapters` has a fusion layer and adapterkit none: `adapters` adds one at every sub-layer
 * whose location all fused adapters share (BottleneckLayer.add_fusion_layer: `if
 * self.adapters_config.common_config_value(adapter_names, self.location_key)`), leave_out or not; adapterkit only
 * where a fused adapter sits. No adapter runs there, so those layers never run either.
 */
export function fusionLayersWithoutAdapters(sites: SublayerSite[], configs: BottleneckConfig[], has: (siteKey: string) => boolean): Set<string> {
  return new Set(sites.filter((s) => !has(s.key) && configs.every((c) => c[LOCATION_OPTION[s.location]])).map((s) => s.key));
}

/** Why `adapters` could not hold this fusion (its add_adapter_fusion would raise), or undefined. */
export function adaptersFusionProblem(config: AdapterFusionConfig, configs: BottleneckConfig[]): { message: string; option: string } | undefined {
  for (const option of ['mh_adapter', 'output_adapter', 'cross_adapter'] as const)
    if (configs.some((c) => c[option] !== configs[0][option]))
      return { message: `adapters fuses only adapters with the same ${option} (common_config_value raises otherwise)`, option };
  // BertFusion then makes an unused `dense` Linear(H, 1) that adapterkit does not have
  if (!config.query && !config.key && !config.value) return { message: 'an AdapterFusion without query, key and value is not mapped to the adapters format', option: 'query' };
  return undefined;
}
