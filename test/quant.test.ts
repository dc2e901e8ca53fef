// Quantization (issue: quantize-linear): the 4-bit codes derived from their definitions and pinned,
// quantize→dequantize error bounds, NF4 vs FP4 on normal weights, LLM.int8's outlier
// decomposition, the qlinear op and the quantize-linear pass.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import { traceModel } from "../compiler/dsl/index.js";
import {
  absmaxSlot, absmaxTiles, bytes4, codeOf, dequantize4, fp4Code, int8Matmul, nf4Code, normalQuantile, parse, quantize4, run, tensor, verify,
} from "../compiler/ir/index.js";
import type { FourBit } from "../compiler/ir/index.js";
import { createContext, quantizeLinear, quantizeLinearPass, runPipeline } from "../compiler/passes/index.js";
import { normals } from "../compiler/testing/index.js";
import llama from "../models/llama.js";

/** Largest half-gap between neighbouring code values: the worst rounding of a value in [-1, 1]. */
const halfStep = (code: readonly number[]): number => {
  const s = [...code].sort((a, b) => a - b);
  return Math.max(...s.slice(1).map((v, i) => (v - s[i]) / 2));
};

describe("the 4-bit codes", () => {
  test("normalQuantile inverts the normal CDF", () => {
    expect(normalQuantile(0.5)).toBe(0);
    expect(normalQuantile(0.975)).toBeCloseTo(1.959963984540054, 12);
    expect(normalQuantile(0.001)).toBeCloseTo(-3.090232306167813, 11);
    expect(normalQuantile(1e-10)).toBeCloseTo(-6.361340902404056, 9);
  });

  test("NF4, derived from N(0, 1) quantiles, equals the QLoRA/bitsandbytes table", () => {
    // the NF4 values as published with QLoRA (bitsandbytes' NF4 lookup), to float32 precision
    const published = [
      -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
      -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
      0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ];
    const nf4 = nf4Code();
    expect(nf4).toHaveLength(16);
    nf4.forEach((v, i) => expect(v).toBeCloseTo(published[i], 6));
    expect(nf4.filter((v) => v === 0)).toHaveLength(1); // an exact zero
  });

  test("FP4 (sign, 2-bit exponent, 1-bit mantissa, a subnormal step) normalized by 12", () => {
    const fp4 = fp4Code();
    expect(fp4.slice(0, 8)).toEqual([0, 1 / 192, 2 / 12, 3 / 12, 4 / 12, 6 / 12, 8 / 12, 1]);
    expect(fp4.slice(8)).toEqual(fp4.slice(0, 8).map((v) => -v));
  });
});

