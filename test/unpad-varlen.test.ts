// unpad-varlen on the interpreter: a padded batch (input_ids + attention_mask, fused attention)
// becomes packed tokens with cu_seqlens; at every real position the packed graph gives what the
// padded graph gives (random prompts, left/right/mixed padding, length 1, full rows), for a decoder
// (Llama, causal, RoPE positions), an ALiBi decoder (BLOOM) and an encoder (BERT: padding-only mask,
// pooler at each sequence's first token). What it cannot unpad it leaves alone and says why.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { ModelDef } from "../compiler/dsl/index.js";
import { traceModel } from "../compiler/dsl/index.js";
import type { Graph, Tensor } from "../compiler/ir/index.js";
import { run, tensor } from "../compiler/ir/index.js";
import { createContext, cse, dce, fuseAttention, messagesOf, runPipeline, unpadVarlen, unpadVarlenPass } from "../compiler/passes/index.js";
import { modelFor } from "../models/index.js";
import { openCheckpoint } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";

const FIXTURES = join(import.meta.dirname, "fixtures");

function load(name: string) {
  const root = join(FIXTURES, name);
  const json = JSON.parse(readFileSync(join(root, "config.json"), "utf8")) as Record<string, unknown>;
  const def = modelFor(json) as ModelDef<unknown>;
  const config = def.fromHF(json);
  const padded = dce(fuseAttention(cse(traceModel(def, config, { attentionMask: true }))));
  const { weights } = bindWeights(padded.params, openCheckpoint(root));
  return { padded, weights, vocab: Number(json.vocab_size) };
}

/** A padded batch (each row left- or right-padded to the longest) and the same tokens packed. */
function batches(prompts: number[][], left: boolean[]) {
  const S = Math.max(...prompts.map((p) => p.length));
  const ids: number[] = [], mask: number[] = [], where: number[][] = [];
  prompts.forEach((p, b) => {
    const pad = S - p.length;
    const off = left[b] ? pad : 0;
    const row = Array<number>(S).fill(0), m = Array<number>(S).fill(0);
    p.forEach((t, s) => ((row[off + s] = t), (m[off + s] = 1)));
    ids.push(...row);
    mask.push(...m);
    where.push(p.map((_, s) => b * S + off + s));
  });
  const cu = [0];
  for (const p of prompts) cu.push(cu[cu.length - 1] + p.length);
  const packed = prompts.flat();
  return {
    S, where, T: packed.length,
    padded: { input_ids: tensor("i64", [prompts.length, S], ids), attention_mask: tensor("i64", [prompts.length, S], mask) } as Record<string, Tensor>,
    packed: { input_ids: tensor("i64", [1, packed.length], packed), cu_seqlens: tensor("i32", [prompts.length + 1], cu) } as Record<string, Tensor>,
  };
}

/** max |padded − packed| over the real positions of an output [B, S, F] vs [1, T, F]. */
function realDiff(a: Tensor, b: Tensor, where: number[][]): number {
  const F = a.shape[a.shape.length - 1];
  let err = 0, t = 0;
  for (const rows of where)
    for (const r of rows) {
      for (let f = 0; f < F; f++) err = Math.max(err, Math.abs(a.data[r * F + f] - b.data[t * F + f]));
      t++;
    }
  return err;
}

