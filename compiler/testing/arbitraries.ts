// fast-check arbitraries for Kiln: dims, shapes, dtypes, tensors, attention masks, and random
// *valid* IR graphs with concrete inputs and weights for the reference interpreter.
//
// A random graph is built from a recipe (a few small numbers per step): each step picks an op
// and its operands from the values made so far, adds helper nodes where an operand must be
// reshaped, transposed or cast to fit, and asks the op's own shape rule (`inferNode`) for the
// result type, so every node is well-typed by construction. A step that does not fit is
// dropped. Shrinking the recipe (fewer steps, smaller numbers) shrinks the graph, which is what
// makes a failing pass report a small counterexample.

import fc from "fast-check";
import type { Arbitrary } from "fast-check";
import type { Dim } from "../ir/dim.js";
import { dimAdd, dimEq, dimMul, dimProduct, dimSub, evalDim } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { DTYPES, isFloat } from "../ir/dtype.js";
import { isKilnError, KilnError } from "../ir/errors.js";
import { fuseElementwise } from "../passes/fuse-elementwise.js";
import type { AttrValue, Graph, Loc, Value } from "../ir/graph.js";
import { GraphBuilder } from "../ir/graph.js";
import { broadcastShapes } from "../ir/ops.js";
import type { Tensor } from "../ir/tensor.js";
import { numel, tensor } from "../ir/tensor.js";
import { inferNode } from "../ir/verify.js";

// ---------------------------------------------------------------- dims, shapes, dtypes

export interface DimOptions {
  /** largest numeric dim (default 4) */
  maxDim?: number;
  /** symbols a dim may be (default none) */
  symbols?: readonly string[];
}

/** A dim a tensor can have: a number in [1, maxDim] or one of the symbols. */
export function arbDim({ maxDim = 4, symbols = [] }: DimOptions = {}): Arbitrary<Dim> {
  const n = fc.integer({ min: 1, max: maxDim });
  return symbols.length ? fc.oneof(n, fc.constantFrom(...symbols)) : n;
}

/**
 * A dim expression as a user might write it, not canonical: terms in any order, factors in any
 * order, coefficients that may be 0 or negative ("S*2 - 1 + B*S"). For testing dim algebra.
 */
export function arbDimExpr({ symbols = ["B", "S", "P"], maxTerms = 3 }: { symbols?: readonly string[]; maxTerms?: number } = {}): Arbitrary<Dim> {
  const term = fc.record({
    coef: fc.integer({ min: -3, max: 3 }),
    syms: fc.array(fc.constantFrom(...symbols), { maxLength: 2 }),
    coefLast: fc.boolean(),
    showOne: fc.boolean(),
  });
  return fc.oneof(
    fc.integer({ min: -5, max: 8 }),
    fc.tuple(fc.array(term, { minLength: 1, maxLength: maxTerms }), fc.boolean()).map(([terms, spaced]) => {
      let out = "";
      for (const t of terms) {
        const mag = Math.abs(t.coef);
        const factors: string[] = [...t.syms];
        if (mag !== 1 || t.showOne || factors.length === 0) {
          if (t.coefLast) factors.push(String(mag));
          else factors.unshift(String(mag));
        }
        const sign = t.coef < 0 ? "-" : out === "" ? "" : "+";
        out += (spaced && out !== "" ? ` ${sign} ` : sign) + factors.join("*");
      }
      return out;
    }),
  );
}

export interface ShapeOptions extends DimOptions {
  minRank?: number;
  /** default 4 */
  maxRank?: number;
}

export function arbShape({ minRank = 0, maxRank = 4, ...dim }: ShapeOptions = {}): Arbitrary<Dim[]> {
  return fc.array(arbDim(dim), { minLength: minRank, maxLength: maxRank });
}

export const FLOAT_DTYPES: readonly DType[] = ["f32", "f16", "bf16"];
export const INT_DTYPES: readonly DType[] = ["i64", "i32", "i8", "u8"];

export function arbDType(kind: "float" | "int" | "any" = "any"): Arbitrary<DType> {
  return fc.constantFrom(...(kind === "float" ? FLOAT_DTYPES : kind === "int" ? INT_DTYPES : DTYPES));
}

// ---------------------------------------------------------------- tensors

export interface TensorOptions {
  /** value range; defaults: floats [-4, 4], i8 [-8, 8], u8 [0, 15], i32/i64 [-16, 16] */
  min?: number;
  max?: number;
}

const INT_RANGE: Partial<Record<DType, [number, number]>> = { i8: [-8, 8], u8: [0, 15], i32: [-16, 16], i64: [-16, 16] };

/**
 * A tensor of a concrete shape: finite values (no NaN or inf), floats rounded to the dtype by
 * `tensor()`, and never all zeros (a nonempty tensor has at least one nonzero element).
 */
