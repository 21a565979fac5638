/**
 * Presets that combine methods, registered as ConfigUnions (as `adapters`' MAMConfig and UniPELTConfig).
 * They live here, not in core, because they need every method they combine; importing this package also
 * registers the bottleneck, LoRA/IA3 and prefix-tuning methods.
 */
import { registerPreset, type AdapterConfig } from '@adapterkit/core';
import '@adapterkit/bottleneck';
import '@adapterkit/lora';
import '@adapterkit/prefix';

/** He et al.'s Mix-and-Match: prefix tuning (bottleneck 800) + a parallel bottleneck scaled by 4. */
export const MAM: AdapterConfig = { method: 'union', configs: ['prefix_tuning[bottleneck_size=800]', 'par_bn'] };

/** UniPELT: gated prefix tuning (length 10) + gated sequential bottleneck (factor 16) + gated LoRA (r 8, alpha 2). */
export const UNIPELT: AdapterConfig = {
  method: 'union',
  configs: ['prefix_tuning[prefix_length=10,use_gating=true]', 'seq_bn[reduction_factor=16,use_gating=true]', 'lora[r=8,alpha=2,use_gating=true]'],
};

registerPreset('mam', MAM);
registerPreset('unipelt', UNIPELT);
