// `kiln` command line. Each command is a thin shell over the public API; failures Kiln reports
// on purpose (KilnError) print as `kiln: error[CODE] where: message` and exit 1.

import { Command, CommanderError, Option } from "commander";
import { traceModel } from "../dsl/model.js";
import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import { print, toJSON } from "../ir/print.js";
import { modelFor } from "../../models/index.js";
import { ARCHES, readManifest } from "../codegen/build.js";
import type { Arch } from "../codegen/build.js";
import { compile, DEFAULT_PASSES } from "../codegen/compile.js";
import type { Target } from "../codegen/emit.js";
import { DTYPE_BYTES } from "../ir/dtype.js";
import { loadModel } from "../../runtime/api.js";
import type { Model } from "../../runtime/api.js";
import { createContext, describePlacement, listPasses, parseMaxMemory, parsePipeline, runPipeline } from "../passes/index.js";
import type { MaxMemory } from "../passes/index.js";
import { demo } from "./demo.js";
import { formatBytes, Progress } from "./progress.js";
import { loadModelFile, readHFConfig } from "./load-model.js";

export interface IO {
  out: (s: string) => void;
  err: (s: string) => void;
}
const stdio: IO = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

const dtypeOption = () => new Option("--dtype <dtype>", "dtype of weights and activations").choices(["f32", "bf16", "f16"]).default("f32");

/** `--device-memory 0=80GiB,1=80GiB`: sizes per device, as --max-memory takes them but not "auto". */
function deviceMemory(v: string): Record<number, string> {
  const m = parseMaxMemory(v, "--device-memory");
  if (m === "auto") throw new KilnError("E_USAGE", "--device-memory takes each device's size (0=80GiB,1=80GiB), not auto");
  return m as Record<number, string>;
}

