import type { Variable } from '@adapterkit/backend';
import type { AdapterConfig, AdapterTable, LinearSite, ModelAccess } from '@adapterkit/core';
import type { LoraConfig } from './config.js';

/**
 * Parameters of one adapter at one linear, in tfjs layout (kernels [in, out]):
 *   `${key}.lora_A` [in, r], `${key}.lora_B` [r, out]        (add mode: Δ = scale · x·A·B)
 *   `${key}.lora_B` [1, out]                                  (scale mode, output side: y = base(x) · l)
 *   `${key}.ia3_in` [1, in]                                   (scale mode, input side:  y = base(x · l))
 *   `${key}.gate` [in, 1], `${key}.gate_bias` [1]             (use_gating)
 *   `${key}.lora_magnitude_vector` [1, out]                   (DoRA: the magnitude m)
 *   `${key}.vera_lambda_d` [1, r], `${key}.vera_lambda_b` [1, out]   (VeRA: Δ = scale · ((x·A_s) ⊙ λ_d)·B_s ⊙ λ_b)
 *   `vera_A` [in_max, r], `vera_B` [r, out_max]               (VeRA: the adapter's frozen projections, shared by its sites;
 *                                                              A_s = vera_A[:in], B_s = vera_B[:, :out])
 * `adapters` stores lora_A [r, in] and lora_B [out, r] (PyTorch layout): the transposes of these.
 */
export interface SiteParams {
  site: LinearSite;
  A?: Variable;
  B?: Variable;
  inVec?: Variable;
  gate?: Variable;
  gateBias?: Variable;
  magnitude?: Variable;
  lambdaD?: Variable;
  lambdaB?: Variable;
}

export interface LoraAdapter {
  name: string;
  config: LoraConfig;
  scale: number;
  sites: Map<string, SiteParams>;
  vars: Map<string, Variable>;
  /** VeRA's frozen random projections (never trained: the forward reads them detached). */
  projections?: { A: Variable; B: Variable };
}

/** What PEFT and `adapters` import and export need from the LoRA runtime (peft.ts, adapters-format.ts do not import the runtime). */
export interface LoraAccess {
  readonly model: ModelAccess;
  readonly adapters: Pick<AdapterTable<LoraAdapter>, 'get'>;
  add(name: string, config: AdapterConfig, seed: number): void;
  remove(name: string): void;
  variables(name: string): Map<string, Variable>;
  config(name: string): LoraConfig;
}
