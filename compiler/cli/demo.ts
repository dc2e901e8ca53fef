// `kiln demo`: the whole path on a fresh machine, with nothing downloaded. Writes a tiny random
// Llama checkpoint in the Hugging Face layout, compiles models/llama.ts against its config.json
// for the best target present (cuda with a GPU, else cpu), loads it through the Node API and
// generates greedily; on the cpu target it also checks the tokens against the interpreter.

import { copyFileSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { traceModel } from "../dsl/model.js";
import { greedyGenerate } from "../ir/generate.js";
import { print } from "../ir/print.js";
import { parse } from "../ir/parse.js";
import { modelFor } from "../../models/index.js";
import { openCheckpoint, writeSafetensors } from "../../runtime/safetensors.js";
import { bindWeights } from "../../runtime/weights.js";
import { $ } from "zx";
import { fileURLToPath } from "node:url";
import { Tokenizer } from "../../runtime/tokenizer.js";
import { compile } from "../codegen/compile.js";
import type { Target } from "../codegen/emit.js";
import { loadModel } from "../../runtime/api.js";
import { formatBytes, Progress } from "./progress.js";
import { normals } from "../testing/random.js";

export interface DemoOptions {
  out?: string;
  tokens: number;
  seed: number;
  target?: Target;
  cacheDir?: string;
  log: (s: string) => void;
  /** where progress bars go (default: log) */
  progress?: (s: string) => void;
}

const DEMO_TOKENIZER = fileURLToPath(new URL("../../test/fixtures/tokenizer/bytelevel/", import.meta.url));

export const DEMO_CONFIG = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: 256, hidden_size: 64, intermediate_size: 128,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, hidden_act: "silu",
  rms_norm_eps: 1e-5, max_position_embeddings: 128, tie_word_embeddings: false,
  rope_parameters: { rope_type: "default", rope_theta: 10000 },
};


/** Whether this machine has an NVIDIA GPU and nvcc, i.e. whether the cuda target can run here. */
export async function cudaAvailable(): Promise<boolean> {
  const smi = await $({ nothrow: true, quiet: true })`nvidia-smi -L`.catch(() => undefined);
  if (!smi || smi.exitCode !== 0 || !/GPU \d/.test(smi.stdout)) return false;
  const nvcc = await $({ nothrow: true, quiet: true })`nvcc --version`.catch(() => undefined);
  return Boolean(nvcc && nvcc.exitCode === 0);
}

export async function demo(o: DemoOptions): Promise<number[]> {
  const dir = o.out ?? join(tmpdir(), "kiln-demo");
  // a real Hugging Face tokenizer (byte-level BPE, trained by scripts/hf-tokenizer-fixture.py), so the demo streams text
  const tokenizer = await Tokenizer.fromFile(join(DEMO_TOKENIZER, "tokenizer.json"));
  const config = { ...DEMO_CONFIG, vocab_size: tokenizer.vocabSize };
  const cfgDef = modelFor(config);
  const graph0 = traceModel(cfgDef, cfgDef.fromHF(config));

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
  writeFileSync(join(staging, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(DEMO_TOKENIZER, f), join(staging, f));
  writeSafetensors(join(staging, "model.safetensors"), tensors, { format: "pt" });
  rmSync(dir, { recursive: true, force: true });
  renameSync(staging, dir);
  o.log(`[1/4] wrote a random Llama checkpoint (${count.toLocaleString("en-US")} parameters, f32) to ${dir}\n`);

  // 2. compile for the best target here
  const target = o.target ?? ((await cudaAvailable()) ? "cuda" : "cpu");
  const stages = ["trace", "passes", "emit", "compile", "done"];
  const bar = new Progress(`[2/4] compiling models/llama.ts for ${target}`, o.progress ?? o.log);
  const art = await compile(dir, {
    target,
    dtype: target === "cuda" ? "bf16" : "f32",
    cacheDir: o.cacheDir,
    onProgress: (stage, info) => bar.update(stage === "cache-hit" ? 1 : stages.indexOf(stage) / (stages.length - 1), stage === "compile" ? (info ?? "") : stage),
  });
  bar.done(art.cached ? "(cache hit)" : `→ ${art.dir}`);
  const irText = print(art.graph);
  const roundTrips = print(parse(irText)) === irText;
  o.log(`      ${art.graph.nodes.length} ops, ${art.graph.params.length} weights; IR verified; text form round-trips: ${roundTrips ? "yes" : "NO"}\n`);

  // 3. load the checkpoint through the runtime
  const load = new Progress("[3/4] loading model.safetensors", o.progress ?? o.log);
  const model = await loadModel(art.dir, { checkpoint: dir, onProgress: (done, total) => load.update(total ? done / total : 1, formatBytes(done)) });
  load.done(`${art.manifest.weights.length} tensors, ${formatBytes(art.manifest.weights.reduce((a, w) => a + (w.shape as number[]).reduce((x, y) => x * y, 1), 0) * (target === "cuda" ? 2 : 4))}`);

  // 4. generate, and check the tokens against the reference interpreter
  const text = "Once upon a time";
  const prompt = tokenizer.encode(text);
  o.log(`[4/4] greedy generation on ${target} (random weights: expect gibberish)\n      ${JSON.stringify(text)} →`);
  const ids = [...prompt];
  const t0 = performance.now();
  try {
    for await (const t of model.generate(text, { maxNewTokens: o.tokens, stopTokens: [] })) {
      ids.push(t.id);
      o.log(t.text ?? "");
    }
  } finally {
    await model.dispose();
  }
  o.log(`\n      token ids: [${ids.slice(prompt.length).join(", ")}]`);
  const secs = (performance.now() - t0) / 1000;
  o.log(`\n      ${o.tokens} tokens in ${secs.toFixed(3)} s (${(o.tokens / secs).toFixed(1)} tokens/s)\n`);
  if (target === "cpu") {
    const ckpt = openCheckpoint(dir);
    const { weights } = bindWeights(graph0.params, ckpt, { where: dir });
    ckpt.close();
    const ref = greedyGenerate(graph0, weights, prompt, { maxNewTokens: o.tokens });
    const same = ref.every((v, i) => v === ids[i]);
    o.log(`      reference interpreter gives the same tokens: ${same ? "yes" : "NO"}\n`);
    if (!same) throw new Error(`the compiled model and the interpreter disagree: ${ids} vs ${ref}`);
  }
  if (!roundTrips) throw new Error("IR text form did not round-trip");
  return ids;
}
