// Tensors of the reference interpreter: dense, row-major, on the CPU. Float dtypes are held in
// a Float32Array (so f32 rounding happens on every store) and bf16/f16 values are rounded to
// their format after each op; integers and bools are held exactly in a Float64Array.

import type { DType } from "./dtype.js";
import { isFloat } from "./dtype.js";
import { roundBf16, roundF16 } from "./numeric.js";

export interface Tensor {
  dtype: DType;
  shape: number[];
  data: Float32Array | Float64Array;
}

export const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

export function alloc(dtype: DType, shape: readonly number[]): Tensor {
  const n = numel(shape);
  return { dtype, shape: [...shape], data: isFloat(dtype) ? new Float32Array(n) : new Float64Array(n) };
}

/** A tensor from plain numbers, rounded to the dtype. */
export function tensor(dtype: DType, shape: readonly number[], values: ArrayLike<number>): Tensor {
  const t = alloc(dtype, shape);
  if (values.length !== t.data.length)
    throw new RangeError(`tensor: ${values.length} values for shape [${shape.join(", ")}]`);
  for (let i = 0; i < values.length; i++) t.data[i] = values[i];
  return roundToDType(t);
}

/** Rounds every element to what the dtype can hold, in place. */
export function roundToDType(t: Tensor): Tensor {
  const d = t.data;
  switch (t.dtype) {
    case "bf16":
      for (let i = 0; i < d.length; i++) d[i] = roundBf16(d[i]);
      break;
    case "f16":
      for (let i = 0; i < d.length; i++) d[i] = roundF16(d[i]);
      break;
    case "bool":
      for (let i = 0; i < d.length; i++) d[i] = d[i] === 0 ? 0 : 1; // NaN is true, as in C and PyTorch
      break;
    case "i64":
      for (let i = 0; i < d.length; i++) d[i] = Math.trunc(d[i]) + 0; // + 0: integers have no -0
      break;
    case "i32":
      for (let i = 0; i < d.length; i++) d[i] = wrap(Math.trunc(d[i]), 32, true);
      break;
    case "i8":
      for (let i = 0; i < d.length; i++) d[i] = wrap(Math.trunc(d[i]), 8, true);
      break;
    case "u8":
      for (let i = 0; i < d.length; i++) d[i] = wrap(Math.trunc(d[i]), 8, false);
      break;
    case "f32":
      break;
  }
  return t;
}

function wrap(x: number, bits: number, signed: boolean): number {
  const m = 2 ** bits;
  let r = ((x % m) + m) % m;
  if (signed && r >= m / 2) r -= m;
  return r;
}

/** Element at a multi-index (tests and debugging). */
export function at(t: Tensor, ...idx: number[]): number {
  const s = stridesOf(t.shape);
  return t.data[idx.reduce((o, i, k) => o + i * s[k], 0)];
}
