// The head transposes around attention are not copied: flash_attention reads q, k, v through the
// strides of the [B, S, H, D] tensors they transpose and writes its output in the layout of the
// transpose that reads it (compiler/codegen/emit.ts: elementwiseViews, attentionOutputs; the kernels
// take a kiln::AttnLayout). Checked here: the host twin through strides against its row-major path,
// bit for bit (test/cpu/attn_layout_driver.cpp; the cuda kernels are checked the same way on the GPU
// machine by bench/attn_layout.cu); the emitted source of a packed (padded, unpadded) and a plain
// prefill Llama copies neither transpose; and those cpu artifacts give the interpreter's logits.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import { traceModel } from "../compiler/dsl/index.js";
import { run, tensor } from "../compiler/ir/index.js";
import llama from "../models/llama.js";
import { loadModel } from "../runtime/api.js";
import { openCheckpoint } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";

const tmp = mkdtempSync(join(tmpdir(), "kiln-attn-layout-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

test("the host twin through strides gives its row-major results bit for bit (bf16, f32; dense, GQA, MQA, varlen, ALiBi, key mask, static cache, decode, sliding window)", () => {
  const driver = join(tmp, "attn_layout_driver");
  execFileSync(process.env.KILN_CXX ?? "g++", ["-std=c++17", "-O2", "-fopenmp", "-I", join(import.meta.dirname, "..", "codegen-templates"), "-o", driver, join(import.meta.dirname, "cpu", "attn_layout_driver.cpp")]);
  const rows = execFileSync(driver, { encoding: "utf8" })
    .trim()
    .split("\n")
    .map((l) => {
      const [name, n, differ, nan, sum] = l.split(" ");
      return { name, n: Number(n), differ: Number(differ), nan: Number(nan), sum: Number(sum) };
    });
  expect(rows.map((r) => r.name)).toEqual([
    "dense-causal-bf16", "dense-noncausal-bf16", "gqa-4:2-bf16", "mqa-4:1-bf16", "varlen-3-sequences-bf16", "alibi-bf16", "key-mask-bf16",
    "static-cache-offset-bf16", "decode-S1-bf16", "sliding-window-bf16", "gqa-4:2-f32", "varlen-3-sequences-f32",
  ]);
  for (const r of rows) {
    expect({ name: r.name, differ: r.differ, nan: r.nan }).toEqual({ name: r.name, differ: 0, nan: 0 });
    expect(r.n).toBeGreaterThan(0);
    expect(r.sum).toBeGreaterThan(0.05 * r.n); // outputs of random values, not zeros
  }
});

describe("a Llama's attention on the cpu target reads and writes through its head transposes", () => {
  const root = join(import.meta.dirname, "fixtures", "llama-gqa");
  const config = llama.fromHF(JSON.parse(readFileSync(join(root, "config.json"), "utf8")));
  const plain = traceModel(llama, config);
  const { weights } = bindWeights(plain.params, openCheckpoint(root));
  const V = config.vocab;
  const alone = (ids: number[]): Float32Array => run(plain, { input_ids: tensor("i64", [1, ids.length], ids) }, weights).logits.data as Float32Array;
  const cacheDir = join(tmp, "cache");

  /** The transposes of the emitted body (their comment lines) and the attention calls. */
  function emitted(dir: string): { transposes: string[]; calls: string[] } {
    const src = readFileSync(join(dir, "model.cpp"), "utf8").split("\n");
    return {
      transposes: src.filter((l) => /^ {2}\/\/ %\d+: .* = transpose\(/.test(l)),
      calls: src.filter((l) => l.includes("K::flash_attention<")),
    };
  }

  test.each([
    ["packed prefill (padded, unpadded by unpad-varlen)", { padded: true, kvCache: "none" as const }, 4],
    ["plain prefill", { padded: false, kvCache: "none" as const }, 4],
  ])("%s: no transpose is copied, and the logits are the interpreter's", async (_what, opts, perLayer) => {
    const art = await compile(root, { target: "cpu", cacheDir, maxSeq: 64, ...opts });
    const { transposes, calls } = emitted(art.dir);
    // per layer: q and k (read by RoPE as views), v (read by attention), the output (written by it)
    expect(transposes.length).toBe(perLayer * config.layers);
    expect(transposes.filter((l) => !/not materialized/.test(l))).toEqual([]);
    expect(transposes.filter((l) => /not materialized: %\d+ wrote it in this layout/.test(l))).toHaveLength(config.layers);
    // each attention call takes a layout: v read through its transpose, y written transposed
    expect(calls).toHaveLength(config.layers);
    for (const c of calls) expect(c).toMatch(/kiln::AttnLayout\{/);

    await using model = await loadModel(art.dir, { checkpoint: root });
    const prompts = [[3, 1, 4, 1, 5, 9], [2, 6], [5, 3, 5]];
    const rows = opts.padded ? prompts : [prompts[0]];
    const out = await model.forward(rows);
    const S = out.shape[1];
    let maxErr = 0;
    rows.forEach((p, b) => {
      const ref = alone(p);
      const at = S - p.length; // left padded
      for (let s = 0; s < p.length; s++) for (let v = 0; v < V; v++) maxErr = Math.max(maxErr, Math.abs(out.logits[(b * S + at + s) * V + v] - ref[s * V + v]));
    });
    expect(maxErr).toBeLessThanOrEqual(1e-4);
  }, 300_000);

  test("static KV cache: v's transpose is read by cache_write through strides, no transpose is copied; prefill then decode gives the interpreter's logits", async () => {
    const art = await compile(root, { target: "cpu", cacheDir, maxSeq: 64 });
    const src = readFileSync(join(art.dir, "model.cpp"), "utf8").split("\n");
    const transposes = src.filter((l) => /^ {2}\/\/ %\d+: .* = transpose\(/.test(l));
    expect(transposes.length).toBe(4 * config.layers);
    expect(transposes.filter((l) => !/not materialized/.test(l))).toEqual([]);
    // per layer: k's update row-major (RoPE's output), v's through (b, h, s) strides — the two
    // batched into one launch (batch-launches.ts: K::for_each_n of two K::cache_write_each)
    const writes = src.flatMap((l) => [...l.matchAll(/K::cache_write(?:_each)?<[^>]+>\(([^;]*?)\)(?=, K::|\)?;)/g)].map((m) => m[1]));
    expect(writes).toHaveLength(2 * config.layers);
    expect(writes.filter((a) => a.split(",").length === 11)).toHaveLength(config.layers); // 11 arguments: with strides
    expect(src.filter((l) => l.includes("K::for_each_n(") && (l.match(/K::cache_write_each</g) ?? []).length === 2)).toHaveLength(config.layers);

    await using model = await loadModel(art.dir, { checkpoint: root });
    const prompt = [3, 1, 4, 1, 5, 9, 2];
    const got: number[] = [];
    for await (const t of model.generate(prompt, { maxNewTokens: 6 })) got.push(t.id);
    // the interpreter's greedy continuation of the plain graph (no cache) — argmax of its logits
    const ids = [...prompt];
    for (let i = 0; i < 6; i++) {
      const l = alone(ids);
      const last = l.subarray((ids.length - 1) * V, ids.length * V);
      ids.push(last.indexOf(Math.max(...last)));
    }
    expect(got).toEqual(ids.slice(prompt.length));
  }, 300_000);
});
