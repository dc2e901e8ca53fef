// fuse-residual: on random graphs of residual blocks (every float dtype, symbolic shapes, operand
// orders, bias, extra readers, broadcast residuals, 4-bit and int8 qlinears) the fused graph is within one unit in the last
// place of the unfused one (the single rounding of ops.ts's `linear` with `residual`); on random
// graphs of every op within the usual tolerance; every family's traced graph fuses two adds a
// layer with its logits as close; the cases it must leave alone say why; the interpreter rounds
// once; and the cpu target's linear (test/cpu/linear_driver.cpp) equals the interpreter bit for bit.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { Arbitrary } from "fast-check";
import { traceModel } from "../compiler/dsl/index.js";
import type { Attrs, Dim, DType, Graph, Tensor, Value } from "../compiler/ir/index.js";
import { GraphBuilder, inferNode, parse, print, run, tensor } from "../compiler/ir/index.js";
import { createContext, fuseResidual, fuseResidualPass, messagesOf, parsePipeline, quantizeLinear, runPipeline } from "../compiler/passes/index.js";
import { arbCase, assertRoundTrip, checkPass, compareTensors, normals } from "../compiler/testing/index.js";
import { modelFor } from "../models/index.js";
import { openCheckpoint, SafetensorsFile, toInterpreterTensor } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";
import { bytesOf, valuesOf } from "./helpers.js";

interface Block {
  /** add(r, lin) or add(lin, r); a bias; the linear's result also read elsewhere (or returned); a [1, N] residual (broadcast) */
  linFirst: boolean;
  bias: boolean;
  extra: "none" | "reader" | "output";
  broadcast: boolean;
  /** the residual is the block's input x (as in a transformer) or a value of its own */
  ownResidual: boolean;
  /** a plain linear, or a qlinear */
  quant: "none" | "nf4" | "int8";
}
interface Recipe {
  dtype: DType;
  lead: Dim[];
  D: number;
  blocks: Block[];
}

/** One add(r, linear(x, W [, b])) per block, side by side on one input (no block reads another's result). */
function residualGraph(r: Recipe, exposeLinears = false): Graph {
  const b = new GraphBuilder("res");
  const node = (op: string, operands: Value[], attrs: Attrs = {}): Value => b.node(op, operands, attrs, inferNode({ op, operands, attrs }));
  const x = b.input("x", { dtype: r.dtype, shape: [...r.lead, r.D] });
  r.blocks.forEach((k, i) => {
    const w = b.param(`l${i}.weight`, { dtype: r.dtype, shape: [r.D, r.D] });
    const bias = k.bias ? [b.param(`l${i}.bias`, { dtype: r.dtype, shape: [r.D] })] : [];
    const res = k.broadcast ? b.param(`r${i}`, { dtype: r.dtype, shape: [1, r.D] }) : k.ownResidual ? node("tanh", [x]) : x;
    const q = { scheme: k.quant, block: 2, double_quant: false, threshold: 6 };
    const lin = node(k.quant === "none" ? "linear" : "qlinear", [node("sin", [x]), w, ...bias], k.quant === "none" ? {} : q);
    b.output(`y${i}`, node("add", k.linFirst ? [lin, res] : [res, lin]));
    if (k.extra === "reader") b.output(`e${i}`, node("exp", [lin]));
    if (k.extra === "output" || exposeLinears) b.output(`lin${i}`, lin);
  });
  return b.graph;
}

const fusable = (k: Block): boolean => k.extra === "none" && !k.broadcast;

const arbBlock: Arbitrary<Block> = fc.record({
  linFirst: fc.boolean(),
  bias: fc.boolean(),
  extra: fc.constantFrom<Block["extra"]>("none", "none", "reader", "output"),
  broadcast: fc.boolean(),
  ownResidual: fc.boolean(),
  quant: fc.constantFrom<Block["quant"]>("none", "none", "nf4", "int8"),
});
const arbRecipe: Arbitrary<Recipe> = fc.record({
  dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
  lead: fc.constantFrom<Dim[]>([], ["S"], ["B", "S"], [2, "S"]),
  D: fc.integer({ min: 1, max: 9 }),
  blocks: fc.array(arbBlock, { minLength: 1, maxLength: 3 }),
});

const MANTISSA: Partial<Record<DType, [number, number]>> = { f32: [23, -126], bf16: [7, -126], f16: [10, -14] };
/** The spacing of `dtype`'s values at |x| (subnormal spacing below the normal range). */
function ulp(dtype: DType, x: number): number {
  const [bits, minExp] = MANTISSA[dtype]!;
  const e = x === 0 ? minExp : Math.max(minExp, Math.floor(Math.log2(Math.abs(x))));
  return 2 ** (e - bits);
}

