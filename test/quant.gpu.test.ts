// Quantized linears on the cuda target (`npm run test:gpu`; CI only compiles them): for nf4 and fp4
// (± double quantization) and LLM.int8 (threshold 6, and 0.5 so that the outlier decomposition
// really runs) on test/fixtures/llama-gqa, f32 and bf16 artifacts:
//   - the weights quantized on load on the GPU (kiln_quantize4/8) are byte for byte the cpu twin's
//     (downloaded and compared): the dequantized weights are then bit for bit the same;
//   - the logits of forward at M = 14 (prefill: dequantize + GEMM, int8 tensor-core GEMM), M = 3
//     and M = 1 (the fused GEMVs) are within tolerance of the reference interpreter running the
//     same quantized graph (qlinear's semantics: compiler/ir/quant.ts).
// KILN_GPU_ARTIFACTS: where artifacts are built (default .kiln-cache/gpu); KILN_QUANT_PREBUILT: a
// folder of artifacts compiled elsewhere, <target>-<dtype>-<case> (`kiln compile … --out`; saves
// nvcc time on the GPU machine); KILN_GPU_REPORT_QUANT: a file for the measured errors as JSON.

import { cpSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import type { Arch } from "../compiler/codegen/build.js";
import { compile } from "../compiler/codegen/compile.js";
import type { CompileOptions } from "../compiler/codegen/compile.js";
import type { Graph } from "../compiler/ir/index.js";
import { initialCache, parse, run, tensor } from "../compiler/ir/index.js";
import { loadModel } from "../runtime/api.js";
import { openCheckpoint, SafetensorsFile } from "../runtime/safetensors.js";

const ROOT = join(import.meta.dirname, "..");
const FIX = join(import.meta.dirname, "fixtures", "llama-gqa");
const cacheDir = process.env.KILN_GPU_ARTIFACTS ?? join(ROOT, ".kiln-cache", "gpu");
const arch = (process.env.KILN_ARCH ?? "sm_90a") as Arch;
const report: Record<string, unknown> = {};
afterAll(() => {
  if (process.env.KILN_GPU_REPORT_QUANT) writeFileSync(process.env.KILN_GPU_REPORT_QUANT, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`quantized linears on the cuda target:\n${JSON.stringify(report, null, 1)}`);
});

type Q = Pick<CompileOptions, "quant" | "doubleQuant" | "int8Threshold">;
const CASES: [string, string, Q][] = [
  ["nf4", "nf4", { quant: "nf4" }],
  ["nf4+dq", "nf4dq", { quant: "nf4", doubleQuant: true }],
  ["fp4", "fp4", { quant: "fp4" }],
  ["fp4+dq", "fp4dq", { quant: "fp4", doubleQuant: true }],
  ["int8", "int8", { quant: "int8" }],
  ["int8 threshold 0.5", "int8t05", { quant: "int8", int8Threshold: 0.5 }],
];
const DTYPES = ["f32", "bf16"] as const;

interface Internals {
  art: { download(t: unknown): Promise<ArrayBuffer> };
  weights: unknown[];
}

const ids = (() => {
  const ref = SafetensorsFile.open(join(FIX, "reference.safetensors"));
  const all = Array.from(ref.toFloat64("input_ids"));
  return [all.slice(0, 7), all.slice(7, 14)];
})();

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): { rel: number; maxAbs: number } {
  let num = 0, den = 0, maxAbs = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
    maxAbs = Math.max(maxAbs, Number.isNaN(d) ? Infinity : Math.abs(d));
  }
  return { rel: Math.sqrt(num / den), maxAbs };
}

/** The artifact's folder and its (quantized) graph: prebuilt, or compiled here. */
async function artifact(target: "cuda" | "cpu", dtype: string, slug: string, q: Q): Promise<{ dir: string; graph: Graph; manifest: { weights: { quant?: unknown }[] } }> {
  const pre = process.env.KILN_QUANT_PREBUILT && join(process.env.KILN_QUANT_PREBUILT, `${target}-${dtype}-${slug}`);
  if (pre && existsSync(join(pre, "manifest.json")))
    return { dir: pre, graph: parse(readFileSync(join(pre, "model.kir"), "utf8")), manifest: JSON.parse(readFileSync(join(pre, "manifest.json"), "utf8")) };
  return compile(FIX, { target, arch, dtype: dtype as "f32" | "bf16", cacheDir, maxSeq: 64, ...q });
}

