// dce — dead-code elimination.
// Matches: op nodes whose result no output needs, directly or through other nodes.
// Guarantees: the outputs, their values and the order of the remaining nodes are unchanged;
//   the input graph is not mutated (a new graph is returned, or the input when nothing is dead).
// Leaves alone: inputs and params, even unused ones — inputs are the call signature (and bind
//   symbolic dims), params are the checkpoint contract (a weight the artifact does not read must
//   still be expected, or loading a checkpoint would report it as unexpected).

import type { Graph } from "../ir/graph.js";
import type { Pass } from "./manager.js";

export function dce(g: Graph): Graph {
  const live = new Set(g.outputs.map((o) => o.value.id));
  const keep = new Array<boolean>(g.nodes.length).fill(false);
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i];
    if (!live.has(n.result.id)) continue;
    keep[i] = true;
    for (const o of n.operands) live.add(o.id);
  }
  if (keep.every(Boolean)) return g;
  return { ...g, inputs: [...g.inputs], params: [...g.params], nodes: g.nodes.filter((_n, i) => keep[i]), outputs: [...g.outputs] };
}

export const dcePass: Pass = {
  name: "dce",
  description: "remove op nodes no output depends on (keeps inputs and params)",
  run: (g, ctx) => {
    const out = dce(g);
    if (out !== g) ctx.explain(`removed ${g.nodes.length - out.nodes.length} dead node(s)`);
    return out;
  },
};
