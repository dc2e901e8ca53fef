// The varlen KV cache on the interpreter: unpad-varlen with varlenCache packs a static-cache graph
// (tokens [1, T], cu_seqlens, a cache row and past length per sequence) for every decoder family,
// and the packed graph gives each sequence what the static graph gives that sequence run alone:
// random numbers of sequences, past lengths (decode, prefill, and mixes), new lengths and cache
// rows (property test). The ops themselves, by hand: test/interpreter.test.ts.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { ModelDef } from "../compiler/dsl/index.js";
import { traceModel } from "../compiler/dsl/index.js";
import type { Graph, Tensor } from "../compiler/ir/index.js";
import { initialCache, parse, print, run, tensor } from "../compiler/ir/index.js";
import { createContext, cse, dce, fuseAttention, runPipeline, parsePipeline, unpadVarlen } from "../compiler/passes/index.js";
import { modelFor } from "../models/index.js";
import { openCheckpoint } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";
import { maxAbsDiff } from "./varlen-helpers.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const C = 12; // cache capacity
const ROWS = 4; // cache rows

function load(name: string) {
  const root = join(FIXTURES, name);
  const json = JSON.parse(readFileSync(join(root, "config.json"), "utf8")) as Record<string, unknown>;
  const def = modelFor(json) as ModelDef<unknown>;
  const eager = traceModel(def, def.fromHF(json), { kvCache: "static" });
  const msgs: string[] = [];
  const packed = dce(unpadVarlen(dce(fuseAttention(cse(eager))), (m) => msgs.push(m), { varlenCache: true }));
  const { weights } = bindWeights(eager.params, openCheckpoint(root));
  return { eager, packed, msgs, weights };
}

describe("unpad-varlen packs the static cache of every decoder family", () => {
  test.each(["llama-mha", "llama-gqa", "llama-mqa-tied", "llama3-rope", "falcon-mqa", "falcon-new-arch", "falcon-alibi", "opt", "opt-350m", "bloom"])("%s", (name) => {
    const { packed, msgs } = load(name);
    expect(msgs.join("\n")).toMatch(/packed with the varlen cache: 2 attention\(s\) read each sequence's cache row/);
    expect(packed.inputs.slice(0, 4).map((v) => `${v.name}: ${v.dtype}[${v.shape.join(", ")}]`)).toEqual([
      "input_ids: i64[1, T]", "cu_seqlens: i32[N+1]", "cache_slot: i32[N]", "cache_position: i64[N]",
    ]);
    const ops = packed.nodes.map((n) => n.op);
    expect(ops.filter((o) => o === "varlen_cache_attention")).toHaveLength(2);
    expect(ops.filter((o) => o === "varlen_cache_write")).toHaveLength(4);
    expect(ops).not.toContain("cache_write");
    expect(ops).not.toContain("flash_attention");
    const text = print(packed);
    expect(print(parse(text))).toBe(text);
  });

  test("without varlenCache a static-cache graph is left alone, and a cache read by another op is refused", () => {
    const { eager } = load("llama-gqa");
    const fused = dce(fuseAttention(cse(eager)));
    const msgs: string[] = [];
    expect(unpadVarlen(fused, (m) => msgs.push(m))).toBe(fused);
    expect(msgs.join()).toMatch(/not a padded batch/);
    // the eager attention (not fused) reads the written cache through repeat-kv: not packed
    const why: string[] = [];
    expect(unpadVarlen(eager, (m) => why.push(m), { varlenCache: true })).toBe(eager);
    expect(why.join()).toMatch(/not packed: reshape at .*llama.ts.* reads a written KV cache/);
  });
});

/** The static graph on one sequence alone: its `past` tokens, then its `fresh` ones; the logits of the fresh ones. */
function alone(g: Graph, weights: Record<string, Tensor>, past: number[], fresh: number[]): Float32Array {
  let cache = initialCache(g, 1, C);
  if (past.length) {
    const out = run(g, { input_ids: tensor("i64", [1, past.length], past), ...cache }, weights);
    cache = Object.fromEntries(Object.keys(cache).filter((k) => k.startsWith("past.")).map((k) => [k, out[k.replace("past.", "present.")]]));
  }
  cache.cache_position = tensor("i64", [], [past.length]);
  return run(g, { input_ids: tensor("i64", [1, fresh.length], fresh), ...cache }, weights).logits.data as Float32Array;
}

/** One call of the packed graph over sequences (tokens, cache row, past length); returns the logits [1, T, V] and the cache after. */
function packedCall(g: Graph, weights: Record<string, Tensor>, cache: Record<string, Tensor>, seqs: { ids: number[]; slot: number; at: number }[]) {
  const ids = seqs.flatMap((s) => s.ids);
  const cu = [0];
  for (const s of seqs) cu.push(cu[cu.length - 1] + s.ids.length);
  const out = run(g, {
    input_ids: tensor("i64", [1, ids.length], ids), cu_seqlens: tensor("i32", [cu.length], cu),
    cache_slot: tensor("i32", [seqs.length], seqs.map((s) => s.slot)), cache_position: tensor("i64", [seqs.length], seqs.map((s) => s.at)), ...cache,
  }, weights);
  const next = Object.fromEntries(Object.keys(cache).map((k) => [k, out[k.replace("past.", "present.")]]));
  return { logits: out.logits.data as Float32Array, cu, cache: next };
}

describe("the packed graph gives each sequence what it gets alone (property)", () => {
  test.each(["llama-gqa", "falcon-alibi", "opt"])("%s: random sequences, past lengths, new lengths and cache rows", (name) => {
    const { eager, packed, weights } = load(name);
    const seq = fc.record({ past: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 5 }), fresh: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 5 }) });
    fc.assert(
      fc.property(fc.array(seq, { minLength: 1, maxLength: 3 }), fc.shuffledSubarray([0, 1, 2, 3], { minLength: 3, maxLength: 3 }), (seqs, slots) => {
        const empty = initialCache(packed, ROWS, C);
        delete empty.cache_position;
        // the pasts first (a packed prefill of those that have one), then every sequence's new tokens at its position
        const withPast = seqs.map((s, n) => ({ ids: s.past, slot: slots[n], at: 0 })).filter((s) => s.ids.length);
        const cache = withPast.length ? packedCall(packed, weights, empty, withPast).cache : empty;
        const { logits, cu } = packedCall(packed, weights, cache, seqs.map((s, n) => ({ ids: s.fresh, slot: slots[n], at: s.past.length })));
        const V = logits.length / cu[cu.length - 1];
        seqs.forEach((s, n) => {
          const ref = alone(eager, weights, s.past, s.fresh);
          expect(maxAbsDiff(logits.slice(cu[n] * V, cu[n + 1] * V), ref)).toBeLessThanOrEqual(2e-5);
        });
      }),
      { numRuns: 12, seed: 5 },
    );
  });
});

test("compile's pipeline string runs it: varlenCache in the context packs, lastToken takes each sequence's last token", () => {
  const { eager } = load("llama-gqa");
  const ctx = createContext({ varlenCache: true, lastToken: true });
  const g = runPipeline(eager, parsePipeline("cse,fuse-attention,unpad-varlen,dce"), { context: ctx });
  expect(g.outputs[0].value.shape).toEqual(["N", 1, 256]);
});
