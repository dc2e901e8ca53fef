// unpad-varlen — a padded batch runs on its real tokens only.
// Matches: a graph with inputs input_ids [B, S] and Hugging Face's attention_mask [B, S] (no KV
//   cache), whose mask is read only by mask_positions (the DSL's positionIds) and by fused
//   attention as its key mask (fuse-attention runs first), and whose other ops are token-wise:
//   nothing mixes tokens but attention.
// Rewrites it to the packed form of FlashAttention-2's variable-length API (Dao, 2023): inputs
//   input_ids [1, T] (the T real tokens of the B sequences, end to end) and cu_seqlens i32 [B + 1]
//   (sequence s is tokens [cu_seqlens[s], cu_seqlens[s+1])); every value with the sequence axis
//   becomes the same value over [1, T] (B → 1, S → T in its shape and in its node's dims), position
//   ids (mask_positions, and token indices arange(0, S): a right-padded row's positions) come from
//   varlen_positions(cu_seqlens), attention becomes flash_attention{varlen} (each
//   query sees its own sequence only), and a value taken at each sequence's first token (BERT's
//   pooler: slice [0, 1) of the sequence axis) becomes a gather at cu_seqlens[0..B). Outputs over
//   the tokens come out packed ([1, T, …]) and the runtime puts them back into rows, or with the
//   option lastToken are taken at each sequence's last token ([B, 1, …]: the logits a prefill needs).
// Guarantees: at every real position, the packed graph computes what the padded graph computes
//   there (test/unpad-varlen.test.ts, random masks on the interpreter); padding is never computed.
// Leaves alone, saying why: a graph with a KV cache, a mask read by anything else, attention that is
//   not fused with the mask, and ops that reduce, slice, gather or concatenate along the sequence
//   axis or contract over it.
// With the option varlenCache (compile's kvCache "varlen"), it takes a static-cache graph instead
//   (input_ids [B, S], the i64 scalar cache_position, past.* [B, Hkv, C, D] written by cache_write,
//   attention fused as flash_attention{causal} offset by cache_position) and packs it the same way
//   into the varlen cache of vLLM (Kwon et al., 2023: a cache row per sequence, here contiguous,
//   no paging): inputs input_ids [1, T], cu_seqlens i32 [N + 1], cache_slot i32 [N] and
//   cache_position i64 [N] (each sequence's row and past length), past.* [B, Hkv, C, D] with B now
//   the number of cache rows; query positions arange(0, S) + cache_position become
//   varlen_cache_positions, cache_write becomes varlen_cache_write and attention
//   varlen_cache_attention (ops.ts). One graph then serves packed prefill, decode of the unfinished
//   rows only, and any mix. Leaves alone a cache read by anything but its write, cache_position
//   read by anything but those three, and attention that does not read the written caches.

import type { Dim } from "../ir/dim.js";
import { canonDim, dimEq, dimSymbols } from "../ir/dim.js";
import type { Graph, Node, Value } from "../ir/graph.js";
import { GraphBuilder, locString } from "../ir/graph.js";
import { inferNode } from "../ir/verify.js";
import { dce } from "./dce.js";
import type { Pass } from "./manager.js";

const mentions = (d: Dim, sym: string): boolean => typeof d === "string" && dimSymbols(d).includes(sym);

export interface UnpadOptions {
  /** outputs over the tokens are taken at each sequence's last token only ([B, 1, …]): prefill for generation */
  lastToken?: boolean;
  /** pack a static-cache graph into the varlen cache (cache rows per sequence; see the header) */
  varlenCache?: boolean;
}

