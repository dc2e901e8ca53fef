// The model families beyond Llama against Hugging Face transformers' own numbers (fixtures made
// by scripts/hf-fixtures.py): Falcon (MQA + rotary, new_decoder_architecture, ALiBi), OPT (pre-LN,
// and the 350m form with post-LN and project_in/out), BLOOM, and the BERT encoder on a padded
// batch; the interpreter, and for a few decoders the cpu target through compile() and loadModel().

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import { alibiSlopes, traceModel } from "../compiler/dsl/index.js";
import { alloc, greedyGenerate, run, tensor } from "../compiler/ir/index.js";
import type { Tensor } from "../compiler/ir/index.js";
import { modelFor } from "../models/index.js";
import { loadModel } from "../runtime/api.js";
import { openCheckpoint, SafetensorsFile, toInterpreterTensor } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";
import { expectKilnErrorSync } from "./helpers.js";

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
});
