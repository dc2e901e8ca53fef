// IR → C++ for an artifact. The generated translation unit is the same for both targets: one
// block per op calling a kernel of namespace K (kiln::cpu for host C++, kiln::cuda for CUDA), on
// buffers from the target's allocator. Symbolic dims become int64 variables bound from the input
// shapes; a reshape is an alias; every other op writes a fresh buffer, freed after its last use.
// Some transposes are not copied: elementwise ops and attention read through them (views), and an
// attention writes its result in the layout of the transpose that reads it (which then aliases it).
// The skeleton and the kernels are files in codegen-templates/; this file only fills them in.

import type { Dim } from "../ir/dim.js";
import { bindingDim, dimSymbols } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { DTYPE_BYTES } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { locString, typeString, usesOf } from "../ir/graph.js";
import { printNode } from "../ir/print.js";
import type { Expr } from "../ir/expr.js";
import { parseExpr, printExpr } from "../ir/expr.js";
import type { FourBit } from "../ir/quant.js";
import { codeOf } from "../ir/quant.js";
import type { Q4Group } from "./qlinear-groups.js";
import { qlinear4Groups } from "./qlinear-groups.js";
import { batchLaunches } from "./batch-launches.js";
import type { RopeFusion } from "./rope-fusion.js";
import { ropeFusions } from "./rope-fusion.js";

export type Target = "cpu" | "cuda";

export const CTYPE: Record<DType, string> = {
  f32: "float", f16: "kiln::f16", bf16: "kiln::bf16", i64: "int64_t", i32: "int32_t", i8: "int8_t", u8: "uint8_t", bool: "kiln::boolean",
};
export const ABI_DTYPE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i64: 3, i32: 4, i8: 5, u8: 6, bool: 7 };
const MAX_RANK = 8;
/** rt::constant ids of ALiBi slope tables: past any value id of a graph */
const ALIBI_CONSTANT_BASE = 1 << 30;

const UNARY: Record<string, string> = {
  neg: "OpNeg", abs: "OpAbs", exp: "OpExp", log: "OpLog", sqrt: "OpSqrt", rsqrt: "OpRsqrt", reciprocal: "OpReciprocal", tanh: "OpTanh",
  sigmoid: "OpSigmoid", silu: "OpSilu", relu: "OpRelu", gelu: "OpGelu", gelu_tanh: "OpGeluTanh", cos: "OpCos", sin: "OpSin",
};
const BINARY: Record<string, string> = {
  add: "OpAdd", sub: "OpSub", mul: "OpMul", div: "OpDiv", pow: "OpPow", maximum: "OpMaximum", minimum: "OpMinimum",
  less: "OpLess", less_equal: "OpLessEqual", greater: "OpGreater", greater_equal: "OpGreaterEqual", equal: "OpEqual", not_equal: "OpNotEqual",
};
const REDUCE: Record<string, string> = { reduce_sum: "REDUCE_SUM", reduce_mean: "REDUCE_MEAN", reduce_max: "REDUCE_MAX" };

/** A dim as a C++ int64 expression over the bound symbols (`d_B`, `d_S`, …). */
export function cdim(d: Dim): string {
  if (typeof d === "number") return `(int64_t)${d}`;
  return `(${d.replace(/[A-Za-z_][A-Za-z0-9_]*/g, (s) => `d_${s}`)})`;
}
const cprod = (ds: readonly Dim[]): string => (ds.length ? ds.map(cdim).join(" * ") : "(int64_t)1");
/** Row-major strides of a shape, as expressions. */
const cstrides = (ds: readonly Dim[]): string[] => ds.map((_d, i) => cprod(ds.slice(i + 1)));
const shapeLit = (ds: readonly string[]): string => `kiln::Shape{${ds.length}, {${ds.join(", ")}}}`;
const stridesLit = (ss: readonly string[]): string => `kiln::Strides{{${ss.length ? ss.join(", ") : "0"}}}`;
const cstr = (s: string): string => JSON.stringify(s).replace(/%/g, "%%");