export function program(io: IO = stdio): Command {
  const p = new Command("kiln")
    .description("a compiler for transformer inference")
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();

  p.command("ir")
    .description("trace a model file with a Hugging Face config and print its IR")
    .argument("<model>", "model file (TypeScript; its default export is a defineModel(...) value), or a Hugging Face checkpoint folder or config.json (the model is picked by model_type)")
    .option("--config <path>", "config.json, or the checkpoint folder holding it (required with a model file)")
    .option("--json", "print the graph as JSON instead of the text form")
    .option("--no-typecheck", "skip type-checking the model file")
    .addOption(dtypeOption())
    .option("--passes <list>", "run this pass pipeline first and print the IR after it (e.g. \"cse,fuse-attention,dce\")")
    .option("--kv-cache", "trace with KV-cache inputs and outputs (what compile does)")
    .addOption(new Option("--quant <scheme>", "options for quantize-linear in --passes").choices(["int8", "nf4", "fp4"]))
    .action(async (model: string, o: { config?: string; json?: boolean; typecheck: boolean; dtype: DType; passes?: string; kvCache?: boolean; quant?: string }) => {
      const { def, config } = await resolveModel(model, o);
      let g = traceModel(def, config, { dtype: o.dtype, kvCache: o.kvCache, nextToken: o.kvCache === true && def.kind !== "encoder" });
      if (o.passes) {
        const ctx = createContext({ quant: o.quant });
        g = runPipeline(g, parsePipeline(o.passes), { context: ctx });
        for (const m of ctx.messages) io.err(`${m.pass}: ${m.message}\n`);
      }
      io.out(o.json ? `${JSON.stringify(toJSON(g), null, 2)}\n` : print(g));
    });

  p.command("compile")
    .description("compile a model to an artifact (a folder with manifest.json and the compiled library)")
    .argument("<model>", "model file (with --config), or a Hugging Face checkpoint folder / config.json")
    .option("--config <path>", "config.json, or the checkpoint folder holding it")
    .addOption(new Option("--target <target>", "what to compile for").choices(["cpu", "cuda"]).default("cpu"))
    .addOption(new Option("--arch <arch>", "GPU architecture (cuda target)").choices([...ARCHES]).default("sm_90a"))
    .addOption(new Option("--dtype <dtype>", "dtype of weights and activations (default: f32 on cpu, bf16 on cuda)").choices(["f32", "bf16", "f16"]))
    .requiredOption("--out <dir>", "where to write the artifact")
    .option("--max-seq <n>", "most tokens per sequence, prompt and generated (default: max_position_embeddings)", (v) => positiveInt(v, "--max-seq"))
    .option("--max-batch <n>", "most sequences per batch", (v) => positiveInt(v, "--max-batch"), 8)
    .option("--passes <list>", "pass pipeline", DEFAULT_PASSES)
    .option("--cache-dir <dir>", "artifact cache (default: $KILN_CACHE_DIR or ~/.cache/kiln/artifacts)")
    .option("--no-typecheck", "skip type-checking the model file")
    .option("--explain", "say what each pass rewrote or left alone, and why")
    .option("--padded", "take an attention_mask, for batches of prompts of different lengths")
    .option("--kv-cache <mode>", "static (default), growing (default with --padded), none (prefill only; --padded then runs packed, on real tokens only), or varlen (packed batched generation: a cache row per sequence, no work on padding)")
    .option("--last-token", "packed builds: outputs at each sequence's last token only (prefill logits)")
    .option("--dump-ir-after <passes>", "print the IR after these passes (comma-separated names, or all) to stderr")
    .addOption(new Option("--quant <scheme>", "quantize the linears: LLM.int8 or 4-bit (bitsandbytes' schemes)").choices(["int8", "nf4", "fp4"]))
    .option("--double-quant", "4-bit: quantize the absmax values too (bnb_4bit_use_double_quant)")
    .option("--int8-threshold <t>", "int8: outlier threshold (llm_int8_threshold)", Number)
    .option("--skip-modules <names>", "modules kept in 16 bits, comma-separated (default lm_head)", (v: string) => v.split(",").map((x) => x.trim()).filter(Boolean))
    .option("--max-memory <budgets>", "place the layers over devices within these budgets: 0=20GiB,1=40GiB, or auto (with --device-memory); recorded in manifest.json", (v) => parseMaxMemory(v))
    .option("--device-memory <sizes>", "--max-memory auto: each device's memory, 0=80GiB,1=80GiB", (v) => deviceMemory(v))
    .action(async (model: string, o: { config?: string; target: Target; arch: Arch; dtype?: "f32" | "bf16" | "f16"; out: string; maxSeq?: number; maxBatch: number; passes: string; cacheDir?: string; typecheck: boolean; explain?: boolean; padded?: boolean; kvCache?: "static" | "growing" | "none" | "varlen"; lastToken?: boolean; dumpIrAfter?: string; quant?: "int8" | "nf4" | "fp4"; doubleQuant?: boolean; int8Threshold?: number; skipModules?: string[]; maxMemory?: MaxMemory; deviceMemory?: Record<number, string> }) => {
      const stages = ["trace", "passes", "emit", "compile", "done"];
      const bar = new Progress(`compiling for ${o.target}`, io.err);
      const dump = o.dumpIrAfter?.split(",").map((x) => x.trim());
      const onAfterPass = dump ? (pass: string, text: string) => (dump.includes("all") || dump.includes(pass) ? io.err(`// ----- IR after ${pass}\n${text}`) : undefined) : undefined;
      const art = await compile(model, { ...o, onAfterPass, onProgress: (stage, info) => bar.update(stage === "cache-hit" ? 1 : stages.indexOf(stage) / 4, stage === "compile" ? (info ?? "") : stage) });
      bar.done(art.cached ? "(cache hit)" : "");
      if (o.explain) for (const m of art.explain) io.err(`${m.pass}: ${m.message}\n`);
      io.out(`${art.dir}\n`);
    });

  p.command("run")
    .description("load an artifact with a checkpoint and generate, streaming tokens (an encoder: print its pooled output)")
    .argument("<artifact>", "artifact folder (from kiln compile)")
    .requiredOption("--checkpoint <dir>", "Hugging Face checkpoint folder")
    .option("--prompt <text>", "prompt text (needs the checkpoint's tokenizer.json)")
    .option("--ids <ids>", "prompt token ids, comma-separated")
    .option("--max-new-tokens <n>", "tokens to generate", (v) => positiveInt(v, "--max-new-tokens"), 32)
    .option("--temperature <t>", "sampling temperature (0 = greedy)", Number)
    .option("--top-k <k>", "keep the k most likely tokens", Number)
    .option("--top-p <p>", "nucleus sampling mass", Number)
    .option("--repetition-penalty <r>", "penalty on tokens already present", Number)
    .option("--seed <n>", "sampling seed", Number)
    .option("--device <n>", "GPU ordinal (cuda artifacts)", Number, 0)
    .option("--token-type-ids <ids>", "encoders: segment ids, comma-separated, one per token (default all 0)")
    .action(async (artifact: string, o: { checkpoint: string; prompt?: string; ids?: string; maxNewTokens: number; temperature?: number; topK?: number; topP?: number; repetitionPenalty?: number; seed?: number; device: number; tokenTypeIds?: string }) => {
      if ((o.prompt === undefined) === (o.ids === undefined)) throw new KilnError("E_USAGE", "give exactly one of --prompt <text> or --ids <ids>");
      const list = (v: string, what: string) => v.split(",").map((x) => positiveInt(x.trim(), what));
      const prompt = o.ids !== undefined ? list(o.ids, "--ids") : o.prompt!;
      const bar = new Progress("loading", io.err);
      const model = await loadModel(artifact, { checkpoint: o.checkpoint, device: o.device, onProgress: (d, t) => bar.update(t ? d / t : 1, formatBytes(d)) });
      bar.done(`${model.target}`);
      if (model.kind === "encoder") {
        try {
          return void (await printEncoding(model, prompt, o.tokenTypeIds === undefined ? undefined : list(o.tokenTypeIds, "--token-type-ids"), io));
        } finally {
          await model.dispose();
        }
      }
      if (o.tokenTypeIds !== undefined) throw new KilnError("E_USAGE", "--token-type-ids is for encoders; this artifact is a decoder");
      const ac = new AbortController();
      const onSigint = () => ac.abort();
      process.once("SIGINT", onSigint);
      let n = 0, first = 0;
      const t0 = performance.now();
      try {
        for await (const t of model.generate(prompt, { maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, repetitionPenalty: o.repetitionPenalty, seed: o.seed, signal: ac.signal })) {
          if (n++ === 0) first = performance.now();
          io.out(t.text !== undefined ? t.text : `${t.id} `);
        }
      } finally {
        process.off("SIGINT", onSigint);
        await model.dispose();
      }
      const end = performance.now();
      const decode = n > 1 ? ((n - 1) / ((end - first) / 1000)).toFixed(1) : "-";
      io.err(`\n${n} tokens in ${((end - t0) / 1000).toFixed(3)} s: first token ${((first - t0) / 1000).toFixed(3)} s, then ${decode} tokens/s\n`);
    });

  p.command("inspect")
    .description("describe an artifact: target, inputs, outputs, weights, dims, workspace")
    .argument("<artifact>", "artifact folder")
    .option("--json", "print manifest.json")
    .action((artifact: string, o: { json?: boolean }) => {
      const m = readManifest(artifact);
      if (o.json) return void io.out(`${JSON.stringify(m, null, 2)}\n`);
      const t = (x: { name: string; dtype: string; shape: (number | string)[] }) => `${x.name}: ${x.dtype}[${x.shape.join(", ")}]`;
      const bytes = m.weights.reduce((a, w) => a + (w.shape as number[]).reduce((x, y) => x * y, 1) * DTYPE_BYTES[w.dtype as DType], 0);
      io.out(
        [
          `artifact  ${artifact}`,
          `model     ${m.model.family} (${m.model.graph}), ${m.model.dtype}`,
          `target    ${m.target}${m.arch ? ` ${m.arch}` : ""}; built by Kiln ${m.kiln} with ${m.compiler.command} (${m.compiler.version.split(" | ")[0]}) on ${m.created}`,
          `hash      ${m.hash}`,
          `dims      ${Object.entries(m.dims).map(([k, d]) => `${k} ≤ ${d.max} (${d.from})`).join("; ")}`,
          `inputs    ${m.inputs.length}: ${m.inputs.slice(0, 3).map(t).join(", ")}${m.inputs.length > 3 ? ", …" : ""}`,
          `outputs   ${m.outputs.length}: ${m.outputs.slice(0, 3).map(t).join(", ")}${m.outputs.length > 3 ? ", …" : ""}`,
          `kv cache  ${m.kvCache ? `${m.kvCache.layers} layers, ${m.kvCache.mode ?? "growing"}` : "none"}`,
          `weights   ${m.weights.length} tensors, ${formatBytes(bytes)}`,
          `workspace ${formatBytes(m.workspace.bytes)} at ${Object.entries(m.workspace.at).map(([k, v]) => `${k}=${v}`).join(", ")}`,
          ...(m.placement ? describePlacement(m.placement).map((line, i) => `${i ? "         " : "placement"} ${line}`) : []),
          "",
        ].join("\n"),
      );
    });

  p.command("passes")
    .description("list the passes a pipeline can name")
    .action(() => {
      for (const pass of listPasses()) io.out(`${pass.name.padEnd(18)} ${pass.description}\n`);
      io.out(`\ndefault pipeline: ${DEFAULT_PASSES}\n`);
    });

  p.command("demo")
    .description("write a tiny random Llama checkpoint, compile it for the best target here, load it and generate")
    .option("--out <dir>", "where to write the checkpoint (default: <tmp>/kiln-demo)")
    .option("--tokens <n>", "new tokens to generate", (v) => positiveInt(v, "--tokens"), 16)
    .option("--seed <n>", "seed of the random weights", (v) => positiveInt(v, "--seed"), 0)
    .addOption(new Option("--target <target>", "force a target (default: cuda with a GPU, else cpu)").choices(["cpu", "cuda"]))
    .option("--cache-dir <dir>", "artifact cache")
    .action(async (o: { out?: string; tokens: number; seed: number; target?: Target; cacheDir?: string }) => {
      await demo({ ...o, log: io.out, progress: io.err });
    });

  return p;
}

