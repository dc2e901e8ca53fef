// The 4-bit qlinears that the codegen computes in one kernel call (emit.ts). Qlinears of scheme
// fp4/nf4 that read the same x with the same block, double quant, K and dtype (a layer's q/k/v;
// a gated MLP's gate/up) form a group, emitted as ONE qlinear4_group call at the first member's
// position (on the cuda target one GEMV launch at decode).
//
// A member joins only if every operand it reads exists at the first member's position (x, the
// weights and biases always do; a residual computed in between does not, and that linear then
// runs alone). The graph is not changed: this is where the target computes, not what.

import type { Graph, Node } from "../ir/graph.js";

export interface Q4Group {
  /** in graph order; the call sits at members[0]'s position */
  members: Node[];
}

export function qlinear4Groups(g: Graph): Q4Group[] {
  const at = new Map(g.nodes.map((n, i) => [n.result.id, i]));
  const groups = new Map<string, Node[]>();
  for (const n of g.nodes) {
    if (n.op !== "qlinear" || (n.attrs.scheme !== "nf4" && n.attrs.scheme !== "fp4")) continue;
    const [x, w] = n.operands;
    const key = JSON.stringify([x.id, n.attrs.scheme, n.attrs.block, n.attrs.double_quant === true, w.shape[1], n.result.dtype]);
    const first = groups.get(key)?.[0];
    if (first && n.operands.some((o) => o.kind === "op" && at.get(o.id)! >= at.get(first.result.id)!)) continue;
    groups.set(key, [...(groups.get(key) ?? []), n]);
  }
  return [...groups.values()].filter((ms) => ms.length > 1).map((members) => ({ members }));
}
