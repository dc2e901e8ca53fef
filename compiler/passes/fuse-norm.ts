// fuse-norm — the eager RMSNorm and LayerNorm of a model file become one `rms_norm` / `layer_norm`
// op each (one kernel that reads the row once, instead of ~5 passes over the activation).
// Matches (as compiler/dsl/layers.ts traces them, after cse, before fuse-elementwise), over the
// last axis, x of dtype X, w and b [D] of dtype X:
//   RMSNorm   h = [cast f32] x;  r = rsqrt(reduce_mean(pow(h, 2)) + eps);  y = w · [cast X](h · r)
//   LayerNorm h = [cast f32] x;  c = h − reduce_mean(h);  r = rsqrt(reduce_mean(pow(c, 2)) + eps);
//             y = [cast X](c · r) · w  [+ b]
//   (the casts are there exactly when X is not f32; mul and add in either operand order; pow(·, 2)
//   may be mul(·, ·); eps and 2 are scalar f32 `full`s; reductions keep the dim).
// Guarantees: bit-identical results on the interpreter: the fused op's reference (ir/ops.ts) is the
//   eager graph step for step, every intermediate rounded as it was stored. Every node it removes
//   is used only inside its pattern; the input cast and the constants stay where something else
//   reads them.
// Leaves alone, saying why under --explain: norms over another axis, a weight that is not [D] of
//   x's dtype, an intermediate read elsewhere (or a graph output), and f32 arithmetic of another
//   shape (e.g. the weight applied before the cast, as Gemma does).

import type { Dim } from "../ir/dim.js";
import { dimEq } from "../ir/dim.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { GraphBuilder, locString, usesOf } from "../ir/graph.js";
import { inferNode } from "../ir/verify.js";
import type { Pass } from "./manager.js";

interface Fused {
  /** the node whose result a fused op replaces */
  root: Node;
  /** its weight, and bias */
  affine: Value[];
}

interface Match {
  op: "rms_norm" | "layer_norm";
  x: Value;
  eps: number;
  /** one fused op per weight applied to the normalized row */
  outs: Fused[];
  /** the nodes the fused ops replace (the input cast is among them only when nothing else reads it) */
  nodes: Node[];
}

type Result = { ok: true; m: Match } | { ok: false; why: string };

