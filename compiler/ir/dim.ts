// Symbolic dimensions. A dim is a number or a polynomial over symbols with integer
// coefficients, kept as a canonical string ("S", "P+S", "B*S", "2*S+1"), so that two dims
// are equal exactly when their strings are. This is just enough algebra for what models
// do with shapes: concatenation adds (P + S), flattening multiplies (B*S), slicing subtracts.

import { KilnError } from "./errors.js";

export type Dim = number | string;

/** monomial (symbols sorted, joined by "*"; "" for the constant term) -> coefficient */
type Poly = Map<string, number>;

const SYM = /^[A-Za-z_][A-Za-z0-9_]*$/;

function parsePoly(d: Dim): Poly {
  const p: Poly = new Map();
  if (typeof d === "number") {
    if (d !== 0) p.set("", d);
    return p;
  }
  const src = d.replace(/\s+/g, "");
  // split into signed terms: "P+S-1" -> ["P", "+S", "-1"]
  const terms = src.match(/[+-]?[^+-]+/g);
  if (!terms || terms.join("") !== src) throw new KilnError("E_SHAPE", `malformed dim expression '${d}'`);
  for (const t of terms) {
    let sign = 1;
    let body = t;
    if (body[0] === "+" || body[0] === "-") {
      sign = body[0] === "-" ? -1 : 1;
      body = body.slice(1);
    }
    let coef = sign;
    const syms: string[] = [];
    for (const f of body.split("*")) {
      if (/^\d+$/.test(f)) coef *= Number(f);
      else if (SYM.test(f)) syms.push(f);
      else throw new KilnError("E_SHAPE", `malformed dim expression '${d}'`);
    }
    addTerm(p, syms.sort().join("*"), coef);
  }
  return p;
}

function addTerm(p: Poly, mono: string, coef: number): void {
  const c = (p.get(mono) ?? 0) + coef;
  if (c === 0) p.delete(mono);
  else p.set(mono, c);
}

function fromPoly(p: Poly): Dim {
  if (p.size === 0) return 0;
  if (p.size === 1 && p.has("")) return p.get("")!;
  // symbols first in sorted order, constant last: "P+S+1"
  const monos = [...p.keys()].sort((a, b) => (a === "" ? 1 : b === "" ? -1 : a < b ? -1 : a > b ? 1 : 0));
  let out = "";
  for (const m of monos) {
    const c = p.get(m)!;
    const mag = Math.abs(c);
    const body = m === "" ? String(mag) : mag === 1 ? m : `${mag}*${m}`;
    out += out === "" ? (c < 0 ? `-${body}` : body) : c < 0 ? `-${body}` : `+${body}`;
  }
  return out;
}

/** The canonical form of a dim (numbers stay numbers; "S+P" -> "P+S"). */
export const canonDim = (d: Dim): Dim => fromPoly(parsePoly(d));

export function dimAdd(a: Dim, b: Dim): Dim {
  const p = parsePoly(a);
  for (const [m, c] of parsePoly(b)) addTerm(p, m, c);
  return fromPoly(p);
}

export const dimSub = (a: Dim, b: Dim): Dim => dimAdd(a, dimMul(b, -1));

export function dimMul(a: Dim, b: Dim): Dim {
  const p: Poly = new Map();
  for (const [ma, ca] of parsePoly(a))
    for (const [mb, cb] of parsePoly(b)) {
      const syms = [...(ma ? ma.split("*") : []), ...(mb ? mb.split("*") : [])].sort();
      addTerm(p, syms.join("*"), ca * cb);
    }
  return fromPoly(p);
}

export const dimProduct = (ds: readonly Dim[]): Dim => ds.reduce<Dim>((acc, d) => dimMul(acc, d), 1);

export const dimEq = (a: Dim, b: Dim): boolean => canonDim(a) === canonDim(b);

export const shapeEq = (a: readonly Dim[], b: readonly Dim[]): boolean =>
  a.length === b.length && a.every((d, i) => dimEq(d, b[i]));

/** The symbols a dim mentions. */
export function dimSymbols(d: Dim): string[] {
  const out = new Set<string>();
  for (const m of parsePoly(d).keys()) for (const s of m ? m.split("*") : []) out.add(s);
  return [...out];
}

/** Evaluates a dim with the symbols bound; an unbound symbol is an error naming it. */
export function evalDim(d: Dim, bindings: Readonly<Record<string, number>>): number {
  if (typeof d === "number") return d;
  let v = 0;
  for (const [m, c] of parsePoly(d)) {
    let t = c;
    for (const s of m ? m.split("*") : []) {
      const b = bindings[s];
      if (b === undefined) throw new KilnError("E_SHAPE", `symbolic dim '${s}' (in '${d}') has no value`);
      t *= b;
    }
    v += t;
  }
  return v;
}

export const formatShape = (s: readonly Dim[]): string => `[${s.map(String).join(", ")}]`;

/**
 * A dim an input's shape can bind a symbol from: "X" or "X+c" / "X-c" (e.g. cu_seqlens [B+1]);
 * the symbol and the constant to subtract from the actual size. Undefined for anything else.
 */
export function bindingDim(d: Dim): { sym: string; offset: number } | undefined {
  if (typeof d !== "string") return undefined;
  const m = /^([A-Za-z_]\w*)(?:([+-])(\d+))?$/.exec(canonDim(d) as string);
  if (!m) return undefined;
  return { sym: m[1], offset: m[3] ? (m[2] === "-" ? -Number(m[3]) : Number(m[3])) : 0 };
}
