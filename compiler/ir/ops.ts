// Every op of the IR, declared once: operand count, attribute kinds, the shape/dtype rule
// (used by the tracer, the verifier and the parser's checks) and the reference implementation
// (used by the interpreter). An op without an entry here does not exist.

import type { Dim } from "./dim.js";
import { canonDim, dimAdd, dimEq, dimProduct, dimSub, formatShape } from "./dim.js";
import type { DType } from "./dtype.js";
import { isDType, isFloat } from "./dtype.js";
import type { AttrValue, Attrs, TensorType } from "./graph.js";
import type { Tensor } from "./tensor.js";
import { alloc, numel, roundToDType, stridesOf } from "./tensor.js";
import type { Expr } from "./expr.js";
import { exprArgs, parseExpr } from "./expr.js";
import { roundBf16, roundF16 } from "./numeric.js";
import type { FourBit } from "./quant.js";
import { dequantize4, int8Matmul, quantize4 } from "./quant.js";

export type AttrKind = "int" | "float" | "bool" | "string" | "dtype" | "dim" | "dims" | "ints" | "floats";
export interface AttrSpec {
  kind: AttrKind;
  optional?: boolean;
}

export interface OpDef {
  name: string;
  /** operand count: exact, or [min, max] (max Infinity for variadic) */
  arity: number | [number, number];
  attrs: Record<string, AttrSpec>;
  /** result type from operand types and attributes; throws ShapeError when they do not fit */
  infer(ts: TensorType[], a: Attrs): TensorType;
  /** reference implementation; `out` is the result type with every dim evaluated */
  eval(xs: Tensor[], a: Attrs, out: { dtype: DType; shape: number[] }): Tensor;
}

/** A shape or dtype rule was broken; the caller adds which op and where. */
export class ShapeError extends Error {}

const fail = (msg: string): never => {
  throw new ShapeError(msg);
};

export const OPS = new Map<string, OpDef>();
const def = (d: OpDef): void => void OPS.set(d.name, d);

// ---------------------------------------------------------------- attribute kinds

export function checkAttrKind(kind: AttrKind, v: AttrValue): boolean {
  const isDim = (x: AttrValue): boolean =>
    (typeof x === "number" && Number.isInteger(x)) ||
    (typeof x === "string" && /^[A-Za-z0-9_*+\- ]+$/.test(x) && (() => { try { canonDim(x); return true; } catch { return false; } })());
  switch (kind) {
    case "int": return typeof v === "number" && Number.isInteger(v);
    case "float": return typeof v === "number";
    case "bool": return typeof v === "boolean";
    case "string": return typeof v === "string";
    case "dtype": return typeof v === "string" && isDType(v);
    case "dim": return isDim(v);
    case "dims": return Array.isArray(v) && v.every(isDim);
    case "ints": return Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isInteger(x));
    case "floats": return Array.isArray(v) && v.every((x) => typeof x === "number");
  }
}

// ---------------------------------------------------------------- shape helpers

/** numpy broadcasting of several shapes */
export function broadcastShapes(shapes: Dim[][]): Dim[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    let d: Dim = 1;
    for (const s of shapes) {
      const e = s[s.length - rank + i] ?? 1;
      if (e === 1) continue;
      if (d === 1) d = e;
      else if (!dimEq(d, e)) fail(`shapes ${shapes.map(formatShape).join(" and ")} do not broadcast (dim ${i}: ${d} vs ${e})`);
    }
    out.push(d);
  }
  return out;
}

const normAxis = (axis: number, rank: number): number => {
  const a = axis < 0 ? axis + rank : axis;
  if (!(a >= 0 && a < rank)) fail(`axis ${axis} is out of range for rank ${rank}`);
  return a;
};

const sameDType = (ts: TensorType[]): DType => {
  for (const t of ts) if (t.dtype !== ts[0].dtype) fail(`dtypes differ: ${ts.map((x) => x.dtype).join(", ")}`);
  return ts[0].dtype;
};

const needFloat = (t: TensorType): void => {
  if (!isFloat(t.dtype)) fail(`needs a float operand, got ${t.dtype}`);
};

/** Maps each flat index of `out` to the flat index of a tensor of shape `inShape` broadcast to it. */
function broadcastIndex(inShape: number[], outShape: number[]): Int32Array | null {
  if (inShape.length === outShape.length && inShape.every((d, i) => d === outShape[i])) return null;
  const n = numel(outShape);
  const idx = new Int32Array(n);
  const r = outShape.length;
  const inStr = stridesOf(inShape);
  const str = outShape.map((d, i) => {
    const j = i - (r - inShape.length);
    return j < 0 || inShape[j] === 1 ? 0 : inStr[j];
  });
  const counter = new Array<number>(r).fill(0);
  let off = 0;
  for (let k = 0; k < n; k++) {
    idx[k] = off;
    for (let i = r - 1; i >= 0; i--) {
      counter[i]++;
      off += str[i];
      if (counter[i] < outShape[i]) break;
      off -= str[i] * counter[i];
      counter[i] = 0;
    }
  }
  return idx;
}

// ---------------------------------------------------------------- elementwise

function erf(x: number): number {
  // Maclaurin series below 4 (enough terms for ~1e-9), then the asymptotic tail of erfc.
  const ax = Math.abs(x);
  if (ax < 4) {
    let term = ax, sum = ax;
    for (let n = 1; n < 120; n++) {
      term *= (-ax * ax) / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
    }
    return Math.sign(x) * Math.min(1, (2 / Math.sqrt(Math.PI)) * sum);
  }
  const x2 = ax * ax;
  const erfc = (Math.exp(-x2) / (ax * Math.sqrt(Math.PI))) * (1 - 1 / (2 * x2) + 3 / (4 * x2 * x2));
  return Math.sign(x) * (1 - erfc);
}

const UNARY: Record<string, (x: number) => number> = {
  neg: (x) => -x,
  abs: Math.abs,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  reciprocal: (x) => 1 / x,
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  silu: (x) => x / (1 + Math.exp(-x)),
  relu: (x) => (x > 0 ? x : 0),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  // GELU, tanh approximation (Hendrycks & Gimpel, 2016), as "gelu_new"/"gelu_pytorch_tanh"
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
  cos: Math.cos,
  sin: Math.sin,
};

for (const [name, f] of Object.entries(UNARY))
  def({
    name,
    arity: 1,
    attrs: {},
    infer: ([t]) => (name === "neg" || name === "abs" ? t : (needFloat(t), t)),
    eval: ([x], _a, out) => {
      const y = alloc(out.dtype, out.shape);
      for (let i = 0; i < x.data.length; i++) y.data[i] = f(x.data[i]);
      return roundToDType(y);
    },
  });

const BINARY: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: Math.pow,
  maximum: Math.max,
  minimum: Math.min,
};
const COMPARE: Record<string, (a: number, b: number) => boolean> = {
  less: (a, b) => a < b,
  less_equal: (a, b) => a <= b,
  greater: (a, b) => a > b,
  greater_equal: (a, b) => a >= b,
  equal: (a, b) => a === b,
  not_equal: (a, b) => a !== b,
};

function elementwise(xs: Tensor[], out: { dtype: DType; shape: number[] }, f: (v: number[]) => number): Tensor {
  const y = alloc(out.dtype, out.shape);
  const maps = xs.map((x) => broadcastIndex(x.shape, out.shape));
  const v = new Array<number>(xs.length);
  for (let k = 0; k < y.data.length; k++) {
    for (let j = 0; j < xs.length; j++) v[j] = xs[j].data[maps[j] ? maps[j]![k] : k];
    y.data[k] = f(v);
  }
  return roundToDType(y);
}

