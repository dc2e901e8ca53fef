// Batched generation: many sequences, one model call per step. Each row runs exactly the loop of
// generate() (sampling.ts generateTokens: its sampling, stop tokens, repetition penalty and seed);
// this file only gathers the rows' steps into one call per round (continuous batching as in vLLM,
// Kwon et al., 2023, without admitting new rows mid-way). The first round is every prompt at once
// (one packed prefill); each later round holds one token of each unfinished row; a row whose loop
// ended (a stop token, or its maxNewTokens) is in no later call.

import { KilnError } from "../compiler/ir/errors.js";
import type { GenerationResult, SamplingOptions } from "./sampling.js";
import { generateTokens } from "./sampling.js";

/**
 * One call of the model for several rows: each row's new tokens → the logits after its last one,
 * or, for a row whose request says `greedy`, the token id the target picked there (StepFn's
 * contract, sampling.ts).
 */
export type BatchStepFn = (requests: { row: number; ids: number[]; greedy: boolean }[]) => Promise<(Float32Array | number)[]>;

export interface RowToken {
  /** which prompt this token continues (its index in the prompts given) */
  row: number;
  id: number;
  /** 0 for the row's first new token */
  index: number;
  /** the logits it was chosen from (with the option `logits`) */
  logits?: Float32Array;
}

export interface BatchStats {
  /** tokens each model call computed: the prompts' real tokens at prefill, one per unfinished row after */
  tokensPerCall: number[];
  /** rows (sequences) in each model call */
  rowsPerCall: number[];
}

export interface BatchResult {
  /** per row, as generate() returns it: why it ended and its new tokens */
  rows: GenerationResult[];
  stats: BatchStats;
}

/**
 * Generates after each prompt with its own options (`opts[row]`), yielding tokens tagged with their
 * row, in row order within a round. `withLogits` attaches each token's logits. Errors of one row's
 * options are thrown at once; an error of a model call ends the whole batch.
 */
export async function* generateRows(step: BatchStepFn, prompts: readonly (readonly number[])[], opts: readonly SamplingOptions[], withLogits = false): AsyncGenerator<RowToken, BatchResult> {
  if (opts.length !== prompts.length) throw new KilnError("E_USAGE", `${opts.length} sets of options for ${prompts.length} prompts`, { where: "generateBatch" });
  const stats: BatchStats = { tokensPerCall: [], rowsPerCall: [] };
  let pending: { row: number; ids: number[]; greedy: boolean; resolve: (l: Float32Array | number) => void; reject: (e: unknown) => void }[] = [];
  let outstanding = 0; // rows of this round that have neither asked for a step nor ended
  const flush = () => {
    if (outstanding > 0 || pending.length === 0) return;
    const calls = pending;
    pending = [];
    stats.tokensPerCall.push(calls.reduce((a, c) => a + c.ids.length, 0));
    stats.rowsPerCall.push(calls.length);
    step(calls.map(({ row, ids, greedy }) => ({ row, ids, greedy }))).then(
      (logits) => calls.forEach((c, i) => c.resolve(logits[i])),
      (e: unknown) => calls.forEach((c) => c.reject(e)),
    );
  };
  let asked = new Set<number>();
  const arrived = (row: number) => {
    if (asked.has(row)) return;
    asked.add(row);
    outstanding--;
    flush();
  };
  const last = new Map<number, Float32Array>();
  const gens = prompts.map((p, row) =>
    generateTokens(
      (ids, _first, greedy) =>
        new Promise<Float32Array | number>((resolve, reject) => {
          // a token's logits are attached only if they come back: withLogits asks for them always
          const keep = (l: Float32Array | number) => (typeof l !== "number" && last.set(row, l), resolve(l));
          pending.push({ row, ids, greedy: greedy && !withLogits, resolve: keep, reject });
          arrived(row);
        }),
      p,
      opts[row],
    ),
  );
  const results: GenerationResult[] = [];
  let active = gens.map((_g, row) => row);
  while (active.length) {
    asked = new Set();
    outstanding = active.length;
    const round = await Promise.allSettled(active.map((row) => gens[row].next().finally(() => arrived(row))));
    const failed = round.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const next: number[] = [];
    for (const [k, r] of round.entries()) {
      const row = active[k];
      const res = (r as PromiseFulfilledResult<IteratorResult<{ id: number; index: number }, GenerationResult>>).value;
      if (res.done) {
        results[row] = res.value;
        continue;
      }
      next.push(row);
      yield { row, ...res.value, ...(withLogits ? { logits: last.get(row) } : {}) };
    }
    active = next;
  }
  return { rows: results, stats };
}