export function arbTensor(dtype: DType, shape: readonly number[], { min, max }: TensorOptions = {}): Arbitrary<Tensor> {
  const n = numel(shape);
  let elem: Arbitrary<number>;
  if (isFloat(dtype)) elem = fc.double({ min: min ?? -4, max: max ?? 4, noNaN: true, noDefaultInfinity: true });
  else if (dtype === "bool") elem = fc.boolean().map(Number);
  else {
    const [lo, hi] = INT_RANGE[dtype] ?? [-16, 16];
    elem = fc.integer({ min: Math.ceil(min ?? lo), max: Math.floor(max ?? hi) });
  }
  return fc.array(elem, { minLength: n, maxLength: n }).map((vals) => {
    const t = tensor(dtype, shape, vals);
    if (n > 0 && t.data.every((x) => x === 0)) {
      const lo = min ?? (dtype === "u8" || dtype === "bool" ? 0 : -1);
      const hi = max ?? 1;
      t.data[0] = hi >= 1 ? 1 : lo <= -1 ? -1 : isFloat(dtype) ? (hi > 0 ? hi : lo) : 0;
      return tensor(dtype, shape, t.data);
    }
    return t;
  });
}

/** Weights for a param: like arbTensor, floats in [-1, 1] by default. Note the (shape, dtype) order. */
export const arbWeights = (shape: readonly number[], dtype: DType = "f32", opts: TensorOptions = {}): Arbitrary<Tensor> =>
  arbTensor(dtype, shape, isFloat(dtype) ? { min: -1, max: 1, ...opts } : opts);

export type MaskKind = "left" | "right" | "mixed" | "any";

/**
 * A Hugging Face style attention_mask [B, S]: 1 for a real token, 0 for padding; every row has
 * at least one real token. "left": padding before the tokens; "right": after; "mixed": each row
 * left or right; "any": any pattern (holes included).
 */
export function arbMask(B: number, S: number, { kind = "any", dtype = "i64" }: { kind?: MaskKind; dtype?: DType } = {}): Arbitrary<Tensor> {
  const rows = (row: Arbitrary<number[]>): Arbitrary<Tensor> =>
    fc.array(row, { minLength: B, maxLength: B }).map((rs) => tensor(dtype, [B, S], rs.flat()));
  const padded = (len: number, left: boolean): number[] =>
    Array.from({ length: S }, (_x, i) => (left ? (i >= S - len ? 1 : 0) : i < len ? 1 : 0));
  const len = fc.integer({ min: 1, max: S });
  switch (kind) {
    case "left":
      return rows(len.map((n) => padded(n, true)));
    case "right":
      return rows(len.map((n) => padded(n, false)));
    case "mixed":
      return rows(fc.tuple(len, fc.boolean()).map(([n, left]) => padded(n, left)));
    case "any":
      return rows(
        fc.tuple(fc.array(fc.boolean(), { minLength: S, maxLength: S }), fc.nat(S - 1)).map(([bits, at]) => {
          const r = bits.map(Number);
          if (!r.includes(1)) r[at] = 1;
          return r;
        }),
      );
  }
}

// ---------------------------------------------------------------- random graphs

export interface GraphOptions {
  /** most op nodes in a graph, helper nodes included (default 12) */
  maxNodes?: number;
  /** the ops steps are drawn from (default: every op in GRAPH_OPS); helper nodes may use others */
  ops?: readonly string[];
  /** inputs may have symbolic dims B and S (default true) */
  symbolic?: boolean;
  /** the range of each symbol's value, inclusive (default B: [1, 3], S: [1, 4]) */
  sizes?: Readonly<Record<string, readonly [number, number]>>;
  /** the float dtypes a graph computes in (default f32, f16, bf16) */
  dtypes?: readonly DType[];
  /** most elements of any value, for every binding of the symbols (default 256) */
  maxElements?: number;
}

/** Ops a pass introduces rather than a step draws: "elementwise" comes from running fuse-elementwise on a drawn graph. */
const FUSED_OPS = ["elementwise"];

export const DEFAULT_SIZES: Readonly<Record<string, readonly [number, number]>> = { B: [1, 3], S: [1, 4] };

/** Values of full/constant beyond the usual: every special float the text form must carry. */
export const SPECIAL_FLOATS: readonly number[] = [0, -0, 1, -1, 0.5, -2.5, 1e-7, -3e38, 65504, Infinity, -Infinity, NaN];

interface Step {
  op: number;
  a: number;
  b: number;
  c: number;
  d: number;
  v: number;
  loc: number;
}

interface Recipe {
  name: number;
  dtype: number;
  inputs: { shape: Dim[]; int: boolean }[];
  steps: Step[];
  outputs: number[];
  outName: number;
  fuse: boolean;
}

const GRAPH_NAMES = ["g", "llama", "graph", "my model", "m.v2"];
const INPUT_NAMES = ["x", "input_ids", "hidden.states", "0h"];
const OUTPUT_NAMES = ["out", "logits", "hidden.0", "output", "my output", "nan"];
const LOC_FILES = ["models/llama.ts", "m.ts", 'dir with space/we"ird\\name.ts'];

/** A step that does not fit the values at hand; the step is dropped. */
class Skip extends Error {}

