// The Node API over a compiled artifact: loadModel(artifact, { checkpoint }) → Model with
// forward() and generate() (decoders) or encode() (encoders). The native binding
// (runtime/native/addon.cc) does the work off the JS thread; this file checks inputs, keeps the KV
// cache between decode steps on the target, and turns token ids into text when the checkpoint has
// a tokenizer.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Manifest, TensorSpec } from "../compiler/codegen/build.js";
import { readManifest } from "../compiler/codegen/build.js";
import { ABI_DTYPE } from "../compiler/codegen/emit.js";
import type { DType } from "../compiler/ir/dtype.js";
import { DTYPE_BYTES } from "../compiler/ir/dtype.js";
import { KilnError } from "../compiler/ir/errors.js";
import { f16BitsToF32 } from "../compiler/ir/numeric.js";
import { codeOf } from "../compiler/ir/quant.js";
import type { BatchResult, RowToken } from "./batch.js";
import { generateRows } from "./batch.js";
import type { SamplingOptions } from "./sampling.js";
import { generateTokens, validateSamplingOptions } from "./sampling.js";
import { openCheckpoint } from "./safetensors.js";
import { TextStreamer, Tokenizer } from "./tokenizer.js";
import { checkWeights } from "./weights.js";

// ---------------------------------------------------------------- the native binding

type CacheValue = { dtype: number; shape: number[]; data: ArrayBufferView } | DeviceTensor;
/** a decode step issued without waiting (Model.issueStep): its pick on the target, the pick's queued download, its logits */
type Issued = { token: DeviceTensor; pending: Pending; logits: DeviceTensor };
/** a generation's pipelined decode: the call queued ahead (for the rows and positions `key`), and the picks that fed it once known */
type Pipeline = { ahead?: Issued & { key: string; fedBy?: number[] } };

interface DeviceTensor {
  readonly dtype: number;
  readonly shape: number[];
  readonly bytes: number;
  readonly freed: boolean;
  free(): void;
  /** another tensor over the same buffer */
  reshape(shape: number[]): DeviceTensor;
}
/** a download queued after a forward that did not wait: its bytes once the copy is done */
interface Pending {
  wait(): Promise<ArrayBuffer>;
}
interface HostTensor {
  dtype: number;
  shape: number[];
  data: ArrayBuffer;
}
interface NativeArtifact {
  readonly target: string;
  readonly hash: string;
  readonly counts: { inputs: number; weights: number; outputs: number };
  init(device: number): Promise<void>;
  loadWeights(jobs: { file: string; offset: number; count: number; src: number; dst: number; name: string; quant?: object | null }[], onProgress?: (done: number, total: number) => void): Promise<DeviceTensor[]>;
  /** the weights every forward(null, …) uses (unwrapped once); [] lets them go */
  bindWeights(weights: DeviceTensor[]): void;
  /**
   * outputs; a number i: written in place into inputs[i] (a device tensor), which it is. toHost[j]
   * 2: output j stays on the target and a download of it is queued ({ tensor, pending }).
   * { wait: false }: resolves once the work is queued on the target, not when it is done.
   */
  forward(
    weights: DeviceTensor[] | null,
    inputs: ({ dtype: number; shape: number[]; data: ArrayBufferView } | DeviceTensor)[],
    toHost: (boolean | 2)[],
    options?: { wait: boolean },
  ): Promise<(HostTensor | DeviceTensor | number | { tensor: DeviceTensor; pending: Pending })[]>;
  /** a device tensor's bytes, on the host */
  download(tensor: DeviceTensor): Promise<ArrayBuffer>;
  memoryInfo(): { free: number; total: number };
}
interface Binding {
  Artifact: new (lib: string) => NativeArtifact;
  DeviceTensor: new () => DeviceTensor;
  abiVersion: number;
}

const ROOT = fileURLToPath(new URL("..", import.meta.url));
let binding: Binding | undefined;
/** The compiled node-addon-api binding (built by `npm install` / `npm run build:native`). */
export function nativeBinding(): Binding {
  if (binding) return binding;
  const file = join(ROOT, "build", "Release", "kiln.node");
  if (!existsSync(file)) throw new KilnError("E_ARTIFACT", "the native binding is not built: run `npm run build:native` (npm install does it)", { where: file });
  binding = createRequire(import.meta.url)(file) as Binding;
  return binding;
}

/** Errors from the binding carry a code; make them KilnErrors. */
function native<T>(p: Promise<T>, where?: string): Promise<T> {
  return p.catch((e: unknown) => {
    if (e instanceof KilnError) throw e;
    const err = e as Error & { code?: string };
    const code = (err.code === "E_OOM" ? "E_RUNTIME" : err.code) as KilnError["code"] | undefined;
    throw new KilnError(code && code.startsWith("E_") ? code : "E_RUNTIME", `${err.code === "E_OOM" ? "out of memory: " : ""}${err.message}`, { where, cause: e });
  });
}


// ---------------------------------------------------------------- Model

export interface LoadOptions {
  /** Hugging Face checkpoint folder (config.json + model.safetensors or sharded) */
  checkpoint: string;
  /** GPU ordinal for the cuda target (default 0) */
  device?: number;
  /** progress of the weight upload, in bytes */
  onProgress?: (done: number, total: number) => void;
  /**
   * greedy steps (no sampling, no repetition penalty, no logits asked for) take the artifact's own
   * argmax (its `next_token` output), so only a token id leaves the target and the logits do not
   * (default true; artifacts built without next_token always take the path of false: the logits
   * come to Node, which picks the token)
   */
  greedyOnTarget?: boolean;
  /**
   * greedy decode on the target (greedyOnTarget, a static KV cache) issues step t + 1, fed by
   * step t's pick where it lies on the target, before step t's token reaches Node, so the target
   * does not wait for Node between tokens (default true). The tokens are the same either way.
   */
  pipelineDecode?: boolean;
}

export interface ForwardResult {
  /** [B, S, V] logits in f32 */
  logits: Float32Array;
  shape: number[];
  /** padded artifacts: each row's count of real tokens; row b's are its last lengths[b] positions (left padding), or where the attentionMask given says */
  lengths?: number[];
}

export interface ForwardOptions {
  /**
   * Hugging Face's attention_mask (1 = real token, 0 = padding) for rows already padded to one
   * length (left, right or any mix): padded artifacts take it as given; packed ones run only the
   * real tokens and give zeros at the padding. Without it, rows of different lengths are
   * left-padded here.
   */
  attentionMask?: readonly (readonly number[])[];
}

export interface EncodeOptions {
  /** segment ids (Hugging Face's token_type_ids), one per token of each row; default all 0, as HF */
  tokenTypeIds?: readonly number[] | readonly (readonly number[])[];
  /** padded artifacts: where shorter rows get their padding: "right" (default, as HF pads encoders) or "left" */
  padding?: "right" | "left";
  /**
   * padded artifacts: Hugging Face's attention_mask (1 = real token, 0 = padding) for rows already
   * padded to one length, used as given (instead of padding the rows here)
   */
  attentionMask?: readonly number[] | readonly (readonly number[])[];
}

export interface EncodeResult {
  /** [B, S, H] hidden states of the last layer, f32 (padded positions too) */
  lastHiddenState: Float32Array;
  /** lastHiddenState's shape [B, S, H] */
  shape: number[];
  /** [B, H] pooled output (BERT: tanh(dense(·)) of the first token), f32; absent when the model has none */
  poolerOutput?: Float32Array;
  /** real tokens per row: row b's are its first lengths[b] positions (right padding) or its last (left) */
  lengths: number[];
}

