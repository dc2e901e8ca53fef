// The IR: a graph of SSA values. A graph has named inputs, parameters named with the Hugging
// Face tensor names (so a checkpoint maps onto it without renaming tables), a list of nodes
// in definition order (each defines one value), and named outputs. Ops are plain data:
// an op name, operands, and attributes whose kinds the op's declaration gives (ops.ts).

import type { Dim } from "./dim.js";
import { formatShape } from "./dim.js";
import type { DType } from "./dtype.js";

export interface TensorType {
  dtype: DType;
  shape: Dim[];
}

export type ValueKind = "input" | "param" | "op";

export interface Value extends TensorType {
  /** unique within a graph */
  id: number;
  kind: ValueKind;
  /** inputs and params: their name (params: the Hugging Face tensor name); op results: "" */
  name: string;
}

export type AttrValue = number | boolean | string | AttrValue[];
export type Attrs = Record<string, AttrValue>;

/** Where in the model source an op was created. */
export interface Loc {
  file: string;
  line: number;
  col: number;
}

export interface Node {
  op: string;
  operands: Value[];
  attrs: Attrs;
  result: Value;
  loc?: Loc;
}

export interface Output {
  name: string;
  value: Value;
}

export interface Graph {
  name: string;
  inputs: Value[];
  params: Value[];
  nodes: Node[];
  outputs: Output[];
}

export const typeString = (t: TensorType): string => `${t.dtype}${formatShape(t.shape)}`;
export const locString = (l: Loc): string => `${l.file}:${l.line}:${l.col}`;

/** Builds a graph value by value. Used by the tracer, the parser, passes and tests. */
export class GraphBuilder {
  private nextId = 0;
  readonly graph: Graph;

  constructor(name: string) {
    this.graph = { name, inputs: [], params: [], nodes: [], outputs: [] };
  }

  /** Continue building on an existing graph (passes): ids continue after its largest. */
  static from(g: Graph): GraphBuilder {
    const b = new GraphBuilder(g.name);
    Object.assign(b.graph, { inputs: [...g.inputs], params: [...g.params], nodes: [...g.nodes], outputs: [...g.outputs] });
    b.nextId = 1 + Math.max(-1, ...allValues(g).map((v) => v.id));
    return b;
  }

  newValue(kind: ValueKind, t: TensorType, name = ""): Value {
    return { id: this.nextId++, kind, name, dtype: t.dtype, shape: [...t.shape] };
  }

  input(name: string, t: TensorType): Value {
    const v = this.newValue("input", t, name);
    this.graph.inputs.push(v);
    return v;
  }

  param(name: string, t: TensorType): Value {
    const v = this.newValue("param", t, name);
    this.graph.params.push(v);
    return v;
  }

  /** Appends a node whose result type the caller has already worked out. */
  node(op: string, operands: Value[], attrs: Attrs, result: TensorType, loc?: Loc): Value {
    const v = this.newValue("op", result);
    this.graph.nodes.push(loc ? { op, operands, attrs, result: v, loc } : { op, operands, attrs, result: v });
    return v;
  }

  output(name: string, value: Value): void {
    this.graph.outputs.push({ name, value });
  }
}

export function allValues(g: Graph): Value[] {
  return [...g.inputs, ...g.params, ...g.nodes.map((n) => n.result)];
}

/** Users of each value id, in node order. */
export function usesOf(g: Graph): Map<number, Node[]> {
  const m = new Map<number, Node[]>();
  for (const n of g.nodes)
    for (const o of n.operands) {
      const list = m.get(o.id);
      if (list) list.push(n);
      else m.set(o.id, [n]);
    }
  return m;
}
