/**
 * Test-only kernels that run an op's reference under its fused kernel name, so that the registered
 * gradient formulas are exercised (and compared with autodiff of the reference) on backends that have
 * no fused kernel of their own.
 */
import { tf, type Tensor } from '@adapterkit/backend';
import { KERNEL, namedInputs, reference } from '../src/index.node.js';
import { attentionBackwardReference, linearBackwardReference } from '../src/backward.js';
import { withKernelMode, adamW } from '../src/index.node.js';

const linearOptions = (n: Record<string, Tensor>, a: Record<string, any>) => ({
  norm: n.normWeight ? { weight: n.normWeight, eps: a.eps, scale: a.normScale } : undefined,
  bias: n.bias,
  residual: n.residual,
  activation: a.activation,
  gated: a.gated,
  adapters: { loraA: n.loraA, loraB: n.loraB, loraScale: n.loraScale, inScale: n.inScale, outScale: n.outScale },
});
const attentionOptions = (n: Record<string, Tensor>, a: Record<string, any>) => ({
  numHeads: a.numHeads,
  headDim: a.headDim,
  qOffset: a.qOffset,
  prefix: n.prefixKeys ? { keys: n.prefixKeys, values: n.prefixValues } : undefined,
  bias: n.biasTable ? { table: n.biasTable, index: n.biasIndex } : undefined,
  mask: n.mask,
  causalOffset: a.causal ? a.causalOffset : undefined,
});

const impls: Record<string, (n: Record<string, Tensor>, a: Record<string, any>) => Tensor | Tensor[]> = {
  [KERNEL.rmsNorm]: (n, a) => reference.rmsNormReference(n.x, n.weight, a.eps),
  [KERNEL.linear]: (n, a) =>
    reference.linearReference(n.x, n.kernel, {
      norm: n.normWeight ? { weight: n.normWeight, eps: a.eps, scale: a.normScale } : undefined,
      bias: n.bias,
      residual: n.residual,
      activation: a.activation,
      gated: a.gated,
      adapters: { loraA: n.loraA, loraB: n.loraB, loraScale: n.loraScale, inScale: n.inScale, outScale: n.outScale },
    }),
  [KERNEL.attention]: (n, a) =>
    reference.attentionReference(
      n.q,
      { source: n.kv, kOffset: a.kOffset, vOffset: a.vOffset },
      {
        numHeads: a.numHeads,
        headDim: a.headDim,
        qOffset: a.qOffset,
        prefix: n.prefixKeys ? { keys: n.prefixKeys, values: n.prefixValues } : undefined,
        bias: n.biasTable ? { table: n.biasTable, index: n.biasIndex } : undefined,
        mask: n.mask,
        causalOffset: a.causal ? a.causalOffset : undefined,
      },
    ),
  [KERNEL.cacheWrite]: (n, a) => reference.cacheWriteReference(n.cache, n.source, a.sourceOffset, a.position),
  [KERNEL.crossEntropy]: (n, a) => reference.crossEntropyReference(n.logits, n.labels, a.labelSmoothing),
  [KERNEL.linearBackward]: (n, a) => {
    const g = linearBackwardReference(n.dy, n.x, n.kernel, linearOptions(n, a), a.wants);
    return (a.wants as string[]).map((w) => (g as Record<string, Tensor>)[w]);
  },
  [KERNEL.attentionBackward]: (n, a) => {
    const g = attentionBackwardReference(n.dy, n.q, { source: n.kv, kOffset: a.kOffset, vOffset: a.vOffset }, attentionOptions(n, a), a.wants);
    return (a.wants as string[]).map((w) => (g as Record<string, Tensor>)[w]);
  },
  [KERNEL.adamW]: (n, a) =>
    withKernelMode('reference', () => adamW(n.p, n.g, n.m, n.v, { lr: a.lr, beta1: a.beta1, beta2: a.beta2, eps: a.eps, weightDecay: a.weightDecay, step: a.step })),
};

export function registerDelegatingKernels(backend: string): string[] {
  const added: string[] = [];
  for (const [name, impl] of Object.entries(impls)) {
    if (tf.getKernel(name, backend)) continue;
    tf.registerKernel({
      kernelName: name,
      backendName: backend,
      kernelFunc: ({ inputs, attrs }) => tf.tidy(() => impl(namedInputs(inputs as any, attrs as any), attrs as any)) as any,
    });
    added.push(name);
  }
  return added;
}

export function unregisterDelegatingKernels(backend: string, names: string[]): void {
  for (const n of names) tf.unregisterKernel(n, backend);
}
