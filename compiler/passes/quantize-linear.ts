// quantize-linear — `linear` → `qlinear{scheme, …}` with the options of bitsandbytes'
// BitsAndBytesConfig, read from the pipeline options:
//   quant: "int8" | "nf4" | "fp4"            (load_in_8bit / load_in_4bit + bnb_4bit_quant_type)
//   doubleQuant: boolean                      (bnb_4bit_use_double_quant; 4-bit only)
//   int8Threshold: number, default 6.0        (llm_int8_threshold; int8 only)
//   skipModules: string[], default ["lm_head"] (llm_int8_skip_modules; applies to 4-bit too, as
//                                              transformers keeps the output head in 16 bits)
// Matches: linear nodes whose weight is a parameter named "<module>.weight" of a float dtype (a
//   fused residual, fuse-residual's, stays the qlinear's).
// Guarantees: the op computes what the scheme computes from the same float weight (the op's
//   reference in the interpreter); how far that is from the unquantized linear is the scheme's
//   own error, bounded in test/quant.test.ts.
// Leaves alone: skipped modules (a module matches when its name or any dotted suffix of it is in
//   skipModules, e.g. "lm_head" or "mlp.down_proj"), weights that are not parameters, and every
//   graph when `quant` is not set.

import type { Graph, Node } from "../ir/graph.js";
import { KilnError } from "../ir/errors.js";
import { isFloat } from "../ir/dtype.js";
import type { Pass } from "./manager.js";

export interface QuantOptions {
  quant?: "int8" | "nf4" | "fp4";
  doubleQuant?: boolean;
  int8Threshold?: number;
  skipModules?: string[];
}

const SCHEMES = ["int8", "nf4", "fp4"];

export function quantizeLinear(g: Graph, o: QuantOptions, explain: (m: string) => void = () => {}): Graph {
  if (!o.quant) return g;
  if (!SCHEMES.includes(o.quant)) throw new KilnError("E_USAGE", `quant '${o.quant}' is not one of ${SCHEMES.join(", ")}`);
  const threshold = o.int8Threshold ?? 6.0;
  if (!(threshold >= 0)) throw new KilnError("E_USAGE", `int8Threshold must be ≥ 0, got ${threshold}`);
  if (o.doubleQuant && o.quant === "int8") throw new KilnError("E_USAGE", "doubleQuant applies to 4-bit schemes (nf4, fp4), not int8");
  const skip = o.skipModules ?? ["lm_head"];
  const skipped = (module: string): boolean => {
    const parts = module.split(".");
    return parts.some((_p, i) => skip.includes(parts.slice(i).join(".")));
  };
  let n = 0;
  const kept = new Set<string>();
  const nodes = g.nodes.map((node): Node => {
    if (node.op !== "linear") return node;
    const w = node.operands[1];
    if (w.kind !== "param" || !w.name.endsWith(".weight") || !isFloat(w.dtype)) return node;
    const module = w.name.slice(0, -".weight".length);
    if (skipped(module)) {
      kept.add(module);
      return node;
    }
    n++;
    const attrs = { scheme: o.quant!, block: 64, double_quant: Boolean(o.doubleQuant), threshold: o.quant === "int8" ? threshold : 0, ...(node.attrs.residual === true ? { residual: true } : {}) };
    return { ...node, op: "qlinear", attrs };
  });
  for (const m of kept) explain(`${m}: kept in 16 bits (skip list)`);
  explain(`${n} linear(s) → qlinear ${o.quant}${o.doubleQuant ? " with double quantization" : ""}${o.quant === "int8" ? `, outlier threshold ${threshold}` : ""}`);
  return n ? { ...g, inputs: [...g.inputs], params: [...g.params], nodes, outputs: [...g.outputs] } : g;
}

export const quantizeLinearPass: Pass = {
  name: "quantize-linear",
  description: "linear → qlinear (int8 / nf4 / fp4) per the quant options, skipping the output head",
  run: (g, ctx) => quantizeLinear(g, ctx.options as QuantOptions, (m) => ctx.explain(m)),
};
