// The pass manager, dce and cse, and the pass checker itself (a wrong pass must be caught, with
// the counterexample's IR in the message).

import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { Graph } from "../compiler/ir/index.js";
import { GraphBuilder, KilnError, parse, print, run, tensor, verify } from "../compiler/ir/index.js";
import type { Pass } from "../compiler/passes/index.js";
import { createContext, cse, csePass, dce, dcePass, getPass, listPasses, messagesOf, parsePipeline, registerPass, runPipeline } from "../compiler/passes/index.js";
import { arbGraphWithInputs, arbMask, arbTensor, arbWeights, assertRoundTrip, checkPass, compareTensors, FLOAT_DTYPES } from "../compiler/testing/index.js";

const ir = (s: string): Graph => parse(s);

const DUPS = `graph g {
  input %x: f32[B, 4]
  param %w: f32[4]
  %0: f32[B, 4] = add(%x, %w)
  %1: f32[B, 4] = add(%w, %x)
  %2: f32[B, 4] = mul(%0, %1)
  %3: f32[B, 4] = exp(%2)
  %4: f32[] = full() {dtype = f32, shape = [], value = 0}
  %5: f32[] = full() {dtype = f32, shape = [], value = -0}
  %6: f32[] = full() {dtype = f32, shape = [], value = nan}
  %7: f32[] = full() {dtype = f32, shape = [], value = nan}
  %8: f32[B, 4] = sub(%0, %1)
  %9: f32[B, 4] = sub(%1, %0)
  output a = %2
  output b = %1
  output c = %5
  output d = %7
  output e = %8
  output f = %9
}
`;

describe("dce", () => {
  test("removes nodes no output needs, transitively, and keeps inputs and params", () => {
    const g = ir(`graph g {
  input %x: f32[2]
  input %unused: f32[3]
  param %w: f32[2]
  param %never: f32[5]
  %0: f32[2] = exp(%x)
  %1: f32[2] = add(%0, %w)
  %2: f32[2] = neg(%1)
  %3: f32[2] = tanh(%x)
  output y = %2
}
`);
    const text = print(g);
    const out = dce(g);
    expect(print(g)).toBe(text); // input untouched
    expect(print(out)).toBe(`graph g {
  input %x: f32[2]
  input %unused: f32[3]
  param %w: f32[2]
  param %never: f32[5]
  %0: f32[2] = exp(%x)
  %1: f32[2] = add(%0, %w)
  %2: f32[2] = neg(%1)
  output y = %2
}
`);
    const chain = ir(`graph g {
  input %x: f32[2]
  %0: f32[2] = exp(%x)
  %1: f32[2] = neg(%0)
  %2: f32[2] = abs(%1)
  output y = %x
}
`);
    expect(dce(chain).nodes).toHaveLength(0);
  });

  test("returns its input when nothing is dead", () => {
    const g = ir(`graph g {\n  input %x: f32[2]\n  %0: f32[2] = exp(%x)\n  output y = %0\n}\n`);
    expect(dce(g)).toBe(g);
  });

  test("keeps every output on random graphs (checkPass)", () => {
    checkPass(dcePass, { numRuns: 100 });
  });
});

describe("cse", () => {
  test("merges equal nodes (commutative operands, equal attrs) and rewires outputs", () => {
    const g = ir(DUPS);
    const text = print(g);
    const out = cse(g);
    expect(print(g)).toBe(text);
    verify(out);
    expect(print(out)).toBe(`graph g {
  input %x: f32[B, 4]
  param %w: f32[4]
  %0: f32[B, 4] = add(%x, %w)
  %1: f32[B, 4] = mul(%0, %0)
  %2: f32[B, 4] = exp(%1)
  %3: f32[] = full() {dtype = f32, shape = [], value = 0}
  %4: f32[] = full() {dtype = f32, shape = [], value = -0}
  %5: f32[] = full() {dtype = f32, shape = [], value = nan}
  %6: f32[B, 4] = sub(%0, %0)
  output a = %1
  output b = %0
  output c = %4
  output d = %5
  output e = %6
  output f = %6
}
`);
  });

  test("does not merge across different attrs, ops or operand order of non-commutative ops", () => {
    const g = ir(`graph g {
  input %x: f32[2, 3]
  input %y: f32[2, 3]
  %0: f32[2, 3] = sub(%x, %y)
  %1: f32[2, 3] = sub(%y, %x)
  %2: f32[2, 3] = softmax(%x) {axis = 0}
  %3: f32[2, 3] = softmax(%x) {axis = 1}
  %4: f32[2, 3] = softmax(%x) {axis = -1}
  %5: f32[2, 3] = exp(%x)
  %6: f32[2, 3] = exp(%x) loc("m.ts":3:4)
  output a = %0
  output b = %1
  output c = %2
  output d = %3
  output e = %4
  output f = %5
  output h = %6
}
`);
    const out = cse(g);
    // only the two exps merge (locs are not semantics); axis 1 and -1 stay apart (different attrs)
    expect(out.nodes.map((n) => n.op)).toEqual(["sub", "sub", "softmax", "softmax", "softmax", "exp"]);
  });

  test("keeps every output on random graphs (checkPass)", () => {
    checkPass(csePass, { numRuns: 100 });
  });

  test("cse then dce keeps every output, bit for bit", () => {
    checkPass((g, ctx) => dcePass.run(csePass.run(g, ctx), ctx), { numRuns: 100, atol: 0, rtol: 0 });
  });
});

