// The cuda target on the GPU machine (`npm run test:gpu`; CI never runs it): every decoder fixture
// compiled for CUDA, loaded through the public API, against Hugging Face's logits and greedy tokens.
//   f32 artifacts: logits within 1e-3 (max abs), greedy tokens identical (prefill, then decode
//     against the KV cache: the GEMV path at M ≤ 8, the tiled GEMM at M = 14).
//   bf16 artifacts: logits within 3e-2 relative (‖out − ref‖ / ‖ref‖), argmax agreeing at most
//     positions; cuBLASLt serves the M = 14 linears and the batched attention matmuls.
// Artifacts are compiled here with nvcc into KILN_GPU_ARTIFACTS (default .kiln-cache/gpu); the
// architecture is KILN_ARCH (default sm_90a). Set KILN_GPU_REPORT to a file to get the measured
// errors as JSON. The fallback without cuBLASLt is the same suite run with KILN_NO_CUBLASLT=1 in
// the environment of the jest process (jest sandboxes process.env: setting it inside a test does
// not reach the artifact's getenv).

import { execSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type { Arch } from "../compiler/codegen/build.js";
import { compile } from "../compiler/codegen/compile.js";
import type { CompiledArtifact } from "../compiler/codegen/compile.js";
import { KilnError } from "../compiler/ir/errors.js";
import { loadModel } from "../runtime/api.js";
import { SafetensorsFile } from "../runtime/safetensors.js";

const ROOT = join(import.meta.dirname, "..");
const FIXTURES = join(import.meta.dirname, "fixtures");
const fixtureManifest = JSON.parse(readFileSync(join(FIXTURES, "manifest.json"), "utf8")) as { fixtures: { name: string; family: string; dir: string }[] };
// every decoder fixture: Llama, Falcon (MQA, new architecture, ALiBi), OPT (pre-LN, 350m), BLOOM
const NAMES = fixtureManifest.fixtures.filter((f) => f.family !== "bert").map((f) => f.dir);
const cacheDir = process.env.KILN_GPU_ARTIFACTS ?? join(ROOT, ".kiln-cache", "gpu");
const arch = (process.env.KILN_ARCH ?? "sm_90a") as Arch;
const DTYPES = ["f32", "bf16"] as const;
const arts = new Map<string, CompiledArtifact>();
const report: Record<string, unknown> = {};

const device = (() => {
  try {
    return execSync("nvidia-smi --query-gpu=name --format=csv,noheader", { stdio: ["ignore", "pipe", "ignore"] }).toString().trim().split("\n")[0];
  } catch {
    return "unknown";
  }
})();

beforeAll(async () => {
  // nvcc runs in parallel, one process per artifact
  const jobs = NAMES.flatMap((n) => DTYPES.map((dtype) => ({ n, dtype })));
  const built = await Promise.all(jobs.map(({ n, dtype }) => compile(join(FIXTURES, n), { target: "cuda", arch, dtype, cacheDir, maxSeq: 64 })));
  jobs.forEach(({ n, dtype }, i) => arts.set(`${n}/${dtype}`, built[i]));
}, 600_000);

afterAll(() => {
  report.device = device;
  report.arch = arch;
  if (process.env.KILN_GPU_REPORT) writeFileSync(process.env.KILN_GPU_REPORT, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`cuda target on ${device} (${arch}):\n${JSON.stringify(report, null, 1)}`);
});

const reference = (n: string) => {
  const ref = SafetensorsFile.open(join(FIXTURES, n, "reference.safetensors"));
  const ids = Array.from(ref.toFloat64("input_ids"));
  return { ids: [ids.slice(0, 7), ids.slice(7, 14)], logits: ref.toFloat32("logits"), greedy: Array.from(ref.toFloat64("greedy_ids")) };
};

/** max abs error, relative L2 error, and positions whose argmax agrees (rows of V logits). */
function compare(got: Float32Array, want: Float32Array, V: number): { maxAbs: number; rel: number; sameArgmax: number; rows: number } {
  let maxAbs = 0, num = 0, den = 0, same = 0;
  const rows = want.length / V;
  for (let r = 0; r < rows; r++) {
    let a = 0, b = 0;
    for (let v = 0; v < V; v++) {
      const i = r * V + v;
      const d = got[i] - want[i];
      if (!(Math.abs(d) <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : Math.abs(d);
      num += d * d;
      den += want[i] * want[i];
      if (got[i] > got[r * V + a]) a = v;
      if (want[i] > want[r * V + b]) b = v;
    }
    if (a === b) same++;
  }
  return { maxAbs, rel: Math.sqrt(num / den), sameArgmax: same, rows };
}

describe.each(NAMES)("%s on the cuda target", (name) => {
  test("f32: forward within 1e-3 of Hugging Face; greedy generation gives its tokens", async () => {
    const { ids, logits, greedy } = reference(name);
    await using model = await loadModel(arts.get(`${name}/f32`)!.dir, { checkpoint: join(FIXTURES, name) });
    expect(model.target).toBe("cuda");
    const out = await model.forward(ids);
    expect(out.shape).toEqual([2, 7, 256]);
    const c = compare(out.logits, logits, 256);
    const got: number[] = [];
    for await (const t of model.generate(greedy.slice(0, 7), { maxNewTokens: greedy.length - 7 })) got.push(t.id);
    report[`${name}/f32`] = { ...c, greedyTokens: `${got.filter((t, i) => t === greedy[7 + i]).length}/${greedy.length - 7}` };
    expect(c.maxAbs).toBeLessThanOrEqual(1e-3);
    expect(got).toEqual(greedy.slice(7));
  });

  test("bf16: forward within 3e-2 relative of Hugging Face, argmax mostly the same; generation runs", async () => {
    const { ids, logits, greedy } = reference(name);
    await using model = await loadModel(arts.get(`${name}/bf16`)!.dir, { checkpoint: join(FIXTURES, name) });
    const out = await model.forward(ids);
    const c = compare(out.logits, logits, 256);
    // a prompt of one row: the same logits for the last position as the batched forward (row 0)
    const single = await model.forward(ids[0]);
    const rowDiff = compare(single.logits, out.logits.subarray(0, 7 * 256), 256);
    const got: number[] = [];
    for await (const t of model.generate(greedy.slice(0, 7), { maxNewTokens: greedy.length - 7 })) got.push(t.id);
    let agree = 0;
    while (agree < got.length && got[agree] === greedy[7 + agree]) agree++;
    report[`${name}/bf16`] = { ...c, batchVsSingleRel: rowDiff.rel, greedyPrefixAgreeing: `${agree}/${greedy.length - 7}` };
    expect(c.rel).toBeLessThan(3e-2);
    // bf16 rounding flips near-tied argmaxes (opt's fixture has several): mostly, not all
    expect(c.sameArgmax).toBeGreaterThanOrEqual(10);
    expect(rowDiff.rel).toBeLessThan(2e-2);
    expect(got).toHaveLength(greedy.length - 7);
    expect(got.every((t) => Number.isInteger(t) && t >= 0 && t < 256)).toBe(true);
  });
});

test("an out-of-range token id reaching the artifact is a clear error, and the artifact keeps working", async () => {
  const name = "llama-gqa";
  const { ids, logits } = reference(name);
  await using model = await loadModel(arts.get(`${name}/f32`)!.dir, { checkpoint: join(FIXTURES, name) });
  // past the API's own check: straight to the artifact's gather
  const m = model as unknown as { run(ids: BigInt64Array, B: number, S: number, cache: Map<string, unknown>, position: number): Promise<unknown>; newCache(B: number, C: number): Map<string, unknown> };
  let err: unknown;
  try {
    await m.run(BigInt64Array.from([3n, 999n, 5n]), 1, 3, m.newCache(1, 3), 0);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(KilnError);
  expect((err as KilnError).message).toMatch(/index 999 at position 1 is out of range \[0, 256\)/);
  const out = await model.forward(ids);
  expect(compare(out.logits, logits, 256).maxAbs).toBeLessThanOrEqual(1e-3);
});

describe("packed batches on the cuda target (unpad-varlen, the tiled varlen attention)", () => {
  test("bert, padded (packed) in bf16 and f32: Hugging Face's hidden states at real tokens and its pooled output", async () => {
    const root = join(FIXTURES, "bert");
    const ref = SafetensorsFile.open(join(root, "reference.safetensors"));
    const rows = (x: number[]) => [x.slice(0, 7), x.slice(7, 14)];
    const ids = rows(Array.from(ref.toFloat64("input_ids"))), types = rows(Array.from(ref.toFloat64("token_type_ids"))), mask = rows(Array.from(ref.toFloat64("attention_mask")));
    const hidden = ref.toFloat32("last_hidden_state"), pooled = ref.toFloat32("pooler_output");
    const H = 64;
    for (const [dtype, tol] of [["f32", 1e-3], ["bf16", 6e-2]] as const) {
      const art = await compile(root, { target: "cuda", arch, dtype, padded: true, cacheDir, maxSeq: 32 });
      expect(art.manifest.inputs.map((i) => i.name)).toEqual(["input_ids", "cu_seqlens", "token_type_ids"]);
      await using model = await loadModel(art.dir, { checkpoint: root });
      const out = await model.encode(ids, { tokenTypeIds: types, attentionMask: mask });
      let maxAbs = 0;
      mask.flat().forEach((m, t) => {
        if (m) for (let h = 0; h < H; h++) maxAbs = Math.max(maxAbs, Math.abs(out.lastHiddenState[t * H + h] - hidden[t * H + h]));
      });
      let pooledAbs = 0;
      for (let i = 0; i < pooled.length; i++) pooledAbs = Math.max(pooledAbs, Math.abs(out.poolerOutput![i] - pooled[i]));
      report[`bert/${dtype}/packed`] = { maxAbs, pooledAbs };
      expect(maxAbs).toBeLessThanOrEqual(tol);
      expect(pooledAbs).toBeLessThanOrEqual(tol);
    }
  }, 300_000);

  test("llama-gqa packed prefill (kvCache none): each row's logits equal the row alone", async () => {
    const name = "llama-gqa";
    const art = await compile(join(FIXTURES, name), { target: "cuda", arch, dtype: "f32", padded: true, kvCache: "none", cacheDir, maxSeq: 64 });
    expect(art.manifest.inputs.map((i) => i.name)).toEqual(["input_ids", "cu_seqlens"]);
    await using packed = await loadModel(art.dir, { checkpoint: join(FIXTURES, name) });
    await using single = await loadModel(arts.get(`${name}/f32`)!.dir, { checkpoint: join(FIXTURES, name) });
    // 20 and 33 tokens: long enough (S ≥ 16) for the tiled varlen kernel
    const prompts = [Array.from({ length: 20 }, (_, i) => (i * 37) % 256), Array.from({ length: 33 }, (_, i) => (i * 11 + 5) % 256)];
    const out = await packed.forward(prompts);
    const S = out.shape[1];
    let maxAbs = 0;
    for (const [b, p] of prompts.entries()) {
      const alone = await single.forward([p]);
      for (let s = 0; s < p.length; s++)
        for (let v = 0; v < 256; v++) maxAbs = Math.max(maxAbs, Math.abs(out.logits[(b * S + S - p.length + s) * 256 + v] - alone.logits[s * 256 + v]));
    }
    report[`${name}/f32/packed`] = { maxAbs };
    expect(maxAbs).toBeLessThanOrEqual(1e-3);
  }, 300_000);
});