describe("blockwise 4-bit quantization", () => {
  const arbWeights = fc.tuple(fc.array(fc.double({ min: -1, max: 1, noNaN: true }), { minLength: 1, maxLength: 300 }), fc.double({ min: 1e-3, max: 1e3, noNaN: true }));

  test.each(["nf4", "fp4"] as FourBit[])("%s: |w − deq(q(w))| ≤ half a code step × the block's absmax", (scheme) => {
    const step = halfStep(codeOf(scheme));
    fc.assert(
      fc.property(arbWeights, ([raw, scale]) => {
        const w = Float32Array.from(raw, (x) => x * scale);
        const q = quantize4(w, scheme);
        const d = dequantize4(q);
        for (let i = 0; i < w.length; i++) {
          const absmax = q.absmax[Math.floor(i / 64)];
          expect(Math.abs(w[i] - d[i])).toBeLessThanOrEqual(step * absmax * (1 + 1e-6) + 1e-30);
        }
      }),
      { numRuns: 200, seed: 11 },
    );
  });

  test("double quantization: the absmax error adds at most its own 8-bit step", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { minLength: 64, maxLength: 64 * 300 }), (raw) => {
        const w = Float32Array.from(raw);
        const exact = quantize4(w, "nf4");
        const dq = quantize4(w, "nf4", { doubleQuant: true });
        const d = dequantize4(dq);
        const step = halfStep(codeOf("nf4"));
        for (let b = 0; b < dq.absmax.length; b++) {
          const aErr = Math.abs(dq.absmax[b] - exact.absmax[b]);
          const group = Math.floor(absmaxSlot(b, dq.tiles) / 256);
          expect(aErr).toBeLessThanOrEqual(dq.double!.scales[group] / 2 + 1e-6);
          for (let i = b * 64; i < Math.min(w.length, (b + 1) * 64); i++)
            expect(Math.abs(w[i] - d[i])).toBeLessThanOrEqual(step * dq.absmax[b] + aErr + 1e-6);
        }
      }),
      { numRuns: 40, seed: 5 },
    );
  });

  test("the tiled absmax layout: a permutation of the blocks, 8 rows of a block column side by side; only double quantization's groups change", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 1000 }), (perRow, tiles8, seed) => {
        const K = 64 * perRow, N = 8 * tiles8, nb = N * perRow;
        expect(absmaxTiles(N * K, 64, K)).toBe(perRow);
        expect(absmaxTiles(N * K, 64, 0)).toBe(0); // no row length: block order
        expect(absmaxTiles((N + 1) * K, 64, K)).toBe(0); // not a multiple of 8 rows
        const seen = new Set<number>();
        for (let b = 0; b < nb; b++) {
          const s = absmaxSlot(b, perRow);
          expect(s).toBeGreaterThanOrEqual(0);
          expect(s).toBeLessThan(nb);
          seen.add(s);
          const r = Math.floor(b / perRow), j = b % perRow;
          if (r % 8 !== 0) expect(s).toBe(absmaxSlot((r - (r % 8)) * perRow + j, perRow) + (r % 8)); // the tile's rows side by side
        }
        expect(seen.size).toBe(nb);
        const randn = normals(seed);
        const w = Float32Array.from({ length: N * K }, (_, i) => randn() * 0.02 * Math.exp(3 * Math.sin(i / 97)));
        // without double quantization the layout changes nothing of the math
        expect(Array.from(quantize4(w, "nf4", { rowLength: K }).codes)).toEqual(Array.from(quantize4(w, "nf4").codes));
        // with it the absmax are grouped in slot order, and each stays within its group's step
        const exact = quantize4(w, "nf4", { rowLength: K });
        const dq = quantize4(w, "nf4", { rowLength: K, doubleQuant: true });
        expect(dq.tiles).toBe(perRow);
        for (let b = 0; b < nb; b++)
          expect(Math.abs(dq.absmax[b] - exact.absmax[b])).toBeLessThanOrEqual(dq.double!.scales[Math.floor(absmaxSlot(b, perRow) / 256)] / 2 + 1e-6);
      }),
      { numRuns: 30, seed: 6 },
    );
  });

  test("NF4 has lower error than FP4 on normally distributed weights", () => {
    const randn = normals(7);
    const w = Float32Array.from({ length: 64 * 512 }, () => 0.02 * randn());
    const mse = (s: FourBit) => {
      const d = dequantize4(quantize4(w, s));
      return w.reduce((acc, x, i) => acc + (x - d[i]) ** 2, 0) / w.length;
    };
    const [nf4, fp4] = [mse("nf4"), mse("fp4")];
    console.log(`mean squared error on N(0, 0.02²) weights: nf4 ${nf4.toExponential(3)}, fp4 ${fp4.toExponential(3)}`);
    expect(nf4).toBeLessThan(fp4);
  });
});

describe("LLM.int8", () => {
  test("the outlier decomposition keeps the error far below plain vector-wise int8", () => {
    const randn = normals(3);
    const [M, K, N] = [16, 256, 64];
    const x = Float64Array.from({ length: M * K }, () => randn());
    for (const k of [7, 100, 201]) for (let m = 0; m < M; m++) x[m * K + k] *= 20; // outlier features, as in large models
    const w = Float64Array.from({ length: N * K }, () => randn() / Math.sqrt(K));
    // the float reference
    const ref = new Float64Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ref[m * N + n] += x[m * K + k] * w[n * K + k];
    const rel = (y: Float64Array) => Math.sqrt(y.reduce((a, v, i) => a + (v - ref[i]) ** 2, 0) / ref.reduce((a, v) => a + v * v, 0));
    const decomposed = rel(int8Matmul(x, w, undefined, M, N, K, 6.0));
    const plain = rel(int8Matmul(x, w, undefined, M, N, K, Infinity));
    console.log(`LLM.int8 relative error with 3 outlier features ×20: decomposition ${decomposed.toExponential(3)}, plain int8 ${plain.toExponential(3)}`);
    expect(decomposed).toBeLessThan(plain / 3);
    expect(decomposed).toBeLessThan(1e-2);
  });
});