describe("fuse-residual", () => {
  test("fused residual blocks are within one ulp of the unfused ones (every float dtype, order, bias, extra readers, broadcasts)", () => {
    fc.assert(
      fc.property(arbRecipe.chain((r) => arbCase(residualGraph(r)).map((c) => ({ r, c }))), ({ r, c }) => {
        const f = fuseResidual(c.graph);
        const fusedLinears = f.nodes.filter((n) => n.attrs.residual === true);
        expect(fusedLinears.length).toBe(r.blocks.filter(fusable).length);
        expect(f.nodes.filter((n) => n.op === "add").length).toBe(r.blocks.filter((k) => !fusable(k)).length);
        assertRoundTrip(f);
        const want = run(residualGraph(r, true), c.inputs, c.params); // the same values, the linears' results as outputs too
        const got = run(f, c.inputs, c.params);
        r.blocks.forEach((_k, i) => {
          const [y0, y1, lin] = [want[`y${i}`].data, got[`y${i}`].data, want[`lin${i}`].data];
          for (let j = 0; j < y0.length; j++) {
            const bound = ulp(r.dtype, Math.max(Math.abs(lin[j]), Math.abs(y0[j]), Math.abs(y1[j])));
            if (!(Math.abs(y1[j] - y0[j]) <= bound))
              throw new Error(`y${i}[${j}]: fused ${y1[j]}, unfused ${y0[j]} (linear ${lin[j]}): more than one ulp (${bound}) apart\n${print(f)}`);
          }
        });
        // every other output is the same bit for bit
        for (const k of Object.keys(got).filter((n) => !n.startsWith("y"))) expect(Array.from(got[k].data)).toEqual(Array.from(want[k].data));
      }),
      { numRuns: 300 },
    );
  });

  test("keeps what random graphs of every op compute (within the dtype's tolerance)", () => {
    checkPass(fuseResidualPass, { numRuns: 200 });
  });

  test("the interpreter rounds the fused sum once: bf16 (1 + 2⁻⁸) + 2⁻⁸ is 1 + 2⁻⁷ fused, 1 unfused (a tie to even, twice)", () => {
    const text = (bias: boolean) => `graph g {
  input %x: bf16[1, 2]
  param %w: bf16[1, 2]${bias ? "\n  param %b: bf16[1]" : ""}
  param %r: bf16[1, 1]
  %0: bf16[1, 1] = linear(%x, %w${bias ? ", %b" : ""})
  %1: bf16[1, 1] = add(%r, %0)
  output y = %1
}`;
    for (const bias of [false, true]) {
      const g = parse(text(bias));
      const f = fuseResidual(g);
      expect(print(f)).toContain(`%0: bf16[1, 1] = linear(%x, %w${bias ? ", %b" : ""}, %r) {residual = true}`);
      // x·w (+ b) = 1 + 2⁻⁸ exactly: halfway between bf16's 1 and 1 + 2⁻⁷
      const x = tensor("bf16", [1, 2], [1, bias ? 0 : 2 ** -8]);
      const params = { w: tensor("bf16", [1, 2], [1, 1]), b: tensor("bf16", [1], [2 ** -8]), r: tensor("bf16", [1, 1], [2 ** -8]) };
      expect(run(g, { x }, params).y.data[0]).toBe(1); // round(round(1 + 2⁻⁸) + 2⁻⁸) = round(1 + 2⁻⁸) = 1
      expect(run(f, { x }, params).y.data[0]).toBe(1 + 2 ** -7); // round(1 + 2⁻⁸ + 2⁻⁸)
    }
  });

  test("leaves alone, saying why: a linear read elsewhere, a broadcast residual, integers; fuses qlinears; quantize-linear keeps the residual", () => {
    const explainOf = (text: string): { g: Graph; f: Graph; why: string[] } => {
      const g = parse(text);
      const ctx = createContext();
      const f = runPipeline(g, [fuseResidualPass], { context: ctx });
      return { g, f, why: messagesOf(ctx, "fuse-residual") };
    };
    const twice = explainOf(`graph g {
  input %x: f32[2, 3]
  param %w: f32[3, 3]
  %0: f32[2, 3] = linear(%x, %w)
  %1: f32[2, 3] = add(%x, %0)
  %2: f32[2, 3] = mul(%0, %1)
  output y = %2
}`);
    expect(twice.f).toBe(twice.g);
    expect(twice.why).toEqual(["residual add: not fused: the linear's result is read elsewhere too"]);
    const wide = explainOf(`graph g {
  input %x: f32[2, 3]
  param %w: f32[3, 3]
  param %r: f32[3]
  %0: f32[2, 3] = linear(%x, %w)
  %1: f32[2, 3] = add(%0, %r) loc("m.ts":4:2)
  output y = %1
}`);
    expect(wide.f).toBe(wide.g);
    expect(wide.why).toEqual(["residual add at m.ts:4:2: not fused: the residual broadcasts (its shape is not the linear's)"]);
    const ints = explainOf(`graph g {
  input %x: i32[2, 3]
  param %w: i32[3, 3]
  %0: i32[2, 3] = linear(%x, %w)
  %1: i32[2, 3] = add(%0, %x)
  output y = %1
}`);
    expect(ints.f).toBe(ints.g);
    expect(ints.why).toEqual(["residual add: not fused: the linear computes in i32"]);
    const qlinear = (scheme: string) => `graph g {
  input %x: f32[2, 64]
  param %w.weight: f32[64, 64]
  %0: f32[2, 64] = qlinear(%x, %w.weight) {block = 64, double_quant = false, scheme = "${scheme}", threshold = 6}
  %1: f32[2, 64] = add(%0, %x)
  output y = %1
}`;
    for (const scheme of ["nf4", "int8"]) {
      const q = explainOf(qlinear(scheme));
      expect(print(q.f)).toContain(`%0: f32[2, 64] = qlinear(%x, %w.weight, %x) {block = 64, double_quant = false, residual = true, scheme = "${scheme}", threshold = 6}`);
      expect(q.why).toEqual(["qlinear: residual add fused (f32[2, 64])"]);
    }
    // both operands linears: the first one takes the other as its residual
    const both = explainOf(`graph g {
  input %x: f32[2, 3]
  param %w: f32[3, 3]
  param %v: f32[3, 3]
  %0: f32[2, 3] = linear(%x, %w) loc("m.ts":1:1)
  %1: f32[2, 3] = linear(%x, %v)
  %2: f32[2, 3] = add(%0, %1) loc("m.ts":2:1)
  output y = %2
}`);
    expect(print(both.f)).toContain("%1: f32[2, 3] = linear(%x, %w, %0) {residual = true} loc(\"m.ts\":1:1)");
    expect(both.why).toEqual(["linear at m.ts:1:1: residual add at m.ts:2:1 fused (f32[2, 3])"]);
    // a second run finds nothing more; quantize-linear keeps the residual
    expect(fuseResidual(both.f)).toBe(both.f);
    const quantized = quantizeLinear(parse(print(both.f).replace(/%w\b/g, "%w.weight")), { quant: "nf4" });
    expect(print(quantized)).toContain('%1: f32[2, 3] = qlinear(%x, %w.weight, %0) {block = 64, double_quant = false, residual = true, scheme = "nf4", threshold = 0}');
  });

  const FIXTURES = join(import.meta.dirname, "fixtures");
  const json = (name: string) => JSON.parse(readFileSync(join(FIXTURES, name, "config.json"), "utf8")) as Record<string, unknown>;

  test("golden IR: Llama's o_proj and down_proj take the residual, nothing else changes", () => {
    const cfg = json("llama-gqa");
    const def = modelFor(cfg);
    const g = traceModel(def, def.fromHF(cfg), { dtype: "bf16" });
    const ctx = createContext();
    const f = runPipeline(g, parsePipeline("cse,fuse-norm,fuse-residual,dce"), { context: ctx });
    const text = print(f);
    const fused = text.split("\n").filter((l) => l.includes("{residual = true}"));
    expect(fused.map((l) => l.match(/%model\.layers\.\d+\.[a-z_]+\.[a-z_]+\.weight/)![0])).toEqual([
      "%model.layers.0.self_attn.o_proj.weight", "%model.layers.0.mlp.down_proj.weight",
      "%model.layers.1.self_attn.o_proj.weight", "%model.layers.1.mlp.down_proj.weight",
    ]);
    expect(fused[0]).toMatch(/^ {2}%\d+: bf16\[B, S, 64\] = linear\(%\d+, %model\.layers\.0\.self_attn\.o_proj\.weight, %0\) \{residual = true\} loc\("models\/llama\.ts":\d+:\d+\)$/);
    expect(messagesOf(ctx, "fuse-residual").filter((m) => m.includes(": residual add at ")).length).toBe(4);
    expect(print(parse(text))).toBe(text);
  });

  // every family, f32 and bf16, on its checkpoint's weights: two adds a layer fused, logits as close
  const FAMILIES: [string, number][] = [["llama-gqa", 4], ["opt", 4], ["bloom", 4], ["falcon-mqa", 2], ["falcon-new-arch", 2], ["falcon-alibi", 4]];
  test.each(FAMILIES.flatMap(([name, n]) => (["f32", "bf16"] as const).map((d) => [name, d, n] as const)))("%s (%s): %d residual adds fused, logits as close", (name, dtype, n) => {
    const cfg = json(name);
    const def = modelFor(cfg);
    const root = join(FIXTURES, name);
    const g = runPipeline(traceModel(def, def.fromHF(cfg), { dtype }), parsePipeline("cse,fuse-norm"));
    const f = runPipeline(g, parsePipeline("fuse-residual,dce"));
    expect(f.nodes.filter((x) => x.attrs.residual === true).length).toBe(n);
    const { weights } = bindWeights(g.params, openCheckpoint(root), { where: root });
    const ref = SafetensorsFile.open(join(root, "reference.safetensors"));
    const inputs = { input_ids: toInterpreterTensor(ref, "input_ids") };
    const before = run(g, inputs, weights), after = run(f, inputs, weights);
    const tol = dtype === "f32" ? { atol: 1e-5, rtol: 1e-5 } : { atol: 0.1, rtol: 0.05 };
    for (const k of Object.keys(before)) {
      const c = compareTensors(after[k], before[k], tol);
      expect(c.ok ? "ok" : `${k}: max abs ${c.maxAbs} at [${c.at.join(", ")}]`).toBe("ok");
    }
  });
});