function fmtDouble(x: number): string {
  if (Number.isNaN(x)) return "NAN";
  if (x === Infinity) return "INFINITY";
  if (x === -Infinity) return "-INFINITY";
  if (Object.is(x, -0)) return "-0.0";
  const s = String(x);
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/** Strides (as expressions) of `s` broadcast to `out` (numpy rules: 0 where s has 1 or no dim). */
function broadcastStrides(s: readonly Dim[], out: readonly Dim[]): string[] {
  const own = cstrides(s);
  const off = out.length - s.length;
  return out.map((_d, i) => (i < off || s[i - off] === 1 ? "0" : own[i - off]));
}

export interface EmitOptions {
  target: Target;
  hash: string;
  kilnVersion: string;
  /** the skeleton, codegen-templates/model.cpp.tpl */
  template: string;
  /** compute the 4-bit linears reading one x in one call, and let them compute an RMSNorm only they read (qlinear-groups.ts, normReaders; default true; KILN_QGROUP=0 at compile time turns both off) */
  qgroup?: boolean;
  /** batch consecutive independent elementwise kernels and cache writes into one launch (batch-launches.ts; default true) */
  batch?: boolean;
}

/**
 * The cache_write ops that write their cache in place: the cache is a graph input read by nothing
 * else (the static KV cache). Their results alias that input, and so do the outputs they reach;
 * maps result id → input name (the manifest records it as the output's `aliases`).
 */
export function inPlaceCacheWrites(g: Graph): Map<number, string> {
  const reads = new Map<number, number>();
  for (const n of g.nodes) for (const x of n.operands) reads.set(x.id, (reads.get(x.id) ?? 0) + 1);
  for (const x of g.outputs) reads.set(x.value.id, (reads.get(x.value.id) ?? 0) + 1);
  const m = new Map<number, string>();
  for (const n of g.nodes) {
    const c = n.operands[0];
    if ((n.op === "cache_write" || n.op === "varlen_cache_write") && c.kind === "input" && reads.get(c.id) === 1) m.set(n.result.id, c.name);
  }
  return m;
}

export function emitSource(g: Graph, o: EmitOptions): string {
  for (const v of [...g.inputs, ...g.params, ...g.nodes.map((n) => n.result)])
    if (v.shape.length > MAX_RANK) throw new KilnError("E_BUILD", `${typeString(v)} has rank ${v.shape.length}; kernels take at most ${MAX_RANK}`);

  const name = new Map<number, string>();
  const root = new Map<number, number>(); // value id -> id of the value owning its buffer
  const bind: string[] = [];
  const weights: string[] = [];
  const consts: string[] = [];
  const kernels: string[] = [];
  // values of constant nodes, seen through reshapes (gather skips run-time checks of these)
  const constants = new Map<number, number[]>();
  const body: string[] = [];

  // inputs: check dtype and rank, bind bare symbols, then check every dim
  const bound = new Set<string>();
  g.inputs.forEach((v, i) => {
    bind.push(`  if (in[${i}].dtype != ${ABI_DTYPE[v.dtype]} || in[${i}].rank != ${v.shape.length})`);
    bind.push(`    rt::fail(KILN_ERR_INVALID, "input '%s' is %s with rank %d; the model wants ${typeString(v)}", ${cstr(v.name)}, rt::dtype_name(in[${i}].dtype), (int)in[${i}].rank);`);
    v.shape.forEach((d, k) => {
      const bd = bindingDim(d); // "X", or "X+c" (cu_seqlens [B+1])
      if (bd && !bound.has(bd.sym)) {
        bound.add(bd.sym);
        bind.push(`  const int64_t d_${bd.sym} = in[${i}].shape[${k}]${bd.offset ? ` - (${bd.offset})` : ""};`);
      }
    });
  });
  g.inputs.forEach((v, i) => {
    v.shape.forEach((d, k) => {
      for (const s of dimSymbols(d)) if (!bound.has(s)) throw new KilnError("E_BUILD", `symbol ${s} of input '${v.name}' ${typeString(v)} is not bound by any input on its own`);
      bind.push(`  if (in[${i}].shape[${k}] != ${cdim(d)}) rt::fail(KILN_ERR_INVALID, "input '%s' dim ${k} is %lld, but the model wants ${d} = %lld (from the other inputs)", ${cstr(v.name)}, (long long)in[${i}].shape[${k}], (long long)${cdim(d)});`);
    });
    name.set(v.id, `x${v.id}`);
    root.set(v.id, v.id);
    bind.push(`  ${CTYPE[v.dtype]}* x${v.id} = (${CTYPE[v.dtype]}*)in[${i}].data;`);
  });
  for (const s of bound) bind.push(`  (void)d_${s};`);
  g.params.forEach((v, i) => {
    name.set(v.id, `w${v.id}`);
    root.set(v.id, v.id);
    weights.push(`  ${CTYPE[v.dtype]}* w${v.id} = (${CTYPE[v.dtype]}*)w[${i}]; // ${v.name}`);
  });

  // last use of each buffer (through aliases); outputs are never freed
  const lastUse = new Map<number, number>();
  const kept = new Set(g.outputs.map((x) => x.value.id));
  const opRoots = new Set<number>();
  const inPlace = inPlaceCacheWrites(g);
  // transposes and constant-index gathers read only by elementwise ops (transposes also by
  // attention, as q, k, v) are not materialized: those ops read through them (views)
  const views = elementwiseViews(g);
  const q8Share = int8Shares(g);
  // 4-bit linears computed together at the first member's position (and the gated MLP's product
  // with them); a pair's gate and up are never materialized
  const q4 = o.qgroup === false ? [] : qlinear4Groups(g);
  const q4Of = new Map(q4.flatMap((grp) => [...grp.members, ...(grp.pair ? [grp.pair.product] : [])].map((n) => [n.result.id, grp] as const)));
  const q4Hidden = new Set(q4.flatMap((grp) => (grp.pair ? [grp.pair.gate.result.id, grp.pair.up.result.id] : [])));
  const nodeAt = new Map(g.nodes.map((n, i) => [n.result.id, i]));
  // where a node's reads happen: a grouped node's at its group's call
  const readAt = (n: Node, i: number): number => {
    const grp = q4Of.get(n.result.id);
    return grp ? nodeAt.get(grp.members[0].result.id)! : i;
  };
  // attention writes its result through the transpose that is its only reader (which then aliases it)
  const attnOut = attentionOutputs(g, views);
  const writtenBy = new Map([...attnOut].map(([fa, t]) => [t.result.id, fa]));
  // RMSNorms read only by 4-bit linears (normReaders): those read the norm's input and weight too
  const normFuse = o.qgroup === false ? new Map<number, Node>() : normReaders(g, views);
  // q/k/v groups whose call also does RoPE and the cache writes (rope-fusion.ts): those ops are
  // emitted behind the group's `if (!rfN)`; a rotary result the call writes is allocated there
  const ropes = o.qgroup === false ? new Map<number, RopeFusion>() : ropeFusions(g, q4, views, inPlace);
  const ropeGuard = new Map<number, number>();
  const ropeAlloc = new Set<number>();
  for (const [id, rf] of ropes)
    for (const j of rf.jobs) {
      if (j.rotary) ropeGuard.set(j.rotary.result.id, id);
      if (j.cache) ropeGuard.set(j.cache.result.id, id);
      if (j.mode === 1) ropeAlloc.add(j.rotary!.result.id);
    }
  const guard = (n: Node): string => (ropeGuard.has(n.result.id) ? `if (!rf${ropeGuard.get(n.result.id)}) ` : "");
  const readsOf = (n: Node): Value[] => [
    ...n.operands,
    ...n.operands.flatMap((x) => (views.has(x.id) ? [views.get(x.id)!.src] : [])),
    ...n.operands.flatMap((x) => normFuse.get(x.id)?.operands ?? []),
  ];
  g.nodes.forEach((n, i) => {
    const aliasing = n.op === "reshape" || inPlace.has(n.result.id) || writtenBy.has(n.result.id);
    root.set(n.result.id, aliasing ? root.get(n.operands[0].id)! : n.result.id);
    if (!aliasing && n.op !== "constant" && !views.has(n.result.id) && !q4Hidden.has(n.result.id)) opRoots.add(n.result.id); // constants live in the library
    for (const x of readsOf(n)) lastUse.set(root.get(x.id)!, Math.max(lastUse.get(root.get(x.id)!) ?? -1, readAt(n, i)));
  });
  for (const x of g.outputs) kept.add(root.get(x.value.id)!);

  const ref = (v: Value): string => `%${v.kind === "op" ? String(v.id) : v.name}`;
  const whereOf = (n: Node): string => `${printNode(n, ref).split(" loc(")[0]}${n.loc ? ` at ${locString(n.loc)}` : ""}`;
  // after the reads of `ns` at node i: free the buffers whose last use that was, and results nobody reads
  const release = (ns: Node[], i: number): void => {
    const freed = new Set<number>();
    for (const x of ns.flatMap(readsOf)) {
      const r = root.get(x.id)!;
      if (lastUse.get(r) === i && opRoots.has(r) && !kept.has(r) && !freed.has(r)) {
        freed.add(r);
        body.push(`  rt::release(${name.get(r)});`);
      }
    }
    // a result nobody reads (dead code that survived) is freed at once
    for (const n of ns) if (!lastUse.has(n.result.id) && !kept.has(n.result.id) && opRoots.has(n.result.id)) body.push(`  rt::release(v${n.result.id});`);
  };
  g.nodes.forEach((n, i) => {
    const y = `v${n.result.id}`;
    name.set(n.result.id, y);
    const T = CTYPE[n.result.dtype];
    const where = whereOf(n);
    const grp = q4Of.get(n.result.id);
    if (grp && grp.members[0] !== n) {
      body.push(`  // ${printNode(n, ref)} (computed by the call at %${grp.members[0].result.id})`);
      return;
    }
    if (grp) {
      body.push(...emitQ4Group(grp, name, ref, whereOf, consts, normFuse, ropes.get(n.result.id)));
      release([...grp.members, ...(grp.pair ? [grp.pair.product] : [])], i);
      return;
    }
    if (views.has(n.result.id)) {
      body.push(`  // ${printNode(n, ref)} (not materialized: its readers read ${ref(views.get(n.result.id)!.src)} through it)`);
      return;
    }
    if (writtenBy.has(n.result.id)) {
      body.push(`  // ${printNode(n, ref)} (not materialized: %${writtenBy.get(n.result.id)} wrote it in this layout)`);
      body.push(`  ${T}* ${y} = ${name.get(n.operands[0].id)};`);
      return;
    }
    body.push(`  // ${printNode(n, ref)}`);
    if (n.op === "reshape") {
      const c = constants.get(n.operands[0].id);
      if (c) constants.set(n.result.id, c);
      body.push(`  ${T}* ${y} = ${name.get(n.operands[0].id)};`);
      return;
    }
    if (n.op === "constant") {
      if (!["f32", "i64", "i32", "i8", "u8"].includes(n.result.dtype))
        throw new KilnError("E_BUILD", `constant of dtype ${n.result.dtype} is not supported by codegen yet (${where})`);
      constants.set(n.result.id, n.attrs.values as number[]);
      const isInt = !["f32", "f16", "bf16"].includes(n.result.dtype);
      const vals = (n.attrs.values as number[]).map((v) => (isInt ? `${Math.trunc(v)}LL` : fmtDouble(v)));
      consts.push(`static const ${T} c${n.result.id}[] = {${n.result.dtype === "f32" ? vals.map((v) => (/^-?(NAN|INFINITY)$/.test(v) ? v : `${v}f`)).join(", ") : vals.join(", ")}};`);
      body.push(`  ${T}* ${y} = (${T}*)rt::constant(${n.result.id}, c${n.result.id}, sizeof(c${n.result.id}));`);
      return;
    }
    body.push(`  rt::op_mark(${JSON.stringify(n.op)});`);
    if (n.op === "cache_write" || n.op === "varlen_cache_write") {
      const [c, u, p] = n.operands;
      const [B, H, C, D] = c.shape;
      if (inPlace.has(n.result.id)) body.push(`  ${T}* ${y} = ${name.get(c.id)}; // written in place`);
      else {
        body.push(`  ${T}* ${y} = (${T}*)rt::alloc((int64_t)sizeof(${T}) * ${cprod(n.result.shape)}, ${cstr(where)});`);
        body.push(`  rt::copy(${y}, ${name.get(c.id)}, (int64_t)sizeof(${T}) * ${cprod(c.shape)});`);
      }
      const view = views.get(u.id);
      if (n.op === "cache_write" && view) {
        // the update read through its transpose (v's [B, S, H, D] → [B, H, S, D]): (b, h, s) strides of the source
        const ss = cstrides(view.src.shape);
        const [sb, sh, st] = view.perm.slice(0, 3).map((k) => ss[k]);
        body.push(`  ${guard(n)}K::cache_write<${T}>(${y}, ${name.get(view.src.id)}, ${name.get(p.id)}, ${cdim(B)}, ${cdim(H)}, ${cdim(C)}, ${cdim(u.shape[2])}, ${cdim(D)}, ${sb}, ${sh}, ${st});`);
      } else if (n.op === "cache_write") body.push(`  ${guard(n)}K::cache_write<${T}>(${y}, ${name.get(u.id)}, ${name.get(p.id)}, ${cdim(B)} * ${cdim(H)}, ${cdim(C)}, ${cdim(u.shape[2])}, ${cdim(D)});`);
    } else if (!ropeAlloc.has(n.result.id)) body.push(`  ${T}* ${y} = (${T}*)rt::alloc((int64_t)sizeof(${T}) * ${cprod(n.result.shape)}, ${cstr(where)});`);
    if (n.op === "cache_write") {
      // emitted above
    } else if (n.op === "varlen_cache_write") {
      const [c, u, cu, slot, pos] = n.operands;
      const [B, H, C, D] = c.shape;
      body.push(`  K::varlen_cache_write<${T}>(${y}, ${name.get(u.id)}, ${name.get(cu.id)}, ${name.get(slot.id)}, ${name.get(pos.id)}, ${cdim(slot.shape[0])}, ${cdim(B)}, ${cdim(H)}, ${cdim(C)}, ${cdim(u.shape[2])}, ${cdim(D)});`);
    } else if (n.op === "qlinear") {
      // the same call on both targets: the cuda wrappers (cuda/quant.cuh) take the host code table
      // and pass its 16 values to the kernels by value
      const q = qlinearArgs(n, name);
      if (n.attrs.scheme === "int8") {
        // linears reading the same x with the same threshold share its quantization (Q8Shared)
        const sh = q8Share.get(n.result.id);
        if (sh?.first) body.push(`  K::Q8Shared q8s${sh.id};`);
        body.push(`  K::qlinear8<${T}>(${q.x}, ${q.w}, ${q.bias}, ${q.res}, ${y}, ${q.M}, ${q.N}, ${q.K}, ${fmtDouble(n.attrs.threshold as number)}${sh ? `, &q8s${sh.id}` : ""});`);
        if (sh?.last) body.push(`  K::qlinear8_done(&q8s${sh.id});`);
      } else if (normFuse.has(n.operands[0].id)) {
        const nrm = normArgs(normFuse.get(n.operands[0].id)!, name);
        body.push(`  K::qlinear4_norm<${T}>(${nrm}, ${q.w}, ${q.bias}, ${q.res}, ${y}, ${q.M}, ${q.N}, ${q.K}, ${q4Config(n, consts)});`);
      } else body.push(`  K::qlinear4<${T}>(${q.x}, ${q.w}, ${q.bias}, ${q.res}, ${y}, ${q.M}, ${q.N}, ${q.K}, ${q4Config(n, consts)});`);
    } else if (n.op === "rms_norm" && normFuse.has(n.result.id)) {
      // its readers compute it themselves where the target's decode GEMV can (K::norm_fused); then it does not run here
      const [x, w] = n.operands;
      const rows = cprod(x.shape.slice(0, -1));
      body.push(`  const bool nf${n.result.id} = K::norm_fused(${rows});`);
      body.push(`  if (!nf${n.result.id}) K::rms_norm<${T}>(${name.get(x.id)}, ${name.get(w.id)}, ${y}, ${rows}, ${cdim(x.shape[x.shape.length - 1])}, ${fmtDouble(n.attrs.eps as number)});`);
    } else if (n.op === "elementwise" || LONE_ELEMENTWISE.has(n.op)) {
      // a lone arithmetic op (one fuse-elementwise left alone: nothing to fuse with) runs as a
      // one-op expression, so it gets the functor's vectorized chunks too
      const e = n.op === "elementwise" ? n : asExpression(n);
      const { functor, call } = emitElementwise(e, name, views);
      kernels.push(functor);
      body.push(`  ${guard(n)}${call}`);
    } else body.push(...emitOp(n, name, where, constants, { views, attnOut }).map((l) => `  ${l}`));
    release([n], i);
  });

  const outputs: string[] = [`  rt::finish("forward");`];
  const handed = new Set<number>();
  g.outputs.forEach((x, j) => {
    const v = x.value;
    const r = root.get(v.id)!;
    const T = CTYPE[v.dtype];
    let ptr = name.get(v.id)!;
    // an output must own its buffer: copy when it is an input, weight, constant, or already handed
    // out; a cache written in place is handed back as the input it is (the manifest says `aliases`)
    if (inPlace.has(v.id)) {
      if (handed.has(r)) throw new KilnError("E_BUILD", `output '${x.name}' is a cache written in place that another output already returns`);
      handed.add(r);
    } else if (!opRoots.has(r) || handed.has(r)) {
      const bytes = `(int64_t)sizeof(${T}) * ${cprod(v.shape)}`;
      outputs.push(`  ${T}* o${j} = (${T}*)rt::alloc(${bytes}, "output ${x.name}");`);
      outputs.push(`  rt::copy(o${j}, ${ptr}, ${bytes});`);
      ptr = `o${j}`;
    } else handed.add(r);
    outputs.push(`  out[${j}].dtype = ${ABI_DTYPE[v.dtype]}; out[${j}].rank = ${v.shape.length}; out[${j}].data = ${ptr}; // ${x.name}`);
    v.shape.forEach((d, k) => outputs.push(`  out[${j}].shape[${k}] = ${cdim(d)};`));
  });

  const includes =
    o.target === "cpu"
      ? ["#include \"common/kiln_types.h\"", "#include \"cpu/kernels.h\"", "#include \"cpu/runtime.h\"", "namespace K = kiln::cpu;"]
      : ["#include \"common/kiln_types.h\"", "#include \"cuda/kernels.cuh\"", "#include \"cuda/runtime.cuh\"", "namespace K = kiln::cuda;"];
  const fill: Record<string, string> = {
    KILN_VERSION: o.kilnVersion,
    GRAPH: g.name,
    TARGET: o.target,
    INCLUDES: includes.join("\n"),
    CONSTANTS: consts.join("\n"),
    KERNELS: kernels.join("\n\n"),
    BIND: bind.join("\n"),
    WEIGHTS: weights.join("\n") || "  (void)w;",
    BODY: (o.batch === false ? body : batchLaunches(body)).join("\n"),
    OUTPUTS: outputs.join("\n"),
    NUM_INPUTS: String(g.inputs.length),
    NUM_WEIGHTS: String(g.params.length),
    NUM_OUTPUTS: String(g.outputs.length),
    HASH: o.hash,
  };
  return o.template.replace(/\{\{([A-Z_]+)\}\}/g, (m, k: string) => {
    if (!(k in fill)) throw new KilnError("E_BUILD", `model template has an unknown parameter ${m}`);
    return fill[k];
  });
}

const isFloatDType = (d: DType): boolean => d === "f32" || d === "bf16" || d === "f16";
/** The compute type of a dtype in generated code (kiln::Num<T>::C). */
const ctypeC = (d: DType): string => (isFloatDType(d) ? "float" : "double");

const LONE_ELEMENTWISE = new Set([...Object.keys(UNARY), ...Object.keys(BINARY), "where", "cast"]);
/** A lone unary/binary/where/cast node as the one-op `elementwise` node computing the same. */
function asExpression(n: Node): Node {
  const expr: Expr = { kind: "op", op: n.op, dtype: n.result.dtype, args: n.operands.map((_v, index) => ({ kind: "arg", index })) };
  return { op: "elementwise", operands: n.operands, attrs: { expr: printExpr(expr) }, result: n.result };
}

/**
 * The int8 qlinears that read the same activation with the same threshold (q/k/v, gate/up): the
 * first of a group quantizes x into a Q8Shared that the others reuse, the last frees it. Keyed by
 * result id; groups of one are left out.
 */
export function int8Shares(g: Graph): Map<number, { id: number; first: boolean; last: boolean }> {
  const groups = new Map<string, Node[]>();
  for (const n of g.nodes) {
    if (n.op !== "qlinear" || n.attrs.scheme !== "int8") continue;
    const key = `${n.operands[0].id}/${n.attrs.threshold as number}`;
    groups.set(key, [...(groups.get(key) ?? []), n]);
  }
  const out = new Map<number, { id: number; first: boolean; last: boolean }>();
  for (const ns of groups.values()) {
    if (ns.length < 2) continue;
    ns.forEach((n, i) => out.set(n.result.id, { id: ns[0].result.id, first: i === 0, last: i === ns.length - 1 }));
  }
  return out;
}

/** A qlinear's operands as C++ arguments: x, the weight's bytes, bias and residual (or nullptr), M, N, K. */
function qlinearArgs(n: Node, name: Map<number, string>): Record<"x" | "w" | "bias" | "res" | "M" | "N" | "K", string> {
  const [x, w] = n.operands;
  const residual = n.attrs.residual === true;
  return {
    x: name.get(x.id)!,
    w: `(const uint8_t*)${name.get(w.id)}`,
    bias: n.operands.length - (residual ? 1 : 0) > 2 ? name.get(n.operands[2].id)! : "nullptr",
    res: residual ? name.get(n.operands[n.operands.length - 1].id)! : "nullptr",
    M: cprod(x.shape.slice(0, -1)),
    N: cdim(w.shape[0]),
    K: cdim(w.shape[1]),
  };
}

/** A 4-bit qlinear's `block, double_quant, code` arguments; declares the code table (host memory) once. */
function q4Config(n: Node, consts: string[]): string {
  const scheme = n.attrs.scheme as FourBit;
  const table = `kiln_code_${scheme}`;
  if (!consts.some((c) => c.includes(`${table}[16]`))) consts.push(`static const double ${table}[16] = {${codeOf(scheme).map((v) => fmtDouble(v)).join(", ")}};`);
  return `${n.attrs.block as number}, ${n.attrs.double_quant ? "true" : "false"}, ${table}`;
}

/**
 * The call computing a group of 4-bit linears that read one x (qlinear-groups.ts), with the
 * allocation of every result it writes: each member's (qlinear4_group), or a pair's product
 * (qlinear4_silu_mul; gate and up are not materialized).
 */
function emitQ4Group(
  grp: Q4Group,
  name: Map<number, string>,
  ref: (v: Value) => string,
  whereOf: (n: Node) => string,
  consts: string[],
  normFuse: Map<number, Node>,
  rope?: RopeFusion,
): string[] {
  const first = grp.members[0];
  const T = CTYPE[first.result.dtype];
  const outs = grp.pair ? [grp.pair.product] : grp.members;
  const lines = [`  // ${printNode(first, ref)}`, ...[...grp.members.slice(1), ...(grp.pair ? [grp.pair.product] : [])].map((n) => `  // ${printNode(n, ref)} (computed here)`)];
  for (const n of outs) {
    name.set(n.result.id, `v${n.result.id}`);
    lines.push(`  ${T}* v${n.result.id} = (${T}*)rt::alloc((int64_t)sizeof(${T}) * ${cprod(n.result.shape)}, ${cstr(whereOf(n))});`);
  }
  lines.push(`  rt::op_mark("qlinear");`);
  const q = qlinearArgs(first, name);
  const head = `${q.x}, ${q.M}, ${q.K}, ${q4Config(first, consts)}`;
  let ropeArg = "";
  if (rope) {
    // RoPE and the cache writes in the call (rope-fusion.ts) where K::rope_fused says so
    const id = first.result.id;
    lines.push(`  const bool rf${id} = K::rope_fused(${q.M});`);
    const dst = rope.jobs.map((j) => {
      if (j.mode !== 1) return name.get(j.cache!.operands[0].id)!;
      const e = j.rotary!;
      name.set(e.result.id, `v${e.result.id}`);
      lines.push(`  ${T}* v${e.result.id} = (${T}*)rt::alloc((int64_t)sizeof(${T}) * ${cprod(e.result.shape)}, ${cstr(whereOf(e))});`);
      return `v${e.result.id}`;
    });
    const pad = <X>(xs: X[], fill: X): X[] => [...xs, ...Array<X>(4 - xs.length).fill(fill)];
    const pos = rope.pos ? name.get(rope.pos.id)! : "nullptr";
    // a value the call reads: emitted before it, or a constant emitted later (the library's copy)
    const ptr = (v: Value): string => name.get(v.id) ?? `(const ${CTYPE[v.dtype]}*)rt::constant(${v.id}, c${v.id}, sizeof(c${v.id}))`;
    const sign = rope.sign.dtype === first.result.dtype ? `${ptr(rope.sign)}, nullptr` : `nullptr, ${ptr(rope.sign)}`;
    lines.push(
      `  K::Q4Rope<${T}> rp${id} = {${ptr(rope.cos)}, ${ptr(rope.sin)}, ${sign}, ${pos}, ${rope.C !== undefined ? cdim(rope.C) : "0"}, ${rope.D}, {${pad(dst, "nullptr").join(", ")}}, {${pad(rope.jobs.map((j) => j.mode as number), 0).join(", ")}}};`,
    );
    ropeArg = `, rf${id} ? &rp${id} : nullptr`;
  }
  const linear = (n: Node, y: string): string => {
    const a = qlinearArgs(n, name);
    return `{${a.w}, ${a.bias}, ${a.res}, ${y}, ${a.N}}`;
  };
  // x an RMSNorm's result that only 4-bit linears read: the `_norm` calls (they may compute the norm themselves)
  const norm = normFuse.get(first.operands[0].id);
  const [fn, args] = norm ? ["_norm", `${normArgs(norm, name)}, ${q.M}, ${q.K}, ${q4Config(first, consts)}`] : ["", head];
  if (grp.pair) {
    const { gate, up, product } = grp.pair;
    lines.push(`  K::qlinear4_silu_mul${fn}<${T}>(${args}, ${linear(gate, "nullptr")}, ${linear(up, "nullptr")}, v${product.result.id});`);
  } else lines.push(`  K::qlinear4_group${fn || (rope ? "_rope" : "")}<${T}>(${args}, {${grp.members.map((n) => linear(n, `v${n.result.id}`)).join(", ")}}${ropeArg});`);
  return lines;
}

/**
 * The RMSNorms whose every reader is a 4-bit qlinear reading it as x (a decoder layer's
 * input_layernorm → q/k/v, post_attention_layernorm → gate/up), by result id. Their readers are
 * emitted as the `_norm` calls (qlinear4_norm, qlinear4_group_norm, qlinear4_silu_mul_norm), which
 * take the norm's input, weight and eps as well as its result; where the target's decode GEMV
 * computes the norm itself (K::norm_fused: the cuda target at one row, k_qgemv4p) the norm's own
 * kernel does not run. The graph is not changed: which kernel computes the norm is the target's
 * business. (16-bit linears are not: the norm inside their warp-a-row GEMV was measured slower,
 * bench/NOTES.md.)
 */
function normReaders(g: Graph, views: Map<number, View>): Map<number, Node> {
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const out = new Map<number, Node>();
  for (const n of g.nodes) {
    if (n.op !== "rms_norm" || outputs.has(n.result.id) || views.has(n.result.id)) continue;
    const rs = uses.get(n.result.id) ?? [];
    const ok = (u: Node): boolean =>
      u.op === "qlinear" &&
      (u.attrs.scheme === "nf4" || u.attrs.scheme === "fp4") &&
      u.operands[0].id === n.result.id &&
      u.operands.slice(1).every((v) => v.id !== n.result.id);
    if (rs.length > 0 && rs.every(ok)) out.set(n.result.id, n);
  }
  return out;
}

/** The `_norm` calls' leading arguments: the norm's input, weight, eps, whether the readers compute it, and its result. */
function normArgs(norm: Node, name: Map<number, string>): string {
  const [x, w] = norm.operands;
  return `${name.get(x.id)}, ${name.get(w.id)}, ${fmtDouble(norm.attrs.eps as number)}, nf${norm.result.id}, v${norm.result.id}`;
}

/** An elementwise operand read through a transpose and/or a constant-index gather of `src`. */
export interface View {
  /** the materialized value read */
  src: Value;
  /** the view's dim i is src's dim perm[i] (perm keeps the last dim in place) */
  perm: number[];
  /** a gather along the last dim with these constant indices (on the target: the constant `value`) */
  table?: { value: Value; values: number[] };
}

/**
 * The transposes (the last dim kept in place) and last-axis gathers with constant indices (RoPE's
 * rotate-half) whose every reader is an elementwise op of the same shape (or such a gather; or, for
 * a 4-d transpose, a flash_attention reading it as q, k or v): those readers read the source through
 * them (strides, and the index table), so no kernel copies the data. The graph's meaning is unchanged; only where the target computes the indexing moves.
 */
export function elementwiseViews(g: Graph): Map<number, View> {
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const constVals = new Map<number, number[]>();
  for (const n of g.nodes) {
    if (n.op === "constant") constVals.set(n.result.id, n.attrs.values as number[]);
    else if (n.op === "reshape" && constVals.has(n.operands[0].id)) constVals.set(n.result.id, constVals.get(n.operands[0].id)!);
  }
  const same = (a: readonly Dim[], b: readonly Dim[]) => a.length === b.length && a.every((d, i) => d === b[i]);
  const readsAsView = (u: Node, v: Value) => (u.op === "elementwise" || LONE_ELEMENTWISE.has(u.op)) && same(u.result.shape, v.shape);
  const absorbed = new Set<number>();
  const candidate = (n: Node): boolean => {
    const r = n.result.shape.length;
    if (r === 0 || outputs.has(n.result.id)) return false;
    if (n.op === "transpose") return (n.attrs.perm as number[])[r - 1] === r - 1;
    if (n.op !== "gather") return false;
    const [x, idx] = n.operands;
    const ax = (n.attrs.axis as number) < 0 ? (n.attrs.axis as number) + x.shape.length : (n.attrs.axis as number);
    const vals = constVals.get(idx.id);
    const L = x.shape[x.shape.length - 1];
    return ax === x.shape.length - 1 && idx.shape.length === 1 && typeof L === "number" && !!vals && vals.length === L && vals.every((i) => Number.isInteger(i) && i >= 0 && i < L);
  };
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i];
    if (!candidate(n)) continue;
    const us = uses.get(n.result.id) ?? [];
    const ok = us.length > 0 && us.every((u) => readsAsView(u, n.result) || (n.op === "transpose" && (readsAsAttentionOperand(u, n.result) || readsAsCacheUpdate(u, n.result))) || (n.op === "transpose" && u.op === "gather" && absorbed.has(u.result.id) && u.operands[0].id === n.result.id && !u.operands.slice(1).some((o) => o.id === n.result.id)));
    if (ok) absorbed.add(n.result.id);
  }
  const views = new Map<number, View>();
  for (const n of g.nodes) {
    if (!absorbed.has(n.result.id)) continue;
    const x = n.operands[0];
    if (n.op === "transpose") views.set(n.result.id, { src: x, perm: [...(n.attrs.perm as number[])] });
    else {
      const inner = views.get(x.id);
      const table = { value: n.operands[1], values: constVals.get(n.operands[1].id)! };
      views.set(n.result.id, inner ? { ...inner, table } : { src: x, perm: x.shape.map((_d, k) => k), table });
    }
  }
  return views;
}