describe("qlinear and quantize-linear", () => {
  test("qlinear computes linear with the dequantized weight (4-bit) or int8 products (int8)", () => {
    const g = parse(`graph g {
  input %x: f32[2, 64]
  param %w: f32[3, 64]
  %0: f32[2, 3] = qlinear(%x, %w) {block = 64, double_quant = false, scheme = "nf4", threshold = 0}
  %1: f32[2, 3] = qlinear(%x, %w) {block = 64, double_quant = false, scheme = "int8", threshold = 6}
  output a = %0
  output b = %1
}`);
    verify(g);
    const randn = normals(1);
    const xv = Array.from({ length: 128 }, () => randn()), wv = Array.from({ length: 192 }, () => randn());
    const out = run(g, { x: tensor("f32", [2, 64], xv) }, { w: tensor("f32", [3, 64], wv) });
    const wd = dequantize4(quantize4(Float32Array.from(wv), "nf4"));
    for (let m = 0; m < 2; m++)
      for (let n = 0; n < 3; n++) {
        let s = 0;
        for (let k = 0; k < 64; k++) s += Math.fround(xv[m * 64 + k]) * wd[n * 64 + k];
        expect(out.a.data[m * 3 + n]).toBeCloseTo(s, 4);
      }
    const i8 = int8Matmul(Float32Array.from(xv), Float32Array.from(wv), undefined, 2, 3, 64, 6);
    expect(Array.from(out.b.data)).toEqual(Array.from(i8, Math.fround));
  });

  test("on Llama: every linear but lm_head becomes qlinear, the skip list is explained, bad options are errors", () => {
    const json = JSON.parse(readFileSync(join(import.meta.dirname, "fixtures/llama-gqa/config.json"), "utf8"));
    const g = traceModel(llama, llama.fromHF(json));
    const ctx = createContext({ quant: "nf4", doubleQuant: true });
    const q = runPipeline(g, [quantizeLinearPass], { context: ctx });
    expect(q.nodes.filter((n) => n.op === "qlinear")).toHaveLength(14);
    expect(q.nodes.filter((n) => n.op === "linear").map((n) => n.operands[1].name)).toEqual(["lm_head.weight"]);
    expect(ctx.messages.map((m) => m.message)).toContain("lm_head: kept in 16 bits (skip list)");
    expect(() => quantizeLinear(g, { quant: "int8", doubleQuant: true })).toThrow(/doubleQuant applies to 4-bit/);
  });

  test("a single quantized linear is within the analytic 4-bit bound on random inputs", () => {
    const g = parse(`graph g {
  input %x: f32[B, 128]
  param %layer.weight: f32[8, 128]
  %0: f32[B, 8] = linear(%x, %layer.weight)
  output y = %0
}`);
    const q = quantizeLinear(g, { quant: "fp4" });
    expect(q.nodes[0].op).toBe("qlinear");
    const step = halfStep(codeOf("fp4"));
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 1000 }), (B, seed) => {
        const randn = normals(seed);
        const x = tensor("f32", [B, 128], Array.from({ length: B * 128 }, () => randn()));
        const w = tensor("f32", [8, 128], Array.from({ length: 8 * 128 }, () => randn() * 0.1));
        const exact = run(g, { x }, { "layer.weight": w }).y;
        const approx = run(q, { x }, { "layer.weight": w }).y;
        const qw = quantize4(w.data, "fp4");
        for (let b = 0; b < B; b++)
          for (let n = 0; n < 8; n++) {
            let bound = 0;
            for (let k = 0; k < 128; k++) bound += Math.abs(x.data[b * 128 + k]) * step * qw.absmax[Math.floor((n * 128 + k) / 64)];
            expect(Math.abs(approx.data[b * 8 + n] - exact.data[b * 8 + n])).toBeLessThanOrEqual(bound * 1.0001 + 1e-5);
          }
      }),
      { numRuns: 30, seed: 9 },
    );
  });
});

// ---------------------------------------------------------------- the host twin (kiln_quant.h)

