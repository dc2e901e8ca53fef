// The reference interpreter, op by op, against values worked out by hand: broadcasting, batched
// matmul, softmax with -inf, reductions, symbolic slices, gather, 16-bit float rounding, integer
// wrap-around, casts. The last test checks that every op in OPS has a reference rule and a case here.

import { describe, expect, test } from "@jest/globals";
import type { Attrs, DType, Tensor } from "../compiler/ir/index.js";
import { GraphBuilder, inferNode, KilnError, OPS, parse, run, tensor, verify } from "../compiler/ir/index.js";

const covered = new Set<string>();

/** Runs one op on concrete tensors (inputs x0, x1, ...) and returns its result. */
function op1(op: string, xs: Tensor[], attrs: Attrs = {}): Tensor {
  covered.add(op);
  const b = new GraphBuilder("t");
  const vs = xs.map((t, i) => b.input(`x${i}`, { dtype: t.dtype, shape: t.shape }));
  if (!xs.length) b.input("unused", { dtype: "f32", shape: [] });
  b.output("y", b.node(op, vs, attrs, inferNode({ op, operands: vs, attrs })));
  const inputs = Object.fromEntries(xs.map((t, i) => [`x${i}`, t]));
  if (!xs.length) inputs.unused = tensor("f32", [], [0]);
  return run(b.graph, inputs, {}).y;
}

/** Runs a graph in text form on the given inputs. */
function runText(text: string, inputs: Record<string, Tensor>): Record<string, Tensor> {
  const g = parse(text);
  for (const n of g.nodes) covered.add(n.op);
  return run(g, inputs, {});
}

const t = (dtype: DType, shape: number[], values: number[]): Tensor => tensor(dtype, shape, values);
const f = (shape: number[], values: number[]): Tensor => tensor("f32", shape, values);
const vals = (x: Tensor): number[] => Array.from(x.data);
const fr = Math.fround;

describe("elementwise unary", () => {
  test("neg, abs (floats and integers; i8 wraps)", () => {
    expect(vals(op1("neg", [f([3], [1, -2, 0])]))).toEqual([-1, 2, -0]);
    expect(vals(op1("neg", [t("i8", [2], [-128, 5])]))).toEqual([-128, -5]);
    expect(vals(op1("abs", [t("i32", [2], [-3, 4])]))).toEqual([3, 4]);
    expect(vals(op1("abs", [f([2], [-0, -2.5])]))).toEqual([0, 2.5]);
  });

  test("exp, log, sqrt, rsqrt, reciprocal (edges: 0, negatives)", () => {
    expect(vals(op1("exp", [f([3], [0, 1, -Infinity])]))).toEqual([1, fr(Math.E), 0]);
    expect(vals(op1("log", [f([4], [1, 0, -1, Infinity])]))).toEqual([0, -Infinity, NaN, Infinity]);
    expect(vals(op1("sqrt", [f([3], [4, 2, -1])]))).toEqual([2, fr(Math.SQRT2), NaN]);
    expect(vals(op1("rsqrt", [f([3], [4, 0, 0.25])]))).toEqual([0.5, Infinity, 2]);
    expect(vals(op1("reciprocal", [f([3], [2, -0, 0])]))).toEqual([0.5, -Infinity, Infinity]);
  });

  test("tanh, sigmoid, silu, relu, gelu, gelu_tanh, cos, sin", () => {
    expect(vals(op1("tanh", [f([2], [0, 1])]))).toEqual([0, fr(0.7615941559557649)]);
    expect(vals(op1("sigmoid", [f([3], [0, 2, -200])]))).toEqual([0.5, fr(0.8807970779778823), 0]);
    expect(vals(op1("silu", [f([2], [1, 0])]))).toEqual([fr(0.7310585786300049), 0]);
    expect(vals(op1("relu", [f([3], [-1, 0, 2])]))).toEqual([0, 0, 2]);
    // x·Φ(x): Φ(1) = 0.8413447460685429
    expect(vals(op1("gelu", [f([3], [1, -1, 0])]))).toEqual([fr(0.8413447460685429), fr(-0.15865525393145707), 0]);
    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    expect(vals(op1("gelu_tanh", [f([1], [1])]))[0]).toBeCloseTo(0.8411919906082768, 6);
    expect(vals(op1("cos", [f([2], [0, Math.PI])]))).toEqual([1, -1]);
    expect(vals(op1("sin", [f([2], [0, -Math.PI / 2])]))).toEqual([0, -1]);
  });

  test("16-bit results are rounded to their format", () => {
    expect(vals(op1("exp", [t("bf16", [1], [1])]))).toEqual([2.71875]); // e to 8 significant bits
    expect(vals(op1("exp", [t("f16", [1], [1])]))).toEqual([2.71875]); // and to 11: 2.71875 again
    expect(vals(op1("sqrt", [t("f16", [1], [2])]))).toEqual([1.4140625]);
  });
});

