// The 4-bit linears that read one activation run as one call (compiler/codegen/qlinear-groups.ts):
// which qlinears group and which pair with silu·up (and which must not); the emitted source of a
// tiny nf4 Llama (q/k/v → one qlinear4_group call, gate/up → one qlinear4_silu_mul call, the
// elementwise product gone); which RMSNorms their calls compute (read only by 4-bit linears: the
// `_norm` calls behind K::norm_fused); and on the cpu target the same logits and tokens, bit for
// bit, with and without grouping (f32 and bf16).

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import { elementwiseViews, emitSource, inPlaceCacheWrites } from "../compiler/codegen/emit.js";
import { qlinear4Groups, siluMul } from "../compiler/codegen/qlinear-groups.js";
import { ropeFusions, rotaryRoles } from "../compiler/codegen/rope-fusion.js";
import { parseExpr } from "../compiler/ir/expr.js";
import type { Attrs, Value } from "../compiler/ir/index.js";
import { GraphBuilder, inferNode } from "../compiler/ir/index.js";
import { loadModel } from "../runtime/api.js";

const FIXTURE = join(import.meta.dirname, "fixtures", "llama-gqa");
const tmp = mkdtempSync(join(tmpdir(), "kiln-qgroup-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("which 4-bit linears group", () => {
  // x → linears (nf4 unless said) and what reads them
  function graph(build: (b: { x: Value; lin: (N: number, o?: { scheme?: string; block?: number; x?: Value; res?: Value }) => Value; node: (op: string, xs: Value[], a?: Attrs) => Value; out: (v: Value) => void }) => void) {
    const b = new GraphBuilder("g");
    const node = (op: string, operands: Value[], attrs: Attrs = {}): Value => b.node(op, operands, attrs, inferNode({ op, operands, attrs }));
    const x = b.input("x", { dtype: "f32", shape: ["S", 64] });
    let k = 0;
    const lin = (N: number, o: { scheme?: string; block?: number; x?: Value; res?: Value } = {}): Value => {
      const w = b.param(`l${k++}.weight`, { dtype: "f32", shape: [N, 64] });
      const attrs: Attrs = { scheme: o.scheme ?? "nf4", block: o.block ?? 64, double_quant: false, threshold: 6, ...(o.res ? { residual: true } : {}) };
      return node("qlinear", [o.x ?? x, w, ...(o.res ? [o.res] : [])], attrs);
    };
    let j = 0;
    build({ x, lin, node, out: (v) => b.output(`y${j++}`, v) });
    return b.graph;
  }
  const ids = (g: ReturnType<typeof graph>) => qlinear4Groups(g).map((grp) => ({ members: grp.members.map((n) => n.result.id), pair: grp.pair && [grp.pair.gate.result.id, grp.pair.up.result.id, grp.pair.product.result.id] }));

  test("q/k/v of one x group; another scheme, block, x, or int8 does not", () => {
    const g = graph(({ x, lin, node, out }) => {
      const h = node("tanh", [x]);
      for (const v of [lin(64), lin(16), lin(16), lin(16, { scheme: "fp4" }), lin(16, { block: 32 }), lin(16, { scheme: "int8" }), lin(16, { x: h }), lin(8, { scheme: "fp4" })]) out(v);
    });
    const q = g.nodes.filter((n) => n.op === "qlinear").map((n) => n.result.id);
    expect(ids(g)).toEqual([
      { members: [q[0], q[1], q[2]], pair: undefined },
      { members: [q[3], q[7]], pair: undefined },
    ]);
  });

  test("gate/up read only by silu(gate)·up pair, in either operand or product order", () => {
    for (const expr of ["(mul:f32 (silu:f32 $0) $1)", "(mul:f32 $1 (silu:f32 $0))", "(mul:f32 (silu:f32 $1) $0)"]) {
      let want: number[] = [];
      const g = graph(({ lin, node, out }) => {
        const gate = lin(128), up = lin(128);
        const swapped = expr.includes("silu:f32 $1");
        const p = node("elementwise", swapped ? [up, gate] : [gate, up], { expr });
        out(p);
        want = [gate.id, up.id, p.id];
      });
      expect(ids(g)).toEqual([{ members: want.slice(0, 2), pair: want }]);
    }
  });

  test("no pair where the product is another expression, a result has another reader or is an output, or the Ns differ", () => {
    const cases: [string, (b: Parameters<Parameters<typeof graph>[0]>[0]) => void][] = [
      ["silu·silu", ({ lin, node, out }) => out(node("elementwise", [lin(128), lin(128)], { expr: "(mul:f32 (silu:f32 $0) (silu:f32 $1))" }))],
      ["gelu·up", ({ lin, node, out }) => out(node("elementwise", [lin(128), lin(128)], { expr: "(mul:f32 (gelu:f32 $0) $1)" }))],
      ["silu(gate)·gate", ({ lin, node, out }) => { const a = lin(128); lin(128); out(node("elementwise", [a, a], { expr: "(mul:f32 (silu:f32 $0) $1)" })); }],
      ["gate read twice", ({ lin, node, out }) => { const a = lin(128), u = lin(128); out(node("elementwise", [a, u], { expr: "(mul:f32 (silu:f32 $0) $1)" })); out(node("exp", [a])); }],
      ["up an output", ({ lin, node, out }) => { const a = lin(128), u = lin(128); out(node("elementwise", [a, u], { expr: "(mul:f32 (silu:f32 $0) $1)" })); out(u); }],
      ["Ns differ (up broadcast)", ({ lin, node, out }) => out(node("elementwise", [lin(128), lin(1)], { expr: "(mul:f32 (silu:f32 $0) $1)" }))],
      ["a third member", ({ lin, node, out }) => { out(node("elementwise", [lin(128), lin(128)], { expr: "(mul:f32 (silu:f32 $0) $1)" })); out(lin(16)); }],
    ];
    for (const [label, build] of cases) {
      const grps = qlinear4Groups(graph(build));
      expect({ label, groups: grps.length, pair: grps.some((g) => g.pair) }).toEqual({ label, groups: 1, pair: false });
    }
    expect(siluMul(parseExpr("(mul:bf16 (silu:f32 $0) $1)"), "bf16")).toBeUndefined(); // every node in T
    expect(siluMul(parseExpr("(mul:f32 (silu:f32 $0) $1)"), "f32")).toEqual({ gate: 0, up: 1 });
  });

  test("a linear reading a residual computed after the group's first member runs alone", () => {
    const g = graph(({ x, lin, out }) => {
      const q = lin(64);
      out(q);
      out(lin(64, { res: q })); // reads q: cannot run in q's call
      out(lin(16));
    });
    const q = g.nodes.filter((n) => n.op === "qlinear").map((n) => n.result.id);
    expect(ids(g)).toEqual([{ members: [q[0], q[2]], pair: undefined }]);
  });
});

