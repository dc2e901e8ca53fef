// Greedy decoding on the reference interpreter: the oracle the compiled targets' generate() is
// checked against. A graph traced without a KV cache re-runs the whole prefix each step (slow,
// and obviously right); one traced with a cache (inputs past.<i>.key|value, outputs
// present.<i>.key|value) runs the prompt once, then one token a step.

import { KilnError } from "./errors.js";
import type { Graph } from "./graph.js";
import type { ParamSource } from "./interpreter.js";
import { run } from "./interpreter.js";
import type { Tensor } from "./tensor.js";
import { alloc, tensor } from "./tensor.js";
import { typeString } from "./graph.js";

export interface GreedyOptions {
  maxNewTokens: number;
  /** stop after emitting one of these */
  stopTokens?: number[];
  /** called with each new token */
  onToken?: (id: number) => void;
}

/**
 * The cache inputs of a first step for a batch of B: a growing cache empty (past.* [B, H, 0, D]);
 * a static one (input cache_position) zeros of `capacity` tokens, at position 0.
 */
export function initialCache(g: Graph, B: number, capacity: number): Record<string, Tensor> {
  const cache: Record<string, Tensor> = {};
  for (const v of g.inputs.filter((x) => x.name.startsWith("past."))) {
    const shape = v.shape.map((d) => (d === "B" ? B : d === "P" ? 0 : d === "C" ? capacity : d));
    if (shape.some((d) => typeof d !== "number")) throw new KilnError("E_USAGE", `cannot make an empty cache for '${v.name}' ${typeString(v)}`);
    cache[v.name] = alloc(v.dtype, shape as number[]);
  }
  if (g.inputs.some((v) => v.name === "cache_position")) cache.cache_position = tensor("i64", [], [0]);
  return cache;
}

/** Argmax continuation of one prompt through a graph with input `input_ids: [B, S]` and output `logits: [B, S, V]`. */
export function greedyGenerate(g: Graph, params: ParamSource, prompt: number[], opts: GreedyOptions): number[] {
  if (!g.inputs.some((v) => v.name === "input_ids") || !g.outputs.some((o) => o.name === "logits"))
    throw new KilnError("E_USAGE", "greedyGenerate needs a graph with input 'input_ids' and output 'logits'", { where: g.name });
  if (prompt.length === 0) throw new KilnError("E_USAGE", "the prompt is empty");
  const ids = [...prompt];
  const pasts = g.inputs.filter((v) => v.name.startsWith("past."));
  const isStatic = g.inputs.some((v) => v.name === "cache_position");
  let cache = initialCache(g, 1, prompt.length + opts.maxNewTokens);
  for (let step = 0; step < opts.maxNewTokens; step++) {
    const fresh = pasts.length && step > 0 ? ids.slice(-1) : ids;
    const out = run(g, { input_ids: tensor("i64", [1, fresh.length], fresh), ...cache }, params, { verified: step > 0 });
    if (pasts.length) cache = Object.fromEntries(pasts.map((v) => [v.name, out[v.name.replace(/^past\./, "present.")]]));
    if (isStatic) cache.cache_position = tensor("i64", [], [ids.length]);
    const logits = out.logits;
    const V = logits.shape[2];
    const row = logits.data.subarray((fresh.length - 1) * V, fresh.length * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
    ids.push(best);
    opts.onToken?.(best);
    if (opts.stopTokens?.includes(best)) break;
  }
  return ids;
}
