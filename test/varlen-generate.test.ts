// Batched generation on the varlen KV cache, compiled for the cpu target (CI): generateBatch on
// prompts of different lengths gives each prompt's tokens and logits of generate() alone, computes
// only real tokens (every prompt once at prefill, then one token per unfinished row), and rows that
// end early leave the batch at once. The gpu twin is varlen-generate.gpu.test.ts.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import type { CompiledArtifact } from "../compiler/codegen/compile.js";
import type { Model } from "../runtime/api.js";
import { loadModel } from "../runtime/api.js";
import { expectKilnError } from "./helpers.js";
import { expectedTokensPerCall, maxAbsDiff, PROMPTS, runAlone, runBatch } from "./varlen-helpers.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
// Llama (RoPE, GQA), Falcon with ALiBi, OPT (learned positions)
const NAMES = ["llama-gqa", "falcon-alibi", "opt"];
const tmp = mkdtempSync(join(tmpdir(), "kiln-vgen-"));
const cacheDir = join(tmp, "cache");
const models = new Map<string, { batch: Model; alone: Model; art: CompiledArtifact }>();

beforeAll(async () => {
  for (const n of NAMES) {
    const ckpt = { checkpoint: join(FIXTURES, n) };
    const art = await compile(join(FIXTURES, n), { target: "cpu", cacheDir, maxSeq: 64, maxBatch: 4, kvCache: "varlen" });
    const alone = await compile(join(FIXTURES, n), { target: "cpu", cacheDir, maxSeq: 64 });
    models.set(n, { batch: await loadModel(art.dir, ckpt), alone: await loadModel(alone.dir, ckpt), art });
  }
}, 300_000);
afterAll(async () => {
  for (const m of models.values()) await Promise.all([m.batch.dispose(), m.alone.dispose()]);
  rmSync(tmp, { recursive: true, force: true });
});

describe.each(NAMES)("%s with the varlen KV cache", (name) => {
  test("the artifact is packed: tokens [1, T], a cache row per sequence", () => {
    const { art } = models.get(name)!;
    expect(art.manifest.inputs.slice(0, 4).map((i) => `${i.name}: ${i.dtype}[${i.shape.join(", ")}]`)).toEqual([
      "input_ids: i64[1, T]", "cu_seqlens: i32[N+1]", "cache_slot: i32[N]", "cache_position: i64[N]",
    ]);
    expect(art.manifest.kvCache).toMatchObject({ mode: "varlen", slot: "cache_slot", position: "cache_position" });
    expect(art.manifest.outputs[0]).toMatchObject({ name: "logits", shape: ["N", 1, 256] });
    expect(art.manifest.outputs[1]).toMatchObject({ name: "next_token", dtype: "i64", shape: ["N", 1] });
    expect(art.manifest.outputs.slice(2).every((o) => o.aliases === o.name.replace("present.", "past."))).toBe(true);
  });

  test("greedy generateBatch gives each prompt's tokens of generate() alone, logits within 1e-5, on real tokens only", async () => {
    const { batch, alone } = models.get(name)!;
    const got = await runBatch(batch, PROMPTS, { maxNewTokens: 6 });
    let worst = 0;
    for (const [r, p] of PROMPTS.entries()) {
      const ref = await runAlone(alone, p, { maxNewTokens: 6 });
      expect(got.tokens[r]).toEqual(ref.tokens);
      ref.logits.forEach((l, k) => (worst = Math.max(worst, maxAbsDiff(got.logits[r][k], l))));
      expect(got.result.rows[r]).toEqual({ reason: "length", tokens: ref.tokens });
    }
    expect(worst).toBeLessThanOrEqual(1e-5);
    // one packed prefill of the 23 real tokens, then 4 rows of one token each
    expect(got.result.stats.tokensPerCall).toEqual([23, 4, 4, 4, 4, 4]);
    expect(got.result.stats.rowsPerCall).toEqual([4, 4, 4, 4, 4, 4]);
  });
});

