// fuse-norm: bit-identical on random eager RMSNorm / LayerNorm graphs (interpreter before and after,
// every float dtype, symbolic shapes, eps from 0 up, operand orders, extra readers of the input
// cast), the fused ops on every family's traced graph with the same outputs bit for bit, golden IR
// on the Llama fixture, and the cases it must leave alone (saying why).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { Arbitrary } from "fast-check";
import { traceModel } from "../compiler/dsl/index.js";
import type { Dim, DType, Graph, Value } from "../compiler/ir/index.js";
import { GraphBuilder, inferNode, parse, print, run } from "../compiler/ir/index.js";
import { createContext, fuseNorm, fuseNormPass, messagesOf, parsePipeline, runPipeline } from "../compiler/passes/index.js";
import type { GraphCase } from "../compiler/testing/index.js";
import { arbCase, assertRoundTrip, checkPass } from "../compiler/testing/index.js";
import { modelFor } from "../models/index.js";
import { openCheckpoint, SafetensorsFile, toInterpreterTensor } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";

interface Recipe {
  layer: boolean;
  dtype: DType;
  shape: Dim[];
  eps: number;
  /** the weight as mul's first operand; pow(h, 2) or h·h; a bias (layer); the input cast read elsewhere too */
  weightFirst: boolean;
  square: "pow" | "mul";
  bias: boolean;
  castShared: boolean;
  /** two norms, the second on the first's result (BLOOM's embedding norm feeds block 0's) */
  chained: boolean;
}

/** The eager form compiler/dsl/layers.ts traces, node by node, with the variants a model may trace. */
function eagerGraph(r: Recipe): Graph {
  const b = new GraphBuilder("norm");
  const node = (op: string, operands: Value[], attrs: Record<string, number | boolean | string | Dim[]> = {}): Value =>
    b.node(op, operands, attrs, inferNode({ op, operands, attrs }));
  const full = (value: number): Value => node("full", [], { value, shape: [], dtype: "f32" });
  const mean = (v: Value): Value => node("reduce_mean", [v], { axis: -1, keepdim: true });
  const x0 = b.input("x", { dtype: r.dtype, shape: r.shape });
  const D = r.shape[r.shape.length - 1];
  let k = 0;
  const norm = (x: Value): Value => {
    const w = b.param(`n${k}.weight`, { dtype: r.dtype, shape: [D] });
    const bias = r.layer && r.bias ? b.param(`n${k}.bias`, { dtype: r.dtype, shape: [D] }) : undefined;
    k++;
    const h = r.dtype === "f32" ? x : node("cast", [x], { to: "f32" });
    const c = r.layer ? node("sub", [h, mean(h)]) : h;
    const sq = r.square === "pow" ? node("pow", [c, full(2)]) : node("mul", [c, c]);
    const inv = node("rsqrt", [node("add", [mean(sq), full(r.eps)])]);
    const n = node("mul", [c, inv]);
    const back = r.dtype === "f32" ? n : node("cast", [n], { to: r.dtype });
    const y = node("mul", r.weightFirst ? [w, back] : [back, w]);
    const out = bias ? node("add", [y, bias]) : y;
    if (r.castShared && h !== x) b.output(`h${k}`, node("exp", [h]));
    return out;
  };
  const y = norm(x0);
  b.output("y", r.chained ? norm(y) : y);
  return b.graph;
}

const arbRecipe: Arbitrary<Recipe> = fc.record({
  layer: fc.boolean(),
  dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
  shape: fc.tuple(fc.constantFrom<Dim[]>([], ["B"], ["B", "S"], [2, "S"]), fc.integer({ min: 1, max: 9 })).map(([lead, d]) => [...lead, d]),
  eps: fc.constantFrom(1e-5, 1e-6, 1e-12, 0, 0.5, 3),
  weightFirst: fc.boolean(),
  square: fc.constantFrom<"pow" | "mul">("pow", "mul"),
  bias: fc.boolean(),
  castShared: fc.boolean(),
  chained: fc.boolean(),
});
const arbNormCase: Arbitrary<GraphCase> = arbRecipe.chain((r) => arbCase(eagerGraph(r), { B: [1, 3], S: [1, 4] }));