describe("elementwise binary", () => {
  test("add broadcasts [2, 1] + [3] -> [2, 3]", () => {
    const y = op1("add", [f([2, 1], [10, 20]), f([3], [1, 2, 3])]);
    expect(y.shape).toEqual([2, 3]);
    expect(vals(y)).toEqual([11, 12, 13, 21, 22, 23]);
  });

  test("add rounds in bf16 and f16, not in f32", () => {
    expect(vals(op1("add", [f([1], [256]), f([1], [1])]))).toEqual([257]);
    expect(vals(op1("add", [t("bf16", [1], [256]), t("bf16", [1], [1])]))).toEqual([256]); // 257 is a tie: to even
    expect(vals(op1("add", [t("bf16", [1], [256]), t("bf16", [1], [3])]))).toEqual([260]); // 259 is a tie: to even (260)
    expect(vals(op1("add", [t("f16", [1], [2048]), t("f16", [1], [1])]))).toEqual([2048]);
    expect(vals(op1("add", [t("f16", [1], [65504]), t("f16", [1], [16])]))).toEqual([Infinity]); // overflow
  });

  test("sub, mul, div on floats and integers (wrap-around, truncating division)", () => {
    expect(vals(op1("sub", [f([2], [5, 3]), f([1], [1])]))).toEqual([4, 2]);
    expect(vals(op1("sub", [t("u8", [1], [1]), t("u8", [1], [2])]))).toEqual([255]);
    expect(vals(op1("mul", [f([2, 2], [1, 2, 3, 4]), f([2, 1], [10, -1])]))).toEqual([10, 20, -3, -4]);
    expect(vals(op1("mul", [t("i8", [1], [100]), t("i8", [1], [2])]))).toEqual([-56]);
    expect(vals(op1("mul", [t("i32", [1], [2 ** 30]), t("i32", [1], [4])]))).toEqual([0]);
    expect(vals(op1("add", [t("i32", [1], [2 ** 31 - 1]), t("i32", [1], [1])]))).toEqual([-(2 ** 31)]);
    expect(vals(op1("div", [f([3], [1, -1, 0]), f([1], [0])]))).toEqual([Infinity, -Infinity, NaN]);
    expect(vals(op1("div", [t("i32", [2], [7, -7]), t("i32", [1], [2])]))).toEqual([3, -3]);
  });

  test("pow, maximum, minimum (NaN propagates)", () => {
    expect(vals(op1("pow", [f([3], [2, 4, -8]), f([3], [3, 0.5, 1 / 3])]))).toEqual([8, 2, NaN]);
    expect(vals(op1("maximum", [f([3], [1, 5, NaN]), f([3], [3, 2, 1])]))).toEqual([3, 5, NaN]);
    expect(vals(op1("minimum", [f([3], [1, 5, -0]), f([1], [2])]))).toEqual([1, 2, -0]);
  });

  test("comparisons give bool (NaN is unequal to everything)", () => {
    const a = f([4], [1, 2, 3, NaN]);
    const b = f([1], [2]);
    const cmp = (op: string, x = a, y = b): number[] => {
      const r = op1(op, [x, y]);
      expect(r.dtype).toBe("bool");
      return vals(r);
    };
    expect(cmp("less")).toEqual([1, 0, 0, 0]);
    expect(cmp("less_equal")).toEqual([1, 1, 0, 0]);
    expect(cmp("greater")).toEqual([0, 0, 1, 0]);
    expect(cmp("greater_equal")).toEqual([0, 1, 1, 0]);
    expect(cmp("equal")).toEqual([0, 1, 0, 0]);
    expect(cmp("not_equal")).toEqual([1, 0, 1, 1]);
    expect(cmp("equal", t("i32", [2], [3, 4]), t("i32", [2], [3, 5]))).toEqual([1, 0]);
  });

  test("where broadcasts its condition and both branches", () => {
    const y = op1("where", [t("bool", [2, 1], [1, 0]), f([2, 2], [1, 2, 3, 4]), f([], [-1])]);
    expect(y.shape).toEqual([2, 2]);
    expect(vals(y)).toEqual([1, 2, -1, -1]);
  });
});

