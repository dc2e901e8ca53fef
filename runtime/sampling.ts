// Token selection and the generation loop behind `model.generate()`. The runtime supplies one
// function, `step(ids) => last-position logits` (or, for a greedy pick, the token id the target
// chose: see StepFn); everything around it lives here: option
// validation, a seeded PRNG, the logits processors (in Hugging Face's order: repetition penalty,
// then temperature, top-k, top-p), sampling, stop tokens and cancellation.
//
// Sampling or greedy (the rule mirrors HF `generate`, where sampling is opt-in):
//   - temperature 0 is always greedy;
//   - otherwise `doSample` decides when given;
//   - when it is not given, we sample iff the caller asked for a sampling knob: a `temperature`,
//     a `topK` > 0 or a `topP` < 1. Plain `{}` (or only maxNewTokens / stopTokens / penalty) is greedy.
// Unlike HF's generation_config we have no hidden top_k=50 default: every filter is off unless set.
//
// Non-finite logits: -Infinity is a masked token and is never chosen; NaN or +Infinity means the
// model run went wrong and is reported as E_RUNTIME, as is a row where every token is masked.

import { randomBytes } from "node:crypto";
import { KilnError } from "../compiler/ir/errors.js";

export interface SamplingOptions {
  /** tokens to generate at most (default 32) */
  maxNewTokens?: number;
  /** softmax temperature (default 1); 0 means greedy */
  temperature?: number;
  /** keep only the k most likely tokens (0 = off, the default) */
  topK?: number;
  /** nucleus sampling: keep the smallest set of tokens whose probability reaches topP (1 = off, the default) */
  topP?: number;
  /** CTRL repetition penalty over prompt + generated tokens (1 = off, the default) */
  repetitionPenalty?: number;
  /** PRNG seed (a safe integer); a random one from node:crypto when absent */
  seed?: number;
  /** generation ends after one of these tokens is produced (it is included in the output) */
  stopTokens?: number[];
  /** sample (true) or take the argmax (false); default: see the rule at the top of this file */
  doSample?: boolean;
  /** aborting it stops generation before the next model step; the loop throws `signal.reason` */
  signal?: AbortSignal;
}

/** Options after validation: every default filled in, `doSample` resolved, `seed` chosen. */
export interface NormalizedSamplingOptions {
  maxNewTokens: number;
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  seed: number;
  stopTokens: readonly number[];
  signal?: AbortSignal;
}

/** What `selectToken` reads: the logits processors' settings. */
export type SelectionOptions = Pick<NormalizedSamplingOptions, "doSample" | "temperature" | "topK" | "topP" | "repetitionPenalty">;

const WHERE = "sampling options";

