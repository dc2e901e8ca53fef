// The model families beyond Llama against Hugging Face transformers' own numbers (fixtures made
// by scripts/hf-fixtures.py): Falcon (MQA + rotary, new_decoder_architecture, ALiBi), OPT (pre-LN,
// and the 350m form with post-LN and project_in/out), BLOOM, and the BERT encoder on a padded
// batch; padded batches of the decoders on the interpreter; the cpu target through compile() and
// loadModel() (every decoder's forward and generate, the encoder's encode), and `kiln run` on it.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import { main } from "../compiler/cli/main.js";
import { compile } from "../compiler/codegen/compile.js";
import { alibiSlopes, traceModel } from "../compiler/dsl/index.js";
import { alloc, greedyGenerate, run, tensor } from "../compiler/ir/index.js";
import type { Tensor } from "../compiler/ir/index.js";
import { modelFor } from "../models/index.js";
import { loadModel } from "../runtime/api.js";
import { openCheckpoint, SafetensorsFile, toInterpreterTensor } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";
import { expectKilnError, expectKilnErrorSync } from "./helpers.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const manifest = JSON.parse(readFileSync(join(FIXTURES, "manifest.json"), "utf8")) as { fixtures: { name: string; family: string }[] };
const DECODERS = ["falcon-mqa", "falcon-new-arch", "falcon-alibi", "opt", "opt-350m", "bloom"];
const V = 256;

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};
const report = (what: string, err: number) => {
  if (process.env.KILN_PRINT_ERRORS) console.log(`${what}: max abs error ${err.toExponential(2)}`);
};

function fixture(name: string) {
  const root = join(FIXTURES, name);
  const json = JSON.parse(readFileSync(join(root, "config.json"), "utf8")) as Record<string, unknown>;
  const def = modelFor(json, join(root, "config.json"));
  const config = def.fromHF(json, join(root, "config.json"));
  const ref = SafetensorsFile.open(join(root, "reference.safetensors"));
  return { root, json, def, config, ref };
}

test("the manifest lists every family fixture with its family", () => {
  const got = manifest.fixtures.filter((f) => f.family !== "llama").map((f) => `${f.family}:${f.name}`);
  expect(got).toEqual(["falcon:falcon-mqa", "falcon:falcon-new-arch", "falcon:falcon-alibi", "opt:opt", "opt:opt-350m", "bloom:bloom", "bert:bert"]);
});

describe.each(DECODERS)("%s on the interpreter", (name) => {
  const { root, def, config, ref } = fixture(name);
  const graph = traceModel(def, config);
  const { weights, unused } = bindWeights(graph.params, openCheckpoint(root), { where: root });
  const inputIds = toInterpreterTensor(ref, "input_ids");
  const hfLogits = ref.toFloat32("logits");
  const greedy = Array.from(ref.toFloat64("greedy_ids"));
  const prompt = greedy.slice(0, 7);

  test("the family is picked from model_type and every checkpoint tensor is used", () => {
    expect(def.family).toBe(name.split("-")[0]);
    expect(unused).toEqual([]);
  });

  test("logits match Hugging Face within 1e-4", () => {
    const { logits } = run(graph, { input_ids: inputIds }, weights);
    expect(logits.shape).toEqual([2, 7, V]);
    const err = maxAbsDiff(logits.data, hfLogits);
    report(`${name} interpreter`, err);
    expect(err).toBeLessThanOrEqual(1e-4);
    expect(Math.max(...hfLogits) - Math.min(...hfLogits)).toBeGreaterThan(1); // not degenerate
  });

  test("greedy generation, without and with the KV cache, gives Hugging Face's tokens", () => {
    expect(prompt).toEqual(Array.from(inputIds.data.subarray(0, 7)));
    expect(greedyGenerate(graph, weights, prompt, { maxNewTokens: greedy.length - 7 })).toEqual(greedy);
    const cached = traceModel(def, config, { kvCache: true });
    expect(cached.outputs.map((o) => o.name)).toContain("present.1.value");
    expect(greedyGenerate(cached, weights, prompt, { maxNewTokens: greedy.length - 7 })).toEqual(greedy);
  });

  test("a split prefill (4 tokens, then 3 against the cache) gives the one-shot logits", () => {
    const cached = traceModel(def, config, { kvCache: true });
    const row = (from: number, to: number) => tensor("i64", [1, to - from], Array.from(inputIds.data.subarray(7 + from, 7 + to)));
    const empty: Record<string, Tensor> = {};
    for (const v of cached.inputs.filter((i) => i.name.startsWith("past.")))
      empty[v.name] = alloc("f32", v.shape.map((d) => (d === "B" ? 1 : d === "P" ? 0 : d)) as number[]);
    const first = run(cached, { input_ids: row(0, 4), ...empty }, weights);
    const past = Object.fromEntries(Object.keys(empty).map((k) => [k, first[k.replace("past.", "present.")]]));
    const second = run(cached, { input_ids: row(4, 7), ...past }, weights);
    const both = new Float32Array(7 * V);
    both.set(first.logits.data, 0);
    both.set(second.logits.data, 4 * V);
    expect(maxAbsDiff(both, hfLogits.subarray(7 * V))).toBeLessThanOrEqual(1e-4);
  });
});

