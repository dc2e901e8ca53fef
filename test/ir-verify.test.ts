// The verifier: one malformed graph for each of its rules. Every error is E_VERIFY; errors
// about a node name the op and its operands' types, and the model source location when the
// node has one.

import { describe, expect, test } from "@jest/globals";
import type { DType, Graph, Loc, TensorType, Value } from "../compiler/ir/index.js";
import { GraphBuilder, KilnError, parse, verify } from "../compiler/ir/index.js";

const f32 = (...shape: (number | string)[]): TensorType => ({ dtype: "f32", shape });

function verifyError(g: Graph): KilnError {
  try {
    verify(g);
  } catch (e) {
    expect(e).toBeInstanceOf(KilnError);
    expect((e as KilnError).code).toBe("E_VERIFY");
    return e as KilnError;
  }
  throw new Error("the graph verified");
}

/** A graph with inputs x: f32[2, 3] and y: f32[3, 4] and one node, output. */
function oneNode(op: string, operands: (b: GraphBuilder, x: Value, y: Value) => Value[], attrs: Record<string, unknown>, result: TensorType, loc?: Loc): Graph {
  const b = new GraphBuilder("g");
  const x = b.input("x", f32(2, 3));
  const y = b.input("y", f32(3, 4));
  const v = b.node(op, operands(b, x, y), attrs as never, result, loc);
  b.output("out", v);
  return b.graph;
}

describe("values", () => {
  test("an unknown dtype", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", { dtype: "f64" as DType, shape: [2] });
    b.output("y", x);
    expect(verifyError(b.graph).message).toBe("input 'x' has unknown dtype 'f64'");
  });

  test("a negative or fractional dim", () => {
    const b = new GraphBuilder("g");
    b.input("x", f32(2, -1));
    b.output("y", b.graph.inputs[0]);
    expect(verifyError(b.graph).message).toBe("input 'x' has type f32[2, -1]: dim -1 is not a non-negative integer");
    const c = new GraphBuilder("g");
    const x = c.input("x", f32(2));
    c.param("w", f32(1.5));
    c.output("y", x);
    expect(verifyError(c.graph).message).toBe("param 'w' has type f32[1.5]: dim 1.5 is not a non-negative integer");
  });

  test("a bad name", () => {
    for (const [name, ok] of [["12", false], ["a-b", false], ["", false], ["has space", false], ["0h", true], ["model.layers.0.w", true]] as const) {
      const b = new GraphBuilder("g");
      const x = b.input(name, f32(2));
      b.output("y", x);
      if (ok) verify(b.graph);
      else expect(verifyError(b.graph).message).toBe(`input name '${name}' must be letters, digits, '_' and '.', and not only digits`);
    }
  });

  test("a name used twice", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", f32(2));
    b.param("x", f32(2));
    b.output("y", x);
    expect(verifyError(b.graph).message).toBe("param name 'x' is used twice");
  });

  test("a value defined twice", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", f32(2));
    b.graph.params.push({ ...x, kind: "param", name: "w" }); // same id as x
    b.output("y", x);
    expect(verifyError(b.graph).message).toBe("param 'w' is defined twice");
    // one value as the result of two nodes
    const c = new GraphBuilder("g");
    const z = c.input("x", f32(2));
    const r = c.node("neg", [z], {}, f32(2));
    c.graph.nodes.push({ op: "abs", operands: [z], attrs: {}, result: r });
    c.output("y", r);
    expect(verifyError(c.graph).message).toBe(`result '${r.id}' is defined twice`);
  });

  test("a symbol no input binds", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", f32("B", 4));
    b.param("w", f32("H", 4));
    b.output("y", x);
    expect(verifyError(b.graph).message).toBe("param 'w' uses symbolic dim 'H', which no input's shape defines");
    // a compound dim does not bind its symbols, except X + c (cu_seqlens [B+1])
    const c = new GraphBuilder("g");
    c.output("y", c.input("x", f32("2*S+1")));
    expect(verifyError(c.graph).message).toBe("input 'x' uses symbolic dim 'S', which no input's shape defines");
    const c2 = new GraphBuilder("g");
    c2.output("y", c2.input("x", f32("S+1")));
    expect(() => verify(c2.graph)).not.toThrow();
    // nor may a node's result introduce one
    const d = new GraphBuilder("g");
    d.input("x", f32("B"));
    d.output("y", d.node("full", [], { value: 0, shape: ["B", "Q"], dtype: "f32" }, f32("B", "Q")));
    expect(verifyError(d.graph).message).toBe("op 'full' (%0 = full()) uses symbolic dim 'Q', which no input's shape defines");
  });
});

