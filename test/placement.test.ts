// Placement (issue 8): sizes, the split of the tiny Llama fixture worked out by hand, quantized
// sizes, properties over random Llama shapes and budgets (budgets kept, order kept, each layer
// once, embeddings first and head last), impossible budgets, the pass in a pipeline, and the
// manifest / inspect / runtime refusal end to end on the cpu target.

import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import { compile, DEFAULT_PASSES } from "../compiler/codegen/compile.js";
import { traceModel } from "../compiler/dsl/index.js";
import { bytes4, bytes8, formatBytes } from "../compiler/ir/index.js";
import type { Graph } from "../compiler/ir/index.js";
import { createContext, parseMaxMemory, parsePipeline, parseSize, place, runPipeline } from "../compiler/passes/index.js";
import type { Placement } from "../compiler/passes/index.js";
import { loadModel } from "../runtime/api.js";
import llama from "../models/llama.js";
import { expectKilnError, expectKilnErrorSync } from "./helpers.js";

const ROOT = join(import.meta.dirname, "..");
const GQA = join(ROOT, "test/fixtures/llama-gqa");
const gqaJson = JSON.parse(readFileSync(join(GQA, "config.json"), "utf8")) as Record<string, unknown>;

/** A Llama graph with a static cache, through the default passes (with quantization when asked). */
function llamaGraph(json: Record<string, unknown>, dtype: "f32" | "bf16" = "f32", quant?: "nf4" | "int8"): Graph {
  return runPipeline(traceModel(llama, llama.fromHF(json), { kvCache: "static", dtype }), parsePipeline(DEFAULT_PASSES), { options: { quant } });
}

describe("sizes", () => {
  test.each([
    ["600MB", 600e6], ["1GB", 1e9], ["20GiB", 20 * 2 ** 30], ["512 MiB", 512 * 2 ** 20], ["1.5GiB", 1.5 * 2 ** 30], ["2kB", 2000],
    ["1KiB", 1024], ["4096", 4096], ["4096B", 4096], [" 3TB ", 3e12], [0, 0], [123, 123],
  ] as const)("%p is %d bytes", (v, bytes) => {
    expect(parseSize(v)).toBe(bytes);
  });

  test.each([
    ["", /is not a size/], ["abc", /is not a size/], ["-1GB", /is not a size/], ["1.2.3GB", /is not a size/], ["20XB", /is not a size/],
    ["1.5", /whole number of bytes/], ["20Gb", /means bits/], ["20Gi", /no 'B' after 'Gi'/], [1.5, /whole, non-negative/],
    [-1, /whole, non-negative/], [Number.NaN, /whole, non-negative/], [Infinity, /whole, non-negative/], ["99999999TiB", /too large/],
  ] as const)("%p is a clear error", (v, why) => {
    expectKilnErrorSync(() => parseSize(v, "maxMemory for device 0:"), "E_USAGE", "maxMemory for device 0:", JSON.stringify(v), why, /"20GiB"/);
  });

  test("any whole count of any unit", () => {
    const units = { "": 1, B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KiB: 1024, MiB: 2 ** 20, GiB: 2 ** 30 };
    fc.assert(
      fc.property(fc.nat(100000), fc.constantFrom(...Object.keys(units)), (n, u) => {
        expect(parseSize(`${n}${u}`)).toBe(n * units[u as keyof typeof units]);
      }),
    );
  });

  test("--max-memory lists", () => {
    expect(parseMaxMemory("0=20GiB,1=40GiB")).toEqual({ 0: "20GiB", 1: "40GiB" });
    expect(parseMaxMemory(" auto ")).toBe("auto");
    expectKilnErrorSync(() => parseMaxMemory("cpu=10GB"), "E_USAGE", "--max-memory names device 'cpu'", "offloading to 'cpu' is not supported");
    expectKilnErrorSync(() => parseMaxMemory("0=lots"), "E_USAGE", '"lots" is not a size');
    expectKilnErrorSync(() => parseMaxMemory("0"), "E_USAGE", "'0' is not <device>=<size>");
    expectKilnErrorSync(() => place(llamaGraph(gqaJson), { maxMemory: {}, maxSeq: 1 }), "E_USAGE", "maxMemory names no device");
  });
});