const ops = (g: Graph): string[] => g.nodes.map((n) => n.op);

describe("fuse-norm", () => {
  test("is exact on random eager norms (every float dtype, eps, operand order, bias, shared casts, chains)", () => {
    checkPass(fuseNormPass, { graphs: arbNormCase, numRuns: 300, atol: 0, rtol: 0 });
  });

  test("fuses every random eager norm into one op each, leaving only what something else reads", () => {
    fc.assert(
      fc.property(arbRecipe, (r) => {
        const g = eagerGraph(r);
        const f = fuseNorm(g);
        const name = r.layer ? "layer_norm" : "rms_norm";
        const fused = f.nodes.filter((n) => n.op === name);
        expect(fused.length).toBe(r.chained ? 2 : 1);
        expect(fused.every((n) => n.operands.length === (r.layer && r.bias ? 3 : 2) && n.attrs.eps === r.eps)).toBe(true);
        // the input cast survives exactly where the extra reader needs it
        const rest = ops(f).filter((o) => o !== name);
        expect(rest).toEqual(r.castShared && r.dtype !== "f32" ? (r.chained ? ["cast", "exp", "cast", "exp"] : ["cast", "exp"]) : []);
        assertRoundTrip(f);
      }),
      { numRuns: 200 },
    );
  });

  test("is exact on random graphs that hold no norm (and leaves them alone)", () => {
    checkPass(fuseNormPass, { numRuns: 100, atol: 0, rtol: 0 });
  });

  const FIXTURES = join(import.meta.dirname, "fixtures");
  const json = (name: string) => JSON.parse(readFileSync(join(FIXTURES, name, "config.json"), "utf8")) as Record<string, unknown>;

  test("golden IR: Llama's RMSNorms become rms_norm ops, nothing of the eager form left", () => {
    const cfg = json("llama-gqa");
    const def = modelFor(cfg);
    const g = traceModel(def, def.fromHF(cfg), { dtype: "bf16" });
    const ctx = createContext();
    const f = runPipeline(g, parsePipeline("cse,fuse-norm,dce"), { context: ctx });
    const text = print(f);
    expect(text).toContain('%13: bf16[B, S, 64] = rms_norm(%0, %model.layers.0.input_layernorm.weight) {eps = 0.000001} loc("models/llama.ts":90:59)');
    expect(text.match(/= rms_norm\(/g)?.length).toBe(5); // 2 layers × 2, and the final norm
    expect(text).toMatch(/= rms_norm\(%\d+, %model\.norm\.weight\) \{eps = 0\.000001\} loc\("models\/llama\.ts":111:22\)/);
    expect(text).not.toMatch(/= (pow|reduce_mean|rsqrt)\(/);
    expect(messagesOf(ctx, "fuse-norm")).toContain("rms_norm at models/llama.ts:90:59: fused (eps 0.000001, bf16[B, S, 64])");
    expect(print(parse(text))).toBe(text);
  });

  // every family, f32 and bf16, on its checkpoint's weights: the same logits bit for bit
  const FAMILIES: [string, number][] = [["llama-gqa", 5], ["opt", 5], ["opt-350m", 4], ["bloom", 6], ["falcon-mqa", 3], ["falcon-new-arch", 5], ["falcon-alibi", 5]];
  test.each(FAMILIES.flatMap(([name, n]) => (["f32", "bf16"] as const).map((d) => [name, d, n] as const)))("%s (%s): %d norms fused, logits bit-identical", (name, dtype, n) => {
    const cfg = json(name);
    const def = modelFor(cfg);
    const root = join(FIXTURES, name);
    const g = runPipeline(traceModel(def, def.fromHF(cfg), { dtype }), parsePipeline("cse"));
    const f = runPipeline(g, parsePipeline("fuse-norm,dce"));
    expect(f.nodes.filter((x) => x.op === "rms_norm" || x.op === "layer_norm").length).toBe(n);
    expect(ops(f)).not.toContain("reduce_mean");
    const { weights } = bindWeights(g.params, openCheckpoint(root), { where: root }); // rounded to the graph's dtype
    const ref = SafetensorsFile.open(join(root, "reference.safetensors"));
    const inputs = { input_ids: toInterpreterTensor(ref, "input_ids") };
    const before = run(g, inputs, weights), after = run(f, inputs, weights);
    expect(Object.keys(after)).toEqual(Object.keys(before));
    for (const k of Object.keys(before)) expect(Array.from(after[k].data)).toEqual(Array.from(before[k].data));
  });

  test("leaves alone, saying why: a norm over another axis, an intermediate that is an output, a weight of another shape", () => {
    const explainOf = (text: string): { g: Graph; f: Graph; why: string[] } => {
      const g = parse(text);
      const ctx = createContext();
      const f = runPipeline(g, [fuseNormPass], { context: ctx });
      return { g, f, why: messagesOf(ctx, "fuse-norm") };
    };
    const body = (axis: number, w: string, extra = "") => `graph g {
  input %x: f32[3, 4]
  param %w: f32[${w}]
  %0: f32[] = full() {dtype = f32, shape = [], value = 2}
  %1: f32[3, 4] = pow(%x, %0)
  %2: f32[${axis === 0 ? "1, 4" : "3, 1"}] = reduce_mean(%1) {axis = ${axis}, keepdim = true}
  %3: f32[] = full() {dtype = f32, shape = [], value = 0.00001}
  %4: f32[${axis === 0 ? "1, 4" : "3, 1"}] = add(%2, %3)
  %5: f32[${axis === 0 ? "1, 4" : "3, 1"}] = rsqrt(%4)
  %6: f32[3, 4] = mul(%x, %5)
  %7: f32[3, 4] = mul(%6, %w)
  output y = %7${extra}
}`;
    const axis0 = explainOf(body(0, "4"));
    expect(axis0.f).toBe(axis0.g);
    expect(axis0.why).toEqual(["norm: not fused: rsqrt(· + eps) is not of a last-axis mean (keepdim) plus a scalar f32 eps"]);
    const output = explainOf(body(1, "4", "\n  output m = %2"));
    expect(output.f).toBe(output.g);
    expect(output.why).toEqual(["norm: not fused: an intermediate (reduce_mean) is a graph output"]);
    const wide = explainOf(body(1, "3, 4"));
    expect(wide.f).toBe(wide.g);
    expect(wide.why).toEqual(["norm: not fused: the normalized row is not only multiplied by weights f32[4]"]);
    // a rank-1 row squared after normalizing: the "weight" is the norm's own result
    const self = explainOf(`graph g {
  input %x: f32[4]
  %0: f32[] = full() {dtype = f32, shape = [], value = 2}
  %1: f32[4] = pow(%x, %0)
  %2: f32[1] = reduce_mean(%1) {axis = 0, keepdim = true}
  %3: f32[] = full() {dtype = f32, shape = [], value = 0}
  %4: f32[1] = add(%2, %3)
  %5: f32[1] = rsqrt(%4)
  %6: f32[4] = mul(%x, %5)
  %7: f32[4] = mul(%6, %6)
  output y = %7
}`);
    expect(self.f).toBe(self.g);
    expect(self.why).toEqual(["norm: not fused: a weight or bias is computed from the norm itself"]);
    // the fused form of the last-axis norm runs and prints back
    const ok = explainOf(body(1, "4"));
    expect(ops(ok.f)).toEqual(["rms_norm"]);
    expect(print(ok.f)).toContain("%0: f32[3, 4] = rms_norm(%x, %w) {eps = 0.00001}");
  });
});