/** `u` is a cache_write reading the 4-d `v` only as its update (the static cache's new keys/values; strides). */
const readsAsCacheUpdate = (u: Node, v: Value): boolean =>
  u.op === "cache_write" && v.shape.length === 4 && u.operands[1].id === v.id && u.operands[0].id !== v.id && u.operands[2].id !== v.id;

/** `u` is a flash_attention reading the 4-d `v` only as its q, k or v (strides; never as the offset, mask or cu_seqlens). */
const readsAsAttentionOperand = (u: Node, v: Value): boolean =>
  u.op === "flash_attention" && v.shape.length === 4 && u.operands.every((o, i) => o.id !== v.id || i < 3);

/**
 * The flash_attentions whose result's only reader is a transpose keeping the last dim (the heads
 * back to [B, S, H, Dv]), neither a graph output nor the transpose a view: the attention writes its
 * rows straight into the transpose's layout (kiln::AttnLayout's y) and the transpose aliases that
 * buffer, as a reshape does. With elementwiseViews taking the transposes that only attention (and
 * elementwise ops) read as q, k, v, neither head transpose around a layer's attention is copied.
 * Maps the attention's result id → the transpose.
 */
export function attentionOutputs(g: Graph, views: Map<number, View>): Map<number, Node> {
  const uses = usesOf(g);
  const outputs = new Set(g.outputs.map((o) => o.value.id));
  const m = new Map<number, Node>();
  for (const n of g.nodes) {
    if (n.op !== "flash_attention" || outputs.has(n.result.id)) continue;
    const us = uses.get(n.result.id) ?? [];
    const t = us[0];
    if (us.length !== 1 || t.op !== "transpose" || t.result.shape.length !== 4 || (t.attrs.perm as number[])[3] !== 3) continue;
    if (outputs.has(t.result.id) || views.has(t.result.id)) continue;
    m.set(n.result.id, t);
  }
  return m;
}

