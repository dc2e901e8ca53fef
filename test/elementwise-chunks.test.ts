// The chunked path of fused elementwise kernels (emitElementwise's chunk(): W elements of one row,
// 16-byte runs, one offset computation per operand) against the reference interpreter, bit for bit,
// on the host twin: each functor runs through cpu/kernels.h's for_each once with aligned buffers
// (chunks, plus the tail) and once with every buffer shifted by one element (misaligned: the
// scalar path). The cuda target runs the same functor methods (bench/membound.cu checks them on
// the GPU against the old one-element-a-thread kernels); and that bench's functors are checked
// here to be what the codegen writes today.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import { CTYPE, emitElementwise } from "../compiler/codegen/emit.js";
import type { DType, Graph } from "../compiler/ir/index.js";
import { isFloat, parse, run, tensor } from "../compiler/ir/index.js";

const root = join(import.meta.dirname, "..");
const dir = mkdtempSync(join(tmpdir(), "kiln-chunks-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// one elementwise node over inputs %p0, %p1, …; numeric dims only
const rmsNorm = (h: number): string => `input %p0: bf16[${h}]
  input %p1: bf16[3, 5, ${h}]
  input %p2: f32[3, 5, 1]
  input %p3: f32[]
  %0: bf16[3, 5, ${h}] = elementwise(%p0, %p1, %p2, %p3) {expr = "(mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 $3)))))"}`;
const cases: { name: string; ir: string; chunked: boolean }[] = [
  { name: "RMSNorm chain: [16] row, [3, 5, 1] column and scalar broadcasts (bf16, W 8)", chunked: true, ir: rmsNorm(16) },
  { name: "the same with an innermost dim of 12 (not a multiple of W: the scalar path)", chunked: false, ir: rmsNorm(12) },
  {
    name: "silu(g)·u, all contiguous, 3 chunks and a tail of 2",
    chunked: true,
    ir: `input %p0: bf16[2, 13]
  input %p1: bf16[2, 13]
  %0: bf16[2, 13] = elementwise(%p0, %p1) {expr = "(mul:bf16 (silu:bf16 $0) $1)"}`,
  },
  {
    name: "RoPE chain in 4-d: [1, 1, 3, 16] and f32 [16] rows (bf16)",
    chunked: true,
    ir: `input %p0: bf16[1, 2, 3, 16]
  input %p1: bf16[1, 1, 3, 16]
  input %p2: bf16[1, 2, 3, 16]
  input %p3: f32[16]
  input %p4: bf16[1, 1, 3, 16]
  %0: bf16[1, 2, 3, 16] = elementwise(%p0, %p1, %p2, %p3, %p4) {expr = "(add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 (cast:bf16 $3)) $4))"}`,
  },
  {
    name: "f16 with a row broadcast; f32 output of a bf16 sum",
    chunked: true,
    ir: `input %p0: f16[4, 8]
  input %p1: f16[8]
  input %p2: bf16[4, 8]
  %0: f16[4, 8] = elementwise(%p0, %p1) {expr = "(add:f16 $0 (exp:f16 $1))"}
  %1: f32[4, 8] = elementwise(%p2, %p2) {expr = "(cast:f32 (add:bf16 $0 $1))"}`,
  },
  {
    name: "f32 with a column broadcast (W 4)",
    chunked: true,
    ir: `input %p0: f32[6, 4]
  input %p1: f32[6, 1]
  %0: f32[6, 4] = elementwise(%p0, %p1) {expr = "(mul:f32 $0 (exp:f32 $1))"}`,
  },
  {
    name: "where over a bool condition (W 16) and a scalar",
    chunked: true,
    ir: `input %p0: bool[2, 16]
  input %p1: f32[2, 16]
  input %p2: f32[]
  %0: f32[2, 16] = elementwise(%p0, %p1, %p2) {expr = "(where:f32 $0 $1 (neg:f32 $2))"}`,
  },
  {
    name: "integers: i32 with a column, i64 runs cast to f32",
    chunked: true,
    ir: `input %p0: i32[5, 8]
  input %p1: i32[5, 1]
  input %p2: i64[3, 4]
  %0: i32[5, 8] = elementwise(%p0, %p1) {expr = "(sub:i32 (mul:i32 $0 $1) (maximum:i32 $1 (full:i32 7)))"}
  %1: f32[3, 4] = elementwise(%p2) {expr = "(cast:f32 (mul:i64 $0 $0))"}`,
  },
];

// values with the special floats mixed in (NaN, ±inf, −0), and small integers for the integer types
function values(dtype: DType, n: number, seed: number): number[] {
  let s = seed * 7919 + 17;
  const next = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const special = [Number.NaN, Infinity, -Infinity, -0];
  return Array.from({ length: n }, (_, i) => {
    const u = next();
    if (dtype === "bool") return u < 0.5 ? 0 : 1;
    if (!isFloat(dtype)) return Math.floor(u * 41) - 20 || 3;
    if (i % 23 === 7) return special[(i >> 3) % special.length];
    return (u - 0.4) * 6;
  });
}

const fmt = (x: number): string => (Number.isNaN(x) ? "NAN" : x === Infinity ? "INFINITY" : x === -Infinity ? "-INFINITY" : Object.is(x, -0) ? "-0.0" : String(x));

// printf's %.17g back to a number ("inf", "-nan", …)
const parseC = (s: string): number => (/nan/i.test(s) ? Number.NaN : /inf/i.test(s) ? (s.startsWith("-") ? -Infinity : Infinity) : Number(s));

/** A C++ program running each elementwise node of g at shift 0 and 1; prints chunkable() and the outputs. */
function program(g: Graph, data: number[][]): string {
  const names = new Map<number, string>();
  g.inputs.forEach((v, k) => names.set(v.id, `p${k}`));
  const functors: string[] = [];
  const body: string[] = [];
  g.inputs.forEach((v, k) => {
    body.push(`static const double d${k}[] = {${data[k].map(fmt).join(", ")}};`);
    body.push(`alignas(64) static ${CTYPE[v.dtype]} b${k}[${data[k].length + 16}];`);
  });
  for (const n of g.nodes) body.push(`alignas(64) static ${CTYPE[n.result.dtype]} c${n.result.id}[${n.result.shape.reduce<number>((a, d) => a * (d as number), 1) + 16}];`);
  body.push("for (int shift = 0; shift < 2; shift++) {");
  g.inputs.forEach((v, k) => {
    const T = CTYPE[v.dtype];
    body.push(`  ${T}* p${k} = b${k} + shift;`);
    body.push(`  for (int i = 0; i < ${data[k].length}; i++) p${k}[i] = kiln::Num<${T}>::store((kiln::Num<${T}>::C)d${k}[i]);`);
  });
  for (const n of g.nodes) {
    const { functor, call } = emitElementwise(n, names);
    functors.push(functor);
    const T = CTYPE[n.result.dtype];
    const size = n.result.shape.reduce<number>((a, d) => a * (d as number), 1);
    body.push(`  ${T}* v${n.result.id} = c${n.result.id} + shift;`);
    const f = call.replace(/^K::for_each\(/, "").replace(/, [^,]+\);$/, "");
    body.push(`  printf("chunkable %d\\n", (int)${f}.chunkable());`);
    body.push(`  ${call}`);
    body.push(`  for (int i = 0; i < ${size}; i++) printf("%.17g\\n", (double)kiln::Num<${T}>::load(v${n.result.id}[i]));`);
  }
  body.push("}");
  return [
    `#include "common/kiln_types.h"`,
    `#include "cpu/kernels.h"`,
    `#include <stdio.h>`,
    `namespace K = kiln::cpu;`,
    ...functors,
    `int main() {`,
    ...body.map((l) => `  ${l}`),
    `  return 0;`,
    `}`,
  ].join("\n");
}

describe("chunked fused elementwise kernels (host twin)", () => {
  test.each(cases)("$name", ({ ir, chunked }) => {
    const g = parse(`graph chunks {\n  ${ir}\n${ir.split("\n").filter((l) => /= elementwise/.test(l)).map((l, j) => `  output y${j} = ${l.trim().split(":")[0]}`).join("\n")}\n}`);
    const data = g.inputs.map((v, k) => values(v.dtype, v.shape.reduce<number>((a, d) => a * (d as number), 1), k + 1));
    const inputs = Object.fromEntries(g.inputs.map((v, k) => [v.name, tensor(v.dtype, v.shape as number[], data[k])]));
    const want = run(g, inputs, {});
    const src = join(dir, `${g.nodes[0].result.id}-${Math.random().toString(36).slice(2)}.cpp`);
    writeFileSync(src, program(g, g.inputs.map((v) => Array.from(inputs[v.name].data))));
    execFileSync(process.env.KILN_CXX ?? "g++", ["-std=c++17", "-O2", "-fopenmp", "-Wall", "-Werror", "-Wno-unused-function", `-I${join(root, "codegen-templates")}`, "-o", `${src}.bin`, src]);
    const lines = execFileSync(`${src}.bin`).toString().trim().split("\n");
    let at = 0;
    for (const shift of [0, 1]) {
      g.outputs.forEach((o) => {
        // aligned: chunks where the shape allows them; shifted by one element: never
        expect({ shift, output: o.name, chunkable: lines[at++] }).toEqual({ shift, output: o.name, chunkable: `chunkable ${shift === 0 && chunked ? 1 : 0}` });
        const got = lines.slice(at, at + want[o.name].data.length).map(parseC);
        at += want[o.name].data.length;
        expect({ shift, output: o.name, values: got }).toEqual({ shift, output: o.name, values: Array.from(want[o.name].data) });
      });
    }
  }, 60_000);
});

test("bench/membound.cu holds the functors the codegen writes today", () => {
  const bench = readFileSync(join(root, "bench/membound.cu"), "utf8");
  const block = bench.split("// BEGIN emitted\n")[1]?.split("// END emitted")[0];
  const ir = /\/\* IR of the functors below:\n([\s\S]*?)\*\//.exec(bench)?.[1];
  expect({ block: block !== undefined, ir: ir !== undefined }).toEqual({ block: true, ir: true });
  const g = parse(ir!);
  const names = new Map<number, string>();
  const emitted = g.nodes.map((n) => `${emitElementwise(n, names).functor}\n\n`).join("");
  expect(block).toBe(emitted);
});
