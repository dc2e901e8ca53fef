// cse — common-subexpression elimination.
// Matches: two nodes with the same op, the same operands (after earlier merges; in either order
//   for commutative ops) and equal attributes (compared in their printed form, so -0 ≠ 0 and
//   nan = nan, as the values they stand for).
// Guarantees: every use of a later duplicate (outputs included) reads the earlier node's result
//   instead, and the duplicate is removed. Results are bit-identical: no op of this IR has side
//   effects or randomness, and the commutative ops listed are commutative in IEEE arithmetic.
// Leaves alone: source locations (the first node's loc is kept), nodes whose declared result
//   types differ, and inputs/params with equal types (distinct values by definition).

import type { AttrValue, Graph, Node, Value } from "../ir/graph.js";
import { typeString } from "../ir/graph.js";
import { canonDim } from "../ir/dim.js";
import { OPS } from "../ir/ops.js";
import { formatNumber } from "../ir/print.js";
import type { Pass } from "./manager.js";

/** a ∘ b = b ∘ a, exactly, for every input (NaN included) */
const COMMUTATIVE = new Set(["add", "mul", "maximum", "minimum", "equal", "not_equal"]);

function attrKey(v: AttrValue, dimLike: boolean): string {
  if (Array.isArray(v)) return `[${v.map((x) => attrKey(x, dimLike)).join(",")}]`;
  if (typeof v === "number") return formatNumber(v);
  if (typeof v === "string") return dimLike ? String(canonDim(v)) : JSON.stringify(v);
  return String(v);
}

function nodeKey(n: Node, operands: Value[]): string {
  const d = OPS.get(n.op);
  const ids = operands.map((o) => o.id);
  if (COMMUTATIVE.has(n.op)) ids.sort((a, b) => a - b);
  const attrs = Object.keys(n.attrs)
    .sort()
    .map((k) => {
      const kind = d?.attrs[k]?.kind;
      return `${k}=${attrKey(n.attrs[k], kind === "dim" || kind === "dims")}`;
    });
  return `${n.op}(${ids.join(",")}){${attrs.join(",")}}:${typeString(n.result)}`;
}

export function cse(g: Graph): Graph {
  const replace = new Map<number, Value>();
  const seen = new Map<string, Value>();
  const sub = (v: Value): Value => replace.get(v.id) ?? v;
  const nodes: Node[] = [];
  for (const n of g.nodes) {
    const operands = n.operands.map(sub);
    const key = nodeKey(n, operands);
    const first = seen.get(key);
    if (first) replace.set(n.result.id, first);
    else {
      seen.set(key, n.result);
      nodes.push(operands.some((o, i) => o !== n.operands[i]) ? { ...n, operands } : n);
    }
  }
  if (replace.size === 0) return g;
  return { ...g, inputs: [...g.inputs], params: [...g.params], nodes, outputs: g.outputs.map((o) => ({ name: o.name, value: sub(o.value) })) };
}

export const csePass: Pass = {
  name: "cse",
  description: "reuse the first of identical op nodes (same op, operands, attributes)",
  run: (g, ctx) => {
    const out = cse(g);
    if (out !== g) ctx.explain(`merged ${g.nodes.length - out.nodes.length} duplicate node(s)`);
    return out;
  },
};
