// Two CUDA artifacts in one process (`npm run test:gpu -- two-artifacts`), on the GPU machine.
// A random Llama with head dim 128 (so prefill runs the tiled FlashAttention-2 kernel, whose
// shared-memory limit is set once per library) compiled twice — bf16 and nf4 — and used
// alternately: each forward gives the logits it gave alone. Before artifacts were built with
// -fvisibility=hidden, the kernel's "limit set" flag was a GNU_UNIQUE symbol shared by both
// libraries, so the second library never set its own limit and its first prefill failed with
// cudaErrorInvalidValue (bench:quant, nf4 after bf16).

import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, test } from "@jest/globals";
import type { Arch } from "../compiler/codegen/build.js";
import { compile } from "../compiler/codegen/compile.js";
import { traceModel } from "../compiler/dsl/index.js";
import { normals } from "../compiler/testing/index.js";
import llama from "../models/llama.js";
import { loadModel } from "../runtime/api.js";
import { writeSafetensors } from "../runtime/safetensors.js";

const cacheDir = process.env.KILN_GPU_ARTIFACTS ?? join(import.meta.dirname, "..", ".kiln-cache", "gpu");
const arch = (process.env.KILN_ARCH ?? "sm_90a") as Arch;
const tmp = mkdtempSync(join(tmpdir(), "kiln-two-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const CONFIG = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: 512, hidden_size: 256, intermediate_size: 512,
  num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 2, head_dim: 128, hidden_act: "silu",
  rms_norm_eps: 1e-5, max_position_embeddings: 256, tie_word_embeddings: false, rope_parameters: { rope_type: "default", rope_theta: 10000 },
};

/** the random checkpoint (written once) */
let ckpt: string | undefined;
function checkpoint(): string {
  if (ckpt) return ckpt;
  const dir = join(tmp, "ckpt");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(CONFIG));
  const g = traceModel(llama, llama.fromHF(CONFIG));
  const randn = normals(7);
  const tensors: Record<string, { dtype: "f32"; shape: number[]; data: Float32Array }> = {};
  for (const p of g.params) {
    const shape = p.shape as number[];
    const n = shape.reduce((a, b) => a * b, 1);
    const scale = p.name.includes("norm") ? 0.1 : p.name.includes("embed") ? 1 : 1 / Math.sqrt(shape[1]);
    tensors[p.name] = { dtype: "f32", shape, data: Float32Array.from({ length: n }, () => (p.name.includes("norm") ? 1 : 0) + scale * randn()) };
  }
  writeSafetensors(join(dir, "model.safetensors"), tensors);
  return (ckpt = dir);
}

test("a bf16 and an nf4 artifact used alternately in one process: each prefill (tiled FA2, S = 64) gives its own logits", async () => {
  const dir = checkpoint();
  const [a, b] = await Promise.all([
    compile(dir, { target: "cuda", arch, dtype: "bf16", cacheDir, maxSeq: 128 }),
    compile(dir, { target: "cuda", arch, dtype: "bf16", quant: "nf4", cacheDir, maxSeq: 128 }),
  ]);
  const ids = [Array.from({ length: 64 }, (_, i) => (i * 37 + 5) % 512)];
  await using ma = await loadModel(a.dir, { checkpoint: dir });
  const first = Array.from((await ma.forward(ids)).logits);
  await using mb = await loadModel(b.dir, { checkpoint: dir });
  const fromB = Array.from((await mb.forward(ids)).logits);
  const again = Array.from((await ma.forward(ids)).logits);
  expect(again).toEqual(first);
  expect(first.every(Number.isFinite) && fromB.every(Number.isFinite)).toBe(true);
  // nf4 is a different model (quantized weights), but close: relative error of the logits
  let num = 0, den = 0;
  for (let i = 0; i < first.length; i++) (num += (fromB[i] - first[i]) ** 2), (den += first[i] ** 2);
  expect(Math.sqrt(num / den)).toBeLessThan(0.25);
  expect(Math.sqrt(num / den)).toBeGreaterThan(0);
}, 600_000);

// The same nf4 model at decode, head dim 128: RoPE and the cache writes in the q/k/v GEMV's epilogue
// pair rows d and d + 64 of a head in one chunk (rope-fusion.ts); its tokens are the unfused
// forward's (KILN_FUSE_ROPE=0, read once per loaded library: a copy of the artifact), bit for bit
// the same sums (a row's lane tree does not depend on its slot). Then two Models of ONE artifact
// (one library: its stream, allocator and graph table) generating at once: each gets the tokens it
// gets alone (the binding's lock is the library's, not the Model's).
test("nf4, head dim 128: fused RoPE gives the unfused tokens; two Models of one artifact generating at once give them too", async () => {
  const dir = checkpoint();
  const art = await compile(dir, { target: "cuda", arch, dtype: "bf16", quant: "nf4", cacheDir, maxSeq: 128 });
  const prompts = [Array.from({ length: 40 }, (_, i) => (i * 37 + 5) % 512), Array.from({ length: 23 }, (_, i) => (i * 91 + 11) % 512)];
  const gen = async (m: Awaited<ReturnType<typeof loadModel>>, ids: number[]): Promise<number[]> => {
    const out: number[] = [];
    for await (const t of m.generate(ids, { maxNewTokens: 40 })) out.push(t.id);
    return out;
  };
  let alone: number[][];
  {
    await using m = await loadModel(art.dir, { checkpoint: dir });
    alone = [await gen(m, prompts[0]), await gen(m, prompts[1])];
  }
  const copy = `${art.dir}-unfused`;
  cpSync(art.dir, copy, { recursive: true });
  process.env.KILN_FUSE_ROPE = "0";
  try {
    await using m = await loadModel(copy, { checkpoint: dir });
    expect([await gen(m, prompts[0]), await gen(m, prompts[1])]).toEqual(alone);
  } finally {
    delete process.env.KILN_FUSE_ROPE;
    rmSync(copy, { recursive: true, force: true });
  }
  await using m1 = await loadModel(art.dir, { checkpoint: dir });
  await using m2 = await loadModel(art.dir, { checkpoint: dir });
  for (let round = 0; round < 3; round++) expect(await Promise.all([gen(m1, prompts[0]), gen(m2, prompts[1])])).toEqual(alone);
  expect(alone.flat().length).toBe(80);
}, 600_000);
