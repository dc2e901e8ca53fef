// The cpu target's rms_norm / layer_norm kernels (codegen-templates/cpu/kernels.h, through
// test/cpu/norm_driver.cpp built with g++) against the reference interpreter, bit for bit (NaN
// payloads aside): f32, bf16 and f16, row lengths 1 to 4096 (odd ones included), eps 0 to 1,
// values over many binades, constant rows (variance 0), infinities and NaNs. The cuda kernels are
// checked against this host twin on the GPU machine (bench/norm.cu).

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type { DType, Tensor } from "../compiler/ir/index.js";
import { GraphBuilder, inferNode, run, tensor } from "../compiler/ir/index.js";
import { normals } from "../compiler/testing/index.js";
import { bytesOf, valuesOf } from "./helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "kiln-norm-"));
const driver = join(tmp, "norm_driver");
beforeAll(() => {
  execFileSync(process.env.KILN_CXX ?? "g++", ["-std=c++17", "-O3", "-fopenmp", "-I", join(import.meta.dirname, "..", "codegen-templates"), "-o", driver, join(import.meta.dirname, "cpu", "norm_driver.cpp")]);
}, 120_000);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Case {
  op: "rms_norm" | "layer_norm";
  dtype: DType;
  rows: number;
  D: number;
  eps: number;
  bias: boolean;
  seed: number;
}

function interpret(c: Case, x: Tensor, w: Tensor, b?: Tensor): number[] {
  const g = new GraphBuilder("n");
  const xv = g.input("x", { dtype: c.dtype, shape: [c.rows, c.D] });
  const wv = g.param("w", { dtype: c.dtype, shape: [c.D] });
  const bv = b ? [g.param("b", { dtype: c.dtype, shape: [c.D] })] : [];
  const operands = [xv, wv, ...bv];
  const attrs = { eps: c.eps };
  g.output("y", g.node(c.op, operands, attrs, inferNode({ op: c.op, operands, attrs })));
  return Array.from(run(g.graph, { x }, b ? { w, b } : { w }).y.data);
}

function data(c: Case): { x: Tensor; w: Tensor; b?: Tensor } {
  const r = normals(c.seed);
  // rows at scales from 2^-12 to 2^12 (a row each), with a shift for LayerNorm to remove
  const xs: number[] = [];
  for (let i = 0; i < c.rows; i++) {
    const scale = 2 ** (((i * 5) % 25) - 12), shift = c.op === "layer_norm" ? 3 * scale * r() : 0;
    for (let j = 0; j < c.D; j++) xs.push(shift + scale * r());
  }
  if (c.rows > 2) xs.fill(0.75, 2 * c.D, 3 * c.D); // a constant row: variance 0
  if (c.rows > 3 && c.D > 2) [xs[3 * c.D], xs[3 * c.D + 1]] = [Infinity, NaN];
  const w = tensor(c.dtype, [c.D], Array.from({ length: c.D }, () => 1 + 0.2 * r()));
  const b = c.bias ? tensor(c.dtype, [c.D], Array.from({ length: c.D }, () => 0.1 * r())) : undefined;
  return { x: tensor(c.dtype, [c.rows, c.D], xs), w, b };
}

const CASES: Case[] = [];
let seed = 1;
for (const dtype of ["f32", "bf16", "f16"] as const)
  for (const [op, bias] of [["rms_norm", false], ["layer_norm", true], ["layer_norm", false]] as const)
    for (const [rows, D, eps] of [[5, 1, 1e-5], [6, 7, 0], [9, 64, 1e-6], [4, 4096, 1e-5], [1, 4096, 1e-6], [7, 333, 0.5]] as const)
      CASES.push({ op, dtype, rows, D, eps, bias, seed: seed++ });

describe("cpu norm kernels equal the interpreter bit for bit", () => {
  test.each(CASES.map((c) => [`${c.op}${c.bias ? "+bias" : ""} ${c.dtype} ${c.rows}×${c.D} eps ${c.eps}`, c] as const))("%s", (_name, c) => {
    const { x, w, b } = data(c);
    const inFile = join(tmp, `in${c.seed}`), outFile = join(tmp, `out${c.seed}`);
    writeFileSync(inFile, Buffer.concat([bytesOf(x), bytesOf(w), ...(b ? [bytesOf(b)] : [])]));
    execFileSync(driver, [c.op === "rms_norm" ? "rms" : "layer", c.dtype, String(c.rows), String(c.D), String(c.eps), b ? "1" : "0", inFile, outFile]);
    const got = valuesOf(c.dtype, readFileSync(outFile));
    const want = interpret(c, x, w, b);
    expect(got.length).toBe(want.length);
    const bad = want.findIndex((v, i) => !Object.is(v, got[i]) && !(Number.isNaN(v) && Number.isNaN(got[i])));
    expect(bad < 0 ? "all equal" : `element ${bad} (row ${Math.floor(bad / c.D)}): kernel ${got[bad]}, interpreter ${want[bad]}`).toBe("all equal");
    // the data is not degenerate: most of the results are finite and differ from the input
    expect(want.filter(Number.isFinite).length).toBeGreaterThan(want.length / 2);
  });
});