type Pred = (v: Value) => boolean;
const notBool: Pred = (v) => v.dtype !== "bool";
const rankAtLeast = (r: number): Pred => (v) => v.shape.length >= r;
const both = (p: Pred, q: Pred): Pred => (v) => p(v) && q(v);

function broadcastable(a: Dim[], b: Dim[]): boolean {
  try {
    broadcastShapes([a, b]);
    return true;
  } catch {
    return false;
  }
}

/** The k-th permutation of [0, n) (Lehmer code). */
function permutation(n: number, k: number): number[] {
  const rest = Array.from({ length: n }, (_x, i) => i);
  const out: number[] = [];
  for (let i = n; i > 0; i--) {
    out.push(rest.splice(k % i, 1)[0]);
    k = Math.floor(k / i);
  }
  return out;
}

class Gen {
  readonly b: GraphBuilder;
  readonly pool: Value[] = [];
  /** every binding of the bound symbols within their sizes */
  combos: Record<string, number>[] = [{}];
  /** dims an expand/full may introduce: the bound symbols and small numbers */
  vocab: Dim[] = [1, 2, 3];
  loc: Loc | undefined;
  private nParams = 0;

  constructor(
    name: string,
    readonly float: DType,
    readonly maxElements: number,
  ) {
    this.b = new GraphBuilder(name);
  }

  bind(sizes: Readonly<Record<string, readonly [number, number]>>): void {
    const syms = [...new Set(this.b.graph.inputs.flatMap((v) => v.shape.filter((d): d is string => typeof d === "string")))].sort();
    this.combos = [{}];
    for (const s of syms) {
      const [lo, hi] = sizes[s] ?? [1, 3];
      this.combos = this.combos.flatMap((c) => Array.from({ length: hi - lo + 1 }, (_x, i) => ({ ...c, [s]: lo + i })));
    }
    this.vocab = [...syms, 1, 2, 3];
  }

  /** smallest and largest value of a dim over every binding */
  range(d: Dim): [number, number] {
    const vs = this.combos.map((c) => evalDim(d, c));
    return [Math.min(...vs), Math.max(...vs)];
  }

  private checkShape(shape: Dim[]): void {
    if (shape.some((d) => this.range(d)[0] < 0)) throw new Skip("a dim may be negative");
    if (this.combos.some((c) => numel(shape.map((d) => evalDim(d, c))) > this.maxElements)) throw new Skip("too many elements");
  }

  /** the k-th most recent value satisfying pred */
  pick(k: number, pred: Pred = () => true): Value | undefined {
    const c = this.pool.filter(pred);
    return c.length ? c[c.length - 1 - (k % c.length)] : undefined;
  }

  need(k: number, pred: Pred = () => true): Value {
    const v = this.pick(k, pred);
    if (!v) throw new Skip("no operand fits");
    return v;
  }

  emit(op: string, operands: Value[], attrs: Record<string, AttrValue> = {}): Value {
    const t = inferNode({ op, operands, attrs }); // a KilnError here drops the step
    this.checkShape(t.shape);
    const v = this.b.node(op, operands, attrs, t, this.loc);
    this.pool.push(v);
    return v;
  }

  param(shape: Dim[], dtype: DType): Value {
    this.checkShape(shape);
    const name = this.nParams % 5 === 4 ? `lm_head_${this.nParams}.weight` : `model.layers.${this.nParams}.weight`;
    this.nParams++;
    const v = this.b.param(name, { dtype, shape });
    this.pool.push(v);
    return v;
  }

  asFloat(v: Value): Value {
    return isFloat(v.dtype) ? v : this.emit("cast", [v], { to: this.float });
  }

  numeric(v: Value): Value {
    return v.dtype === "bool" ? this.emit("cast", [v], { to: this.float }) : v;
  }

  /** reshape to at least rank r by adding leading 1s */
  atLeastRank(v: Value, r: number): Value {
    return v.shape.length >= r ? v : this.emit("reshape", [v], { shape: [...new Array<Dim>(r - v.shape.length).fill(1), ...v.shape] });
  }

  /** a float-ish value for full/constant: `v`, truncated for integer dtypes */
  value(v: number, dtype: DType): number {
    if (isFloat(dtype)) return v;
    if (!Number.isFinite(v)) return 0;
    return dtype === "bool" ? (v > 0 ? 1 : 0) : Math.trunc(v);
  }

  /** a second operand for an elementwise op with `a`: same dtype, shape broadcastable with a's */
  partner(a: Value, s: Step): Value {
    const y = s.c % 4 === 0 ? this.pick(s.d, (v) => v !== a && v.dtype === a.dtype && broadcastable(v.shape, a.shape)) : undefined;
    if (y) return y;
    if (s.c % 4 === 2) return this.emit("full", [], { value: this.value(s.v, a.dtype), shape: [], dtype: a.dtype });
    if (s.c % 4 === 3) return a;
    // a weight of a.shape's trailing dims, some of them 1
    const shape = a.shape.slice(s.d % (a.shape.length + 1)).map((d, i) => ((s.d >> (i + 2)) & 1 ? 1 : d));
    return this.param(shape, a.dtype);
  }
}

