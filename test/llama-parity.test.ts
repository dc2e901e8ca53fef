// The oracle: Hugging Face transformers' own logits and greedy tokens for tiny random Llama
// checkpoints (test/fixtures, made by scripts/hf-fixtures.py on the GPU machine) must come out of
// the reference interpreter running models/llama.ts.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "@jest/globals";
import { traceModel } from "../compiler/dsl/index.js";
import { alloc, greedyGenerate, initialCache, run, tensor } from "../compiler/ir/index.js";
import llama from "../models/llama.js";
import { openCheckpoint, SafetensorsFile, toInterpreterTensor } from "../runtime/safetensors.js";
import { bindWeights } from "../runtime/weights.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const manifest = JSON.parse(readFileSync(join(FIXTURES, "manifest.json"), "utf8")) as { fixtures: { name: string; family: string; dir: string }[] };
const llamas = manifest.fixtures.filter((f) => f.family === "llama");

test("the fixtures cover MHA, GQA, MQA with tied embeddings, and Llama-3 rope scaling", () => {
  expect(llamas.map((f) => f.name).sort()).toEqual(["llama-gqa", "llama-mha", "llama-mqa-tied", "llama3-rope"]);
});

describe.each(llamas)("$name", ({ dir }) => {
  const root = join(FIXTURES, dir);
  const config = llama.fromHF(JSON.parse(readFileSync(join(root, "config.json"), "utf8")), join(root, "config.json"));
  const graph = traceModel(llama, config);
  const ckpt = openCheckpoint(root);
  const { weights, unused } = bindWeights(graph.params, ckpt, { where: root });
  const ref = SafetensorsFile.open(join(root, "reference.safetensors"));
  const inputIds = toInterpreterTensor(ref, "input_ids");
  const hfLogits = ref.toFloat32("logits");

  test("every checkpoint tensor is used by the graph", () => {
    expect(unused).toEqual([]);
  });

  test("logits match Hugging Face within 1e-4", () => {
    const { logits } = run(graph, { input_ids: inputIds }, weights);
    expect(logits.shape).toEqual(ref.info("logits").shape);
    let maxErr = 0;
    for (let i = 0; i < hfLogits.length; i++) maxErr = Math.max(maxErr, Math.abs(logits.data[i] - hfLogits[i]));
    expect(maxErr).toBeLessThanOrEqual(1e-4);
    if (process.env.KILN_PRINT_ERRORS) console.log(`${dir}: max |logits - HF| = ${maxErr.toExponential(2)}`);
    // and the logits are not degenerate (a test on near-constant logits would prove little)
    const spread = Math.max(...hfLogits) - Math.min(...hfLogits);
    expect(spread).toBeGreaterThan(1);
  });

  test("greedy generation gives Hugging Face's tokens", () => {
    const want = Array.from(ref.toFloat64("greedy_ids"));
    const prompt = want.slice(0, inputIds.shape[1]);
    expect(prompt).toEqual(Array.from(inputIds.data.subarray(0, inputIds.shape[1])));
    const got = greedyGenerate(graph, weights, prompt, { maxNewTokens: want.length - prompt.length });
    expect(got).toEqual(want);
  });

  /** Max |logits − HF| over row 1 of the fixture run as 4 tokens, then 3 against the cache. */
  const splitPrefillError = (first: { data: ArrayLike<number> }, second: { data: ArrayLike<number> }): number => {
    const V = 256;
    let maxErr = 0;
    for (let s = 0; s < 7; s++)
      for (let v = 0; v < V; v++) {
        const got = s < 4 ? first.data[s * V + v] : second.data[(s - 4) * V + v];
        maxErr = Math.max(maxErr, Math.abs(got - hfLogits[(7 + s) * V + v]));
      }
    return maxErr;
  };

  test("with a KV cache (prefill, then one token a step) the logits and tokens are the same", () => {
    const cached = traceModel(llama, config, { kvCache: true });
    expect(cached.inputs.map((v) => v.name)).toContain("past.1.value");
    expect(cached.outputs.map((o) => o.name)).toContain("present.1.value");
    const want = Array.from(ref.toFloat64("greedy_ids"));
    const prompt = want.slice(0, inputIds.shape[1]);
    expect(greedyGenerate(cached, weights, prompt, { maxNewTokens: want.length - prompt.length })).toEqual(want);
    // logits of a split prefill (4 tokens, then 3 more against the cache) equal the one-shot logits
    const row = (b: number, from: number, to: number) => tensor("i64", [1, to - from], Array.from(inputIds.data.subarray(b * 7 + from, b * 7 + to)));
    const empty = Object.fromEntries(cached.inputs.filter((v) => v.name.startsWith("past.")).map((v) => [v.name, alloc("f32", [1, config.kvHeads, 0, config.headDim])]));
    const first = run(cached, { input_ids: row(1, 0, 4), ...empty }, weights);
    const past = Object.fromEntries(Object.keys(empty).map((k) => [k, first[k.replace("past.", "present.")]]));
    const second = run(cached, { input_ids: row(1, 4, 7), ...past }, weights);
    expect(splitPrefillError(first.logits, second.logits)).toBeLessThanOrEqual(1e-4);
  });

  test("with a static KV cache (fixed capacity, written in place at cache_position) the logits and tokens are the same", () => {
    const fixed = traceModel(llama, config, { kvCache: "static" });
    expect(fixed.inputs.find((v) => v.name === "past.0.key")!.shape).toEqual(["B", config.kvHeads, "C", config.headDim]);
    const want = Array.from(ref.toFloat64("greedy_ids"));
    const prompt = want.slice(0, inputIds.shape[1]);
    expect(greedyGenerate(fixed, weights, prompt, { maxNewTokens: want.length - prompt.length })).toEqual(want);
    // a split prefill into a cache of capacity 10 (3 rows never written): 4 tokens, then 3 at position 4
    const row = (from: number, to: number) => tensor("i64", [1, to - from], Array.from(inputIds.data.subarray(7 + from, 7 + to)));
    const first = run(fixed, { input_ids: row(0, 4), ...initialCache(fixed, 1, 10) }, weights);
    const past = Object.fromEntries(fixed.inputs.filter((v) => v.name.startsWith("past.")).map((v) => [v.name, first[v.name.replace("past.", "present.")]]));
    const second = run(fixed, { input_ids: row(4, 7), cache_position: tensor("i64", [], [4]), ...past }, weights);
    expect(splitPrefillError(first.logits, second.logits)).toBeLessThanOrEqual(1e-4);
    // a write past the capacity is an error, not a silent truncation
    expect(() => run(fixed, { input_ids: row(0, 4), ...initialCache(fixed, 1, 10), cache_position: tensor("i64", [], [8]) }, weights)).toThrow(/does not fit the capacity 10/);
  });
});

test("the parity check is sensitive: Llama-3 rope scaling left out gives different logits", () => {
  const root = join(FIXTURES, "llama3-rope");
  const json = JSON.parse(readFileSync(join(root, "config.json"), "utf8"));
  const plain = llama.fromHF({ ...json, rope_parameters: { rope_type: "default", rope_theta: json.rope_parameters.rope_theta } });
  const graph = traceModel(llama, plain);
  const ref = SafetensorsFile.open(join(root, "reference.safetensors"));
  const { weights } = bindWeights(graph.params, openCheckpoint(root));
  const { logits } = run(graph, { input_ids: toInterpreterTensor(ref, "input_ids") }, weights);
  const hf = ref.toFloat32("logits");
  let maxErr = 0;
  for (let i = 0; i < hf.length; i++) maxErr = Math.max(maxErr, Math.abs(logits.data[i] - hf[i]));
  expect(maxErr).toBeGreaterThan(1e-3);
});
