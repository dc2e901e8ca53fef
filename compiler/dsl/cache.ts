// The KV cache, as plain graph inputs and outputs. Traced with `kvCache: true`, a model gets, for
// each layer that calls `cacheUpdate`, inputs `past.<layer>.key|value` of shape [B, Hkv, P, D]
// (P = tokens already seen) and outputs `present.<layer>.key|value` = past ++ new along the
// sequence axis: the shape of Hugging Face's DynamicCache.update inside the eager attention.
// Without a cache, P is 0 and cacheUpdate is the identity, so one model file serves both.

import type { Dim } from "../ir/dim.js";
import { dimAdd } from "../ir/dim.js";
import { emit, Tensor, traceContext } from "./tensor.js";

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
