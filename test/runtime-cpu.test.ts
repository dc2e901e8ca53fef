// The compiled cpu target, end to end through the public API: compile() → loadModel() →
// forward()/generate(), against Hugging Face's logits and tokens and the reference interpreter.

import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import type { CompiledArtifact } from "../compiler/codegen/compile.js";
import { absmaxTiles, initialCache, run, tensor } from "../compiler/ir/index.js";
import { DEMO_CONFIG } from "../compiler/cli/demo.js";
import { traceModel } from "../compiler/dsl/index.js";
import { normals } from "../compiler/testing/random.js";
import { modelFor } from "../models/index.js";
import { loadModel } from "../runtime/api.js";
import { expectKilnError, exportedSymbols } from "./helpers.js";
import { openCheckpoint, SafetensorsFile, writeSafetensors } from "../runtime/safetensors.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const NAMES = ["llama-mha", "llama-gqa", "llama-mqa-tied", "llama3-rope"];
const tmp = mkdtempSync(join(tmpdir(), "kiln-rt-"));
const cacheDir = join(tmp, "cache");
const arts = new Map<string, CompiledArtifact>();

beforeAll(async () => {
  for (const n of NAMES) arts.set(n, await compile(join(FIXTURES, n), { target: "cpu", cacheDir, maxSeq: 64 }));
}, 300_000);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const reference = (n: string) => {
  const ref = SafetensorsFile.open(join(FIXTURES, n, "reference.safetensors"));
  const ids = Array.from(ref.toFloat64("input_ids"));
  return { ids: [ids.slice(0, 7), ids.slice(7, 14)], logits: ref.toFloat32("logits"), greedy: Array.from(ref.toFloat64("greedy_ids")) };
};


describe.each(NAMES)("%s on the cpu target", (name) => {
  test("forward gives Hugging Face's logits (f32, max abs error ≤ 1e-4)", async () => {
    const { ids, logits } = reference(name);
    await using model = await loadModel(arts.get(name)!.dir, { checkpoint: join(FIXTURES, name) });
    const out = await model.forward(ids);
    expect(out.shape).toEqual([2, 7, 256]);
    let maxErr = 0;
    for (let i = 0; i < logits.length; i++) maxErr = Math.max(maxErr, Math.abs(out.logits[i] - logits[i]));
    expect(maxErr).toBeLessThanOrEqual(1e-4);
  });

  test("generate (prefill, then decode against the KV cache) gives Hugging Face's greedy tokens", async () => {
    const { greedy } = reference(name);
    await using model = await loadModel(arts.get(name)!.dir, { checkpoint: join(FIXTURES, name) });
    const got: number[] = [];
    const gen = model.generate(greedy.slice(0, 7), { maxNewTokens: greedy.length - 7 });
    for await (const t of gen) got.push(t.id);
    expect(got).toEqual(greedy.slice(7));
  });
});

test("artifacts export only the C ABI (no GNU_UNIQUE symbol shared between libraries); two loaded at once stay independent", async () => {
  for (const n of NAMES) {
    const art = arts.get(n)!;
    const syms = exportedSymbols(join(art.dir, art.manifest.library));
    expect(syms.unique).toEqual([]);
    expect(syms.kiln.filter((s) => !s.startsWith("kiln_"))).toEqual([]);
    expect(syms.kiln).toContain("kiln_forward");
  }
  // interleaved calls into two libraries give each its own reference logits
  await using a = await loadModel(arts.get("llama-mha")!.dir, { checkpoint: join(FIXTURES, "llama-mha") });
  await using b = await loadModel(arts.get("llama-gqa")!.dir, { checkpoint: join(FIXTURES, "llama-gqa") });
  for (const [m, n] of [[a, "llama-mha"], [b, "llama-gqa"], [a, "llama-mha"]] as const) {
    const { ids, logits } = reference(n);
    const out = await m.forward(ids);
    let maxErr = 0;
    for (let i = 0; i < logits.length; i++) maxErr = Math.max(maxErr, Math.abs(out.logits[i] - logits[i]));
    expect(maxErr).toBeLessThanOrEqual(1e-4);
  }
});

