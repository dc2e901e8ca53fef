// The 4-bit qlinears that the codegen computes in one kernel call (emit.ts). Qlinears of scheme
// fp4/nf4 that read the same x with the same block, double quant, K and dtype (a layer's q/k/v;
// a gated MLP's gate/up) form a group, emitted as ONE qlinear4_group call at the first member's
// position (on the cuda target one GEMV launch at decode). A group that is exactly two linears of
// one N whose results are read only by one elementwise node computing silu(gate)·up (what
// fuse-elementwise makes of Llama's MLP) is a pair: one qlinear4_silu_mul call writes the
// elementwise node's result, and neither the node nor the two intermediates are emitted.
//
// A member joins only if every operand it reads exists at the first member's position (x, the
// weights and biases always do; a residual computed in between does not, and that linear then
// runs alone). The graph is not changed: this is where the target computes, not what.

import { shapeEq } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import type { Expr } from "../ir/expr.js";
import { parseExpr } from "../ir/expr.js";
import type { Graph, Node } from "../ir/graph.js";
import { usesOf } from "../ir/graph.js";

export interface Q4Group {
  /** in graph order; the call sits at members[0]'s position */
  members: Node[];
  /** a gate/up pair: silu(gate)·up written into the result of `product` (an elementwise node) */
  pair?: { gate: Node; up: Node; product: Node };
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
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  return [...groups.values()].filter((ms) => ms.length > 1).map((members) => ({ members, pair: gatedPair(members, uses, outputs) }));
}

/** members as gate and up of the elementwise silu(gate)·up that is their only reader, or undefined */
function gatedPair(members: Node[], uses: Map<number, Node[]>, outputs: Set<number>): Q4Group["pair"] {
  if (members.length !== 2) return undefined;
  const [a, b] = members;
  const readers = members.map((m) => uses.get(m.result.id) ?? []);
  const e = readers[0][0];
  if (!readers.every((r) => r.length === 1 && r[0] === e) || e.op !== "elementwise" || e.operands.length !== 2) return undefined;
  if (members.some((m) => outputs.has(m.result.id)) || a.operands[1].shape[0] !== b.operands[1].shape[0]) return undefined;
  if (e.result.dtype !== a.result.dtype || !shapeEq(e.result.shape, a.result.shape)) return undefined;
  const args = siluMul(parseExpr(e.attrs.expr as string), e.result.dtype);
  if (!args) return undefined;
  const gate = members.find((m) => m.result.id === e.operands[args.gate].id);
  const up = members.find((m) => m.result.id === e.operands[args.up].id);
  return gate && up && gate !== up ? { gate, up, product: e } : undefined;
}

/**
 * The operand indices of `(mul:T (silu:T $gate) $up)`, the product in either order (it commutes bit
 * for bit), every node of dtype T; undefined for any other expression.
 */
export function siluMul(e: Expr, dtype: DType): { gate: number; up: number } | undefined {
  if (e.kind !== "op" || e.op !== "mul" || e.dtype !== dtype || e.args.length !== 2) return undefined;
  for (const [s, u] of [e.args, [...e.args].reverse()]) {
    const arg = s.kind === "op" && s.op === "silu" && s.dtype === dtype && s.args.length === 1 ? s.args[0] : undefined;
    if (arg?.kind === "arg" && u.kind === "arg" && arg.index !== u.index) return { gate: arg.index, up: u.index };
  }
  return undefined;
}
