// Greedy decoding on the cuda target (GPU machine: `npm run test:gpu -- test/greedy.gpu.test.ts`),
// the twin of greedy.test.ts and argmax.test.ts (cpu):
//   - the argmax kernel (cuda/kernels.cuh, through an artifact of the op alone) equals the reference
//     interpreter on rows with ties, -Inf, NaN and +Inf, f32 / bf16 / f16, widths 1 to 32001;
//   - generate() with the target's pick (next_token) gives the tokens of the JS path (the same
//     artifact loaded with greedyOnTarget: false: logits downloaded, argmax in sampling.ts), f32
//     and bf16, three generations in a row (the static cache's decode step is replayed as a CUDA
//     graph from the second generation's steps on, and its outputs are handed back from the graph's
//     buffers), and no logits come to the host; generateBatch() on the varlen cache the same.
// Artifacts are compiled here with nvcc into KILN_GPU_ARTIFACTS (default .kiln-cache/gpu), for
// KILN_ARCH (default sm_90a).

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type { Arch } from "../compiler/codegen/build.js";
import { compile } from "../compiler/codegen/compile.js";
import type { CompiledArtifact } from "../compiler/codegen/compile.js";
import type { DType, Tensor } from "../compiler/ir/index.js";
import type { Model } from "../runtime/api.js";
import { loadModel } from "../runtime/api.js";
import type { SamplingOptions } from "../runtime/sampling.js";
import { argmaxKernel, argmaxRows, interpretArgmax, spyOnBinding } from "./argmax-helpers.js";
import { PROMPTS } from "./varlen-helpers.js";

const ROOT = join(import.meta.dirname, "..");
const FIXTURE = join(import.meta.dirname, "fixtures", "llama-gqa");
const cacheDir = process.env.KILN_GPU_ARTIFACTS ?? join(ROOT, ".kiln-cache", "gpu");
const arch = (process.env.KILN_ARCH ?? "sm_90a") as Arch;
const DTYPES = ["f32", "bf16", "f16"] as const;
const kernels = new Map<DType, (x: Tensor) => Promise<number[]>>();
const arts = new Map<string, CompiledArtifact>();
const open: Model[] = [];
const load = async (dir: string, greedyOnTarget?: boolean): Promise<Model> => {
  const m = await loadModel(dir, { checkpoint: FIXTURE, greedyOnTarget });
  open.push(m);
  return m;
};

beforeAll(async () => {
  // nvcc runs in parallel, one process per artifact
  const models = [["f32", "static"], ["bf16", "static"], ["bf16", "varlen"]] as const;
  const [built, ks] = await Promise.all([
    Promise.all(models.map(([dtype, kvCache]) => compile(FIXTURE, { target: "cuda", arch, dtype, kvCache, cacheDir, maxSeq: 64, maxBatch: 4 }))),
    Promise.all(DTYPES.map((d) => argmaxKernel("cuda", d, cacheDir, arch))),
  ]);
  models.forEach(([dtype, kv], i) => arts.set(`${dtype}/${kv}`, built[i]));
  DTYPES.forEach((d, i) => kernels.set(d, ks[i]));
}, 600_000);
afterAll(async () => {
  for (const m of open) await m.dispose();
});

describe("the cuda argmax kernel equals the interpreter", () => {
  test.each(DTYPES.flatMap((d) => [1, 7, 8, 33, 256, 32000, 32001].map((V) => [d, V] as const)))("%s, 18 rows of %i", async (dtype, V) => {
    const x = argmaxRows(dtype, 18, V, 1000 + V);
    const got = await kernels.get(dtype)!(x);
    const want = interpretArgmax(x);
    const bad = want.findIndex((w, r) => got[r] !== w);
    expect(bad < 0 ? "all equal" : `row ${bad}: kernel ${got[bad]}, interpreter ${want[bad]}`).toBe("all equal");
    if (V > 4) expect(want.filter((i) => i === -1).length).toBe(6); // the NaN, +Inf and all-masked rows
  });

});

async function tokens(model: Model, prompt: number[], o: SamplingOptions): Promise<number[]> {
  const out: number[] = [];
  for await (const t of model.generate(prompt, o)) out.push(t.id);
  return out;
}

describe.each(["f32", "bf16"] as const)("generate() on the %s static cache", (dtype) => {
  test("the target's picks = the JS path's tokens, three generations (CUDA graph replay), no logits downloaded", async () => {
    const onTarget = await load(arts.get(`${dtype}/static`)!.dir);
    const onHost = await load(arts.get(`${dtype}/static`)!.dir, false);
    const spy = spyOnBinding(onTarget);
    const prompt = PROMPTS[0];
    for (let i = 0; i < 3; i++) {
      const want = await tokens(onHost, prompt, { maxNewTokens: 24 });
      const got = await tokens(onTarget, prompt, { maxNewTokens: 24 });
      expect([i, got]).toEqual([i, want]);
      expect(new Set(got).size).toBeGreaterThan(1);
    }
    expect(spy.calls.length).toBe(72);
    expect(spy.calls.every((c) => c.logits === false && c.next_token !== false)).toBe(true);
    expect(spy.downloads).toBe(0);
    // pipelined (LoadOptions.pipelineDecode): every decode step queued without waiting, all but
    // the first of each generation fed by the previous step's pick on the GPU
    if (PROMPTS[0].length > 1) {
      expect(spy.queued).toBe(3 * 23);
      expect(spy.fedOnTarget).toBe(3 * 22);
    }
    // a stop token: the step issued past it is dropped, and the next generation is unharmed
    const stop = (await tokens(onHost, prompt, { maxNewTokens: 24 }))[6];
    const cut = await tokens(onTarget, prompt, { maxNewTokens: 24, stopTokens: [stop] });
    expect(cut).toEqual(await tokens(onHost, prompt, { maxNewTokens: 24, stopTokens: [stop] }));
    expect(await tokens(onTarget, prompt, { maxNewTokens: 24 })).toEqual(await tokens(onHost, prompt, { maxNewTokens: 24 }));
    spy.calls.length = 72;
    // sampling still takes the logits, with the same tokens on both
    const o = { maxNewTokens: 12, temperature: 0.8, seed: 5 };
    expect(await tokens(onTarget, prompt, o)).toEqual(await tokens(onHost, prompt, o));
    expect(spy.calls.slice(72).every((c) => c.logits === true)).toBe(true);
  });
});

test("generateBatch() on the bf16 varlen cache: the target's picks = the JS path's tokens, no logits downloaded", async () => {
  const onTarget = await load(arts.get("bf16/varlen")!.dir);
  const onHost = await load(arts.get("bf16/varlen")!.dir, false);
  const spy = spyOnBinding(onTarget);
  const run = async (m: Model) => {
    const rows = PROMPTS.map((): number[] => []);
    for await (const t of m.generateBatch(PROMPTS, { maxNewTokens: 8 })) rows[t.row].push(t.id);
    return rows;
  };
  for (let i = 0; i < 2; i++) expect([i, await run(onTarget)]).toEqual([i, await run(onHost)]);
  expect(spy.calls.every((c) => c.logits === false && c.next_token !== false)).toBe(true);
  expect(spy.downloads).toBe(0);
  // pipelined: of each generation's 8 calls, the 7 decode calls are queued, 6 of them fed on the GPU
  expect([spy.calls.length, spy.queued, spy.fedOnTarget]).toEqual([16, 14, 12]);
});