describe("casts and constants", () => {
  test("cast: truncation to integers, wrap-around, rounding to 16-bit floats, bool", () => {
    expect(vals(op1("cast", [f([4], [1.7, -1.7, 2.5, -0.5])], { to: "i32" }))).toEqual([1, -1, 2, 0]); // no -0 in integers
    expect(vals(op1("cast", [f([2], [-0.5, 3e9])], { to: "i64" }))).toEqual([0, 3e9]);
    expect(vals(op1("cast", [f([3], [300, -1, 255.9])], { to: "u8" }))).toEqual([44, 255, 255]);
    expect(vals(op1("cast", [f([2], [200, -129])], { to: "i8" }))).toEqual([-56, 127]);
    expect(vals(op1("cast", [f([3], [1 + 2 ** -8, 1 + 3 * 2 ** -8, 65520])], { to: "bf16" }))).toEqual([1, 1 + 2 ** -6, 65536]);
    expect(vals(op1("cast", [f([3], [1 + 2 ** -11, 65520, 2 ** -25])], { to: "f16" }))).toEqual([1, Infinity, 0]);
    expect(vals(op1("cast", [f([4], [0, -0, 0.5, NaN])], { to: "bool" }))).toEqual([0, 0, 1, 1]);
    expect(vals(op1("cast", [t("bool", [2], [1, 0])], { to: "f16" }))).toEqual([1, 0]);
    expect(vals(op1("cast", [t("i64", [2], [3, -4])], { to: "f32" }))).toEqual([3, -4]);
  });

  test("full: symbolic shape, special values, rounding to the dtype", () => {
    const out = runText(
      `graph g {
  input %x: f32[S]
  %0: f32[S, 2] = full() {dtype = f32, shape = [S, 2], value = -0}
  %1: f16[2] = full() {dtype = f16, shape = [2], value = 65520}
  %2: i32[] = full() {dtype = i32, shape = [], value = -2.7}
  %3: bf16[1] = full() {dtype = bf16, shape = [1], value = nan}
  output a = %0
  output b = %1
  output c = %2
  output d = %3
}
`,
      { x: f([3], [0, 0, 0]) },
    );
    expect(out.a.shape).toEqual([3, 2]);
    expect(vals(out.a)).toEqual([-0, -0, -0, -0, -0, -0]);
    expect(vals(out.b)).toEqual([Infinity, Infinity]);
    expect(vals(out.c)).toEqual([-2]);
    expect(vals(out.d)).toEqual([NaN]);
  });

  test("constant: row-major values, rounded to the dtype", () => {
    const y = op1("constant", [], { values: [1, 2.7, -3.2, 4], shape: [2, 2], dtype: "i32" });
    expect(y.shape).toEqual([2, 2]);
    expect(vals(y)).toEqual([1, 2, -3, 4]);
    expect(vals(op1("constant", [], { values: [0.1], shape: [1], dtype: "bf16" }))).toEqual([0.10009765625]);
  });

  test("arange with a symbolic end", () => {
    const out = runText(
      `graph g {
  input %x: f32[S]
  %0: i64[S] = arange() {dtype = i64, end = S+1, start = 1}
  %1: f32[3] = arange() {dtype = f32, end = 5, start = 2}
  output a = %0
  output b = %1
}
`,
      { x: f([4], [0, 0, 0, 0]) },
    );
    expect(vals(out.a)).toEqual([1, 2, 3, 4]);
    expect(vals(out.b)).toEqual([2, 3, 4]);
  });
});

describe("contractions", () => {
  test("matmul [2, 3] · [3, 2]", () => {
    const y = op1("matmul", [f([2, 3], [1, 2, 3, 4, 5, 6]), f([3, 2], [1, 0, 0, 1, 1, 1])]);
    expect(y.shape).toEqual([2, 2]);
    expect(vals(y)).toEqual([4, 5, 10, 11]);
  });

  test("matmul broadcasts batch dims: [2, 1, 1, 2] · [3, 2, 1] -> [2, 3, 1, 1]", () => {
    // x[b] = [b+1, 1]; w[c] = [c, 10]ᵀ  ->  y[b][c] = (b+1)·c + 10
    const y = op1("matmul", [f([2, 1, 1, 2], [1, 1, 2, 1]), f([3, 2, 1], [0, 10, 1, 10, 2, 10])]);
    expect(y.shape).toEqual([2, 3, 1, 1]);
    expect(vals(y)).toEqual([10, 11, 12, 10, 12, 14]);
    // a batched x against one unbatched weight
    const z = op1("matmul", [f([2, 1, 2], [1, 2, 3, 4]), f([2, 1], [1, -1])]);
    expect(z.shape).toEqual([2, 1, 1]);
    expect(vals(z)).toEqual([-1, -1]);
  });

  test("matmul: 0 · inf is NaN, and bf16 results are rounded", () => {
    expect(vals(op1("matmul", [f([1, 2], [0, 1]), f([2, 1], [Infinity, 1])]))).toEqual([NaN]);
    expect(vals(op1("matmul", [t("bf16", [1, 2], [256, 1]), t("bf16", [2, 1], [1, 1])]))).toEqual([256]);
  });

  test("linear: x · wᵀ + b over leading dims", () => {
    const y = op1("linear", [f([2, 1, 2], [1, 2, 3, 4]), f([3, 2], [1, 0, 0, 1, 1, 1]), f([3], [0, 10, 100])]);
    expect(y.shape).toEqual([2, 1, 3]);
    expect(vals(y)).toEqual([1, 12, 103, 3, 14, 107]);
    expect(vals(op1("linear", [f([2], [1, 2]), f([1, 2], [3, 4])]))).toEqual([11]);
  });
});