export interface GeneratedToken {
  id: number;
  /** the text this token adds (when the checkpoint has a tokenizer) */
  text?: string;
  index: number;
}

/** A token of generateBatch: which prompt it continues, its text, and (option `logits`) its logits. */
export interface BatchToken extends RowToken {
  text?: string;
}

export interface BatchOptions {
  /** attach to each token the logits it was chosen from */
  logits?: boolean;
}

const DTYPE_OF = Object.fromEntries(Object.entries(ABI_DTYPE).map(([k, v]) => [v, k])) as Record<number, DType>;

function toF32(t: HostTensor): Float32Array {
  const d = DTYPE_OF[t.dtype];
  if (d === "f32") return new Float32Array(t.data);
  if (d === "bf16") {
    // a bf16 value is the upper half of its f32: one shift an element (decode converts the whole
    // vocabulary's logits every token)
    const u = new Uint16Array(t.data);
    const out = new Float32Array(u.length);
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < u.length; i++) bits[i] = u[i] << 16;
    return out;
  }
  if (d === "f16") {
    const u = new Uint16Array(t.data);
    const out = new Float32Array(u.length);
    for (let i = 0; i < u.length; i++) out[i] = f16BitsToF32(u[i]);
    return out;
  }
  throw new KilnError("E_RUNTIME", `an output came back as ${d}`);
}

/**
 * The cache for the next step: `present.*` renamed `past.*`. Tensors of the old cache that are not
 * in it are freed (a growing cache's old buffers); those written in place (the static and varlen
 * caches) are the same tensors and stay.
 */
function nextCache(old: Map<string, unknown>, present: Map<string, unknown>): Map<string, unknown> {
  // the static cache written in place: every present.* is its past.* — the same map serves again
  // (a decode step then allocates no map and renames nothing)
  if (old.size === present.size && [...present].every(([k, v]) => old.get(pastName(k)) === v)) return old;
  const kept = new Set(present.values());
  for (const t of old.values()) if (!kept.has(t) && typeof (t as DeviceTensor).free === "function") (t as DeviceTensor).free();
  return new Map([...present].map(([k, v]) => [pastName(k), v]));
}
const pastNames = new Map<string, string>();
/** present.X → past.X (remembered: a decode step asks for the same names every time) */
function pastName(k: string): string {
  let p = pastNames.get(k);
  if (p === undefined) pastNames.set(k, (p = k.replace(/^present\./, "past.")));
  return p;
}

/** One row of numbers, or a batch of rows. */
const asRows = (x: readonly number[] | readonly (readonly number[])[]): number[][] => (typeof x[0] === "number" ? [[...(x as number[])]] : (x as number[][]).map((r) => [...r]));

