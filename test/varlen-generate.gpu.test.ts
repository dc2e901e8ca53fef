// Batched generation on the varlen KV cache, cuda target, on the GPU machine
// (`npm run test:gpu -- varlen-generate`; CI compiles the kernels in cuda-compile.test.ts and runs
// the cpu twin, varlen-generate.test.ts). Llama (RoPE, GQA) and Falcon with ALiBi:
//   f32: generateBatch on 4 prompts of 1..12 tokens gives each prompt's greedy tokens of generate()
//     alone on a static-cache artifact, logits within 1e-4; the calls compute 23 tokens, then one
//     per unfinished row; rows with their own maxNewTokens / stop token leave at once. Capacity 128
//     makes the decode attention split the keys (2 splits of 64), and the repeated decode shapes
//     are replayed as CUDA graphs.
//   bf16: every row's first-step logits within 3e-2 relative of the static artifact's (later steps
//     compared while the tokens agree), the same first token in 3 rows of 4 at least.
// Artifacts go to KILN_GPU_ARTIFACTS (default .kiln-cache/gpu), arch KILN_ARCH (default sm_90a).

import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import type { Arch } from "../compiler/codegen/build.js";
import { compile } from "../compiler/codegen/compile.js";
import type { Model } from "../runtime/api.js";
import { loadModel } from "../runtime/api.js";
import { expectedTokensPerCall, maxAbsDiff, PROMPTS, relErr, runAlone, runBatch } from "./varlen-helpers.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const NAMES = ["llama-gqa", "falcon-alibi"];
const DTYPES = ["f32", "bf16"] as const;
const cacheDir = process.env.KILN_GPU_ARTIFACTS ?? join(import.meta.dirname, "..", ".kiln-cache", "gpu");
const arch = (process.env.KILN_ARCH ?? "sm_90a") as Arch;
const models = new Map<string, { batch: Model; alone: Model }>();
const report: Record<string, unknown> = {};

beforeAll(async () => {
  const jobs = NAMES.flatMap((n) => DTYPES.map((dtype) => ({ n, dtype })));
  const built = await Promise.all(
    jobs.flatMap(({ n, dtype }) => [
      compile(join(FIXTURES, n), { target: "cuda", arch, dtype, cacheDir, maxSeq: 128, maxBatch: 4, kvCache: "varlen" }),
      compile(join(FIXTURES, n), { target: "cuda", arch, dtype, cacheDir, maxSeq: 64 }),
    ]),
  );
  for (const [i, { n, dtype }] of jobs.entries()) {
    const ckpt = { checkpoint: join(FIXTURES, n) };
    models.set(`${n}/${dtype}`, { batch: await loadModel(built[2 * i].dir, ckpt), alone: await loadModel(built[2 * i + 1].dir, ckpt) });
  }
}, 600_000);

afterAll(async () => {
  for (const m of models.values()) await Promise.all([m.batch.dispose(), m.alone.dispose()]);
  console.log(`varlen generate, cuda (${arch}):\n${JSON.stringify(report, null, 1)}`);
});

describe.each(NAMES)("%s, cuda, f32", (name) => {
  test("greedy generateBatch gives each prompt's tokens alone, logits within 1e-4, on real tokens only", async () => {
    const { batch, alone } = models.get(`${name}/f32`)!;
    const got = await runBatch(batch, PROMPTS, { maxNewTokens: 8 });
    let worst = 0;
    for (const [r, p] of PROMPTS.entries()) {
      const ref = await runAlone(alone, p, { maxNewTokens: 8 });
      expect({ row: r, tokens: got.tokens[r] }).toEqual({ row: r, tokens: ref.tokens });
      ref.logits.forEach((l, k) => (worst = Math.max(worst, maxAbsDiff(got.logits[r][k], l))));
    }
    report[`${name}/f32 max abs logit error`] = worst;
    expect(worst).toBeLessThanOrEqual(1e-4);
    expect(got.result.stats.tokensPerCall).toEqual([23, 4, 4, 4, 4, 4, 4, 4]);
  });

  test("rows with their own maxNewTokens and stop token leave at once; the calls shrink", async () => {
    const { batch, alone } = models.get(`${name}/f32`)!;
    const free = await runBatch(batch, PROMPTS, { maxNewTokens: 6 });
    const stop = free.tokens[2][2];
    const options = [{ maxNewTokens: 2 }, { maxNewTokens: 6 }, { maxNewTokens: 6, stopTokens: [stop] }, { maxNewTokens: 4 }];
    const got = await runBatch(batch, PROMPTS, options);
    const ends = [2, 6, free.tokens[2].indexOf(stop) + 1, 4];
    expect(got.tokens.map((t) => t.length)).toEqual(ends);
    expect(got.result.stats.tokensPerCall).toEqual(expectedTokensPerCall(PROMPTS, ends));
    for (const [r, p] of PROMPTS.entries()) expect(got.tokens[r]).toEqual((await runAlone(alone, p, options[r])).tokens);
  });
});

describe.each(NAMES)("%s, cuda, bf16", (name) => {
  test("each row's logits within 3e-2 relative of the row alone while the tokens agree; the first token agrees in 3 rows of 4 at least", async () => {
    const { batch, alone } = models.get(`${name}/bf16`)!;
    const got = await runBatch(batch, PROMPTS, { maxNewTokens: 6 });
    let worst = 0, sameFirst = 0;
    for (const [r, p] of PROMPTS.entries()) {
      const ref = await runAlone(alone, p, { maxNewTokens: 6 });
      if (got.tokens[r][0] === ref.tokens[0]) sameFirst++;
      for (let k = 0; k < ref.tokens.length && (k === 0 || got.tokens[r][k - 1] === ref.tokens[k - 1]); k++) worst = Math.max(worst, relErr(got.logits[r][k], ref.logits[k]));
    }
    report[`${name}/bf16`] = { worstRelativeLogitError: worst, sameFirstToken: `${sameFirst}/4` };
    expect(worst).toBeLessThanOrEqual(3e-2);
    expect(sameFirst).toBeGreaterThanOrEqual(3);
    expect(got.result.stats.tokensPerCall).toEqual([23, 4, 4, 4, 4, 4]);
  });
});