describe("nodes", () => {
  test("an unknown op", () => {
    const e = verifyError(oneNode("frobnicate", (_b, x) => [x], {}, f32(2, 3)));
    expect(e.message).toBe("op 'frobnicate' (%0 = frobnicate(%x: f32[2, 3])): unknown op");
  });

  test("the wrong number of operands", () => {
    expect(verifyError(oneNode("neg", (_b, x, y) => [x, y], {}, f32(2, 3))).message).toBe(
      "op 'neg' (%0 = neg(%x: f32[2, 3], %y: f32[3, 4])): takes 1 operands, got 2",
    );
    expect(verifyError(oneNode("linear", (_b, x) => [x], {}, f32(2, 3))).message).toMatch(/^op 'linear' .*: takes 2 to 4 operands, got 1$/);
    expect(verifyError(oneNode("concat", () => [], { axis: 0 }, f32(0))).message).toMatch(/^op 'concat' \(%0 = concat\(\)\): takes 1 to Infinity operands, got 0$/);
  });

  test("a value used before it is defined", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", f32(2));
    const later = b.newValue("op", f32(2));
    const v = b.node("add", [x, later], {}, f32(2));
    b.graph.nodes.push({ op: "neg", operands: [x], attrs: {}, result: later });
    b.output("y", v);
    expect(verifyError(b.graph).message).toMatch(/^op 'add' \(%0 = add\(%x: f32\[2\], %1: f32\[2\]\)\): operand 1 is used before it is defined$/);
    // a value of another graph
    const other = new GraphBuilder("h").input("z", f32(2));
    const c = new GraphBuilder("g");
    const cx = c.input("x", f32(2));
    c.output("y", c.node("add", [cx, { ...other, id: 99 }], {}, f32(2)));
    expect(verifyError(c.graph).message).toBe("op 'add' (%0 = add(%x: f32[2], %z: f32[2])): operand 1 is used before it is defined");
  });

  test("a missing attribute", () => {
    expect(verifyError(oneNode("softmax", (_b, x) => [x], {}, f32(2, 3))).message).toBe(
      "op 'softmax' (%0 = softmax(%x: f32[2, 3])): missing attribute 'axis' (int)",
    );
  });

  test("an attribute of the wrong kind", () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ["softmax", { axis: 1.5 }, "attribute 'axis' must be int, got 1.5"],
      ["reduce_sum", { axis: 0, keepdim: 1 }, "attribute 'keepdim' must be bool, got 1"],
      ["cast", { to: "f64" }, `attribute 'to' must be dtype, got "f64"`],
      ["reshape", { shape: ["S**2"] }, `attribute 'shape' must be dims, got ["S**2"]`],
      ["transpose", { perm: [1, 0.5] }, "attribute 'perm' must be ints, got [1,0.5]"],
      ["slice", { axis: 0, start: "1+", end: 2 }, `attribute 'start' must be dim, got "1+"`],
    ];
    for (const [op, attrs, msg] of cases) expect(verifyError(oneNode(op, (_b, x) => [x], attrs, f32(2, 3))).message).toBe(`op '${op}' (%0 = ${op}(%x: f32[2, 3])): ${msg}`);
    const full = verifyError(oneNode("full", () => [], { value: "1", shape: [2], dtype: "f32" }, f32(2)));
    expect(full.message).toBe(`op 'full' (%0 = full()): attribute 'value' must be float, got "1"`);
  });

  test("an unknown attribute", () => {
    expect(verifyError(oneNode("exp", (_b, x) => [x], { axis: 0 }, f32(2, 3))).message).toBe("op 'exp' (%0 = exp(%x: f32[2, 3])): unknown attribute 'axis'");
  });

  test("the declared result type is not what the op gives", () => {
    expect(verifyError(oneNode("exp", (_b, x) => [x], {}, { dtype: "f16", shape: [2, 3] })).message).toBe(
      "op 'exp' (%0 = exp(%x: f32[2, 3])): result is declared f16[2, 3] but the op gives f32[2, 3]",
    );
    expect(verifyError(oneNode("matmul", (_b, x, y) => [x, y], {}, f32(2, 3))).message).toBe(
      "op 'matmul' (%0 = matmul(%x: f32[2, 3], %y: f32[3, 4])): result is declared f32[2, 3] but the op gives f32[2, 4]",
    );
  });

  test("a result type no tensor can have", () => {
    expect(verifyError(oneNode("constant", () => [], { values: [1], shape: [-1, -1], dtype: "f32" }, f32(-1, -1))).message).toBe(
      "op 'constant' (%0 = constant()): result type f32[-1, -1] has dim -1, which is not a non-negative integer",
    );
  });

  test("errors name the model source location", () => {
    const loc = { file: "models/llama.ts", line: 42, col: 13 };
    const e = verifyError(oneNode("matmul", (_b, x) => [x, x], {}, f32(2, 3), loc));
    expect(e.where).toBe("models/llama.ts:42:13");
    expect(e.message).toBe(
      "models/llama.ts:42:13: op 'matmul' (%0 = matmul(%x: f32[2, 3], %x: f32[2, 3]) at models/llama.ts:42:13): contraction dims differ: [2, 3] · [2, 3] (3 vs 2)",
    );
    // the same through the text form
    const g = parse(`graph g {
  input %x: f32[B, 4]
  %0: f32[B, 4] = softmax(%x) {axis = 2} loc("m.ts":3:7)
  output y = %0
}
`);
    expect(verifyError(g).message).toBe("m.ts:3:7: op 'softmax' (%0 = softmax(%x: f32[B, 4]) at m.ts:3:7): axis 2 is out of range for rank 2");
  });
});

