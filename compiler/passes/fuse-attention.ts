// fuse-attention — the eager attention of a model file becomes one `flash_attention` op.
// Matches (as models write it, after cse/dce, before fuse-elementwise):
//   matmul( [cast] softmax( [cast] ( scale·(Q · transpose(K, -2, -1)) [+ causal mask] ), -1 ), V )
//   with K and V optionally repeat-kv'd (reshape → expand → reshape of [B, Hkv, T, D]: GQA/MQA),
//   the scale as mul by a scalar constant (either side) or div by one, and the causal mask as the
//   DSL's causalMask: where(key position > query position, −inf, 0) over arange(0, T) and
//   arange(T − S, T) (so it also matches decoding against a KV cache of T − S tokens), or
//   arange(0, S) + p with p an i64 scalar (the static cache's position: the fused op takes p).
// Guarantees: the fused op computes the same function up to rounding: the eager form rounds the
//   scores, the probabilities and the product to the activation dtype, the fused op rounds once.
//   Property tests bound the difference (test/fuse-attention.test.ts).
// Leaves the eager nodes in place for dce (run it after this pass) and leaves alone, saying why
//   through ctx.explain: any other mask (padding, ALiBi: later issues),
//   a softmax over another axis, operands whose shapes are not [B, H, S, D].

import type { Dim } from "../ir/dim.js";
import { dimEq, dimSub } from "../ir/dim.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { GraphBuilder, locString } from "../ir/graph.js";
import { roundScalar } from "../ir/ops.js";
import { inferNode } from "../ir/verify.js";
import type { Pass } from "./manager.js";

interface Match {
  q: Value;
  k: Value;
  v: Value;
  groups: number;
  scale: number;
  causal: boolean;
  /** the static cache's position (queries start there), when the mask is shifted by it */
  offset?: Value;
}

type Result = { ok: true; m: Match } | { ok: false; why: string };