export function unpadVarlen(g: Graph, explain: (msg: string) => void = () => {}, opts: UnpadOptions = {}): Graph {
  const ids = g.inputs.find((v) => v.name === "input_ids");
  const cached = opts.varlenCache === true;
  const mask = cached ? undefined : g.inputs.find((v) => v.name === "attention_mask");
  const position = cached ? g.inputs.find((v) => v.name === "cache_position") : undefined;
  if (!ids || (!cached && !mask)) {
    explain("not unpadded: the graph has no attention_mask and input_ids inputs (not a padded batch)");
    return g;
  }
  if (cached && (!position || position.shape.length !== 0 || g.inputs.some((v) => v.name === "attention_mask"))) {
    explain("not packed: the varlen cache takes a graph traced with the static KV cache (a scalar cache_position) and no attention_mask");
    return g;
  }
  if (!cached && g.inputs.some((v) => v.name.startsWith("past.") || v.name === "cache_position")) {
    explain("not unpadded: the graph has a KV cache (unpad-varlen takes prefill and encoder graphs: compile with kvCache \"none\" / --kv-cache none, or \"varlen\" for a packed cache)");
    return g;
  }
  const [B, S] = ids.shape;
  if (typeof B !== "string" || typeof S !== "string" || ids.shape.length !== 2 || (mask && !mask.shape.every((d, i) => dimEq(d, ids.shape[i])))) {
    explain(`not unpadded: input_ids ${ids.shape.join(", ")}${mask ? ` and attention_mask ${mask.shape.join(", ")} are not the same [B, S] (a KV cache?)` : " is not [B, S]"}`);
    return g;
  }
  const pasts = new Set(g.inputs.filter((v) => v.name.startsWith("past.")).map((v) => v.id));
  const fresh = (names: string[]) => names.find((t) => !g.inputs.some((v) => v.shape.some((d) => mentions(d, t))))!;
  const T = fresh(["T", "T_", "T__"]);
  // sequences in a call: B itself for a padded batch; with the varlen cache B counts cache rows
  const N = cached ? fresh(["N", "N_", "N__"]) : B;
  const at = (n: Node) => (n.loc ? ` at ${locString(n.loc)}` : "");
  const seqAxis = (v: Value): number => v.shape.findIndex((d) => mentions(d, S));
  const axisOf = (n: Node, rank: number) => {
    const a = n.attrs.axis as number;
    return a < 0 ? a + rank : a;
  };

  // why a node cannot run on packed tokens, if it cannot
  const refuse = (n: Node): string | undefined => {
    for (const [k, x] of n.operands.entries()) {
      if (position && x.id === position.id) {
        if (n.op === "cache_write" && k === 2) continue;
        if (n.op === "flash_attention" && k === 3) continue;
        if (n.op === "add" && queryArange(n)) continue;
        return `${n.op}${at(n)} reads cache_position (only the query positions arange(0, ${S}) + cache_position, cache_write and attention may)`;
      }
      if (pasts.has(x.id) && !(n.op === "cache_write" && k === 0)) return `${n.op}${at(n)} reads the cache ${x.name} (only its cache_write may)`;
      if (mask && x.id === mask.id) {
        if (n.op === "mask_positions") continue;
        if (n.op === "flash_attention" && n.attrs.key_mask === true && k === n.operands.length - 1) continue;
        return `${n.op}${at(n)} reads the attention_mask`;
      }
    }
    if (n.op === "arange" && n.result.shape.some((d) => mentions(d, S)) && !(dimEq(n.attrs.start as Dim, 0) && dimEq(n.attrs.end as Dim, S)))
      return `arange${at(n)} is not the token index 0..${S}`;
    const x = n.operands[0];
    const ax = x ? seqAxis(x) : -1;
    if (n.op === "flash_attention" && cached) {
      const [, k, v, offset] = n.operands;
      if (n.attrs.key_mask === true || n.attrs.varlen === true || offset?.id !== position!.id) return `attention${at(n)} is not causal from the static cache's position`;
      return writes.has(k.id) && writes.has(v.id) ? undefined : `attention${at(n)} does not read the caches cache_write wrote`;
    }
    if (n.op === "flash_attention") return n.attrs.key_mask === true ? undefined : `attention${at(n)} is not masked by the attention_mask (it would mix sequences)`;
    if (ax < 0 && !n.operands.some((o) => seqAxis(o) >= 0)) return undefined;
    if (["softmax", "reduce_sum", "reduce_mean", "reduce_max", "argmax"].includes(n.op) && axisOf(n, x.shape.length) === ax) return `${n.op}${at(n)} reduces along the sequence`;
    if (n.op === "slice" && axisOf(n, x.shape.length) === ax) {
      const [s0, s1] = [n.attrs.start as Dim, n.attrs.end as Dim];
      if (dimEq(s0, 0) && (dimEq(s1, S) || (dimEq(s1, 1) && dimEq(x.shape[ax], S) && ax === 1 && dimEq(x.shape[0], B)))) return undefined;
      return `slice${at(n)} cuts the sequence`;
    }
    if ((n.op === "gather" || n.op === "concat") && axisOf(n, x.shape.length) === ax) return `${n.op}${at(n)} works along the sequence`;
    if (n.op === "matmul") {
      const [a, b] = n.operands;
      if (mentions(a.shape[a.shape.length - 1], S) || mentions(b.shape[b.shape.length - 2], S)) return `matmul${at(n)} contracts over the sequence`;
    }
    if (n.op === "cache_write") return cached && pasts.has(x.id) ? undefined : `${n.op}${at(n)} is not token-wise`;
    return undefined;
  };
  // only what the outputs need (fuse-attention leaves the eager nodes for dce)
  const nodes = dce(g).nodes;
  const def = new Map(nodes.map((n) => [n.result.id, n]));
  /** add(arange(0, S) : i64, cache_position): the static cache's query positions */
  const queryArange = (n: Node): boolean => {
    const other = n.operands.find((o) => o.id !== position?.id);
    const ar = other && def.get(other.id);
    return n.operands.length === 2 && ar?.op === "arange" && ar.result.dtype === "i64" && dimEq(ar.attrs.start as Dim, 0) && dimEq(ar.attrs.end as Dim, S);
  };
  const writes = new Set(nodes.filter((n) => n.op === "cache_write").map((n) => n.result.id));
  // a written cache is read by its attention and the outputs only
  for (const n of nodes)
    for (const x of n.operands)
      if (writes.has(x.id) && n.op !== "flash_attention") {
        explain(`not packed: ${n.op}${at(n)} reads a written KV cache`);
        return g;
      }
  for (const n of nodes) {
    const why = refuse(n);
    if (why) {
      explain(`not unpadded: ${why}`);
      return g;
    }
  }

  // rewrite: B → 1 and S → T in every shape that has the sequence axis
  const pack = (d: Dim): Dim => (typeof d === "string" ? canonDim(d.replace(new RegExp(`\\b${S}\\b`, "g"), T).replace(new RegExp(`\\b${B}\\b`, "g"), "1")) : d);
  const packShape = (shape: readonly Dim[]): Dim[] => (shape.some((d) => mentions(d, S)) ? shape.map(pack) : [...shape]);
  const b = new GraphBuilder(g.name);
  const map = new Map<number, Value>();
  const newIds = b.input("input_ids", { dtype: ids.dtype, shape: [1, T] });
  const cu = b.input("cu_seqlens", { dtype: "i32", shape: [`${N}+1`] });
  const slots = cached ? b.input("cache_slot", { dtype: "i32", shape: [N] }) : undefined;
  const starts = cached ? b.input("cache_position", { dtype: "i64", shape: [N] }) : undefined;
  map.set(ids.id, newIds);
  for (const v of g.inputs) if (v !== ids && v !== mask && v !== position) map.set(v.id, b.input(v.name, { dtype: v.dtype, shape: packShape(v.shape) }));
  for (const v of g.params) map.set(v.id, b.param(v.name, { dtype: v.dtype, shape: v.shape }));
  const get = (v: Value): Value => map.get(v.id)!;
  let attentions = 0;
  for (const n of nodes) {
    const emit = (op: string, operands: Value[], attrs: Node["attrs"]): Value => {
      const type = inferNode({ op, operands, attrs, loc: n.loc });
      return b.node(op, operands, attrs, type, n.loc);
    };
    if (cached && n.op === "add" && n.operands.some((o) => o.id === position!.id)) {
      map.set(n.result.id, emit("varlen_cache_positions", [cu, starts!], { length: T }));
      continue;
    }
    if (cached && n.op === "cache_write") {
      const [past, update] = n.operands;
      map.set(n.result.id, emit("varlen_cache_write", [get(past), get(update), cu, slots!, starts!], {}));
      continue;
    }
    if (cached && n.op === "flash_attention") {
      const { scale, kv_groups, alibi, window } = n.attrs;
      const attrs = { scale, kv_groups, ...(alibi ? { alibi } : {}), ...(window ? { window } : {}) };
      map.set(n.result.id, emit("varlen_cache_attention", [...n.operands.slice(0, 3).map(get), cu, slots!, starts!], attrs));
      attentions++;
      continue;
    }
    if (n.op === "mask_positions") {
      map.set(n.result.id, emit("varlen_positions", [cu], { length: T }));
      continue;
    }
    if (n.op === "flash_attention") {
      const { key_mask: _k, ...attrs } = n.attrs;
      map.set(n.result.id, emit("flash_attention", [...n.operands.slice(0, -1).map(get), cu], { ...attrs, varlen: true }));
      attentions++;
      continue;
    }
    if (n.op === "arange" && n.result.shape.some((d) => mentions(d, S))) {
      // token indices along the sequence become each token's index within its own sequence (what
      // they are in a right-padded row; BERT's absolute positions, ALiBi's key positions)
      const pos = emit("varlen_positions", [cu], { length: T });
      const typed = n.result.dtype === "f32" ? pos : emit("cast", [pos], { to: n.result.dtype });
      map.set(n.result.id, emit("reshape", [typed], { shape: packShape(n.result.shape) }));
      continue;
    }
    const x = n.operands[0];
    if (n.op === "slice" && seqAxis(x) >= 0 && axisOf(n, x.shape.length) === seqAxis(x) && dimEq(n.attrs.end as Dim, 1) && !dimEq(x.shape[seqAxis(x)], 1)) {
      // each sequence's first token ([B, S, H] → [B, 1, H]): gather the packed rows at cu_seqlens[0..B)
      const px = get(x);
      const rows = emit("reshape", [px], { shape: [T, ...px.shape.slice(2)] });
      const firsts = emit("gather", [rows, emit("slice", [cu], { axis: 0, start: 0, end: N })], { axis: 0 });
      map.set(n.result.id, emit("reshape", [firsts], { shape: n.result.shape }));
      continue;
    }
    if (n.op === "slice" && seqAxis(x) >= 0 && axisOf(n, x.shape.length) === seqAxis(x)) {
      map.set(n.result.id, get(x)); // the whole sequence: nothing to cut
      continue;
    }
    const attrs: Node["attrs"] = { ...n.attrs };
    if (n.result.shape.some((d) => mentions(d, S)) || n.operands.some((o) => seqAxis(o) >= 0))
      for (const k of ["shape", "start", "end"]) {
        const a = attrs[k];
        if (Array.isArray(a)) attrs[k] = (a as Dim[]).map(pack);
        else if (typeof a === "string") attrs[k] = pack(a);
      }
    map.set(n.result.id, emit(n.op, n.operands.map(get), attrs));
  }
  let lastIdx: Value | undefined;
  for (const o of g.outputs) {
    const v = get(o.value);
    if (!opts.lastToken || v.shape.length < 2 || !dimEq(v.shape[0], 1) || !dimEq(v.shape[1], T)) {
      b.output(o.name, v);
      continue;
    }
    // each sequence's last token: rows cu_seqlens[1..B] − 1 of the packed [T, …]
    const node = (op: string, operands: Value[], attrs: Node["attrs"]): Value => b.node(op, operands, attrs, inferNode({ op, operands, attrs }));
    if (!lastIdx) {
      const ends = node("slice", [cu], { axis: 0, start: 1, end: `${N}+1` });
      lastIdx = node("sub", [ends, node("full", [], { value: 1, shape: [], dtype: "i32" })], {});
    }
    const rows = node("reshape", [v], { shape: [T, ...v.shape.slice(2)] });
    const last = node("gather", [rows, lastIdx], { axis: 0 });
    b.output(o.name, node("reshape", [last], { shape: [N, 1, ...v.shape.slice(2)] }));
  }
  explain(
    cached
      ? `packed with the varlen cache: ${attentions} attention(s) read each sequence's cache row (cache_slot, cache_position) for the packed tokens [1, ${T}] of ${N} sequences`
      : `unpadded: ${attentions} attention(s) run varlen over the packed tokens [1, ${T}] of ${B} sequences (cu_seqlens); outputs over the tokens come out packed`,
  );
  return b.graph;
}

export const unpadVarlenPass: Pass = {
  name: "unpad-varlen",
  description: "a padded batch (input_ids + attention_mask) becomes packed tokens with cu_seqlens: no work on padding",
  run: (g, ctx) => unpadVarlen(g, (m) => ctx.explain(m), { lastToken: ctx.options.lastToken === true, varlenCache: ctx.options.varlenCache === true }),
};