describe("reductions", () => {
  test("softmax along an axis, with -inf masked entries", () => {
    const y = op1("softmax", [f([2, 3], [0, -Infinity, 0, Math.log(3), 0, -Infinity])], { axis: -1 });
    expect(vals(y)).toEqual([0.5, 0, 0.5, 0.75, 0.25, 0]);
    const cols = op1("softmax", [f([2, 2], [0, 1, 0, 1])], { axis: 0 });
    expect(vals(cols)).toEqual([0.5, 0.5, 0.5, 0.5]);
    // a fully masked row has no distribution: NaN, as in PyTorch
    expect(vals(op1("softmax", [f([2], [-Infinity, -Infinity])], { axis: 0 }))).toEqual([NaN, NaN]);
  });

  test("reduce_sum, reduce_mean, reduce_max with and without keepdim", () => {
    const x = f([2, 2], [1, 2, 3, 4]);
    const s0 = op1("reduce_sum", [x], { axis: 0, keepdim: true });
    expect([s0.shape, vals(s0)]).toEqual([[1, 2], [4, 6]]);
    const s1 = op1("reduce_sum", [x], { axis: -1, keepdim: false });
    expect([s1.shape, vals(s1)]).toEqual([[2], [3, 7]]);
    expect(vals(op1("reduce_mean", [x], { axis: 1, keepdim: false }))).toEqual([1.5, 3.5]);
    expect(vals(op1("reduce_mean", [t("i32", [2], [1, 2])], { axis: 0, keepdim: false }))).toEqual([1]);
    const m = op1("reduce_max", [f([2, 3], [1, -Infinity, 3, -Infinity, -Infinity, NaN])], { axis: 1, keepdim: true });
    expect([m.shape, vals(m)]).toEqual([[2, 1], [3, NaN]]);
    // the middle axis of a rank-3 tensor
    const r3 = op1("reduce_sum", [f([2, 2, 2], [1, 2, 3, 4, 5, 6, 7, 8])], { axis: 1, keepdim: false });
    expect([r3.shape, vals(r3)]).toEqual([[2, 2], [4, 6, 12, 14]]);
  });

  test("argmax: the first index of the maximum of the last axis, i64; -1 for a NaN, +Inf or nothing finite", () => {
    const rows = [
      [1, 3, 3, 2], // a tie: the first
      [-Infinity, -5, -Infinity, -5], // masked tokens are never chosen
      [-Infinity, -Infinity, -Infinity, -Infinity], // nothing to choose
      [0, NaN, 9, 1], // a NaN anywhere
      [Infinity, 0, 1, 2], // +Inf
      [-0, 0, -1, -2], // -0 == 0: the first
    ];
    const y = op1("argmax", [f([2, 3, 4], rows.flat())], { axis: -1 });
    expect([y.dtype, y.shape, vals(y)]).toEqual(["i64", [2, 3], [1, 1, -1, -1, -1, 0]]);
    // a bf16 row: 1.00390625 rounds to 1 in bf16, so the tie goes to the first
    expect(vals(op1("argmax", [t("bf16", [3], [1, 1.00390625, 0.5])], { axis: 0 }))).toEqual([0]);
  });
});

