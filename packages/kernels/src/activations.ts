import { tf, type Tensor } from '@adapterkit/backend';

/**
 * The activation functions of transformers' ACT2FN that adapterkit's models and methods use — one copy for
 * the whole project. gelu_new computes x·x·x rather than pow(x, 3): tfjs-wasm's Pow is a slow generic
 * kernel (about 20× a Mul).
 */
export const ACTIVATIONS = {
  linear: (x: Tensor) => x,
  identity: (x: Tensor) => x,
  relu: (x: Tensor) => tf.relu(x),
  // transformers' GELUActivation: exact, erf-based
  gelu: (x: Tensor) => x.mul(0.5).mul(tf.erf(x.mul(Math.SQRT1_2)).add(1)),
  gelu_orig: (x: Tensor) => x.mul(0.5).mul(tf.erf(x.mul(Math.SQRT1_2)).add(1)),
  gelu_new: (x: Tensor) => x.mul(0.5).mul(tf.tanh(x.add(x.square().mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI))).add(1)),
  gelu_pytorch_tanh: (x: Tensor) => x.mul(0.5).mul(tf.tanh(x.add(x.square().mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI))).add(1)),
  silu: (x: Tensor) => x.mul(tf.sigmoid(x)),
  swish: (x: Tensor) => x.mul(tf.sigmoid(x)),
  tanh: (x: Tensor) => tf.tanh(x),
  sigmoid: (x: Tensor) => tf.sigmoid(x),
  // torch.nn.functional.leaky_relu's default negative slope
  leakyrelu: (x: Tensor) => tf.leakyRelu(x, 0.01),
} as const;

export type ActivationName = keyof typeof ACTIVATIONS;

export function isActivation(name: string): name is ActivationName {
  return Object.hasOwn(ACTIVATIONS, name);
}

/** Applies a named activation; an unknown name is an error, never the identity. */
export function activation(name: string, x: Tensor): Tensor {
  if (!isActivation(name)) throw new Error(`unknown activation '${name}' (known: ${Object.keys(ACTIVATIONS).join(', ')})`);
  return ACTIVATIONS[name](x);
}

/** Activations the fused linear kernels implement (the feed-forward activations of the models). */
export const FUSED_ACTIVATIONS = ['linear', 'relu', 'gelu', 'gelu_new', 'silu'] as const;
export type FusedActivation = (typeof FUSED_ACTIVATIONS)[number];