/**
 * The values a flash_attention reads for q, k, v (a transposed view's source, see elementwiseViews)
 * and, where any of q, k, v, y is not row-major [B, H, S, D], its kiln::AttnLayout: each operand's
 * (batch, head, row) strides as C++ expressions; y's are those of `into`'s layout (attentionOutputs).
 */
function attentionIO(n: Node, views: Map<number, View>, into: Node | undefined): { read: Value[]; layout?: string } {
  const read: Value[] = [];
  const strides: string[][] = [];
  for (const x of n.operands.slice(0, 3)) {
    const view = views.get(x.id);
    if (view && view.table) throw new KilnError("E_BUILD", `flash_attention %${n.result.id} reads a gathered view ${typeString(x)}`);
    const ss = view ? cstrides(view.src.shape) : cstrides(x.shape);
    read.push(view ? view.src : x);
    strides.push(view ? view.perm.slice(0, 3).map((p) => ss[p]) : ss.slice(0, 3));
  }
  if (into) {
    // y's dim k is the transpose's dim j where perm[j] = k
    const perm = into.attrs.perm as number[];
    const ts = cstrides(into.result.shape);
    strides.push([0, 1, 2].map((k) => ts[perm.indexOf(k)]));
  } else strides.push(cstrides(n.result.shape).slice(0, 3));
  if (!into && !n.operands.slice(0, 3).some((x) => views.has(x.id))) return { read }; // all row-major: the plain call
  return { read, layout: `kiln::AttnLayout{${strides.map((s) => `{${s.join(", ")}}`).join(", ")}}` };
}