function show(v: unknown): string {
  if (typeof v === "number") return String(v); // keeps NaN, Infinity, -0 readable
  if (typeof v === "string") return JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

function usage(message: string, where = WHERE): KilnError {
  return new KilnError("E_USAGE", message, { where });
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Checks `o` and fills in defaults; throws E_USAGE naming the first bad option and its value. */
export function validateSamplingOptions(o: SamplingOptions = {}): NormalizedSamplingOptions {
  if (typeof o !== "object" || o === null) throw usage(`sampling options must be an object, got ${show(o)}`);
  const { maxNewTokens = 32, temperature = 1, topK = 0, topP = 1, repetitionPenalty = 1, stopTokens = [], doSample, signal } = o;
  if (!isCount(maxNewTokens)) throw usage(`maxNewTokens must be a non-negative integer, got ${show(maxNewTokens)}`);
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0)
    throw usage(`temperature must be a finite number >= 0 (0 = greedy), got ${show(temperature)}`);
  if (!isCount(topK)) throw usage(`topK must be a non-negative integer (0 = off), got ${show(topK)}`);
  if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) throw usage(`topP must be in (0, 1] (1 = off), got ${show(topP)}`);
  if (typeof repetitionPenalty !== "number" || !Number.isFinite(repetitionPenalty) || repetitionPenalty <= 0)
    throw usage(`repetitionPenalty must be a finite number > 0 (1 = off), got ${show(repetitionPenalty)}`);
  if (!Array.isArray(stopTokens)) throw usage(`stopTokens must be an array of token ids, got ${show(stopTokens)}`);
  const badStop = stopTokens.findIndex((t) => !isCount(t));
  if (badStop >= 0) throw usage(`stopTokens[${badStop}] must be a non-negative integer token id, got ${show(stopTokens[badStop])}`);
  if (doSample !== undefined && typeof doSample !== "boolean") throw usage(`doSample must be a boolean, got ${show(doSample)}`);
  if (o.seed !== undefined && (typeof o.seed !== "number" || !Number.isSafeInteger(o.seed)))
    throw usage(`seed must be a safe integer, got ${show(o.seed)}`);
  if (signal !== undefined && typeof (signal as Partial<AbortSignal> | null)?.throwIfAborted !== "function")
    throw usage(`signal must be an AbortSignal, got ${show(signal)}`);
  const asksToSample = o.temperature !== undefined || topK > 0 || topP < 1;
  return {
    maxNewTokens,
    doSample: temperature > 0 && (doSample ?? asksToSample),
    temperature,
    topK,
    topP,
    repetitionPenalty,
    seed: o.seed ?? randomSeed(),
    stopTokens: [...stopTokens],
    signal,
  };
}

/** A fresh 48-bit seed from the OS's CSPRNG (exactly representable, so it can be logged and replayed). */
export function randomSeed(): number {
  return randomBytes(6).readUIntLE(0, 6);
}

// ---------------------------------------------------------------------------------------------
// PRNG: xoshiro128** 1.1 (Blackman & Vigna, "Scrambled linear pseudorandom number generators",
// 2018/2021), seeded through SplitMix32 as its authors recommend. Pure 32-bit integer arithmetic
// (Math.imul, shifts), so a seed gives the same stream on every machine and Node version.

function splitmix32(state: { a: number }): number {
  state.a = (state.a + 0x9e3779b9) | 0;
  let z = state.a;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
  return (z ^ (z >>> 15)) >>> 0;
}

const rotl = (x: number, k: number): number => (x << k) | (x >>> (32 - k));

export class Rng {
  readonly seed: number;
  private readonly s = new Uint32Array(4);

  /** `seed`: a safe integer (all 53 bits are used); omitted → `randomSeed()`. */
  constructor(seed: number = randomSeed()) {
    if (!Number.isSafeInteger(seed)) throw usage(`seed must be a safe integer, got ${show(seed)}`, "Rng");
    this.seed = seed;
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 0x1_0000_0000) >>> 0; // for negative seeds too: floor, then wrap
    const mix = { a: hi };
    const state = { a: lo ^ splitmix32(mix) };
    for (let i = 0; i < 4; i++) this.s[i] = splitmix32(state);
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1; // the one forbidden state
  }

  /** Next 32 random bits, as an unsigned integer. */
  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

// ---------------------------------------------------------------------------------------------
// Token selection.

/**
 * Picks the next token from last-position `logits`. `history` is every token the model has seen
 * (prompt + generated), for the repetition penalty. Greedy: the first index of the maximum (as
 * torch.argmax). Sampling: temperature, top-k, top-p, then inverse-CDF sampling with `rng`.
 * Does not modify `logits`.
 */
export function selectToken(logits: Float32Array, history: readonly number[], opts: SelectionOptions, rng: Rng): number {
  return pickToken(logits, opts.repetitionPenalty !== 1 ? new Set(history) : null, opts, rng);
}

