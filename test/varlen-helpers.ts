// Shared by the cpu and gpu tests of batched generation on the varlen KV cache: run a batch
// through generateBatch, run each prompt alone through generate() + forward() on a static-cache
// artifact, and measure how far apart they are.

import type { Model } from "../runtime/api.js";
import type { BatchResult } from "../runtime/batch.js";
import type { SamplingOptions } from "../runtime/sampling.js";

/** Prompts of different lengths (1 to 12 tokens), ids below 256 (every fixture's vocab). */
export const PROMPTS = [
  [5, 17, 200, 3, 99, 42, 7],
  [250, 11, 64],
  [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
  [77],
];

export interface BatchRun {
  tokens: number[][];
  /** the logits each token was chosen from, per row */
  logits: Float32Array[][];
  /** (row, index) in the order the tokens came */
  order: [number, number][];
  result: BatchResult;
}

/** generateBatch's tokens, in order, and its result; with `logits` (default) the logits of each token too ([] without). */
export async function runBatch(model: Model, prompts: number[][], options: SamplingOptions | SamplingOptions[], logits = true): Promise<BatchRun> {
  const run: BatchRun = { tokens: prompts.map(() => []), logits: prompts.map(() => []), order: [], result: undefined as unknown as BatchResult };
  const gen = model.generateBatch(prompts, options, { logits });
  for (;;) {
    const r = await gen.next();
    if (r.done) {
      run.result = r.value;
      return run;
    }
    run.tokens[r.value.row].push(r.value.id);
    if (logits) run.logits[r.value.row].push(r.value.logits!);
    run.order.push([r.value.row, r.value.index]);
  }
}

/** One prompt alone on a static-cache artifact: generate()'s tokens, and forward()'s logits at each position a token was chosen. */
export async function runAlone(model: Model, prompt: number[], options: SamplingOptions): Promise<{ tokens: number[]; logits: Float32Array[] }> {
  const tokens: number[] = [];
  for await (const t of model.generate(prompt, options)) tokens.push(t.id);
  if (tokens.length === 0) return { tokens, logits: [] };
  const all = [...prompt, ...tokens.slice(0, -1)];
  const { logits, shape } = await model.forward([all]);
  const V = shape[2];
  return { tokens, logits: tokens.map((_t, k) => logits.slice((prompt.length - 1 + k) * V, (prompt.length + k) * V)) };
}

export const maxAbsDiff = (a: Float32Array, b: Float32Array): number => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), a.length === b.length ? 0 : Infinity);

/** ‖a − b‖ / ‖b‖ */
export function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) [num, den] = [num + (a[i] - b[i]) ** 2, den + b[i] ** 2];
  return a.length === b.length ? Math.sqrt(num / den) : Infinity;
}

/** The tokens each call must compute: every prompt at once, then one per row still running (row r ends after ends[r] tokens). */
export function expectedTokensPerCall(prompts: number[][], ends: number[]): number[] {
  const calls = [prompts.reduce((a, p, r) => a + (ends[r] > 0 ? p.length : 0), 0)];
  for (let k = 1; k < Math.max(...ends); k++) calls.push(ends.filter((e) => e > k).length);
  return calls;
}