type Builder = (g: Gen, s: Step) => void;

const POSITIVE_DOMAIN = new Set(["log", "sqrt", "rsqrt", "reciprocal"]);

const unary = (name: string): Builder => (g, s) => {
  let x = g.numeric(g.need(s.a));
  if (name !== "neg" && name !== "abs") x = g.asFloat(x);
  if (POSITIVE_DOMAIN.has(name) && s.c % 2 === 0)
    x = g.emit("add", [g.emit("abs", [x]), g.emit("full", [], { value: 0.5, shape: [], dtype: x.dtype })]);
  g.emit(name, [x]);
};

const binary = (name: string): Builder => (g, s) => {
  let a = g.need(s.a, notBool);
  if (!isFloat(a.dtype) && (name === "div" || name === "pow")) a = g.asFloat(a);
  const y = g.partner(a, s);
  g.emit(name, s.b % 2 ? [y, a] : [a, y]);
};

const axisOf = (r: number, k: number): number => (k % 2 ? (k >> 1) % r : ((k >> 1) % r) - r);

/** rms_norm / layer_norm over a value's last dim, with a weight (and sometimes a bias) of it */
const norm = (g: Gen, s: Step, name: "rms_norm" | "layer_norm"): void => {
  const x = g.asFloat(g.numeric(g.atLeastRank(g.need(s.a), 1)));
  const D = x.shape[x.shape.length - 1];
  const affine = [g.param([D], x.dtype), ...(name === "layer_norm" && s.d % 2 ? [g.param([D], x.dtype)] : [])];
  g.emit(name, [x, ...affine], { eps: [1e-5, 1e-6, 0, Math.abs(s.v)][s.c % 4] });
};

