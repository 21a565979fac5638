import * as tf from '@tensorflow/tfjs';

/**
 * Kernels the wasm backend lacks or does wastefully. `UnsortedSegmentSum` is the gradient of `gather`
 * (embedding lookups); without it, training anything upstream of a gather fails on wasm. `Identity`
 * (tf.clone, and every tensor a gradient saves for the backward pass) copies the data in tfjs-wasm; here
 * it shares it, as the cpu and webgpu backends (and wasm's own Reshape) do — tensors are immutable, the
 * shared buffer is reference-counted. Saving a 66 MB embedding table for its gradient then costs nothing.
 */
/** The members of tfjs-backend-wasm's backend these kernels use (its class is not exported with types). */
interface WasmBackendInternals {
  incRef(dataId: object): void;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): tf.TypedArray;
}

export function registerWasmFallbackKernels(): void {
  const identity = tf.getKernel('Identity', 'wasm');
  if (identity) tf.unregisterKernel('Identity', 'wasm');
  tf.registerKernel({
    kernelName: 'Identity',
    backendName: 'wasm',
    setupFunc: identity?.setupFunc,
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      if (x.dtype === 'string') return identity!.kernelFunc({ inputs, backend, attrs: {} });
      (backend as unknown as WasmBackendInternals).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
  if (tf.getKernel('UnsortedSegmentSum', 'wasm')) return;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const wasm = backend as unknown as WasmBackendInternals;
      const x = inputs.x as tf.TensorInfo;
      const segmentIds = inputs.segmentIds as tf.TensorInfo;
      const numSegments = attrs!.numSegments as number;
      const inner = x.shape.slice(segmentIds.shape.length).reduce((a, b) => a * b, 1);
      const outShape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
      const out = wasm.makeOutput(outShape, x.dtype);
      const xs = wasm.typedArrayFromHeap(x) as Float32Array;
      const ids = wasm.typedArrayFromHeap(segmentIds) as Int32Array;
      const o = wasm.typedArrayFromHeap(out) as Float32Array;
      o.fill(0);
      for (let i = 0; i < ids.length; i++) {
        const s = ids[i];
        if (s < 0 || s >= numSegments) continue; // TensorFlow drops out-of-range segments
        const src = i * inner;
        const dst = s * inner;
        for (let j = 0; j < inner; j++) o[dst + j] += xs[src + j];
      }
      return out;
    },
  });
}