/** Rows padded to one length, each on its side; the attention_mask says which tokens are real. */
function padRows(prompts: number[][], left: boolean[], S = Math.max(...prompts.map((p) => p.length))) {
  const pad = (p: number[], v: number[], fill: number, b: number) => (left[b] ? [...Array(S - p.length).fill(fill), ...v] : [...v, ...Array(S - p.length).fill(fill)]);
  const ids = prompts.flatMap((p, b) => pad(p, p, 0, b));
  const mask = prompts.flatMap((p, b) => pad(p, p.map(() => 1), 0, b));
  return { ids: tensor("i64", [prompts.length, S], ids), mask: tensor("i64", [prompts.length, S], mask), S };
}

describe.each(DECODERS)("%s: padded batches on the interpreter", (name) => {
  const { root, def, config, ref } = fixture(name);
  const plain = traceModel(def, config);
  const { weights } = bindWeights(plain.params, openCheckpoint(root), { where: root });
  const ids = Array.from(ref.toFloat64("input_ids"));
  const prompts = [ids.slice(0, 7), ids.slice(7, 10), ids.slice(10, 14)];
  const alone = (p: number[]) => run(plain, { input_ids: tensor("i64", [1, p.length], p) }, weights).logits.data;
  const expectRow = (out: ArrayLike<number>, row: number, ref: ArrayLike<number>, refRow: number) => {
    let err = 0;
    for (let v = 0; v < V; v++) err = Math.max(err, Math.abs(out[row * V + v] - ref[refRow * V + v]));
    expect(err).toBeLessThanOrEqual(2e-5);
  };

  test("every real position gives the logits of its prompt alone (left and right padding); padded ones are finite", () => {
    const padded = traceModel(def, config, { attentionMask: true });
    const left = [true, false, true];
    const { ids: x, mask, S } = padRows(prompts, left);
    const out = run(padded, { input_ids: x, attention_mask: mask }, weights).logits.data;
    prompts.forEach((p, b) => {
      const lone = alone(p);
      const off = left[b] ? S - p.length : 0;
      for (let s = 0; s < p.length; s++) expectRow(out, b * S + off + s, lone, s);
    });
    expect(Array.from(out).every(Number.isFinite)).toBe(true);
  });

  test("with a KV cache: a left-padded prefill, then one token a step, equals each prompt alone", () => {
    const cached = traceModel(def, config, { attentionMask: true, kvCache: true });
    const { ids: x, mask, S } = padRows(prompts, [true, true, true]);
    const B = prompts.length;
    const empty = Object.fromEntries(cached.inputs.filter((v) => v.name.startsWith("past.")).map((v) => [v.name, alloc("f32", v.shape.map((d) => (d === "B" ? B : d === "P" ? 0 : d)) as number[])]));
    const first = run(cached, { input_ids: x, attention_mask: mask, ...empty }, weights);
    const past = Object.fromEntries(Object.keys(empty).map((k) => [k, first[k.replace("past.", "present.")]]));
    const next = [5, 6, 7];
    const mask2 = tensor("i64", [B, S + 1], prompts.flatMap((_, b) => [...Array.from(mask.data.subarray(b * S, (b + 1) * S)), 1]));
    const second = run(cached, { input_ids: tensor("i64", [B, 1], next), attention_mask: mask2, ...past }, weights).logits.data;
    prompts.forEach((p, b) => expectRow(second, b, alone([...p, next[b]]), p.length));
  });
});