export function fuseNorm(g: Graph, explain: (msg: string) => void = () => {}): Graph {
  const def = new Map<number, Node>(g.nodes.map((n) => [n.result.id, n]));
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const op = (v: Value | undefined, name: string): Node | undefined => {
    const n = v && def.get(v.id);
    return n && n.op === name ? n : undefined;
  };
  const scalarFull = (v: Value): number | undefined => {
    const n = op(v, "full");
    return n && n.result.dtype === "f32" && (n.attrs.shape as Dim[]).length === 0 ? (n.attrs.value as number) : undefined;
  };
  /** the operand of a binary node that is not `v` (either order), when the other one is `v` */
  const other = (n: Node, v: Value): Value | undefined => (n.operands[0].id === v.id ? n.operands[1] : n.operands[1].id === v.id ? n.operands[0] : undefined);
  /** the only user of `v`, when it is an `name` node and `v` is not a graph output */
  const soleUser = (v: Value, name: string): Node | undefined => {
    const us = uses.get(v.id) ?? [];
    return us.length === 1 && us[0].op === name && !outputs.has(v.id) ? us[0] : undefined;
  };
  const lastAxisMean = (v: Value): Node | undefined => {
    const n = op(v, "reduce_mean");
    const r = n?.operands[0].shape.length ?? 0;
    return n && n.attrs.keepdim === true && ((n.attrs.axis as number) === -1 || (n.attrs.axis as number) === r - 1) ? n : undefined;
  };

  /** The pattern around `rsqrt` node `rs`, spelled out once from the variance inward, then outward. */
  const match = (rs: Node): Result => {
    const no = (why: string): Result => ({ ok: false, why });
    const add = op(rs.operands[0], "add");
    if (!add) return no("rsqrt of something other than mean + eps");
    const mean = add.operands.map(lastAxisMean).find(Boolean);
    const eps = mean && scalarFull(other(add, mean.result)!);
    if (!mean || eps === undefined) return no("rsqrt(· + eps) is not of a last-axis mean (keepdim) plus a scalar f32 eps");
    const sq = def.get(mean.operands[0].id);
    const c = sq && (sq.op === "pow" && scalarFull(sq.operands[1]) === 2 ? sq.operands[0] : sq.op === "mul" && sq.operands[0].id === sq.operands[1].id ? sq.operands[0] : undefined);
    if (!sq || !c) return no("the mean is not of a square (pow(·, 2) or ·×·)");
    if (c.dtype !== "f32") return no(`the squares are computed in ${c.dtype}, not f32`);
    // LayerNorm centers first: c = h − mean(h)
    const sub = op(c, "sub");
    const mu = sub && lastAxisMean(sub.operands[1]);
    const layer = !!sub && !!mu && mu.operands[0].id === sub.operands[0].id;
    const h = layer ? sub!.operands[0] : c;
    const cast = op(h, "cast");
    const x = cast && cast.operands[0].dtype !== "f32" && (cast.operands[0].dtype === "bf16" || cast.operands[0].dtype === "f16") ? cast.operands[0] : h;
    if (x.shape.length < 1) return no("the input is a scalar");
    const D = x.shape[x.shape.length - 1];
    // outward: h·r (or c·r), [cast to x's dtype], times the weight, [plus the bias]
    const norm = soleUser(rs.result, "mul");
    if (!norm || other(norm, rs.result)?.id !== c.id) return no(`rsqrt's result is not used only to scale the ${layer ? "centered " : ""}input`);
    let rounded = norm;
    if (x.dtype !== "f32") {
      const back = soleUser(norm.result, "cast");
      if (!back || back.attrs.to !== x.dtype) return no(`the normalized row is not cast back to ${x.dtype} (and used only there)`);
      rounded = back;
    }
    // each user of the normalized row scales it by its own weight (cse merges two norms of one
    // input, Falcon's ln_attn and ln_mlp): one fused op each
    const isVec = (v: Value | undefined): v is Value => !!v && v.dtype === x.dtype && v.shape.length === 1 && dimEq(v.shape[0], D);
    const users = uses.get(rounded.result.id) ?? [];
    const outs: Fused[] = [];
    const nodes = [add, mean, sq, rs, norm, ...(rounded !== norm ? [rounded] : []), ...(layer ? [sub!, mu!] : [])];
    for (const scale of users) {
      const w = scale.op === "mul" ? other(scale, rounded.result) : undefined;
      if (!isVec(w) || outputs.has(rounded.result.id)) return no(`the normalized row is not only multiplied by weights ${x.dtype}[${D}]`);
      const biasAdd = layer ? soleUser(scale.result, "add") : undefined;
      const b = biasAdd && other(biasAdd, scale.result);
      if (biasAdd && isVec(b)) {
        outs.push({ root: biasAdd, affine: [w, b] });
        nodes.push(scale);
      } else outs.push({ root: scale, affine: [w] });
    }
    if (outs.length === 0) return no("the normalized row is not used");
    // every replaced node but the roots must be read only inside the pattern
    const inside = new Set([...nodes, ...outs.map((o) => o.root)].map((n) => n.result.id));
    for (const n of nodes) {
      if (outputs.has(n.result.id)) return no(`an intermediate (${n.op}) is a graph output`);
      if ((uses.get(n.result.id) ?? []).some((u) => !inside.has(u.result.id))) return no(`an intermediate (${n.op}) is read outside the norm`);
    }
    // a weight computed from the norm itself (rank-1 rows: mul(n, n)) cannot be an operand of it
    if (outs.some((o) => o.affine.some((v) => inside.has(v.id)))) return no("a weight or bias is computed from the norm itself");
    nodes.push(...outs.map((o) => o.root));
    // the input cast and the scalar constants go too where nothing else reads them
    const alsoRead = (v: Value): boolean => outputs.has(v.id) || (uses.get(v.id) ?? []).some((u) => !inside.has(u.result.id));
    if (cast && x !== h && !alsoRead(h)) nodes.push(cast);
    for (const k of [op(other(add, mean.result), "full"), op(sq.operands[1], "full")]) if (k && !alsoRead(k.result) && !nodes.includes(k)) nodes.push(k);
    return { ok: true, m: { op: layer ? "layer_norm" : "rms_norm", x, eps, outs, nodes } };
  };

  const b = GraphBuilder.from(g);
  const removed = new Set<number>();
  const fusedAt = new Map<number, Node>(); // root id -> the fused node
  for (const rs of g.nodes) {
    if (rs.op !== "rsqrt" || removed.has(rs.result.id)) continue;
    const at = rs.loc ? ` at ${locString(rs.loc)}` : "";
    const r = match(rs);
    if (!r.ok) {
      // only a reduction under the rsqrt makes it look like a norm worth a word
      if (def.get(rs.operands[0].id)?.operands.some((v) => op(v, "reduce_mean"))) explain(`norm${at}: not fused: ${r.why}`);
      continue;
    }
    const { m } = r;
    const attrs = { eps: m.eps };
    for (const o of m.outs) {
      const operands = [m.x, ...o.affine];
      const v = b.newValue("op", inferNode({ op: m.op, operands, attrs, loc: rs.loc }));
      fusedAt.set(o.root.result.id, rs.loc ? { op: m.op, operands, attrs, result: v, loc: rs.loc } : { op: m.op, operands, attrs, result: v });
    }
    for (const n of m.nodes) removed.add(n.result.id);
    const bias = m.outs.filter((o) => o.affine.length > 1).length;
    explain(`${m.op}${at}: fused (eps ${m.eps}, ${m.x.dtype}[${m.x.shape.join(", ")}]${m.outs.length > 1 ? `, ${m.outs.length} weights` : ""}${bias ? `, with bias` : ""})`);
  }
  if (fusedAt.size === 0) return g;
  const sub = new Map<number, Value>([...fusedAt].map(([id, n]) => [id, n.result]));
  const nodes: Node[] = [];
  for (const n of g.nodes) {
    const fused = fusedAt.get(n.result.id);
    // a norm may read another's result (BLOOM's embedding norm feeds the first block's)
    if (fused) nodes.push({ ...fused, operands: fused.operands.map((o) => sub.get(o.id) ?? o) });
    else if (!removed.has(n.result.id)) nodes.push({ ...n, operands: n.operands.map((o) => sub.get(o.id) ?? o) });
  }
  return {
    ...g,
    inputs: [...g.inputs],
    params: [...g.params],
    nodes,
    outputs: g.outputs.map((o) => ({ name: o.name, value: sub.get(o.value.id) ?? o.value })),
  };
}

export const fuseNormPass: Pass = {
  name: "fuse-norm",
  description: "fuse eager RMSNorm / LayerNorm (f32 math over the last axis) into rms_norm / layer_norm ops",
  run: (g, ctx) => fuseNorm(g, (m) => ctx.explain(m)),
};
