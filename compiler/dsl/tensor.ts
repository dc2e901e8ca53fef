// The tracing tensor. Model code calls ops on Tensors as it would in eager PyTorch; each call
// appends one IR node to the graph being traced (checked by the op's shape rule at once, so a
// mismatch is reported at the model's own source line with a code frame).

import type { Dim } from "../ir/dim.js";
import { canonDim, dimEq, dimProduct } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { isFloat } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import type { Attrs, GraphBuilder, Value } from "../ir/graph.js";
import { inferNode } from "../ir/verify.js";
import { callerLoc, codeFrame } from "./source.js";

/** The graph under construction; set by `trace` for the duration of a model's forward. */
export interface TraceContext {
  builder: GraphBuilder;
  /** parameter values already added, by Hugging Face name */
  params: Map<string, Value>;
  /** set when tracing with a KV cache (see cache.ts) */
  cache?: {
    past: Dim;
    outputs: [string, Value][];
    /** static cache (kvCache: "static"): the i64 scalar input cache_position and the capacity dim */
    static?: { position: Tensor; capacity: Dim };
  };
  /** set when tracing a padded batch (see cache.ts): the attention_mask input */
  padding?: { mask: Tensor };
}

let current: TraceContext | undefined;

export function withTrace<T>(ctx: TraceContext, f: () => T): T {
  const prev = current;
  current = ctx;
  try {
    return f();
  } finally {
    current = prev;
  }
}

export function traceContext(): TraceContext {
  if (!current) throw new KilnError("E_USAGE", "tensor ops can only run inside trace() (a model's forward is traced, not executed)");
  return current;
}

/** Appends `op` to the graph being traced; shape errors point at the model source. */
export function emit(op: string, operands: Tensor[], attrs: Attrs = {}): Tensor {
  const { builder } = traceContext();
  const loc = callerLoc();
  const ops = operands.map((t) => t.value);
  let type;
  try {
    type = inferNode({ op, operands: ops, attrs, loc }, "E_SHAPE");
  } catch (e) {
    if (e instanceof KilnError && loc) {
      const frame = codeFrame(loc);
      throw new KilnError(e.code, `${e.message.replace(`${e.where}: `, "")}${frame ? `\n\n${frame}\n` : ""}`, { where: e.where });
    }
    throw e;
  }
  return new Tensor(builder.node(op, ops, attrs, type, loc));
}

export type TensorLike = Tensor | number;

export class Tensor {
  constructor(readonly value: Value) {}

  get shape(): Dim[] {
    return this.value.shape;
  }
  get dtype(): DType {
    return this.value.dtype;
  }
  get rank(): number {
    return this.value.shape.length;
  }
  /** dim i (negative counts from the end) */
  size(i: number): Dim {
    return this.shape[i < 0 ? i + this.rank : i];
  }

  private lift(x: TensorLike): Tensor {
    return typeof x === "number" ? scalar(x, this.dtype) : x;
  }

  add(o: TensorLike): Tensor { return emit("add", [this, this.lift(o)]); }
  sub(o: TensorLike): Tensor { return emit("sub", [this, this.lift(o)]); }
  mul(o: TensorLike): Tensor { return emit("mul", [this, this.lift(o)]); }
  div(o: TensorLike): Tensor { return emit("div", [this, this.lift(o)]); }
  pow(o: TensorLike): Tensor { return emit("pow", [this, this.lift(o)]); }
  maximum(o: TensorLike): Tensor { return emit("maximum", [this, this.lift(o)]); }
  minimum(o: TensorLike): Tensor { return emit("minimum", [this, this.lift(o)]); }
  lt(o: TensorLike): Tensor { return emit("less", [this, this.lift(o)]); }
  le(o: TensorLike): Tensor { return emit("less_equal", [this, this.lift(o)]); }
  gt(o: TensorLike): Tensor { return emit("greater", [this, this.lift(o)]); }
  ge(o: TensorLike): Tensor { return emit("greater_equal", [this, this.lift(o)]); }
  eq(o: TensorLike): Tensor { return emit("equal", [this, this.lift(o)]); }
  ne(o: TensorLike): Tensor { return emit("not_equal", [this, this.lift(o)]); }

  neg(): Tensor { return emit("neg", [this]); }
  abs(): Tensor { return emit("abs", [this]); }
  exp(): Tensor { return emit("exp", [this]); }
  log(): Tensor { return emit("log", [this]); }
  sqrt(): Tensor { return emit("sqrt", [this]); }
  rsqrt(): Tensor { return emit("rsqrt", [this]); }
  tanh(): Tensor { return emit("tanh", [this]); }
  sigmoid(): Tensor { return emit("sigmoid", [this]); }
  cos(): Tensor { return emit("cos", [this]); }
  sin(): Tensor { return emit("sin", [this]); }