export function fuseAttention(g: Graph, explain: (msg: string) => void = () => {}): Graph {
  const def = new Map<number, Node>(g.nodes.map((n) => [n.result.id, n]));
  const node = (v: Value): Node | undefined => def.get(v.id);
  const op = (v: Value, name: string): Node | undefined => {
    const n = node(v);
    return n && n.op === name ? n : undefined;
  };
  // a scalar constant's value as the graph holds it (rounded to its dtype)
  const scalarFull = (v: Value): number | undefined => {
    const n = op(v, "full");
    return n && (n.attrs.shape as Dim[]).length === 0 ? roundScalar(n.result.dtype, n.attrs.value as number) : undefined;
  };
  const skipCast = (v: Value): Value => op(v, "cast")?.operands[0] ?? v;

  /** [B, Hkv, T, D] under repeat-kv (reshape ∘ expand ∘ reshape), with the repeat count. */
  const unrepeat = (v: Value): { base: Value; n: number } => {
    const r2 = op(v, "reshape");
    const ex = r2 && op(r2.operands[0], "expand");
    const r1 = ex && op(ex.operands[0], "reshape");
    if (!r2 || !ex || !r1) return { base: v, n: 1 };
    const base = r1.operands[0];
    const [B, H, T, D] = base.shape;
    const e = ex.result.shape;
    if (base.shape.length !== 4 || e.length !== 5 || !dimEq(e[0], B) || !dimEq(e[1], H) || !dimEq(e[3], T) || !dimEq(e[4], D) || typeof e[2] !== "number")
      return { base: v, n: 1 };
    const out = v.shape;
    if (!(out.length === 4 && dimEq(out[2], T) && dimEq(out[3], D))) return { base: v, n: 1 };
    return { base, n: e[2] };
  };

  /**
   * Is `m` the causal mask for S queries over T keys (shape [S, T], maybe with leading 1s)? Returns
   * its query offset: "aligned" (the growing cache: queries are the last S of T positions), or the
   * i64 scalar the queries' arange is shifted by (the static cache's cache_position).
   */
  const causalOffset = (m: Value, S: Dim, T: Dim): "aligned" | Value | undefined => {
    const w = op(m, "where");
    if (!w) return undefined;
    const [c, a, b] = w.operands;
    if (scalarFull(a) !== -Infinity || scalarFull(b) !== 0) return undefined;
    const gt = op(c, "greater");
    if (!gt) return undefined;
    const range = (v: Value, shape: Dim[]): { start: Dim; end: Dim; shift?: Value } | undefined => {
      const r = op(v, "reshape");
      if (!r || r.result.shape.length !== 2 || !r.result.shape.every((d, i) => dimEq(d, shape[i]))) return undefined;
      const ar = op(r.operands[0], "arange");
      if (ar) return { start: ar.attrs.start as Dim, end: ar.attrs.end as Dim };
      // arange(0, S) + p, p an i64 scalar (either side of the add)
      const add = op(r.operands[0], "add");
      if (!add) return undefined;
      const [l, rr] = add.operands;
      const [base, shift] = op(l, "arange") ? [op(l, "arange")!, rr] : op(rr, "arange") ? [op(rr, "arange")!, l] : [undefined, undefined];
      if (!base || !shift || shift.dtype !== "i64" || shift.shape.length !== 0 || base.result.dtype !== "i64") return undefined;
      return { start: base.attrs.start as Dim, end: base.attrs.end as Dim, shift };
    };
    const keys = range(gt.operands[0], [1, T]);
    const queries = range(gt.operands[1], [S, 1]);
    if (!keys || keys.shift || !queries || !dimEq(keys.start, 0) || !dimEq(keys.end, T)) return undefined;
    if (queries.shift) return dimEq(queries.start, 0) && dimEq(queries.end, S) ? queries.shift : undefined;
    return dimEq(queries.start, dimSub(T, S)) && dimEq(queries.end, T) ? "aligned" : undefined;
  };

  const match = (out: Node): Result => {
    if (out.op !== "matmul") return { ok: false, why: "not a matmul" };
    const [probs, vRep] = out.operands;
    const sm = op(skipCast(probs), "softmax");
    if (!sm) return { ok: false, why: "not softmax(...) · V" };
    const axis = sm.attrs.axis as number;
    if (axis !== -1 && axis !== sm.result.shape.length - 1) return { ok: false, why: `softmax over axis ${axis}, not the keys` };
    const x = skipCast(sm.operands[0]);
    let causal = false;
    const add = op(x, "add");
    let scores = x;
    let maskValue: Value | undefined;
    if (add) {
      [scores, maskValue] = add.operands;
      if (op(maskValue, "matmul") || op(maskValue, "mul") || op(maskValue, "div")) [scores, maskValue] = [maskValue, add.operands[0]];
    }
    let scale = 1;
    const mul = op(scores, "mul");
    const div = op(scores, "div");
    if (mul) {
      const [l, r] = mul.operands;
      const sl = scalarFull(l), sr = scalarFull(r);
      if (sr !== undefined) [scores, scale] = [l, sr];
      else if (sl !== undefined) [scores, scale] = [r, sl];
      else return { ok: false, why: "scores are multiplied by a tensor, not a scalar scale" };
    } else if (div) {
      const c = scalarFull(div.operands[1]);
      if (c === undefined) return { ok: false, why: "scores are divided by a tensor, not a scalar" };
      [scores, scale] = [div.operands[0], 1 / c];
    }
    const qk = op(scores, "matmul");
    if (!qk) return { ok: false, why: "the scores are not Q · Kᵀ" };
    const [q, kt] = qk.operands;
    const tr = op(kt, "transpose");
    const perm = tr?.attrs.perm as number[] | undefined;
    if (!tr || !perm || perm.join() !== "0,1,3,2") return { ok: false, why: "K is not transposed over its last two axes" };
    if (q.shape.length !== 4) return { ok: false, why: `Q is ${q.shape.length}-d, not [B, H, S, D]` };
    const k = unrepeat(tr.operands[0]);
    const v = unrepeat(vRep);
    if (k.n !== v.n) return { ok: false, why: `K and V are repeated differently (${k.n} vs ${v.n})` };
    if (k.base.shape.length !== 4 || v.base.shape.length !== 4) return { ok: false, why: "K or V is not [B, H, T, D]" };
    const S = q.shape[2], T = k.base.shape[2];
    let offset: Value | undefined;
    if (maskValue) {
      const c = causalOffset(maskValue, S, T);
      if (!c) return { ok: false, why: "the mask is not the causal mask (padding and ALiBi masks are not fused yet)" };
      causal = true;
      if (c !== "aligned") offset = c;
    }
    if (q.dtype !== k.base.dtype || q.dtype !== v.base.dtype || out.result.dtype !== q.dtype) return { ok: false, why: "Q, K, V and the output differ in dtype" };
    return { ok: true, m: { q, k: k.base, v: v.base, groups: k.n, scale, causal, offset } };
  };

  const b = GraphBuilder.from(g);
  const replace = new Map<number, Value>();
  const nodes: Node[] = [];
  let fused = 0;
  for (const n of g.nodes) {
    const operands = n.operands.map((o) => replace.get(o.id) ?? o);
    const here = { ...n, operands };
    if (n.op !== "matmul" || !op(skipCast(n.operands[0]), "softmax")) {
      nodes.push(here);
      continue;
    }
    const r = match(here);
    const at = n.loc ? ` at ${locString(n.loc)}` : "";
    if (!r.ok) {
      explain(`attention${at}: not fused: ${r.why}`);
      nodes.push(here);
      continue;
    }
    const { q, k, v, groups, scale, causal, offset } = r.m;
    const attrs = { causal, kv_groups: groups, scale };
    const fusedOperands = offset ? [q, k, v, offset] : [q, k, v];
    let type;
    try {
      type = inferNode({ op: "flash_attention", operands: fusedOperands, attrs, loc: n.loc });
    } catch (e) {
      explain(`attention${at}: not fused: ${(e as Error).message}`);
      nodes.push(here);
      continue;
    }
    const y = b.newValue("op", type);
    nodes.push(n.loc ? { op: "flash_attention", operands: fusedOperands, attrs, result: y, loc: n.loc } : { op: "flash_attention", operands: fusedOperands, attrs, result: y });
    replace.set(n.result.id, y);
    fused++;
    explain(`attention${at}: fused (${causal ? (offset ? "causal from the static cache's position" : "causal") : "no mask"}, kv_groups ${groups}, scale ${scale})`);
  }
  if (fused === 0) return g;
  // the eager nodes are now dead (unless something else reads them): dce, next in the pipeline, removes them
  return { ...g, inputs: [...g.inputs], params: [...g.params], nodes, outputs: g.outputs.map((o) => ({ name: o.name, value: replace.get(o.value.id) ?? o.value })) };
}

export const fuseAttentionPass: Pass = {
  name: "fuse-attention",
  description: "softmax(scale·QKᵀ + causal mask)·V, with repeat-kv, becomes one flash_attention op",
  run: (g, ctx) => fuseAttention(g, (m) => ctx.explain(m)),
};