// ---------------------------------------------------------------- the cpu target's kernel

const tmp = mkdtempSync(join(tmpdir(), "kiln-linear-"));
const driver = join(tmp, "linear_driver");
beforeAll(() => {
  execFileSync(process.env.KILN_CXX ?? "g++", ["-std=c++17", "-O3", "-fopenmp", "-I", join(import.meta.dirname, "..", "codegen-templates"), "-o", driver, join(import.meta.dirname, "cpu", "linear_driver.cpp")]);
}, 120_000);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("the cpu target's linear with a residual equals the interpreter bit for bit", () => {
  const CASES: [DType, number, number, number, boolean, boolean][] = [];
  for (const dtype of ["f32", "bf16", "f16"] as const)
    for (const [M, N, K] of [[1, 33, 64], [5, 7, 129], [16, 64, 32]] as const)
      for (const bias of [false, true]) for (const res of [true, false]) CASES.push([dtype, M, N, K, bias, res]);
  let seed = 1;
  test.each(CASES)("%s M=%d N=%d K=%d bias %s residual %s", (dtype, M, N, K, bias, res) => {
    const r = normals(seed++);
    const t = (shape: number[], scale: number): Tensor => tensor(dtype, shape, Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => scale * r()));
    const [x, w, b, rr] = [t([M, K], 1), t([N, K], 0.2), t([N], 0.5), t([M, N], 2)];
    const gb = new GraphBuilder("l");
    const ops = [gb.input("x", { dtype, shape: [M, K] }), gb.param("w", { dtype, shape: [N, K] })];
    if (bias) ops.push(gb.param("b", { dtype, shape: [N] }));
    if (res) ops.push(gb.param("r", { dtype, shape: [M, N] }));
    const attrs: Attrs = res ? { residual: true } : {};
    gb.output("y", gb.node("linear", ops, attrs, inferNode({ op: "linear", operands: ops, attrs })));
    const want = Array.from(run(gb.graph, { x }, { w, b, r: rr }).y.data);
    const inFile = join(tmp, `in${seed}`), outFile = join(tmp, `out${seed}`);
    writeFileSync(inFile, Buffer.concat([bytesOf(x), bytesOf(w), ...(bias ? [bytesOf(b)] : []), ...(res ? [bytesOf(rr)] : [])]));
    execFileSync(driver, [dtype, String(M), String(N), String(K), bias ? "1" : "0", res ? "1" : "0", inFile, outFile]);
    const got = valuesOf(dtype, readFileSync(outFile));
    expect(got.length).toBe(M * N);
    const bad = want.findIndex((v, i) => !Object.is(v, got[i]));
    expect(bad < 0 ? "all equal" : `element ${bad}: kernel ${got[bad]}, interpreter ${want[bad]}`).toBe("all equal");
    // the residual matters: without it the values differ
    if (res) expect(Array.from(run(gb.graph, { x }, { w, b, r: t([M, N], 0) }).y.data)).not.toEqual(want);
  });
});