for (const [name, f] of Object.entries(BINARY))
  def({
    name,
    arity: 2,
    attrs: {},
    infer: (ts) => ({ dtype: sameDType(ts), shape: broadcastShapes(ts.map((t) => t.shape)) }),
    eval: (xs, _a, out) =>
      elementwise(xs, out, isFloat(out.dtype) || name !== "div" ? ([a, b]) => f(a, b) : ([a, b]) => Math.trunc(a / b)),
  });

for (const [name, f] of Object.entries(COMPARE))
  def({
    name,
    arity: 2,
    attrs: {},
    infer: (ts) => (sameDType(ts), { dtype: "bool", shape: broadcastShapes(ts.map((t) => t.shape)) }),
    eval: (xs, _a, out) => elementwise(xs, out, ([a, b]) => (f(a, b) ? 1 : 0)),
  });

def({
  name: "where",
  arity: 3,
  attrs: {},
  infer: ([c, a, b]) => {
    if (c.dtype !== "bool") fail(`condition must be bool, got ${c.dtype}`);
    return { dtype: sameDType([a, b]), shape: broadcastShapes([c.shape, a.shape, b.shape]) };
  },
  eval: (xs, _a, out) => elementwise(xs, out, ([c, a, b]) => (c ? a : b)),
});

def({
  name: "cast",
  arity: 1,
  attrs: { to: { kind: "dtype" } },
  infer: ([t], a) => ({ dtype: a.to as DType, shape: t.shape }),
  eval: ([x], _a, out) => {
    const y = alloc(out.dtype, out.shape);
    const toInt = !isFloat(out.dtype) && out.dtype !== "bool";
    for (let i = 0; i < x.data.length; i++) y.data[i] = toInt ? Math.trunc(x.data[i]) : x.data[i];
    return roundToDType(y);
  },
});

// ---------------------------------------------------------------- constants

def({
  name: "full",
  arity: 0,
  attrs: { value: { kind: "float" }, shape: { kind: "dims" }, dtype: { kind: "dtype" } },
  infer: (_ts, a) => ({ dtype: a.dtype as DType, shape: (a.shape as Dim[]).map(canonDim) }),
  eval: (_xs, a, out) => {
    const y = alloc(out.dtype, out.shape);
    y.data.fill(a.value as number);
    return roundToDType(y);
  },
});

def({
  name: "constant",
  arity: 0,
  attrs: { values: { kind: "floats" }, shape: { kind: "ints" }, dtype: { kind: "dtype" } },
  infer: (_ts, a) => {
    const shape = a.shape as number[];
    if ((a.values as number[]).length !== numel(shape))
      fail(`${(a.values as number[]).length} values for shape ${formatShape(shape)}`);
    return { dtype: a.dtype as DType, shape };
  },
  eval: (_xs, a, out) => {
    const y = alloc(out.dtype, out.shape);
    (a.values as number[]).forEach((v, i) => (y.data[i] = v));
    return roundToDType(y);
  },
});

def({
  name: "arange",
  arity: 0,
  attrs: { start: { kind: "dim" }, end: { kind: "dim" }, dtype: { kind: "dtype" } },
  infer: (_ts, a) => {
    const len = dimSub(a.end as Dim, a.start as Dim);
    if (typeof len === "number" && len < 0) fail(`arange end ${a.end} is before start ${a.start}`);
    return { dtype: a.dtype as DType, shape: [len] };
  },
  // the start is recovered from the evaluated length: start = end - len needs bindings, so
  // the interpreter passes `start` evaluated through the attrs (see interpreter.ts)
  eval: (_xs, a, out) => {
    const y = alloc(out.dtype, out.shape);
    const start = a.start as number;
    for (let i = 0; i < y.data.length; i++) y.data[i] = start + i;
    return roundToDType(y);
  },
});

// ---------------------------------------------------------------- contractions

def({
  name: "matmul",
  arity: 2,
  attrs: {},
  infer: ([x, w]) => {
    const dtype = sameDType([x, w]);
    if (x.shape.length < 2 || w.shape.length < 2) fail(`matmul needs rank >= 2 operands, got ${formatShape(x.shape)} and ${formatShape(w.shape)}`);
    const [m, k] = x.shape.slice(-2);
    const [k2, n] = w.shape.slice(-2);
    if (!dimEq(k, k2)) fail(`contraction dims differ: ${formatShape(x.shape)} · ${formatShape(w.shape)} (${k} vs ${k2})`);
    const batch = broadcastShapes([x.shape.slice(0, -2), w.shape.slice(0, -2)]);
    return { dtype, shape: [...batch, m, n] };
  },
  eval: ([x, w], _a, out) => {
    const y = alloc(out.dtype, out.shape);
    const r = out.shape.length;
    const [M, N] = out.shape.slice(-2);
    const K = x.shape[x.shape.length - 1];
    const batch = out.shape.slice(0, r - 2);
    const xm = broadcastIndex([...x.shape.slice(0, -2), 1], [...batch, 1]);
    const wm = broadcastIndex([...w.shape.slice(0, -2), 1], [...batch, 1]);
    const acc = new Float64Array(N);
    for (let b = 0; b < numel(batch); b++) {
      const xo = (xm ? xm[b] : b) * M * K;
      const wo = (wm ? wm[b] : b) * K * N;
      // skipping x's zeros is exact only where w is finite (0 · inf and 0 · NaN are NaN)
      let wFinite = true;
      for (let q = wo; q < wo + K * N && wFinite; q++) wFinite = Number.isFinite(w.data[q]);
      for (let i = 0; i < M; i++) {
        acc.fill(0);
        for (let k = 0; k < K; k++) {
          const xv = x.data[xo + i * K + k];
          if (xv === 0 && wFinite) continue;
          const row = wo + k * N;
          for (let j = 0; j < N; j++) acc[j] += xv * w.data[row + j];
        }
        y.data.set(acc, (b * M + i) * N);
      }
    }
    return roundToDType(y);
  },
});

// torch.nn.Linear: y = x · Wᵀ (+ bias), W [out, in]. With `residual` (what fuse-residual makes of
// `add(r, linear(…))`) the last operand r, of the result's type, is added too, inside the same sum:
// y = round(x · Wᵀ (+ bias) + r), rounded ONCE from the accumulator, as cuBLASLt's D = A·B + β·C
// epilogue does. The unfused form rounds twice, round(round(x · Wᵀ) + r), so the two differ by at
// most one unit in the last place of the larger of |x · Wᵀ| and |y| (the first rounding's half
// unit, then each side's own last rounding).
def({
  name: "linear",
  arity: [2, 4],
  attrs: { residual: { kind: "bool", optional: true } },
  infer: (ts, a) => {
    const res = a.residual === true ? ts[ts.length - 1] : undefined;
    const [x, w, bias] = res ? ts.slice(0, -1) : ts;
    const n = res ? ts.length - 1 : ts.length;
    if (n < 2 || n > 3) fail(`linear takes x, w, an optional bias${res ? " and the residual" : ""}: got ${ts.length} operands`);
    const dtype = sameDType(ts);
    if (w.shape.length !== 2) fail(`linear weight must be [out, in], got ${formatShape(w.shape)}`);
    if (x.shape.length < 1 || !dimEq(x.shape[x.shape.length - 1], w.shape[1]))
      fail(`linear input ${formatShape(x.shape)} does not end in the weight's in_features ${w.shape[1]} (weight ${formatShape(w.shape)})`);
    if (bias && !(bias.shape.length === 1 && dimEq(bias.shape[0], w.shape[0])))
      fail(`linear bias ${formatShape(bias.shape)} must be [${w.shape[0]}]`);
    const shape = [...x.shape.slice(0, -1), w.shape[0]];
    if (res && !(res.shape.length === shape.length && res.shape.every((d, i) => dimEq(d, shape[i]))))
      fail(`linear residual ${formatShape(res.shape)} must have the result's shape ${formatShape(shape)} (it is not broadcast)`);
    return { dtype, shape };
  },
  eval: (ts, a, out) => {
    const res = a.residual === true ? ts[ts.length - 1] : undefined;
    const [x, w, bias] = res ? ts.slice(0, -1) : ts;
    const y = alloc(out.dtype, out.shape);
    const [N, K] = w.shape;
    const rows = N === 0 ? 0 : y.data.length / N;
    for (let r = 0; r < rows; r++)
      for (let n = 0; n < N; n++) {
        let s = bias ? bias.data[n] : 0;
        for (let k = 0; k < K; k++) s += x.data[r * K + k] * w.data[n * K + k];
        y.data[r * N + n] = res ? s + res.data[r * N + n] : s;
      }
    return roundToDType(y);
  },
});

