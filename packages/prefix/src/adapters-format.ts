import type { Variable } from '@adapterkit/backend';
import { UnsupportedError, type AdapterConfig, type ModelDims, type TensorSlot } from '@adapterkit/core';

/** `adapters`' PrefixTuningConfig fields, in its order (what its config.to_dict() writes besides `architecture`). */
const ADAPTERS_FIELDS = [
  'encoder_prefix',
  'cross_prefix',
  'leave_out',
  'flat',
  'prefix_length',
  'bottleneck_size',
  'non_linearity',
  'dropout',
  'use_gating',
  'shared_gating',
  'init_weights_seed',
] as const;

/**
 * A prefix adapter's tensors under `adapters`' state-dict keys. `adapters` keeps every prefix in one pool on the
 * base model (`prefix_tuning`, a PrefixTuningPool) as `prefix_tunings.<name>.<location>` with location
 * `encoder_prefix`, `self_prefix` (the decoder's self-attention) or `cross_prefix`; a PrefixTuning module holds
 * `wte.weight` [P, d_model] and `control_trans.0|2.weight|bias` (Linear, act, Linear: PyTorch [out, in] layout),
 * a FlatPrefixTuning module one `control_trans` [P · layers · 2 · heads · d_kv]. Our variables carry exactly those
 * names and layouts (the j-th prefixed layer's keys and values at slots 2j, 2j+1 of the output viewed
 * [P, 2 · layers, heads, d_kv], as `adapters` splits it), so every slot is one variable untransposed.
 */
export function prefixSlots(vars: Map<string, Variable>, name: string): TensorSlot[] {
  return [...vars].map(([key, variable]) => ({ key: `prefix_tuning.prefix_tunings.${name}.${key}`, shape: [...variable.shape], variable, transposed: false }));
}

/**
 * What adapterkit cannot reproduce of `adapters`' prefix tuning on the encoder-decoder models it serves, refused by name:
 * - gates (use_gating): `adapters` averages the gate over whatever decoder positions a call holds (all of them in a
 *   full pass, the one new token in a cached step) and gates the cross prefix by the decoder's states; adapterkit's
 *   gates read position 0 and the encoder states (so cached generation agrees with the full pass);
 * - leave_out that leaves a stack's attentions with different key lengths: the model computes the position bias in its
 *   first layer and passes it on; `adapters` recomputes it where the key length changes, in a layer without a
 *   relative-attention table, so every layer from there on gets zero bias — a consequence of the bias sharing, not
 *   a position rule (and AdapterDrop at run time does the same there; adapterkit keeps each layer's bias);
 * - prefix_length 0: adapterkit makes no parameters, `adapters` an empty embedding and a full MLP.
 */
function checkReproducible(c: Record<string, unknown>, dims: ModelDims, name: string): void {
  if (c.use_gating) throw new UnsupportedError(`prefix adapter '${name}' is gated (use_gating); adapterkit's prefix gates do not compute what adapters' do`, 'use_gating');
  if (c.prefix_length === 0) throw new UnsupportedError(`prefix adapter '${name}' has prefix_length 0, which has no adapters file here`, 'prefix_length');
  const leave = new Set(Array.isArray(c.leave_out) ? (c.leave_out as number[]) : []);
  const stacks: [string, number, number, boolean][] = [
    ['encoder', 0, dims.numEncoderLayers, c.encoder_prefix !== false],
    ['decoder', dims.numEncoderLayers, dims.numDecoderLayers, true],
  ];
  for (const [stack, start, n, prefixed] of stacks) {
    const left = Array.from({ length: n }, (_, i) => start + i).filter((l) => leave.has(l)).length;
    if (prefixed && left > 0 && left < n)
      throw new UnsupportedError(
        `prefix adapter '${name}' leaves out ${left} of the ${n} ${stack} layers; adapters then gives every layer after the first change of key length ` +
          'zero position bias (it recomputes the shared bias in a layer without the relative-attention table), which adapterkit does not reproduce',
        'leave_out',
      );
  }
}

/** The config `adapters` saves for a prefix adapter (its PrefixTuningConfig dict); only adapters-rule prefixes export. */
export function adaptersPrefixConfig(c: AdapterConfig, dims: ModelDims, name: string): Record<string, unknown> {
  if (c.peft_layout) throw new UnsupportedError(`prefix adapter '${name}' has PEFT's layout (peft_layout), which adapters' PrefixTuningConfig cannot express`, 'format');
  if (!c.adapters_positions)
    throw new UnsupportedError(
      `prefix adapter '${name}' gives prefix keys zero position bias (adapterkit's rule); adapters puts them at positions 0..P-1 and shifts the real keys by P, ` +
        "so its files would compute other numbers. Add the adapter with 'adapters_positions: true' (trained that way) to export it",
      'adapters_positions',
    );
  checkReproducible(c, dims, name);
  const config: Record<string, unknown> = { architecture: 'prefix_tuning' };
  for (const f of ADAPTERS_FIELDS) config[f] = structuredClone(c[f]);
  return config;
}

/** A prefix_tuning config from an `adapters` one (unknown fields: ConfigError when normalised); it keeps `adapters`' position rule. */
export function prefixConfigFromAdapters(raw: Record<string, unknown>, dims: ModelDims, name: string): AdapterConfig {
  const { architecture, ...options } = structuredClone(raw);
  if (architecture !== 'prefix_tuning') throw new UnsupportedError(`the prefix method imports architecture 'prefix_tuning', not ${JSON.stringify(architecture)}`, 'architecture');
  checkReproducible(options, dims, name);
  return { method: 'prefix_tuning', ...options, adapters_positions: true };
}