const BUILDERS: Record<string, Builder> = {
  ...Object.fromEntries(
    ["neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "sigmoid", "silu", "relu", "gelu", "gelu_tanh", "cos", "sin"].map((n) => [n, unary(n)]),
  ),
  ...Object.fromEntries(
    ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "less", "less_equal", "greater", "greater_equal", "equal", "not_equal"].map((n) => [n, binary(n)]),
  ),
  where: (g, s) => {
    const a = g.need(s.a);
    const cond =
      g.pick(s.b, (v) => v.dtype === "bool" && broadcastable(v.shape, a.shape)) ??
      (() => {
        const x = g.numeric(a);
        return g.emit("greater", [x, g.emit("full", [], { value: g.value(s.v, x.dtype), shape: [], dtype: x.dtype })]);
      })();
    const y = g.partner(a, s);
    g.emit("where", s.d % 2 ? [cond, y, a] : [cond, a, y]);
  },
  cast: (g, s) => void g.emit("cast", [g.need(s.a)], { to: DTYPES[s.c % DTYPES.length] }),
  full: (g, s) => {
    const like = g.need(s.a);
    const shape = s.c % 3 === 0 ? [] : like.shape.slice(s.c % (like.shape.length + 1));
    const dtype: DType = s.d % 5 === 0 ? "i32" : s.d % 5 === 1 ? "bool" : g.float;
    g.emit("full", [], { value: g.value(s.v, dtype), shape, dtype });
  },
  constant: (g, s) => {
    const rank = s.d % 3;
    const shape = [1 + (s.c % 3), 1 + (s.b % 2)].slice(0, rank);
    const n = numel(shape);
    const dtype: DType = s.d % 4 === 3 ? "i32" : g.float;
    const values = Array.from({ length: n }, (_x, i) => g.value(i === s.b % n ? s.v : (((s.b + 7 * i) % 9) - 4) / 2, dtype));
    g.emit("constant", [], { values, shape, dtype });
  },
  arange: (g, s) => {
    const start = s.c % 3;
    const syms = g.vocab.filter((d): d is string => typeof d === "string");
    let end: Dim = start + (s.b % 4);
    if (s.d % 3 !== 0 && syms.length) {
      const sym = syms[s.b % syms.length];
      const e = s.d % 3 === 1 ? sym : dimAdd(sym, 1);
      if (g.range(e)[0] >= start) end = e;
    }
    const dtype = (["i64", "i32", g.float] as const)[(s.d >> 2) % 3];
    g.emit("arange", [], { start, end, dtype });
  },
  matmul: (g, s) => {
    const a = g.pick(s.a, both(notBool, rankAtLeast(2))) ?? g.atLeastRank(g.need(s.a, notBool), 2);
    const r = a.shape.length;
    const K = a.shape[r - 1];
    let w: Value | undefined;
    if (s.c % 3 === 1) w = g.emit("transpose", [a], { perm: [...Array.from({ length: r - 2 }, (_x, i) => i), r - 1, r - 2] });
    else if (s.c % 3 === 2)
      w = g.pick(s.d, (v) => v.dtype === a.dtype && v.shape.length >= 2 && dimEq(v.shape[v.shape.length - 2], K) && broadcastable(v.shape.slice(0, -2), a.shape.slice(0, -2)));
    if (!w) {
      const batch = r >= 3 && s.b % 3 !== 0 ? [s.b % 3 === 1 ? 1 : a.shape[r - 3]] : [];
      w = g.param([...batch, K, 1 + (s.d % 4)], a.dtype);
    }
    g.emit("matmul", [a, w]);
  },
  linear: (g, s) => {
    const x = g.atLeastRank(g.need(s.a, notBool), 1);
    const K = x.shape[x.shape.length - 1];
    const N = 1 + (s.c % 4);
    const w = g.param([N, K], x.dtype);
    const ops = s.d % 2 ? [x, w, g.param([N], x.dtype)] : [x, w];
    // a third of them add a residual of their result's type (fuse-residual's form), where one is at hand
    const out = [...x.shape.slice(0, -1), N];
    const r = s.b % 3 === 0 ? g.pick(s.a + 1, (v) => v.dtype === x.dtype && v.shape.length === out.length && v.shape.every((d, i) => dimEq(d, out[i]))) : undefined;
    g.emit("linear", r ? [...ops, r] : ops, r ? { residual: true } : {});
  },
  qlinear: (g, s) => {
    const x = g.asFloat(g.atLeastRank(g.need(s.a, notBool), 1));
    const K = x.shape[x.shape.length - 1];
    const N = 1 + (s.c % 4);
    const w = g.param([N, K], x.dtype);
    const scheme = ["nf4", "fp4", "int8"][s.b % 3];
    const attrs = { scheme, block: [64, 2, 4][s.d % 3], double_quant: scheme !== "int8" && s.d % 2 === 0, threshold: scheme === "int8" ? [6, 0.5][s.b % 2] : 0 };
    g.emit("qlinear", s.d % 2 ? [x, w, g.param([N], x.dtype)] : [x, w], attrs);
  },
  softmax: (g, s) => {
    const x = g.asFloat(g.atLeastRank(g.need(s.a, notBool), 1));
    g.emit("softmax", [x], { axis: axisOf(x.shape.length, s.c) });
  },
  argmax: (g, s) => {
    const x = g.asFloat(g.atLeastRank(g.need(s.a, notBool), 1));
    g.emit("argmax", [x], { axis: s.c % 2 ? x.shape.length - 1 : -1 });
  },
  ...Object.fromEntries(
    ["reduce_sum", "reduce_mean", "reduce_max"].map((n): [string, Builder] => [
      n,
      (g, s) => {
        const x = g.atLeastRank(g.need(s.a, notBool), 1);
        g.emit(n, [x], { axis: axisOf(x.shape.length, s.c), keepdim: s.d % 2 === 1 });
      },
    ]),
  ),
  reshape: (g, s) => {
    const x = g.need(s.a);
    const sh = x.shape;
    const r = sh.length;
    let shape: Dim[];
    const unitAt = sh.findIndex((d) => d === 1);
    const splitAt = sh.findIndex((d) => typeof d === "number" && d >= 2 && (d % 2 === 0 || d % 3 === 0));
    const variant = s.c % 4 === 0 && r < 2 ? 1 : s.c % 4;
    switch (variant) {
      case 0: {
        // flatten two neighbours: [B, S, H] -> [B*S, H]
        const i = s.d % (r - 1);
        shape = [...sh.slice(0, i), dimMul(sh[i], sh[i + 1]), ...sh.slice(i + 2)];
        break;
      }
      case 1: {
        const i = s.d % (r + 1);
        shape = [...sh.slice(0, i), 1, ...sh.slice(i)];
        break;
      }
      case 2:
        shape = unitAt >= 0 ? sh.filter((_d, i) => i !== unitAt) : [dimProduct(sh)];
        break;
      default:
        if (splitAt >= 0) {
          const n = sh[splitAt] as number;
          const f = n % 2 === 0 ? 2 : 3;
          shape = [...sh.slice(0, splitAt), f, n / f, ...sh.slice(splitAt + 1)];
        } else shape = [dimProduct(sh)];
    }
    g.emit("reshape", [x], { shape });
  },
  transpose: (g, s) => {
    const x = g.need(s.a);
    g.emit("transpose", [x], { perm: permutation(x.shape.length, s.c) });
  },
  expand: (g, s) => {
    const x = g.need(s.a);
    const units = x.shape.map((d, i) => (d === 1 ? i : -1)).filter((i) => i >= 0);
    const dim = g.vocab[s.d % g.vocab.length];
    const shape = units.length && s.b % 2 === 0 ? x.shape.map((d, i) => (i === units[s.c % units.length] ? dim : d)) : [dim, ...x.shape];
    g.emit("expand", [x], { shape });
  },
  slice: (g, s) => {
    const x = g.atLeastRank(g.need(s.a), 1);
    const r = x.shape.length;
    const ax = s.c % r;
    const d = x.shape[ax];
    const start = s.d % 3;
    const syms = g.vocab.filter((v): v is string => typeof v === "string");
    const ends: Dim[] = [d, start + (s.b % 3), dimSub(d, 1), ...syms];
    let [st, end]: [Dim, Dim] = [start, ends[s.b % ends.length]];
    // valid at every binding: 0 <= start <= end <= dim
    const ok = g.combos.every((c) => {
      const e = evalDim(end, c);
      return e >= (st as number) && e <= evalDim(d, c);
    });
    if (!ok) [st, end] = [0, d];
    g.emit("slice", [x], { axis: s.b % 2 ? ax : ax - r, start: st, end });
  },
  concat: (g, s) => {
    const x = g.atLeastRank(g.need(s.a), 1);
    const r = x.shape.length;
    const ax = s.c % r;
    const axis = s.b % 2 ? ax : ax - r;
    let operands: Value[];
    switch (s.d % 4) {
      case 0:
        operands = [x, x];
        break;
      case 1:
        operands = [x, g.param(x.shape.map((d, i) => (i === ax ? 1 + (s.b % 2) : d)), x.dtype)];
        break;
      case 2:
        operands = [x];
        break;
      default: {
        const y = g.pick(s.b, (v) => v !== x && v.dtype === x.dtype && v.shape.length === r && v.shape.every((d, i) => i === ax || dimEq(d, x.shape[i])));
        operands = y ? [y, x, y] : [x, x, x];
      }
    }
    g.emit("concat", operands, { axis });
  },
  gather: (g, s) => {
    const x = g.atLeastRank(g.need(s.a), 1);
    const r = x.shape.length;
    const ax = s.c % r;
    const n = x.shape[ax];
    const [lo] = g.range(n);
    let idx: Value;
    if (s.d % 3 === 0 || lo < 1) idx = g.emit("arange", [], { start: 0, end: n, dtype: s.b % 2 ? "i64" : "i32" });
    else {
      const shape = s.d % 3 === 1 ? [1 + (s.b % 3)] : [1 + (s.b % 2), 2];
      const values = Array.from({ length: numel(shape) }, (_x, i) => (s.b + 5 * i) % lo);
      idx = g.emit("constant", [], { values, shape, dtype: "i32" });
    }
    g.emit("gather", [x, idx], { axis: s.b % 2 ? ax : ax - r });
  },
  flash_attention: (g, s) => {
    // q, k, v from values of the graph, each seen as [1, H, n, D]: n rows of D features
    const x = g.asFloat(g.numeric(g.atLeastRank(g.need(s.a), 1)));
    const D = x.shape[x.shape.length - 1];
    const rows = dimProduct(x.shape.slice(0, -1));
    const q = g.emit("reshape", [x], { shape: [1, 1, rows, D] });
    const y = g.pick(s.b, (v) => v !== x && v.dtype === x.dtype && v.shape.length >= 1 && dimEq(v.shape[v.shape.length - 1], D));
    const kv = y ? g.emit("reshape", [y], { shape: [1, 1, dimProduct(y.shape.slice(0, -1)), D] }) : q;
    const scale = [1, 0.5, 0.125, -0.75][s.c % 4];
    // causal, sometimes with the static cache's position as an explicit query offset
    const offset = s.d % 4 === 2 ? [g.emit("constant", [], { values: [s.c % 3], shape: [], dtype: "i64" })] : [];
    const alibi: Record<string, number[]> = s.c % 3 === 1 ? { alibi: [[0.5, -0.25, 0.125][s.b % 3]] } : {}; // one query head: one slope
    g.emit("flash_attention", [q, kv, s.d % 3 === 0 ? q : kv, ...offset], { causal: s.d % 2 === 0, scale, kv_groups: 1, ...alibi });
  },
  rms_norm: (g, s) => norm(g, s, "rms_norm"),
  layer_norm: (g, s) => norm(g, s, "layer_norm"),
  mask_positions: (g, s) => {
    // an attention_mask-like constant: 0/1 rows, some padded on the left, some on the right
    const T = 1 + (s.b % 4);
    const values = Array.from({ length: 2 * T }, (_x, i) => ((i * 7 + s.c) % 3 === 0 ? 0 : 1));
    g.emit("mask_positions", [g.emit("constant", [], { values, shape: [2, T], dtype: "i64" })], {});
  },
  varlen_positions: (g, s) => {
    // cu_seqlens of 1–3 packed sequences (an empty one included sometimes)
    const lens = [1 + (s.b % 3), s.c % 3, 1 + (s.d % 2)].slice(0, 1 + (s.a % 3));
    const cu = lens.reduce<number[]>((acc, l) => [...acc, acc[acc.length - 1] + l], [0]);
    g.emit("varlen_positions", [g.emit("constant", [], { values: cu, shape: [cu.length], dtype: "i32" })], { length: cu[cu.length - 1] });
  },
  varlen_cache_positions: (g, s) => {
    // 1–3 packed sequences (an empty one sometimes) at past lengths 0–4
    const lens = [1 + (s.b % 3), s.c % 3, 1 + (s.d % 2)].slice(0, 1 + (s.a % 3));
    const cu = lens.reduce<number[]>((acc, l) => [...acc, acc[acc.length - 1] + l], [0]);
    const pos = lens.map((_l, i) => (s.d + 3 * i) % 5);
    const i32 = g.emit("constant", [], { values: cu, shape: [cu.length], dtype: "i32" });
    g.emit("varlen_cache_positions", [i32, g.emit("constant", [], { values: pos, shape: [pos.length], dtype: "i64" })], { length: cu[cu.length - 1] });
  },
  varlen_cache_write: (g, s) => {
    // a value seen as a one-row [1, 1, n, D] cache; its first position written back at a position in range
    const { cache, one, seq } = varlenCache(g, s);
    g.emit("varlen_cache_write", [cache, one, ...seq], {});
  },
  varlen_cache_attention: (g, s) => {
    // one packed query (a value's first row) against a one-row cache, keys 0..position
    const { cache, one, seq } = varlenCache(g, s);
    const alibi: Record<string, number[]> = s.c % 3 === 1 ? { alibi: [[0.5, -0.25, 0.125][s.b % 3]] } : {};
    const window: Record<string, number> = s.d % 3 === 2 ? { window: 1 + (s.b % 2) } : {};
    g.emit("varlen_cache_attention", [one, cache, cache, ...seq], { scale: [1, 0.5, -0.75][s.c % 3], kv_groups: 1, ...alibi, ...window });
  },
  cache_write: (g, s) => {
    // a value seen as a [1, 1, n, D] cache; its first row written back at a position in range
    const x = g.atLeastRank(g.need(s.a), 1);
    const D = x.shape[x.shape.length - 1];
    const rows = dimProduct(x.shape.slice(0, -1));
    const [lo] = g.range(rows);
    if (lo < 1) throw new Skip("the cache may have no rows");
    const cache = g.emit("reshape", [x], { shape: [1, 1, rows, D] });
    const update = g.emit("slice", [cache], { axis: 2, start: 0, end: 1 });
    const pos = g.emit("constant", [], { values: [s.b % lo], shape: [], dtype: "i64" });
    g.emit("cache_write", [cache, update, pos], {});
  },
};

