// The argmax op (greedy decoding's pick, made on the target): its interpreter rule against a plain
// reference and against sampling.ts's greedy selection (property tests), its text form, and the
// cpu target's kernel (codegen-templates/cpu/kernels.h, through an artifact of the op alone)
// against the interpreter on rows with ties, -Inf, NaN and +Inf, widths 1 to 32001. The cuda
// kernel is checked the same way on the GPU machine (greedy.gpu.test.ts).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import { llama } from "../models/index.js";
import { traceModel } from "../compiler/dsl/model.js";
import { KilnError, parse, print, tensor } from "../compiler/ir/index.js";
import { assertRoundTrip } from "../compiler/testing/index.js";
import { Rng, selectToken } from "../runtime/sampling.js";
import { argmaxGraph, argmaxKernel, argmaxRows, interpretArgmax, referenceArgmax } from "./argmax-helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "kiln-argmax-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Logit-like values: small integers (ties), normals, -Inf often, NaN / +Inf rarely. */
const value = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: -3, max: 3 }) },
  { weight: 4, arbitrary: fc.double({ min: -100, max: 100, noNaN: true }) },
  { weight: 2, arbitrary: fc.constant(-Infinity) },
  { weight: 1, arbitrary: fc.constantFrom(NaN, Infinity) },
);

describe("the interpreter's rule", () => {
  test("property: argmax = the plain reference, for rows of any width", () => {
    fc.assert(
      fc.property(fc.array(fc.array(value, { minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 6 }), (rows) => {
        const V = Math.max(...rows.map((r) => r.length));
        const padded = rows.map((r) => [...r, ...Array<number>(V - r.length).fill(-Infinity)]);
        const x = tensor("f32", [rows.length, V], padded.flat());
        // the reference reads the stored (f32-rounded) values
        const stored = padded.map((_r, b) => Array.from(x.data.subarray(b * V, (b + 1) * V)));
        expect(interpretArgmax(x)).toEqual(stored.map(referenceArgmax));
      }),
      { numRuns: 300, seed: 7 },
    );
  });

  test("property: argmax is sampling.ts's greedy pick, and -1 exactly where that raises E_RUNTIME", () => {
    const greedy = { doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 };
    fc.assert(
      fc.property(fc.array(value, { minLength: 1, maxLength: 64 }), (row) => {
        const logits = Float32Array.from(row);
        const [got] = interpretArgmax(tensor("f32", [1, row.length], row));
        let want: number | KilnError;
        try {
          want = selectToken(logits, [], greedy, new Rng(1));
        } catch (e) {
          want = e as KilnError;
        }
        if (typeof want === "number") expect(got).toBe(want);
        else expect([got, want.code]).toEqual([-1, "E_RUNTIME"]);
      }),
      { numRuns: 500, seed: 11 },
    );
  });

  test("16-bit inputs are compared as stored: a tie made by rounding goes to the first", () => {
    const x = tensor("bf16", [1, 3], [1.00390625, 1, 0.5]); // 1 + 2^-8 rounds to 1 in bf16
    expect(interpretArgmax(x)).toEqual([0]);
    expect(interpretArgmax(tensor("f16", [1, 3], [1.00390625, 1, 0.5]))).toEqual([0]); // f16 keeps it apart
  });
});

describe("text form", () => {
  test("argmax prints and parses back, on its own and as the traced next_token of a decoder", () => {
    const text = assertRoundTrip(argmaxGraph("bf16"));
    expect(text).toMatch(/%0: i64\[R\] = argmax\(%x\) \{axis = -1\}/);
    const config = llama.fromHF(JSON.parse('{"vocab_size":32,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":64,"rms_norm_eps":1e-6}'));
    const g = traceModel(llama, config, { kvCache: "static", nextToken: true });
    const out = g.outputs.find((o) => o.name === "next_token")!;
    expect([out.value.dtype, out.value.shape]).toEqual(["i64", ["B", "S"]]);
    expect(print(parse(print(g)))).toBe(print(g));
    // without the option there is none, and an encoder cannot have one
    expect(traceModel(llama, config, { kvCache: "static" }).outputs.some((o) => o.name === "next_token")).toBe(false);
  });
});

describe("the cpu kernel equals the interpreter", () => {
  test.each([
    ["f32", 9, 1],
    ["f32", 18, 7],
    ["bf16", 18, 8],
    ["f16", 18, 33],
    ["bf16", 9, 256],
    ["bf16", 9, 32000],
    ["f32", 9, 32001],
    ["f16", 9, 32000],
  ] as const)("%s, %i rows of %i", async (dtype, R, V) => {
    const kernel = await argmaxKernel("cpu", dtype, tmp);
    const x = argmaxRows(dtype, R, V, R * V);
    const got = await kernel(x);
    const want = interpretArgmax(x);
    expect(got).toEqual(want);
    // the rows are not degenerate: picks where there is one to make, -1 for the NaN / +Inf / masked rows
    for (let r = 0; r < R; r++) expect([r, want[r]]).toEqual([r, referenceArgmax(Array.from(x.data.subarray(r * V, (r + 1) * V)))]);
    if (V > 1) expect(want.filter((i) => i >= 0).length).toBeGreaterThanOrEqual(R / 2);
    if (V > 4) expect(want.filter((i) => i === -1).length).toBeGreaterThanOrEqual(3 * Math.floor(R / 9));
  }, 60_000);

  test("property: random batches of rows", async () => {
    const kernel = await argmaxKernel("cpu", "f32", tmp);
    const batches = fc.sample(fc.integer({ min: 1, max: 24 }).chain((V) => fc.array(fc.array(value, { minLength: V, maxLength: V }), { minLength: 1, maxLength: 8 })), { numRuns: 40, seed: 5 });
    for (const rows of batches) {
      const x = tensor("f32", [rows.length, rows[0].length], rows.flat());
      expect(await kernel(x)).toEqual(interpretArgmax(x));
    }
  }, 60_000);
});