  matmul(o: Tensor): Tensor { return emit("matmul", [this, o]); }
  softmax(axis: number): Tensor { return emit("softmax", [this], { axis }); }
  sum(axis: number, keepdim = false): Tensor { return emit("reduce_sum", [this], { axis, keepdim }); }
  mean(axis: number, keepdim = false): Tensor { return emit("reduce_mean", [this], { axis, keepdim }); }
  max(axis: number, keepdim = false): Tensor { return emit("reduce_max", [this], { axis, keepdim }); }
  /** i64 index of the maximum along the last axis (the first one; −1 for a row with a NaN, +Inf or nothing finite: ir/ops.ts) */
  argmax(): Tensor { return emit("argmax", [this], { axis: -1 }); }

  /** a cast; no node when the dtype is already `dtype` */
  to(dtype: DType): Tensor { return dtype === this.dtype ? this : emit("cast", [this], { to: dtype }); }
  float(): Tensor { return this.to("f32"); }

  /** like torch's view/reshape; one dim may be -1 when the others are numbers that divide it */
  reshape(...dims: Dim[]): Tensor {
    const i = dims.indexOf(-1);
    if (i >= 0) {
      const known = dimProduct(dims.filter((_d, j) => j !== i));
      const total = dimProduct(this.shape);
      if (typeof known !== "number" || typeof total !== "number" || known === 0 || total % known !== 0) {
        // symbolic: -1 must be the one dim of the input not accounted for
        const rest = this.shape.filter((d) => !dims.some((e) => e !== -1 && dimEq(d, e)));
        if (rest.length !== 1) throw shapeError(`cannot infer the -1 in reshape(${dims.join(", ")}) of [${this.shape.join(", ")}]`);
        dims = dims.map((d) => (d === -1 ? rest[0] : d));
      } else dims = dims.map((d) => (d === -1 ? total / known : d));
    }
    if (dims.length === this.rank && dims.every((d, j) => dimEq(d, this.shape[j]))) return this;
    return emit("reshape", [this], { shape: dims.map(canonDim) });
  }
  view(...dims: Dim[]): Tensor { return this.reshape(...dims); }
  flatten(from: number): Tensor {
    return this.reshape(...this.shape.slice(0, from), dimProduct(this.shape.slice(from)));
  }
  unsqueeze(axis: number): Tensor {
    const a = axis < 0 ? axis + this.rank + 1 : axis;
    return emit("reshape", [this], { shape: [...this.shape.slice(0, a), 1, ...this.shape.slice(a)] });
  }
  /** swaps two axes, like torch.transpose */
  transpose(a: number, b: number): Tensor {
    const perm = [...Array(this.rank).keys()];
    const [x, y] = [a < 0 ? a + this.rank : a, b < 0 ? b + this.rank : b];
    [perm[x], perm[y]] = [perm[y], perm[x]];
    return emit("transpose", [this], { perm });
  }
  permute(...perm: number[]): Tensor { return emit("transpose", [this], { perm }); }
  expand(...dims: Dim[]): Tensor {
    const off = dims.length - this.rank;
    const shape = dims.map((d, i) => (d === -1 ? this.shape[i - off] : canonDim(d)));
    return emit("expand", [this], { shape });
  }
  /** x[..., start:end, ...] along `axis` */
  slice(axis: number, start: Dim, end: Dim): Tensor {
    return emit("slice", [this], { axis, start: canonDim(start), end: canonDim(end) });
  }
  /** splits `axis` into `n` equal chunks (a numeric dim) */
  chunk(n: number, axis: number): Tensor[] {
    const d = this.size(axis);
    if (typeof d !== "number" || d % n !== 0) throw shapeError(`cannot split dim ${axis} (${d}) into ${n} equal chunks`);
    return [...Array(n).keys()].map((i) => this.slice(axis, (i * d) / n, ((i + 1) * d) / n));
  }
}

function shapeError(msg: string): KilnError {
  const loc = callerLoc();
  const frame = loc ? codeFrame(loc) : "";
  return new KilnError("E_SHAPE", `${msg}${frame ? `\n\n${frame}\n` : ""}`, { where: loc ? `${loc.file}:${loc.line}:${loc.col}` : undefined });
}

/** A scalar constant (shape []) that broadcasts against anything. */
export function scalar(value: number, dtype: DType = "f32"): Tensor {
  return emit("full", [], { value, shape: [], dtype });
}

export function full(shape: Dim[], value: number, dtype: DType = "f32"): Tensor {
  return emit("full", [], { value, shape: shape.map(canonDim), dtype });
}

/** A constant tensor with literal values (computed while tracing, e.g. RoPE frequencies). */
export function constant(values: ArrayLike<number>, shape: number[], dtype: DType = "f32"): Tensor {
  return emit("constant", [], { values: Array.from(values), shape, dtype });
}

export function arange(start: Dim, end: Dim, dtype: DType = "i64"): Tensor {
  return emit("arange", [], { start: canonDim(start), end: canonDim(end), dtype });
}

export const isFloatTensor = (t: Tensor): boolean => isFloat(t.dtype);
