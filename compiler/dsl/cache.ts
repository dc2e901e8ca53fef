// The KV cache, as plain graph inputs and outputs. Traced with `kvCache: true`, a model gets, for
// each layer that calls `cacheUpdate`, inputs `past.<layer>.key|value` of shape [B, Hkv, P, D]
// (P = tokens already seen) and outputs `present.<layer>.key|value` = past ++ new along the
// sequence axis: the shape of Hugging Face's DynamicCache.update inside the eager attention.
// Without a cache, P is 0 and cacheUpdate is the identity, so one model file serves both.
//
// Traced with `kvCache: "static"` (Hugging Face's StaticCache), the cache has a fixed capacity C:
// `past.*` are [B, Hkv, C, D], the input `cache_position` (i64 scalar) says how many tokens are in
// it, this step's keys and values are written at [cache_position, cache_position + S), attention
// reads all C rows and the causal mask hides those past the query. A decode step then has the same
// shapes at every position, so a target can replay it (the cuda target as a CUDA graph), and the
// write happens in place instead of copying the cache each step.
import type { Dim } from "../ir/dim.js";
import { dimAdd, dimEq } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import { where } from "./functional.js";
import { arange, emit, full, Tensor, traceContext } from "./tensor.js";

/** Tokens already in the cache: the symbol "P" when tracing with a cache, else 0. */
export function pastLength(): Dim {
  const c = traceContext().cache;
  if (c?.static) throw new KilnError("E_USAGE", "with a static KV cache the past length is a tensor (cachePosition()), not a dim: use positionIds / attentionBias / causalMask");
  return c?.past ?? 0;
}

/** Positions of the new tokens: P + [0, S). */
export function positions(S: Dim): { start: Dim; end: Dim } {
  const P = pastLength();
  return { start: P, end: dimAdd(P, S) };
}

/** The static cache's write position (i64 scalar tensor), or undefined without one. */
export function cachePosition(): Tensor | undefined {
  return traceContext().cache?.static?.position;
}

/** Absolute positions of the S new tokens as i64 [S]: P + [0, S), P a dim or the static cache's position tensor. */
function queryPositions(S: Dim): Tensor {
  const st = traceContext().cache?.static;
  if (st) return arange(0, S).add(st.position);
  const { start, end } = positions(S);
  return arange(start, end);
}

/** Keys the attention reads: P + S (or the static cache's capacity C). */
export function keyLength(S: Dim): Dim {
  const st = traceContext().cache?.static;
  return st ? st.capacity : positions(S).end;
}

/**
 * Causal mask [S, T] (T = keyLength(S)): 0 where key j ≤ the query's position, −inf after. With a
 * sliding `window` (Mistral's sliding_window) keys more than window − 1 before the query are hidden too.
 */
export function causalMask(S: Dim, dtype: DType = "f32", window?: number): Tensor {
  const T = keyLength(S);
  const i = queryPositions(S).reshape(S, 1);
  const j = arange(0, T).reshape(1, T);
  const hidden = full([], -Infinity, dtype);
  if (window === undefined) return where(j.gt(i), hidden, full([], 0, dtype));
  if (!(Number.isInteger(window) && window >= 1)) throw new KilnError("E_USAGE", `a sliding window must be a positive integer, got ${window}`);
  return where(j.gt(i), hidden, where(j.le(i.sub(window)), hidden, full([], 0, dtype)));
}

/** Appends this step's keys and values ([B, H, S, D]) to the cache of `layer`; returns all of them ([B, H, P+S, D]). */
export function cacheUpdate(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
  const ctx = traceContext();
  if (!ctx.cache) return [k, v];
  const cache = ctx.cache;
  const st = cache.static;
  const grow = (t: Tensor, what: "key" | "value"): Tensor => {
    const [B, H, , D] = t.shape;
    if (st) {
      const past = new Tensor(ctx.builder.input(`past.${layer}.${what}`, { dtype: t.dtype, shape: [B, H, st.capacity, D] }));
      const all = emit("cache_write", [past, t, st.position], {});
      cache.outputs.push([`present.${layer}.${what}`, all.value]);
      return all;
    }
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
  const mask = ctx.padding?.mask;
  if (!mask) return queryPositions(S).float().reshape(1, S);
  const { start, end } = positions(S);
  // HF: cumsum(mask) − 1 at real tokens, 1 at padding (one op, so unpad-varlen can find it)
  const all = emit("mask_positions", [mask], {}); // [B, P+S]
  return dimEq(start, 0) && dimEq(end, mask.shape[1]) ? all : all.slice(-1, start, end);
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