// ---------------------------------------------------------------- reductions

def({
  name: "softmax",
  arity: 1,
  attrs: { axis: { kind: "int" } },
  infer: ([t], a) => (needFloat(t), normAxis(a.axis as number, t.shape.length), t),
  eval: ([x], a, out) => {
    const y = alloc(out.dtype, out.shape);
    alongAxis(x.shape, a.axis as number, (base, n, stride) => {
      let m = -Infinity;
      for (let i = 0; i < n; i++) m = Math.max(m, x.data[base + i * stride]);
      let s = 0;
      for (let i = 0; i < n; i++) s += Math.exp(x.data[base + i * stride] - m);
      for (let i = 0; i < n; i++) y.data[base + i * stride] = Math.exp(x.data[base + i * stride] - m) / s;
    });
    return roundToDType(y);
  },
});

/** Calls f(offset of element 0, length, stride) for every line along `axis`. */
function alongAxis(shape: number[], axis: number, f: (base: number, n: number, stride: number) => void): void {
  const ax = axis < 0 ? axis + shape.length : axis;
  const n = shape[ax];
  const stride = stridesOf(shape)[ax];
  const outer = numel(shape.slice(0, ax));
  for (let o = 0; o < outer; o++) for (let i = 0; i < stride; i++) f(o * n * stride + i, n, stride);
}

const REDUCE: Record<string, { init: number; step: (acc: number, x: number) => number; fin?: (acc: number, n: number) => number }> = {
  reduce_sum: { init: 0, step: (s, x) => s + x },
  reduce_mean: { init: 0, step: (s, x) => s + x, fin: (s, n) => s / n },
  reduce_max: { init: -Infinity, step: Math.max },
};
for (const [name, r] of Object.entries(REDUCE))
  def({
    name,
    arity: 1,
    attrs: { axis: { kind: "int" }, keepdim: { kind: "bool" } },
    infer: ([t], a) => {
      const ax = normAxis(a.axis as number, t.shape.length);
      const shape = a.keepdim ? t.shape.map((d, i) => (i === ax ? 1 : d)) : t.shape.filter((_d, i) => i !== ax);
      return { dtype: t.dtype, shape };
    },
    eval: ([x], a, out) => {
      const y = alloc(out.dtype, out.shape);
      let k = 0;
      const ax = normAxis(a.axis as number, x.shape.length);
      // lines along the axis come in the same order as the output elements
      const n = x.shape[ax];
      const stride = stridesOf(x.shape)[ax];
      const outer = numel(x.shape.slice(0, ax));
      for (let o = 0; o < outer; o++)
        for (let i = 0; i < stride; i++) {
          let acc = r.init;
          for (let j = 0; j < n; j++) acc = r.step(acc, x.data[o * n * stride + i + j * stride]);
          y.data[k++] = r.fin ? r.fin(acc, n) : acc;
        }
      return roundToDType(y);
    },
  });

// argmax over the last axis (greedy decoding's token choice, made on the target): i64, the FIRST
// index of the maximum (ties → the smallest index, as torch.argmax and runtime/sampling.ts). A row
// that holds a NaN or +Infinity, or nothing above −Infinity (every token masked, or an empty row),
// has no token to choose: its result is ARGMAX_NONE (−1), and the runtime raises E_RUNTIME for it
// as sampling.ts does for such logits. −Infinity is a masked token and never chosen.
export const ARGMAX_NONE = -1;
/** The output a decoder traced with `nextToken` gets (dsl/model.ts): argmax of its logits, the greedy token after each position. */
export const NEXT_TOKEN = "next_token";
def({
  name: "argmax",
  arity: 1,
  attrs: { axis: { kind: "int" } },
  infer: ([t], a) => {
    needFloat(t);
    if (t.shape.length < 1) fail(`argmax needs an input of rank >= 1, got ${formatShape(t.shape)}`);
    if (normAxis(a.axis as number, t.shape.length) !== t.shape.length - 1)
      fail(`argmax reduces the last axis only (axis -1 or ${t.shape.length - 1}), got axis ${a.axis as number}`);
    return { dtype: "i64", shape: t.shape.slice(0, -1) };
  },
  eval: ([x], _a, out) => {
    const y = alloc(out.dtype, out.shape);
    const n = x.shape[x.shape.length - 1];
    for (let r = 0; r < y.data.length; r++) y.data[r] = argmaxRow(x.data, r * n, n);
    return y;
  },
});

/** The argmax op's rule on x[o, o + n): the first index of the maximum, or ARGMAX_NONE. */
export function argmaxRow(x: ArrayLike<number>, o: number, n: number): number {
  let best = ARGMAX_NONE;
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const v = x[o + j];
    if (Number.isNaN(v) || v === Infinity) return ARGMAX_NONE;
    if (v > max) {
      max = v;
      best = j;
    }
  }
  return best;
}

// ---------------------------------------------------------------- fused norms

