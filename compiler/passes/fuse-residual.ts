// fuse-residual — the residual add after a linear becomes the linear's epilogue: every pre-norm
// transformer block ends its attention and its MLP with `h + o_proj(…)` / `h + down_proj(…)`, and
// a GEMM computes D = A·B + β·C in one kernel (cuBLASLt's C operand with β = 1), so the add costs one
// extra read inside the GEMM instead of a kernel that reads two activations and writes a third.
// Matches (after fuse-norm, before fuse-elementwise):
//   add(r, linear(x, w [, b]))  or  add(linear(x, w [, b]), r)   →   linear(x, w [, b], r) {residual = true}
//   where the linear's result is read only by that add (once) and is not a graph output, r has
//   exactly the linear's shape and dtype (no broadcasting either way), and the dtype is a float;
//   the same for a qlinear (the 4-bit GEMV's store or the GEMM of its dequantized weight; LLM.int8's
//   GEMV and GEMM epilogues).
// Guarantees: the fused op takes the add's place and its result value, so every reader of the add
//   reads it unchanged; the result is round(x·Wᵀ (+ b) + r), rounded once, where the unfused graph
//   rounds twice: within one unit in the last place of the larger of |x·Wᵀ| and |y| (ops.ts).
// Leaves alone, saying why under --explain: a linear read elsewhere or returned, a residual that
//   broadcasts, integer linears, and linears that already have a residual.

import { dimEq } from "../ir/dim.js";
import { isFloat } from "../ir/dtype.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { locString, usesOf } from "../ir/graph.js";
import type { Pass } from "./manager.js";

type Result = { ok: true; lin: Node; r: Value } | { ok: false; why: string };

export function fuseResidual(g: Graph, explain: (msg: string) => void = () => {}): Graph {
  const def = new Map<number, Node>(g.nodes.map((n) => [n.result.id, n]));
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const sameType = (a: Value, b: Value): boolean => a.dtype === b.dtype && a.shape.length === b.shape.length && a.shape.every((d, i) => dimEq(d, b.shape[i]));

  /** a linear, or a qlinear, whose result is operand k of the add */
  const linearAt = (add: Node, k: 0 | 1): Node | undefined => {
    const n = def.get(add.operands[k].id);
    return n && (n.op === "linear" || n.op === "qlinear") ? n : undefined;
  };
  /** add(r, lin) in either order, the rule's conditions next to it */
  const match = (add: Node, k: 0 | 1): Result => {
    const lin = linearAt(add, k)!;
    const r = add.operands[1 - k];
    const no = (why: string): Result => ({ ok: false, why });
    if (lin.attrs.residual === true) return no("the linear already adds a residual");
    if (!isFloat(lin.result.dtype)) return no(`the linear computes in ${lin.result.dtype}`);
    if ((uses.get(lin.result.id) ?? []).length !== 1 || outputs.has(lin.result.id)) return no("the linear's result is read elsewhere too");
    if (!sameType(r, lin.result) || !sameType(add.result, lin.result)) return no("the residual broadcasts (its shape is not the linear's)");
    return { ok: true, lin, r };
  };

  const fused = new Map<number, Node>(); // add's result id -> the fused linear
  const removed = new Set<number>(); // result ids of the linears absorbed
  for (const add of g.nodes) {
    if (add.op !== "add") continue;
    const ks = ([0, 1] as const).filter((k) => linearAt(add, k));
    if (ks.length === 0) continue;
    const tries = ks.map((k) => match(add, k));
    const m = tries.find((t) => t.ok);
    const at = add.loc ? ` at ${locString(add.loc)}` : "";
    if (!m || !m.ok) {
      explain(`residual add${at}: not fused: ${tries.map((t) => (t.ok ? "" : t.why)).join("; ")}`);
      continue;
    }
    const { lin, r } = m;
    // the add's result value, so readers need no renaming; the linear's source location
    fused.set(add.result.id, { ...lin, operands: [...lin.operands, r], attrs: { ...lin.attrs, residual: true }, result: add.result });
    removed.add(lin.result.id);
    const lat = lin.loc ? ` at ${locString(lin.loc)}` : "";
    explain(`${lin.op}${lat}: residual add${at} fused (${lin.result.dtype}[${lin.result.shape.join(", ")}]${lin.operands.length > 2 ? ", with bias" : ""})`);
  }
  if (fused.size === 0) return g;
  const nodes = g.nodes.filter((n) => !removed.has(n.result.id)).map((n) => fused.get(n.result.id) ?? n);
  return { ...g, inputs: [...g.inputs], params: [...g.params], nodes, outputs: [...g.outputs] };
}

export const fuseResidualPass: Pass = {
  name: "fuse-residual",
  description: "fold add(r, linear(…)) into the linear (residual epilogue: cuBLASLt's β·C, the GEMV's store)",
  run: (g, ctx) => fuseResidual(g, (m) => ctx.explain(m)),
};