describe("data movement", () => {
  test("reshape keeps row-major order, symbolic shapes included", () => {
    const y = op1("reshape", [f([2, 3], [1, 2, 3, 4, 5, 6])], { shape: [3, 2] });
    expect([y.shape, vals(y)]).toEqual([[3, 2], [1, 2, 3, 4, 5, 6]]);
    const out = runText(
      `graph g {
  input %x: f32[B, S, 2]
  %0: f32[B*S, 2] = reshape(%x) {shape = [B*S, 2]}
  output y = %0
}
`,
      { x: f([2, 1, 2], [1, 2, 3, 4]) },
    );
    expect(out.y.shape).toEqual([2, 2]);
  });

  test("transpose", () => {
    const y = op1("transpose", [f([2, 3], [1, 2, 3, 4, 5, 6])], { perm: [1, 0] });
    expect([y.shape, vals(y)]).toEqual([[3, 2], [1, 4, 2, 5, 3, 6]]);
    // [1, 2, 3] with perm [2, 0, 1] -> [3, 1, 2]: y[k][i][j] = x[i][j][k]
    const z = op1("transpose", [f([1, 2, 3], [1, 2, 3, 4, 5, 6])], { perm: [2, 0, 1] });
    expect([z.shape, vals(z)]).toEqual([[3, 1, 2], [1, 4, 2, 5, 3, 6]]);
  });

  test("expand repeats unit dims and adds leading ones", () => {
    const y = op1("expand", [f([1, 3], [1, 2, 3])], { shape: [2, 3] });
    expect(vals(y)).toEqual([1, 2, 3, 1, 2, 3]);
    const z = op1("expand", [f([2, 1], [1, 2])], { shape: [2, 2, 2] });
    expect(vals(z)).toEqual([1, 1, 2, 2, 1, 1, 2, 2]);
  });

  test("slice with a symbolic end", () => {
    const text = `graph g {
  input %x: f32[S, 2]
  %0: f32[S-1, 2] = slice(%x) {axis = 0, end = S, start = 1}
  %1: f32[S, 1] = slice(%x) {axis = -1, end = 2, start = 1}
  output a = %0
  output b = %1
}
`;
    const out = runText(text, { x: f([3, 2], [1, 2, 3, 4, 5, 6]) });
    expect([out.a.shape, vals(out.a)]).toEqual([[2, 2], [3, 4, 5, 6]]);
    expect([out.b.shape, vals(out.b)]).toEqual([[3, 1], [2, 4, 6]]);
    // S = 1: an empty slice
    expect(runText(text, { x: f([1, 2], [1, 2]) }).a.shape).toEqual([0, 2]);
  });

  test("concat of several operands, symbolic lengths add", () => {
    const y = op1("concat", [f([2, 1], [1, 2]), f([2, 2], [3, 4, 5, 6]), f([2, 1], [7, 8])], { axis: 1 });
    expect([y.shape, vals(y)]).toEqual([[2, 4], [1, 3, 4, 7, 2, 5, 6, 8]]);
    const out = runText(
      `graph g {
  input %past: f32[P, 2]
  input %x: f32[S, 2]
  %0: f32[P+S, 2] = concat(%past, %x) {axis = 0}
  output y = %0
}
`,
      { past: f([1, 2], [1, 2]), x: f([2, 2], [3, 4, 5, 6]) },
    );
    expect([out.y.shape, vals(out.y)]).toEqual([[3, 2], [1, 2, 3, 4, 5, 6]]);
  });

  test("gather: embedding lookup with 2-D indices, other axes, out-of-range index", () => {
    const table = f([4, 2], [0, 1, 10, 11, 20, 21, 30, 31]);
    const y = op1("gather", [table, t("i64", [2, 2], [3, 0, 1, 1])], { axis: 0 });
    expect([y.shape, vals(y)]).toEqual([[2, 2, 2], [30, 31, 0, 1, 10, 11, 10, 11]]);
    const cols = op1("gather", [table, t("i32", [1], [1])], { axis: -1 });
    expect([cols.shape, vals(cols)]).toEqual([[4, 1], [1, 11, 21, 31]]);
    expect(() => op1("gather", [table, t("i32", [1], [4])], { axis: 0 })).toThrow(
      expect.objectContaining({ code: "E_INTERP", message: expect.stringMatching(/index 4 is out of range \[0, 4\)/) }) as unknown as Error,
    );
  });
});

describe("the interpreter's checks", () => {
  test("missing inputs, wrong shapes, contradicting symbols, missing weights", () => {
    const g = parse(`graph g {
  input %a: f32[S, 2]
  input %b: f32[S]
  param %w: f32[2, 2]
  %0: f32[S, 2] = matmul(%a, %w)
  output y = %0
}
`);
    const w = { w: f([2, 2], [1, 0, 0, 1]) };
    const codeOf = (fn: () => unknown): string => {
      try {
        fn();
      } catch (e) {
        return `${(e as KilnError).code}: ${(e as Error).message}`;
      }
      return "";
    };
    expect(codeOf(() => run(g, { a: f([1, 2], [1, 2]) }, w))).toBe("E_INTERP: missing input 'b' (f32[S])");
    expect(codeOf(() => run(g, { a: f([1, 2], [1, 2]), b: f([2], [1, 2]) }, w))).toBe("E_INTERP: input 'b' dim 0 is 2, but S = 1 from an earlier input");
    expect(codeOf(() => run(g, { a: f([1, 3], [1, 2, 3]), b: f([1], [1]) }, w))).toMatch(/^E_INTERP: input 'a' has shape \[1, 3\]/);
    expect(codeOf(() => run(g, { a: f([1, 2], [1, 2]), b: f([1], [1]) }, {}))).toBe("E_WEIGHTS: missing weight 'w' (f32[2, 2])");
    expect(codeOf(() => run(g, { a: f([1, 2], [1, 2]), b: f([1], [1]) }, { w: t("f16", [2, 2], [1, 0, 0, 1]) }))).toBe(
      "E_WEIGHTS: weight 'w' is f16, the graph wants f32",
    );
    expect(vals(run(g, { a: f([1, 2], [1, 2]), b: f([1], [1]) }, (name) => (name === "w" ? w.w : f([], [0]))).y)).toEqual([1, 2]);
  });
});