// RMSNorm (Zhang & Sennrich, 2019) and LayerNorm (Ba et al., 2016) over the last axis, as one op
// each (what fuse-norm makes of the eager form Hugging Face writes and models/ traces). x [..., D]
// in f16/bf16/f32, weight (and LayerNorm's bias) [D] of x's dtype; the result has x's type.
// The reference is the eager graph step for step, so fusing is bit-identical on the interpreter:
//   h = f32(x); every f32 step rounded to f32 (mean: an f64 sum in index order, divided by D,
//   then rounded, as reduce_mean); eps rounded to f32 (the eager scalar `full` is f32);
//   r = f32(1 / sqrt(f32(mean(q) + eps))) where q = h² (rms) or (h − mean(h))² (layer);
//   n = f32(h · r) [layer: with h − mean(h)], rounded to x's dtype (`.to(input_dtype)`);
//   y = round(n · w) [+ b, rounded again], in x's dtype.
const NORMS = { rms_norm: [2, 2], layer_norm: [2, 3] } as const;
for (const [name, arity] of Object.entries(NORMS))
  def({
    name,
    arity: [arity[0], arity[1]],
    attrs: { eps: { kind: "float" } },
    infer: (ts) => {
      const [x, ...affine] = ts;
      needFloat(x);
      sameDType(ts);
      if (x.shape.length < 1) fail(`${name} needs an input of rank >= 1 (it normalizes the last axis), got ${formatShape(x.shape)}`);
      const D = x.shape[x.shape.length - 1];
      for (const [k, t] of affine.entries())
        if (t.shape.length !== 1 || !dimEq(t.shape[0], D))
          fail(`${name} ${k === 0 ? "weight" : "bias"} ${formatShape(t.shape)} must be [${D}], the input's last dim`);
      return { dtype: x.dtype, shape: [...x.shape] };
    },
    eval: ([x, w, b], a, out) => {
      const y = alloc(out.dtype, out.shape);
      const D = x.shape[x.shape.length - 1];
      const rows = D === 0 ? 0 : x.data.length / D;
      const f = Math.fround;
      const eps = f(a.eps as number);
      const h = new Float64Array(D);
      for (let r = 0; r < rows; r++) {
        const o = r * D;
        let mu = 0;
        if (name === "layer_norm") {
          let s = 0;
          for (let j = 0; j < D; j++) s += x.data[o + j];
          mu = f(s / D);
        }
        let s = 0;
        for (let j = 0; j < D; j++) {
          h[j] = name === "layer_norm" ? f(x.data[o + j] - mu) : x.data[o + j];
          s += f(h[j] * h[j]);
        }
        const inv = f(1 / Math.sqrt(f(f(s / D) + eps)));
        for (let j = 0; j < D; j++) {
          const n = roundScalar(x.dtype, f(h[j] * inv));
          const v = roundScalar(x.dtype, n * w.data[j]);
          y.data[o + j] = b ? roundScalar(x.dtype, v + b.data[j]) : v;
        }
      }
      return y;
    },
  });

// ---------------------------------------------------------------- data movement

def({
  name: "reshape",
  arity: 1,
  attrs: { shape: { kind: "dims" } },
  infer: ([t], a) => {
    const shape = (a.shape as Dim[]).map(canonDim);
    if (!dimEq(dimProduct(shape), dimProduct(t.shape)))
      fail(`cannot reshape ${formatShape(t.shape)} to ${formatShape(shape)}: element counts differ`);
    return { dtype: t.dtype, shape };
  },
  eval: ([x], _a, out) => ({ dtype: out.dtype, shape: out.shape, data: x.data.slice() }),
});

def({
  name: "transpose",
  arity: 1,
  attrs: { perm: { kind: "ints" } },
  infer: ([t], a) => {
    const p = a.perm as number[];
    if (p.length !== t.shape.length || [...p].sort((x, y) => x - y).some((v, i) => v !== i))
      fail(`perm [${p.join(", ")}] is not a permutation of ${t.shape.length} axes`);
    return { dtype: t.dtype, shape: p.map((i) => t.shape[i]) };
  },
  eval: ([x], a, out) => {
    const p = a.perm as number[];
    const y = alloc(out.dtype, out.shape);
    const xs = stridesOf(x.shape);
    const src = p.map((i) => xs[i]); // stride in x of each output axis
    const counter = new Array<number>(p.length).fill(0);
    let off = 0;
    for (let k = 0; k < y.data.length; k++) {
      y.data[k] = x.data[off];
      for (let i = p.length - 1; i >= 0; i--) {
        counter[i]++;
        off += src[i];
        if (counter[i] < out.shape[i]) break;
        off -= src[i] * counter[i];
        counter[i] = 0;
      }
    }
    return y;
  },
});

def({
  name: "expand",
  arity: 1,
  attrs: { shape: { kind: "dims" } },
  infer: ([t], a) => {
    const shape = (a.shape as Dim[]).map(canonDim);
    if (shape.length < t.shape.length) fail(`cannot expand ${formatShape(t.shape)} to fewer dims ${formatShape(shape)}`);
    const off = shape.length - t.shape.length;
    t.shape.forEach((d, i) => {
      if (d !== 1 && !dimEq(d, shape[off + i])) fail(`cannot expand ${formatShape(t.shape)} to ${formatShape(shape)} (dim ${off + i})`);
    });
    return { dtype: t.dtype, shape };
  },
  eval: (xs, _a, out) => elementwise(xs, out, ([v]) => v),
});

def({
  name: "slice",
  arity: 1,
  attrs: { axis: { kind: "int" }, start: { kind: "dim" }, end: { kind: "dim" } },
  infer: ([t], a) => {
    const ax = normAxis(a.axis as number, t.shape.length);
    const len = dimSub(a.end as Dim, a.start as Dim);
    const d = t.shape[ax];
    if (typeof len === "number" && len < 0) fail(`slice [${a.start}, ${a.end}) is empty-reversed`);
    if (typeof a.start === "number" && a.start < 0) fail(`slice start ${a.start} is negative`);
    if (typeof d === "number" && typeof a.end === "number" && a.end > d) fail(`slice end ${a.end} is past dim ${ax} of ${formatShape(t.shape)}`);
    return { dtype: t.dtype, shape: t.shape.map((x, i) => (i === ax ? len : x)) };
  },
  eval: ([x], a, out) => {
    const ax = normAxis(a.axis as number, x.shape.length);
    const start = a.start as number; // evaluated by the interpreter
    const y = alloc(out.dtype, out.shape);
    const inner = numel(x.shape.slice(ax + 1));
    const outer = numel(x.shape.slice(0, ax));
    const n = out.shape[ax];
    if (start + n > x.shape[ax]) throw new ShapeError(`slice [${start}, ${start + n}) is past dim ${ax} (${x.shape[ax]})`);
    for (let o = 0; o < outer; o++)
      y.data.set(x.data.subarray((o * x.shape[ax] + start) * inner, (o * x.shape[ax] + start + n) * inner), o * n * inner);
    return y;
  },
});

def({
  name: "concat",
  arity: [1, Infinity],
  attrs: { axis: { kind: "int" } },
  infer: (ts, a) => {
    const dtype = sameDType(ts);
    const r = ts[0].shape.length;
    const ax = normAxis(a.axis as number, r);
    let len: Dim = 0;
    for (const t of ts) {
      if (t.shape.length !== r || t.shape.some((d, i) => i !== ax && !dimEq(d, ts[0].shape[i])))
        fail(`cannot concat ${ts.map((x) => formatShape(x.shape)).join(", ")} along axis ${ax}`);
      len = dimAdd(len, t.shape[ax]);
    }
    return { dtype, shape: ts[0].shape.map((d, i) => (i === ax ? len : d)) };
  },
  eval: (xs, a, out) => {
    const ax = normAxis(a.axis as number, out.shape.length);
    const y = alloc(out.dtype, out.shape);
    const inner = numel(out.shape.slice(ax + 1));
    const outer = numel(out.shape.slice(0, ax));
    let at = 0;
    for (const x of xs) {
      const n = x.shape[ax];
      for (let o = 0; o < outer; o++) y.data.set(x.data.subarray(o * n * inner, (o + 1) * n * inner), (o * out.shape[ax] + at) * inner);
      at += n;
    }
    return y;
  },
});