function pickToken(logits: Float32Array, seen: ReadonlySet<number> | null, opts: SelectionOptions, rng: Rng): number {
  if (!(logits instanceof Float32Array) || logits.length === 0)
    throw new KilnError("E_RUNTIME", `logits must be a non-empty Float32Array, got ${logits instanceof Float32Array ? "an empty one" : show(logits)}`, { where: "logits" });
  const x = seen && seen.size > 0 ? applyRepetitionPenalty(logits, seen, opts.repetitionPenalty) : logits;
  const { max, argmax, finite } = scan(x);
  if (!opts.doSample || opts.temperature === 0 || finite === 1) return argmax;

  // top-k: (Fan et al., 2018) keep every token whose logit is >= the k-th largest, so ties at the
  // boundary are all kept (HF's TopKLogitsWarper does the same: it removes `scores < kth`).
  // Temperature is monotone, so the threshold is found on the raw logits. O(n log k), no full sort.
  let candidates: Int32Array;
  if (opts.topK > 0 && opts.topK < finite) {
    const kth = kthLargest(x, opts.topK);
    candidates = indicesWhere(x, (v) => v >= kth);
  } else {
    candidates = indicesWhere(x, (v) => v > -Infinity);
  }

  // softmax weights in float64, shifted by the max so the largest is exp(0) = 1. (v - max) / T
  // instead of v / T - max / T: never overflows, and T → 0 tends to the argmax.
  const t = opts.temperature;
  const w = new Float64Array(candidates.length);
  let total = 0;
  for (let i = 0; i < candidates.length; i++) total += w[i] = Math.exp((x[candidates[i]] - max) / t);

  // top-p (nucleus sampling, Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"):
  // in order of probability (descending; equal probabilities by token id), keep the shortest
  // prefix whose mass reaches topP, at least one token. A 1e-9 slack absorbs float rounding, so
  // that probabilities [0.5, 0.3, ...] with topP 0.8 keep two tokens, not three.
  let order: ArrayLike<number> | null = null; // positions into `candidates`, in sampling order
  if (opts.topP < 1) {
    const kept = nucleus(w, (opts.topP - 1e-9) * total);
    total = 0;
    for (let j = 0; j < kept.length; j++) total += w[kept[j]];
    order = kept;
  }

  // inverse CDF: the first token whose cumulative weight exceeds u. A zero-weight token can never
  // be the first to exceed u; rounding past the end falls back to the last positive one.
  const n = order ? order.length : candidates.length;
  const u = rng.next() * total;
  let cum = 0;
  let last = -1;
  for (let j = 0; j < n; j++) {
    const i = order ? order[j] : j;
    if (w[i] === 0) continue;
    cum += w[i];
    last = candidates[i];
    if (cum > u) return last;
  }
  return last;
}

/**
 * Repetition penalty (Keskar et al., 2019, CTRL: "penalized sampling"), as HF's RepetitionPenaltyLogitsProcessor
 * applies it: each distinct seen token's logit is divided by the penalty if positive (zero stays
 * zero) and multiplied by it if negative. Rounded to float32 like the torch tensor it mirrors.
 */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): Float32Array {
  const out = new Float32Array(logits);
  const done = new Set<number>();
  for (const id of seen) {
    if (!Number.isInteger(id) || id < 0 || id >= logits.length)
      throw usage(`token id ${show(id)} is outside the vocabulary [0, ${logits.length})`, "history");
    if (done.has(id)) continue;
    done.add(id);
    const v = logits[id];
    out[id] = v < 0 ? v * penalty : v / penalty;
  }
  return out;
}

/** max, first argmax and count of finite entries; NaN / +Infinity / all-masked are E_RUNTIME. */
function scan(x: Float32Array): { max: number; argmax: number; finite: number } {
  let max = -Infinity;
  let argmax = -1;
  let finite = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (v > -Infinity) {
      if (!(v < Infinity)) throw new KilnError("E_RUNTIME", `logits[${i}] is ${v}: the model produced a non-finite value`, { where: "logits" });
      finite++;
      if (v > max) {
        max = v;
        argmax = i;
      }
    } else if (v !== -Infinity) {
      throw new KilnError("E_RUNTIME", `logits[${i}] is NaN: the model produced a non-finite value`, { where: "logits" });
    }
  }
  if (finite === 0) throw new KilnError("E_RUNTIME", `all ${x.length} logits are -Infinity: no token can be selected`, { where: "logits" });
  return { max, argmax, finite };
}

