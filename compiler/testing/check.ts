// Checks for passes and the text form: compare tensors within a tolerance, check that a pass
// keeps what random graphs compute (and report the smallest graph where it does not), check that
// a graph's text form reads back to the same text.

import fc from "fast-check";
import type { Arbitrary } from "fast-check";
import type { DType } from "../ir/dtype.js";
import type { Graph } from "../ir/graph.js";
import { run } from "../ir/interpreter.js";
import { parse } from "../ir/parse.js";
import { formatNumber, print } from "../ir/print.js";
import type { Tensor } from "../ir/tensor.js";
import { stridesOf } from "../ir/tensor.js";
import { verify } from "../ir/verify.js";
import type { Pass, PassContext } from "../passes/manager.js";
import { createContext } from "../passes/manager.js";
import type { GraphCase } from "./arbitraries.js";
import { arbGraphWithInputs } from "./arbitraries.js";

// ---------------------------------------------------------------- tensors

export interface Tolerance {
  atol: number;
  rtol: number;
}

/** What two results of the same computation may differ by, per dtype (integers: exactly equal). */
export const DEFAULT_TOLERANCE: Readonly<Record<DType, Tolerance>> = {
  f32: { atol: 1e-5, rtol: 1e-5 },
  f16: { atol: 1e-3, rtol: 1e-3 },
  bf16: { atol: 1e-2, rtol: 1e-2 },
  i64: { atol: 0, rtol: 0 },
  i32: { atol: 0, rtol: 0 },
  i8: { atol: 0, rtol: 0 },
  u8: { atol: 0, rtol: 0 },
  bool: { atol: 0, rtol: 0 },
};

export interface Comparison {
  ok: boolean;
  /** largest |actual - expected| (Infinity where one side is NaN or inf and the other is not) */
  maxAbs: number;
  /** largest |actual - expected| / |expected| */
  maxRel: number;
  /** flat index of the worst element out of tolerance; -1 when ok */
  index: number;
  /** the same as a multi-index */
  at: number[];
  expected?: number;
  actual?: number;
  /** why a comparison failed before any element was compared (dtype or shape) */
  reason?: string;
}

/**
 * Compares `actual` against `expected` elementwise: |a - e| <= atol + rtol·|e|, as numpy's
 * allclose. NaN matches only NaN at the same place; infinities match only themselves. Dtypes
 * and shapes must be the same.
 */
export function compareTensors(actual: Tensor, expected: Tensor, tol: Partial<Tolerance> = {}): Comparison {
  const { atol = 0, rtol = 0 } = tol;
  const fail = (reason: string): Comparison => ({ ok: false, maxAbs: Infinity, maxRel: Infinity, index: -1, at: [], reason });
  if (actual.dtype !== expected.dtype) return fail(`dtype ${actual.dtype} vs expected ${expected.dtype}`);
  if (actual.shape.length !== expected.shape.length || actual.shape.some((d, i) => d !== expected.shape[i]))
    return fail(`shape [${actual.shape.join(", ")}] vs expected [${expected.shape.join(", ")}]`);
  let maxAbs = 0;
  let maxRel = 0;
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.data.length; i++) {
    const a = actual.data[i];
    const e = expected.data[i];
    if (a === e || (Number.isNaN(a) && Number.isNaN(e))) continue;
    const diff = Math.abs(a - e);
    const abs = Number.isNaN(diff) ? Infinity : diff;
    const rel = e === 0 ? Infinity : abs / Math.abs(e);
    maxAbs = Math.max(maxAbs, abs);
    maxRel = Math.max(maxRel, rel);
    const excess = !Number.isFinite(abs) ? Infinity : abs - (atol + rtol * Math.abs(e));
    if (excess > 0 && (worst < 0 || excess > worstExcess)) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst < 0) return { ok: true, maxAbs, maxRel, index: -1, at: [] };
  return { ok: false, maxAbs, maxRel, index: worst, at: unflatten(worst, expected.shape), expected: expected.data[worst], actual: actual.data[worst] };
}

const unflatten = (i: number, shape: number[]): number[] => stridesOf(shape).map((s, k) => Math.floor(i / s) % shape[k]);

/** A tensor in one line, its first `max` values shown. */
export function formatTensor(t: Tensor, max = 16): string {
  const vals = Array.from(t.data.subarray(0, max), formatNumber).join(", ");
  return `${t.dtype}[${t.shape.join(", ")}] [${vals}${t.data.length > max ? `, … (${t.data.length} values)` : ""}]`;
}

// ---------------------------------------------------------------- passes

export interface CheckPassOptions {
  /** the graphs to try, with inputs and weights (default arbGraphWithInputs()) */
  graphs?: Arbitrary<GraphCase>;
  /** default 100 */
  numRuns?: number;
  /** tolerance for every output; per-dtype defaults (DEFAULT_TOLERANCE) where not given */
  atol?: number;
  rtol?: number;
  /** fast-check's seed, and path to replay one counterexample (both from a failure message) */
  seed?: number;
  path?: string;
  /** the pass context's options */
  options?: Record<string, unknown>;
}

export type PassLike = Pass | ((g: Graph, ctx: PassContext) => Graph);

interface Failure {
  what: string;
  after?: Graph;
}