test("a static-cache step hands back the caller's own cache tensors as present.* (written in place, no new wrappers)", async () => {
  const name = "llama-gqa";
  await using model = await loadModel(arts.get(name)!.dir, { checkpoint: join(FIXTURES, name) });
  interface Internals {
    newCache(B: number, S: number): Map<string, unknown>;
    invoke(feed: Map<string, unknown>, toHost: (name: string) => boolean): Promise<Map<string, unknown>>;
    manifest: { kvCache?: { position?: string } };
  }
  const m = model as unknown as Internals;
  // step 1 uploads the fresh (host) cache; step 2 passes the device tensors step 1 gave back
  let cache = m.newCache(1, 16);
  for (let step = 0; step < 2; step++) {
    const feed = new Map(cache);
    feed.set("input_ids", { dtype: 3, shape: [1, 3], data: BigInt64Array.from([1n, 2n, 3n]) });
    feed.set(m.manifest.kvCache!.position!, { dtype: 3, shape: [], data: new BigInt64Array([BigInt(3 * step)]) });
    const outs = await m.invoke(feed, (n) => n === "logits");
    const presents = [...outs].filter(([k]) => k.startsWith("present."));
    expect(presents.length).toBe(cache.size);
    for (const [k, v] of presents) {
      expect(typeof (v as { free?: unknown }).free).toBe("function");
      if (step === 1) expect(v).toBe(cache.get(k.replace("present.", "past.")));
    }
    cache = new Map(presents.map(([k, v]) => [k.replace("present.", "past."), v]));
  }
  // and generate still gives Hugging Face's greedy tokens through that cache (twice: the second
  // generate reuses the kept cache)
  const { greedy } = reference(name);
  for (let i = 0; i < 2; i++) {
    const got: number[] = [];
    for await (const t of model.generate(greedy.slice(0, 7), { maxNewTokens: greedy.length - 7 })) got.push(t.id);
    expect(got).toEqual(greedy.slice(7));
  }
  for (const v of cache.values()) (v as { free(): void }).free();
});

test("a bf16 artifact stays close to the f32 reference", async () => {
  const name = "llama-gqa";
  const art = await compile(join(FIXTURES, name), { target: "cpu", dtype: "bf16", cacheDir, maxSeq: 64 });
  expect(art.manifest.weights.every((w) => w.dtype === "bf16")).toBe(true);
  const { ids, logits } = reference(name);
  await using model = await loadModel(art.dir, { checkpoint: join(FIXTURES, name) }); // f32 checkpoint → bf16 on load
  const out = await model.forward(ids);
  let num = 0, den = 0, sameArgmax = 0;
  for (let r = 0; r < 14; r++) {
    let a = 0, b = 0;
    for (let v = 0; v < 256; v++) {
      const i = r * 256 + v;
      num += (out.logits[i] - logits[i]) ** 2;
      den += logits[i] ** 2;
      if (out.logits[i] > out.logits[r * 256 + a]) a = v;
      if (logits[i] > logits[r * 256 + b]) b = v;
    }
    if (a === b) sameArgmax++;
  }
  expect(Math.sqrt(num / den)).toBeLessThan(3e-2);
  expect(sameArgmax).toBeGreaterThanOrEqual(12);
});

