import { tf, type Variable } from '@adapterkit/backend';
import { WeightError } from './errors.js';
import type { FileTensor } from './hooks.js';

/** A row-major [rows, cols] matrix as [cols, rows] (PyTorch's [out, in] linears ⇄ tfjs's [in, out]). */
export function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j];
  return out;
}

/**
 * Where a tensor of another library's file goes: its key and shape there, the variable it fills, and whether the
 * file holds the variable's transpose (a 2-D [out, in] PyTorch weight for a tfjs [in, out] kernel).
 */
export interface TensorSlot {
  key: string;
  shape: number[];
  variable: Variable;
  transposed: boolean;
}

/** A slot's variable as the file holds it (call after the variable's data is readable synchronously, or on cpu/wasm). */
export function slotTensor(slot: TensorSlot): FileTensor {
  const data = Float32Array.from(slot.variable.dataSync() as Float32Array);
  return { shape: [...slot.shape], data: slot.transposed ? transpose(data, slot.shape[1], slot.shape[0]) : data };
}

/**
 * Fills the slots' variables from a file's tensors, after checking all of them first: every tensor has a slot
 * (else `WeightError` naming it), every slot a tensor of its shape with finite values. `what` names the file kind.
 */
export function assignFileTensors(slots: TensorSlot[], tensors: Map<string, FileTensor>, what: string): void {
  const bySlot = new Map(slots.map((s) => [s.key, s]));
  for (const k of tensors.keys()) if (!bySlot.has(k)) throw new WeightError(`${what} has tensor '${k}', which is no parameter of this adapter on this model`, k);
  for (const s of slots) {
    const t = tensors.get(s.key);
    if (!t) throw new WeightError(`${what} lacks tensor '${s.key}'`, s.key);
    if (t.shape.join(',') !== s.shape.join(',')) throw new WeightError(`${what} tensor '${s.key}' has shape [${t.shape}], expected [${s.shape}]`, s.key);
    if (!t.data.every(Number.isFinite)) throw new WeightError(`${what} tensor '${s.key}' contains NaN or Infinity`, s.key);
  }
  for (const s of slots) {
    const t = tensors.get(s.key)!;
    const value = tf.tensor(s.transposed ? transpose(t.data, s.shape[0], s.shape[1]) : t.data, s.variable.shape, 'float32');
    s.variable.assign(value);
    value.dispose();
  }
}
