/**
 * What T5 declares to the adapter methods (its sites: every linear, sub-layer output and attention, with
 * Hugging Face module paths as keys) and how it stores its projections: linears that read the same input
 * are one kernel (q|k|v of a self-attention, k|v of a cross-attention, wi_0|wi_1 of a gated feed-forward),
 * so that a block costs a handful of fused kernels. Each member of a group owns a column range.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import type { AttentionSite, LinearGroup, LinearRole, LinearSite, StackName, SublayerSite } from '@adapterkit/core';
import type { T5Config } from './config.js';

export interface AttentionLayout {
  site: AttentionSite;
  sublayer: SublayerSite;
  /** Name of the sub-layer's RMS norm weight. */
  norm: string;
  /** Self-attention: q|k|v in one projection. */
  qkv?: LinearGroup;
  /** Cross-attention: q from the decoder, k|v from the encoder. */
  q?: LinearGroup;
  kv?: LinearGroup;
  o: LinearGroup;
}

export interface FeedForwardLayout {
  sublayer: SublayerSite;
  norm: string;
  /** wi, or wi_0|wi_1 (gated: act(first half) ⊙ second half). */
  wi: LinearGroup;
  wo: LinearGroup;
}

export interface BlockLayout {
  self: AttentionLayout;
  cross?: AttentionLayout;
  ffn: FeedForwardLayout;
}

export interface T5Layout {
  encoder: BlockLayout[];
  decoder: BlockLayout[];
  linear: LinearSite[];
  sublayer: SublayerSite[];
  attention: AttentionSite[];
  groups: LinearGroup[];
  /** Linear site key → its group and column range. */
  memberOf: Map<string, { group: LinearGroup; start: number; end: number }>;
}

type Ref = { layer: number; stack: StackName; index: number };

export function t5Layout(c: T5Config): T5Layout {
  const inner = c.numHeads * c.dKv;
  const out: T5Layout = { encoder: [], decoder: [], linear: [], sublayer: [], attention: [], groups: [], memberOf: new Map() };
  const site = (key: string, ref: Ref, block: LinearSite['block'], role: LinearRole, inF: number, outF: number): LinearSite => {
    const s: LinearSite = { ...ref, block, role, inFeatures: inF, outFeatures: outF, key };
    out.linear.push(s);
    return s;
  };
  const group = (key: string, members: LinearSite[]): LinearGroup => {
    let start = 0;
    const g: LinearGroup = { key, inFeatures: members[0].inFeatures, outFeatures: 0, members: [] };
    for (const m of members) {
      g.members.push({ site: m, start, end: start + m.outFeatures });
      out.memberOf.set(m.key, { group: g, start, end: start + m.outFeatures });
      start += m.outFeatures;
    }
    g.outFeatures = start;
    out.groups.push(g);
    return g;
  };
  const attention = (prefix: string, module: string, ref: Ref, kind: 'self' | 'cross'): AttentionLayout => {
    const block = kind === 'self' ? 'selfattn' : 'crossattn';
    const p = `${prefix}.${module}`;
    const a: AttentionSite = { ...ref, attention: kind, numHeads: c.numHeads, dKv: c.dKv, key: p };
    const sublayer: SublayerSite = { ...ref, location: kind === 'self' ? 'mh' : 'cross', hiddenSize: c.dModel, key: prefix, norm: 'pre' };
    out.attention.push(a);
    out.sublayer.push(sublayer);
    const [q, k, v] = (['query', 'key', 'value'] as const).map((role) => site(`${p}.${role[0]}`, ref, block, role, c.dModel, inner));
    const o = site(`${p}.o`, ref, block, 'output', inner, c.dModel);
    const layout: AttentionLayout = { site: a, sublayer, norm: `${prefix}.layer_norm.weight`, o: group(o.key, [o]) };
    if (kind === 'self') layout.qkv = group(`${p}.q+k+v`, [q, k, v]);
    else {
      layout.q = group(q.key, [q]);
      layout.kv = group(`${p}.k+v`, [k, v]);
    }
    return layout;
  };
  const feedForward = (prefix: string, ref: Ref): FeedForwardLayout => {
    const sublayer: SublayerSite = { ...ref, location: 'output', hiddenSize: c.dModel, key: prefix, norm: 'pre' };
    out.sublayer.push(sublayer);
    const p = `${prefix}.DenseReluDense`;
    const wi = c.isGatedAct
      ? group(`${p}.wi_0+wi_1`, [site(`${p}.wi_0`, ref, 'ffn', 'ffn_gate', c.dModel, c.dFf), site(`${p}.wi_1`, ref, 'ffn', 'ffn_up', c.dModel, c.dFf)])
      : group(`${p}.wi`, [site(`${p}.wi`, ref, 'ffn', 'ffn_in', c.dModel, c.dFf)]);
    const wo = site(`${p}.wo`, ref, 'ffn', 'ffn_out', c.dFf, c.dModel);
    return { sublayer, norm: `${prefix}.layer_norm.weight`, wi, wo: group(wo.key, [wo]) };
  };
  for (let i = 0; i < c.numLayers; i++) {
    const ref = { layer: i, stack: 'encoder' as const, index: i };
    out.encoder.push({ self: attention(`encoder.block.${i}.layer.0`, 'SelfAttention', ref, 'self'), ffn: feedForward(`encoder.block.${i}.layer.1`, ref) });
  }
  for (let i = 0; i < c.numDecoderLayers; i++) {
    const ref = { layer: c.numLayers + i, stack: 'decoder' as const, index: i };
    out.decoder.push({
      self: attention(`decoder.block.${i}.layer.0`, 'SelfAttention', ref, 'self'),
      cross: attention(`decoder.block.${i}.layer.1`, 'EncDecAttention', ref, 'cross'),
      ffn: feedForward(`decoder.block.${i}.layer.2`, ref),
    });
  }
  return out;
}

/**
 * Builds every group's kernel [in, Σ out] from Hugging Face weights ([out, in] per linear), one group at a
 * time: `weight(name)` makes a member's tensor, which is disposed as soon as the group kernel exists.
 */
export function groupKernels(layout: T5Layout, weight: (name: string) => Tensor): Map<string, Tensor> {
  const kernels = new Map<string, Tensor>();
  for (const g of layout.groups) {
    const parts = g.members.map((m) => weight(`${m.site.key}.weight`));
    // [out, in] → [in, out], members side by side
    const transposed = () => parts.map((w) => w.transpose());
    kernels.set(
      g.key,
      tf.tidy(() => (parts.length === 1 ? parts[0].transpose() : tf.concat(transposed(), 1))),
    );
    tf.dispose(parts);
  }
  return kernels;
}