describe("shape rules", () => {
  // [op, operand types, attrs, declared result, expected message after the node description]
  const cases: [string, TensorType[], Record<string, unknown>, TensorType, string][] = [
    ["add", [f32(2, 3), f32(4)], {}, f32(2, 3), "shapes [2, 3] and [4] do not broadcast (dim 1: 3 vs 4)"],
    ["mul", [f32("B", 3), f32("S", 3)], {}, f32("B", 3), "shapes [B, 3] and [S, 3] do not broadcast (dim 0: B vs S)"],
    ["sub", [f32(2), { dtype: "f16", shape: [2] }], {}, f32(2), "dtypes differ: f32, f16"],
    ["matmul", [f32(2, 3), f32(4, 5)], {}, f32(2, 5), "contraction dims differ: [2, 3] · [4, 5] (3 vs 4)"],
    ["matmul", [f32(2, 2, 3), f32(3, 3, 4)], {}, f32(2, 2, 4), "shapes [2] and [3] do not broadcast (dim 0: 2 vs 3)"],
    ["matmul", [f32(3), f32(3, 4)], {}, f32(4), "matmul needs rank >= 2 operands, got [3] and [3, 4]"],
    ["linear", [f32("B", 3), f32(4, 5)], {}, f32("B", 4), "linear input [B, 3] does not end in the weight's in_features 5 (weight [4, 5])"],
    ["linear", [f32(2, 3), f32(4, 3), f32(3)], {}, f32(2, 4), "linear bias [3] must be [4]"],
    ["linear", [f32(2, 3), f32(4, 3), f32(4)], { residual: true }, f32(2, 4), "linear residual [4] must have the result's shape [2, 4] (it is not broadcast)"],
    ["linear", [f32(2, 3), f32(4, 3), f32(4), f32(1, 4)], { residual: true }, f32(2, 4), "linear residual [1, 4] must have the result's shape [2, 4] (it is not broadcast)"],
    ["linear", [f32(2, 3), f32(4, 3), { dtype: "f16", shape: [2, 4] }], { residual: true }, f32(2, 4), "dtypes differ: f32, f32, f16"],
    ["linear", [f32(2, 3), f32(4, 3), f32(4), f32(2, 4)], {}, f32(2, 4), "linear takes x, w, an optional bias: got 4 operands"],
    ["linear", [f32(2, 3), f32(2, 4)], { residual: true }, f32(2, 4), "linear takes x, w, an optional bias and the residual: got 2 operands"],
    ["qlinear", [f32(2, 3), f32(4, 3), f32(2, 3)], { scheme: "int8", block: 64, double_quant: false, threshold: 6, residual: true }, f32(2, 4), "linear residual [2, 3] must have the result's shape [2, 4] (it is not broadcast)"],
    ["exp", [{ dtype: "i32", shape: [2] }], {}, { dtype: "i32", shape: [2] }, "needs a float operand, got i32"],
    ["where", [f32(2), f32(2), f32(2)], {}, f32(2), "condition must be bool, got f32"],
    ["softmax", [f32(2, 3)], { axis: -3 }, f32(2, 3), "axis -3 is out of range for rank 2"],
    ["reduce_max", [f32(2, 3)], { axis: 2, keepdim: true }, f32(2, 1), "axis 2 is out of range for rank 2"],
    ["argmax", [f32("B", 3)], { axis: 0 }, { dtype: "i64", shape: [3] }, "argmax reduces the last axis only (axis -1 or 1), got axis 0"],
    ["argmax", [{ dtype: "i64", shape: [2, 3] }], { axis: -1 }, { dtype: "i64", shape: [2] }, "needs a float operand, got i64"],
    ["argmax", [f32(2, 3)], { axis: -1 }, f32(2), "result is declared f32[2] but the op gives i64[2]"],
    ["reshape", [f32("B", 6)], { shape: ["B", 4] }, f32("B", 4), "cannot reshape [B, 6] to [B, 4]: element counts differ"],
    ["transpose", [f32(2, 3)], { perm: [0, 0] }, f32(2, 2), "perm [0, 0] is not a permutation of 2 axes"],
    ["expand", [f32(2, 3)], { shape: [4, 3] }, f32(4, 3), "cannot expand [2, 3] to [4, 3] (dim 0)"],
    ["expand", [f32(2, 3)], { shape: [3] }, f32(3), "cannot expand [2, 3] to fewer dims [3]"],
    ["slice", [f32(2, 3)], { axis: 1, start: 0, end: 4 }, f32(2, 4), "slice end 4 is past dim 1 of [2, 3]"],
    ["slice", [f32(2, 3)], { axis: 1, start: 2, end: 1 }, f32(2, -1), "slice [2, 1) is empty-reversed"],
    ["concat", [f32(2, 3), f32(3, 3)], { axis: 1 }, f32(2, 6), "cannot concat [2, 3], [3, 3] along axis 1"],
    ["gather", [f32(4, 3), f32(2)], { axis: 0 }, f32(2, 3), "gather indices must be integers, got f32"],
    ["constant", [], { values: [1, 2, 3], shape: [2, 2], dtype: "f32" }, f32(2, 2), "3 values for shape [2, 2]"],
    ["arange", [], { start: 4, end: 2, dtype: "i32" }, { dtype: "i32", shape: [-2] }, "arange end 2 is before start 4"],
  ];
  test.each(cases)("%s %#", (op, types, attrs, result, msg) => {
    const g = new GraphBuilder("g");
    const operands = types.map((t, i) => g.input(`x${i}`, t));
    if (!operands.length) g.input("x", f32("B", "S")); // binds B, S for ops without operands
    g.output("out", g.node(op, operands, attrs as never, result));
    const e = verifyError(g.graph);
    const described = `op '${op}' (%0 = ${op}(${operands.map((v) => `%${v.name}: ${v.dtype}[${v.shape.join(", ")}]`).join(", ")}))`;
    expect(e.message).toBe(`${described}: ${msg}`);
  });
});

describe("outputs", () => {
  test("an output name used twice", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", f32(2));
    b.output("y", x);
    b.output("y", x);
    expect(verifyError(b.graph).message).toBe("output name 'y' is used twice");
  });

  test("an output of a value the graph does not define", () => {
    const b = new GraphBuilder("g");
    b.input("x", f32(2));
    b.output("y", b.newValue("op", f32(2)));
    expect(verifyError(b.graph).message).toBe("output 'y' refers to a value that is not defined");
  });

  test("no outputs", () => {
    const b = new GraphBuilder("empty");
    b.input("x", f32(2));
    expect(verifyError(b.graph).message).toBe("graph 'empty' has no outputs");
  });

  test("a well-formed graph verifies", () => {
    verify(
      parse(`graph g {
  input %x: f32[B, S, 4]
  param %w: f32[8, 4]
  %0: f32[B, S, 8] = linear(%x, %w)
  %1: f32[B*S, 8] = reshape(%0) {shape = [B*S, 8]}
  output y = %1
}
`),
    );
  });
});