describe("quantized linears on the cpu target (quantized on load)", () => {
  test.each([
    ["nf4", false, 0.29],
    ["nf4", true, 0.27],
    ["fp4", false, 0.29],
    ["int8", false, 0.56], // N·K int8 + an f64 scale a row: 0.5 + 4/K (K = 64 here; 0.501 at K = 4096)
  ] as const)("%s (double quant %s): the interpreter's qlinear semantics, in ≤ %s× the bf16 bytes", async (quant, doubleQuant, ratio) => {
    const dir = join(FIXTURES, "llama-gqa");
    const art = await compile(dir, { target: "cpu", quant, doubleQuant, cacheDir, maxSeq: 64 });
    const quantized = art.manifest.weights.filter((w) => w.quant);
    expect(quantized).toHaveLength(14);
    expect(quantized.every((w) => w.quant!.scheme === quant && w.quant!.doubleQuant === doubleQuant)).toBe(true);
    await using model = await loadModel(art.dir, { checkpoint: dir });
    const { ids } = reference("llama-gqa");
    const out = await model.forward(ids);
    // the same quantized graph on the interpreter, from the float checkpoint
    const ck = openCheckpoint(dir);
    const weights = Object.fromEntries(art.graph.params.map((p) => [p.name, { dtype: p.dtype, shape: ck.info(p.name).shape, data: ck.toFloat32(p.name) }]));
    ck.close();
    const interp = run(art.graph, { input_ids: tensor("i64", [2, 7], ids.flat()), ...initialCache(art.graph, 2, 7) }, weights).logits;
    let maxErr = 0;
    for (let i = 0; i < interp.data.length; i++) maxErr = Math.max(maxErr, Math.abs(interp.data[i] - out.logits[i]));
    expect(maxErr).toBeLessThanOrEqual(1e-5);
    const bytes = model.weightBytes();
    const packed = quantized.reduce((a, w) => a + bytes[w.name], 0);
    const bf16 = quantized.reduce((a, w) => a + 2 * (w.shape as number[]).reduce((x, y) => x * y, 1), 0);
    expect(packed / bf16).toBeLessThanOrEqual(ratio);
  });

  test("nf4 with double quantization on weights of many absmax groups (the tiled layout): the interpreter's numbers", async () => {
    // rows of 1152 (18 blocks) and 1152 rows of 128: 2304 blocks, 9 double-quantization groups of
    // 256 slots, which block order would group otherwise — so the runtime passing the row length,
    // kiln_quant.h and quant.ts must agree on the tiles (the fixtures' weights hold one group each)
    const config = { ...DEMO_CONFIG, hidden_size: 128, intermediate_size: 1152, num_hidden_layers: 1, head_dim: 32 };
    expect(absmaxTiles(128 * 1152, 64, 1152)).toBe(18);
    expect(absmaxTiles(1152 * 128, 64, 128)).toBe(2);
    const dir = join(tmp, "tiled");
    mkdirSync(dir, { recursive: true });
    const def = modelFor(config);
    const randn = normals(11);
    const tensors: Record<string, { dtype: "f32"; shape: number[]; data: Float32Array }> = {};
    for (const p of traceModel(def, def.fromHF(config)).params) {
      const shape = p.shape as number[];
      const n = shape.reduce((a, b) => a * b, 1);
      // norm weights ≈ 1, embeddings N(0, 1), linears N(0, 1/fan_in) with a spread of row scales (absmax over decades)
      tensors[p.name] = {
        dtype: "f32", shape,
        data: Float32Array.from({ length: n }, (_, i) =>
          p.name.includes("norm") ? 1 + 0.2 * randn() : p.name.includes("embed") ? randn() : (randn() / Math.sqrt(shape[1])) * Math.exp(2 * Math.sin(i / 640))),
      };
    }
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
    const art = await compile(dir, { target: "cpu", quant: "nf4", doubleQuant: true, cacheDir, maxSeq: 16 });
    await using model = await loadModel(art.dir, { checkpoint: dir });
    const ids = [[1, 5, 9, 200, 33, 7, 18]];
    const out = await model.forward(ids);
    const weights = Object.fromEntries(art.graph.params.map((p) => [p.name, { dtype: p.dtype, shape: tensors[p.name].shape, data: tensors[p.name].data }]));
    const interp = run(art.graph, { input_ids: tensor("i64", [1, 7], ids.flat()), ...initialCache(art.graph, 1, 7) }, weights).logits;
    let maxErr = 0, maxAbs = 0;
    for (let i = 0; i < interp.data.length; i++) {
      maxErr = Math.max(maxErr, Math.abs(interp.data[i] - out.logits[i]));
      maxAbs = Math.max(maxAbs, Math.abs(interp.data[i]));
    }
    expect(maxAbs).toBeGreaterThan(0.1);
    expect(maxErr).toBeLessThanOrEqual(1e-5 * Math.max(1, maxAbs));
  }, 120_000);

  test("the cuda target compiles quantized linears with nvcc (4-bit with double quant, LLM.int8; run on the GPU by quant.gpu.test.ts)", async () => {
    const dir = join(FIXTURES, "llama-gqa");
    const built = await Promise.all([
      compile(dir, { target: "cuda", dtype: "bf16", quant: "nf4", doubleQuant: true, cacheDir, maxSeq: 64 }),
      compile(dir, { target: "cuda", dtype: "f32", quant: "int8", cacheDir, maxSeq: 64 }),
    ]);
    for (const art of built) {
      expect(art.manifest.target).toBe("cuda");
      expect(art.manifest.weights.filter((w) => w.quant)).toHaveLength(14);
      expect(existsSync(join(art.dir, art.manifest.library))).toBe(true);
    }
    // LLM.int8: q/k/v and gate/up read one activation each, quantized once a group (2 layers)
    const src = readFileSync(join(built[1].dir, "model.cu"), "utf8");
    expect(src.match(/K::Q8Shared q8s\d+;/g)).toHaveLength(4);
    expect(src.match(/K::qlinear8_done\(&q8s\d+\);/g)).toHaveLength(4);
    expect(src.match(/K::qlinear8<float>\([^;]*&q8s\d+\);/g)).toHaveLength(10);
  }, 180_000);
});

