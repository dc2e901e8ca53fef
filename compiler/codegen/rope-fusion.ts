// RoPE and the static cache's writes as the epilogue of a decode step's q/k/v linears (emit.ts).
//
// A Llama-style layer computes q, k, v with three linears (one 4-bit group: qlinear-groups.ts),
// views each as heads ([B, S, H, D] → [B, H, S, D]), rotates q and k with the rotary elementwise op
// `(add (mul $x $cos) (mul (mul $xr $sign) $sin))` ($xr: x gathered by the rotate-half index d ↦ d +
// D/2 mod D), and writes the rotated k and the plain v into the static cache in place. At decode
// (one token) that is two small launches a layer after the GEMV (the rotary ops batched, then the
// cache writes), whose cost is their launches, not their bytes. Where the group's every member is
// such a chain, emit.ts passes the group call a Q4Rope (common/kiln_quant.h) saying where each
// member's rows go — mode 1: RoPE'd into the rotary op's result, 2: RoPE'd into the cache, 3: into
// the cache — and emits the rotary ops and cache writes behind `if (!rfN)`, so they run only where
// the target did not fuse (K::rope_fused(rows): one row of x). The cuda decode GEMV (k_qgemv4p) does
// it in its epilogue; elsewhere the call runs it after the GEMVs with the same arithmetic
// (kiln::rope_at). The graph is not changed.

import type { Dim } from "../ir/dim.js";
import type { Expr } from "../ir/expr.js";
import { parseExpr } from "../ir/expr.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { usesOf } from "../ir/graph.js";
import type { View } from "./emit.js";
import type { Q4Group } from "./qlinear-groups.js";

export interface RopeJob {
  member: Node;
  /** 1: RoPE'd into rotary's result; 2: RoPE'd into cache's cache; 3: into cache's cache */
  mode: 1 | 2 | 3;
  /** the rotary elementwise op (modes 1, 2) */
  rotary?: Node;
  /** the in-place cache_write (modes 2, 3) */
  cache?: Node;
}

export interface RopeFusion {
  group: Q4Group;
  /** the head dim */
  D: number;
  cos: Value;
  sin: Value;
  sign: Value;
  /** the cache position (every cache write's) */
  pos?: Value;
  /** the caches' capacity */
  C?: Dim;
  jobs: RopeJob[];
}

export interface RotaryRoles {
  x: number;
  cos: number;
  xr: number;
  sign: number;
  sin: number;
  /** the sign is `(cast:T $sign)` */
  signCast: boolean;
}
/**
 * The operand roles the rotary expression `(add:T (mul:T $x $cos) (mul:T (mul:T $xr $sign) $sin))`
 * can give, each product's operands and the sum's in either order (they commute bit for bit), every
 * node of dtype T: all assignments (x and cos, xr and sign are told apart only by what the operands
 * are: the caller's part); none for any other expression.
 */
export function rotaryRoles(e: Expr, dtype: string): RotaryRoles[] {
  const found: RotaryRoles[] = [];
  const op = (n: Expr, name: string): Expr[] | undefined => (n.kind === "op" && n.op === name && n.dtype === dtype && n.args.length === 2 ? n.args : undefined);
  const arg = (n: Expr): number | undefined => (n.kind === "arg" ? n.index : undefined);
  // the sign may be cast to T inside the op (its operand then f32: checked by the caller)
  const signArg = (n: Expr): number | undefined => (n.kind === "op" && n.op === "cast" && n.dtype === dtype && n.args.length === 1 ? arg(n.args[0]) : arg(n));
  const sum = op(e, "add");
  if (!sum) return found;
  for (const [p, q] of [sum, [...sum].reverse()]) {
    const a = op(p, "mul"), b = op(q, "mul");
    if (!a || !b) continue;
    for (const [inner, sin] of [b, [...b].reverse()]) {
      const m = op(inner, "mul");
      const s = arg(sin);
      if (!m || s === undefined) continue;
      for (const [x, cos] of [a, [...a].reverse()])
        for (const [xr, sign] of [m, [...m].reverse()]) {
          const r = { x: arg(x), cos: arg(cos), xr: arg(xr), sign: signArg(sign), sin: s };
          if (Object.values(r).every((v) => v !== undefined) && new Set(Object.values(r)).size === 5)
            found.push({ ...(r as Omit<RotaryRoles, "signCast">), signCast: sign.kind === "op" });
        }
    }
  }
  return found;
}

/**
 * The q/k/v groups whose RoPE and cache writes their call can do (see the file's comment), keyed by
 * the group's first member. `inPlace`: the cache_writes that write their cache in place; `at`: each
 * node's position (every value the epilogue reads must exist at the group's call).
 */