describe("qlinear", () => {
  test("fp4 with block 2 by hand: each pair of weights scaled by its absmax, then rounded to the code", () => {
    const g = parse(`graph g {
  input %x: f32[1, 4]
  param %w: f32[1, 4]
  %0: f32[1, 1] = qlinear(%x, %w) {block = 2, double_quant = false, scheme = "fp4", threshold = 0}
  output y = %0
}`);
    for (const n of g.nodes) covered.add(n.op);
    // blocks [0.6, -1.2] (absmax 1.2) and [0.3, 0.03] (absmax 0.3); fp4 code values are k/12:
    // 0.6/1.2 = 0.5 → 6/12 exactly; −1 and 1 exactly; 0.03/0.3 = 0.1 → nearest code 2/12 (not 1/192)
    const out = run(g, { x: tensor("f32", [1, 4], [1, 1, 1, 1]) }, { w: tensor("f32", [1, 4], [0.6, -1.2, 0.3, 0.03]) });
    const want = 0.5 * Math.fround(1.2) - Math.fround(1.2) + Math.fround(0.3) + (2 / 12) * Math.fround(0.3);
    expect(out.y.data[0]).toBeCloseTo(want, 6);
  });
});

describe("flash_attention", () => {
  test("softmax(scale·QKᵀ)·V by hand, with grouped heads and a causal mask aligned to the last key", () => {
    // one query row per head, 2 query heads sharing 1 kv head (kv_groups 2), 3 keys, D = 1
    const g = parse(`graph g {
  input %q: f32[1, 2, 1, 1]
  input %k: f32[1, 1, 3, 1]
  input %v: f32[1, 1, 3, 2]
  %0: f32[1, 2, 1, 2] = flash_attention(%q, %k, %v) {causal = false, kv_groups = 2, scale = 0.5}
  %1: f32[1, 2, 1, 2] = flash_attention(%q, %k, %v) {causal = true, kv_groups = 2, scale = 0.5}
  output y = %0
  output c = %1
}`);
    for (const n of g.nodes) covered.add(n.op);
    const out = run(g, { q: tensor("f32", [1, 2, 1, 1], [2, 0]), k: tensor("f32", [1, 1, 3, 1], [0, 1, 2]), v: tensor("f32", [1, 1, 3, 2], [1, 0, 0, 1, 1, 1]) }, {});
    // head 0: scores 0.5·2·[0, 1, 2] = [0, 1, 2]; head 1: all 0 (uniform)
    const e = [1, Math.E, Math.E ** 2];
    const z = e[0] + e[1] + e[2];
    const want0 = [(e[0] + e[2]) / z, (e[1] + e[2]) / z, 2 / 3, 2 / 3];
    expect(Array.from(out.y.data)).toEqual(want0.map((x) => expect.closeTo(x, 6) as unknown as number));
    // causal with S = 1, T = 3: the one query is the last position and sees every key: same result
    expect(Array.from(out.c.data)).toEqual(Array.from(out.y.data));
  });
});

describe("static KV cache", () => {
  test("cache_write replaces rows [pos, pos + S) and refuses a write past the capacity; flash_attention's offset shifts the causal mask", () => {
    const g = parse(`graph g {
  input %cache: f32[1, 1, 4, 2]
  input %new: f32[1, 1, 2, 2]
  input %pos: i64[]
  %0: f32[1, 1, 4, 2] = cache_write(%cache, %new, %pos)
  %1: f32[1, 1, 2, 2] = flash_attention(%new, %0, %0, %pos) {causal = true, kv_groups = 1, scale = 1}
  output y = %0
  output a = %1
}`);
    for (const n of g.nodes) covered.add(n.op);
    const cache = tensor("f32", [1, 1, 4, 2], [1, 1, 2, 2, 3, 3, 4, 4]);
    const fresh = tensor("f32", [1, 1, 2, 2], [0, 0, 0, 0]);
    const out = run(g, { cache, new: fresh, pos: tensor("i64", [], [1]) }, {});
    expect(Array.from(out.y.data)).toEqual([1, 1, 0, 0, 0, 0, 4, 4]);
    // scores are all 0 (q = 0): query 0 (position 1) averages keys 0..1, query 1 (position 2) keys 0..2
    expect(Array.from(out.a.data)).toEqual([0.5, 0.5, 1 / 3, 1 / 3].map((x) => expect.closeTo(x, 7) as unknown as number));
    expect(() => run(g, { cache, new: fresh, pos: tensor("i64", [], [3]) }, {})).toThrow(/does not fit the capacity 4/);
  });

  test("a sliding window keeps the last `window` keys up to the query", () => {
    const g = parse(`graph g {
  input %q: f32[1, 1, 3, 1]
  input %v: f32[1, 1, 3, 1]
  %0: f32[1, 1, 3, 1] = flash_attention(%q, %q, %v) {causal = true, kv_groups = 1, scale = 0, window = 2}
  output y = %0
}`);
    const out = run(g, { q: tensor("f32", [1, 1, 3, 1], [1, 2, 3]), v: tensor("f32", [1, 1, 3, 1], [10, 20, 40]) }, {});
    // scale 0: uniform over the visible keys: {0}, {0, 1}, {1, 2}
    expect(Array.from(out.y.data)).toEqual([10, 15, 30]);
  });
});