/**
 * A fused `elementwise` op: a functor and its launch. `at` is the expression at one element, from
 * its operands' values; `operator()(i)` evaluates element i (the scalar path); `chunk(i)` evaluates
 * the W elements from i (a multiple of W, within one innermost row) with 16-byte loads and stores
 * (W: 16 bytes of the narrowest type moved in runs); both split the element index into coordinates
 * once, shared by the strided operands. Each operand is read, by its strides over the output, as
 * the same element (`contig`), one value for the whole tensor (`scalar`), a run along the innermost
 * dim (`row`, e.g. a norm's weight), one value per chunk (`col`, e.g. a [T, 1] statistic), or
 * through a transpose / constant-index gather of its source (`view`, see elementwiseViews). `chunkable()` tells the
 * target's for_each whether the chunks may run: every run 16-byte aligned, and W dividing the
 * innermost dim where an operand broadcasts (weights and inputs may sit at any offset).
 */
export function emitElementwise(n: Node, name: Map<number, string>, views: Map<number, View> = new Map()): { functor: string; call: string } {
  const id = n.result.id;
  const out = n.result.shape;
  const T = CTYPE[n.result.dtype];
  const own = cstrides(out);
  const reads = n.operands.map((v, k) => {
    const view = views.get(v.id);
    if (view) {
      // src's strides permuted (the shapes are equal: no broadcast); a gather's last dim is
      // indexed through its table instead (src's last stride is 1)
      const ss = cstrides(view.src.shape);
      const st = out.map((d, i) => (d === 1 || (view.table && i === out.length - 1) ? "0" : ss[view.perm[i]]));
      return { k, v: view.src, st, kind: "view", view, C: ctypeC(v.dtype), T: CTYPE[v.dtype] };
    }
    const st = broadcastStrides(v.shape, out);
    const contig = st.every((s, i) => out[i] === 1 || s === own[i]);
    const kind = contig ? "contig" : st.every((s) => s === "0") ? "scalar" : st[st.length - 1] === "0" ? "col" : "row";
    return { k, v, st, kind, view: undefined as View | undefined, C: ctypeC(v.dtype), T: CTYPE[v.dtype] };
  });
  const runs = reads.filter((r) => r.kind === "contig" || r.kind === "row" || r.kind === "view");
  const W = 16 / Math.min(DTYPE_BYTES[n.result.dtype], ...runs.map((r) => DTYPE_BYTES[r.v.dtype]));
  const strided = reads.filter((r) => r.kind === "row" || r.kind === "col" || r.kind === "view");
  // a gathered view runs in chunks only where its table maps each aligned chunk to an aligned run
  const tableRuns = (vals: number[]): boolean =>
    vals.length % W === 0 && vals.every((x, c) => (c % W === 0 ? x % W === 0 : x === vals[c - 1] + 1));

  const lines: string[] = [];
  let t = 0;
  const gen = (e: Expr): string => {
    if (e.kind === "arg") return `x${e.index}`;
    const C = ctypeC(e.dtype);
    let val: string;
    if (e.kind === "lit") val = `(${C})${fmtDouble(e.value)}`;
    else {
      const a = e.args.map(gen);
      if (e.op in UNARY) val = `kiln::${UNARY[e.op]}()(${a[0]})`;
      else if (e.op === "div" && !isFloatDType(e.dtype)) val = `kiln::OpIntDiv()(${a[0]}, ${a[1]})`;
      else if (e.op in BINARY) val = `(${C})kiln::${BINARY[e.op]}()(${a[0]}, ${a[1]})`;
      else if (e.op === "where") val = `(${a[0]} != 0 ? ${a[1]} : ${a[2]})`;
      else if (e.op === "cast") val = `(${C})${a[0]}`;
      else throw new KilnError("E_BUILD", `'${e.op}' in an elementwise expression has no code generator`);
    }
    const v = `t${t++}`;
    lines.push(`const ${C} ${v} = kiln::rnd<${CTYPE[e.dtype]}>(${val});`);
    return v;
  };
  const root = gen(parseExpr(n.attrs.expr as string));
  type Read = (typeof reads)[number];
  // where operand r's value of element i is
  // The element's coordinates, computed once and shared by the strided operands: dims of size 1
  // are skipped, literal dims divide by a constant, the outermost moving dim needs no division.
  const moving = out.map((d, i) => i).filter((i) => out[i] !== 1 && strided.some((r) => r.st[i] !== "0"));
  const lowest = out.findIndex((d) => d !== 1);
  const coords: string[] = [];
  if (strided.length) {
    coords.push("int64_t q_ = i;");
    for (let i = out.length - 1; i >= 0; i--) {
      if (out[i] === 1) continue;
      if (i < (moving[0] ?? out.length)) break;
      const d = typeof out[i] === "number" ? `(int64_t)${out[i]}` : `out.d[${i}]`;
      if (i === lowest) coords.push(`const int64_t c${i} = q_;`);
      else coords.push(`int64_t c${i}; q_ = kiln::divmod(q_, ${d}, &c${i});`);
      if (!moving.includes(i)) coords.push(`(void)c${i};`);
    }
    coords.push("(void)q_;");
  }
  const dot = (r: Read): string => {
    const terms = moving.filter((i) => r.st[i] !== "0").map((i) => `c${i} * s${r.k}.s[${i}]`);
    return terms.length ? terms.join(" + ") : "0";
  };
  const offset = (r: Read): string =>
    r.kind === "contig"
      ? "i"
      : r.kind === "scalar"
        ? "0"
        : r.view?.table
          ? `${dot(r)} + g${r.k}[i % ${r.view.table.values.length}]`
          : dot(r);
  const chunkLoad = (r: Read): string =>
    r.kind === "contig" || r.kind === "row" || r.kind === "view"
      ? `${r.C} x${r.k}[W]; kiln::load_run<W>(x${r.k}, a${r.k} + ${offset(r)});`
      : `const ${r.C} x${r.k} = kiln::Num<${r.T}>::load(a${r.k}[${offset(r)}]);`;
  const aligned = ["y", ...runs.map((r) => `a${r.k}`)].map((p) => `kiln::aligned16(${p})`);
  if (strided.length) aligned.push("out.d[out.rank - 1] % W == 0");
  if (reads.some((r) => r.view?.table && !tableRuns(r.view.table.values))) aligned.push("false");
  const functor = [
    `// ${n.attrs.expr as string}`,
    `struct F${id} {`,
    ...reads.map(
      (r) => `  const ${r.T}* a${r.k};${r.kind === "row" || r.kind === "col" || r.kind === "view" ? ` kiln::Strides s${r.k};` : ""}${r.view?.table ? ` const ${CTYPE[r.view.table.value.dtype]}* g${r.k};` : ""} // ${r.kind}`,
    ),
    `  ${T}* y;`,
    `  kiln::Shape out;`,
    `  static constexpr int W = ${W};`,
    `  KILN_HD ${T} at(${reads.map((r) => `const ${r.C} x${r.k}`).join(", ")}) const {`,
    ...lines.map((l) => `    ${l}`),
    // the root is already rounded to T (rnd<T>): a bf16 store is then its upper half
    n.result.dtype === "bf16" ? `    return kiln::bf16_of_rounded(${root});` : `    return kiln::Num<${T}>::store(${root});`,
    `  }`,
    `  KILN_HD void operator()(int64_t i) const {`,
    ...coords.map((l) => `    ${l}`),
    `    y[i] = at(${reads.map((r) => `kiln::Num<${r.T}>::load(a${r.k}[${offset(r)}])`).join(", ")});`,
    `  }`,
    `  KILN_HD void chunk(int64_t i) const {`,
    ...coords.map((l) => `    ${l}`),
    ...reads.map((r) => `    ${chunkLoad(r)}`),
    `    ${T} r[W];`,
    `    KILN_UNROLL`,
    `    for (int j = 0; j < W; j++) r[j] = at(${reads.map((r) => (r.kind === "contig" || r.kind === "row" || r.kind === "view" ? `x${r.k}[j]` : `x${r.k}`)).join(", ")});`,
    `    kiln::store_run<W>(y + i, r);`,
    `  }`,
    `  bool chunkable() const { return ${aligned.join(" && ")}; }`,
    `};`,
  ].join("\n");
  const init = reads.map((r) =>
    r.kind === "row" || r.kind === "col" || r.kind === "view"
      ? `${name.get(r.v.id)}, ${stridesLit(r.st)}${r.view?.table ? `, ${name.get(r.view.table.value.id)}` : ""}`
      : name.get(r.v.id)!,
  );
  return { functor, call: `K::for_each(F${id}{${init.join(", ")}, v${id}, ${shapeLit(out.map(cdim))}}, ${cprod(out)});` };
}

