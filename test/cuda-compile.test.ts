// CI has nvcc but no GPU: the cuda target of the Llama fixtures must compile for sm_90a and sm_80
// (running it is test/cuda.gpu.test.ts, on the GPU machine).

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { afterAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import { exportedSymbols } from "./helpers.js";

const hasNvcc = (() => {
  try {
    execFileSync(process.env.KILN_NVCC ?? "nvcc", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
const cacheDir = mkdtempSync(join(tmpdir(), "kiln-nvcc-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

// KILN_SKIP_NVCC=1 is for machines without the CUDA toolkit; CI has it, so there a missing nvcc fails
const skip = process.env.KILN_SKIP_NVCC === "1";

(skip ? describe.skip : describe)("the cuda target compiles with nvcc", () => {
  test("nvcc is on the PATH", () => {
    expect({ nvcc: hasNvcc }).toEqual({ nvcc: true });
  });

  // the int8 cases instantiate qlinear8 (LLM.int8's tensor-core kernels) for bf16 and for f32; nf4
  // (bf16 with double quant: runtime-cpu.test.ts) the grouped and paired 4-bit GEMVs for f32 and,
  // in bf16, k_qgemv4p with the norm inside
  test.each([
    ["llama-gqa", "sm_90a", "bf16", false, undefined],
    ["llama-mqa-tied", "sm_80", "f32", false, undefined],
    ["llama3-rope", "sm_90a", "bf16", true, undefined],
    ["llama-gqa", "sm_90a", "bf16", false, "int8"],
    ["llama-gqa", "sm_80", "f32", false, "int8"],
    ["llama-gqa", "sm_80", "f32", false, "nf4"], // grouped q/k/v, paired gate/up (qlinear-groups.ts) on the f32 GEMV
    ["llama-gqa", "sm_90a", "bf16", false, "nf4"], // and on the persistent f16-pair GEMV that computes their RMSNorm (k_qgemv4p)
  ] as const)("%s for %s (%s, padded %s, quant %s)", async (fixture, arch, dtype, padded, quant) => {
    const art = await compile(join(import.meta.dirname, "fixtures", fixture), { target: "cuda", arch, dtype, cacheDir, maxSeq: 64, padded, quant });
    expect(art.manifest.target).toBe("cuda");
    expect(art.manifest.arch).toBe(arch);
    // the library holds device code for exactly that architecture
    const lib = readFileSync(join(art.dir, art.manifest.library));
    expect(lib.includes(Buffer.from(arch))).toBe(true);
    // the library exports its C ABI and nothing of Kiln's own beyond it; in particular no
    // GNU_UNIQUE symbol (a template's static, which the dynamic linker would share between two
    // artifacts loaded in one process)
    const syms = exportedSymbols(join(art.dir, art.manifest.library));
    expect(syms.unique).toEqual([]);
    expect(syms.kiln.filter((s) => !s.startsWith("kiln_"))).toEqual([]);
    expect(syms.kiln).toEqual(expect.arrayContaining(["kiln_forward", "kiln_init", "kiln_last_error", "kiln_quantize4"]));
  }, 300_000);

  test("falcon-alibi with the varlen KV cache (bf16, ALiBi): the varlen cache kernels compile", async () => {
    const art = await compile(join(import.meta.dirname, "fixtures", "falcon-alibi"), { target: "cuda", arch: "sm_90a", dtype: "bf16", cacheDir, maxSeq: 64, kvCache: "varlen" });
    expect(art.manifest.kvCache?.mode).toBe("varlen");
    const src = readFileSync(join(art.dir, "model.cu"), "utf8");
    for (const k of ["varlen_cache_write", "varlen_cache_attention"]) expect(src).toContain(`K::${k}`);
    // fuse-residual's epilogue: dense and dense_4h_to_h take their bias and the residual
    expect(src.match(/K::linear<kiln::bf16>\(v\d+, w\d+, w\d+, v\d+, v\d+,/g)?.length).toBe(4);
  }, 300_000);
});