export function ropeFusions(g: Graph, groups: Q4Group[], views: Map<number, View>, inPlace: Map<number, string>): Map<number, RopeFusion> {
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const at = new Map(g.nodes.map((n, i) => [n.result.id, i]));
  const constant = new Set(g.nodes.filter((n) => n.op === "constant").map((n) => n.result.id));
  const producer = new Map(g.nodes.map((n) => [n.result.id, n]));
  const only = (v: Value): Node[] => (outputs.has(v.id) ? [] : (uses.get(v.id) ?? []));
  const out = new Map<number, RopeFusion>();
  for (const grp of groups) {
    if (grp.pair || grp.members.length > 4) continue;
    const T = grp.members[0].result.dtype;
    if (T !== "bf16" && T !== "f16") continue;
    const callAt = at.get(grp.members[0].result.id)!;
    // (a constant is: the call takes it from the library, emit.ts)
    const ready = (v: Value): boolean => v.kind !== "op" || at.get(v.id)! < callAt || constant.has(v.id);
    let f: Omit<RopeFusion, "group" | "jobs"> | undefined;
    const jobs: RopeJob[] = [];
    const agree = (r: Omit<RopeFusion, "group" | "jobs">): boolean => {
      if (!f) f = r;
      return f.D === r.D && f.cos.id === r.cos.id && f.sin.id === r.sin.id && f.sign.id === r.sign.id;
    };
    const cacheOf = (u: Node, upd: Value, H: Dim, D: number): boolean => {
      // (in place: its result, a present.* output, is the cache input itself)
      if (u.op !== "cache_write" || !inPlace.has(u.result.id) || u.operands[1].id !== upd.id) return false;
      const [c, , p] = u.operands;
      if (c.shape.length !== 4 || c.shape[1] !== H || c.shape[3] !== D || !ready(p) || p.dtype !== "i64" || c.kind !== "input") return false;
      if (f?.pos && (f.pos.id !== p.id || f.C !== c.shape[2])) return false;
      if (f) (f.pos = p), (f.C = c.shape[2]);
      return true;
    };
    for (const m of grp.members) {
      // m → reshape [B, S, H, D] → transpose [B, H, S, D] (a view)
      const rs = only(m.result);
      const r = rs[0];
      if (rs.length !== 1 || r.op !== "reshape" || r.result.shape.length !== 4) break;
      const [B, S, H, D] = r.result.shape;
      if (typeof D !== "number" || D % 2 !== 0) break;
      const ts = only(r.result);
      const t = ts[0];
      if (ts.length !== 1 || t.op !== "transpose" || !views.has(t.result.id) || (t.attrs.perm as number[]).join() !== "0,2,1,3") break;
      const tu = only(t.result);
      if (tu.length === 1 && tu[0].op === "cache_write") {
        // v: into the cache as it is
        if (!f || !cacheOf(tu[0], t.result, H, D)) break;
        jobs.push({ member: m, mode: 3, cache: tu[0] });
        continue;
      }
      // k or q: the rotary op, reading t and its rotate-half gather
      const e = tu.find((u) => u.op === "elementwise");
      const gt = tu.find((u) => u.op === "gather");
      if (tu.length !== 2 || !e || !gt || !views.get(gt.result.id)?.table || only(gt.result).length !== 1 || only(gt.result)[0] !== e) break;
      const tab = views.get(gt.result.id)!.table!.values;
      if (tab.length !== D || tab.some((v, d) => v !== (d + D / 2) % D)) break;
      if (e.result.dtype !== T || e.result.shape.join() !== [B, H, S, D].join()) break;
      const roles = rotaryRoles(parseExpr(e.attrs.expr as string), T).find((ro) => e.operands[ro.x].id === t.result.id && e.operands[ro.xr].id === gt.result.id);
      if (!roles) break;
      const [cos, sin] = [e.operands[roles.cos], e.operands[roles.sin]];
      // the sign: T, or f32 that the op casts; a lone `cast` to T of an f32 row counts as the latter
      // (the same rounding: a lone cast is the one-op expression `(cast:T $0)`), so a layer's call
      // need not wait for the cast's kernel
      let sign = e.operands[roles.sign];
      let signCast = roles.signCast;
      const by = producer.get(sign.id);
      if (!signCast && by?.op === "cast" && by.operands[0].dtype === "f32" && ready(by.operands[0])) [sign, signCast] = [by.operands[0], true];
      // cos and sin: a row of D a position ([1, 1, S, D]); sign: [D]
      const row = (v: Value) => v.shape.length === 4 && v.shape[0] === 1 && v.shape[1] === 1 && v.shape[2] === S && v.shape[3] === D && v.dtype === T && ready(v) && !views.has(v.id);
      const signType = signCast ? "f32" : T;
      if (!row(cos) || !row(sin) || sign.shape.length !== 1 || sign.shape[0] !== D || sign.dtype !== signType || !ready(sign) || views.has(sign.id)) break;
      if (!agree({ D, cos, sin, sign })) break;
      const eu = only(e.result);
      if (eu.length === 1 && eu[0].op === "cache_write" && cacheOf(eu[0], e.result, H, D)) jobs.push({ member: m, mode: 2, rotary: e, cache: eu[0] });
      else if (!outputs.has(e.result.id)) jobs.push({ member: m, mode: 1, rotary: e });
      else break;
    }
    // every member placed, at least one RoPE'd, and a cache write's position known to all
    if (!f || jobs.length !== grp.members.length || (jobs.some((j) => j.cache) && !f.pos)) continue;
    out.set(grp.members[0].result.id, { ...f, group: grp, jobs });
  }
  return out;
}