def({
  name: "gather",
  arity: 2,
  attrs: { axis: { kind: "int" } },
  infer: ([x, idx], a) => {
    if (isFloat(idx.dtype) || idx.dtype === "bool") fail(`gather indices must be integers, got ${idx.dtype}`);
    const ax = normAxis(a.axis as number, x.shape.length);
    return { dtype: x.dtype, shape: [...x.shape.slice(0, ax), ...idx.shape, ...x.shape.slice(ax + 1)] };
  },
  eval: ([x, idx], a, out) => {
    const ax = normAxis(a.axis as number, x.shape.length);
    const y = alloc(out.dtype, out.shape);
    const inner = numel(x.shape.slice(ax + 1));
    const outer = numel(x.shape.slice(0, ax));
    const n = x.shape[ax];
    const m = idx.data.length;
    for (let o = 0; o < outer; o++)
      for (let j = 0; j < m; j++) {
        const i = idx.data[j];
        if (!(i >= 0 && i < n)) throw new ShapeError(`index ${i} is out of range [0, ${n}) (at position ${j} of the indices)`);
        y.data.set(x.data.subarray((o * n + i) * inner, (o * n + i + 1) * inner), (o * m + j) * inner);
      }
    return y;
  },
});

// ---------------------------------------------------------------- quantized linear

// linear whose weight is stored quantized (quant.ts): scheme "nf4" | "fp4" (blockwise 4-bit,
// optionally double-quantized) or "int8" (LLM.int8, with `threshold` for outlier features). The
// operands stay the float weight, so the semantics are explicit: the result is what the scheme
// computes from that weight; targets quantize the weight once, on load. `residual` as linear's
// (fuse-residual's): the last operand, added in the same sum, rounded once.
const QUANT_SCHEMES = ["nf4", "fp4", "int8"];
def({
  name: "qlinear",
  arity: [2, 4],
  attrs: { scheme: { kind: "string" }, block: { kind: "int" }, double_quant: { kind: "bool" }, threshold: { kind: "float" }, residual: { kind: "bool", optional: true } },
  infer: (ts, a) => {
    if (!QUANT_SCHEMES.includes(a.scheme as string)) fail(`scheme '${a.scheme as string}' is not one of ${QUANT_SCHEMES.join(", ")}`);
    if (!((a.block as number) > 0 && Number.isInteger(a.block))) fail(`block must be a positive integer, got ${a.block as number}`);
    const r = OPS.get("linear")!.infer(ts, a.residual === true ? { residual: true } : {});
    needFloat(r);
    return r;
  },
  eval: ([x, w, ...rest], a, out) => {
    const [N, K] = w.shape;
    const M = x.data.length / K;
    const y = alloc(out.dtype, out.shape);
    if (a.scheme === "int8") {
      const res = a.residual === true ? rest.pop() : undefined;
      const r = int8Matmul(x.data, w.data, rest[0]?.data, M, N, K, a.threshold as number);
      for (let i = 0; i < r.length; i++) y.data[i] = res ? r[i] + res.data[i] : r[i];
      return roundToDType(y);
    }
    const q = quantize4(w.data, a.scheme as FourBit, { block: a.block as number, doubleQuant: a.double_quant as boolean, rowLength: w.shape[w.shape.length - 1] });
    // the dequantized weight in the compute (activation) dtype, then an ordinary linear
    const wd = roundToDType({ dtype: x.dtype, shape: w.shape, data: dequantize4(q) });
    return OPS.get("linear")!.eval([x, wd, ...rest], a.residual === true ? { residual: true } : {}, out);
  },
});

// ---------------------------------------------------------------- fused attention

// softmax(scale · Q Kᵀ [+ ALiBi] [+ masks]) V over grouped heads, as one op (what fuse-attention
// makes of the eager form). q [B, Hq, S, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] with
// Hq = Hkv · kv_groups: query head h reads kv head ⌊h / kv_groups⌋ (repeat-kv). Extra operands, in
// this order, each optional:
//   offset  i64 scalar: with `causal`, query i sits at position offset + i (the static KV cache);
//           without it `causal` aligns the last query with the last key (query i sees key j iff
//           j ≤ i + T − S, so a growing KV cache of T − S earlier tokens works);
//   mask    i64 [B, T] when `key_mask` is set: keys whose mask is 0 are hidden (Hugging Face's
//           attention_mask, 1 = real token);
//   cu_seqlens i32 [N + 1] when `varlen` is set (instead of a mask): B = 1 and the S = T tokens are
//           N sequences packed end to end (sequence s is [cu_seqlens[s], cu_seqlens[s+1])); a query
//           sees the keys of its own sequence only (up to itself when causal). FlashAttention-2's
//           variable-length form (Dao, 2023); what unpad-varlen makes of a padded batch.
// `alibi` (Press et al., 2022) holds one slope per query head, already multiplied by whatever
// multiplies the bias in the model's eager form: score(h, i, j) += alibi[h] · j. `window` (with
// `causal`; Mistral's sliding window) keeps only the last `window` keys up to the query: a query at
// position p sees key j iff p − window < j ≤ p.
// Rows that see no key: NaN without `key_mask` (the eager softmax of an all −inf row); with it the
// mean of V over all T keys, which is what the eager form computes when masks add the dtype's
// lowest finite value (every score equal). The reference accumulates in f64 and rounds once.
def({
  name: "flash_attention",
  arity: [3, 5],
  attrs: {
    causal: { kind: "bool" }, scale: { kind: "float" }, kv_groups: { kind: "int" },
    alibi: { kind: "floats", optional: true }, key_mask: { kind: "bool", optional: true }, varlen: { kind: "bool", optional: true },
    window: { kind: "int", optional: true },
  },
  infer: (ops, a) => {
    const [q, k, v] = ops;
    const dtype = sameDType([q, k, v]);
    needFloat(q);
    const extra = ops.slice(3);
    if (a.key_mask === true && a.varlen === true) fail("key_mask and varlen exclude each other");
    const varlen = a.varlen === true;
    const hasMask = a.key_mask === true || varlen;
    const mask = hasMask ? extra[extra.length - 1] : undefined;
    const offset = extra.length > (hasMask ? 1 : 0) ? extra[0] : undefined;
    if (extra.length > (hasMask ? 2 : 1)) fail(`flash_attention takes q, k, v, then an optional offset${hasMask ? " and the key mask" : ""}: got ${ops.length} operands`);
    if (hasMask && !mask) fail("key_mask is set but there is no mask operand");
    if (offset && (offset.dtype !== "i64" || offset.shape.length !== 0)) fail(`the offset operand must be an i64 scalar, got ${offset.dtype}${formatShape(offset.shape)}`);
    if (offset && a.causal !== true) fail("an offset operand needs causal = true");
    if (a.window !== undefined && (a.causal !== true || !((a.window as number) >= 1))) fail(`window must be a positive integer with causal = true, got ${a.window as number}`);
    if (q.shape.length !== 4 || k.shape.length !== 4 || v.shape.length !== 4)
      fail(`flash_attention takes [B, H, S, D] operands, got ${formatShape(q.shape)}, ${formatShape(k.shape)}, ${formatShape(v.shape)}`);
    const g = a.kv_groups as number;
    if (!(Number.isInteger(g) && g >= 1)) fail(`kv_groups must be a positive integer, got ${g}`);
    if (!dimEq(q.shape[0], k.shape[0]) || !dimEq(k.shape[0], v.shape[0])) fail(`batch dims differ: ${q.shape[0]}, ${k.shape[0]}, ${v.shape[0]}`);
    if (!dimEq(q.shape[1], dimProduct([k.shape[1], g])) || !dimEq(k.shape[1], v.shape[1]))
      fail(`heads: q has ${q.shape[1]}, k and v ${k.shape[1]} and ${v.shape[1]}, kv_groups ${g}`);
    if (!dimEq(q.shape[3], k.shape[3])) fail(`q and k head dims differ: ${q.shape[3]} vs ${k.shape[3]}`);
    if (!dimEq(k.shape[2], v.shape[2])) fail(`k and v lengths differ: ${k.shape[2]} vs ${v.shape[2]}`);
    const slopes = (a.alibi as number[] | undefined) ?? [];
    if (slopes.length && !dimEq(q.shape[1], slopes.length)) fail(`alibi has ${slopes.length} slopes for ${q.shape[1]} query heads`);
    if (mask && !varlen && (mask.dtype !== "i64" || mask.shape.length !== 2 || !dimEq(mask.shape[0], q.shape[0]) || !dimEq(mask.shape[1], k.shape[2])))
      fail(`the key mask must be i64 [B, T] = [${q.shape[0]}, ${k.shape[2]}], got ${mask.dtype}${formatShape(mask.shape)}`);
    if (varlen) {
      if (mask!.dtype !== "i32" || mask!.shape.length !== 1) fail(`cu_seqlens must be i32 [N + 1], got ${mask!.dtype}${formatShape(mask!.shape)}`);
      if (!dimEq(q.shape[0], 1) || !dimEq(q.shape[2], k.shape[2]) || offset) fail("varlen attention takes packed q, k, v of batch 1 with as many keys as queries and no offset");
    }
    return { dtype, shape: [q.shape[0], q.shape[1], q.shape[2], v.shape[3]] };
  },
  eval: (ops, a, out) => {
    const [q, k, v] = ops;
    const varlen = a.varlen === true;
    const hasMask = a.key_mask === true;
    const mask = hasMask ? ops[ops.length - 1] : undefined;
    const cu = varlen ? ops[ops.length - 1].data : undefined;
    const offset = ops.length > (hasMask || varlen ? 4 : 3) ? ops[3] : undefined;
    const [B, Hq, S, D] = q.shape;
    const [, Hkv, T, Dv] = v.shape;
    const g = a.kv_groups as number, scale = a.scale as number, causal = a.causal as boolean;
    const slopes = (a.alibi as number[] | undefined) ?? [];
    const shift = offset ? offset.data[0] : T - S;
    const y = alloc(out.dtype, out.shape);
    const p = new Float64Array(T);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < Hq; h++) {
        const kh = Math.floor(h / g);
        const qo = ((b * Hq + h) * S) * D, ko = ((b * Hkv + kh) * T) * D, vo = ((b * Hkv + kh) * T) * Dv;
        for (let i = 0; i < S; i++) {
          let m = -Infinity;
          let seen = 0;
          // varlen: the keys of query i's own sequence
          let first = 0, end = T;
          if (cu) {
            let sq = 0;
            while (sq + 2 < cu.length && cu[sq + 1] <= i) sq++;
            [first, end] = [cu[sq], cu[sq + 1]];
          }
          const pos = cu ? i : i + shift; // the query's position among the keys
          const last = Math.min(causal ? pos : end - 1, end - 1, T - 1);
          if (a.window !== undefined) first = Math.max(first, pos - (a.window as number) + 1);
          for (let j = 0; j < T; j++) {
            if (j < first || j > last || (mask && mask.data[b * T + j] === 0)) { p[j] = -Infinity; continue; }
            let s = 0;
            for (let d = 0; d < D; d++) s += q.data[qo + i * D + d] * k.data[ko + j * D + d];
            p[j] = s * scale + (slopes.length ? slopes[h] * j : 0);
            seen++;
            if (p[j] > m || Number.isNaN(p[j])) m = p[j];
          }
          const yo = ((b * Hq + h) * S + i) * Dv;
          if (seen === 0) {
            for (let d = 0; d < Dv; d++) {
              let acc = 0;
              for (let j = 0; j < T; j++) acc += v.data[vo + j * Dv + d];
              y.data[yo + d] = mask && T > 0 ? acc / T : NaN;
            }
            continue;
          }
          let sum = 0;
          for (let j = 0; j < T; j++) sum += (p[j] = p[j] === -Infinity ? 0 : Math.exp(p[j] - m));
          for (let d = 0; d < Dv; d++) {
            let acc = 0;
            for (let j = 0; j <= last; j++) acc += p[j] * v.data[vo + j * Dv + d];
            y.data[yo + d] = acc / sum;
          }
        }
      }
    return roundToDType(y);
  },
});