const arbBatch = (vocab: number) =>
  fc.tuple(
    fc.array(fc.array(fc.integer({ min: 0, max: vocab - 1 }), { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 3 }),
    fc.array(fc.boolean(), { minLength: 3, maxLength: 3 }),
  );

describe.each(["llama-gqa", "bloom"])("%s: the packed graph gives the padded graph's logits at every real position", (name) => {
  const { padded, weights, vocab } = load(name);
  const ctx = createContext();
  const packed = runPipeline(padded, [unpadVarlenPass], { context: ctx });

  test("inputs become input_ids [1, T] and cu_seqlens [B+1]; attention runs varlen; the pass says so", () => {
    expect(packed.inputs.map((v) => `${v.name}: ${v.dtype}[${v.shape.join(", ")}]`)).toEqual(["input_ids: i64[1, T]", "cu_seqlens: i32[B+1]"]);
    const fa = packed.nodes.filter((n) => n.op === "flash_attention");
    expect(fa.length).toBeGreaterThan(0);
    expect(fa.every((n) => n.attrs.varlen === true && n.attrs.key_mask === undefined && n.operands[n.operands.length - 1].name === "cu_seqlens")).toBe(true);
    expect(packed.nodes.some((n) => n.op === "mask_positions")).toBe(false);
    expect(messagesOf(ctx, "unpad-varlen").join("\n")).toMatch(/unpadded: \d+ attention\(s\) run varlen over the packed tokens \[1, T\] of B sequences/);
  });

  test("random batches: left, right and mixed padding, rows of length 1 and full rows", () => {
    fc.assert(
      fc.property(arbBatch(vocab), ([prompts, left]) => {
        const b = batches(prompts, left);
        const want = run(padded, b.padded, weights).logits;
        const got = run(packed, b.packed, weights).logits;
        expect(got.shape).toEqual([1, b.T, vocab]);
        expect(realDiff(want, got, b.where)).toBeLessThanOrEqual(2e-5);
        for (const x of got.data) expect(Number.isFinite(x)).toBe(true);
      }),
      { numRuns: 10, seed: 5 },
    );
  });
});

describe("bert: an encoder unpads too (padding-only mask; the pooler reads each sequence's first token)", () => {
  const { padded, weights, vocab } = load("bert");
  const packed = unpadVarlen(padded);

  test("last_hidden_state at real tokens and pooler_output equal the padded graph's", () => {
    expect(packed.inputs.map((v) => v.name)).toEqual(["input_ids", "cu_seqlens", "token_type_ids"]);
    fc.assert(
      fc.property(arbBatch(vocab), ([prompts]) => {
        // encoders pad on the right (Hugging Face's default): positions are then 0..len−1 in both forms
        const left = prompts.map(() => false);
        const b = batches(prompts, left);
        const types = (shape: number[]) => tensor("i64", shape, Array<number>(shape[0] * shape[1]).fill(0));
        const want = run(padded, { ...b.padded, token_type_ids: types([prompts.length, b.S]) }, weights);
        const got = run(packed, { ...b.packed, token_type_ids: types([1, b.T]) }, weights);
        expect(realDiff(want.last_hidden_state, got.last_hidden_state, b.where)).toBeLessThanOrEqual(2e-5);
        expect(got.pooler_output.shape).toEqual([prompts.length, got.pooler_output.shape[1]]);
        let err = 0;
        for (let i = 0; i < want.pooler_output.data.length; i++) err = Math.max(err, Math.abs(got.pooler_output.data[i] - want.pooler_output.data[i]));
        expect(err).toBeLessThanOrEqual(2e-5);
      }),
      { numRuns: 8, seed: 6 },
    );
  });
});

describe("what unpad-varlen leaves alone", () => {
  const { padded } = load("llama-gqa");
  const explainOf = (g: Graph): [Graph, string] => {
    const msgs: string[] = [];
    return [unpadVarlen(g, (m) => msgs.push(m)), msgs.join("\n")];
  };

  test("an unpadded graph, a graph with a KV cache, and attention left eager", () => {
    const root = join(FIXTURES, "llama-gqa");
    const json = JSON.parse(readFileSync(join(root, "config.json"), "utf8")) as Record<string, unknown>;
    const def = modelFor(json) as ModelDef<unknown>;
    const plain = traceModel(def, def.fromHF(json));
    expect(explainOf(plain)).toEqual([plain, expect.stringMatching(/no attention_mask and input_ids inputs/)]);
    const cached = traceModel(def, def.fromHF(json), { attentionMask: true, kvCache: true });
    expect(explainOf(cached)[1]).toMatch(/not unpadded: input_ids .* and attention_mask .* are not the same \[B, S\]|has a KV cache/);
    const eager = traceModel(def, def.fromHF(json), { attentionMask: true });
    const [same, why] = explainOf(eager);
    expect(same).toBe(eager);
    expect(why).toMatch(/not unpadded: .*(reads the attention_mask|contracts over the sequence)/);
    expect(padded.inputs.map((v) => v.name)).toContain("attention_mask");
  });
});
