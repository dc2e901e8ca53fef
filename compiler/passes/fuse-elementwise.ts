// fuse-elementwise — chains of elementwise ops become one `elementwise` op (one kernel).
// Matches: unary and binary arithmetic, comparisons, where, cast, and scalar `full` constants,
//   whose result feeds exactly one other elementwise op of the chain and is not a graph output.
//   A value with several users (or an output) ends a chain and is computed once and read as an
//   operand, with one exception: a single op over real operands whose every user (at most 4) is
//   a chain is recomputed inside each of them (cheaper than a kernel that stores it).
// Guarantees: bit-identical results. The expression keeps every intermediate dtype, and the
//   interpreter and the targets round each intermediate to it, as the unfused ops stored it.
//   Operands broadcast to the fused op's shape exactly as they did through the chain (numpy
//   broadcasting composes), so a chain may read a [B, S, 1] value beside a [B, S, D] one.
// Leaves alone: chains of one op with no scalar constant to absorb (nothing to gain), and every
//   non-elementwise op (matmul, softmax, reductions, data movement).

import type { Expr } from "../ir/expr.js";
import { exprSize, printExpr } from "../ir/expr.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { GraphBuilder, usesOf } from "../ir/graph.js";
import { inferNode } from "../ir/verify.js";
import type { Pass } from "./manager.js";

const ELEMENTWISE = new Set([
  "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "sigmoid", "silu", "relu", "gelu", "gelu_tanh", "cos", "sin",
  "add", "sub", "mul", "div", "pow", "maximum", "minimum",
  "less", "less_equal", "greater", "greater_equal", "equal", "not_equal", "where", "cast",
]);

const isScalarFull = (n: Node): boolean => n.op === "full" && (n.attrs.shape as unknown[]).length === 0;
const fusable = (n: Node): boolean => ELEMENTWISE.has(n.op) || isScalarFull(n);

export function fuseElementwise(g: Graph, explain: (msg: string) => void = () => {}): Graph {
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const def = new Map<number, Node>(g.nodes.map((n) => [n.result.id, n]));
  // a node is absorbed into its single user when both are fusable and it is not an output
  const absorbed = new Set<number>();
  const intoChain = (u: Node): boolean => fusable(u) && !isScalarFull(u);
  const inlinable = (v: Value): boolean => {
    const n = def.get(v.id);
    if (!n || !fusable(n) || outputs.has(v.id)) return false;
    const us = uses.get(v.id) ?? [];
    if (us.length === 1) return intoChain(us[0]);
    // a one-op node read by a few chains (RMSNorm's x.float()) is recomputed in each of them
    // rather than stored and re-read: it needs a real operand, and no chain below it
    return (
      !isScalarFull(n) && us.length <= 4 && us.every(intoChain) &&
      n.operands.every((o) => !absorbed.has(o.id)) &&
      n.operands.some((o) => {
        const d = def.get(o.id);
        return !d || !isScalarFull(d);
      })
    );
  };

  const b = GraphBuilder.from(g); // fresh ids after every existing value
  const replace = new Map<number, Value>();
  const rewritten: Node[] = [];
  let fused = 0, removed = 0;

  for (const n of g.nodes) {
    if (inlinable(n.result)) {
      absorbed.add(n.result.id);
      continue;
    }
    const mapped = n.operands.map((o) => replace.get(o.id) ?? o);
    if (!fusable(n) || isScalarFull(n)) {
      rewritten.push({ ...n, operands: mapped });
      continue;
    }
    // build the expression of the chain rooted at n
    const leaves: Value[] = [];
    const leaf = (v: Value): Expr => {
      const m = replace.get(v.id) ?? v;
      let k = leaves.findIndex((x) => x.id === m.id);
      if (k < 0) k = leaves.push(m) - 1;
      return { kind: "arg", index: k };
    };
    const build = (node: Node): Expr => {
      if (isScalarFull(node)) return { kind: "lit", value: node.attrs.value as number, dtype: node.result.dtype };
      const args = node.operands.map((o) => (absorbed.has(o.id) ? build(def.get(o.id)!) : leaf(o)));
      return { kind: "op", op: node.op, dtype: node.result.dtype, args };
    };
    const expr = build(n);
    if (exprSize(expr) < 2 || leaves.length === 0) {
      // a lone op, or a chain of constants only: keep the original nodes, in their order
      const sub: Node[] = [];
      const collect = (node: Node): void => {
        for (const o of node.operands) if (absorbed.has(o.id)) collect(def.get(o.id)!);
        sub.push(node);
      };
      collect(n);
      const order = new Map(g.nodes.map((x, i) => [x.result.id, i]));
      sub.sort((x, y) => order.get(x.result.id)! - order.get(y.result.id)!);
      for (const x of sub) rewritten.push({ ...x, operands: x.operands.map((o) => replace.get(o.id) ?? o) });
      continue;
    }
    const attrs = { expr: printExpr(expr) };
    const type = inferNode({ op: "elementwise", operands: leaves, attrs, loc: n.loc });
    const v = b.newValue("op", type);
    replace.set(n.result.id, v);
    rewritten.push(n.loc ? { op: "elementwise", operands: leaves, attrs, result: v, loc: n.loc } : { op: "elementwise", operands: leaves, attrs, result: v });
    fused++;
    removed += exprSize(expr);
  }
  if (fused === 0) return g;
  explain(`fused ${removed} ops into ${fused} elementwise kernel(s)`);
  return {
    ...g,
    inputs: [...g.inputs],
    params: [...g.params],
    nodes: rewritten,
    outputs: g.outputs.map((o) => ({ name: o.name, value: replace.get(o.value.id) ?? o.value })),
  };
}

export const fuseElementwisePass: Pass = {
  name: "fuse-elementwise",
  description: "fuse chains of elementwise ops (and their scalar constants) into single elementwise kernels",
  run: (g, ctx) => fuseElementwise(g, (m) => ctx.explain(m)),
};