// An RMSNorm whose every reader is a 4-bit linear is computed by them where the target can
// (K::norm_fused: the cuda decode GEMV k_qgemv4p): the norm is emitted behind that flag and its
// readers as the `_norm` calls. Any other reader (an output, an int8 or 16-bit linear, a linear
// reading it as its residual) keeps the norm as it was.
describe("the rotary expression", () => {
  test("its roles in any operand order, the sign cast or not; anything else is not it", () => {
    const key = (r: { x: number; cos: number; xr: number; sign: number; sin: number; signCast: boolean }) => `${r.x}${r.cos}${r.xr}${r.sign}${r.sin}${r.signCast}`;
    // x/cos and xr/sign are told apart by the operands (the caller): every assignment is offered
    expect(rotaryRoles(parseExpr("(add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 $3) $4))"), "bf16").map(key).sort()).toEqual(["01234false", "01324false", "10234false", "10324false"]);
    // the sign cast inside: only it can be the sign
    expect(rotaryRoles(parseExpr("(add:bf16 (mul:bf16 $4 (mul:bf16 (cast:bf16 $3) $2)) (mul:bf16 $1 $0))"), "bf16").map(key).sort()).toEqual(["01234true", "10234true"]);
    for (const e of [
      "(add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 $3) $4))", // another dtype asked
      "(sub:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 $3) $4))",
      "(add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 $3) $3))", // an operand twice
      "(add:bf16 (mul:bf16 $0 $1) (mul:bf16 (add:bf16 $2 $3) $4))",
      "(add:bf16 (mul:f32 $0 $1) (mul:bf16 (mul:bf16 $2 $3) $4))",
    ].map((x, i) => (i === 0 ? rotaryRoles(parseExpr(x), "f16") : rotaryRoles(parseExpr(x), "bf16"))))
      expect(e).toEqual([]);
  });
});