// The stored 4-bit layout of a quantize4 result, as kiln_quant.h documents it.
function layout4(q: ReturnType<typeof quantize4>, n: number): Uint8Array {
  const pad16 = (x: number) => Math.ceil(x / 16) * 16;
  const nb = q.absmax.length;
  const out = new Uint8Array(bytes4(n, q.block, !!q.double));
  for (let i = 0; i < n; i++) out[i >> 1] |= i % 2 ? q.codes[i] << 4 : q.codes[i];
  const tail = new DataView(out.buffer, pad16(Math.ceil(n / 2)));
  if (!q.double) {
    for (let b = 0; b < nb; b++) tail.setFloat32(4 * absmaxSlot(b, q.tiles), q.absmax[b], true);
    return out;
  }
  for (let b = 0; b < nb; b++) tail.setInt8(b, q.double.codes[b]);
  for (let g = 0; g < q.double.scales.length; g++) tail.setFloat32(pad16(nb) + 4 * g, q.double.scales[g], true);
  tail.setFloat32(pad16(nb) + pad16(4 * q.double.scales.length), q.double.mean, true); // then 4 zero bytes
  return out;
}

describe("the host quantizer (kiln_quant.h: the cpu target's, and the cuda target's double quantization) writes the reference's bytes", () => {
  const tmp = mkdtempSync(join(tmpdir(), "kiln-quant4-"));
  const driver = join(tmp, "quant4_driver");
  beforeAll(() => {
    execFileSync(process.env.KILN_CXX ?? "g++", ["-std=c++17", "-O2", "-I", join(import.meta.dirname, "..", "codegen-templates"), "-o", driver, join(import.meta.dirname, "cpu", "quant4_driver.cpp")]);
  }, 120_000);
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  let k = 0;
  test.each([
    ["nf4", false, 64 * 37 + 5, 0],
    ["fp4", false, 64 * 37 + 5, 0],
    ["nf4", true, 64 * 700 + 33, 0], // 700 blocks: three absmax groups of 256, the last partial
    ["fp4", true, 64 * 300, 0],
    ["nf4", false, 24 * 320, 320], // rows of 5 blocks, 24 rows: the tiled layout
    ["nf4", true, 48 * 704, 704], // rows of 11 blocks, 48 rows: tiled, groups across tiles and rows
    ["fp4", true, 40 * 128, 128],
    ["nf4", true, 44 * 128, 128], // 44 rows: not a multiple of 8, block order
  ] as const)("%s, double quant %s, %d weights in rows of %d", (scheme, dq, n, K) => {
    const r = normals(100 + k++);
    // a spread of block scales (absmax from ≈ 1e-3 to ≈ 4), so the absmax codes use their range
    const w = Float32Array.from({ length: n }, (_, i) => r() * 0.02 * Math.exp(4 * Math.sin(i / 64)));
    const want = quantize4(w, scheme, { doubleQuant: dq, rowLength: K });
    expect(want.tiles).toBe(K === 0 || n / K === 44 ? 0 : K / 64);
    const inFile = join(tmp, `in${k}`), outFile = join(tmp, `out${k}`);
    writeFileSync(inFile, Buffer.concat([Buffer.from(Float64Array.from(codeOf(scheme)).buffer), Buffer.from(w.buffer)]));
    execFileSync(driver, [String(n), "64", dq ? "1" : "0", inFile, outFile, String(K)]);
    const got = new Uint8Array(readFileSync(outFile));
    const bytes = layout4(want, n);
    expect(got.length).toBe(bytes.length + 4 * want.absmax.length);
    const bad = bytes.findIndex((v, i) => v !== got[i]);
    expect(bad < 0 ? "all equal" : `byte ${bad} of ${bytes.length}: twin ${got[bad]}, reference ${bytes[bad]}`).toBe("all equal");
    // the absmax the kernels read back (absmax4) is the reference's, bit for bit
    const back = new Float32Array(got.buffer.slice(bytes.length));
    const off = Array.from(back).findIndex((v, b) => !Object.is(v, want.absmax[b]));
    expect(off < 0 ? "all equal" : `block ${off}: twin ${back[off]}, reference ${want.absmax[off]}`).toBe("all equal");
    if (dq) {
      // the double-quantized absmax is max(0, f32(f32(code·scale) + mean)); the same sum taken in
      // f64 and rounded once gives other bits for some blocks, so the comparison above tells them apart
      const d = want.double!;
      const f64 = Array.from(want.absmax, (_, b) => Math.fround(Math.max(0, d.mean + d.codes[b] * d.scales[Math.floor(b / 256)])));
      expect(f64.filter((v, b) => v !== want.absmax[b]).length).toBeGreaterThan(0);
    }
  });
});
