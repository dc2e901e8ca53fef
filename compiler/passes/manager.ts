// The pass manager: passes are named Graph → Graph functions, registered once and composed by a
// pipeline ("dce,cse"). A pass returns a new graph, or its input unchanged; it never mutates its
// input (the manager checks this when it verifies), so a caller may keep and compare both.
// After every pass the manager verifies the result: a pass that breaks the graph, or throws,
// is reported as E_PASS naming the pass, with the underlying error as the cause.

import type { Graph } from "../ir/graph.js";
import { KilnError } from "../ir/errors.js";
import { print } from "../ir/print.js";
import { verify } from "../ir/verify.js";

export interface PassMessage {
  pass: string;
  message: string;
}

export interface PassContext {
  /** pipeline-wide options (`--quant nf4` → { quant: "nf4" }); passes read what they know */
  readonly options: Readonly<Record<string, unknown>>;
  /** the pass now running ("" outside a pipeline) */
  pass: string;
  /** records why a pass did or did not rewrite something (`--explain`) */
  explain(message: string): void;
  /** every message so far, in order */
  readonly messages: PassMessage[];
  /** what analysis passes found, by pass name (placement: its device map), for the codegen to read */
  readonly results: Map<string, unknown>;
}

export interface Pass {
  name: string;
  /** one line for `kiln passes` */
  description: string;
  /** returns a new graph or `g` itself; must not mutate `g` */
  run(g: Graph, ctx: PassContext): Graph;
}

export function createContext(options: Record<string, unknown> = {}): PassContext {
  const ctx: PassContext = {
    options,
    pass: "",
    messages: [],
    results: new Map(),
    explain(message) {
      ctx.messages.push({ pass: ctx.pass, message });
    },
  };
  return ctx;
}

/** The messages one pass recorded. */
export const messagesOf = (ctx: PassContext, pass: string): string[] =>
  ctx.messages.filter((m) => m.pass === pass).map((m) => m.message);

export interface PipelineOptions {
  /** verify the input and the result of every pass, and check that no pass mutated its input (default true) */
  verifyEach?: boolean;
  /** called after each pass with its result (`--dump-ir-after`) */
  onAfterPass?: (pass: Pass, g: Graph, ctx: PassContext) => void;
  /** the context to run in; a fresh one with `options` otherwise */
  context?: PassContext;
  options?: Record<string, unknown>;
}

export function runPipeline(g: Graph, passes: readonly Pass[], opts: PipelineOptions = {}): Graph {
  const { verifyEach = true, onAfterPass } = opts;
  const ctx = opts.context ?? createContext(opts.options);
  // a bad input is the caller's fault, not the first pass's: it stays E_VERIFY
  if (verifyEach) verify(g);
  let cur = g;
  for (const p of passes) {
    const before = verifyEach ? print(cur) : "";
    ctx.pass = p.name;
    let next: Graph;
    try {
      next = p.run(cur, ctx);
    } catch (e) {
      throw new KilnError("E_PASS", `pass '${p.name}' failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    } finally {
      ctx.pass = "";
    }
    if (verifyEach) {
      if (print(cur) !== before) throw new KilnError("E_PASS", `pass '${p.name}' mutated its input graph (passes must return a new graph)`);
      try {
        verify(next);
      } catch (e) {
        throw new KilnError("E_PASS", `pass '${p.name}' produced an invalid graph: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
      }
    }
    onAfterPass?.(p, next, ctx);
    cur = next;
  }
  return cur;
}

// ---------------------------------------------------------------- registry

const REGISTRY = new Map<string, Pass>();

/** Registers a pass under its name; registering the same object again is a no-op. */
export function registerPass(p: Pass): void {
  const old = REGISTRY.get(p.name);
  if (old && old !== p) throw new KilnError("E_USAGE", `a different pass named '${p.name}' is already registered`);
  REGISTRY.set(p.name, p);
}

export function getPass(name: string): Pass {
  const p = REGISTRY.get(name);
  if (!p) throw new KilnError("E_USAGE", `unknown pass '${name}' (known: ${[...REGISTRY.keys()].sort().join(", ") || "none"})`);
  return p;
}

export const listPasses = (): Pass[] => [...REGISTRY.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

/** "dce, cse" → the registered passes, in order. */
export const parsePipeline = (text: string): Pass[] =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map(getPass);
