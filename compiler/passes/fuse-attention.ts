// fuse-attention — the eager attention of a model file becomes one `flash_attention` op.
// Matches (as models write it, after cse/dce, before fuse-elementwise):
//   matmul( [cast] softmax( [cast] scores, -1 ), V ), where scores is Q · transpose(K, -2, -1)
//   under scalar muls/divs (the scale, on either side, in any order) plus additive terms:
//   - the causal mask where(key > query, −inf, 0) (with a sliding window: where(key > query, −inf,
//     where(key ≤ query − w, −inf, 0))) over arange(0, T) and arange(T − S, T) (a growing
//     KV cache of T − S tokens) or arange(0, S) + p, p an i64 scalar (the static cache's position:
//     the fused op takes p);
//   - Hugging Face's padded causal bias where(key ≤ query, where(keyOk, 0, lowest), lowest) and an
//     encoder's padding bias where(keyOk, 0, lowest), keyOk = reshape(attention_mask ≠ 0) [B, 1, 1, T]
//     (the fused op takes the i64 mask; `lowest` is any value ≤ −65504);
//   - ALiBi: a constant [1, H, 1, 1] of slopes times the key positions (through casts), the slopes
//     multiplied by whatever multiplies the bias (Falcon scales it, BLOOM does not).
//   K and V may be repeat-kv'd (reshape → expand → reshape of [B, Hkv, T, D]: GQA/MQA).
// Guarantees: the fused op computes the same function up to rounding: the eager form rounds the
//   scores, the probabilities and the product to the activation dtype, the fused op rounds once; a
//   query row whose keys are all hidden by `lowest` gets the mean of V, as the eager softmax of equal
//   scores does. Property tests bound the difference (test/fuse-attention.test.ts).
// Leaves the eager nodes in place for dce (run it after this pass) and leaves alone, saying why
//   through ctx.explain: any other additive term, two masks, a softmax over another axis, operands
//   whose shapes are not [B, H, S, D].

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
  /** the i64 [B, T] attention_mask hiding padded keys */
  keyMask?: Value;
  /** ALiBi slopes per query head (times what multiplies the bias) */
  alibi?: number[];
  /** a sliding window of keys */
  window?: number;
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
  const skipCast = (v: Value): Value => (op(v, "cast") ? skipCast(op(v, "cast")!.operands[0]) : v);

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

  /** [1, T] or [S, 1] positions: reshape(arange(a, b)), or reshape(arange(0, n) + p) with p an i64 scalar. */
  const range = (v: Value, shape: Dim[]): { start: Dim; end: Dim; shift?: Value } | undefined => {
    const r = op(v, "reshape");
    if (!r || r.result.shape.length !== 2 || !r.result.shape.every((d, i) => dimEq(d, shape[i]))) return undefined;
    const ar = op(r.operands[0], "arange");
    if (ar) return { start: ar.attrs.start as Dim, end: ar.attrs.end as Dim };
    const add = op(r.operands[0], "add");
    if (!add) return undefined;
    const [l, rr] = add.operands;
    const [base, shift] = op(l, "arange") ? [op(l, "arange")!, rr] : op(rr, "arange") ? [op(rr, "arange")!, l] : [undefined, undefined];
    if (!base || !shift || shift.dtype !== "i64" || shift.shape.length !== 0 || base.result.dtype !== "i64") return undefined;
    return { start: base.attrs.start as Dim, end: base.attrs.end as Dim, shift };
  };
  /** Key positions j = 0..T−1 ([1, T]) and query positions i ([S, 1]): the causal offset they imply. */
  const causalPair = (keysV: Value, queriesV: Value, S: Dim, T: Dim): "aligned" | Value | undefined => {
    const keys = range(keysV, [1, T]);
    const queries = range(queriesV, [S, 1]);
    if (!keys || keys.shift || !queries || !dimEq(keys.start, 0) || !dimEq(keys.end, T)) return undefined;
    if (queries.shift) return dimEq(queries.start, 0) && dimEq(queries.end, S) ? queries.shift : undefined;
    return dimEq(queries.start, dimSub(T, S)) && dimEq(queries.end, T) ? "aligned" : undefined;
  };
  // a scalar that hides a key: −inf, or a dtype's lowest finite value (Hugging Face's masks)
  const hides = (v: Value): boolean => {
    const x = scalarFull(v);
    return x !== undefined && x <= -65504;
  };
  /** keyOk = reshape(not_equal(mask, 0)) as [B, 1, 1, T], mask an i64 [B, T]: the mask, or undefined. */
  const keyMaskOf = (v: Value, T: Dim): Value | undefined => {
    const r = op(v, "reshape");
    const ne = r && op(r.operands[0], "not_equal");
    if (!r || !ne || r.result.shape.length !== 4 || !dimEq(r.result.shape[1], 1) || !dimEq(r.result.shape[2], 1) || !dimEq(r.result.shape[3], T)) return undefined;
    const [m, z] = ne.operands;
    if (scalarFull(z) !== 0 || m.dtype !== "i64" || m.shape.length !== 2 || !dimEq(m.shape[1], T)) return undefined;
    return m;
  };

  /**
   * What an additive term of the scores hides: the causal mask where(j > i, −inf, 0); Hugging Face's
   * padded causal bias where(j ≤ i, where(keyOk, 0, lowest), lowest); or an encoder's padding bias
   * where(keyOk, 0, lowest). Returns the causal offset ("aligned" or cache_position) and the key mask.
   */
  const maskOf = (m: Value, S: Dim, T: Dim): { causal?: "aligned" | Value; keys?: Value; window?: number } | undefined => {
    const w = op(m, "where");
    if (!w) return undefined;
    const [c, a, b] = w.operands;
    const gt = op(c, "greater");
    // a sliding window: where(j > i, −inf, where(j ≤ i − w, −inf, 0)) over the same i and j
    const win = gt && op(b, "where");
    const le0 = win && op(win.operands[0], "less_equal");
    const shifted = le0 && op(le0.operands[1], "sub");
    if (gt && win && le0 && shifted && scalarFull(a) === -Infinity && scalarFull(win.operands[1]) === -Infinity && scalarFull(win.operands[2]) === 0) {
      const window = scalarFull(shifted.operands[1]);
      const sameAxes = le0.operands[0].id === gt.operands[0].id && shifted.operands[0].id === gt.operands[1].id;
      const causal = causalPair(gt.operands[0], gt.operands[1], S, T);
      return causal && sameAxes && window !== undefined && Number.isInteger(window) && window >= 1 ? { causal, window } : undefined;
    }
    if (gt && scalarFull(a) === -Infinity && scalarFull(b) === 0) {
      const causal = causalPair(gt.operands[0], gt.operands[1], S, T);
      return causal ? { causal } : undefined;
    }
    const le = op(c, "less_equal");
    const inner = op(a, "where");
    if (le && inner && hides(b)) {
      const causal = causalPair(le.operands[0], le.operands[1], S, T);
      const keys = keyMaskOf(inner.operands[0], T);
      if (!causal || !keys || scalarFull(inner.operands[1]) !== 0 || !hides(inner.operands[2])) return undefined;
      return { causal, keys };
    }
    const keys = keyMaskOf(c, T);
    if (keys && scalarFull(a) === 0 && hides(b)) return { keys };
    return undefined;
  };

  /** A constant seen through reshapes and casts: its values as the graph holds them. */
  const constValues = (v: Value): number[] | undefined => {
    const n = node(v);
    if (!n) return undefined;
    if (n.op === "constant") return (n.attrs.values as number[]).map((x) => roundScalar(n.result.dtype, x));
    if (n.op === "reshape") return constValues(n.operands[0]);
    if (n.op === "cast") return constValues(n.operands[0])?.map((x) => roundScalar(n.result.dtype, x));
    return undefined;
  };
  /** ALiBi: [cast] slopes · keys, slopes a constant [1, H, 1, 1], keys the key positions [1, 1, 1, T] as floats. */
  const alibiOf = (t: Value, H: Dim, T: Dim): number[] | undefined => {
    const m = op(skipCast(t), "mul");
    if (!m) return undefined;
    for (const [sl, kp] of [m.operands, [...m.operands].reverse()]) {
      const slopes = constValues(sl);
      const r = op(skipCast(kp), "reshape");
      const ar = r && op(skipCast(r.operands[0]), "arange");
      if (!slopes || !r || !ar || typeof H !== "number" || slopes.length !== H || sl.shape.length !== 4 || !dimEq(sl.shape[1], H)) continue;
      if (!dimEq(ar.attrs.start as Dim, 0) || !dimEq(ar.attrs.end as Dim, T) || !r.result.shape.every((d, i) => (i === 3 ? dimEq(d, T) : dimEq(d, 1)))) continue;
      return slopes;
    }
    return undefined;
  };

  const match = (out: Node): Result => {
    if (out.op !== "matmul") return { ok: false, why: "not a matmul" };
    const [probs, vRep] = out.operands;
    const sm = op(skipCast(probs), "softmax");
    if (!sm) return { ok: false, why: "not softmax(...) · V" };
    const axis = sm.attrs.axis as number;
    if (axis !== -1 && axis !== sm.result.shape.length - 1) return { ok: false, why: `softmax over axis ${axis}, not the keys` };
    // the scores: Q · Kᵀ under scalar muls/divs, plus additive terms (masks, ALiBi), casts aside
    const isQK = (n: Node | undefined): boolean => {
      const tr = n && n.op === "matmul" ? op(n.operands[1], "transpose") : undefined;
      return Boolean(tr && (tr.attrs.perm as number[]).join() === "0,1,3,2");
    };
    const hasQK = (v: Value, depth = 0): boolean => {
      const n = node(skipCast(v));
      if (!n || depth > 12) return false;
      if (isQK(n)) return true;
      return ["add", "mul", "div"].includes(n.op) && n.operands.some((o) => hasQK(o, depth + 1));
    };
    const terms: { v: Value; factor: number }[] = [];
    let qk: Node | undefined;
    let scale = 1;
    let why: string | undefined;
    const walk = (v: Value, factor: number): void => {
      const n = node(skipCast(v));
      if (n && isQK(n)) {
        [qk, scale] = [n, factor];
        return;
      }
      if (n?.op === "mul" || n?.op === "div") {
        const [l, r] = n.operands;
        const c = scalarFull(r), cl = n.op === "mul" ? scalarFull(l) : undefined;
        if (c !== undefined) return walk(l, n.op === "mul" ? factor * c : factor / c);
        if (cl !== undefined) return walk(r, factor * cl);
        why = `scores are ${n.op === "mul" ? "multiplied" : "divided"} by a tensor, not a scalar`;
        return;
      }
      if (n?.op === "add") {
        const [l, r] = n.operands;
        const [inner, term] = hasQK(l) ? [l, r] : hasQK(r) ? [r, l] : [undefined, undefined];
        if (!inner || !term) {
          why = "the scores are not Q · Kᵀ";
          return;
        }
        terms.push({ v: term, factor });
        return walk(inner, factor);
      }
      why = "the scores are not Q · Kᵀ";
    };
    walk(sm.operands[0], 1);
    if (!qk) return { ok: false, why: why ?? "the scores are not Q · Kᵀ" };
    const [q, kt] = qk.operands;
    const tr = op(kt, "transpose")!;
    if (q.shape.length !== 4) return { ok: false, why: `Q is ${q.shape.length}-d, not [B, H, S, D]` };
    const k = unrepeat(tr.operands[0]);
    const v = unrepeat(vRep);
    if (k.n !== v.n) return { ok: false, why: `K and V are repeated differently (${k.n} vs ${v.n})` };
    if (k.base.shape.length !== 4 || v.base.shape.length !== 4) return { ok: false, why: "K or V is not [B, H, T, D]" };
    const S = q.shape[2], T = k.base.shape[2];
    let causal = false;
    let offset: Value | undefined;
    let keyMask: Value | undefined;
    let alibi: number[] | undefined;
    let window: number | undefined;
    for (const t of terms) {
      const m = maskOf(t.v, S, T);
      if (m && t.factor > 0 && !causal && !keyMask) {
        causal = m.causal !== undefined;
        if (m.causal && m.causal !== "aligned") offset = m.causal;
        keyMask = m.keys;
        window = m.window;
        continue;
      }
      const slopes = alibiOf(t.v, q.shape[1], T);
      if (slopes && !alibi) {
        alibi = slopes.map((x) => x * t.factor);
        continue;
      }
      return { ok: false, why: m ? "two masks are added to the scores" : "a term added to the scores is neither a causal or padding mask nor ALiBi" };
    }
    if (q.dtype !== k.base.dtype || q.dtype !== v.base.dtype || out.result.dtype !== q.dtype) return { ok: false, why: "Q, K, V and the output differ in dtype" };
    return { ok: true, m: { q, k: k.base, v: v.base, groups: k.n, scale, causal, offset, keyMask, alibi, window } };
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
    const { q, k, v, groups, scale, causal, offset, keyMask, alibi, window } = r.m;
    const attrs = { causal, kv_groups: groups, scale, ...(alibi ? { alibi } : {}), ...(keyMask ? { key_mask: true } : {}), ...(window ? { window } : {}) };
    const fusedOperands = [q, k, v, ...(offset ? [offset] : []), ...(keyMask ? [keyMask] : [])];
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
    const what = [causal ? (offset ? "causal from the static cache's position" : "causal") : "", window ? `sliding window ${window}` : "", keyMask ? "padding mask" : "", alibi ? "ALiBi" : ""].filter(Boolean);
    explain(`attention${at}: fused (${what.join(" + ") || "no mask"}, kv_groups ${groups}, scale ${scale})`);
  }
  if (fused === 0) return g;
  // the eager nodes are now dead (unless something else reads them): dce, next in the pipeline, removes them
  return { ...g, inputs: [...g.inputs], params: [...g.params], nodes, outputs: g.outputs.map((o) => ({ name: o.name, value: replace.get(o.value.id) ?? o.value })) };
}

export const fuseAttentionPass: Pass = {
  name: "fuse-attention",
  description: "softmax(scale·QKᵀ [+ causal/padding mask] [+ ALiBi])·V, with repeat-kv, becomes one flash_attention op",
  run: (g, ctx) => fuseAttention(g, (m) => ctx.explain(m)),
};