describe("bert on the interpreter: a padded batch", () => {
  const { root, def, config, ref } = fixture("bert");
  const padded = traceModel(def, config, { attentionMask: true });
  const { weights, unused } = bindWeights(padded.params, openCheckpoint(root), { where: root });
  const inputs = Object.fromEntries(["input_ids", "token_type_ids", "attention_mask"].map((n) => [n, toInterpreterTensor(ref, n)]));
  const hidden = ref.toFloat32("last_hidden_state"), pooled = ref.toFloat32("pooler_output");
  const H = 64;

  test("last_hidden_state (padded positions too) and pooler_output match Hugging Face within 1e-4", () => {
    expect(unused).toEqual([]);
    expect(padded.inputs.map((v) => v.name)).toEqual(["input_ids", "token_type_ids", "attention_mask"]);
    expect(Array.from(inputs.attention_mask.data)).toEqual([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    const out = run(padded, inputs, weights);
    expect(out.last_hidden_state.shape).toEqual([2, 7, H]);
    expect(out.pooler_output.shape).toEqual([2, H]);
    const errs = [maxAbsDiff(out.last_hidden_state.data, hidden), maxAbsDiff(out.pooler_output.data, pooled)];
    report("bert last_hidden_state / pooler_output", Math.max(...errs));
    expect(Math.max(...errs)).toBeLessThanOrEqual(1e-4);
  });

  test("an encoder has no KV cache: tracing or compiling it with one is a clear error", async () => {
    expectKilnErrorSync(() => traceModel(def, config, { kvCache: true }), "E_USAGE", /'bert' is an encoder/, /no KV cache/);
    await expectKilnError(compile(root, { kvCache: "static" }), "E_USAGE", /'bert' is an encoder/);
    await expectKilnError(compile(root, { maxSeq: 65 }), "E_USAGE", /maxSeq 65 is over the encoder's max_position_embeddings 64/);
  });

  test("the padded row's real tokens equal that row alone, and the mask is what makes them so", () => {
    const plain = traceModel(def, config); // no attention_mask input: every token is real
    const slice = (t: Tensor, n: number) => tensor("i64", [1, n], Array.from(t.data.subarray(7, 7 + n)));
    const alone = run(plain, { input_ids: slice(inputs.input_ids, 4), token_type_ids: slice(inputs.token_type_ids, 4) }, weights);
    const realRows = (t: Float32Array | Float64Array) => t.subarray(7 * H, 11 * H);
    expect(maxAbsDiff(alone.last_hidden_state.data, realRows(hidden))).toBeLessThanOrEqual(1e-4);
    const unmasked = run(plain, { input_ids: inputs.input_ids, token_type_ids: inputs.token_type_ids }, weights);
    expect(maxAbsDiff(realRows(unmasked.last_hidden_state.data), realRows(hidden))).toBeGreaterThan(1e-2);
  });
});

describe("configs", () => {
  const json = (name: string) => fixture(name).json;

  test("an unknown model_type is a clear error naming it and the supported ones", () => {
    expectKilnErrorSync(() => modelFor({ model_type: "gpt2" }, "x/config.json"), "E_CONFIG", /'model_type' is 'gpt2'/, /llama, falcon, opt, bloom, bert/);
  });

  test.each([
    ["falcon-mqa", { activation: "relu" }, /'activation' is 'relu'/],
    ["falcon-mqa", { num_ln_in_parallel_attn: 2 }, /'num_ln_in_parallel_attn' 2 needs 'new_decoder_architecture'/],
    ["falcon-new-arch", { parallel_attn: false }, /'new_decoder_architecture' with 'parallel_attn' false/],
    ["falcon-new-arch", { num_kv_heads: 3 }, /must be a multiple of 'num_kv_heads' \(3\)/],
    ["opt", { layer_norm_elementwise_affine: false }, /'layer_norm_elementwise_affine' false/],
    ["opt", { activation_function: "silu" }, /'activation_function' is 'silu'/],
    ["bert", { position_embedding_type: "relative_key" }, /'position_embedding_type' is 'relative_key'/],
    ["bert", { is_decoder: true }, /'is_decoder' true/],
  ] as const)("%s with %j is an unsupported option named in the error", (name, patch, message) => {
    const j = { ...json(name), ...patch };
    expectKilnErrorSync(() => modelFor(j).fromHF(j, "config.json"), "E_CONFIG", message);
  });

  test("Falcon's three query_key_value layouts and BERT's checkpoint prefixes give the Hugging Face names", () => {
    const names = (j: Record<string, unknown>) => {
      const def = modelFor(j);
      return traceModel(def, def.fromHF(j)).params.map((p) => `${p.name}[${p.shape.join(",")}]`);
    };
    expect(names(json("falcon-mqa"))).toContain("transformer.h.0.self_attention.query_key_value.weight[96,64]"); // 4 q + k + v heads of 16
    expect(names(json("falcon-new-arch"))).toContain("transformer.h.1.ln_mlp.weight[64]");
    expect(names({ ...json("bert"), architectures: ["BertForMaskedLM"] })).toContain("bert.pooler.dense.weight[64,64]");
  });

  test("ALiBi slopes: the geometric sequence, with interleaved extra slopes when heads are not a power of 2", () => {
    expect(alibiSlopes(8)).toEqual([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]);
    expect(alibiSlopes(6)).toEqual([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]);
  });
});

describe("the cpu target", () => {
  const tmp = mkdtempSync(join(tmpdir(), "kiln-families-"));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  // every decoder (a g++ build is about 1.5 s each here): MQA, GQA, ALiBi before and after the scaling, learned positions
  test.each(DECODERS)("%s: forward gives Hugging Face's logits, generate its greedy tokens", async (name) => {
    const { root, ref } = fixture(name);
    const art = await compile(root, { target: "cpu", cacheDir: join(tmp, "cache"), maxSeq: 32 });
    await using model = await loadModel(art.dir, { checkpoint: root });
    const ids = Array.from(ref.toFloat64("input_ids"));
    const out = await model.forward([ids.slice(0, 7), ids.slice(7, 14)]);
    expect(out.shape).toEqual([2, 7, V]);
    const err = maxAbsDiff(out.logits, ref.toFloat32("logits"));
    report(`${name} cpu target`, err);
    expect(err).toBeLessThanOrEqual(1e-4);
    const greedy = Array.from(ref.toFloat64("greedy_ids"));
    const got: number[] = [];
    for await (const t of model.generate(greedy.slice(0, 7), { maxNewTokens: greedy.length - 7 })) got.push(t.id);
    expect(got).toEqual(greedy.slice(7));
  }, 120_000);

  describe("bert: encode()", () => {
    const { root, ref } = fixture("bert");
    const H = 64;
    const ids = Array.from(ref.toFloat64("input_ids")), types = Array.from(ref.toFloat64("token_type_ids")), mask = Array.from(ref.toFloat64("attention_mask"));
    const rows = (x: number[], n = 4) => [x.slice(0, 7), x.slice(7, 7 + n)];
    const hidden = ref.toFloat32("last_hidden_state"), pooled = ref.toFloat32("pooler_output");
    const maxAbsAt = (a: Float32Array, b: ArrayLike<number>, at: number[]) => at.reduce((m, i) => Math.max(m, Math.abs(a[i] - b[i])), 0);
    const realPositions = (lengths: number[], S: number, left = false) =>
      lengths.flatMap((n, b) => [...Array(n).keys()].flatMap((s) => [...Array(H).keys()].map((k) => (b * S + (left ? S - n : 0) + s) * H + k)));

    test("a padded artifact runs packed (unpad-varlen) and reproduces Hugging Face's padded batch at real tokens; ragged rows too", async () => {
      const art = await compile(root, { target: "cpu", padded: true, cacheDir: join(tmp, "cache"), maxSeq: 32 });
      // unpad-varlen: only the real tokens run, end to end, with cu_seqlens
      expect(art.manifest.inputs.map((i) => `${i.name}[${i.shape.join(",")}]`)).toEqual(["input_ids[1,T]", "cu_seqlens[B+1]", "token_type_ids[1,T]"]);
      expect(art.manifest.outputs.map((o) => `${o.name}[${o.shape.join(",")}]`)).toEqual([`last_hidden_state[1,T,${H}]`, `pooler_output[B,${H}]`]);
      expect(art.manifest.kvCache).toBeNull();
      await using model = await loadModel(art.dir, { checkpoint: root });
      expect(model.kind).toBe("encoder");
      expect(model.packed).toBe(true);

      // HF's inputs as given (rows padded already, with their mask): the real positions and the pooled output; padding comes back as zeros
      const asHF = await model.encode(rows(ids, 7), { tokenTypeIds: rows(types, 7), attentionMask: rows(mask, 7) });
      expect(asHF.shape).toEqual([2, 7, H]);
      expect(asHF.lengths).toEqual([7, 4]);
      const errs = [maxAbsAt(asHF.lastHiddenState, hidden, realPositions([7, 4], 7)), maxAbsDiff(asHF.poolerOutput!, pooled)];
      report("bert cpu target (packed) last_hidden_state / pooler_output", Math.max(...errs));
      expect(Math.max(...errs)).toBeLessThanOrEqual(1e-4);
      expect(asHF.lastHiddenState.subarray((7 + 4) * H, 14 * H).every((x) => x === 0)).toBe(true);

      // ragged rows, right-padded here (HF's default for encoders): the real positions and the pooled output
      const right = await model.encode(rows(ids), { tokenTypeIds: rows(types) });
      expect(right.lengths).toEqual([7, 4]);
      expect(maxAbsAt(right.lastHiddenState, hidden, realPositions([7, 4], 7))).toBeLessThanOrEqual(1e-4);
      expect(maxAbsDiff(right.poolerOutput!, pooled)).toBeLessThanOrEqual(1e-4);

      // left padding: packed, each row runs as its own sequence (positions from its first real token),
      // so a left-padded row gives the right-padded row's values, placed on the right columns
      const left = await model.encode(rows(ids), { tokenTypeIds: rows(types), padding: "left" });
      expect(maxAbsAt(left.lastHiddenState, hidden, realPositions([7], 7))).toBeLessThanOrEqual(1e-4);
      const shifted = (b: number, s: number) => left.lastHiddenState.subarray((b * 7 + 3 + s) * H, (b * 7 + 4 + s) * H);
      for (let s = 0; s < 4; s++) expect(maxAbsDiff(shifted(1, s), right.lastHiddenState.subarray((7 + s) * H, (8 + s) * H))).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(left.poolerOutput!, pooled)).toBeLessThanOrEqual(1e-4);

      // token types default to 0, as in HF
      const zeros = await model.encode([ids.slice(0, 7)]);
      const explicit = await model.encode([ids.slice(0, 7)], { tokenTypeIds: [0, 0, 0, 0, 0, 0, 0] });
      expect(maxAbsDiff(zeros.lastHiddenState, explicit.lastHiddenState)).toBe(0);

      // the decoder methods, and bad inputs, are clear errors
      await expectKilnError(model.forward([ids.slice(0, 7)]), "E_USAGE", /forward\(\) needs a decoder/, /bert artifact is an encoder/, /use encode\(\)/);
      await expectKilnError(model.generate(ids.slice(0, 3)).next(), "E_USAGE", /generate\(\) needs a decoder/);
      await expectKilnError(model.encode(rows(ids), { tokenTypeIds: [1, 0] }), "E_USAGE", /tokenTypeIds must have one value per token/);
      await expectKilnError(model.encode([ids.slice(0, 2)], { tokenTypeIds: [0, 2] }), "E_USAGE", /tokenTypeIds value 2 \(row 0, position 1\) is not in \[0, 2\)/);
      await expectKilnError(model.encode([[1, 2], []]), "E_USAGE", /every row at least one token/);
    }, 120_000);

    test("kiln compile / kiln run on the checkpoint folder (no padding): the pooled output; encode() on a decoder is a clear error", async () => {
      const out: string[] = [], err: string[] = [];
      const io = { out: (x: string) => void out.push(x), err: (x: string) => void err.push(x) };
      const dir = join(tmp, "bert-art");
      expect(await main(["compile", root, "--out", dir, "--cache-dir", join(tmp, "cache"), "--max-seq", "32"], io)).toBe(0);
      expect(await main(["run", dir, "--checkpoint", root, "--ids", ids.slice(0, 7).join(","), "--token-type-ids", types.slice(0, 7).join(",")], io)).toBe(0);
      const text = out.join("");
      expect(text).toContain(`last_hidden_state [1, 7, ${H}]`);
      expect(text).toContain(`pooler_output [1, ${H}]: ${Array.from(pooled.subarray(0, 8), (x) => x.toFixed(4)).join(" ")} …`);

      await using model = await loadModel(dir, { checkpoint: root });
      expect(model.padded).toBe(false);
      await expectKilnError(model.encode(rows(ids)), "E_USAGE", /rows of different lengths \(7, 4\) need a padded artifact/);
      await expectKilnError(model.encode(rows(ids, 7), { attentionMask: rows(mask, 7) }), "E_USAGE", /takes no attention_mask/);

      const opt = fixture("opt").root; // built by the decoders' test above (a cache hit), or here
      await using decoder = await loadModel((await compile(opt, { target: "cpu", cacheDir: join(tmp, "cache"), maxSeq: 32 })).dir, { checkpoint: opt });
      expect(decoder.kind).toBe("decoder");
      await expectKilnError(decoder.encode([[1, 2, 3]]), "E_USAGE", /encode\(\) needs an encoder/, /opt artifact is a decoder/, /use forward\(\) or generate\(\)/);
    }, 120_000);
  });
});