describe("padded and packed batches", () => {
  test("mask_positions counts real tokens (1 at padding); varlen_positions restarts at each sequence; varlen attention stays within its sequence", () => {
    const g = parse(`graph g {
  input %m: i64[2, 3]
  input %cu: i32[3]
  input %q: f32[1, 1, 3, 1]
  input %v: f32[1, 1, 3, 1]
  %0: f32[2, 3] = mask_positions(%m)
  %1: f32[1, 3] = varlen_positions(%cu) {length = 3}
  %2: f32[1, 1, 3, 1] = flash_attention(%q, %q, %v, %cu) {causal = false, kv_groups = 1, scale = 0, varlen = true}
  output p = %0
  output r = %1
  output a = %2
}`);
    for (const n of g.nodes) covered.add(n.op);
    const out = run(g, { m: tensor("i64", [2, 3], [0, 1, 1, 1, 0, 1]), cu: tensor("i32", [3], [0, 1, 3]), q: tensor("f32", [1, 1, 3, 1], [1, 2, 3]), v: tensor("f32", [1, 1, 3, 1], [10, 20, 40]) }, {});
    expect(Array.from(out.p.data)).toEqual([1, 0, 1, 0, 1, 1]);
    expect(Array.from(out.r.data)).toEqual([0, 0, 1]);
    // scale 0: uniform over the sequence: token 0 alone; tokens 1, 2 average 20 and 40
    expect(Array.from(out.a.data)).toEqual([10, 30, 30]);
  });
});

describe("fused norms", () => {
  test("rms_norm: x · rsqrt(mean(x²) + eps) · w per row; the normalized value rounds to x's dtype before w", () => {
    // row [3, 4]: mean of squares 12.5; row [1, 1]: 1, so y = w there
    const y = op1("rms_norm", [f([2, 2], [3, 4, 1, 1]), f([2], [1, 2])], { eps: 0 });
    const r = fr(1 / Math.sqrt(12.5));
    expect(vals(y)).toEqual([fr(3 * r), fr(fr(4 * r) * 2), 1, 2]);
    // eps counts: mean 0 + eps 0.25 → rsqrt 2
    expect(vals(op1("rms_norm", [f([1, 2], [0, 0.5]), f([2], [1, 1])], { eps: 0.25 }))).toEqual([0, fr(0.5 * fr(1 / Math.sqrt(0.375)))]);
    // bf16: the row [1, 1] normalizes to 1, so y = w
    expect(vals(op1("rms_norm", [t("bf16", [2], [1, 1]), t("bf16", [2], [3, 0.5])], { eps: 0 }))).toEqual([3, 0.5]);
  });

  test("layer_norm: (x − mean) · rsqrt(var + eps) · w + b per row", () => {
    // row [1, 3]: mean 2, centered [-1, 1], variance 1
    expect(vals(op1("layer_norm", [f([1, 2], [1, 3]), f([2], [2, 3]), f([2], [0.5, 0.5])], { eps: 0 }))).toEqual([-1.5, 3.5]);
    // a constant row with eps 0: 0 · rsqrt(0) = 0 · inf = NaN, as the eager graph gives
    expect(vals(op1("layer_norm", [t("bf16", [2, 2], [1, 3, 5, 5]), t("bf16", [2], [2, 3])], { eps: 0 }))).toEqual([-2, 3, NaN, NaN]);
    expect(() => op1("layer_norm", [f([1, 2], [1, 3]), f([3], [1, 1, 1])], { eps: 0 })).toThrow(/weight \[3\] must be \[2\]/);
  });
});

