// bench/int8gemm.cu (the LLM.int8 GPU check) computes its reference on Kiln's stream, which the
// runtime creates non-blocking: a plain cudaMemcpy / cudaMemset runs on the legacy default stream
// and does not wait for it. On 2026-11-25 that made the check read a half-written reference
// (K = 11008 "wrong" in every variant, ≈ 0.9 relative error) and x before its bf16 conversion
// (the K = 202 edge "inf", from a freed buffer's NaN bytes). The harness copies and fills through
// copy() / fill() on Kiln's stream; this keeps it that way without a GPU.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect, test } from "@jest/globals";

const root = join(import.meta.dirname, "..");
const code = (path: string) => readFileSync(join(root, path), "utf8").replace(/\/\/.*$/gm, "");

test("Kiln's stream is non-blocking, and bench/int8gemm.cu orders every copy and fill on it", () => {
  expect(code("codegen-templates/cuda/runtime.cuh")).toMatch(/cudaStreamCreateWithFlags\(&s\.stream, cudaStreamNonBlocking\)/);
  const bench = code("bench/int8gemm.cu");
  expect(bench.match(/\bcuda(Memcpy|Memset)\s*\(/g) ?? []).toEqual([]);
  expect(bench).toMatch(/cudaMemcpyAsync\(dst, src, bytes, cudaMemcpyDefault, s\)[^]*cudaStreamSynchronize\(s\)/);
  expect(bench.match(/\bcopy\(/g)?.length).toBeGreaterThanOrEqual(10);
});