describe("checkPass", () => {
  // a deliberately wrong pass: swaps the operands of every sub
  const swapSub: Pass = {
    name: "swap-sub",
    description: "wrong on purpose",
    run: (g) => ({ ...g, nodes: g.nodes.map((n) => (n.op === "sub" ? { ...n, operands: [n.operands[1], n.operands[0]] } : n)) }),
  };

  test("catches a wrong pass and reports the shrunk counterexample's IR", () => {
    let msg = "";
    try {
      checkPass(swapSub, { graphs: arbGraphWithInputs({ ops: ["sub", "add", "mul", "exp"], dtypes: ["f32"] }), numRuns: 200, seed: 42 });
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/^checkPass\(swap-sub\): output '[^']+' differs after the pass: max abs error [0-9.e+-]+/);
    expect(msg).toMatch(/counterexample \(shrunk \d+ times/);
    expect(msg).toMatch(/graph \S+ \{\n/); // the IR text, before...
    expect(msg).toContain("after the pass:"); // ...and after
    expect(msg).toMatch(/= sub\(/);
    expect(msg).toMatch(/replay: seed 42, path "[\d:]+"/);
    // shrinking leaves a small graph: the sub and at most the helper that made its operand
    const before = msg.split("counterexample")[1].split("after the pass:")[0];
    expect((before.match(/^ {2}%\d+:/gm) ?? []).length).toBeLessThanOrEqual(2);
  });

  test("reports a pass that throws, mutates its input, or breaks the graph", () => {
    const run = (p: Pass): string => {
      try {
        checkPass(p, { numRuns: 30, seed: 7 });
        return "";
      } catch (e) {
        return (e as Error).message;
      }
    };
    expect(run({ name: "boom", description: "", run: () => { throw new Error("kaboom"); } })).toContain("checkPass(boom): the pass threw Error: kaboom");
    const mutate: Pass = { name: "mutate", description: "", run: (g) => (g.outputs.reverse(), g) };
    expect(run({ name: "drop", description: "", run: (g) => ({ ...g, outputs: [] }) })).toContain("the pass produced an invalid graph: KilnError E_VERIFY");
    expect(run({ name: "rename", description: "", run: (g) => ({ ...g, outputs: g.outputs.map((o) => ({ ...o, name: `${o.name}_x` })) }) })).toMatch(/the pass (added|dropped) output/);
    // mutation only shows on graphs with 2+ outputs; those come often enough in 30 runs
    expect(run(mutate)).toContain("the pass mutated its input graph");
  });
});

describe("pass manager", () => {
  test("runs a pipeline, verifying after each pass, and calls onAfterPass", () => {
    const seen: string[] = [];
    const out = runPipeline(ir(DUPS), parsePipeline("cse, dce"), { onAfterPass: (p, g) => seen.push(`${p.name}:${g.nodes.length}`) });
    expect(seen).toEqual(["cse:7", "dce:5"]);
    expect(out.outputs.map((o) => o.name)).toEqual(["a", "b", "c", "d", "e", "f"]);
  });

  test("collects explain messages per pass", () => {
    const ctx = createContext({ level: 2 });
    runPipeline(ir(DUPS), [csePass, dcePass], { context: ctx });
    expect(ctx.options.level).toBe(2);
    expect(messagesOf(ctx, "cse")).toEqual(["merged 3 duplicate node(s)"]);
    expect(messagesOf(ctx, "dce")).toEqual(["removed 2 dead node(s)"]);
  });

  test("an invalid result is E_PASS naming the pass", () => {
    const bad: Pass = {
      name: "break-types",
      description: "declares a wrong result type",
      run: (g) => ({ ...g, nodes: g.nodes.map((n) => ({ ...n, result: { ...n.result, dtype: "i8" } })) }),
    };
    const g = ir(`graph g {\n  input %x: f32[2]\n  %0: f32[2] = exp(%x)\n  output y = %0\n}\n`);
    let err: unknown;
    try {
      runPipeline(g, [dcePass, bad]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe("E_PASS");
    expect((err as KilnError).message).toMatch(/^pass 'break-types' produced an invalid graph: op 'exp' .*declared i8\[2\] but the op gives f32\[2\]/);
    expect(((err as KilnError).cause as KilnError).code).toBe("E_VERIFY");
    // without verifyEach the broken graph goes through
    expect(runPipeline(g, [bad], { verifyEach: false }).nodes[0].result.dtype).toBe("i8");
  });

  test("a pass that throws or mutates its input is E_PASS naming the pass", () => {
    const g = ir(`graph g {\n  input %x: f32[2]\n  %0: f32[2] = exp(%x)\n  output y = %0\n}\n`);
    const throws: Pass = { name: "thrower", description: "", run: () => { throw new TypeError("oops"); } };
    expect(() => runPipeline(g, [throws])).toThrow(expect.objectContaining({ code: "E_PASS", message: "pass 'thrower' failed: oops" }) as unknown as Error);
    const mutates: Pass = { name: "mutator", description: "", run: (x) => { x.nodes[0].op = "neg"; return x; } };
    expect(() => runPipeline(g, [mutates])).toThrow(/pass 'mutator' mutated its input graph/);
  });

  test("a bad input graph stays E_VERIFY", () => {
    const b = new GraphBuilder("g");
    b.input("x", { dtype: "f32", shape: [2] });
    expect(() => runPipeline(b.graph, [dcePass])).toThrow(expect.objectContaining({ code: "E_VERIFY" }) as unknown as Error);
  });

  test("registry", () => {
    expect(getPass("dce")).toBe(dcePass);
    expect(getPass("cse")).toBe(csePass);
    expect(listPasses().map((p) => p.name)).toEqual(expect.arrayContaining(["cse", "dce"]));
    expect(() => getPass("nope")).toThrow(/unknown pass 'nope' \(known: .*cse, dce/);
    expect(() => parsePipeline("dce,nope")).toThrow(expect.objectContaining({ code: "E_USAGE" }) as unknown as Error);
    registerPass(dcePass); // same object again: fine
    expect(() => registerPass({ ...dcePass })).toThrow(/already registered/);
  });
});

describe("testing kit", () => {
  test("compareTensors: tolerance, NaN, inf, dtype and shape", () => {
    const f = (v: number[]) => tensor("f32", [v.length], v);
    expect(compareTensors(f([1, 2]), f([1, 2]))).toEqual({ ok: true, maxAbs: 0, maxRel: 0, index: -1, at: [] });
    expect(compareTensors(f([NaN, Infinity, -0]), f([NaN, Infinity, 0])).ok).toBe(true);
    const c = compareTensors(f([1, 2.5, 3.01]), f([1, 2, 3]), { atol: 0.1 });
    expect(c).toMatchObject({ ok: false, index: 1, at: [1], expected: 2, actual: 2.5 });
    expect(c.maxAbs).toBeCloseTo(0.5);
    expect(c.maxRel).toBeCloseTo(0.25);
    expect(compareTensors(f([1.5]), f([1]), { rtol: 0.5 }).ok).toBe(true);
    expect(compareTensors(f([NaN, 1]), f([1, 1]))).toMatchObject({ ok: false, index: 0, maxAbs: Infinity });
    expect(compareTensors(f([Infinity]), f([-Infinity]))).toMatchObject({ ok: false, index: 0 });
    expect(compareTensors(f([1]), tensor("f16", [1], [1]))).toMatchObject({ ok: false, reason: "dtype f32 vs expected f16" });
    expect(compareTensors(tensor("f32", [1, 2], [1, 2]), f([1, 2]))).toMatchObject({ ok: false, reason: "shape [1, 2] vs expected [2]" });
    const m = compareTensors(tensor("f32", [2, 2], [0, 0, 0, 9]), tensor("f32", [2, 2], [0, 0, 0, 0]));
    expect(m.at).toEqual([1, 1]);
  });

  test("arbTensor and arbWeights: finite, rounded to the dtype, never all zeros", () => {
    fc.assert(
      fc.property(fc.constantFrom(...FLOAT_DTYPES, "i8", "u8", "i32", "bool" as const), fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 3 }), (dtype, shape) =>
        fc.assert(
          fc.property(arbTensor(dtype, shape), arbWeights(shape, dtype), (x, w) => {
            for (const t of [x, w]) {
              expect(t.shape).toEqual(shape);
              expect(t.data.every(Number.isFinite)).toBe(true);
              expect(t.data.some((v) => v !== 0)).toBe(true);
              expect(Array.from(tensor(dtype, shape, t.data).data)).toEqual(Array.from(t.data)); // already rounded
            }
            if (dtype === "u8") expect(x.data.every((v) => v >= 0 && v <= 15)).toBe(true);
            if (FLOAT_DTYPES.includes(dtype)) expect(w.data.every((v) => Math.abs(v) <= 1)).toBe(true);
          }),
          { numRuns: 10 },
        ),
      ),
      { numRuns: 30, seed: 3 },
    );
  });

  test("arbMask: 0/1 rows with at least one real token, padded on the requested side", () => {
    const rows = (t: { data: ArrayLike<number>; shape: number[] }): number[][] =>
      Array.from({ length: t.shape[0] }, (_x, b) => Array.from(t.data).slice(b * t.shape[1], (b + 1) * t.shape[1]));
    const leftPadded = (r: number[]) => r.join("").match(/^0*1+$/) !== null;
    const rightPadded = (r: number[]) => r.join("").match(/^1+0*$/) !== null;
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 6 }), (B, S) => {
        for (const [kind, ok] of [["left", leftPadded], ["right", rightPadded], ["mixed", (r: number[]) => leftPadded(r) || rightPadded(r)], ["any", () => true]] as const)
          for (const m of fc.sample(arbMask(B, S, { kind }), 5)) {
            expect(m.shape).toEqual([B, S]);
            expect(m.dtype).toBe("i64");
            for (const r of rows(m)) {
              expect(r.every((v) => v === 0 || v === 1)).toBe(true);
              expect(r).toContain(1);
              expect(ok(r)).toBe(true);
            }
          }
      }),
      { numRuns: 30, seed: 9 },
    );
    // over many rows, "any" makes holes and "mixed" pads on both sides
    const anyRows = fc.sample(arbMask(8, 6, { kind: "any" }), { numRuns: 20, seed: 1 }).flatMap(rows);
    expect(anyRows.some((r) => !leftPadded(r) && !rightPadded(r))).toBe(true);
    const mixed = fc.sample(arbMask(8, 6, { kind: "mixed" }), { numRuns: 20, seed: 1 }).flatMap(rows);
    expect(mixed.some((r) => r[0] === 0) && mixed.some((r) => r[5] === 0)).toBe(true);
  });

  test("arbGraphWithInputs: bindings agree with the inputs, and every case runs", () => {
    fc.assert(
      fc.property(arbGraphWithInputs({ maxNodes: 10 }), (c) => {
        for (const v of c.graph.inputs)
          v.shape.forEach((d, i) => {
            if (typeof d === "string" && d in c.bindings) expect(c.inputs[v.name].shape[i]).toBe(c.bindings[d]);
          });
        const out = run(c.graph, c.inputs, c.params);
        expect(Object.keys(out)).toEqual(c.graph.outputs.map((o) => o.name));
      }),
      { numRuns: 100, seed: 17 },
    );
  });

  test("assertRoundTrip names the first line that does not read back", () => {
    const b = new GraphBuilder("g");
    const x = b.input("x", { dtype: "f32", shape: [2] });
    b.output("y", b.node("cast", [x], { to: "not a dtype" }, { dtype: "f32", shape: [2] }));
    expect(() => assertRoundTrip(b.graph)).toThrow(/^the text form does not parse back: KilnError E_PARSE: 3:/);
  });
});