// ---------------------------------------------------------------- fused elementwise

/** A value rounded to what `dtype` holds: the scalar form of roundToDType. */
export function roundScalar(dtype: DType, x: number): number {
  switch (dtype) {
    case "f32": return Math.fround(x);
    case "bf16": return roundBf16(x);
    case "f16": return roundF16(x);
    case "bool": return x === 0 ? 0 : 1;
    case "i64": return Math.trunc(x) + 0;
    case "i32": return wrapInt(Math.trunc(x), 32, true);
    case "i8": return wrapInt(Math.trunc(x), 8, true);
    case "u8": return wrapInt(Math.trunc(x), 8, false);
  }
}
function wrapInt(x: number, bits: number, signed: boolean): number {
  const m = 2 ** bits;
  let r = ((x % m) + m) % m;
  if (signed && r >= m / 2) r -= m;
  return r + 0;
}

/** The dtype an expression node produces, checking it against its operands (ShapeError if not). */
function typeExpr(e: Expr, ts: TensorType[]): DType {
  if (e.kind === "arg") {
    if (e.index >= ts.length) fail(`expression reads $${e.index} but the op has ${ts.length} operand(s)`);
    return ts[e.index].dtype;
  }
  if (e.kind === "lit") return e.dtype;
  const at = e.args.map((a) => typeExpr(a, ts));
  const want = (n: number) => at.length === n || fail(`'${e.op}' in an expression takes ${n} argument(s), got ${at.length}`);
  if (e.op in UNARY) {
    want(1);
    if (e.op !== "neg" && e.op !== "abs" && !isFloat(at[0])) fail(`'${e.op}' needs a float argument, got ${at[0]}`);
    if (at[0] !== e.dtype) fail(`'${e.op}:${e.dtype}' of a ${at[0]} argument`);
  } else if (e.op in BINARY || e.op in COMPARE) {
    want(2);
    if (at[0] !== at[1]) fail(`'${e.op}' of ${at[0]} and ${at[1]}`);
    const r = e.op in COMPARE ? "bool" : at[0];
    if (r !== e.dtype) fail(`'${e.op}:${e.dtype}' gives ${r}`);
  } else if (e.op === "where") {
    want(3);
    if (at[0] !== "bool" || at[1] !== at[2] || at[1] !== e.dtype) fail(`'where:${e.dtype}' of ${at.join(", ")}`);
  } else if (e.op === "cast") want(1);
  else fail(`'${e.op}' cannot appear in an elementwise expression`);
  return e.dtype;
}

/** Evaluates an expression for one element; `arg(k)` reads operand k there. */
function evalExpr(e: Expr, arg: (k: number) => number): number {
  if (e.kind === "arg") return arg(e.index);
  if (e.kind === "lit") return roundScalar(e.dtype, e.value);
  const v = e.args.map((a) => evalExpr(a, arg));
  let r: number;
  if (e.op in UNARY) r = UNARY[e.op](v[0]);
  else if (e.op in COMPARE) r = COMPARE[e.op](v[0], v[1]) ? 1 : 0;
  else if (e.op === "div" && !isFloat(e.dtype)) r = Math.trunc(v[0] / v[1]);
  else if (e.op in BINARY) r = BINARY[e.op](v[0], v[1]);
  else if (e.op === "where") r = v[0] ? v[1] : v[2];
  else r = !isFloat(e.dtype) && e.dtype !== "bool" ? Math.trunc(v[0]) : v[0]; // cast
  return roundScalar(e.dtype, r);
}