/** The k-th largest finite value of `x` (1 ≤ k ≤ finite count), by a bounded binary min-heap. */
function kthLargest(x: Float32Array, k: number): number {
  const heap = new Float64Array(k);
  let size = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (v === -Infinity) continue;
    if (size < k) {
      let c = size++;
      while (c > 0) {
        const p = (c - 1) >> 1;
        if (heap[p] <= v) break;
        heap[c] = heap[p];
        c = p;
      }
      heap[c] = v;
    } else if (v > heap[0]) {
      let c = 0; // sift v down from the root, replacing the minimum
      for (;;) {
        let m = 2 * c + 1;
        if (m >= k) break;
        if (m + 1 < k && heap[m + 1] < heap[m]) m++;
        if (heap[m] >= v) break;
        heap[c] = heap[m];
        c = m;
      }
      heap[c] = v;
    }
  }
  return heap[0];
}

/**
 * The positions of the top-p nucleus of weights `w` (the shortest prefix, in descending weight
 * order, whose mass reaches `need`; at least one), in an order fixed by the input (sampling does
 * not need them sorted). Quickselect on the mass instead of sorting the whole vocabulary:
 * partition around a pivot weight into heavier / equal / lighter; if the heavier part alone
 * reaches `need`, the nucleus lies inside it, otherwise keep all of it and go on with the rest.
 * Expected O(n), in place; among equal weights the lower positions (= token ids) are kept first.
 */
function nucleus(w: Float64Array, need: number): Int32Array {
  const a = new Int32Array(w.length);
  let hi = 0;
  for (let i = 0; i < w.length; i++) if (w[i] > 0) a[hi++] = i;
  let lo = 0; // a[0, lo) is kept; a[lo, hi) is still undecided
  let left = need;
  let h = 0x9e3779b9; // pivots from a fixed hash sequence: deterministic, and no adversarial orders
  const pick = (): number => {
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) ^ 0x297a2d39;
    return w[a[lo + ((h >>> 0) % (hi - lo))]];
  };
  while (lo < hi) {
    const pivot = median3(pick(), pick(), pick());
    // three-way partition (Dijkstra's Dutch national flag): a[lo, g) heavier, a[g, e) equal, a[e, hi) lighter
    let g = lo;
    let e = lo;
    let l = hi;
    let heavierMass = 0;
    while (e < l) {
      const i = a[e];
      if (w[i] > pivot) {
        heavierMass += w[i];
        a[e++] = a[g];
        a[g++] = i;
      } else if (w[i] < pivot) {
        a[e] = a[--l];
        a[l] = i;
      } else e++;
    }
    if (g > lo && heavierMass >= left) {
      hi = g;
      continue;
    }
    left -= heavierMass;
    a.subarray(g, e).sort();
    lo = g;
    while (lo < e && (lo === 0 || left > 0)) left -= w[a[lo++]];
    if (lo < e || left <= 0) break;
  }
  return a.subarray(0, lo);
}

function median3(a: number, b: number, c: number): number {
  return Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
}

function indicesWhere(x: Float32Array, keep: (v: number) => boolean): Int32Array {
  const out = new Int32Array(x.length);
  let n = 0;
  for (let i = 0; i < x.length; i++) if (keep(x[i])) out[n++] = i;
  return out.slice(0, n);
}

// ---------------------------------------------------------------------------------------------
// The generation loop.

/**
 * One model step, returning the logits of the last position. The contract (a KV cache behind it):
 * the first call gets the whole prompt with `isFirst` true (prefill); every later call gets only
 * the newest token, `[id]`, with `isFirst` false, and the runtime appends it to its cache. Each
 * call gets a fresh array it may keep.
 *
 * `greedy` true says the loop will take the plain argmax of these logits (greedy selection and no
 * repetition penalty): the step may then return the chosen token id instead, the first index of
 * the maximum, as the target's `argmax` op picks it (the logits never leave the target). A step
 * whose target found no token to pick (a NaN or +Inf logit, or none finite) returns the logits, and
 * the loop reports them as it always has (E_RUNTIME).
 */