/** An encoder's answer to `kiln run`: the shapes, and the pooled output (else the first token's hidden state) in brief. */
async function printEncoding(model: Model, input: string | number[], tokenTypeIds: number[] | undefined, io: IO): Promise<void> {
  const t0 = performance.now();
  const r = await model.encode(input, { tokenTypeIds });
  const ms = performance.now() - t0;
  const [B, S, H] = r.shape;
  const pooled = r.poolerOutput ?? r.lastHiddenState.subarray(0, H);
  const norm = Math.sqrt(pooled.reduce((a, x) => a + x * x, 0));
  const head = Array.from(pooled.subarray(0, 8), (x) => x.toFixed(4)).join(" ");
  io.out(`last_hidden_state [${B}, ${S}, ${H}]
`);
  io.out(`${r.poolerOutput ? `pooler_output [${B}, ${H}]` : "last_hidden_state[0, 0]"}: ${head}${H > 8 ? " …" : ""} (L2 norm ${norm.toFixed(4)})
`);
  io.err(`${S} tokens encoded in ${(ms / 1000).toFixed(3)} s
`);
}

function positiveInt(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new KilnError("E_USAGE", `${what} must be a non-negative integer, got '${v}'`);
  return n;
}

/** A model file plus --config, or a checkpoint folder / config.json whose model_type picks the model. */
async function resolveModel(model: string, o: { config?: string; typecheck: boolean }) {
  if (/\.[cm]?tsx?$/.test(model)) {
    if (!o.config) throw new KilnError("E_USAGE", "--config <config.json> is required with a model file", { where: model });
    const def = await loadModelFile(model, { typecheck: o.typecheck, color: process.stderr.isTTY });
    const { json, file } = readHFConfig(o.config);
    return { def, config: def.fromHF(json, file) };
  }
  const { json, file } = readHFConfig(o.config ?? model);
  const def = modelFor(json, file);
  return { def, config: def.fromHF(json, file) };
}

/** Runs the CLI; resolves to the process exit code. */
export async function main(argv: string[], io: IO = stdio): Promise<number> {
  try {
    await program(io).parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    if (e instanceof KilnError) {
      io.err(`kiln: error[${e.code}] ${e.message}\n`);
      return 1;
    }
    io.err(`kiln: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 2;
  }
}