const exprCache = new Map<string, Expr>();
function exprOf(a: Attrs): Expr {
  const text = a.expr as string;
  let e = exprCache.get(text);
  if (!e) {
    try {
      e = parseExpr(text);
    } catch (err) {
      return fail(`bad expression: ${(err as Error).message}`);
    }
    exprCache.set(text, e);
  }
  return e;
}

def({
  name: "elementwise",
  arity: [1, Infinity],
  attrs: { expr: { kind: "string" } },
  infer: (ts, a) => {
    const e = exprOf(a);
    if (e.kind === "arg") fail("an elementwise expression must compute something");
    const dtype = typeExpr(e, ts);
    const used = exprArgs(e);
    ts.forEach((_t, k) => used.has(k) || fail(`operand $${k} is not used by the expression`));
    return { dtype, shape: broadcastShapes(ts.map((t) => t.shape)) };
  },
  eval: (xs, a, out) => {
    const e = exprOf(a);
    const y = alloc(out.dtype, out.shape);
    const maps = xs.map((x) => broadcastIndex(x.shape, out.shape));
    let k = 0;
    const arg = (j: number): number => xs[j].data[maps[j] ? maps[j]![k] : k];
    for (; k < y.data.length; k++) y.data[k] = evalExpr(e, arg);
    return y;
  },
});

/** Attributes whose values are dims, to be evaluated before `eval` runs. */
export const DIM_ATTRS = (d: OpDef): string[] => Object.entries(d.attrs).filter(([, s]) => s.kind === "dim").map(([k]) => k);

// ---------------------------------------------------------------- positions of padded and packed batches

// Position ids of a padded batch from Hugging Face's attention_mask [B, T] (1 = real): the count of
// real tokens before each real one (cumsum − 1), and 1 at padding, as f32 [B, T] (HF's
// position_ids for left-padded generation).
def({
  name: "mask_positions",
  arity: 1,
  attrs: {},
  infer: ([m]) => {
    if (m.dtype !== "i64" || m.shape.length !== 2) fail(`mask_positions takes an i64 [B, T] mask, got ${m.dtype}${formatShape(m.shape)}`);
    return { dtype: "f32", shape: [...m.shape] };
  },
  eval: ([m], _a, out) => {
    const [B, T] = m.shape;
    const y = alloc("f32", out.shape);
    for (let b = 0; b < B; b++) {
      let n = 0;
      for (let t = 0; t < T; t++) y.data[b * T + t] = m.data[b * T + t] !== 0 ? n++ : 1;
    }
    return y;
  },
});

// Position ids of packed sequences: token t of sequence s (cu_seqlens[s] ≤ t < cu_seqlens[s+1]) is
// at position t − cu_seqlens[s]; f32 [1, T] with T = `length` (the packed tokens).
def({
  name: "varlen_positions",
  arity: 1,
  attrs: { length: { kind: "dim" } },
  infer: ([cu], a) => {
    if (cu.dtype !== "i32" || cu.shape.length !== 1) fail(`varlen_positions takes i32 cu_seqlens [N + 1], got ${cu.dtype}${formatShape(cu.shape)}`);
    return { dtype: "f32", shape: [1, a.length as Dim] };
  },
  eval: ([cu], _a, out) => {
    const T = out.shape[1];
    const y = alloc("f32", out.shape);
    let s = 0;
    for (let t = 0; t < T; t++) {
      while (s + 2 < cu.data.length && cu.data[s + 1] <= t) s++;
      y.data[t] = t - cu.data[s];
    }
    return y;
  },
});

// ---------------------------------------------------------------- static KV cache

// The static KV cache's write: `cache` [B, H, C, D] (C = capacity) with rows [pos, pos + S) of
// axis 2 replaced by `update` [B, H, S, D]; `pos` is an i64 scalar (the tokens already cached).
// Targets write in place when the cache is a graph input read by nothing else (the artifact's
// manifest says so), which is what makes a decode step's shapes independent of its position.
def({
  name: "cache_write",
  arity: 3,
  attrs: {},
  infer: ([cache, update, pos]) => {
    const dtype = sameDType([cache, update]);
    if (cache.shape.length !== 4 || update.shape.length !== 4) fail(`cache_write takes a [B, H, C, D] cache and a [B, H, S, D] update, got ${formatShape(cache.shape)}, ${formatShape(update.shape)}`);
    for (const k of [0, 1, 3]) if (!dimEq(cache.shape[k], update.shape[k])) fail(`cache ${formatShape(cache.shape)} and update ${formatShape(update.shape)} differ in dim ${k}`);
    if (pos.dtype !== "i64" || pos.shape.length !== 0) fail(`the position must be an i64 scalar, got ${pos.dtype}${formatShape(pos.shape)}`);
    return { dtype, shape: [...cache.shape] };
  },
  eval: ([cache, update, pos], _a, out) => {
    const [B, H, C, D] = cache.shape;
    const S = update.shape[2];
    const p = pos.data[0];
    if (!(Number.isInteger(p) && p >= 0 && p + S <= C)) fail(`cache_write of ${S} rows at position ${p} does not fit the capacity ${C}`);
    const y = alloc(out.dtype, out.shape);
    y.data.set(cache.data);
    for (let bh = 0; bh < B * H; bh++)
      for (let s = 0; s < S; s++) for (let d = 0; d < D; d++) y.data[(bh * C + p + s) * D + d] = update.data[(bh * S + s) * D + d];
    return y;
  },
});

// ---------------------------------------------------------------- the varlen KV cache

// One contiguous cache row ("slot") per sequence, any number of sequences of any lengths per call:
// the per-sequence cache slots of vLLM (Kwon et al., 2023, PagedAttention), without the paging.
// A call runs N sequences packed end to end (FlashAttention-2's varlen form): token t of sequence n
// (cu_seqlens[n] ≤ t < cu_seqlens[n+1]) sits at position cache_position[n] + t − cu_seqlens[n] of
// cache row cache_slot[n]. Prefill (positions from 0), decode (one token a sequence) and mixes of
// the two are the same graph; what unpad-varlen makes of a static-cache graph (kvCache "varlen").

/** Checks the three per-sequence operands: cu_seqlens i32 [N + 1], slots i32 [N], positions i64 [N]. */
function checkSequences(cu: TensorType, slot: TensorType | undefined, pos: TensorType): void {
  if (cu.dtype !== "i32" || cu.shape.length !== 1) fail(`cu_seqlens must be i32 [N + 1], got ${cu.dtype}${formatShape(cu.shape)}`);
  const N = dimSub(cu.shape[0], 1);
  if (slot && (slot.dtype !== "i32" || slot.shape.length !== 1 || !dimEq(slot.shape[0], N))) fail(`cache_slot must be i32 [${N}] (one per sequence), got ${slot.dtype}${formatShape(slot.shape)}`);
  if (pos.dtype !== "i64" || pos.shape.length !== 1 || !dimEq(pos.shape[0], N)) fail(`cache_position must be i64 [${N}] (one per sequence), got ${pos.dtype}${formatShape(pos.shape)}`);
}

