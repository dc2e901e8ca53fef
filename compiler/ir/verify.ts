// The verifier: a graph is well-formed when every op is declared, has the right operand count
// and attributes, uses only values defined before it, and declares the result type that its
// shape rule gives. Errors name the op, its operands, and the model source line that made it.

import type { Dim } from "./dim.js";
import { bindingDim, dimSymbols, shapeEq } from "./dim.js";
import { isDType } from "./dtype.js";
import { KilnError } from "./errors.js";
import type { Graph, Node, TensorType, Value } from "./graph.js";
import { locString, typeString } from "./graph.js";
import { checkAttrKind, OPS, ShapeError } from "./ops.js";

/** How an op reads in an error message: `%5 = matmul(%3: f32[B, S, 64], %4: f32[64, 64]) at file:line:col`. */
export function describeNode(n: Node, g?: Graph): string {
  const name = (v: Value): string => (v.kind === "op" ? `%${g ? resultIndex(g, v) : v.id}` : `%${v.name}`);
  const ops = n.operands.map((v) => `${name(v)}: ${typeString(v)}`).join(", ");
  return `${name(n.result)} = ${n.op}(${ops})${n.loc ? ` at ${locString(n.loc)}` : ""}`;
}

function resultIndex(g: Graph, v: Value): number {
  const i = g.nodes.findIndex((n) => n.result === v || n.result.id === v.id);
  return i < 0 ? v.id : i;
}

export function verifyError(n: Node, message: string, g?: Graph): KilnError {
  return new KilnError("E_VERIFY", `op '${n.op}' (${describeNode(n, g)}): ${message}`, {
    where: n.loc ? locString(n.loc) : undefined,
  });
}

/** Applies an op's shape rule, turning a ShapeError into a KilnError that names the op. */
export function inferNode(n: Pick<Node, "op" | "operands" | "attrs" | "loc">, code: "E_VERIFY" | "E_SHAPE" = "E_VERIFY"): TensorType {
  const d = OPS.get(n.op);
  if (!d) throw new KilnError(code, `unknown op '${n.op}'`, { where: n.loc ? locString(n.loc) : undefined });
  try {
    return d.infer(n.operands, n.attrs);
  } catch (e) {
    if (e instanceof ShapeError) {
      const ops = n.operands.map((v) => typeString(v)).join(", ");
      throw new KilnError(code, `op '${n.op}' (${ops}): ${e.message}`, { where: n.loc ? locString(n.loc) : undefined });
    }
    throw e;
  }
}

/** A numeric dim that no tensor can have (negative or fractional), if the type has one. */
const badDim = (t: TensorType): number | undefined =>
  t.shape.find((d): d is number => typeof d === "number" && !(Number.isInteger(d) && d >= 0)) as number | undefined;

export function verify(g: Graph): void {
  const defined = new Set<number>();
  const names = new Set<string>();
  const checkValue = (v: Value, what: string): void => {
    if (!isDType(v.dtype)) throw new KilnError("E_VERIFY", `${what} '${v.name}' has unknown dtype '${v.dtype}'`);
    const bad = badDim(v);
    if (bad !== undefined) throw new KilnError("E_VERIFY", `${what} '${v.name}' has type ${typeString(v)}: dim ${bad} is not a non-negative integer`);
    if (defined.has(v.id)) throw new KilnError("E_VERIFY", `${what} '${v.name || v.id}' is defined twice`);
    defined.add(v.id);
  };
  for (const [list, what] of [[g.inputs, "input"], [g.params, "param"]] as const)
    for (const v of list) {
      if (!/^[A-Za-z0-9_.]*[A-Za-z_.][A-Za-z0-9_.]*$/.test(v.name))
        throw new KilnError("E_VERIFY", `${what} name '${v.name}' must be letters, digits, '_' and '.', and not only digits`);
      if (names.has(v.name)) throw new KilnError("E_VERIFY", `${what} name '${v.name}' is used twice`);
      names.add(v.name);
      checkValue(v, what);
    }

  // every symbol must be bound by an input's shape, where a plain symbol dim names it
  const bound = new Set(g.inputs.flatMap((v) => v.shape.flatMap((d) => bindingDim(d)?.sym ?? [])));
  const checkSymbols = (ds: Dim[], what: () => string): void => {
    for (const d of ds) for (const s of dimSymbols(d)) if (!bound.has(s)) throw new KilnError("E_VERIFY", `${what()} uses symbolic dim '${s}', which no input's shape defines`);
  };
  for (const v of [...g.inputs, ...g.params]) checkSymbols(v.shape, () => `${v.kind} '${v.name}'`);

  for (const n of g.nodes) {
    const d = OPS.get(n.op);
    if (!d) throw verifyError(n, "unknown op", g);
    const [lo, hi] = typeof d.arity === "number" ? [d.arity, d.arity] : d.arity;
    if (n.operands.length < lo || n.operands.length > hi)
      throw verifyError(n, `takes ${lo === hi ? lo : `${lo} to ${hi}`} operands, got ${n.operands.length}`, g);
    n.operands.forEach((o, i) => {
      if (!defined.has(o.id)) throw verifyError(n, `operand ${i} is used before it is defined`, g);
    });
    for (const [k, spec] of Object.entries(d.attrs)) {
      if (!(k in n.attrs)) {
        if (!spec.optional) throw verifyError(n, `missing attribute '${k}' (${spec.kind})`, g);
      } else if (!checkAttrKind(spec.kind, n.attrs[k])) throw verifyError(n, `attribute '${k}' must be ${spec.kind}, got ${JSON.stringify(n.attrs[k])}`, g);
    }
    for (const k of Object.keys(n.attrs)) if (!(k in d.attrs)) throw verifyError(n, `unknown attribute '${k}'`, g);
    let t: TensorType;
    try {
      t = d.infer(n.operands, n.attrs);
    } catch (e) {
      if (e instanceof ShapeError) throw verifyError(n, e.message, g);
      throw e;
    }
    if (t.dtype !== n.result.dtype || !shapeEq(t.shape, n.result.shape))
      throw verifyError(n, `result is declared ${typeString(n.result)} but the op gives ${typeString(t)}`, g);
    const bad = badDim(n.result);
    if (bad !== undefined) throw verifyError(n, `result type ${typeString(n.result)} has dim ${bad}, which is not a non-negative integer`, g);
    checkSymbols(n.result.shape, () => `op '${n.op}' (${describeNode(n, g)})`);
    checkValue(n.result, "result");
  }

  const outNames = new Set<string>();
  for (const o of g.outputs) {
    if (outNames.has(o.name)) throw new KilnError("E_VERIFY", `output name '${o.name}' is used twice`);
    outNames.add(o.name);
    if (!defined.has(o.value.id)) throw new KilnError("E_VERIFY", `output '${o.name}' refers to a value that is not defined`);
  }
  if (g.outputs.length === 0) throw new KilnError("E_VERIFY", `graph '${g.name}' has no outputs`);
}
