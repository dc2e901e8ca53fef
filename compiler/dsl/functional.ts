// Free functions of the DSL: activations, combinators, masks and rotary helpers, each written
// with primitive ops so that passes see the plain math.

import { constant, emit, Tensor } from "./tensor.js";

export const matmul = (a: Tensor, b: Tensor): Tensor => a.matmul(b);
export const softmax = (x: Tensor, axis: number): Tensor => x.softmax(axis);
export const silu = (x: Tensor): Tensor => emit("silu", [x]);
export const gelu = (x: Tensor): Tensor => emit("gelu", [x]);
export const geluTanh = (x: Tensor): Tensor => emit("gelu_tanh", [x]);
export const relu = (x: Tensor): Tensor => emit("relu", [x]);
export const exp = (x: Tensor): Tensor => x.exp();
export const concat = (xs: Tensor[], axis: number): Tensor => emit("concat", xs, { axis });
export const where = (cond: Tensor, a: Tensor, b: Tensor): Tensor => emit("where", [cond, a, b]);
export const gather = (x: Tensor, idx: Tensor, axis: number): Tensor => emit("gather", [x, idx], { axis });

/** The causal mask lives with the KV cache it depends on (cache.ts). */
export { causalMask } from "./cache.js";

/**
 * rotate_half of RoPE (Su et al., 2021), the "half-split" layout Llama checkpoints use:
 * [x1, x2] -> [−x2, x1]. Written as one gather of the last axis by a constant permutation times a
 * constant sign, which is the same arithmetic as slice/neg/concat (·(−1) is exact) in one kernel.
 */
export function rotateHalf(x: Tensor): Tensor {
  const d = x.size(-1) as number;
  const h = d / 2;
  const perm = constant([...Array(d).keys()].map((i) => (i < h ? i + h : i - h)), [d], "i64");
  const sign = constant([...Array(d).keys()].map((i) => (i < h ? -1 : 1)), [d]).to(x.dtype);
  return gather(x, perm, -1).mul(sign);
}

export function applyRotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  return x.mul(cos).add(rotateHalf(x).mul(sin));
}

/** [B, Hkv, S, D] -> [B, Hkv·n, S, D], each kv head repeated n times (GQA/MQA as plain data movement). */
export function repeatKv(x: Tensor, n: number): Tensor {
  if (n === 1) return x;
  const [B, H, S, D] = x.shape;
  return x.unsqueeze(2).expand(B, H, n, S, D).reshape(B, (H as number) * n, S, D);
}

export { Tensor };