export class Model implements AsyncDisposable {
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;

  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    private readonly art: NativeArtifact,
    private readonly weights: DeviceTensor[],
    readonly tokenizer: Tokenizer | undefined,
    readonly checkpoint: string,
    greedyOnTarget: boolean,
    private readonly pipelineDecode: boolean,
  ) {
    art.bindWeights(weights);
    this.nextToken = greedyOnTarget ? manifest.nextToken : undefined;
  }

  /** The artifact's greedy pick that greedy steps download instead of the logits (LoadOptions.greedyOnTarget), if it has one. */
  private readonly nextToken: Manifest["nextToken"];

  /** Loads an artifact and the weights of a Hugging Face checkpoint onto its target. */
  static async load(dir: string, o: LoadOptions): Promise<Model> {
    const manifest = readManifest(dir);
    const placed = manifest.placement;
    if (placed && placed.used.some((d) => d !== 0))
      throw new KilnError(
        "E_USAGE",
        `this artifact is placed over ${placed.used.length} device(s) (${placed.used.join(", ")}; compiled with maxMemory): multi-GPU execution is not implemented; ` +
          `it needs ${Math.max(...placed.used) + 1} GPUs and a runtime that loads each layer onto its device (recompile without maxMemory, or with a budget that fits device 0)`,
        { where: dir },
      );
    const b = nativeBinding();
    let art: NativeArtifact;
    try {
      art = new b.Artifact(join(dir, manifest.library));
    } catch (e) {
      throw new KilnError("E_ARTIFACT", (e as Error).message, { where: dir, cause: e });
    }
    if (art.hash !== manifest.hash) throw new KilnError("E_ARTIFACT", `the library's hash ${art.hash} is not the manifest's ${manifest.hash}`, { where: dir });
    await native(art.init(o.device ?? 0), dir);
    const ckpt = openCheckpoint(o.checkpoint);
    try {
      checkWeights(manifest.weights.map((w) => ({ ...w, dtype: w.dtype as DType })), ckpt, { where: o.checkpoint });
      const jobs = manifest.weights.map((w) => {
        const info = ckpt.info(w.name);
        const q = w.quant;
        const quant = q && {
          kind: q.scheme === "int8" ? 2 : 1,
          block: q.block,
          rows: info.shape[0],
          cols: info.shape[1],
          doubleQuant: q.doubleQuant,
          code: q.scheme === "int8" ? [] : [...codeOf(q.scheme)],
        };
        return { file: ckpt.fileOf(w.name), offset: info.byteOffset, count: info.shape.reduce((a, c) => a * c, 1), src: ABI_DTYPE[info.dtype], dst: ABI_DTYPE[w.dtype as DType], name: w.name, quant };
      });
      const weights = await native(art.loadWeights(jobs, o.onProgress), o.checkpoint);
      const tokenizer = await Tokenizer.fromCheckpoint(o.checkpoint);
      if (tokenizer && manifest.model.config && typeof manifest.model.config.vocab_size === "number" && tokenizer.vocabSize > manifest.model.config.vocab_size)
        throw new KilnError("E_CONFIG", `tokenizer.json has ${tokenizer.vocabSize} tokens but the model's vocab_size is ${manifest.model.config.vocab_size}`, { where: o.checkpoint });
      return new Model(dir, manifest, art, weights, tokenizer, o.checkpoint, o.greedyOnTarget ?? true, o.pipelineDecode ?? true);
    } finally {
      ckpt.close();
    }
  }

  get target(): string {
    return this.manifest.target;
  }

  /** Bytes each weight takes on the target (quantized weights: their packed size). */
  weightBytes(): Record<string, number> {
    return Object.fromEntries(this.manifest.weights.map((w, i) => [w.name, this.weights[i].bytes]));
  }

  /** Runs calls one at a time (the artifact has one stream); rejects after dispose(). */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.disposed) throw new KilnError("E_USAGE", "the model was disposed");
      return f();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private spec(name: string): TensorSpec {
    const s = this.manifest.inputs.find((i) => i.name === name);
    if (!s) throw new KilnError("E_ARTIFACT", `the artifact has no input '${name}'`, { where: this.dir });
    return s;
  }

  private checkIds(rows: readonly (readonly number[])[], past: number): BigInt64Array {
    const S = rows[0]?.length ?? 0;
    if (rows.length === 0 || S === 0) throw new KilnError("E_USAGE", "forward needs at least one token");
    if (rows.some((r) => r.length !== S))
      throw new KilnError("E_USAGE", "every row of input ids must have the same length (compile with padded: true / --padded for batches of different lengths)");
    const { dims } = this.manifest;
    if (dims.B && rows.length > dims.B.max) throw new KilnError("E_USAGE", `batch of ${rows.length} is over the artifact's bound B ≤ ${dims.B.max} (compile with a larger maxBatch)`);
    if (dims.S && past + S > dims.S.max) throw new KilnError("E_USAGE", `${past + S} tokens are over the artifact's bound ${dims.S.max} (compile with a larger maxSeq)`);
    const vocab = Number((this.manifest.model.config as { vocab_size?: number } | null)?.vocab_size ?? Infinity);
    const ids = new BigInt64Array(rows.length * S);
    rows.forEach((r, b) =>
      r.forEach((id, s) => {
        if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new KilnError("E_USAGE", `token id ${id} (row ${b}, position ${s}) is not in [0, ${vocab})`);
        ids[b * S + s] = BigInt(id);
      }),
    );
    return ids;
  }

  /** Whether the artifact's KV cache has a fixed capacity written in place (kvCache "static"). */
  get staticCache(): boolean {
    return this.manifest.kvCache?.mode === "static";
  }

  /**
   * A fresh KV cache for a batch of B: the growing cache empty (every past.* [B, H, 0, D]); the
   * static one zeros of capacity C ([B, H, C, D]; uploaded once, then updated in place by each step).
   */
  private newCache(B: number, C: number): Map<string, CacheValue> {
    const m = new Map<string, CacheValue>();
    const zeros = new Map<number, Uint8Array>(); // one zero buffer per size: the binding copies it anyway
    for (const name of this.manifest.kvCache?.inputs ?? []) {
      const s = this.spec(name);
      const shape = s.shape.map((d) => (d === "B" ? B : d === "P" ? 0 : d === "C" ? C : (d as number)));
      if (shape.some((d) => typeof d !== "number")) throw new KilnError("E_ARTIFACT", `cache input '${name}' has dims ${s.shape.join(", ")} that the runtime cannot size`, { where: this.dir });
      const bytes = this.staticCache || this.varlenCache ? shape.reduce((a, d) => a * d, 1) * DTYPE_BYTES[s.dtype as DType] : 0;
      if (!zeros.has(bytes)) zeros.set(bytes, new Uint8Array(bytes));
      m.set(name, { dtype: ABI_DTYPE[s.dtype as DType], shape, data: zeros.get(bytes)! });
    }
    return m;
  }

  /** The capacity a static cache gets for `needed` tokens: rounded up (so later calls can reuse it), within the artifact's bound. */
  private capacityFor(needed: number): number {
    const max = this.manifest.dims.C?.max ?? needed;
    if (needed > max) throw new KilnError("E_USAGE", `${needed} tokens (prompt + maxNewTokens) are over the artifact's cache capacity ${max} (compile with a larger maxSeq)`);
    return Math.min(max, Math.ceil(needed / 256) * 256);
  }

  /** Whether the artifact takes rows of different lengths (compiled with padded: true): an attention_mask, or packed tokens. */
  get padded(): boolean {
    return this.packed || this.manifest.inputs.some((i) => i.name === "attention_mask");
  }

  /** Whether the artifact has the varlen KV cache (kvCache "varlen"): packed tokens, a cache row per sequence. */
  get varlenCache(): boolean {
    return this.manifest.kvCache?.mode === "varlen";
  }

  /** Whether unpad-varlen packed the artifact: it takes the real tokens end to end ([1, T]) and cu_seqlens. */
  get packed(): boolean {
    return this.manifest.inputs.some((i) => i.name === "cu_seqlens");
  }

  /**
   * One call of a packed artifact: each row's real tokens (and per-token inputs such as token types)
   * end to end with cu_seqlens; outputs over the tokens ([1, T, F]) come back as rows [B, S, F] with
   * token s of row b at slots[b][s] (b·S + column), zeros elsewhere; other outputs as they are.
   */
  private async runPacked(rows: number[][], perToken: Map<string, number[][]>, S: number, slots: number[][]): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
    const T = rows.reduce((a, r) => a + r.length, 0);
    const { dims } = this.manifest;
    if (dims.B && rows.length > dims.B.max) throw new KilnError("E_USAGE", `batch of ${rows.length} is over the artifact's bound B ≤ ${dims.B.max} (compile with a larger maxBatch)`);
    if (dims.T && T > dims.T.max) throw new KilnError("E_USAGE", `${T} tokens in all are over the artifact's bound T ≤ ${dims.T.max} (maxBatch × maxSeq)`);
    const flat = [rows.flat()];
    const ids = this.checkIds(flat, 0);
    const cu = new Int32Array(rows.length + 1);
    rows.forEach((r, b) => (cu[b + 1] = cu[b] + r.length));
    const feed = new Map<string, unknown>([
      ["input_ids", { dtype: ABI_DTYPE.i64, shape: [1, T], data: ids }],
      ["cu_seqlens", { dtype: ABI_DTYPE.i32, shape: [rows.length + 1], data: cu }],
    ]);
    for (const [name, v] of perToken) if (this.manifest.inputs.some((i) => i.name === name)) feed.set(name, { dtype: ABI_DTYPE.i64, shape: [1, T], data: BigInt64Array.from(v.flat(), (x) => BigInt(x)) });
    if (this.varlenCache) {
      // a fresh cache row per sequence, from position 0 (the cache is dropped after the call)
      for (const [k, v] of this.newCache(rows.length, this.capacityFor(Math.max(...rows.map((r) => r.length))))) feed.set(k, v);
      feed.set("cache_slot", { dtype: ABI_DTYPE.i32, shape: [rows.length], data: Int32Array.from(rows.keys()) });
      feed.set("cache_position", { dtype: ABI_DTYPE.i64, shape: [rows.length], data: new BigInt64Array(rows.length) });
    }
    const outs = await this.invoke(feed, (name) => (name === this.manifest.nextToken?.output ? "drop" : !name.startsWith("present.")));
    const result = new Map<string, { data: Float32Array; shape: number[] }>();
    for (const [name, t] of outs) {
      if (name.startsWith("present.")) {
        (t as DeviceTensor).free();
        continue;
      }
      const h = t as HostTensor;
      const data = toF32(h);
      if (h.shape.length < 2 || h.shape[0] !== 1 || h.shape[1] !== T) {
        result.set(name, { data, shape: h.shape });
        continue;
      }
      const F = h.shape.slice(2).reduce((a, d) => a * d, 1);
      const out = new Float32Array(rows.length * S * F);
      let t0 = 0;
      slots.forEach((row) => row.forEach((slot) => out.set(data.subarray(t0 * F, ++t0 * F), slot * F)));
      result.set(name, { data: out, shape: [rows.length, S, ...h.shape.slice(2)] });
    }
    return result;
  }

  /** "decoder" (the artifact returns logits: forward, generate) or "encoder" (hidden states: encode). */
  get kind(): "decoder" | "encoder" {
    return this.manifest.outputs.some((o) => o.name === "logits") ? "decoder" : "encoder";
  }

  private expectKind(kind: "decoder" | "encoder", method: string): void {
    if (this.kind === kind) return;
    const what = `${method}() needs ${kind === "decoder" ? "a decoder (an artifact with a 'logits' output)" : "an encoder"}`;
    const outputs = this.manifest.outputs.map((o) => o.name).filter((n) => !n.startsWith("present."));
    throw new KilnError(
      "E_USAGE",
      `${what}, but this ${this.manifest.model.family} artifact is ${kind === "decoder" ? `an encoder (outputs ${outputs.join(", ")}): use encode()` : "a decoder (outputs logits): use forward() or generate()"}`,
      { where: this.dir },
    );
  }

  /**
   * One call of the artifact: its inputs by name (fed in the manifest's order); its outputs by
   * name, those `toHost` says true of on the host, false on the target; "drop": left on the target
   * and freed at once (not in the map).
   */
  private async invoke(feed: Map<string, unknown>, toHost: (name: string) => boolean | "drop"): Promise<Map<string, HostTensor | DeviceTensor>> {
    const inputs = this.manifest.inputs.map((i) => {
      const v = feed.get(i.name);
      if (!v) throw new KilnError("E_ARTIFACT", `no value for input '${i.name}'`, { where: this.dir });
      return v as CacheValue;
    });
    let place = this.placeOf.get(toHost);
    if (!place) {
      const how = this.manifest.outputs.map((o) => toHost(o.name));
      this.placeOf.set(toHost, (place = { how, host: how.map((h) => h === true) }));
    }
    const { how, host } = place;
    const outs = await native(this.art.forward(null, inputs, host), this.dir);
    const m = new Map<string, HostTensor | DeviceTensor>();
    this.manifest.outputs.forEach((o, j) => {
      const out = outs[j];
      if (how[j] === "drop" && typeof out !== "number") return (out as DeviceTensor).free();
      // an output written in place into a device-tensor input comes back as that input's index: it
      // is the same tensor (the static cache's present.* are its past.*)
      m.set(o.name, typeof out === "number" ? (inputs[out] as DeviceTensor) : (out as HostTensor | DeviceTensor));
    });
    return m;
  }

  /**
   * Where a decoder step's outputs go: the present.* stay on the target; the logits come to the
   * host, or with `pick` the greedy pick (next_token) does and the logits stay on the target (for
   * stepOutputs' fallback); anything else (next_token when not picking) is dropped.
   */
  private stepWants(pick: boolean): (name: string) => boolean | "drop" {
    // one function per mode, so invoke finds its per-output answers computed (placeOf)
    return (this.wants[pick ? 1 : 0] ??= (n) => (n.startsWith("present.") ? false : n === "logits" ? !pick : n === this.nextToken?.output && pick ? true : "drop"));
  }
  private readonly wants: ((name: string) => boolean | "drop")[] = [];
  /** invoke's per-output placement for a placement function, and its to-host flags (computed once) */
  private readonly placeOf = new WeakMap<(name: string) => boolean | "drop", { how: (boolean | "drop")[]; host: boolean[] }>();

  /**
   * A step's result for the sampling loop at each of `rows` (flat indices of the positions wanted:
   * into next_token's elements and the logits' rows of V): with `pick`, the target's greedy pick
   * (the logits never leave the target: freed here); else the logits. Where the target had no pick
   * (the manifest's `none`: a NaN or +Inf logit there, or none finite) the logits are downloaded
   * after all and handed on, so that sampling.ts reports what is wrong with them as it always has.
   */
  private async stepOutputs(outs: Map<string, HostTensor | DeviceTensor>, rows: number[], pick: boolean): Promise<(Float32Array | number)[]> {
    let logits = outs.get("logits");
    if (!logits) throw new KilnError("E_ARTIFACT", "the artifact returned no 'logits'", { where: this.dir });
    if (pick) {
      const picks = new BigInt64Array((outs.get(this.nextToken!.output) as HostTensor).data);
      const ids = rows.map((r) => Number(picks[r]));
      const dev = logits as DeviceTensor;
      if (ids.every((id) => id >= 0)) {
        dev.free();
        return ids;
      }
      try {
        logits = { dtype: dev.dtype, shape: dev.shape, data: await native(this.art.download(dev), this.dir) };
      } finally {
        dev.free();
      }
    }
    const h = logits as HostTensor;
    const all = toF32(h);
    const V = h.shape[h.shape.length - 1];
    return rows.map((r) => (rows.length === 1 ? all.subarray(r * V, (r + 1) * V) : all.slice(r * V, (r + 1) * V)));
  }

  /**
   * One decoder pass over input_ids plus the cache: the outputs as stepWants(pick) places them
   * (logits on the host unless `pick`), and the present.* (on the target) apart.
   */
  private async run(ids: BigInt64Array, B: number, S: number, cache: Map<string, unknown>, position: number, mask?: BigInt64Array, pick = false): Promise<{ outs: Map<string, HostTensor | DeviceTensor>; present: Map<string, DeviceTensor> }> {
    const i64 = (shape: number[], data: BigInt64Array) => ({ dtype: ABI_DTYPE.i64, shape, data });
    const feed = new Map(cache);
    feed.set("input_ids", i64([B, S], ids));
    if (this.manifest.kvCache?.position) feed.set(this.manifest.kvCache.position, i64([], new BigInt64Array([BigInt(position)])));
    if (this.padded) {
      if (!mask) throw new KilnError("E_ARTIFACT", "the artifact wants an attention_mask", { where: this.dir });
      feed.set("attention_mask", i64([B, mask.length / B], mask));
    }
    const outs = await this.invoke(feed, this.stepWants(pick));
    const present = new Map<string, DeviceTensor>();
    for (const [k, v] of outs)
      if (k.startsWith("present.")) {
        present.set(k, v as DeviceTensor);
        outs.delete(k);
      }
    return { outs, present };
  }

  /** Logits for a batch of token-id rows of equal length (no cache kept). */
  forward(inputIds: readonly number[] | readonly (readonly number[])[], o: ForwardOptions = {}): Promise<ForwardResult> {
    return this.serial(async () => {
      this.expectKind("decoder", "forward");
      let rows = (typeof inputIds[0] === "number" ? [inputIds as number[]] : inputIds) as number[][];
      let mask: BigInt64Array | undefined;
      let lengths: number[] | undefined;
      if (o.attentionMask) {
        const m = o.attentionMask;
        const S = rows[0]?.length ?? 0;
        if (rows.some((r) => r.length !== S)) throw new KilnError("E_USAGE", "rows given with an attentionMask must already be padded to one length");
        if (m.length !== rows.length || m.some((r) => r.length !== S))
          throw new KilnError("E_USAGE", `attentionMask must have one value per token: ${rows.length} rows of ${S}, got ${m.length} rows of ${[...new Set(m.map((r) => r.length))].join(", ")}`);
        m.forEach((r, b) => r.forEach((v, s) => {
          if (v !== 0 && v !== 1) throw new KilnError("E_USAGE", `attentionMask value ${v} (row ${b}, position ${s}) is not 0 or 1`);
        }));
        lengths = m.map((r) => r.reduce((a, v) => a + v, 0));
        const empty = lengths.indexOf(0);
        if (empty >= 0) throw new KilnError("E_USAGE", `row ${empty} has no real token (its attentionMask is all 0)`);
        if (this.packed) {
          // only the real tokens run, each at its own padded position in the logits
          const slots = m.map((r, b) => r.flatMap((v, s) => (v ? [b * S + s] : [])));
          const real = rows.map((r, b) => r.filter((_t, s) => m[b][s] === 1));
          const out = (await this.runPacked(real, new Map(), S, slots)).get("logits")!;
          return { logits: out.data, shape: out.shape, lengths };
        }
        if (!this.padded) {
          if (lengths.some((n) => n !== S))
            throw new KilnError("E_USAGE", "this artifact takes no attention_mask, and the mask hides tokens: compile with padded: true / --padded", { where: this.dir });
        } else mask = BigInt64Array.from(m.flat(), (v) => BigInt(v));
      } else if (this.packed) {
        // only the real tokens run; the logits come back left-padded like a padded artifact's
        lengths = rows.map((r) => r.length);
        if (lengths.some((n) => n === 0)) throw new KilnError("E_USAGE", "a row with no tokens (every row needs at least one real token)");
        const S = Math.max(...lengths);
        const slots = rows.map((r, b) => r.map((_t, s) => b * S + S - r.length + s));
        const out = (await this.runPacked(rows, new Map(), S, slots)).get("logits")!;
        return { logits: out.data, shape: out.shape, lengths };
      }
      if (this.padded && !mask) {
        // left padding, as Hugging Face pads for generation; the mask says which tokens are real
        lengths = rows.map((r) => r.length);
        if (lengths.some((n) => n === 0)) throw new KilnError("E_USAGE", "a row with no tokens (every row needs at least one real token)");
        const S = Math.max(...lengths);
        mask = new BigInt64Array(rows.length * S);
        rows.forEach((r, b) => mask!.fill(1n, b * S + S - r.length, (b + 1) * S));
        rows = rows.map((r) => [...Array<number>(S - r.length).fill(0), ...r]);
      }
      const ids = this.checkIds(rows, 0);
      const { outs, present } = await this.run(ids, rows.length, rows[0].length, this.newCache(rows.length, rows[0].length), 0, mask);
      for (const t of present.values()) t.free();
      const logits = outs.get("logits") as HostTensor;
      return { logits: toF32(logits), shape: logits.shape, lengths };
    });
  }

  /**
   * Generates from a prompt (text, with a tokenizer; or token ids), yielding tokens as they come.
   * The prompt runs once (prefill); then each step feeds one token against the KV cache, which
   * stays on the target.
   */
  async *generate(prompt: string | readonly number[], options: SamplingOptions = {}): AsyncGenerator<GeneratedToken, { reason: string; tokens: number[] }> {
    this.expectKind("decoder", "generate");
    if (this.varlenCache) {
      // one row of a batch: the same loop, the same cache
      const gen = this.generateBatch([prompt], options);
      for (;;) {
        const r = await gen.next();
        if (r.done) return r.value.rows[0];
        const { id, index, text } = r.value;
        yield { id, index, text };
      }
    }
    if (!this.manifest.kvCache)
      throw new KilnError("E_USAGE", "generate() needs a KV cache, and this artifact was compiled without one (kvCache \"none\": prefill only): use forward(), or compile with a cache", { where: this.dir });
    let ids: number[];
    if (typeof prompt === "string") {
      if (!this.tokenizer) throw new KilnError("E_USAGE", "this checkpoint has no tokenizer.json: pass token ids instead of text", { where: this.checkpoint });
      ids = this.tokenizer.encode(prompt);
    } else ids = [...prompt];
    const opts = { ...options, stopTokens: options.stopTokens ?? this.tokenizer?.eosTokenIds };
    const maxNew = validateSamplingOptions(opts).maxNewTokens;
    // the static cache: reuse the one a finished generate kept (same buffers, so the cuda target
    // replays its captured decode step) when it is big enough; what it holds past the position is
    // never read (flash attention stops at the query) or weighs exactly 0 (the eager mask)
    let capacity = 0;
    let cache: Map<string, unknown>;
    if (this.staticCache) {
      const needed = ids.length + maxNew;
      if (this.kept && this.kept.capacity >= needed) {
        ({ capacity, tensors: cache } = this.kept);
      } else {
        this.dropKept();
        capacity = this.capacityFor(needed);
        cache = this.newCache(1, capacity);
      }
      this.kept = undefined;
    } else cache = this.newCache(1, 0);
    let past = 0;
    const freeCache = () => {
      for (const t of cache.values()) if (typeof (t as DeviceTensor).free === "function") (t as DeviceTensor).free();
    };
    // Pipelined greedy decode (LoadOptions.pipelineDecode): a one-token step on the target's pick
    // is issued without waiting, and right behind it the next step, fed by this one's pick where it
    // lies on the target (`ahead`); then this step's token comes to Node while the next one runs.
    // The next call finds its step issued already when its token is the one that fed it (always,
    // in greedy decoding; otherwise that step is dropped: its cache write sits at the position the
    // call writes again). Only a step that generateTokens may still ask for is issued ahead.
    const pipelined = this.pipelineDecode && this.staticCache && this.nextToken !== undefined;
    const pl: Pipeline = {};
    let calls = 0;
    // a greedy step takes the target's own pick (next_token) and leaves the logits there
    const step = (fresh: number[], _first: boolean, greedy: boolean): Promise<Float32Array | number> =>
      this.serial(async () => {
        calls++;
        const pick = greedy && this.nextToken !== undefined;
        if (pipelined && pick && fresh.length === 1) {
          const host = () => {
            if (past + 1 > capacity) throw new KilnError("E_USAGE", `${past + 1} tokens are over the static cache's capacity ${capacity}`);
            return this.checkIds([fresh], past);
          };
          const issue = async (ids: BigInt64Array | DeviceTensor, ahead: number) => {
            const r = await this.issueStep(ids, cache, past + ahead);
            cache = nextCache(cache, r.present);
            return r;
          };
          const [id] = await this.pipelinedCall(pl, String(past), String(past + 1), fresh, host, issue, calls < maxNew && past + 2 <= capacity);
          past += 1;
          return id;
        }
        await this.dropAhead(pl);
        const t = this.checkIds([fresh], past);
        if (this.staticCache && past + fresh.length > capacity)
          throw new KilnError("E_USAGE", `${past + fresh.length} tokens are over the static cache's capacity ${capacity}`);
        const mask = this.padded ? new BigInt64Array(past + fresh.length).fill(1n) : undefined;
        const { outs, present } = await this.run(t, 1, fresh.length, cache, past, mask, pick);
        cache = nextCache(cache, present);
        past += fresh.length;
        return (await this.stepOutputs(outs, [fresh.length - 1], pick))[0];
      });
    const decoder = this.tokenizer ? new TextStreamer(this.tokenizer, { skipSpecialTokens: true }) : undefined;
    const gen = generateTokens(step, ids, opts);
    try {
      for (;;) {
        const r = await gen.next();
        if (r.done) return r.value;
        const { id, index } = r.value;
        // the last token (by count or a stop token) also flushes text the streamer held back
        const last = index === maxNew - 1 || (opts.stopTokens ?? []).includes(id);
        yield { id, index, text: decoder ? decoder.push(id) + (last ? decoder.end() : "") : undefined };
      }
    } finally {
      await this.queue;
      // a step issued ahead that no call asked for (a stop token came): its work is only waited for
      await this.serial(() => this.dropAhead(pl)).catch(() => undefined);
      const onDevice = [...cache.values()].every((t) => typeof (t as DeviceTensor).free === "function");
      if (this.staticCache && onDevice && !this.disposed && (!this.kept || this.kept.capacity < capacity)) {
        this.dropKept();
        this.kept = { capacity, rows: 1, tensors: cache as Map<string, DeviceTensor> };
      } else freeCache();
    }
  }

  /**
   * One pipelined call of one token a row (generate, generateBatch): the call `pl` queued ahead
   * when it was issued for this `key` (rows and positions) and fed the tokens `ids` (always, in
   * greedy decoding), else — that one dropped — a call issued now with the host's ids; then, when
   * `more` calls will follow with the same rows, the next one (`nextKey`) queued behind it, fed by
   * this call's picks where they lie on the target; then this call's picks (or its logits, where
   * the target had none) to Node. `issue(ids, ahead)`: the call at the positions + ahead.
   */
  private async pipelinedCall(
    pl: Pipeline,
    key: string,
    nextKey: string,
    ids: number[],
    host: () => BigInt64Array,
    issue: (ids: BigInt64Array | DeviceTensor, ahead: number) => Promise<Issued>,
    more: boolean,
  ): Promise<(number | Float32Array)[]> {
    let cur: Issued;
    const a = pl.ahead;
    if (a && a.key === key && a.fedBy?.length === ids.length && ids.every((id, n) => id === a.fedBy![n])) {
      cur = a;
      pl.ahead = undefined;
    } else {
      await this.dropAhead(pl);
      cur = await issue(host(), 0);
    }
    if (more) {
      try {
        pl.ahead = { ...(await issue(cur.token.reshape([1, ids.length]), 1)), key: nextKey };
      } catch (e) {
        await this.dropIssued(cur);
        throw e;
      }
    }
    const got = await this.picksOf(cur, ids.map((_id, n) => n));
    if (pl.ahead) pl.ahead.fedBy = got.map((g) => (typeof g === "number" ? g : -1));
    return got;
  }
  /** The call queued ahead, if any, waited for and let go. */
  private async dropAhead(pl: Pipeline): Promise<void> {
    const a = pl.ahead;
    pl.ahead = undefined;
    if (a) await this.dropIssued(a);
  }

  /**
   * One decode step (batch 1, one token) issued without waiting for the target: input_ids from the
   * host or a device tensor (the previous step's pick); `present`, the cache for the next step (the
   * static cache's own tensors where it is written in place; new tensors where the target hands
   * back copies — a cuda graph stages inputs of ≤ 4 KB — that the caller takes with nextCache).
   * next_token stays on the target with its download queued; the logits stay there for pickOf's
   * fallback.
   */
  private issueStep(ids: BigInt64Array | DeviceTensor, cache: Map<string, unknown>, position: number): Promise<Issued & { present: Map<string, unknown> }> {
    const i64 = (shape: number[], data: BigInt64Array) => ({ dtype: ABI_DTYPE.i64, shape, data });
    const feed = new Map(cache);
    feed.set("input_ids", ids instanceof BigInt64Array ? i64([1, 1], ids) : ids);
    if (this.manifest.kvCache?.position) feed.set(this.manifest.kvCache.position, i64([], new BigInt64Array([BigInt(position)])));
    if (this.padded) feed.set("attention_mask", i64([1, position + 1], new BigInt64Array(position + 1).fill(1n)));
    return this.issueCall(feed);
  }
  /** issueStep's forward over a complete feed (generateBatch builds its own: packed rows of the varlen cache). */
  private async issueCall(feed: Map<string, unknown>): Promise<Issued & { present: Map<string, unknown> }> {
    const inputs = this.manifest.inputs.map((i) => {
      const v = feed.get(i.name);
      if (!v) throw new KilnError("E_ARTIFACT", `no value for input '${i.name}'`, { where: this.dir });
      return v as CacheValue;
    });
    const next = this.nextToken!.output;
    const how = (this.issueHow ??= this.manifest.outputs.map((o) => (o.name === next ? 2 : o.name === "logits" || o.name.startsWith("present.") ? false : "drop")));
    const outs = await native(this.art.forward(null, inputs, how.map((h) => (h === "drop" ? false : h)), { wait: false }), this.dir);
    let issued: Partial<Issued> = {};
    const present = new Map<string, unknown>();
    this.manifest.outputs.forEach((o, j) => {
      const out = outs[j];
      // written in place into a device-tensor input: that input (the static cache's own tensor)
      if (o.name.startsWith("present.")) present.set(o.name, typeof out === "number" ? inputs[out] : out);
      else if (typeof out === "number") throw new KilnError("E_ARTIFACT", `output '${o.name}' was written into input ${out}`, { where: this.dir });
      else if (o.name === next) {
        const q = out as { tensor: DeviceTensor; pending: Pending };
        issued = { ...issued, token: q.tensor, pending: q.pending };
      } else if (o.name === "logits") issued.logits = out as DeviceTensor;
      else (out as DeviceTensor).free();
    });
    if (!issued.token || !issued.pending || !issued.logits) throw new KilnError("E_ARTIFACT", `a decode step returned no '${next}' or 'logits'`, { where: this.dir });
    return { ...(issued as Issued), present };
  }
  private issueHow: (boolean | 2 | "drop")[] | undefined;

  /**
   * An issued call's picks at `rows` (indices into next_token's elements and the logits' rows),
   * or, where the target had no pick at one of them, the logits of every row, as stepOutputs
   * hands them on; frees its tensors.
   */
  private async picksOf(s: Issued, rows: number[]): Promise<(number | Float32Array)[]> {
    try {
      const picks = new BigInt64Array(await native(s.pending.wait(), this.dir));
      const ids = rows.map((r) => Number(picks[r]));
      if (ids.every((id) => id >= 0)) return ids;
      const l = s.logits;
      const all = toF32({ dtype: l.dtype, shape: l.shape, data: await native(this.art.download(l), this.dir) });
      const V = l.shape[l.shape.length - 1];
      return rows.map((r) => all.slice(r * V, (r + 1) * V));
    } finally {
      s.token.free();
      s.logits.free();
    }
  }
  /** A step issued ahead and not used: waits for its work, frees its tensors. */
  private async dropIssued(s: Issued): Promise<void> {
    try {
      await s.pending.wait();
    } catch {
      // its pick fed nothing anyone reads; an error of the target surfaces at the next call
    } finally {
      s.token.free();
      s.logits.free();
    }
  }

  /**
   * Generates after each of several prompts (text with a tokenizer, or token ids) at once, on an
   * artifact compiled with kvCache "varlen" (`--kv-cache varlen`); yields tokens tagged with their
   * row as they come. `options`: one SamplingOptions for every row, or one per prompt (each row's
   * own maxNewTokens, stop tokens, sampling, seed), used as generate() uses them. The prompts' real
   * tokens run as one packed prefill, each in its own cache row; then each call feeds one token of
   * each unfinished row, and a row leaves the batch as soon as it ends. The return value has each
   * row's result and `stats`: the tokens and rows of each model call.
   */
  async *generateBatch(prompts: readonly (string | readonly number[])[], options: SamplingOptions | readonly SamplingOptions[] = {}, o: BatchOptions = {}): AsyncGenerator<BatchToken, BatchResult> {
    this.expectKind("decoder", "generateBatch");
    if (!this.varlenCache)
      throw new KilnError("E_USAGE", `generateBatch() needs the varlen KV cache, and this artifact's is ${this.manifest.kvCache?.mode ?? "none"}: compile with kvCache "varlen" (kiln compile --kv-cache varlen)`, { where: this.dir });
    if (!Array.isArray(prompts) || prompts.length === 0) throw new KilnError("E_USAGE", "generateBatch needs at least one prompt");
    const { dims } = this.manifest;
    const most = dims.N?.max ?? Infinity;
    if (prompts.length > most) throw new KilnError("E_USAGE", `${prompts.length} prompts are over the artifact's bound of ${most} sequences (compile with a larger maxBatch)`, { where: this.dir });
    const rows = prompts.map((p, r) => {
      let ids: number[];
      if (typeof p === "string") {
        if (!this.tokenizer) throw new KilnError("E_USAGE", "this checkpoint has no tokenizer.json: pass token ids instead of text", { where: this.checkpoint });
        ids = this.tokenizer.encode(p);
      } else ids = [...p];
      if (ids.length === 0) throw new KilnError("E_USAGE", `prompt ${r} is empty (every prompt needs at least one token)`);
      this.checkIds([ids], 0);
      return ids;
    });
    const perRow = Array.isArray(options) ? (options as readonly SamplingOptions[]) : prompts.map(() => options as SamplingOptions);
    if (perRow.length !== rows.length) throw new KilnError("E_USAGE", `${perRow.length} sets of sampling options for ${rows.length} prompts (give one, or one per prompt)`);
    const opts = perRow.map((x) => ({ ...x, stopTokens: x.stopTokens ?? this.tokenizer?.eosTokenIds }));
    const maxNew = opts.map((x) => validateSamplingOptions(x).maxNewTokens);
    const C = dims.C?.max ?? Infinity;
    rows.forEach((ids, r) => {
      if (ids.length + maxNew[r] > C)
        throw new KilnError("E_USAGE", `prompt ${r}: ${ids.length} tokens + maxNewTokens ${maxNew[r]} are over the artifact's cache capacity ${C} (compile with a larger maxSeq)`);
    });
    // the cache: a row per prompt (row r's slot is r), reused from an earlier call when it is big enough
    const needed = Math.max(...rows.map((ids, r) => ids.length + maxNew[r]));
    let capacity: number;
    let cache: Map<string, unknown>;
    if (this.kept && this.kept.capacity >= needed && this.kept.rows >= rows.length) ({ capacity, tensors: cache } = this.kept);
    else {
      this.dropKept();
      capacity = this.capacityFor(needed);
      cache = this.newCache(rows.length, capacity);
    }
    const cacheRows = this.kept?.tensors === cache ? this.kept.rows : rows.length;
    this.kept = undefined;
    const past = rows.map(() => 0);
    // Pipelined like generate() (LoadOptions.pipelineDecode): a call where every row is greedy and
    // feeds one token is issued without waiting, and the next call — the same rows, each fed its
    // pick where it lies on the target — is queued behind it when every row will still be in the
    // batch (none at its maxNewTokens); a row that ends on a stop token changes the rows, and the
    // call queued ahead is dropped (its cache writes lie past the rows' ends or in a finished row).
    const produced = rows.map(() => 0);
    const pipelined = this.pipelineDecode && this.nextToken !== undefined;
    const pl: Pipeline = {};
    // one token a row at `past` (+ 1 for a call issued ahead), input_ids from the host or the target
    const feedOne = (callRows: number[], ids: BigInt64Array | DeviceTensor, ahead1: number) => {
      const N = callRows.length;
      const feed = new Map(cache);
      feed.set("input_ids", ids instanceof BigInt64Array ? { dtype: ABI_DTYPE.i64, shape: [1, N], data: ids } : ids);
      feed.set("cu_seqlens", { dtype: ABI_DTYPE.i32, shape: [N + 1], data: Int32Array.from({ length: N + 1 }, (_, n) => n) });
      feed.set("cache_slot", { dtype: ABI_DTYPE.i32, shape: [N], data: Int32Array.from(callRows) });
      feed.set("cache_position", { dtype: ABI_DTYPE.i64, shape: [N], data: BigInt64Array.from(callRows, (r) => BigInt(past[r] + ahead1)) });
      return feed;
    };
    const step = (calls: { row: number; ids: number[]; greedy: boolean }[]): Promise<(Float32Array | number)[]> =>
      this.serial(async () => {
        for (const c of calls) produced[c.row]++;
        if (pipelined && calls.every((c) => c.greedy && c.ids.length === 1)) {
          const callRows = calls.map((c) => c.row);
          // the rows and their positions: a call issued ahead serves only the same rows, one further
          const key = (ahead: number) => callRows.map((r) => `${r}@${past[r] + ahead}`).join();
          const host = () => {
            const vocab = Number((this.manifest.model.config as { vocab_size?: number } | null)?.vocab_size ?? Infinity);
            const bad = calls.find((c) => !Number.isInteger(c.ids[0]) || c.ids[0] < 0 || c.ids[0] >= vocab);
            if (bad) throw new KilnError("E_USAGE", `token id ${bad.ids[0]} (row ${bad.row}) is not in [0, ${vocab})`);
            return BigInt64Array.from(calls, (c) => BigInt(c.ids[0]));
          };
          const issue = async (ids: BigInt64Array | DeviceTensor, ahead: number) => {
            const r = await this.issueCall(feedOne(callRows, ids, ahead));
            cache = nextCache(cache, r.present);
            return r;
          };
          const got = await this.pipelinedCall(pl, key(0), key(1), calls.map((c) => c.ids[0]), host, issue, calls.every((c) => produced[c.row] < maxNew[c.row]));
          for (const c of calls) past[c.row] += 1;
          return got;
        }
        await this.dropAhead(pl);
        const N = calls.length;
        const flat = calls.flatMap((c) => c.ids);
        const cu = new Int32Array(N + 1);
        calls.forEach((c, n) => (cu[n + 1] = cu[n] + c.ids.length));
        const feed = new Map(cache);
        feed.set("input_ids", { dtype: ABI_DTYPE.i64, shape: [1, flat.length], data: BigInt64Array.from(flat, (x) => BigInt(x)) });
        feed.set("cu_seqlens", { dtype: ABI_DTYPE.i32, shape: [N + 1], data: cu });
        feed.set("cache_slot", { dtype: ABI_DTYPE.i32, shape: [N], data: Int32Array.from(calls, (c) => c.row) });
        feed.set("cache_position", { dtype: ABI_DTYPE.i64, shape: [N], data: BigInt64Array.from(calls, (c) => BigInt(past[c.row])) });
        // the target picks when every row of the call is greedy (a row that samples needs the logits)
        const pick = this.nextToken !== undefined && calls.every((c) => c.greedy);
        const outs = await this.invoke(feed, this.stepWants(pick));
        cache = nextCache(cache, new Map([...outs].filter(([k]) => k.startsWith("present."))));
        for (const c of calls) past[c.row] += c.ids.length;
        // each sequence's last token: row n of [N, 1, V] (lastToken builds), or row cu_seqlens[n + 1] − 1 of the packed [1, T, V]
        const shape = (outs.get("logits") as HostTensor | DeviceTensor).shape;
        const lastToken = shape[0] === N && shape[1] === 1;
        return this.stepOutputs(outs, calls.map((_c, n) => (lastToken ? n : cu[n + 1] - 1)), pick);
      });
    const streams = rows.map(() => (this.tokenizer ? new TextStreamer(this.tokenizer, { skipSpecialTokens: true }) : undefined));
    const gen = generateRows(step, rows, opts, o.logits === true);
    try {
      for (;;) {
        const r = await gen.next();
        if (r.done) return r.value;
        const t = r.value;
        const s = streams[t.row];
        const last = t.index === maxNew[t.row] - 1 || (opts[t.row].stopTokens ?? []).includes(t.id);
        yield { ...t, text: s ? s.push(t.id) + (last ? s.end() : "") : undefined };
      }
    } finally {
      await this.queue;
      await this.serial(() => this.dropAhead(pl)).catch(() => undefined);
      const onDevice = [...cache.values()].every((t) => typeof (t as DeviceTensor).free === "function");
      const kept = this.kept as Model["kept"]; // another call may have kept one meanwhile
      if (onDevice && !this.disposed && (!kept || kept.capacity < capacity || kept.rows < cacheRows)) {
        this.dropKept();
        this.kept = { capacity, rows: cacheRows, tensors: cache as Map<string, DeviceTensor> };
      } else for (const t of cache.values()) if (typeof (t as DeviceTensor).free === "function") (t as DeviceTensor).free();
    }
  }

  /**
   * An encoder's hidden states for a batch of rows (token ids, or text with a tokenizer), in one
   * pass. Padded artifacts take rows of different lengths and pad them as Hugging Face does
   * (right by default; the pad id is config.json's pad_token_id, else 0), or rows already padded
   * with their `attentionMask`; token types default to 0.
   */
  encode(input: string | readonly string[] | readonly number[] | readonly (readonly number[])[], o: EncodeOptions = {}): Promise<EncodeResult> {
    return this.serial(async () => {
      this.expectKind("encoder", "encode");
      const text = (t: string) => {
        if (!this.tokenizer) throw new KilnError("E_USAGE", "this checkpoint has no tokenizer.json: pass token ids instead of text", { where: this.checkpoint });
        return this.tokenizer.encode(t);
      };
      const list = typeof input === "string" ? [input] : input;
      let rows = typeof list[0] === "string" ? (list as string[]).map(text) : asRows(list as number[][]);
      const given = rows.map((r) => r.length);
      if (rows.length === 0 || given.includes(0)) throw new KilnError("E_USAGE", "encode needs at least one row, and every row at least one token");
      const S = Math.max(...given);
      const side = o.padding ?? "right";
      if (side !== "right" && side !== "left") throw new KilnError("E_USAGE", `padding must be "right" or "left", got ${JSON.stringify(side)}`);
      const perToken = (what: string, x: readonly number[] | readonly (readonly number[])[], ok: (v: number) => boolean, range: string): number[][] => {
        const t = asRows(x);
        if (t.length !== rows.length || t.some((r, b) => r.length !== rows[b].length))
          throw new KilnError("E_USAGE", `${what} must have one value per token of each row (rows of ${given.join(", ")} tokens), got rows of ${t.map((r) => r.length).join(", ")}`);
        t.forEach((r, b) => r.forEach((v, s) => {
          if (!ok(v)) throw new KilnError("E_USAGE", `${what} value ${v} (row ${b}, position ${s}) is not ${range}`);
        }));
        return t;
      };
      const cfg = (this.manifest.model.config ?? {}) as { type_vocab_size?: unknown; pad_token_id?: unknown };
      const types = typeof cfg.type_vocab_size === "number" ? cfg.type_vocab_size : Infinity;
      let tt = o.tokenTypeIds ? perToken("tokenTypeIds", o.tokenTypeIds, (v) => Number.isInteger(v) && v >= 0 && v < types, `in [0, ${types})`) : rows.map((r) => r.map(() => 0));
      let mask: number[][] | undefined;
      if (o.attentionMask) {
        if (!this.padded) throw new KilnError("E_USAGE", "this artifact takes no attention_mask (compile with padded: true / --padded)", { where: this.dir });
        if (given.some((n) => n !== S)) throw new KilnError("E_USAGE", "rows given with an attentionMask must already be padded to one length");
        mask = perToken("attentionMask", o.attentionMask, (v) => v === 0 || v === 1, "0 or 1");
      } else if (this.padded) {
        const pad = <T>(r: T[], v: T) => (side === "right" ? [...r, ...Array<T>(S - r.length).fill(v)] : [...Array<T>(S - r.length).fill(v), ...r]);
        const padId = typeof cfg.pad_token_id === "number" ? cfg.pad_token_id : 0;
        mask = rows.map((r) => pad(r.map(() => 1), 0));
        rows = rows.map((r) => pad(r, padId));
        tt = tt.map((r) => pad(r, 0));
      }
      if (!this.padded && given.some((n) => n !== S))
        throw new KilnError("E_USAGE", `rows of different lengths (${given.join(", ")}) need a padded artifact (compile with padded: true / --padded)`, { where: this.dir });
      if (this.packed) {
        // only the real tokens run (each as if right-padded: positions count from its first token)
        const real = mask!.map((r) => r.flatMap((m, s) => (m ? [s] : [])));
        if (real.some((r) => r.length === 0)) throw new KilnError("E_USAGE", "a row with no real token (its attentionMask is all 0)");
        const slots = real.map((r, b) => r.map((s) => b * S + s));
        const pick = (x: number[][]) => x.map((r, b) => real[b].map((s) => r[s]));
        const outs = await this.runPacked(pick(rows), new Map([["token_type_ids", pick(tt)]]), S, slots);
        const hidden = outs.get("last_hidden_state");
        if (!hidden) throw new KilnError("E_ARTIFACT", `the encoder has no 'last_hidden_state' output (its outputs: ${[...outs.keys()].join(", ")})`, { where: this.dir });
        return { lastHiddenState: hidden.data, shape: hidden.shape, poolerOutput: outs.get("pooler_output")?.data, lengths: real.map((r) => r.length) };
      }
      const ids = this.checkIds(rows, 0);
      const B = rows.length;
      const i64 = (v: number[][]) => ({ dtype: ABI_DTYPE.i64, shape: [B, S], data: BigInt64Array.from(v.flat(), (x) => BigInt(x)) });
      const feed = new Map<string, unknown>([["input_ids", { dtype: ABI_DTYPE.i64, shape: [B, S], data: ids }]]);
      if (mask) feed.set("attention_mask", i64(mask));
      if (this.manifest.inputs.some((i) => i.name === "token_type_ids")) feed.set("token_type_ids", i64(tt));
      else if (o.tokenTypeIds) throw new KilnError("E_USAGE", "this artifact takes no token_type_ids", { where: this.dir });
      const outs = await this.invoke(feed, () => true);
      const hidden = outs.get("last_hidden_state") as HostTensor | undefined;
      if (!hidden) throw new KilnError("E_ARTIFACT", `the encoder has no 'last_hidden_state' output (its outputs: ${[...outs.keys()].join(", ")})`, { where: this.dir });
      const pooled = outs.get("pooler_output") as HostTensor | undefined;
      const lengths = mask ? mask.map((r) => r.reduce((a, v) => a + v, 0)) : given;
      return { lastHiddenState: toF32(hidden), shape: hidden.shape, poolerOutput: pooled && toF32(pooled), lengths };
    });
  }

  /** The static or varlen KV cache a finished generate / generateBatch left for the next one (rows: its cache rows). */
  private kept: { capacity: number; rows: number; tensors: Map<string, DeviceTensor> } | undefined;
  private dropKept(): void {
    for (const t of this.kept?.tensors.values() ?? []) t.free();
    this.kept = undefined;
  }

  /** Frees the weights and the device state. Idempotent. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    await this.queue;
    this.disposed = true;
    this.dropKept();
    this.art.bindWeights([]);
    for (const w of this.weights) w.free();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

export const loadModel = (artifactDir: string, o: LoadOptions): Promise<Model> => Model.load(artifactDir, o);
