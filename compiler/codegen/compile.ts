// compile(): a model (a model file with a config, or a Hugging Face checkpoint folder whose
// config.json names the family) → traced IR (decoders with a KV cache, encoders without) → passes
// → a cached artifact.

import { existsSync } from "node:fs";
import { loadModelFile, readHFConfig } from "../cli/load-model.js";
import type { ModelDef } from "../dsl/model.js";
import { traceModel } from "../dsl/model.js";
import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import type { Graph } from "../ir/graph.js";
import type { MaxMemory, PassMessage, Placement } from "../passes/index.js";
import { createContext, dimBounds, parsePipeline, runPipeline } from "../passes/index.js";
import { modelFor } from "../../models/index.js";
import { print } from "../ir/print.js";
import type { Arch, Manifest } from "./build.js";
import { buildArtifact, copyArtifact } from "./build.js";
import type { Target } from "./emit.js";

export interface CompileOptions {
  /** config.json or the folder holding it; required with a model file, optional with a checkpoint folder */
  config?: string | Record<string, unknown>;
  target?: Target;
  arch?: Arch;
  dtype?: Extract<DType, "f32" | "bf16" | "f16">;
  /** also copy the artifact here (atomically) */
  out?: string;
  cacheDir?: string;
  /**
   * "static" (default; fixed capacity written in place, decode replayable as a CUDA graph),
   * "growing" (concatenation; padded builds grow), "none" (prefill only: forward() without
   * generate(); a padded build is then unpadded by unpad-varlen), or "varlen" (packed tokens of
   * any number of sequences, each with its own cache row: generateBatch() on prompts of different
   * lengths with no work on padding; outputs at each sequence's last token unless lastToken is
   * false). Encoders have none.
   */
  kvCache?: "static" | "growing" | "none" | "varlen";
  /** packed (unpadded) builds: outputs over the tokens only at each sequence's last token ([B, 1, …]), e.g. the logits a prefill needs */
  lastToken?: boolean;
  /** bounds of the symbolic dims: batch, and tokens per sequence (prompt + generated) */
  maxBatch?: number;
  maxSeq?: number;
  /** pass pipeline (default DEFAULT_PASSES) */
  passes?: string;
  /** called with the IR text after each pass (`--dump-ir-after`) */
  onAfterPass?: (pass: string, irText: string) => void;
  /** take an attention_mask input, so forward() (decoders, left-padded) or encode() (encoders, right- or left-padded) accepts batches of different lengths */
  padded?: boolean;
  /** bitsandbytes-style quantization of the linears (BitsAndBytesConfig: load_in_8bit / load_in_4bit + bnb_4bit_quant_type) */
  quant?: "int8" | "nf4" | "fp4";
  /** bnb_4bit_use_double_quant */
  doubleQuant?: boolean;
  /** llm_int8_threshold (default 6.0) */
  int8Threshold?: number;
  /** llm_int8_skip_modules (default ["lm_head"]) */
  skipModules?: string[];
  /**
   * place the layers over several devices within these budgets ({ 0: "20GiB", 1: "40GiB" }, or
   * "auto" with deviceMemory): runs the placement pass after the pipeline and records the map in
   * manifest.json. The runtime does not run an artifact placed over more than device 0 yet.
   */
  maxMemory?: MaxMemory;
  /** maxMemory "auto": each device's memory */
  deviceMemory?: Record<string | number, string | number>;
  typecheck?: boolean;
  /**
   * compute the 4-bit (fp4/nf4) linears that read one activation in one kernel call — q/k/v, and
   * gate/up with silu(gate)·up in its epilogue (compiler/codegen/qlinear-groups.ts). Default: on,
   * unless the environment has KILN_QGROUP=0 at compile time. The numbers are those of the
   * separate calls (see the README).
   */
  qgroup?: boolean;
  /**
   * Batch consecutive independent elementwise kernels and cache writes into one launch
   * (compiler/codegen/batch-launches.ts: at decode, RoPE of q and k in one, the k and v cache
   * writes in another). Default: on, unless the environment has KILN_BATCH=0 at compile time.
   */
  batch?: boolean;
  /** stage callbacks for progress display */
  onProgress?: (stage: "trace" | "passes" | "cache-hit" | "emit" | "compile" | "done", info?: string) => void;
}

export interface CompiledArtifact {
  dir: string;
  manifest: Manifest;
  cached: boolean;
  graph: Graph;
  /** what each pass did or did not rewrite, and why (`kiln compile --explain`) */
  explain: PassMessage[];
}

export const DEFAULT_PASSES = "quantize-linear,cse,fuse-attention,unpad-varlen,fuse-norm,fuse-residual,dce,fuse-elementwise";

