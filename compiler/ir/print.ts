// The IR's text form, MLIR-like:
//
//   graph llama {
//     input %input_ids: i64[B, S]
//     param %model.embed_tokens.weight: f32[256, 64]
//     %0: f32[B, S, 64] = gather(%model.embed_tokens.weight, %input_ids) {axis = 0} loc("models/llama.ts":42:13)
//     output logits = %0
//   }
//
// Op results are numbered in definition order, attributes are printed sorted by name, dims and
// dtypes bare, strings quoted, so the text of a graph is canonical and `parse` reads it back
// exactly: print(parse(print(g))) === print(g).

import type { AttrValue, Graph, Node, Value } from "./graph.js";
import { typeString } from "./graph.js";
import { canonDim } from "./dim.js";
import type { AttrKind } from "./ops.js";
import { OPS } from "./ops.js";

const BARE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// the parser's keywords lex as keywords, not names, so a name spelled like one is quoted
const KEYWORDS = new Set(["graph", "input", "param", "output", "loc", "true", "false", "inf", "nan"]);
const name = (s: string): string => (BARE_NAME.test(s) && !KEYWORDS.has(s) ? s : JSON.stringify(s));

export function formatNumber(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (Object.is(x, -0)) return "-0";
  return String(x);
}

function formatAttr(v: AttrValue, kind: AttrKind | undefined): string {
  if (Array.isArray(v)) return `[${v.map((x) => formatAttr(x, kind)).join(", ")}]`;
  if (typeof v === "boolean") return String(v);
  if (typeof v === "number") return formatNumber(v);
  if (kind === "dim" || kind === "dims") return String(canonDim(v));
  return kind === "dtype" ? v : JSON.stringify(v);
}

export function printNode(n: Node, ref: (v: Value) => string): string {
  const d = OPS.get(n.op);
  const keys = Object.keys(n.attrs).sort();
  const attrs = keys.length ? ` {${keys.map((k) => `${k} = ${formatAttr(n.attrs[k], d?.attrs[k]?.kind)}`).join(", ")}}` : "";
  const loc = n.loc ? ` loc(${JSON.stringify(n.loc.file)}:${n.loc.line}:${n.loc.col})` : "";
  return `${ref(n.result)}: ${typeString(n.result)} = ${n.op}(${n.operands.map(ref).join(", ")})${attrs}${loc}`;
}

export function print(g: Graph): string {
  const num = new Map<number, number>();
  g.nodes.forEach((n, i) => num.set(n.result.id, i));
  const ref = (v: Value): string => (v.kind === "op" ? `%${num.get(v.id) ?? `?${v.id}`}` : `%${v.name}`);
  const lines = [`graph ${name(g.name)} {`];
  for (const v of g.inputs) lines.push(`  input %${v.name}: ${typeString(v)}`);
  for (const v of g.params) lines.push(`  param %${v.name}: ${typeString(v)}`);
  for (const n of g.nodes) lines.push(`  ${printNode(n, ref)}`);
  for (const o of g.outputs) lines.push(`  output ${name(o.name)} = ${ref(o.value)}`);
  lines.push("}");
  return lines.join("\n") + "\n";
}

/** JSON form (`kiln ir --json`): the same content as the text form, as plain data. */
export function toJSON(g: Graph): unknown {
  const num = new Map<number, number>();
  g.nodes.forEach((n, i) => num.set(n.result.id, i));
  const ref = (v: Value): string => (v.kind === "op" ? `%${num.get(v.id)}` : `%${v.name}`);
  const ty = (v: Value) => ({ dtype: v.dtype, shape: v.shape });
  return {
    name: g.name,
    inputs: g.inputs.map((v) => ({ name: v.name, ...ty(v) })),
    params: g.params.map((v) => ({ name: v.name, ...ty(v) })),
    nodes: g.nodes.map((n) => ({ result: ref(n.result), ...ty(n.result), op: n.op, operands: n.operands.map(ref), attrs: n.attrs, ...(n.loc ? { loc: n.loc } : {}) })),
    outputs: g.outputs.map((o) => ({ name: o.name, value: ref(o.value) })),
  };
}
