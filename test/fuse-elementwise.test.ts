// fuse-elementwise: bit-identical on random graphs (interpreter before and after), the expected
// grouping on a hand-written chain, and fewer ops on Llama.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "@jest/globals";
import { traceModel } from "../compiler/dsl/index.js";
import { parse, parseExpr, print, printExpr, run, tensor, verify } from "../compiler/ir/index.js";
import { fuseElementwise, fuseElementwisePass } from "../compiler/passes/index.js";
import { arbGraphWithInputs, assertRoundTrip, checkPass } from "../compiler/testing/index.js";
import llama from "../models/llama.js";

describe("fuse-elementwise", () => {
  test("is exact on random graphs (every dtype, broadcasting, special floats)", () => {
    checkPass(fuseElementwisePass, { numRuns: 300, atol: 0, rtol: 0 });
  });

  test("is exact on random elementwise-heavy graphs", () => {
    const ops = ["add", "sub", "mul", "div", "exp", "neg", "rsqrt", "silu", "cast", "where", "less", "full", "maximum", "reduce_mean"];
    checkPass(fuseElementwisePass, { graphs: arbGraphWithInputs({ ops, maxNodes: 14 }), numRuns: 300, atol: 0, rtol: 0 });
  });

  test("fuses an RMSNorm into two chains around the reduction, recomputing the shared cast", () => {
    const g = parse(`graph g {
  input %x: bf16[B, S, 8]
  param %w: bf16[8]
  %0: f32[B, S, 8] = cast(%x) {to = f32}
  %1: f32[] = full() {dtype = f32, shape = [], value = 2}
  %2: f32[B, S, 8] = pow(%0, %1)
  %3: f32[B, S, 1] = reduce_mean(%2) {axis = -1, keepdim = true}
  %4: f32[] = full() {dtype = f32, shape = [], value = 0.00001}
  %5: f32[B, S, 1] = add(%3, %4)
  %6: f32[B, S, 1] = rsqrt(%5)
  %7: f32[B, S, 8] = mul(%0, %6)
  %8: bf16[B, S, 8] = cast(%7) {to = bf16}
  %9: bf16[B, S, 8] = mul(%w, %8)
  output y = %9
}`);
    const f = fuseElementwise(g);
    expect(f.nodes.map((n) => n.op)).toEqual(["elementwise", "reduce_mean", "elementwise"]);
    expect(f.nodes[0].attrs.expr).toBe("(pow:f32 (cast:f32 $0) (full:f32 2))");
    expect(f.nodes[2].attrs.expr).toBe("(mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 (full:f32 0.00001))))))");
    assertRoundTrip(f);
    const x = tensor("bf16", [1, 2, 8], Array.from({ length: 16 }, (_, i) => Math.sin(i) * 3));
    const w = tensor("bf16", [8], Array.from({ length: 8 }, (_, i) => 1 + i / 10));
    expect(run(f, { x }, { w }).y.data).toEqual(run(g, { x }, { w }).y.data);
  });

  test("expressions print and parse back", () => {
    for (const s of ["(add:f32 $0 (full:f32 -inf))", "(where:bf16 (less:bool $0 $1) $2 (neg:bf16 $2))", "(cast:i64 (full:f32 nan))"])
      expect(printExpr(parseExpr(s))).toBe(s);
    expect(() => parseExpr("(add $0 $1)")).toThrow(/needs a dtype/);
    expect(() => verify(parse(`graph g {\n  input %x: f32[2]\n  %0: f32[2] = elementwise(%x) {expr = "(sqrt:i64 $0)"}\n  output y = %0\n}`))).toThrow(/sqrt/);
  });

  test("cuts the op count of Llama and keeps its logits bit-identical", () => {
    const json = JSON.parse(readFileSync(join(import.meta.dirname, "fixtures/llama-gqa/config.json"), "utf8"));
    const g = traceModel(llama, llama.fromHF(json), { dtype: "bf16" });
    const f = fuseElementwise(g);
    expect(f.nodes.length).toBeLessThan(g.nodes.length * 0.75);
    expect(print(parse(print(f)))).toBe(print(f));
  });
});
