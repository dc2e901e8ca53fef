// A model definition: a config read from a Hugging Face config.json plus a module tree with a
// forward. Tracing runs the forward once on symbolic inputs and returns the IR graph.

import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import type { Graph, TensorType } from "../ir/graph.js";
import { GraphBuilder } from "../ir/graph.js";
import { NEXT_TOKEN } from "../ir/ops.js";
import { inferNode, verify } from "../ir/verify.js";
import type { Module } from "./module.js";
import { withParamDType } from "./module.js";
import type { TraceContext } from "./tensor.js";
import { Tensor, withTrace } from "./tensor.js";

export interface Model extends Module {
  forward(inputs: Record<string, Tensor>): Record<string, Tensor>;
}

export interface ModelDef<C> {
  /** family name, e.g. "llama" */
  family: string;
  /** the Hugging Face `model_type` values this definition reads */
  modelTypes: string[];
  /**
   * "decoder" (the default): returns `logits`, traced with a KV cache for generation; "encoder":
   * returns hidden states (e.g. last_hidden_state, pooler_output) from one bidirectional pass,
   * traced without a KV cache (its padded form takes attention_mask [B, S])
   */
  kind?: "decoder" | "encoder";
  /** reads a parsed config.json (`source`: its path, for errors); unsupported or missing fields are E_CONFIG errors naming them */
  fromHF(json: Record<string, unknown>, source?: string): C;
  /** the graph's inputs, with symbolic dims (B = batch, S = sequence) */
  inputs(config: C): Record<string, TensorType>;
  create(config: C): Model;
}

export const defineModel = <C>(d: ModelDef<C>): ModelDef<C> => d;

export interface TraceOptions {
  /** dtype of parameters and activations (default f32) */
  dtype?: DType;
  name?: string;
  /**
   * add KV-cache inputs and outputs (past.<i>.key|value, present.<i>.key|value; see cache.ts):
   * true grows the cache by concatenation ([B, H, P, D] → [B, H, P+S, D]); "static" keeps a fixed
   * capacity C written in place at the input cache_position
   */
  kvCache?: boolean | "static";
  /** add the input attention_mask: i64[B, P+S] for padded batches (see cache.ts) */
  attentionMask?: boolean;
  /**
   * decoders: add the output `next_token` = argmax(logits) over the vocabulary (i64, one per
   * position: [B, S]), so that greedy decoding picks its token on the target and only the id comes
   * back (the runtime reads the last position's; compile() sets it for decoders with a KV cache)
   */
  nextToken?: boolean;
}

export function traceModel<C>(def: ModelDef<C>, config: C, opts: TraceOptions = {}): Graph {
  if (opts.kvCache && def.kind === "encoder")
    throw new KilnError("E_USAGE", `'${def.family}' is an encoder: it runs in one pass and has no KV cache (leave out kvCache / --kv-cache)`);
  const model = def.create(config);
  model.nameParameters();
  const b = new GraphBuilder(opts.name ?? def.family);
  const ctx: TraceContext = { builder: b, params: new Map(), cache: opts.kvCache ? { past: "P", outputs: [] } : undefined };
  const g = withParamDType(opts.dtype ?? "f32", () =>
    withTrace(ctx, () => {
      const inputs: Record<string, Tensor> = {};
      for (const [name, t] of Object.entries(def.inputs(config))) inputs[name] = new Tensor(b.input(name, t));
      if (opts.kvCache === "static") {
        if (opts.attentionMask) throw new KilnError("E_USAGE", "padded batches (attentionMask) use the growing KV cache, not the static one");
        ctx.cache!.static = { position: new Tensor(b.input("cache_position", { dtype: "i64", shape: [] })), capacity: "C" };
      }
      if (opts.attentionMask) {
        const B = inputs.input_ids?.shape[0] ?? "B";
        ctx.padding = { mask: new Tensor(b.input("attention_mask", { dtype: "i64", shape: [B, ctx.cache ? `${String(ctx.cache.past)}+S` : "S"] })) };
      }
      const outputs = model.forward(inputs);
      for (const [name, t] of Object.entries(outputs)) b.output(name, t.value);
      if (opts.nextToken) {
        if (def.kind === "encoder" || !outputs.logits || outputs[NEXT_TOKEN])
          throw new KilnError("E_USAGE", `nextToken needs a decoder whose forward returns 'logits' and no '${NEXT_TOKEN}' of its own ('${def.family}' returns ${Object.keys(outputs).join(", ")})`);
        // no source location: the node is the tracer's, not the model file's (and a caller's line would make the IR text, hence the artifact's cache key, depend on who compiled it)
        const operands = [outputs.logits.value];
        const attrs = { axis: -1 };
        b.output(NEXT_TOKEN, b.node("argmax", operands, attrs, inferNode({ op: "argmax", operands, attrs })));
      }
      for (const [name, v] of ctx.cache?.outputs ?? []) b.output(name, v);
      return b.graph;
    }),
  );
  verify(g);
  return g;
}

/** A loosely typed view of config.json with errors that name the field. */
export class HFConfig {
  constructor(readonly json: Record<string, unknown>, readonly source = "config.json") {}

  private err(key: string, msg: string): KilnError {
    return new KilnError("E_CONFIG", `'${key}' ${msg}`, { where: this.source });
  }
  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }
  num(key: string, fallback?: number): number {
    const v = this.json[key] ?? fallback;
    if (v === undefined) throw this.err(key, "is missing");
    if (typeof v !== "number" || !Number.isFinite(v)) throw this.err(key, `must be a number, got ${JSON.stringify(v)}`);
    return v;
  }
  int(key: string, fallback?: number): number {
    const v = this.num(key, fallback);
    if (!Number.isInteger(v) || v < 0) throw this.err(key, `must be a non-negative integer, got ${v}`);
    return v;
  }
  bool(key: string, fallback?: boolean): boolean {
    const v = this.json[key] ?? fallback;
    if (typeof v !== "boolean") throw this.err(key, v === undefined ? "is missing" : `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }
  str(key: string, fallback?: string): string {
    const v = this.json[key] ?? fallback;
    if (typeof v !== "string") throw this.err(key, v === undefined ? "is missing" : `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }
  obj(key: string): HFConfig | undefined {
    const v = this.json[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) throw this.err(key, `must be an object, got ${JSON.stringify(v)}`);
    return new HFConfig(v as Record<string, unknown>, `${this.source} (${key})`);
  }
  /** a value that must be one of `allowed` */
  oneOf<T extends string>(key: string, allowed: readonly T[], fallback?: T): T {
    const v = this.str(key, fallback);
    if (!(allowed as readonly string[]).includes(v)) throw this.err(key, `is '${v}', which Kiln does not support (supported: ${allowed.join(", ")})`);
    return v as T;
  }
}