export async function compile(model: string | ModelDef<unknown>, o: CompileOptions = {}): Promise<CompiledArtifact> {
  const target = o.target ?? "cpu";
  if (target !== "cpu" && target !== "cuda") throw new KilnError("E_USAGE", `target '${target as string}' is not one of cpu, cuda`);
  const dtype = o.dtype ?? (target === "cuda" ? "bf16" : "f32");
  let def: ModelDef<unknown>;
  let json: Record<string, unknown>;
  let source = "config.json";
  const cfg = (path: string | Record<string, unknown>) => (typeof path === "string" ? readHFConfig(path) : { json: path, file: "config" });
  if (typeof model === "string" && /\.[cm]?tsx?$/.test(model)) {
    if (!o.config) throw new KilnError("E_USAGE", "a config (config.json or its folder) is required with a model file", { where: model });
    def = await loadModelFile(model, { typecheck: o.typecheck ?? true });
    ({ json, file: source } = cfg(o.config));
  } else if (typeof model === "string") {
    if (!existsSync(model)) throw new KilnError("E_IO", "no such model file or checkpoint folder", { where: model });
    ({ json, file: source } = cfg(o.config ?? model));
    def = modelFor(json, source);
  } else {
    if (!o.config) throw new KilnError("E_USAGE", "a config is required with a model definition");
    def = model;
    ({ json, file: source } = cfg(o.config));
  }
  const config = def.fromHF(json, source);
  o.onProgress?.("trace", def.family);
  // the static KV cache (fixed capacity, written in place) keeps decode shapes fixed, which lets
  // the cuda target replay a step as a CUDA graph; padded batches keep the growing cache; an
  // encoder runs in one pass and has none (padded: attention_mask [B, S])
  const encoder = def.kind === "encoder";
  if (encoder && o.kvCache) throw new KilnError("E_USAGE", `'${def.family}' is an encoder: it has no KV cache (leave out kvCache)`, { where: source });
  const want = o.kvCache ?? (o.padded ? "growing" : "static");
  if (!["static", "growing", "none", "varlen"].includes(want)) throw new KilnError("E_USAGE", `kvCache must be static, growing, none or varlen, got '${want as string}'`);
  if (o.padded && want === "static") throw new KilnError("E_USAGE", "padded batches use the growing KV cache (or none), not the static one");
  if (o.padded && want === "varlen") throw new KilnError("E_USAGE", "the varlen KV cache takes packed prompts of any lengths already: leave out padded");
  // the varlen cache is traced static, then packed by unpad-varlen (varlenCache)
  const varlenCache = want === "varlen";
  const kvCache = encoder || want === "none" ? false : want === "static" || varlenCache ? "static" : true;
  // a decoder that generates (has a KV cache) also answers greedy's question on the target:
  // next_token = argmax(logits), so a greedy step downloads a token id, not the vocabulary's logits
  let graph = traceModel(def, config, { dtype, kvCache, attentionMask: o.padded ?? false, nextToken: !encoder && kvCache !== false });
  const maxSeq = o.maxSeq ?? (typeof json.max_position_embeddings === "number" ? json.max_position_embeddings : 4096);
  const maxBatch = o.maxBatch ?? 8;
  for (const [k, v] of Object.entries({ maxSeq, maxBatch }))
    if (!Number.isSafeInteger(v) || v < 1) throw new KilnError("E_USAGE", `${k} must be a positive integer, got ${v}`);
  const positions = json.max_position_embeddings;
  if (encoder && typeof positions === "number" && maxSeq > positions)
    throw new KilnError("E_USAGE", `maxSeq ${maxSeq} is over the encoder's max_position_embeddings ${positions}`, { where: source });
  let passes = o.passes ?? DEFAULT_PASSES;
  if (o.maxMemory !== undefined && !passes.split(",").some((x) => x.trim() === "placement")) passes = `${passes},placement`;
  o.onProgress?.("passes", passes);
  const ctx = createContext({
    quant: o.quant, doubleQuant: o.doubleQuant, int8Threshold: o.int8Threshold, skipModules: o.skipModules, lastToken: o.lastToken ?? varlenCache, varlenCache,
    maxMemory: o.maxMemory, deviceMemory: o.deviceMemory, maxBatch, maxSeq,
  });
  graph = runPipeline(graph, parsePipeline(passes), {
    context: ctx,
    onAfterPass: o.onAfterPass ? (p, g) => o.onAfterPass!(p.name, print(g)) : undefined,
  });
  if (varlenCache && !graph.inputs.some((v) => v.name === "cache_slot")) {
    const why = ctx.messages.filter((m) => m.pass === "unpad-varlen").map((m) => m.message);
    throw new KilnError("E_USAGE", `kvCache "varlen": ${def.family} could not be packed (${why.join("; ") || `the pipeline '${passes}' has no unpad-varlen`})`, { where: source });
  }
  const built = await buildArtifact(graph, {
    target,
    arch: o.arch,
    family: def.family,
    dtype,
    config: json,
    bounds: dimBounds(maxBatch, maxSeq),
    placement: ctx.results.get("placement") as Placement | undefined,
    cacheDir: o.cacheDir,
    qgroup: o.qgroup ?? process.env.KILN_QGROUP !== "0",
    batch: o.batch ?? process.env.KILN_BATCH !== "0",
    onProgress: o.onProgress,
  });
  if (o.out) copyArtifact(built.dir, o.out);
  return { ...built, dir: o.out ?? built.dir, graph, explain: ctx.messages };
}