describe.each(DTYPES)("%s artifacts", (dtype) => {
  test.each(CASES)("%s: GPU-quantized weights equal the cpu twin's bytes; logits within tolerance of the interpreter", async (label, slug, q) => {
    const [gpuArt, cpuArt] = await Promise.all([artifact("cuda", dtype, slug, q), artifact("cpu", dtype, slug, q)]);
    await using gpu = await loadModel(gpuArt.dir, { checkpoint: FIX });
    await using cpu = await loadModel(cpuArt.dir, { checkpoint: FIX });
    // bytes of every quantized weight
    const g = gpu as unknown as Internals, c = cpu as unknown as Internals;
    let compared = 0, differing = 0, bytes = 0;
    for (let i = 0; i < gpuArt.manifest.weights.length; i++) {
      if (!gpuArt.manifest.weights[i].quant) continue;
      const a = new Uint8Array(await g.art.download(g.weights[i]));
      const b = new Uint8Array(await c.art.download(c.weights[i]));
      compared++;
      bytes += a.length;
      if (a.length !== b.length || a.some((x, k) => x !== b[k])) differing++;
    }
    // logits against the interpreter on the same quantized graph, at three row counts
    const ck = openCheckpoint(FIX);
    const weights = Object.fromEntries(gpuArt.graph.params.map((p) => [p.name, { dtype: p.dtype, shape: ck.info(p.name).shape, data: ck.toFloat32(p.name) }]));
    ck.close();
    const errs: Record<string, { rel: number; maxAbs: number; cpuRel: number }> = {};
    for (const [m, rows] of [["M=14", ids], ["M=3", [ids[0].slice(0, 3)]], ["M=1", [ids[1].slice(0, 1)]]] as const) {
      const S = rows[0].length;
      const want = run(gpuArt.graph, { input_ids: tensor("i64", [rows.length, S], rows.flat()), ...initialCache(gpuArt.graph, rows.length, S) }, weights).logits.data;
      const got = (await gpu.forward(rows.map((r) => [...r]))).logits;
      const twin = (await cpu.forward(rows.map((r) => [...r]))).logits;
      errs[m] = { ...relErr(got, want), cpuRel: relErr(twin, want).rel };
    }
    report[`${dtype} ${label}`] = { quantizedWeights: compared, bytes, differing, logits: errs };
    expect(compared).toBe(14);
    expect(differing).toBe(0);
    // f32: the GEMV's f32 accumulation and f32 activation quantization against f64 in the reference;
    // bf16: the interpreter rounds every op to bf16 where the kernels keep f32 inside a fused op, so
    // even the cpu twin is a few % off it: the GPU may be off by 1.5× the twin's error + 1e-2
    for (const e of Object.values(errs)) expect(e.rel).toBeLessThan(dtype === "f32" ? 2e-3 : 1.5 * e.cpuRel + 1e-2);
  }, 600_000);
});

// The int8 prefill product by each of its kernels (KILN_INT8_GEMM; read once per loaded artifact
// library, so each mode loads its own copy of the artifact): on the H100 "wgmma" is Hopper's int8
// wgmma kernel with the whole epilogue, "lt" cuBLASLt's int32 GEMM + Kiln's epilogue, "own" the
// mma.sync kernel. Every mode's logits at M = 14 and M = 2 × 32 are within tolerance of the
// interpreter, as the auto-chosen one's are above, and the modes agree with each other.
describe("LLM.int8 prefill kernels", () => {
  test.each([
    ["int8", "int8", { quant: "int8" }],
    ["int8 threshold 0.5", "int8t05", { quant: "int8", int8Threshold: 0.5 }],
  ] as [string, string, Q][])("%s, bf16: wgmma, lt and own give the interpreter's logits", async (label, slug, q) => {
    const art = await artifact("cuda", "bf16", slug, q);
    const ck = openCheckpoint(FIX);
    const weights = Object.fromEntries(art.graph.params.map((p) => [p.name, { dtype: p.dtype, shape: ck.info(p.name).shape, data: ck.toFloat32(p.name) }]));
    const vocab = ck.info("model.embed_tokens.weight").shape[0];
    ck.close();
    const long = [0, 1].map((r) => Array.from({ length: 32 }, (_, i) => (r * 977 + i * 131 + 7) % vocab));
    const cases = [["M=14", ids], ["M=64", long]] as const;
    const want = cases.map(([, rows]) => run(art.graph, { input_ids: tensor("i64", [rows.length, rows[0].length], rows.flat()), ...initialCache(art.graph, rows.length, rows[0].length) }, weights).logits.data);
    const twin: Float32Array[] = [];
    {
      await using cpu = await loadModel((await artifact("cpu", "bf16", slug, q)).dir, { checkpoint: FIX });
      for (const [, rows] of cases) twin.push((await cpu.forward(rows.map((r) => [...r]))).logits);
    }
    const got: Record<string, Float32Array[]> = {};
    for (const mode of ["wgmma", "lt", "own"]) {
      const copy = `${art.dir}-${mode}`;
      cpSync(art.dir, copy, { recursive: true });
      process.env.KILN_INT8_GEMM = mode;
      try {
        await using m = await loadModel(copy, { checkpoint: FIX });
        got[mode] = [];
        for (const [, rows] of cases) got[mode].push((await m.forward(rows.map((r) => [...r]))).logits);
      } finally {
        delete process.env.KILN_INT8_GEMM;
        rmSync(copy, { recursive: true, force: true });
      }
    }
    const errs: Record<string, number> = {};
    const bound: Record<string, number> = {};
    cases.forEach(([m], i) => {
      const cpuRel = relErr(twin[i], want[i]).rel;
      errs[`cpu twin ${m}`] = cpuRel;
      // as above: the interpreter rounds every op to bf16, so the GPU may be off it by 1.5× the twin's error + 1e-2
      for (const mode of Object.keys(got)) (errs[`${mode} ${m}`] = relErr(got[mode][i], want[i]).rel), (bound[`${mode} ${m}`] = 1.5 * cpuRel + 1e-2);
      errs[`wgmma vs lt ${m}`] = relErr(got.wgmma[i], got.lt[i]).rel;
      bound[`wgmma vs lt ${m}`] = cpuRel + 1e-2;  // two f32 epilogues whose bf16 roundings may part by an ulp
    });
    report[`bf16 ${label} prefill kernels`] = errs;
    for (const [k, b] of Object.entries(bound)) expect([k, errs[k] < b]).toEqual([k, true]);
  }, 600_000);
});