/** A float value seen as a one-row cache [1, 1, n, D], its first position [1, 1, 1, D], and one sequence (cu_seqlens, slot 0, a position in range). */
function varlenCache(g: Gen, s: Step): { cache: Value; one: Value; seq: Value[] } {
  const x = g.asFloat(g.numeric(g.atLeastRank(g.need(s.a), 1)));
  const D = x.shape[x.shape.length - 1];
  const rows = dimProduct(x.shape.slice(0, -1));
  const [lo] = g.range(rows);
  if (lo < 1) throw new Skip("the cache may have no rows");
  const cache = g.emit("reshape", [x], { shape: [1, 1, rows, D] });
  const one = g.emit("slice", [cache], { axis: 2, start: 0, end: 1 });
  const c = (values: number[], dtype: DType) => g.emit("constant", [], { values, shape: [values.length], dtype });
  return { cache, one, seq: [c([0, 1], "i32"), c([0], "i32"), c([s.b % lo], "i64")] };
}

/** Every op arbGraph can draw. */
export const GRAPH_OPS: readonly string[] = [...Object.keys(BUILDERS), ...FUSED_OPS];

function buildGraph(rc: Recipe, opts: Required<Omit<GraphOptions, "ops">> & { ops: readonly string[] }): Graph {
  const g = new Gen(GRAPH_NAMES[rc.name % GRAPH_NAMES.length], opts.dtypes[rc.dtype % opts.dtypes.length], opts.maxElements);
  rc.inputs.forEach((inp, i) => {
    const v = g.b.input(`${INPUT_NAMES[i % INPUT_NAMES.length]}${i}`, { dtype: inp.int ? "i32" : g.float, shape: inp.shape });
    g.pool.push(v);
  });
  g.bind(opts.sizes);
  const graph = g.b.graph;
  for (const s of rc.steps) {
    const mark = { nodes: graph.nodes.length, params: graph.params.length, pool: g.pool.length };
    g.loc = s.loc % 3 === 2 ? { file: LOC_FILES[s.loc % LOC_FILES.length], line: 1 + (s.loc % 97), col: 1 + (s.loc % 13) } : undefined;
    try {
      BUILDERS[opts.ops[s.op % opts.ops.length]](g, s);
      if (graph.nodes.length > opts.maxNodes) throw new Skip("too many nodes");
    } catch (e) {
      if (!(e instanceof Skip || isKilnError(e))) throw e;
      graph.nodes.length = mark.nodes;
      graph.params.length = mark.params;
      g.pool.length = mark.pool;
    }
  }
  const last = graph.nodes.length ? graph.nodes[graph.nodes.length - 1].result : g.pool[g.pool.length - 1];
  const outs = [last, ...rc.outputs.map((k) => g.pick(k)!)];
  outs.forEach((v, i) => {
    const base = OUTPUT_NAMES[(rc.outName + i) % OUTPUT_NAMES.length];
    g.b.output(i === 0 ? base : `${base}_${i}`, v);
  });
  return graph;
}

