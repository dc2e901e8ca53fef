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
}

export function unpadVarlen(g: Graph, explain: (msg: string) => void = () => {}, opts: UnpadOptions = {}): Graph {
  const mask = g.inputs.find((v) => v.name === "attention_mask");
  const ids = g.inputs.find((v) => v.name === "input_ids");
  if (!mask || !ids) {
    explain("not unpadded: the graph has no attention_mask and input_ids inputs (not a padded batch)");
    return g;
  }
  if (g.inputs.some((v) => v.name.startsWith("past.") || v.name === "cache_position")) {
    explain("not unpadded: the graph has a KV cache (unpad-varlen takes prefill and encoder graphs: compile with kvCache \"none\" / --kv-cache none)");
    return g;
  }
  const [B, S] = ids.shape;
  if (typeof B !== "string" || typeof S !== "string" || ids.shape.length !== 2 || !mask.shape.every((d, i) => dimEq(d, ids.shape[i]))) {
    explain(`not unpadded: input_ids ${ids.shape.join(", ")} and attention_mask ${mask.shape.join(", ")} are not the same [B, S] (a KV cache?)`);
    return g;
  }
  const T = ["T", "T_", "T__"].find((t) => !g.inputs.some((v) => v.shape.some((d) => mentions(d, t))))!;
  const at = (n: Node) => (n.loc ? ` at ${locString(n.loc)}` : "");
  const seqAxis = (v: Value): number => v.shape.findIndex((d) => mentions(d, S));
  const axisOf = (n: Node, rank: number) => {
    const a = n.attrs.axis as number;
    return a < 0 ? a + rank : a;
  };

  // why a node cannot run on packed tokens, if it cannot
  const refuse = (n: Node): string | undefined => {
    for (const [k, x] of n.operands.entries()) {
      if (x.id === mask.id) {
        if (n.op === "mask_positions") continue;
        if (n.op === "flash_attention" && n.attrs.key_mask === true && k === n.operands.length - 1) continue;
        return `${n.op}${at(n)} reads the attention_mask`;
      }
    }
    if (n.op === "arange" && n.result.shape.some((d) => mentions(d, S)) && !(dimEq(n.attrs.start as Dim, 0) && dimEq(n.attrs.end as Dim, S)))
      return `arange${at(n)} is not the token index 0..${S}`;
    const x = n.operands[0];
    const ax = x ? seqAxis(x) : -1;
    if (n.op === "flash_attention") return n.attrs.key_mask === true ? undefined : `attention${at(n)} is not masked by the attention_mask (it would mix sequences)`;
    if (ax < 0 && !n.operands.some((o) => seqAxis(o) >= 0)) return undefined;
    if (["softmax", "reduce_sum", "reduce_mean", "reduce_max"].includes(n.op) && axisOf(n, x.shape.length) === ax) return `${n.op}${at(n)} reduces along the sequence`;
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
    if (n.op === "cache_write") return `${n.op}${at(n)} is not token-wise`;
    return undefined;
  };
  // only what the outputs need (fuse-attention leaves the eager nodes for dce)
  const nodes = dce(g).nodes;
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
  const cu = b.input("cu_seqlens", { dtype: "i32", shape: [`${B}+1`] });
  map.set(ids.id, newIds);
  for (const v of g.inputs) if (v !== ids && v !== mask) map.set(v.id, b.input(v.name, { dtype: v.dtype, shape: packShape(v.shape) }));
  for (const v of g.params) map.set(v.id, b.param(v.name, { dtype: v.dtype, shape: v.shape }));
  const get = (v: Value): Value => map.get(v.id)!;
  let attentions = 0;
  for (const n of nodes) {
    const emit = (op: string, operands: Value[], attrs: Node["attrs"]): Value => {
      const type = inferNode({ op, operands, attrs, loc: n.loc });
      return b.node(op, operands, attrs, type, n.loc);
    };
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
      const starts = emit("slice", [cu], { axis: 0, start: 0, end: B });
      const firsts = emit("gather", [rows, starts], { axis: 0 });
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
      const ends = node("slice", [cu], { axis: 0, start: 1, end: `${B}+1` });
      lastIdx = node("sub", [ends, node("full", [], { value: 1, shape: [], dtype: "i32" })], {});
    }
    const rows = node("reshape", [v], { shape: [T, ...v.shape.slice(2)] });
    const last = node("gather", [rows, lastIdx], { axis: 0 });
    b.output(o.name, node("reshape", [last], { shape: [B, 1, ...v.shape.slice(2)] }));
  }
  explain(`unpadded: ${attentions} attention(s) run varlen over the packed tokens [1, ${T}] of ${B} sequences (cu_seqlens); outputs over the tokens come out packed`);
  return b.graph;
}

export const unpadVarlenPass: Pass = {
  name: "unpad-varlen",
  description: "a padded batch (input_ids + attention_mask) becomes packed tokens with cu_seqlens: no work on padding",
  run: (g, ctx) => unpadVarlen(g, (m) => ctx.explain(m), { lastToken: ctx.options.lastToken === true }),
};