// The two prompts' greedy tokens (24 each) from an artifact folder.
const greedy48 = async (dir: string): Promise<number[]> => {
  await using m = await loadModel(dir, { checkpoint: FIX });
  const out: number[] = [];
  for (let r = 0; r < 2; r++) for await (const t of m.generate(ids[r], { maxNewTokens: 24 })) out.push(t.id);
  return out;
};
// greedy48 on a copy of the artifact loaded with `env` set: the runtime switches are read once per
// loaded library, so the copy is a library of its own
const greedy48With = async (dir: string, tag: string, env: Record<string, string>): Promise<number[]> => {
  const copy = `${dir}-${tag}`;
  cpSync(dir, copy, { recursive: true });
  for (const [k, v] of Object.entries(env)) process.env[k] = v;
  try {
    return await greedy48(copy);
  } finally {
    for (const k of Object.keys(env)) delete process.env[k];
    rmSync(copy, { recursive: true, force: true });
  }
};

// RoPE and the static cache's writes done by a decode step's q/k/v call (compiler/codegen/rope-fusion.ts):
// nf4/fp4 in k_qgemv4p's epilogue, nf4 + dq (k_qgemv4v) by one launch after the GEMV. Greedy decode
// with it (the default) and without (KILN_FUSE_ROPE=0: the rotary ops and cache writes as their own
// kernels; read once per loaded library, so that run loads a copy of the artifact) gives the same
// tokens: at the fixture's head dim (8) the fused GEMV's rows sit in the same slots as the plain
// one's, and the RoPE arithmetic is the rotary kernel's, so the two runs compute the same bits.
describe("RoPE and the cache writes in the q/k/v call (decode)", () => {
  test.each([
    ["nf4", "nf4", { quant: "nf4" }],
    ["nf4+dq", "nf4dq", { quant: "nf4", doubleQuant: true }],
    ["fp4", "fp4", { quant: "fp4" }],
  ] as [string, string, Q][])("%s, bf16: the same greedy tokens fused and not", async (label, slug, q) => {
    const art = await artifact("cuda", "bf16", slug, q);
    expect(readFileSync(join(art.dir, "model.cu"), "utf8")).toMatch(/const bool rf\d+ = K::rope_fused\(/);
    const fused = await greedy48(art.dir);
    const plain = await greedy48With(art.dir, "unfused", { KILN_FUSE_ROPE: "0" });
    const twin = await greedy48((await artifact("cpu", "bf16", slug, q)).dir);
    report[`bf16 ${label} rope fusion`] = { tokens: fused.length, sameAsUnfused: fused.every((t, i) => t === plain[i]), sameAsCpuTwin: fused.filter((t, i) => t === twin[i]).length };
    expect(fused).toHaveLength(48);
    expect(fused).toEqual(plain);
  }, 600_000);
});

// Programmatic dependent launch of the 4-bit decode GEMV (k_qgemv4p: its set-up and first weight
// loads overlap the previous kernel's tail, then griddepcontrol.wait before it reads x) changes when
// a kernel starts, never what it computes: greedy decode with it (the default) and with plain
// launches of the same kernels (KILN_PDL=0 with KILN_Q4P=all, so o, down and the double-quantized
// GEMVs stay on k_qgemv4p; read once per loaded library, so that run loads a copy) gives the same
// tokens, bit for bit in every step's argmax.
describe("programmatic dependent launch of the 4-bit decode GEMV", () => {
  test.each([
    ["nf4", "nf4", { quant: "nf4" }],
    ["nf4+dq", "nf4dq", { quant: "nf4", doubleQuant: true }],
  ] as [string, string, Q][])("%s, bf16: the same greedy tokens as plain launches", async (label, slug, q) => {
    const art = await artifact("cuda", "bf16", slug, q);
    const dependent = await greedy48(art.dir);
    const plain = await greedy48With(art.dir, "plain-launch", { KILN_PDL: "0", KILN_Q4P: "all" });
    report[`bf16 ${label} programmatic dependent launch`] = { tokens: dependent.length, sameAsPlain: dependent.every((t, i) => t === plain[i]) };
    expect(dependent).toHaveLength(48);
    expect(dependent).toEqual(plain);
  }, 600_000);
});