/**
 * Random valid graphs (they pass `verify`): inputs with symbolic dims, weights, and steps drawn
 * from `ops` with their helper nodes; every attribute kind, special floats (-0, ±inf, nan),
 * compound dims (B*S, S+1, S-1), source locations and names that need quoting in the text form.
 */
export function arbGraph(options: GraphOptions = {}): Arbitrary<Graph> {
  const opts = {
    maxNodes: options.maxNodes ?? 12,
    ops: options.ops ?? GRAPH_OPS,
    symbolic: options.symbolic ?? true,
    sizes: options.sizes ?? DEFAULT_SIZES,
    dtypes: options.dtypes ?? FLOAT_DTYPES,
    maxElements: options.maxElements ?? 256,
  };
  const unknown = opts.ops.filter((o) => !(o in BUILDERS) && !FUSED_OPS.includes(o));
  if (unknown.length || opts.ops.length === 0)
    throw new KilnError("E_USAGE", `arbGraph cannot draw op(s) ${unknown.join(", ") || "(none given)"}; it knows ${GRAPH_OPS.join(", ")}`);
  const symbols = opts.symbolic ? Object.keys(opts.sizes) : [];
  const step: Arbitrary<Step> = fc.record({
    op: fc.nat(1 << 16),
    a: fc.nat(64),
    b: fc.nat(64),
    c: fc.nat(64),
    d: fc.nat(64),
    v: fc.oneof({ arbitrary: fc.double({ min: -4, max: 4, noNaN: true, noDefaultInfinity: true }), weight: 4 }, { arbitrary: fc.constantFrom(...SPECIAL_FLOATS), weight: 1 }),
    loc: fc.nat(1000),
  });
  const recipe: Arbitrary<Recipe> = fc.record({
    name: fc.nat(GRAPH_NAMES.length - 1),
    dtype: fc.nat(opts.dtypes.length - 1),
    inputs: fc.array(fc.record({ shape: arbShape({ minRank: 1, maxRank: 3, maxDim: 4, symbols }), int: fc.nat(5).map((k) => k === 5) }), { minLength: 1, maxLength: 3 }),
    steps: fc.array(step, { maxLength: opts.maxNodes, size: "max" }),
    outputs: fc.array(fc.nat(16), { maxLength: 2 }),
    outName: fc.nat(OUTPUT_NAMES.length - 1),
    fuse: fc.boolean(),
  });
  // with "elementwise" among the ops, half the graphs have their elementwise chains fused
  const fuse = opts.ops.includes("elementwise");
  return recipe.map((rc) => (fuse && rc.fuse ? fuseElementwise(buildGraph(rc, { ...opts, ops: opts.ops.filter((o) => o !== "elementwise") })) : buildGraph(rc, { ...opts, ops: opts.ops.filter((o) => o !== "elementwise") })));
}