// The fixture by hand (f32): a layer is q 64·64 + k 16·64 + v 16·64 + o 64·64 + gate, up 128·64 +
// down 64·128 + two norms of 64 = 34944 floats = 139776 bytes; the embeddings 256·64·4 = 65536;
// the head norm 64 + lm_head 256·64 = 65792 bytes. A layer's static cache at B = 1, C = 1:
// key + value [1, 2, 1, 8] f32 = 128 bytes.
const LAYER = 139776, EMBED = 65536, HEAD = 65792, KV = 128;

describe("the llama-gqa fixture, by hand", () => {
  const g = llamaGraph(gqaJson);
  const at1 = { maxSeq: 1, maxBatch: 1 };

  test("on one device: all of it, counted exactly", () => {
    const p = place(g, { maxMemory: { 0: "1GB" }, ...at1 });
    expect(p).toMatchObject({ devices: [0], used: [0], embed: 0, layers: [0, 0], head: 0, replicated: [], at: { B: 1, S: 1, P: 1, C: 1, T: 1 } });
    expect(p.bytes[0]).toMatchObject({ budget: 1e9, weights: EMBED + 2 * LAYER + HEAD, kvCache: 2 * KV });
    // the largest activation at S = 1 is the logits, 256 f32: the workspace is a few KiB
    expect(p.bytes[0].workspace).toBeGreaterThanOrEqual(1024);
    expect(p.bytes[0].workspace).toBeLessThan(4096);
  });

  test("a budget of the embeddings + one layer + 4 KiB splits after layer 0", () => {
    const budget = EMBED + LAYER + KV + 4096;
    const p = place(g, { maxMemory: { 0: budget, 1: "1GB" }, ...at1 });
    expect(p.layers).toEqual([0, 1]);
    expect([p.embed, p.head, p.used]).toEqual([0, 1, [0, 1]]);
    expect(p.deviceMap).toEqual({ "model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1, lm_head: 1 });
    expect(p.bytes[0]).toMatchObject({ budget, weights: EMBED + LAYER, kvCache: KV });
    expect(p.bytes[1]).toMatchObject({ weights: LAYER + HEAD, kvCache: KV });
    expect(p.bytes[0].total).toBeLessThanOrEqual(budget);
    // the boundary: exactly device 0's total keeps layer 0 there; one byte less moves it on
    expect(place(g, { maxMemory: { 0: p.bytes[0].total, 1: "1GB" }, ...at1 }).layers).toEqual([0, 1]);
    const q = place(g, { maxMemory: { 0: p.bytes[0].total - 1, 1: "1GB" }, ...at1 });
    expect([q.embed, q.layers, q.head]).toEqual([0, [1, 1], 1]);
    expect(q.bytes[0].weights).toBe(EMBED);
  });

  test("three devices: one layer each, the head with the last", () => {
    const p = place(g, { maxMemory: { 0: EMBED + LAYER + KV + 4096, 1: LAYER + KV + 4096, 2: "1GB" }, ...at1 });
    expect([p.embed, p.layers, p.head]).toEqual([0, [0, 1], 2]);
    expect(p.bytes[2].weights).toBe(HEAD);
  });

  test("nf4 and int8 weights are counted at their packed sizes (kiln_quant.h)", () => {
    // per layer, 4-bit: codes n/2 bytes + one f32 absmax per 64 weights; the two norms stay bf16
    const nf4Layer = 2 * (2048 + 4 * 64) + 2 * (512 + 4 * 16) + 3 * (4096 + 4 * 128) + 2 * 64 * 2;
    expect(nf4Layer).toBe(2 * bytes4(4096, 64, false) + 2 * bytes4(1024, 64, false) + 3 * bytes4(8192, 64, false) + 256);
    // int8: N·K codes (padded to 16) + one f64 scale per output row
    const int8Layer = 2 * (4096 + 8 * 64) + 2 * (1024 + 8 * 16) + 2 * (8192 + 8 * 128) + (8192 + 8 * 64) + 256;
    expect(int8Layer).toBe(2 * bytes8(64, 64) + 2 * bytes8(16, 64) + 2 * bytes8(128, 64) + bytes8(64, 128) + 256);
    // the embeddings and lm_head (skipped by default) stay bf16
    const rest = 256 * 64 * 2 + 64 * 2 + 256 * 64 * 2;
    expect(place(llamaGraph(gqaJson, "bf16", "nf4"), { maxMemory: { 0: "1GB" }, ...at1 }).bytes[0].weights).toBe(rest + 2 * nf4Layer);
    expect(place(llamaGraph(gqaJson, "bf16", "int8"), { maxMemory: { 0: "1GB" }, ...at1 }).bytes[0].weights).toBe(rest + 2 * int8Layer);
    expect(place(llamaGraph(gqaJson, "bf16"), { maxMemory: { 0: "1GB" }, ...at1 }).bytes[0].weights).toBe(rest + 2 * (LAYER / 2));
    // double quantization: int8 absmax codes + one f32 per 256 blocks (each padded to 16) + the f32 mean in 8 bytes
    expect(bytes4(4096, 64, true)).toBe(2048 + 64 + 16 + 8);
  });

  test("under the same budget all of nf4 fits on device 0 where bf16's embeddings and one layer do", () => {
    const bf16 = llamaGraph(gqaJson, "bf16"), nf4 = llamaGraph(gqaJson, "bf16", "nf4");
    const budget = { 0: 32768 + LAYER / 2 + 4096, 1: "1GB" };
    expect(place(bf16, { maxMemory: budget, ...at1 }).layers).toEqual([0, 1]);
    const p = place(nf4, { maxMemory: budget, ...at1 });
    expect([p.layers, p.head, p.used]).toEqual([[0, 0], 0, [0]]);
    expect(p.bytes[0].weights).toBe(105344); // 32768 + 2 · 19840 + 32896, as in the test above
  });

  test("the KV cache grows with the bounds: B·C·H·D·2 per layer", () => {
    const p = place(g, { maxMemory: { 0: "1GB" }, maxSeq: 100, maxBatch: 3 });
    expect(p.bytes[0].kvCache).toBe(2 * (3 * 2 * 100 * 8 * 4 * 2));
    expect(p.at).toEqual({ B: 3, N: 3, S: 100, P: 100, C: 100, T: 300 });
  });

  test("an impossible budget names the group, the device, what it needs and has, and the totals", () => {
    const whole = place(g, { maxMemory: { 0: "1GB" }, ...at1 }).bytes[0].total;
    const b0 = EMBED + LAYER + KV + 4096, b1 = LAYER + KV + 4096;
    const e = expectKilnErrorSync(() => place(g, { maxMemory: { 0: b0, 1: b1 }, ...at1 }), "E_USAGE",
      /^placement: the head needs .* more on device 1/, /but device 1 has .* of its .* left: .* short, and no device after it/,
      `(${whole} bytes) in all on one device`, `the budgets give ${formatBytes(b0 + b1)} (${b0 + b1} bytes) over devices 0`);
    // the shortfall is what it needs less what is left
    const [need, left, short] = [...e.message.matchAll(/\((\d+) bytes\) (?:more|of its|short)|(\d+) bytes (?:more|of its|short)/g)].map((m) => Number(m[1] ?? m[2]));
    expect(need - left).toBe(short);
    expect(need).toBeGreaterThanOrEqual(HEAD);
    // nothing fits: the embeddings on the only device
    expectKilnErrorSync(() => place(g, { maxMemory: { 0: "1KB" }, ...at1 }), "E_USAGE", "the embedding layer needs", "device 0 has 1000 bytes of its 1000 bytes left", "and no device after it");
  });

  test("\"auto\" balances over the devices' memory, and needs it", () => {
    expectKilnErrorSync(() => place(g, { maxMemory: "auto", ...at1 }), "E_USAGE", "needs deviceMemory");
    const whole = place(g, { maxMemory: { 0: "1GB" }, ...at1 }).bytes[0].total;
    const p = place(g, { maxMemory: "auto", deviceMemory: { 0: "1GB", 1: "1GB" }, ...at1 });
    expect(p.bytes[1].budget).toBe(1e9); // the last device: all it has
    expect(p.bytes[0].budget).toBeLessThan(whole); // the others: a share plus the largest layer
    expect(p.bytes[0].budget).toBeGreaterThanOrEqual(Math.ceil(whole / 2));
    expect(p.embed).toBe(0);
    for (const id of p.devices) expect(p.bytes[id].total).toBeLessThanOrEqual(p.bytes[id].budget);
  });

  test("needs the bounds it counts the cache and workspace at", () => {
    expectKilnErrorSync(() => place(g, { maxMemory: { 0: "1GB" } }), "E_USAGE", "give bounds, or maxSeq");
    expectKilnErrorSync(() => place(g, { maxMemory: { 0: "1GB" }, maxSeq: 0 }), "E_USAGE", "maxSeq must be a positive integer, got 0");
  });

  test("as a pass: the graph unchanged, the map in ctx.results, a line per device under --explain", () => {
    const ctx = createContext({ maxMemory: { 0: EMBED + LAYER + KV + 4096, 1: "1GB" }, ...at1 });
    const out = runPipeline(g, parsePipeline("placement"), { context: ctx });
    expect(out).toBe(g);
    expect((ctx.results.get("placement") as Placement).layers).toEqual([0, 1]);
    expect(ctx.messages.map((m) => m.message)).toEqual([
      expect.stringMatching(/^device 0: embeddings, layer 0; .* of 204\.6 KiB \(weights 200\.5 KiB, KV cache 128 B, workspace /),
      expect.stringMatching(/^device 1: layer 1, head; /),
    ]);
    const none = createContext({});
    expect(runPipeline(g, parsePipeline("placement"), { context: none })).toBe(g);
    expect(none.results.has("placement")).toBe(false);
    expect(none.messages[0].message).toBe("no maxMemory given: nothing placed");
  });
});


// ---------------------------------------------------------------- properties

const llamaShape = fc
  .record({ layers: fc.integer({ min: 1, max: 5 }), heads: fc.constantFrom(2, 4), group: fc.constantFrom(1, 2), headDim: fc.constantFrom(4, 8), ffn: fc.integer({ min: 1, max: 4 }), vocab: fc.integer({ min: 8, max: 300 }), tied: fc.boolean() })
  .map((c) => ({
    ...gqaJson, num_hidden_layers: c.layers, num_attention_heads: c.heads, num_key_value_heads: c.heads / c.group, head_dim: c.headDim,
    hidden_size: c.heads * c.headDim, intermediate_size: c.ffn * c.heads * c.headDim, vocab_size: c.vocab, tie_word_embeddings: c.tied,
  }));

function checkPlacement(p: Placement, g: Graph, layers: number): void {
  // every device within its budget
  for (const id of p.devices) expect(p.bytes[id].total).toBeLessThanOrEqual(p.bytes[id].budget);
  // each layer exactly once, in order; embeddings on the first device used, the head on the last
  expect(p.layers).toHaveLength(layers);
  p.layers.forEach((d, i) => i && expect(d).toBeGreaterThanOrEqual(p.layers[i - 1]));
  expect(p.embed).toBe(Math.min(...p.used));
  expect(p.head).toBe(Math.max(...p.used));
  expect(p.layers.every((d) => d >= p.embed && d <= p.head)).toBe(true);
  const layerKeys = Object.keys(p.deviceMap).filter((k) => k.startsWith("model.layers."));
  expect(layerKeys.sort()).toEqual([...Array(layers).keys()].map((i) => `model.layers.${i}`).sort());
  layerKeys.forEach((k) => expect(p.deviceMap[k]).toBe(p.layers[Number(k.split(".")[2])]));
  // every weight counted: once, or once per device that reads it (tied embeddings)
  const all = g.params.reduce((a, v) => a + v.shape.reduce<number>((x, d) => x * (d as number), 4), 0);
  const extra = p.replicated.reduce((a, r) => a + (r.devices.length - 1) * 4 * g.params.find((v) => v.name === r.name)!.shape.reduce<number>((x, d) => x * (d as number), 1), 0);
  expect(p.devices.reduce((a, id) => a + p.bytes[id].weights, 0)).toBe(all + extra);
  // a device not used holds nothing
  for (const id of p.devices) if (!p.used.includes(id)) expect(p.bytes[id].total).toBe(0);
}

describe("properties over random Llama shapes and budgets", () => {
  test("a placement keeps every budget and the order, and places each layer once; or it is a clear shortfall", () => {
    fc.assert(
      fc.property(llamaShape, fc.array(fc.double({ min: 0, max: 1.2, noNaN: true }), { minLength: 1, maxLength: 4 }), fc.integer({ min: 1, max: 16 }), (json, fractions, seq) => {
        const g = llamaGraph(json);
        const at = { maxSeq: seq, maxBatch: 2 };
        const whole = place(g, { maxMemory: { 0: Number.MAX_SAFE_INTEGER }, ...at }).bytes[0].total;
        const maxMemory = Object.fromEntries(fractions.map((f, i) => [i, Math.floor(f * whole)]));
        let p: Placement;
        try {
          p = place(g, { maxMemory, ...at });
        } catch (e) {
          expect((e as Error).message).toMatch(new RegExp(`more on device ${fractions.length - 1} .* short, and no device after it`));
          expect((e as Error).message).toContain(`The model needs ${formatBytesLike(whole)}`);
          // a model that fits device 0 never fails (a prefix of it needs no more than all of it)
          expect(maxMemory[0]).toBeLessThan(whole);
          return;
        }
        checkPlacement(p, g, json.num_hidden_layers);
        // a model that fits device 0 stays there
        if (maxMemory[0] >= whole) expect(p.used).toEqual([0]);
      }),
      { numRuns: 60 },
    );
  });

  test("nf4 keeps at least as many layers on device 0 as bf16 under the same budgets", () => {
    fc.assert(
      fc.property(llamaShape, fc.array(fc.double({ min: 0.2, max: 1, noNaN: true }), { minLength: 2, maxLength: 3 }), (json, fractions) => {
        const at = { maxSeq: 4, maxBatch: 1 };
        const bf16 = llamaGraph(json, "bf16"), nf4 = llamaGraph(json, "bf16", "nf4");
        const whole = place(bf16, { maxMemory: { 0: Number.MAX_SAFE_INTEGER }, ...at }).bytes[0].total;
        const maxMemory = Object.fromEntries([...fractions.map((f, i) => [i, Math.floor(f * whole)]), [fractions.length, Number.MAX_SAFE_INTEGER]]);
        const a = place(bf16, { maxMemory, ...at }), b = place(nf4, { maxMemory, ...at });
        checkPlacementBudgets(a);
        checkPlacementBudgets(b);
        expect(b.layers.filter((x) => x === 0).length).toBeGreaterThanOrEqual(a.layers.filter((x) => x === 0).length);
        const weights = (g: Graph) => place(g, { maxMemory: { 0: Number.MAX_SAFE_INTEGER }, ...at }).bytes[0].weights;
        expect(weights(nf4)).toBeLessThan(weights(bf16));
      }),
      { numRuns: 20 },
    );
  });
});

/** How the error message writes a byte count: "403.6 KiB (413240 bytes)", or "17 bytes". */
const formatBytesLike = (n: number): string => (n >= 1024 ? `${formatBytes(n)} (${n} bytes)` : `${n} bytes`);
const checkPlacementBudgets = (p: Placement): void => {
  for (const id of p.devices) expect(p.bytes[id].total).toBeLessThanOrEqual(p.bytes[id].budget);
};

// ---------------------------------------------------------------- end to end (cpu target)

describe("compile({ maxMemory }), kiln inspect, and the runtime", () => {
  const tmp = mkdtempSync(join(tmpdir(), "kiln-place-"));
  const cacheDir = join(tmp, "cache");
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const split = { 0: 300 * 1024, 1: "1GiB" };

  test("the map is in manifest.json, inspect prints it, and the runtime refuses a split artifact", async () => {
    const art = await compile(GQA, { target: "cpu", cacheDir, maxSeq: 16, maxBatch: 1, maxMemory: split });
    const p = art.manifest.placement!;
    expect(p.layers).toEqual([0, 1]);
    expect([p.embed, p.head, p.used]).toEqual([0, 1, [0, 1]]);
    expect(p.bytes[0].budget).toBe(300 * 1024);
    expect(p.at).toEqual({ B: 1, N: 1, S: 16, P: 16, C: 16, T: 16 });
    expect(JSON.parse(readFileSync(join(art.dir, "manifest.json"), "utf8")).placement).toEqual(p);
    expect(art.explain.filter((m) => m.pass === "placement")).toHaveLength(2);

    const { stdout } = await promisify(execFile)("node", [join(ROOT, "bin/kiln.mjs"), "inspect", art.dir], { cwd: ROOT });
    expect(stdout).toMatch(/\nplacement device 0: embeddings, layer 0; .* of 300\.0 KiB \(weights 200\.5 KiB, KV cache 2\.0 KiB, workspace/);
    expect(stdout).toMatch(/\n {10}device 1: layer 1, head; /);

    await expectKilnError(loadModel(art.dir, { checkpoint: GQA }), "E_USAGE", "placed over 2 device(s) (0, 1", "multi-GPU execution is not implemented", "needs 2 GPUs");
    // a different placement is a different artifact
    const other = await compile(GQA, { target: "cpu", cacheDir, maxSeq: 16, maxBatch: 1, maxMemory: { 0: "1GiB" } });
    expect(other.manifest.hash).not.toBe(art.manifest.hash);
  });

  test("an artifact wholly on device 0 runs, with the logits of an unplaced one", async () => {
    const placed = await compile(GQA, { target: "cpu", cacheDir, maxSeq: 16, maxBatch: 1, maxMemory: { 0: "1GiB", 1: "1GiB" } });
    expect(placed.manifest.placement!.used).toEqual([0]);
    const plain = await compile(GQA, { target: "cpu", cacheDir, maxSeq: 16, maxBatch: 1 });
    expect(plain.manifest.placement).toBeUndefined();
    await using a = await loadModel(placed.dir, { checkpoint: GQA });
    await using b = await loadModel(plain.dir, { checkpoint: GQA });
    const [x, y] = [await a.forward([[1, 2, 3]]), await b.forward([[1, 2, 3]])];
    expect(x.shape).toEqual([1, 3, 256]);
    expect(Array.from(x.logits)).toEqual(Array.from(y.logits));
  });

  test("kiln compile --max-memory: an impossible budget is a clear error", async () => {
    const r = await promisify(execFile)("node", [join(ROOT, "bin/kiln.mjs"), "compile", GQA, "--out", join(tmp, "x"), "--cache-dir", cacheDir, "--max-seq", "16", "--max-memory", "0=100KB,1=100KB"], { cwd: ROOT }).catch((e: { code: number; stderr: string }) => e);
    expect(r).toMatchObject({ code: 1 });
    expect((r as { stderr: string }).stderr).toMatch(/error\[E_PASS\].*placement.*needs .* more on device 1 .* short, and no device after it/s);
    expect((r as { stderr: string }).stderr).toContain("the budgets give 195.3 KiB (200000 bytes) over devices 0 (97.7 KiB), 1 (97.7 KiB)");
  });
});
