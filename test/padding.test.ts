// Padded batches (the input side of unpad-varlen): a Llama traced with `attentionMask` runs a
// batch of prompts of different lengths, left- or right-padded, and gives at every real position
// the logits of that prompt run alone; padded positions are finite; with a KV cache too.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import { traceModel } from "../compiler/dsl/index.js";
import { alloc, greedyGenerate, run, tensor } from "../compiler/ir/index.js";
import type { Tensor } from "../compiler/ir/index.js";
import { dce, fuseAttention } from "../compiler/passes/index.js";
import llama from "../models/llama.js";
import { openCheckpoint } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";
import { expectKilnError } from "./helpers.js";

const root = join(import.meta.dirname, "fixtures", "llama-gqa");
const config = llama.fromHF(JSON.parse(readFileSync(join(root, "config.json"), "utf8")));
const plain = traceModel(llama, config);
const padded = traceModel(llama, config, { attentionMask: true });
const { weights } = bindWeights(plain.params, openCheckpoint(root));
const V = config.vocab;

const alone = (ids: number[]): Float32Array => run(plain, { input_ids: tensor("i64", [1, ids.length], ids) }, weights).logits.data as Float32Array;

function padBatch(prompts: number[][], left: boolean[]): { ids: Tensor; mask: Tensor; S: number } {
  const S = Math.max(...prompts.map((p) => p.length));
  const ids: number[] = [], mask: number[] = [];
  prompts.forEach((p, b) => {
    const pad = S - p.length;
    const row = left[b] ? [...Array(pad).fill(0), ...p] : [...p, ...Array(pad).fill(0)];
    const m = left[b] ? [...Array(pad).fill(0), ...p.map(() => 1)] : [...p.map(() => 1), ...Array(pad).fill(0)];
    ids.push(...row);
    mask.push(...m);
  });
  return { ids: tensor("i64", [prompts.length, S], ids), mask: tensor("i64", [prompts.length, S], mask), S };
}

describe("padded batches on the interpreter", () => {
  test("the padded graph has an attention_mask input; fuse-attention fuses causal + padding mask and the logits stay", () => {
    expect(padded.inputs.map((v) => `${v.name}: ${v.dtype}[${v.shape.join(", ")}]`)).toEqual(["input_ids: i64[B, S]", "attention_mask: i64[B, S]"]);
    const msgs: string[] = [];
    const fused = fuseAttention(padded, (m) => msgs.push(m));
    expect(msgs.join("\n")).toMatch(/fused \(causal \+ padding mask, kv_groups 4/);
    const fa = fused.nodes.filter((n) => n.op === "flash_attention");
    expect(fa).toHaveLength(2);
    expect(fa.every((n) => n.attrs.key_mask === true && n.operands[3].name === "attention_mask")).toBe(true);
    // mixed padding, a padded query row included: the fused graph gives the eager graph's logits everywhere
    const { ids, mask } = padBatch([[5, 6, 7], [9]], [true, false]);
    const eager = run(padded, { input_ids: ids, attention_mask: mask }, weights).logits.data;
    const after = run(fused, { input_ids: ids, attention_mask: mask }, weights).logits.data;
    let maxErr = 0;
    for (let i = 0; i < eager.length; i++) maxErr = Math.max(maxErr, Math.abs(eager[i] - after[i]));
    expect(maxErr).toBeLessThanOrEqual(2e-5);
  });

  test("every real position gives the logits of its prompt alone (left, right, mixed padding)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(fc.integer({ min: 0, max: V - 1 }), { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 3 }),
        fc.array(fc.boolean(), { minLength: 3, maxLength: 3 }),
        (prompts, left) => {
          const { ids, mask, S } = padBatch(prompts, left);
          const out = run(padded, { input_ids: ids, attention_mask: mask }, weights).logits.data;
          prompts.forEach((p, b) => {
            const ref = alone(p);
            const off = left[b] ? S - p.length : 0;
            for (let s = 0; s < p.length; s++)
              for (let v = 0; v < V; v++) expect(Math.abs(out[(b * S + off + s) * V + v] - ref[s * V + v])).toBeLessThanOrEqual(2e-5);
          });
          for (const x of out) expect(Number.isFinite(x)).toBe(true); // padded rows too
        },
      ),
      { numRuns: 12, seed: 8 },
    );
  });

  test("with a KV cache: padded prefill, then one token a step, equals each prompt alone", () => {
    const cached = traceModel(llama, config, { attentionMask: true, kvCache: true });
    expect(cached.inputs.find((v) => v.name === "attention_mask")!.shape).toEqual(["B", "P+S"]);
    const prompts = [[5, 6, 7, 8], [9, 10]];
    const next = [11, 12];
    const { ids, mask, S } = padBatch(prompts, [true, true]);
    const empty = Object.fromEntries(cached.inputs.filter((v) => v.name.startsWith("past.")).map((v) => [v.name, alloc("f32", [2, config.kvHeads, 0, config.headDim])]));
    const first = run(cached, { input_ids: ids, attention_mask: mask, ...empty }, weights);
    const past = Object.fromEntries(Object.keys(empty).map((k) => [k, first[k.replace("past.", "present.")]]));
    const mask2 = tensor("i64", [2, S + 1], [...Array.from(mask.data).slice(0, S), 1, ...Array.from(mask.data).slice(S), 1]);
    const second = run(cached, { input_ids: tensor("i64", [2, 1], next), attention_mask: mask2, ...past }, weights).logits.data;
    prompts.forEach((p, b) => {
      const ref = alone([...p, next[b]]);
      const last = p.length; // the new token's row in the lone run
      for (let v = 0; v < V; v++) expect(Math.abs(second[b * V + v] - ref[last * V + v])).toBeLessThanOrEqual(2e-5);
    });
  });

  test("the unpadded graph is unchanged in meaning: fuse-attention still fuses it", () => {
    expect(dce(fuseAttention(plain)).nodes.filter((n) => n.op === "flash_attention")).toHaveLength(config.layers);
  });
});