/** Each packed token's sequence, position and cache row; fails (as the targets do) on what does not fit. */
function varlenTokens(cu: Tensor, pos: Tensor, T: number, slot?: Tensor, rows = 0, C = Infinity): { seq: Int32Array; at: Float64Array } {
  const N = cu.data.length - 1;
  if (cu.data[0] !== 0 || cu.data[N] !== T) fail(`cu_seqlens must run from 0 to the ${T} packed tokens, got ${cu.data[0]} .. ${cu.data[N]}`);
  const seq = new Int32Array(T), at = new Float64Array(T);
  const used = new Set<number>();
  for (let n = 0; n < N; n++) {
    const [a, b, p] = [cu.data[n], cu.data[n + 1], pos.data[n]];
    if (b < a) fail(`cu_seqlens must not decrease (sequence ${n}: ${a} .. ${b})`);
    if (!(p >= 0 && p + (b - a) <= C)) fail(`sequence ${n}: ${b - a} tokens at position ${p} do not fit the cache's capacity ${C}`);
    if (slot) {
      const s = slot.data[n];
      if (!(Number.isInteger(s) && s >= 0 && s < rows)) fail(`sequence ${n}: cache slot ${s} is not in [0, ${rows})`);
      if (used.has(s)) fail(`cache slot ${s} is given to two sequences`);
      used.add(s);
    }
    for (let t = a; t < b; t++) [seq[t], at[t]] = [n, p + t - a];
  }
  return { seq, at };
}

// Absolute positions of packed tokens (i64 [T], T = `length`): cache_position[n] + t − cu_seqlens[n].
def({
  name: "varlen_cache_positions",
  arity: 2,
  attrs: { length: { kind: "dim" } },
  infer: ([cu, pos], a) => {
    checkSequences(cu, undefined, pos);
    return { dtype: "i64", shape: [a.length as Dim] };
  },
  eval: ([cu, pos], _a, out) => {
    const y = alloc("i64", out.shape);
    y.data.set(varlenTokens(cu, pos, out.shape[0]).at);
    return y;
  },
});

// The varlen cache's write: `cache` [B, H, C, D] (B cache rows) with each packed token's keys or
// values (`update` [1, H, T, D]) at [cache_slot[n], :, its position, :]. Written in place like
// cache_write (the manifest's `aliases`); slots must differ and positions fit C.
def({
  name: "varlen_cache_write",
  arity: 5,
  attrs: {},
  infer: ([cache, update, cu, slot, pos]) => {
    const dtype = sameDType([cache, update]);
    if (cache.shape.length !== 4 || update.shape.length !== 4 || !dimEq(update.shape[0], 1))
      fail(`varlen_cache_write takes a [B, H, C, D] cache and a packed [1, H, T, D] update, got ${formatShape(cache.shape)}, ${formatShape(update.shape)}`);
    for (const k of [1, 3]) if (!dimEq(cache.shape[k], update.shape[k])) fail(`cache ${formatShape(cache.shape)} and update ${formatShape(update.shape)} differ in dim ${k}`);
    checkSequences(cu, slot, pos);
    return { dtype, shape: [...cache.shape] };
  },
  eval: ([cache, update, cu, slot, pos], _a, out) => {
    const [B, H, C, D] = cache.shape;
    const T = update.shape[2];
    const { seq, at } = varlenTokens(cu, pos, T, slot, B, C);
    const y = alloc(out.dtype, out.shape);
    y.data.set(cache.data);
    for (let h = 0; h < H; h++)
      for (let t = 0; t < T; t++) {
        const dst = ((slot.data[seq[t]] * H + h) * C + at[t]) * D;
        for (let d = 0; d < D; d++) y.data[dst + d] = update.data[(h * T + t) * D + d];
      }
    return y;
  },
});

// Causal attention of packed queries (q [1, Hq, T, D]) against their sequences' cache rows (k [B,
// Hkv, C, D], v [B, Hkv, C, Dv], already written by varlen_cache_write): the query at position p of
// sequence n sees keys 0..p of row cache_slot[n] (the last `window` of them with a sliding window),
// score scale · q·k + alibi[h] · j, query head h reading kv head ⌊h / kv_groups⌋. What
// flash_attention{causal} with the static cache's offset computes, one sequence at a time. Every
// query sees at least its own key, so no row is empty. f64 accumulation, one rounding at the end.
def({
  name: "varlen_cache_attention",
  arity: 6,
  attrs: { scale: { kind: "float" }, kv_groups: { kind: "int" }, alibi: { kind: "floats", optional: true }, window: { kind: "int", optional: true } },
  infer: ([q, k, v, cu, slot, pos], a) => {
    const dtype = sameDType([q, k, v]);
    needFloat(q);
    if (q.shape.length !== 4 || k.shape.length !== 4 || v.shape.length !== 4 || !dimEq(q.shape[0], 1))
      fail(`varlen_cache_attention takes packed q [1, Hq, T, D] and caches [B, Hkv, C, D], got ${formatShape(q.shape)}, ${formatShape(k.shape)}, ${formatShape(v.shape)}`);
    const g = a.kv_groups as number;
    if (!(Number.isInteger(g) && g >= 1)) fail(`kv_groups must be a positive integer, got ${g}`);
    if (!dimEq(q.shape[1], dimProduct([k.shape[1], g])) || !dimEq(k.shape[1], v.shape[1])) fail(`heads: q has ${q.shape[1]}, k and v ${k.shape[1]} and ${v.shape[1]}, kv_groups ${g}`);
    if (!dimEq(q.shape[3], k.shape[3])) fail(`q and k head dims differ: ${q.shape[3]} vs ${k.shape[3]}`);
    for (const i of [0, 2]) if (!dimEq(k.shape[i], v.shape[i])) fail(`the key and value caches differ: ${formatShape(k.shape)} vs ${formatShape(v.shape)}`);
    const slopes = (a.alibi as number[] | undefined) ?? [];
    if (slopes.length && !dimEq(q.shape[1], slopes.length)) fail(`alibi has ${slopes.length} slopes for ${q.shape[1]} query heads`);
    if (a.window !== undefined && !((a.window as number) >= 1)) fail(`window must be a positive integer, got ${a.window as number}`);
    checkSequences(cu, slot, pos);
    return { dtype, shape: [1, q.shape[1], q.shape[2], v.shape[3]] };
  },
  eval: ([q, k, v, cu, slot, pos], a, out) => {
    const [, Hq, T, D] = q.shape;
    const [B, Hkv, C, Dv] = v.shape;
    const g = a.kv_groups as number, scale = a.scale as number;
    const slopes = (a.alibi as number[] | undefined) ?? [];
    const window = (a.window as number | undefined) ?? Infinity;
    const { seq, at } = varlenTokens(cu, pos, T, slot, B, C);
    const y = alloc(out.dtype, out.shape);
    const p = new Float64Array(C);
    for (let h = 0; h < Hq; h++)
      for (let t = 0; t < T; t++) {
        const ko = (slot.data[seq[t]] * Hkv + Math.floor(h / g)) * C;
        const [first, last] = [Math.max(0, at[t] - window + 1), at[t]];
        let m = -Infinity;
        for (let j = first; j <= last; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q.data[(h * T + t) * D + d] * k.data[(ko + j) * D + d];
          p[j] = s * scale + (slopes.length ? slopes[h] * j : 0);
          if (p[j] > m || Number.isNaN(p[j])) m = p[j];
        }
        let sum = 0;
        for (let j = first; j <= last; j++) sum += (p[j] = Math.exp(p[j] - m));
        for (let d = 0; d < Dv; d++) {
          let acc = 0;
          for (let j = first; j <= last; j++) acc += p[j] * v.data[(ko + j) * Dv + d];
          y.data[(h * T + t) * Dv + d] = acc / sum;
        }
      }
    return roundToDType(y);
  },
});