describe("rows that end early leave the batch", () => {
  test("different maxNewTokens and stop tokens: each row ends where it would alone, and the calls shrink", async () => {
    const { batch, alone } = models.get("llama-gqa")!;
    const free = await runBatch(batch, PROMPTS, { maxNewTokens: 6 });
    // row 1 stops at the token it makes second; row 3 gets 1 token, row 0 gets 4
    const stop = free.tokens[1][1];
    const options = [{ maxNewTokens: 4 }, { maxNewTokens: 6, stopTokens: [stop] }, { maxNewTokens: 6 }, { maxNewTokens: 1 }];
    const got = await runBatch(batch, PROMPTS, options);
    const ends = [4, free.tokens[1].indexOf(stop) + 1, 6, 1];
    expect(got.tokens.map((t) => t.length)).toEqual(ends);
    expect(got.result.rows.map((r) => r.reason)).toEqual(["length", "stop", "length", "length"]);
    for (const [r, p] of PROMPTS.entries()) expect(got.tokens[r]).toEqual((await runAlone(alone, p, options[r])).tokens);
    const calls = got.result.stats.tokensPerCall;
    expect(calls).toEqual(expectedTokensPerCall(PROMPTS, ends));
    // never more than the real tokens: the prompts at prefill, the rows still running after
    expect(calls[0]).toBe(PROMPTS.reduce((a, p) => a + p.length, 0));
    calls.slice(1).forEach((c, k) => expect(c).toBe(ends.filter((e) => e > k + 1).length));
    expect(got.result.stats.rowsPerCall).toEqual([4, ...calls.slice(1)]);
    // tokens come tagged with their row, in order within each row
    for (const [r] of PROMPTS.entries()) expect(got.order.filter(([row]) => row === r).map(([, i]) => i)).toEqual([...Array(ends[r]).keys()]);
  });

  test("a row with maxNewTokens 0 never runs; sampling with a seed gives each row what generate() gives alone", async () => {
    const { batch, alone } = models.get("falcon-alibi")!;
    const sampling = { maxNewTokens: 5, temperature: 0.9, topK: 20, seed: 7 };
    const got = await runBatch(batch, PROMPTS, [sampling, { maxNewTokens: 0 }, sampling, sampling]);
    expect(got.tokens[1]).toEqual([]);
    expect(got.result.stats.tokensPerCall).toEqual([20, 3, 3, 3, 3]);
    for (const r of [0, 2, 3]) expect(got.tokens[r]).toEqual((await runAlone(alone, PROMPTS[r], sampling)).tokens);
  });

  test("a second batch reuses the cache rows and reads none of the first batch's keys", async () => {
    const { batch, alone } = models.get("opt")!;
    await runBatch(batch, PROMPTS, { maxNewTokens: 3 });
    const prompts = [[9, 9, 9], [100, 101, 102, 103, 104, 105, 106, 107, 108]];
    const got = await runBatch(batch, prompts, { maxNewTokens: 4 });
    for (const [r, p] of prompts.entries()) expect(got.tokens[r]).toEqual((await runAlone(alone, p, { maxNewTokens: 4 })).tokens);
  });
});

describe("the other entry points on a varlen artifact", () => {
  test("generate() is generateBatch of one prompt; forward() gives each row's last-token logits", async () => {
    const { batch, alone } = models.get("llama-gqa")!;
    const one: number[] = [];
    for await (const t of batch.generate(PROMPTS[0], { maxNewTokens: 5 })) one.push(t.id);
    expect(one).toEqual((await runAlone(alone, PROMPTS[0], { maxNewTokens: 5 })).tokens);
    const out = await batch.forward(PROMPTS);
    expect(out.shape).toEqual([4, 1, 256]);
    for (const [r, p] of PROMPTS.entries()) {
      const ref = await alone.forward([p]);
      const last = ref.logits.slice((p.length - 1) * 256, p.length * 256);
      expect(maxAbsDiff(out.logits.slice(r * 256, (r + 1) * 256), last)).toBeLessThanOrEqual(1e-5);
    }
  });
});

describe("bad input is a clear E_USAGE", () => {
  const drain = async (g: AsyncGenerator<unknown, unknown>) => {
    for await (const _t of g);
  };
  test.each([
    ["more prompts than the bound", () => [[1], [2], [3], [4], [5]], {}, /5 prompts are over the artifact's bound of 4 sequences \(compile with a larger maxBatch\)/],
    ["a prompt + maxNewTokens over the capacity", () => [[1, 2], Array<number>(60).fill(3)], { maxNewTokens: 5 }, /prompt 1: 60 tokens \+ maxNewTokens 5 are over the artifact's cache capacity 64/],
    ["an empty prompt", () => [[1, 2], []], {}, /prompt 1 is empty/],
    ["no prompt", () => [], {}, /at least one prompt/],
    ["a token outside the vocabulary", () => [[1, 256]], {}, /token id 256/],
    ["options for the wrong number of rows", () => [[1], [2]], [{}], /1 sets of sampling options for 2 prompts/],
  ] as const)("%s", async (_what, prompts, options, msg) => {
    await expectKilnError(drain(models.get("llama-gqa")!.batch.generateBatch(prompts() as number[][], options as object)), "E_USAGE", msg);
  });

  test("generateBatch on an artifact without the varlen cache says which option makes one", async () => {
    await expectKilnError(drain(models.get("llama-gqa")!.alone.generateBatch([[1, 2]])), "E_USAGE", /this artifact's is static/, /kvCache "varlen" \(kiln compile --kv-cache varlen\)/);
  });

  test("compile refuses varlen with padded, and an encoder", async () => {
    await expectKilnError(compile(join(FIXTURES, "llama-gqa"), { target: "cpu", cacheDir, kvCache: "varlen", padded: true }), "E_USAGE", /leave out padded/);
    await expectKilnError(compile(join(FIXTURES, "bert"), { target: "cpu", cacheDir, kvCache: "varlen" }), "E_USAGE", /encoder/);
  });
});