describe("padded batches on the cpu target", () => {
  test("forward() takes rows of different lengths and gives each row's own logits; generate still works", async () => {
    const { compile } = await import("../compiler/codegen/compile.js");
    const { loadModel } = await import("../runtime/api.js");
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const cacheDir = mkdtempSync(join(tmpdir(), "kiln-pad-"));
    try {
      const art = await compile(root, { target: "cpu", padded: true, cacheDir, maxSeq: 64 });
      expect(art.manifest.inputs.map((i) => i.name)).toContain("attention_mask");
      await using model = await loadModel(art.dir, { checkpoint: root });
      const prompts = [[3, 1, 4, 1, 5, 9], [2, 6], [5, 3, 5]];
      const out = await model.forward(prompts);
      expect(out.lengths).toEqual([6, 2, 3]);
      const S = out.shape[1];
      prompts.forEach((p, b) => {
        const ref = alone(p);
        for (let s = 0; s < p.length; s++)
          for (let v = 0; v < V; v++) expect(Math.abs(out.logits[(b * S + S - p.length + s) * V + v] - ref[s * V + v])).toBeLessThanOrEqual(1e-4);
      });
      const got: number[] = [];
      for await (const t of model.generate([1, 2, 3], { maxNewTokens: 4 })) got.push(t.id);
      expect(got).toEqual(greedyGenerate(plain, weights, [1, 2, 3], { maxNewTokens: 4 }).slice(3));

      // prefill only (kvCache "none"): unpad-varlen packs the batch, so only the 11 real tokens run
      const packed = await compile(root, { target: "cpu", padded: true, kvCache: "none", cacheDir, maxSeq: 64 });
      expect(packed.manifest.inputs.map((i) => `${i.name}[${i.shape.join(",")}]`)).toEqual(["input_ids[1,T]", "cu_seqlens[B+1]"]);
      expect(packed.explain.map((m) => m.message).join("\n")).toMatch(/unpadded: 2 attention\(s\) run varlen/);
      await using pm = await loadModel(packed.dir, { checkpoint: root });
      const p2 = await pm.forward(prompts);
      expect(p2.shape).toEqual(out.shape);
      expect(p2.lengths).toEqual([6, 2, 3]);
      let maxErr = 0;
      prompts.forEach((p, b) => {
        for (let i = (b * S + S - p.length) * V; i < (b + 1) * S * V; i++) maxErr = Math.max(maxErr, Math.abs(p2.logits[i] - out.logits[i]));
        expect(p2.logits.subarray(b * S * V, (b * S + S - p.length) * V).every((x) => x === 0)).toBe(true); // padding: zeros
      });
      expect(maxErr).toBeLessThanOrEqual(1e-4);
      // Hugging Face's form: rows padded to one length (right, left, mixed) with an attention_mask;
      // the padded and the packed artifact give each prompt's logits at its real positions
      const P = 8;
      const layouts = [
        { row: [3, 1, 4, 1, 5, 9, 0, 0], mask: [1, 1, 1, 1, 1, 1, 0, 0] }, // right
        { row: [0, 0, 0, 0, 0, 0, 2, 6], mask: [0, 0, 0, 0, 0, 0, 1, 1] }, // left
        { row: [0, 5, 3, 5, 0, 0, 0, 0], mask: [0, 1, 1, 1, 0, 0, 0, 0] }, // both sides
      ];
      const rowsM = layouts.map((l) => l.row), maskM = layouts.map((l) => l.mask);
      for (const m of [model, pm]) {
        const r = await m.forward(rowsM, { attentionMask: maskM });
        expect({ shape: r.shape, lengths: r.lengths }).toEqual({ shape: [3, P, V], lengths: [6, 2, 3] });
        let err = 0;
        prompts.forEach((p, b) => {
          const ref = alone(p);
          const at = maskM[b].flatMap((v, s) => (v ? [s] : []));
          at.forEach((s, j) => {
            for (let v = 0; v < V; v++) err = Math.max(err, Math.abs(r.logits[(b * P + s) * V + v] - ref[j * V + v]));
          });
          if (m === pm) maskM[b].forEach((v, s) => v || expect(r.logits.subarray((b * P + s) * V, (b * P + s + 1) * V).every((x) => x === 0)).toBe(true));
        });
        expect(err).toBeLessThanOrEqual(1e-4);
        await expectKilnError(m.forward(rowsM, { attentionMask: [[1, 1], [1, 1], [1, 1]] }), "E_USAGE", /one value per token: 3 rows of 8, got 3 rows of 2/);
        await expectKilnError(m.forward(rowsM, { attentionMask: [maskM[0], maskM[1], maskM[2].map(() => 0)] }), "E_USAGE", /row 2 has no real token/);
        await expectKilnError(m.forward(rowsM, { attentionMask: [maskM[0], maskM[1], [2, 1, 1, 1, 0, 0, 0, 0]] }), "E_USAGE", /value 2 \(row 2, position 0\) is not 0 or 1/);
        await expectKilnError(m.forward([[1, 2], [3]], { attentionMask: [[1, 1], [1]] }), "E_USAGE", /already be padded to one length/);
      }
      await expectKilnError(pm.generate([1, 2, 3]).next(), "E_USAGE", /KV cache/);
      await expectKilnError(pm.forward(Array.from({ length: 9 }, () => [1, 2])), "E_USAGE", /batch of 9 is over the artifact's bound B ≤ 8/);
      await expectKilnError(pm.forward([[1], []]), "E_USAGE", /a row with no tokens/);
      // lastToken: the logits of each sequence's last token only, [B, 1, V]
      const last = await compile(root, { target: "cpu", padded: true, kvCache: "none", lastToken: true, cacheDir, maxSeq: 64 });
      expect(last.manifest.outputs[0].shape).toEqual(["B", 1, V]);
      await using lm = await loadModel(last.dir, { checkpoint: root });
      const p3 = await lm.forward(prompts);
      expect(p3.shape).toEqual([3, 1, V]);
      let lastErr = 0;
      for (let b = 0; b < 3; b++) for (let v = 0; v < V; v++) lastErr = Math.max(lastErr, Math.abs(p3.logits[b * V + v] - out.logits[((b + 1) * S - 1) * V + v]));
      expect(lastErr).toBeLessThanOrEqual(1e-4);
    } finally {
      rmSync(cacheDir, { recursive: true, force: true });
    }
  });
});
