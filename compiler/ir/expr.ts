// Expressions of the `elementwise` op: a tree of scalar ops over the op's operands, written as
// an S-expression attribute so the IR text form stays plain data:
//   (mul:bf16 $2 (cast:bf16 (mul:f32 $0 (rsqrt:f32 (add:f32 $1 (full:f32 1e-05))))))
// `$k` is operand k (broadcast to the op's shape); every inner node names its dtype, and its
// value is rounded to that dtype exactly where the unfused op would have stored it.

import type { DType } from "./dtype.js";
import { isDType } from "./dtype.js";

export type Expr =
  | { kind: "arg"; index: number }
  | { kind: "lit"; value: number; dtype: DType }
  | { kind: "op"; op: string; dtype: DType; args: Expr[] };

export class ExprError extends Error {}

const num = (x: number): string =>
  Number.isNaN(x) ? "nan" : x === Infinity ? "inf" : x === -Infinity ? "-inf" : Object.is(x, -0) ? "-0" : String(x);

export function printExpr(e: Expr): string {
  if (e.kind === "arg") return `$${e.index}`;
  if (e.kind === "lit") return `(full:${e.dtype} ${num(e.value)})`;
  return `(${e.op}:${e.dtype} ${e.args.map(printExpr).join(" ")})`;
}

export function parseExpr(text: string): Expr {
  const toks = text.match(/\(|\)|[^\s()]+/g) ?? [];
  let i = 0;
  const next = (): string => {
    if (i >= toks.length) throw new ExprError(`expression ends early: ${text}`);
    return toks[i++];
  };
  const parse = (): Expr => {
    const t = next();
    if (t.startsWith("$")) {
      const k = Number(t.slice(1));
      if (!Number.isInteger(k) || k < 0) throw new ExprError(`bad operand reference '${t}'`);
      return { kind: "arg", index: k };
    }
    if (t !== "(") throw new ExprError(`expected '(' or $k, got '${t}'`);
    const head = next();
    const [op, dtype] = head.split(":");
    if (!dtype || !isDType(dtype)) throw new ExprError(`'${head}' needs a dtype: op:dtype`);
    if (op === "full") {
      const v = next();
      const value = v === "nan" ? NaN : v === "inf" ? Infinity : v === "-inf" ? -Infinity : Number(v);
      if (v !== "nan" && Number.isNaN(value)) throw new ExprError(`bad number '${v}'`);
      if (next() !== ")") throw new ExprError("full takes one number");
      return { kind: "lit", value, dtype };
    }
    const args: Expr[] = [];
    while (toks[i] !== ")") args.push(parse());
    next();
    return { kind: "op", op, dtype, args };
  };
  const e = parse();
  if (i !== toks.length) throw new ExprError(`unexpected '${toks[i]}' after the expression`);
  return e;
}

/** Operand indices an expression reads. */
export function exprArgs(e: Expr, out = new Set<number>()): Set<number> {
  if (e.kind === "arg") out.add(e.index);
  else if (e.kind === "op") for (const a of e.args) exprArgs(a, out);
  return out;
}

export function exprSize(e: Expr): number {
  return e.kind === "op" ? 1 + e.args.reduce((s, a) => s + exprSize(a), 0) : e.kind === "lit" ? 1 : 0;
}