describe("an RMSNorm read only by 4-bit linears", () => {
  const template = readFileSync(join(import.meta.dirname, "..", "codegen-templates", "model.cpp.tpl"), "utf8");
  function source(extra: "none" | "output" | "int8" | "linear" | "residual"): string {
    const b = new GraphBuilder("g");
    const node = (op: string, operands: Value[], attrs: Attrs = {}): Value => b.node(op, operands, attrs, inferNode({ op, operands, attrs }));
    const x = b.input("x", { dtype: "bf16", shape: ["S", 64] });
    const n = node("rms_norm", [x, b.param("norm.weight", { dtype: "bf16", shape: [64] })], { eps: 1e-6 });
    const lin = (i: number, scheme: string, o: { res?: Value } = {}): Value =>
      node("qlinear", [n, b.param(`l${i}.weight`, { dtype: "bf16", shape: [64, 64] }), ...(o.res ? [o.res] : [])], {
        scheme,
        block: 64,
        double_quant: false,
        threshold: 6,
        ...(o.res ? { residual: true } : {}),
      });
    for (let i = 0; i < 3; i++) b.output(`y${i}`, lin(i, "nf4"));
    if (extra === "output") b.output("n", n);
    if (extra === "int8") b.output("y3", lin(3, "int8"));
    if (extra === "linear") b.output("y3", node("linear", [n, b.param("l3.weight", { dtype: "bf16", shape: [64, 64] })]));
    if (extra === "residual") b.output("y3", lin(3, "nf4", { res: n }));
    return emitSource(b.graph, { target: "cuda", hash: "0", kilnVersion: "0", template });
  }

  test("is emitted behind K::norm_fused, its readers as one qlinear4_group_norm call with its input, weight and eps", () => {
    const src = source("none");
    const m = src.match(/const bool nf(\d+) = K::norm_fused\(\(d_S\)\);\n {2}if \(!nf\1\) K::rms_norm<kiln::bf16>\((\w+), (\w+), v\1, \(d_S\), \(int64_t\)64, 0\.000001\);/);
    expect(m).not.toBeNull();
    const [, id, x, w] = m!;
    expect(src.match(/K::qlinear4_group_norm<kiln::bf16>\(/g)).toHaveLength(1);
    expect(src).toContain(`K::qlinear4_group_norm<kiln::bf16>(${x}, ${w}, 0.000001, nf${id}, v${id}, (d_S), (int64_t)64, 64, false, kiln_code_nf4, {`);
    expect(src).not.toMatch(/K::qlinear4_group<|K::qlinear4</);
  });

  test.each(["output", "int8", "linear", "residual"] as const)("stays a plain norm when it is also read as %s", (extra) => {
    const src = source(extra);
    expect(src).not.toMatch(/norm_fused|qlinear4\w*_norm</);
    expect(src).toMatch(/ {2}K::rms_norm<kiln::bf16>\(\w+, \w+, v\d+, \(d_S\), \(int64_t\)64, 0\.000001\);/);
  });
});

describe("a tiny nf4 Llama on the cpu target", () => {
  const build = (dtype: "f32" | "bf16", qgroup: boolean) => compile(FIXTURE, { target: "cpu", dtype, quant: "nf4", cacheDir: join(tmp, "cache"), maxSeq: 64, qgroup });

  test("q/k/v are one qlinear4_group call and gate/up one qlinear4_silu_mul call a layer; KILN_QGROUP=0 turns it off", async () => {
    const src = readFileSync(join((await build("f32", true)).dir, "model.cpp"), "utf8");
    // 2 layers: q/k/v (3 members each) grouped, gate/up paired into the product, o and down alone;
    // the groups read an RMSNorm that only they read, so they are its `_norm` calls (the cuda
    // target's decode GEMV may compute the norm itself)
    const groups = src.match(/K::qlinear4_group_norm<float>\([^;]*\);/g) ?? [];
    expect(groups.map((c) => c.match(/\{\(const uint8_t\*\)w\d+/g)?.length)).toEqual([3, 3]);
    expect(src.match(/K::qlinear4_silu_mul_norm<float>\(/g)).toHaveLength(2);
    expect(src.match(/K::qlinear4<float>\(/g)).toHaveLength(4);
    // each of the 4 norms runs only where its readers do not compute it (never, on the cpu target),
    // and its readers get its input, weight, eps, that decision and its result, in that order
    const norms = [...src.matchAll(/const bool nf(\d+) = K::norm_fused\([^;]*\);\n {2}if \(!nf\1\) K::rms_norm<float>\((v\d+), (w\d+), v\1, .*, ([\d.e-]+)\);/g)];
    expect(norms).toHaveLength(4);
    for (const [, id, x, w, eps] of norms)
      expect(src).toMatch(new RegExp(`K::qlinear4_(group|silu_mul)_norm<float>\\(${x}, ${w}, ${eps.replace(".", "\\.")}, nf${id}, v${id}, `));
    expect(src).not.toContain("// (mul:f32 (silu:f32 $0) $1)\nstruct F"); // the elementwise product's functor is gone
    const prev = process.env.KILN_QGROUP;
    process.env.KILN_QGROUP = "0";
    try {
      const off = readFileSync(join((await compile(FIXTURE, { target: "cpu", quant: "nf4", cacheDir: join(tmp, "cache"), maxSeq: 64 })).dir, "model.cpp"), "utf8");
      expect(off).not.toMatch(/qlinear4_group|qlinear4_silu_mul/);
      expect(off.match(/K::qlinear4<float>\(/g)).toHaveLength(14);
      expect(off).toContain("// (mul:f32 (silu:f32 $0) $1)\nstruct F");
    } finally {
      if (prev === undefined) delete process.env.KILN_QGROUP;
      else process.env.KILN_QGROUP = prev;
    }
  }, 120_000);

  test("bf16: q/k/v's call also does RoPE and the cache writes (rope_fused), the rotary ops and cache writes behind its flag; f32 does not", async () => {
    const src = readFileSync(join((await build("bf16", true)).dir, "model.cpp"), "utf8");
    // per layer: the flag, the rotary q result allocated before the call, where each member goes
    // (q → the rotary result, k → RoPE'd into past.key, v → past.value), the call taking it
    const ropes = [...src.matchAll(/const bool rf(\d+) = K::rope_fused\(\(d_B\) \* \(d_S\)\);\n(?:.*\n)? {2}K::Q4Rope<kiln::bf16> rp\1 = \{v\d+, v\d+, nullptr, (?:\(const float\*\)rt::constant\(\d+, c\d+, sizeof\(c\d+\)\)|v\d+), x1, \(d_C\), 8, \{(v\d+), (x\d+), (x\d+), nullptr\}, \{1, 2, 3, 0\}\};/g)];
    expect(ropes).toHaveLength(2);
    for (const [, id] of ropes) {
      expect(src).toMatch(new RegExp(`K::qlinear4_group_norm<kiln::bf16>\\([^;]*, rf${id} \\? &rp${id} : nullptr\\);`));
      // the batched rotary ops and the batched cache writes run only where the call did not do them
      expect(src.match(new RegExp(`^ {2}if \\(!rf${id}\\) K::for_each_n\\(`, "gm"))).toHaveLength(2);
    }
    expect(src).not.toMatch(/^ {2}K::(for_each_n\(K::)?cache_write/m); // every cache write is behind a flag
    const f32 = readFileSync(join((await build("f32", true)).dir, "model.cpp"), "utf8");
    expect(f32).not.toMatch(/rope_fused|Q4Rope/);
  }, 120_000);

  test.each(["f32", "bf16"] as const)("%s: the same logits (prefill and a one-token step) and greedy tokens, bit for bit, with and without grouping", async (dtype) => {
    const ids = [[1, 5, 9, 200, 17, 3, 44], [250, 2, 8, 8, 31, 7, 100]];
    const runs = [];
    for (const qgroup of [true, false]) {
      await using model = await loadModel((await build(dtype, qgroup)).dir, { checkpoint: FIXTURE });
      const prefill = (await model.forward(ids)).logits;
      const step = (await model.forward([[42]])).logits;
      const tokens: number[] = [];
      for await (const t of model.generate(ids[0], { maxNewTokens: 12 })) tokens.push(t.id);
      runs.push({ prefill: Array.from(prefill), step: Array.from(step), tokens });
    }
    expect(runs[0].prefill.length).toBe(2 * 7 * 256);
    expect(runs[0].prefill.every(Number.isFinite)).toBe(true);
    expect(runs[0]).toEqual(runs[1]);
  }, 120_000);
});

// Which q/k/v groups' calls take RoPE and the cache writes (rope-fusion.ts), on a hand-built layer:
// x → q, k, v (nf4) → heads [B, S, H, D] → [B, H, S, D] views → the rotary op on q and k (its
// rotate-half gather) → k and v written into the static cache in place.
describe("RoPE fusion: which q/k/v groups", () => {
  type Opts = { dtype?: "bf16" | "f32"; table?: (d: number) => number; qOut?: boolean; vRead?: boolean; signCast?: boolean };
  function layer(o: Opts = {}) {
    const T = o.dtype ?? "bf16", D = 8, H = 2, K = 16;
    const b = new GraphBuilder("g");
    const node = (op: string, operands: Value[], attrs: Attrs = {}): Value => b.node(op, operands, attrs, inferNode({ op, operands, attrs }));
    const x = b.input("x", { dtype: T, shape: ["B", "S", K] });
    const pos = b.input("cache_position", { dtype: "i64", shape: [] });
    const past = ["key", "value"].map((n) => b.input(`past.0.${n}`, { dtype: T, shape: ["B", H, "C", D] }));
    const cos = b.input("cos", { dtype: T, shape: [1, 1, "S", D] });
    const sin = b.input("sin", { dtype: T, shape: [1, 1, "S", D] });
    const idx = node("constant", [], { dtype: "i64", shape: [D], values: Array.from({ length: D }, (_, d) => (o.table ?? ((e: number) => (e + D / 2) % D))(d)) });
    const sign32 = node("constant", [], { dtype: "f32", shape: [D], values: Array.from({ length: D }, (_, d) => (d < D / 2 ? -1 : 1)) });
    const sign = o.signCast ? sign32 : node("cast", [sign32], { to: T });
    const lin = (i: number) =>
      node("qlinear", [x, b.param(`l${i}.weight`, { dtype: T, shape: [H * D, K] })], { scheme: "nf4", block: 64, double_quant: false, threshold: 6 });
    const heads = (v: Value) => node("transpose", [node("reshape", [v], { shape: ["B", "S", H, D] })], { perm: [0, 2, 1, 3] });
    const expr = o.signCast ? `(add:${T} (mul:${T} $0 $1) (mul:${T} (mul:${T} $2 (cast:${T} $3)) $4))` : `(add:${T} (mul:${T} $0 $1) (mul:${T} (mul:${T} $2 $3) $4))`;
    const rot = (t: Value) => node("elementwise", [t, cos, node("gather", [t, idx], { axis: -1 }), sign, sin], { expr });
    const [q, k, v] = [lin(0), lin(1), lin(2)];
    const qr = rot(heads(q));
    const ck = node("cache_write", [past[0], rot(heads(k)), pos]);
    const cv = node("cache_write", [past[1], heads(v), pos]);
    b.output("attn_out", node("exp", [qr])); // (attention, in a model)
    b.output("present.0.key", ck);
    b.output("present.0.value", cv);
    if (o.vRead) b.output("v_again", node("exp", [past[1]]));
    if (o.qOut) b.output("q_rot", qr);
    return b.graph;
  }
  const modes = (g: ReturnType<typeof layer>) =>
    [...ropeFusions(g, qlinear4Groups(g), elementwiseViews(g), inPlaceCacheWrites(g)).values()].map((f) => f.jobs.map((j) => j.mode));

  test("a Llama layer: q → the rotary op's result, k → RoPE'd into the cache, v → the cache (the sign a T row, or cast inside the op)", () => {
    expect(modes(layer())).toEqual([[1, 2, 3]]);
    expect(modes(layer({ signCast: true }))).toEqual([[1, 2, 3]]);
  });
  test("no fusion: f32, another gather table, the rotary result a graph output, a cache not written in place", () => {
    expect(modes(layer({ dtype: "f32" }))).toEqual([]);
    expect(modes(layer({ table: (d) => 7 - d }))).toEqual([]);
    expect(modes(layer({ qOut: true }))).toEqual([]);
    expect(modes(layer({ vRead: true }))).toEqual([]);
  });
});
