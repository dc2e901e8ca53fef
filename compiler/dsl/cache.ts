// The KV cache, as plain graph inputs and outputs. Traced with `kvCache: true`, a model gets, for
// each layer that calls `cacheUpdate`, inputs `past.<layer>.key|value` of shape [B, Hkv, P, D]
// (P = tokens already seen) and outputs `present.<layer>.key|value` = past ++ new along the
// sequence axis: the shape of Hugging Face's DynamicCache.update inside the eager attention.
// Without a cache, P is 0 and cacheUpdate is the identity, so one model file serves both.

import type { Dim } from "../ir/dim.js";
import { dimAdd } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { causalMask, where } from "./functional.js";
import { arange, emit, full, Tensor, traceContext } from "./tensor.js";

/** Tokens already in the cache: the symbol "P" when tracing with a cache, else 0. */
export function pastLength(): Dim {
  return traceContext().cache?.past ?? 0;
}

/** Positions of the new tokens: P + [0, S). */
export function positions(S: Dim): { start: Dim; end: Dim } {
  const P = pastLength();
  return { start: P, end: dimAdd(P, S) };
}

/** Appends this step's keys and values ([B, H, S, D]) to the cache of `layer`; returns all of them ([B, H, P+S, D]). */
export function cacheUpdate(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
  const ctx = traceContext();
  if (!ctx.cache) return [k, v];
  const cache = ctx.cache;
  const grow = (t: Tensor, what: "key" | "value"): Tensor => {
    const [B, H, , D] = t.shape;
    const past = new Tensor(ctx.builder.input(`past.${layer}.${what}`, { dtype: t.dtype, shape: [B, H, cache.past, D] }));
    const all = emit("concat", [past, t], { axis: 2 });
    cache.outputs.push([`present.${layer}.${what}`, all.value]);
    return all;
  };
  return [grow(k, "key"), grow(v, "value")];
}

// ---------------------------------------------------------------- padded batches
// Traced with `attentionMask: true`, a model gets the input `attention_mask: i64[B, P+S]` (Hugging
// Face's: 1 = real token, 0 = padding, covering the cached tokens too). Positions then count real
// tokens only (HF: cumsum(mask) − 1, and 1 at padding), and the attention bias hides padded keys.
// Masked scores get the dtype's lowest finite value, not −inf, as HF's eager path does: a padded
// query row sees no key and must come out finite (uniform), or its NaN would reach the real rows.

const LOWEST: Record<string, number> = { f32: -3.4028234663852886e38, bf16: -3.3895313892515355e38, f16: -65504 };

/** Position ids of the new tokens, as f32 [B, S] (padded batches) or [1, S]. */
export function positionIds(S: Dim): Tensor {
  const ctx = traceContext();
  const { start, end } = positions(S);
  const mask = ctx.padding?.mask;
  if (!mask) return arange(start, end).float().reshape(1, S);
  const T = end;
  // cumsum over the mask as a product with the upper-triangular ones matrix (exact below 2^24)
  const i = arange(0, T).reshape(T, 1);
  const j = arange(0, T).reshape(1, T);
  const upper = where(i.le(j), full([], 1), full([], 0)); // [T, T]
  const m = mask.float();
  const cum = m.matmul(upper).slice(-1, start, end); // [B, S]
  const real = mask.slice(-1, start, end).ne(0);
  return where(real, cum.sub(1), full([], 1));
}

/**
 * Additive attention bias broadcasting over [B, H, S, P+S]: causal (query i, at position P + i,
 * sees keys j ≤ P + i) and, in padded batches, no padded key. Without padding this is causalMask.
 */
export function attentionBias(S: Dim, dtype: DType = "f32"): Tensor {
  const ctx = traceContext();
  const mask = ctx.padding?.mask;
  if (!mask) return causalMask(S, dtype);
  const { start, end } = positions(S);
  const i = arange(start, end).reshape(S, 1);
  const j = arange(0, end).reshape(1, end);
  const [B] = mask.shape;
  const keyOk = mask.ne(0).reshape(B, 1, 1, end); // [B, 1, 1, T]
  const lowest = full([], LOWEST[dtype] ?? LOWEST.f32, dtype);
  return where(j.le(i), where(keyOk, full([], 0, dtype), lowest), lowest); // [B, 1, S, T]
}
