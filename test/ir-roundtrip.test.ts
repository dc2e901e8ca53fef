// The text form prints and parses losslessly: print(parse(print(g))) === print(g) for random
// graphs; the JSON form agrees; malformed text gives line:col and what was expected.

import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { Graph } from "../compiler/ir/index.js";
import { GraphBuilder, KilnError, OPS, parse, print, toJSON, verify } from "../compiler/ir/index.js";
import { arbGraph, assertRoundTrip, GRAPH_OPS } from "../compiler/testing/index.js";

const parseError = (text: string): string => {
  try {
    parse(text);
  } catch (e) {
    expect(e).toBeInstanceOf(KilnError);
    expect((e as KilnError).code).toBe("E_PARSE");
    return (e as KilnError).message;
  }
  throw new Error(`parsed without error:\n${text}`);
};

describe("text form round trip", () => {
  test("print(parse(print(g))) === print(g) for random graphs", () => {
    fc.assert(
      fc.property(arbGraph(), (g) => {
        verify(g); // the generator only makes valid graphs
        const text = assertRoundTrip(g);
        verify(parse(text)); // and what is read back is valid too
      }),
      { numRuns: 300, seed: 20261125 },
    );
  });

  test("the JSON form of the re-read graph equals the original's", () => {
    fc.assert(
      fc.property(arbGraph({ maxNodes: 8 }), (g) => {
        expect(toJSON(parse(print(g)))).toEqual(toJSON(g));
      }),
      { numRuns: 100, seed: 7 },
    );
  });

  test("the generator reaches every op, and every attribute kind is printed", () => {
    expect([...OPS.keys()].filter((op) => !GRAPH_OPS.includes(op))).toEqual([]);
    const seen = new Set<string>();
    const kinds = new Set<string>();
    for (const g of fc.sample(arbGraph(), { numRuns: 400, seed: 3 }))
      for (const n of g.nodes) {
        seen.add(n.op);
        for (const k of Object.keys(n.attrs)) kinds.add(OPS.get(n.op)!.attrs[k].kind);
      }
    expect([...OPS.keys()].filter((op) => !seen.has(op))).toEqual([]);
    expect([...kinds].sort()).toEqual(["bool", "dim", "dims", "dtype", "float", "floats", "int", "ints", "string"]);
  });

  test("special floats, compound dims, quoted names and locations read back exactly", () => {
    const text = `graph "my model" {
  input %input_ids: i64[B, S]
  input %x.0: f32[B, S, 4]
  param %model.layers.0.self_attn.q_proj.weight: f32[4, 4]
  %0: f32[B*S, 4] = reshape(%x.0) {shape = [B*S, 4]}
  %1: f32[] = full() {dtype = f32, shape = [], value = -0}
  %2: f32[2, 3] = constant() {dtype = f32, shape = [2, 3], values = [nan, inf, -inf, -0, 1e-7, -3.5e+38]}
  %3: f32[B, S+1, 4] = concat(%x.0, %4) {axis = 1}
  output logits = %0
}
`;
    // %4 is used before it is defined: the parser rejects it
    expect(parseError(text)).toMatch(/^8:37: %4 is not defined \(before this use\)$/);
    const ok = `graph "my model" {
  input %input_ids: i64[B, S]
  input %x.0: f32[B, S, 4]
  %0: f32[B*S, 4] = reshape(%x.0) {shape = [B*S, 4]} loc("we\\"ird \\\\ path.ts":12:3)
  %1: f32[] = full() {dtype = f32, shape = [], value = -0}
  %2: f32[2, 3] = constant() {dtype = f32, shape = [2, 3], values = [nan, inf, -inf, -0, 1e-7, -3.5e+38]}
  %3: f32[B, S-1, 4] = slice(%x.0) {axis = -2, end = S, start = 1}
  %4: f32[B, 2*S-1, 4] = concat(%x.0, %3) {axis = 1}
  output "output" = %4
  output "my out" = %2
  output nan_ = %1
}
`;
    const g = parse(ok);
    verify(g);
    expect(print(g)).toBe(ok);
    expect(Object.is(g.nodes[1].attrs.value, -0)).toBe(true);
    expect(g.nodes[2].attrs.values).toEqual([NaN, Infinity, -Infinity, -0, 1e-7, -3.5e38]);
    expect(g.nodes[0].loc).toEqual({ file: 'we"ird \\ path.ts', line: 12, col: 3 });
  });

  test("names spelled like keywords are quoted, so they read back", () => {
    const b = new GraphBuilder("graph");
    const x = b.input("x", { dtype: "f32", shape: [2] });
    for (const name of ["graph", "input", "param", "output", "loc", "true", "false", "inf", "nan"]) b.output(name, x);
    assertRoundTrip(b.graph);
    expect(print(b.graph)).toContain('output "inf" = %x');
  });

  test("string attributes (no op has one yet) are quoted and escaped", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", { dtype: "f32", shape: [2] });
    b.node("custom_op", [x], { note: 'a "quoted" \\ line\nbreak', list: ["x", "y"] }, { dtype: "f32", shape: [2] });
    b.output("y", x);
    const g: Graph = parse(assertRoundTrip(b.graph));
    expect(g.nodes[0].attrs).toEqual({ note: 'a "quoted" \\ line\nbreak', list: ["x", "y"] });
  });
});

describe("parse errors give line:col and what was expected", () => {
  test("a missing bracket", () => {
    expect(parseError("graph g {\n  input %x: f32[2, 3\n}\n")).toBe("3:1: Expecting token of type --> RBrack <-- but found --> '}' <--");
  });

  test("an unknown dtype", () => {
    expect(parseError("graph g {\n  input %x: f33[2]\n  output y = %x\n}\n")).toBe(
      "2:13: unknown dtype 'f33' (expected one of f32, f16, bf16, i64, i32, i8, u8, bool)",
    );
  });

  test("an undefined value", () => {
    expect(parseError("graph g {\n  input %x: f32[2]\n  %0: f32[2] = add(%x, %y)\n  output y = %0\n}\n")).toBe(
      "3:24: %y is not defined (before this use)",
    );
  });

  test("an unexpected character", () => {
    expect(parseError("graph g {\n  input %x: f32[2] $\n}\n")).toBe("2:20: unexpected character '$'");
  });

  test("an op result that is not numbered", () => {
    expect(parseError("graph g {\n  input %x: f32[2]\n  %y: f32[2] = neg(%x)\n  output y = %y\n}\n")).toBe(
      "3:3: op results are numbered (%0, %1, ...), got %y",
    );
  });

  test("a value defined twice, an attribute given twice", () => {
    expect(parseError("graph g {\n  input %x: f32[2]\n  param %x: f32[2]\n  output y = %x\n}\n")).toBe("3:9: %x is defined twice");
    expect(parseError("graph g {\n  input %x: f32[2]\n  %0: f32[2] = softmax(%x) {axis = 0, axis = 1}\n  output y = %0\n}\n")).toBe(
      "3:39: attribute 'axis' is given twice",
    );
  });

  test("a missing '=' in the attributes", () => {
    expect(parseError("graph g {\n  %0: f32[2] = neg(%x) {axis 0}\n}")).toBe("2:30: Expecting token of type --> Eq <-- but found --> '0' <--");
  });

  test("a truncated text", () => {
    expect(parseError("graph g {\n  input %x: f32[2]\n")).toMatch(/^end of input: Expecting/);
  });

  test("a negative dim in a type", () => {
    expect(parseError("graph g {\n  input %x: f32[-2]\n  output y = %x\n}\n")).toBe("2:13: dim -2 is not a non-negative integer");
  });
});
