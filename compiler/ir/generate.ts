// Greedy decoding on the reference interpreter: the oracle the compiled targets' generate() is
// checked against. No KV cache: each step re-runs the whole prefix (slow, and obviously right).

import { KilnError } from "./errors.js";
import type { Graph } from "./graph.js";
import type { ParamSource } from "./interpreter.js";
import { run } from "./interpreter.js";
import { tensor } from "./tensor.js";

export interface GreedyOptions {
  maxNewTokens: number;
  /** stop after emitting one of these */
  stopTokens?: number[];
  /** called with each new token */
  onToken?: (id: number) => void;
}

/** Argmax continuation of one prompt through a graph with input `input_ids: [B, S]` and output `logits: [B, S, V]`. */
export function greedyGenerate(g: Graph, params: ParamSource, prompt: number[], opts: GreedyOptions): number[] {
  if (!g.inputs.some((v) => v.name === "input_ids") || !g.outputs.some((o) => o.name === "logits"))
    throw new KilnError("E_USAGE", "greedyGenerate needs a graph with input 'input_ids' and output 'logits'", { where: g.name });
  if (prompt.length === 0) throw new KilnError("E_USAGE", "the prompt is empty");
  const ids = [...prompt];
  for (let step = 0; step < opts.maxNewTokens; step++) {
    const { logits } = run(g, { input_ids: tensor("i64", [1, ids.length], ids) }, params, { verified: step > 0 });
    const V = logits.shape[2];
    const row = logits.data.subarray((ids.length - 1) * V, ids.length * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
    ids.push(best);
    opts.onToken?.(best);
    if (opts.stopTokens?.includes(best)) break;
  }
  return ids;
}