describe("the artifact cache", () => {
  test("a second compile of the same model is a cache hit", async () => {
    const t0 = performance.now();
    const again = await compile(join(FIXTURES, "llama-mha"), { target: "cpu", cacheDir, maxSeq: 64 });
    expect(again.cached).toBe(true);
    expect(again.dir).toBe(arts.get("llama-mha")!.dir);
    expect(performance.now() - t0).toBeLessThan(5000); // tracing only; no compiler run
  });

  test("a failed build leaves no artifact and reports the compiler's message", async () => {
    const fake = join(tmp, "fake-cxx.sh");
    writeFileSync(fake, '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fake-cxx 1.0"; exit 0; fi\necho "model.cpp:1:1: error: boom" >&2\nexit 1\n');
    chmodSync(fake, 0o755);
    const dir = join(tmp, "failing-cache");
    process.env.KILN_CXX = fake;
    try {
      await expectKilnError(compile(join(FIXTURES, "llama-mha"), { target: "cpu", cacheDir: dir }), "E_BUILD", /fake-cxx\.sh failed/, /error: boom/);
    } finally {
      delete process.env.KILN_CXX;
    }
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe("bad checkpoints and inputs are clear errors", () => {
  // a copy of a fixture with its weights rewritten by `edit`
  function variant(label: string, edit: (t: Record<string, { dtype: "f32"; shape: number[]; data: Float32Array }>) => void): string {
    const src = join(FIXTURES, "llama-mha");
    const dir = join(tmp, label);
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(src, "config.json"), join(dir, "config.json"));
    const ck = openCheckpoint(src);
    const tensors: Record<string, { dtype: "f32"; shape: number[]; data: Float32Array }> = {};
    for (const n of ck.names()) tensors[n] = { dtype: "f32", shape: ck.info(n).shape, data: ck.toFloat32(n) };
    ck.close();
    edit(tensors);
    writeSafetensors(join(dir, "model.safetensors"), tensors);
    return dir;
  }

  test("missing and mis-shaped tensors: one error listing them all", async () => {
    const dir = variant("bad-weights", (t) => {
      delete t["model.layers.1.mlp.up_proj.weight"];
      delete t["model.norm.weight"];
      t["model.layers.0.self_attn.q_proj.weight"] = { dtype: "f32", shape: [64, 32], data: new Float32Array(64 * 32) };
    });
    const e = await expectKilnError(
      loadModel(arts.get("llama-mha")!.dir, { checkpoint: dir }),
      "E_WEIGHTS",
      /3 problems/,
      /missing: model\.layers\.1\.mlp\.up_proj\.weight \(f32\[128, 64\]\)/,
      /missing: model\.norm\.weight/,
      /mis-shaped: model\.layers\.0\.self_attn\.q_proj\.weight is \[64, 32\], the model wants \[64, 64\]/,
    );
    expect(e.where).toBe(dir);
  });

  test("a truncated safetensors file names the file and the tensor", async () => {
    const dir = variant("truncated", () => {});
    const file = join(dir, "model.safetensors");
    truncateSync(file, readFileSync(file).length - 1000);
    await expectKilnError(loadModel(arts.get("llama-mha")!.dir, { checkpoint: dir }), "E_SAFETENSORS", /model\.safetensors/);
  });

  test("token ids out of the vocabulary, too many tokens, ragged rows, use after dispose", async () => {
    const model = await loadModel(arts.get("llama-mha")!.dir, { checkpoint: join(FIXTURES, "llama-mha") });
    await expectKilnError(model.forward([1, 2, 256]), "E_USAGE", /token id 256 \(row 0, position 2\) is not in \[0, 256\)/);
    await expectKilnError(model.forward(Array(65).fill(1)), "E_USAGE", /65 tokens are over the artifact's bound 64/);
    await expectKilnError(model.forward([[1, 2], [3]]), "E_USAGE", /same length/);
    await expectKilnError(model.generate("hello").next(), "E_USAGE", /no tokenizer\.json/);
    await model.dispose();
    await expectKilnError(model.forward([1]), "E_USAGE", /disposed/);
  });

  test("an AbortSignal stops generation", async () => {
    await using model = await loadModel(arts.get("llama-mha")!.dir, { checkpoint: join(FIXTURES, "llama-mha") });
    const ac = new AbortController();
    const got: number[] = [];
    let err: unknown;
    try {
      for await (const t of model.generate([1, 2, 3], { maxNewTokens: 20, signal: ac.signal })) {
        got.push(t.id);
        if (got.length === 3) ac.abort();
      }
    } catch (e) {
      err = e;
    }
    expect(got).toHaveLength(3);
    expect((err as Error).name).toBe("AbortError");
  });

  test("a folder that is not an artifact", async () => {
    await expectKilnError(loadModel(tmp, { checkpoint: join(FIXTURES, "llama-mha") }), "E_ARTIFACT", /no manifest\.json/);
  });
});