describe("elementwise (fused chains)", () => {
  test("evaluates its expression with broadcasting and per-node rounding", () => {
    const g = parse(`graph g {
  input %x: f32[2, 3]
  input %s: f32[2, 1]
  %0: bf16[2, 3] = elementwise(%x, %s) {expr = "(cast:bf16 (add:f32 (mul:f32 $0 $1) (full:f32 0.5)))"}
  %1: bool[2, 3] = elementwise(%0) {expr = "(greater:bool $0 (full:bf16 1))"}
  output y = %0
  output z = %1
}`);
    for (const n of g.nodes) covered.add(n.op);
    const out = run(g, { x: tensor("f32", [2, 3], [1, 2, 3, 1.00390625, -1, 0]), s: tensor("f32", [2, 1], [1, 1]) }, {});
    // 1.00390625 + 0.5 = 1.50390625 rounds to bf16 1.5 (8 significant bits)
    expect(Array.from(out.y.data)).toEqual([1.5, 2.5, 3.5, 1.5, -0.5, 0.5]);
    expect(Array.from(out.z.data)).toEqual([1, 1, 1, 1, 0, 0]);
  });
});

describe("the varlen KV cache (packed sequences, a cache row each)", () => {
  const graph = (slotType = "i32") => `graph t {
  input %cache: f32[2, 1, 4, 2]
  input %update: f32[1, 1, T, 2]
  input %q: f32[1, 2, T, 2]
  input %cu: i32[N+1]
  input %slot: ${slotType}[N]
  input %pos: i64[N]
  %0: f32[2, 1, 4, 2] = varlen_cache_write(%cache, %update, %cu, %slot, %pos)
  %1: f32[1, 2, T, 2] = varlen_cache_attention(%q, %0, %0, %cu, %slot, %pos) {kv_groups = 2, scale = 0.5, window = 2}
  %2: i64[T] = varlen_cache_positions(%cu, %pos) {length = T}
  output cache = %0
  output y = %1
  output at = %2
}
`;
  const feed = (cu: number[], slot: number[], pos: number[]) => {
    const T = cu[cu.length - 1];
    return {
      cache: tensor("f32", [2, 1, 4, 2], Array.from({ length: 16 }, (_v, i) => i)), update: tensor("f32", [1, 1, T, 2], Array.from({ length: 2 * T }, (_v, i) => -1 - i)),
      q: tensor("f32", [1, 2, T, 2], Array<number>(4 * T).fill(1)), cu: tensor("i32", [cu.length], cu), slot: tensor("i32", [slot.length], slot), pos: tensor("i64", [pos.length], pos),
    };
  };
  test("positions, writes into each sequence's row, attention over keys 0..position (window 2)", () => {
    // sequence 0: 1 token at position 3 of row 1; sequence 1: 2 tokens at positions 0, 1 of row 0
    const out = runText(graph(), feed([0, 1, 3], [1, 0], [3, 0]));
    expect(Array.from(out.at.data)).toEqual([3, 0, 1]);
    const c = Array.from(out.cache.data);
    expect(c.slice(0, 4)).toEqual([-3, -4, -5, -6]); // row 0, positions 0 and 1
    expect(c.slice(8 + 6, 16)).toEqual([-1, -2]); // row 1, position 3
    expect(c.slice(8, 14)).toEqual([8, 9, 10, 11, 12, 13]); // row 1 before it: untouched
    // query 1 (sequence 1, position 0) sees only its own key, for both query heads
    expect(Array.from(out.y.data.slice(2, 4))).toEqual([-3, -4]);
    expect(Array.from(out.y.data.slice(8, 10))).toEqual([-3, -4]);
  });
  test("shape rules and run-time checks name what is wrong", () => {
    expect(() => verify(parse(graph("i64")))).toThrow(/cache_slot must be i32 \[N\]/);
    expect(() => verify(parse(graph().replace("[1, 1, T, 2]", "[2, 1, T, 2]")))).toThrow(/a packed \[1, H, T, D\] update/);
    const g = parse(graph());
    expect(() => run(g, feed([0, 1, 2], [1, 1], [0, 0]), {})).toThrow(/cache slot 1 is given to two sequences/);
    expect(() => run(g, feed([0, 2], [0], [3]), {})).toThrow(/sequence 0: 2 tokens at position 3 do not fit the cache's capacity 4/);
    expect(() => run(g, feed([0, 1], [2], [0]), {})).toThrow(/cache slot 2 is not in \[0, 2\)/);
  });
});

describe("coverage", () => {
  test("every op in OPS has a reference rule and a hand-computed case in this file", () => {
    for (const [name, d] of OPS) {
      expect(typeof d.eval).toBe("function");
      expect(typeof d.infer).toBe("function");
      expect([name, covered.has(name)]).toEqual([name, true]);
    }
  });
});