/** An attention's ALiBi slopes as `a<id>`, living in the library and uploaded once (constant ids past the graph's value ids); no lines without slopes. */
function alibiTable(n: Node): string[] {
  const slopes = (n.attrs.alibi as number[] | undefined) ?? [];
  if (!slopes.length) return [];
  return [
    `static const float alibi${n.result.id}[] = {${slopes.map((x) => `${fmtDouble(Math.fround(x))}f`).join(", ")}};`,
    `const float* a${n.result.id} = (const float*)rt::constant(${ALIBI_CONSTANT_BASE + n.result.id}, alibi${n.result.id}, sizeof(alibi${n.result.id}));`,
  ];
}

/** The kernel call(s) of one op writing into its fresh buffer `v<id>`. */
function emitOp(n: Node, name: Map<number, string>, where: string, constants: Map<number, number[]>, layout: { views: Map<number, View>; attnOut: Map<number, Node> }): string[] {
  const y = `v${n.result.id}`;
  const out = n.result.shape;
  const xs = n.operands.map((v) => name.get(v.id)!);
  const [x0] = n.operands;
  const T = CTYPE[n.result.dtype];
  const axisOf = (rank: number): number => {
    const a = n.attrs.axis as number;
    return a < 0 ? a + rank : a;
  };
  switch (n.op) {
    case "full":
      return [`K::fill<${T}>(${y}, ${fmtDouble(n.attrs.value as number)}, ${cprod(out)});`];
    case "arange":
      return [`K::arange<${T}>(${y}, ${cdim(n.attrs.start as Dim)}, ${cprod(out)});`];
    case "matmul": {
      const [a, b] = n.operands;
      const r = out.length;
      const batch = out.slice(0, r - 2);
      const [M, N] = out.slice(-2);
      const K = a.shape[a.shape.length - 1];
      // each operand's matrix stride over the broadcast batch dims
      const bstr = (v: Value): string[] => {
        const vb = v.shape.slice(0, -2);
        const mat = cprod(v.shape.slice(-2));
        const own = vb.map((_d, i) => `${cprod(vb.slice(i + 1))} * ${mat}`);
        const off = batch.length - vb.length;
        return batch.map((_d, i) => (i < off || vb[i - off] === 1 ? "0" : own[i - off]));
      };
      return [
        `K::matmul<${T}>(${xs[0]}, ${xs[1]}, ${y}, ${shapeLit(batch.map(cdim))}, ${stridesLit(bstr(a))}, ${stridesLit(bstr(b))}, ` +
          `${cdim(M)}, ${cdim(N)}, ${cdim(K)});`,
      ];
    }
    case "linear": {
      // operands x, w [, bias] [, residual] (fuse-residual's epilogue: the last one, of y's shape)
      const [x, w] = n.operands;
      const K = w.shape[1];
      const res = n.attrs.residual === true ? xs[xs.length - 1] : "nullptr";
      const bias = xs.length - (n.attrs.residual === true ? 1 : 0) > 2 ? xs[2] : "nullptr";
      return [`K::linear<${T}>(${xs[0]}, ${xs[1]}, ${bias}, ${res}, ${y}, ${cprod(x.shape.slice(0, -1))}, ${cdim(w.shape[0])}, ${cdim(K)});`];
    }
    case "softmax":
    case "reduce_sum":
    case "reduce_mean":
    case "reduce_max": {
      const s = x0.shape;
      const ax = axisOf(s.length);
      const dims = `${cprod(s.slice(0, ax))}, ${cdim(s[ax])}, ${cprod(s.slice(ax + 1))}`;
      return n.op === "softmax" ? [`K::softmax<${T}>(${xs[0]}, ${y}, ${dims});`] : [`K::reduce<K::${REDUCE[n.op]}, ${T}>(${xs[0]}, ${y}, ${dims});`];
    }
    case "argmax": {
      // rows of the last axis; one i64 per row (ARGMAX_NONE where a row has no token to pick)
      const s = x0.shape;
      return [`K::argmax<${CTYPE[x0.dtype]}>(${xs[0]}, ${y}, ${cprod(s.slice(0, -1))}, ${cdim(s[s.length - 1])});`];
    }
    case "transpose": {
      const perm = n.attrs.perm as number[];
      const own = cstrides(x0.shape);
      return [`K::copy_strided<${T}>(${xs[0]}, ${y}, ${shapeLit(out.map(cdim))}, ${stridesLit(perm.map((p) => own[p]))}, ${stridesLit(cstrides(out))});`];
    }
    case "expand":
      return [`K::copy_strided<${T}>(${xs[0]}, ${y}, ${shapeLit(out.map(cdim))}, ${stridesLit(broadcastStrides(x0.shape, out))}, ${stridesLit(cstrides(out))});`];
    case "slice": {
      const ax = axisOf(x0.shape.length);
      const own = cstrides(x0.shape);
      return [
        `K::copy_strided<${T}>(${xs[0]} + ${cdim(n.attrs.start as Dim)} * ${own[ax]}, ${y}, ${shapeLit(out.map(cdim))}, ${stridesLit(own)}, ${stridesLit(cstrides(out))});`,
      ];
    }
    case "concat": {
      const ax = axisOf(out.length);
      const outStr = cstrides(out);
      const lines: string[] = [];
      let offset: string[] = [];
      n.operands.forEach((v, j) => {
        const at = offset.length ? `(${offset.join(" + ")}) * ${outStr[ax]}` : "0";
        lines.push(`K::copy_strided<${T}>(${xs[j]}, ${y} + ${at}, ${shapeLit(v.shape.map(cdim))}, ${stridesLit(cstrides(v.shape))}, ${stridesLit(outStr)});`);
        offset = [...offset, cdim(v.shape[ax])];
      });
      return lines;
    }
    case "flash_attention": {
      const [q, , v] = n.operands;
      const io = attentionIO(n, layout.views, layout.attnOut.get(n.result.id));
      const [pq, pk, pv] = io.read.map((x) => name.get(x.id)!);
      const [B, Hq, S, D] = q.shape;
      const [, Hkv, Tk, Dv] = v.shape;
      const dims = [B, Hq, Hkv, S, Tk, D, Dv].map(cdim).join(", ");
      const hasMask = n.attrs.key_mask === true;
      const varlen = n.attrs.varlen === true;
      // the static cache's position (target memory), or nullptr: aligned to the end; then the key
      // mask or the packed sequences' cu_seqlens
      const offset = n.operands.length > (hasMask || varlen ? 4 : 3) ? xs[3] : "nullptr";
      const mask = hasMask ? xs[xs.length - 1] : "nullptr";
      const cu = varlen ? `${xs[xs.length - 1]}, ${cdim(n.operands[n.operands.length - 1].shape[0])}` : "nullptr, 0";
      const lines = alibiTable(n);
      const alibi = lines.length ? `a${n.result.id}` : "nullptr";
      lines.push(`K::flash_attention<${T}>(${pq}, ${pk}, ${pv}, ${y}, ${dims}, ${fmtDouble(n.attrs.scale as number)}, ${n.attrs.causal ? "true" : "false"}, ${offset}, ${alibi}, ${mask}, ${cu}, ${(n.attrs.window as number | undefined) ?? 0}${io.layout ? `, ${io.layout}` : ""});`);
      return lines;
    }
    case "varlen_cache_positions":
      return [`K::varlen_cache_positions(${xs[0]}, ${xs[1]}, ${y}, ${cdim(n.operands[1].shape[0])}, ${cdim(out[0])});`];
    case "varlen_cache_attention": {
      const [q, , v, , slot] = n.operands;
      const [, Hq, Tq, D] = q.shape;
      const [B, Hkv, C, Dv] = v.shape;
      const dims = [slot.shape[0], B, Hq, Hkv, Tq, C, D, Dv].map(cdim).join(", ");
      const lines = alibiTable(n);
      const alibi = lines.length ? `a${n.result.id}` : "nullptr";
      lines.push(`K::varlen_cache_attention<${T}>(${xs.slice(0, 6).join(", ")}, ${y}, ${dims}, ${fmtDouble(n.attrs.scale as number)}, ${alibi}, ${(n.attrs.window as number | undefined) ?? 0});`);
      return lines;
    }
    case "rms_norm":
    case "layer_norm": {
      // rows of the last dim; the weight (and bias) [D] of x's dtype (cpu/kernels.h, cuda/norm.cuh)
      const rows = cprod(x0.shape.slice(0, -1));
      const D = cdim(x0.shape[x0.shape.length - 1]);
      const eps = fmtDouble(n.attrs.eps as number);
      if (n.op === "rms_norm") return [`K::rms_norm<${T}>(${xs[0]}, ${xs[1]}, ${y}, ${rows}, ${D}, ${eps});`];
      return [`K::layer_norm<${T}>(${xs[0]}, ${xs[1]}, ${xs[2] ?? "nullptr"}, ${y}, ${rows}, ${D}, ${eps});`];
    }
    case "mask_positions":
      return [`K::mask_positions(${xs[0]}, ${y}, ${cdim(x0.shape[0])}, ${cdim(x0.shape[1])});`];
    case "varlen_positions":
      return [`K::varlen_positions(${xs[0]}, ${y}, ${cdim(x0.shape[0])}, ${cdim(out[1])});`];
    case "gather": {
      const [x, idx] = n.operands;
      const ax = axisOf(x.shape.length);
      const n0 = cdim(x.shape[ax]);
      // constant indices are checked here, once, instead of on every run
      const known = constants.get(idx.id);
      const len = x.shape[ax];
      if (known && typeof len === "number") {
        const bad = known.findIndex((i) => !(Number.isInteger(i) && i >= 0 && i < len));
        if (bad >= 0) throw new KilnError("E_BUILD", `${where}: constant index ${known[bad]} at position ${bad} is out of range [0, ${len})`);
      }
      const check = known && typeof len === "number" ? "false" : "true";
      return [
        `{ int64_t bad = K::gather<${T}, ${CTYPE[idx.dtype]}>(${xs[0]}, ${xs[1]}, ${y}, ${cprod(x.shape.slice(0, ax))}, ${n0}, ${cprod(x.shape.slice(ax + 1))}, ${cprod(idx.shape)}, ${check});`,
        `  if (bad >= 0) rt::fail(KILN_ERR_INVALID, "%s: index %lld at position %lld is out of range [0, %lld)", ${cstr(where)}, (long long)rt::read_index(${xs[1]}, bad), (long long)bad, (long long)${n0}); }`,
      ];
    }
  }
  throw new KilnError("E_BUILD", `op '${n.op}' has no code generator (${where})`);
}
