// `kiln demo`: the whole path on a fresh machine, with nothing downloaded. Writes a tiny random
// Llama checkpoint in the Hugging Face layout, picks the model from its config.json, traces it,
// binds the checkpoint's weights, and generates greedily on the best target present. Until the
// code generator lands (codegen issue), that target is the reference interpreter.

import { mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { traceModel } from "../dsl/model.js";
import { greedyGenerate } from "../ir/generate.js";
import { print } from "../ir/print.js";
import { parse } from "../ir/parse.js";
import { modelFor } from "../../models/index.js";
import { openCheckpoint, writeSafetensors } from "../../runtime/safetensors.js";
import { bindWeights } from "../../runtime/weights.js";
import { readHFConfig } from "./load-model.js";

export interface DemoOptions {
  out?: string;
  tokens: number;
  seed: number;
  log: (s: string) => void;
}

export const DEMO_CONFIG = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: 256, hidden_size: 64, intermediate_size: 128,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, hidden_act: "silu",
  rms_norm_eps: 1e-5, max_position_embeddings: 128, tie_word_embeddings: false,
  rope_parameters: { rope_type: "default", rope_theta: 10000 },
};

/** Seeded N(0, 1) samples (mulberry32 + Box–Muller): the same checkpoint on every machine. */
export function normals(seed: number): () => number {
  let s = seed >>> 0;
  const uniform = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

export async function demo(o: DemoOptions): Promise<number[]> {
  const dir = o.out ?? join(tmpdir(), "kiln-demo");
  const cfgDef = modelFor(DEMO_CONFIG);
  const graph0 = traceModel(cfgDef, cfgDef.fromHF(DEMO_CONFIG));

  // 1. a random checkpoint: linears N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + 0.2·N(0, 1)
  const randn = normals(o.seed);
  const tensors: Record<string, { dtype: "f32"; shape: number[]; data: Float32Array }> = {};
  let count = 0;
  for (const p of graph0.params) {
    const shape = p.shape as number[];
    const n = shape.reduce((a, b) => a * b, 1);
    const scale = p.name.includes("norm") ? 0.2 : p.name.includes("embed") ? 1 : 1 / Math.sqrt(shape[1]);
    const data = Float32Array.from({ length: n }, () => (p.name.includes("norm") ? 1 : 0) + scale * randn());
    tensors[p.name] = { dtype: "f32", shape, data };
    count += n;
  }
  const staging = `${dir}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging, { recursive: true });
  writeFileSync(join(staging, "config.json"), `${JSON.stringify(DEMO_CONFIG, null, 2)}\n`);
  writeSafetensors(join(staging, "model.safetensors"), tensors, { format: "pt" });
  rmSync(dir, { recursive: true, force: true });
  renameSync(staging, dir);
  o.log(`[1/4] wrote a random Llama checkpoint (${count.toLocaleString("en-US")} parameters, f32) to ${dir}\n`);

  // 2. the model, picked by model_type, traced against the config read back from disk
  const { json, file } = readHFConfig(dir);
  const def = modelFor(json, file);
  const graph = traceModel(def, def.fromHF(json, file));
  const text = print(graph);
  const roundTrips = print(parse(text)) === text;
  o.log(`[2/4] traced models/${def.family}.ts: ${graph.nodes.length} ops, ${graph.params.length} weights; verified; text form round-trips: ${roundTrips ? "yes" : "NO"}\n`);

  // 3. the weights, checked against what the graph expects
  const ckpt = openCheckpoint(dir);
  const { weights } = bindWeights(graph.params, ckpt, { where: dir, strict: true });
  ckpt.close();
  o.log(`[3/4] loaded ${Object.keys(weights).length} tensors from model.safetensors (names, shapes and dtypes checked)\n`);

  // 4. generation; the prompt is fixed token ids (a tokenizer comes with the runtime)
  const prompt = [1, 15, 42, 7, 99];
  o.log(`[4/4] target: reference interpreter (no code generator yet); greedy, prompt ids [${prompt.join(", ")}]\n      `);
  const t0 = performance.now();
  const ids = greedyGenerate(graph, weights, prompt, { maxNewTokens: o.tokens, onToken: (id) => o.log(`${id} `) });
  const secs = (performance.now() - t0) / 1000;
  o.log(`\n      ${o.tokens} tokens in ${secs.toFixed(2)} s (${(o.tokens / secs).toFixed(1)} tokens/s, no KV cache)\n`);
  if (!roundTrips) throw new Error("IR text form did not round-trip");
  return ids;
}