export type StepFn = (ids: number[], isFirst: boolean, greedy: boolean) => Promise<Float32Array | number>;

/** Whether the loop takes the plain argmax of the logits (what a step's token id may stand for). */
export const isPlainGreedy = (o: Pick<NormalizedSamplingOptions, "doSample" | "temperature" | "repetitionPenalty">): boolean =>
  (!o.doSample || o.temperature === 0) && o.repetitionPenalty === 1;

export interface GeneratedToken {
  id: number;
  /** 0 for the first new token */
  index: number;
}

export interface GenerationResult {
  /** "stop": a stop token was produced (it is the last of `tokens`); "length": maxNewTokens reached */
  reason: "length" | "stop";
  /** the new tokens, without the prompt */
  tokens: number[];
}

/**
 * Generates up to `maxNewTokens` tokens after `prompt`, yielding each as it is chosen; the
 * generator's return value says why it ended. Options and prompt are checked when it is called
 * (E_USAGE); `opts.signal` is checked before every model step and after it (a token whose step
 * was aborted is not yielded), and an abort throws `signal.reason` (an AbortError DOMException
 * unless the caller gave another). Stopping early (`break` in `for await`) makes no further steps.
 */
export function generateTokens(step: StepFn, prompt: readonly number[], opts: SamplingOptions = {}): AsyncGenerator<GeneratedToken, GenerationResult, undefined> {
  if (typeof step !== "function") throw usage(`step must be a function, got ${show(step)}`, "generateTokens");
  if (!Array.isArray(prompt) || prompt.length === 0)
    throw usage(`the prompt must be a non-empty array of token ids (prefill needs at least one token), got ${show(prompt)}`, "generateTokens");
  const bad = prompt.findIndex((t) => !isCount(t));
  if (bad >= 0) throw usage(`prompt[${bad}] must be a non-negative integer token id, got ${show(prompt[bad])}`, "generateTokens");
  return generate(step, [...prompt], validateSamplingOptions(opts));
}

async function* generate(step: StepFn, prompt: number[], o: NormalizedSamplingOptions): AsyncGenerator<GeneratedToken, GenerationResult, undefined> {
  const rng = new Rng(o.seed);
  const stops = new Set(o.stopTokens);
  const seen = o.repetitionPenalty !== 1 ? new Set(prompt) : null;
  const tokens: number[] = [];
  const greedy = isPlainGreedy(o);
  let vocab = -1;
  while (tokens.length < o.maxNewTokens) {
    o.signal?.throwIfAborted();
    const isFirst = tokens.length === 0;
    const out = await step(isFirst ? [...prompt] : [tokens[tokens.length - 1]], isFirst, greedy);
    o.signal?.throwIfAborted();
    let id: number;
    if (typeof out === "number") {
      if (!greedy) throw new KilnError("E_RUNTIME", `step returned token id ${out} where the options need logits (sampling or a repetition penalty)`, { where: "step" });
      if (!Number.isSafeInteger(out) || out < 0 || (vocab >= 0 && out >= vocab))
        throw new KilnError("E_RUNTIME", `step returned token id ${out}, which is not in the vocabulary${vocab >= 0 ? ` [0, ${vocab})` : ""}`, { where: "step" });
      id = out;
    } else {
      if (out instanceof Float32Array) {
        if (vocab >= 0 && out.length !== vocab)
          throw new KilnError("E_RUNTIME", `step returned ${out.length} logits, the previous step ${vocab}`, { where: "logits" });
        vocab = out.length;
      }
      id = pickToken(out, seen, o, rng);
    }
    seen?.add(id);
    tokens.push(id);
    yield { id, index: tokens.length - 1 };
    if (stops.has(id)) return { reason: "stop", tokens };
  }
  return { reason: "length", tokens };
}