/** A graph with everything the interpreter needs to run it. */
export interface GraphCase {
  graph: Graph;
  /** the value of each symbol, as the inputs' shapes give them */
  bindings: Record<string, number>;
  inputs: Record<string, Tensor>;
  params: Record<string, Tensor>;
}

/** The symbols bound by a graph's inputs (plain symbol dims). */
export const boundSymbols = (g: Graph): string[] =>
  [...new Set(g.inputs.flatMap((v) => v.shape.filter((d): d is string => typeof d === "string" && /^[A-Za-z_]\w*$/.test(d))))].sort();

/** Concrete inputs and weights for a graph, with its symbols bound within `sizes`. */
export function arbCase(graph: Graph, sizes: Readonly<Record<string, readonly [number, number]>> = DEFAULT_SIZES): Arbitrary<GraphCase> {
  const syms = boundSymbols(graph);
  const bind = fc.record(Object.fromEntries(syms.map((s) => [s, fc.integer({ min: (sizes[s] ?? [1, 3])[0], max: (sizes[s] ?? [1, 3])[1] })])));
  return bind.chain((bindings: Record<string, number>) => {
    const shape = (v: Value): number[] => v.shape.map((d) => evalDim(d, bindings));
    return fc
      .record({
        inputs: fc.record(Object.fromEntries(graph.inputs.map((v) => [v.name, arbTensor(v.dtype, shape(v))]))),
        params: fc.record(Object.fromEntries(graph.params.map((v) => [v.name, arbWeights(shape(v), v.dtype)]))),
      })
      .map(({ inputs, params }) => ({ graph, bindings, inputs, params }));
  });
}

/** arbGraph plus concrete inputs and weights (symbols bound within `sizes`). */
export const arbGraphWithInputs = (options: GraphOptions = {}): Arbitrary<GraphCase> =>
  arbGraph(options).chain((g) => arbCase(g, options.sizes ?? DEFAULT_SIZES));