function firstError(e: unknown): string {
  return e instanceof Error ? `${e.name}${"code" in e ? ` ${String(e.code)}` : ""}: ${e.message}` : String(e);
}

/** Runs the pass on one case; null when the pass kept every output within tolerance. */
function checkCase(pass: Pass, c: GraphCase, opts: CheckPassOptions): Failure | null {
  const before = print(c.graph);
  let after: Graph;
  try {
    after = pass.run(c.graph, createContext(opts.options));
  } catch (e) {
    return { what: `the pass threw ${firstError(e)}` };
  }
  if (print(c.graph) !== before) return { what: "the pass mutated its input graph", after };
  try {
    verify(after);
  } catch (e) {
    return { what: `the pass produced an invalid graph: ${firstError(e)}`, after };
  }
  // the reference run failing is the case's fault, not the pass's: let it propagate
  const want = run(c.graph, c.inputs, c.params);
  let got: Record<string, Tensor>;
  try {
    got = run(after, c.inputs, c.params, { verified: true });
  } catch (e) {
    return { what: `the graph after the pass fails to run: ${firstError(e)}`, after };
  }
  const names = Object.keys(want);
  const extra = Object.keys(got).filter((n) => !(n in want));
  if (extra.length) return { what: `the pass added output(s) ${extra.join(", ")}`, after };
  for (const name of names) {
    if (!(name in got)) return { what: `the pass dropped output '${name}'`, after };
    const e = want[name];
    const tol = { atol: opts.atol ?? DEFAULT_TOLERANCE[e.dtype].atol, rtol: opts.rtol ?? DEFAULT_TOLERANCE[e.dtype].rtol };
    const cmp = compareTensors(got[name], e, tol);
    if (!cmp.ok) {
      const detail = cmp.reason
        ? cmp.reason
        : `max abs error ${formatNumber(cmp.maxAbs)}, max rel error ${formatNumber(cmp.maxRel)} (atol ${tol.atol}, rtol ${tol.rtol}); ` +
          `worst at [${cmp.at.join(", ")}]: expected ${formatNumber(cmp.expected!)}, got ${formatNumber(cmp.actual!)}`;
      return { what: `output '${name}' differs after the pass: ${detail}`, after };
    }
  }
  return null;
}

const asPass = (p: PassLike): Pass => (typeof p === "function" ? { name: p.name || "(anonymous)", description: "", run: p } : p);

/**
 * Property check of a pass: for random graphs, inputs and weights, the interpreter's outputs
 * before and after the pass agree within tolerance, and the result verifies. On failure it
 * throws an Error with fast-check's shrunk (smallest) counterexample: its IR text before and
 * after the pass, the output at fault and its error, the inputs, and the seed and path that
 * replay it.
 */
export function checkPass(p: PassLike, opts: CheckPassOptions = {}): void {
  const pass = asPass(p);
  const graphs = opts.graphs ?? arbGraphWithInputs();
  const details = fc.check(
    fc.property(graphs, (c) => checkCase(pass, c, opts) === null),
    { numRuns: opts.numRuns ?? 100, seed: opts.seed, path: opts.path },
  );
  if (!details.failed) return;
  if (details.counterexample === null) throw new Error(`checkPass(${pass.name}): fast-check stopped without a counterexample (interrupted or too many skips)`);
  const [c] = details.counterexample;
  let failure: Failure | null;
  try {
    failure = checkCase(pass, c, opts);
  } catch (e) {
    failure = { what: `the reference run of the graph failed: ${firstError(e)}` };
  }
  const lines = [
    `checkPass(${pass.name}): ${failure ? failure.what : `the property failed: ${firstError(details.errorInstance)}`}`,
    `counterexample (shrunk ${details.numShrinks} times, after ${details.numRuns} runs; ${c.graph.nodes.length} nodes):`,
    print(c.graph).trimEnd(),
  ];
  if (failure?.after) lines.push("after the pass:", print(failure.after).trimEnd());
  lines.push(`bindings: ${JSON.stringify(c.bindings)}`);
  for (const [what, ts] of [["inputs", c.inputs], ["params", c.params]] as const) {
    const entries = Object.entries(ts);
    if (entries.length) lines.push(`${what}:`, ...entries.map(([n, t]) => `  ${n} = ${formatTensor(t)}`));
  }
  lines.push(`replay: seed ${details.seed}, path "${details.counterexamplePath}" (checkPass(pass, { seed: ${details.seed}, path: "${details.counterexamplePath}" }))`);
  throw new Error(lines.join("\n"));
}

// ---------------------------------------------------------------- the text form

/** Checks print(parse(print(g))) === print(g); returns the text, or throws naming the first differing line. */
export function assertRoundTrip(g: Graph): string {
  const text = print(g);
  let again: string;
  try {
    again = print(parse(text));
  } catch (e) {
    throw new Error(`the text form does not parse back: ${firstError(e)}\n${text}`, { cause: e });
  }
  if (again !== text) {
    const a = text.split("\n");
    const b = again.split("\n");
    const i = a.findIndex((l, k) => l !== b[k]);
    throw new Error(`the text form does not read back the same, first at line ${i + 1}:\n  printed:  ${a[i]}\n  re-read:  ${b[i]}\n${text}`);
  }
  return text;
}
