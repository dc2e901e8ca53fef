// The reference interpreter: runs any verified graph on the CPU. It is the semantics every
// pass and every target is checked against. Arithmetic is done in double precision and
// rounded to each value's dtype when stored (so f32 values are f32, bf16 values are bf16).

import { bindingDim, evalDim } from "./dim.js";
import { KilnError } from "./errors.js";
import type { Attrs, Graph, Value } from "./graph.js";
import { locString, typeString } from "./graph.js";
import { DIM_ATTRS, OPS, ShapeError } from "./ops.js";
import type { Tensor } from "./tensor.js";
import { verify } from "./verify.js";
import { describeNode } from "./verify.js";

export interface RunOptions {
  /** skip the verifier (the caller already ran it) */
  verified?: boolean;
}

export type ParamSource = Record<string, Tensor> | ((name: string, v: Value) => Tensor);

/** Binds symbolic dims from the input tensors' shapes; a contradiction is an error naming the input. */
export function bindSymbols(g: Graph, inputs: Record<string, Tensor>): Record<string, number> {
  const b: Record<string, number> = {};
  for (const v of g.inputs) {
    const t = inputs[v.name];
    if (!t) throw new KilnError("E_INTERP", `missing input '${v.name}' (${typeString(v)})`);
    if (t.shape.length !== v.shape.length)
      throw new KilnError("E_INTERP", `input '${v.name}' has rank ${t.shape.length}, the graph wants ${typeString(v)}`);
    v.shape.forEach((d, i) => {
      const bd = bindingDim(d);
      if (bd) {
        const val = t.shape[i] - bd.offset;
        if (b[bd.sym] !== undefined && b[bd.sym] !== val)
          throw new KilnError("E_INTERP", `input '${v.name}' dim ${i} is ${t.shape[i]}, but ${bd.sym} = ${b[bd.sym]} from an earlier input`);
        b[bd.sym] = val;
      }
    });
  }
  for (const v of g.inputs) {
    const want = v.shape.map((d) => evalDim(d, b));
    if (want.some((d, i) => d !== inputs[v.name].shape[i]))
      throw new KilnError("E_INTERP", `input '${v.name}' has shape [${inputs[v.name].shape.join(", ")}], the graph wants ${typeString(v)} = [${want.join(", ")}]`);
    if (inputs[v.name].dtype !== v.dtype)
      throw new KilnError("E_DTYPE", `input '${v.name}' is ${inputs[v.name].dtype}, the graph wants ${v.dtype}`);
  }
  return b;
}

export function run(g: Graph, inputs: Record<string, Tensor>, params: ParamSource, opts: RunOptions = {}): Record<string, Tensor> {
  if (!opts.verified) verify(g);
  const bindings = bindSymbols(g, inputs);
  const env = new Map<number, Tensor>();
  for (const v of g.inputs) env.set(v.id, inputs[v.name]);
  for (const v of g.params) {
    const t = typeof params === "function" ? params(v.name, v) : params[v.name];
    if (!t) throw new KilnError("E_WEIGHTS", `missing weight '${v.name}' (${typeString(v)})`);
    const want = v.shape.map((d) => evalDim(d, bindings));
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new KilnError("E_WEIGHTS", `weight '${v.name}' has shape [${t.shape.join(", ")}], the graph wants ${typeString(v)}`);
    if (t.dtype !== v.dtype) throw new KilnError("E_WEIGHTS", `weight '${v.name}' is ${t.dtype}, the graph wants ${v.dtype}`);
    env.set(v.id, t);
  }

  // free each intermediate after its last use
  const lastUse = new Map<number, number>();
  g.nodes.forEach((n, i) => n.operands.forEach((o) => lastUse.set(o.id, i)));
  const keep = new Set(g.outputs.map((o) => o.value.id));

  g.nodes.forEach((n, i) => {
    const d = OPS.get(n.op)!;
    const attrs: Attrs = { ...n.attrs };
    for (const k of DIM_ATTRS(d)) if (k in attrs) attrs[k] = evalDim(attrs[k] as string | number, bindings);
    const out = { dtype: n.result.dtype, shape: n.result.shape.map((x) => evalDim(x, bindings)) };
    let t: Tensor;
    try {
      t = d.eval(n.operands.map((o) => env.get(o.id)!), attrs, out);
    } catch (e) {
      if (e instanceof ShapeError)
        throw new KilnError("E_INTERP", `op '${n.op}' (${describeNode(n, g)}): ${e.message}`, { where: n.loc ? locString(n.loc) : undefined });
      throw e;
    }
    env.set(n.result.id, t);
    for (const o of n.operands) if (lastUse.get(o.id) === i && o.kind === "op" && !keep.has(o.id)) env.delete(o.id);
  });

  const result: Record<string, Tensor> = {};
  for (const o of g.outputs) result[o.name] = env.get(o.value.id)!;
  return result;
}
