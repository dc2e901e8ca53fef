// Shared by argmax.test.ts (cpu) and greedy.gpu.test.ts (cuda): the argmax op alone as an artifact
// (x: dtype[R, V] → argmax over V), run through the native binding on either target; rows that
// exercise its rule (ties, -Inf, NaN, +Inf, all masked, 16-bit rounding); a plain-JS reference of
// the rule; and a spy on a Model's binding that records what each forward brought to the host.

import { join } from "node:path";
import { buildArtifact } from "../compiler/codegen/build.js";
import type { Arch } from "../compiler/codegen/build.js";
import type { Target } from "../compiler/codegen/emit.js";
import type { DType, Graph, Tensor } from "../compiler/ir/index.js";
import { GraphBuilder, inferNode, run, tensor } from "../compiler/ir/index.js";
import { normals } from "../compiler/testing/index.js";
import type { Model } from "../runtime/api.js";
import { nativeBinding } from "../runtime/api.js";
import { bytesOf } from "./helpers.js";

const ABI: Record<string, number> = { f32: 0, f16: 1, bf16: 2 };

/** x: dtype[R, V] → y = argmax(x) : i64[R]. */
export function argmaxGraph(dtype: DType): Graph {
  const g = new GraphBuilder("argmax");
  const x = g.input("x", { dtype, shape: ["R", "V"] });
  const attrs = { axis: -1 };
  g.output("y", g.node("argmax", [x], attrs, inferNode({ op: "argmax", operands: [x], attrs })));
  return g.graph;
}

/** The interpreter's argmax of each row of x. */
export const interpretArgmax = (x: Tensor): number[] => Array.from(run(argmaxGraph(x.dtype), { x }, {}).y.data);

/** The argmax rule written plainly (not the interpreter's loop): -1 for a NaN / +Inf / nothing finite, else the first maximum. */
export function referenceArgmax(row: readonly number[]): number {
  if (row.some((v) => Number.isNaN(v) || v === Infinity)) return -1;
  const finite = row.filter((v) => v > -Infinity);
  return finite.length ? row.indexOf(Math.max(...finite)) : -1;
}

/** The target's argmax kernel, through an artifact of argmaxGraph: a function of x [R, V] (R ≤ 64, V ≤ 65536). */
export async function argmaxKernel(target: Target, dtype: DType, cacheDir: string, arch?: Arch): Promise<(x: Tensor) => Promise<number[]>> {
  const art = await buildArtifact(argmaxGraph(dtype), { target, arch, family: "argmax", dtype, bounds: { R: 64, V: 1 << 16 }, cacheDir });
  const lib = new (nativeBinding().Artifact)(join(art.dir, art.manifest.library));
  await lib.init(0);
  return async (x) => {
    const [y] = (await lib.forward([], [{ dtype: ABI[x.dtype], shape: x.shape, data: new Uint8Array(bytesOf(x)) }], [true])) as { data: ArrayBuffer }[];
    return Array.from(new BigInt64Array(y.data), Number);
  };
}

/**
 * R rows of V values of `dtype` that exercise the rule, a kind of row each in turn: normals; small
 * integers (many ties); normals with masked (-Inf) tokens; every token masked; a NaN; a +Inf; the
 * maximum at the last index; a constant row; values a hair apart (ties after 16-bit rounding).
 */
export function argmaxRows(dtype: DType, R: number, V: number, seed: number): Tensor {
  const r = normals(seed);
  const pos = () => Math.floor(Math.abs(r() * 7919)) % V;
  const xs: number[] = [];
  for (let i = 0; i < R; i++) {
    const row = Array.from({ length: V }, () => r());
    switch (i % 9) {
      case 1: row.forEach((_v, j) => (row[j] = Math.round(r() * 1.5))); break;
      case 2: row.forEach((_v, j) => (row[j] = j % 3 === 0 || r() > 0.5 ? -Infinity : row[j])); break;
      case 3: row.fill(-Infinity); break;
      case 4: row[pos()] = NaN; break;
      case 5: row[pos()] = Infinity; break;
      case 6: row[V - 1] = 100; break;
      case 7: row.fill(-2.5); break;
      case 8: row.forEach((_v, j) => (row[j] = 1 + (j % 5) * 2 ** -12)); break; // bf16 rounds these to 1 (a V-wide tie); f16 keeps some apart
    }
    xs.push(...row);
  }
  return tensor(dtype, [R, V], xs);
}

/**
 * What each forward of a Model brought to the host (output name → toHost: true, false, or 2 for a
 * download queued behind a forward that does not wait), and how many tensors it downloaded
 * afterwards; `queued`: the forwards that did not wait (a pipelined decode step), `fedOnTarget`:
 * those whose input_ids was a tensor on the target (the previous step's pick).
 */
export interface BindingSpy {
  calls: Record<string, boolean | 2>[];
  downloads: number;
  queued: number;
  fedOnTarget: number;
}

/** Records the to-host flags of every forward `model` makes from now on, and its downloads of device tensors. */
export function spyOnBinding(model: Model): BindingSpy {
  const spy: BindingSpy = { calls: [], downloads: 0, queued: 0, fedOnTarget: 0 };
  const idsAt = model.manifest.inputs.findIndex((i) => i.name === "input_ids");
  const m = model as unknown as { art: { forward: (...a: unknown[]) => Promise<unknown>; download: (t: unknown) => Promise<ArrayBuffer> } };
  const names = model.manifest.outputs.map((o) => o.name);
  const art = m.art;
  const forward = art.forward.bind(art);
  const download = art.download.bind(art);
  // the binding's methods are read-only properties of its prototype: shadow them on the instance
  const wrap = (name: "forward" | "download", f: (...a: unknown[]) => Promise<unknown>) => Object.defineProperty(art, name, { value: f, configurable: true });
  wrap("forward", (w, inputs, toHost, options) => {
    spy.calls.push(Object.fromEntries(names.map((n, j) => [n, (toHost as (boolean | 2)[])[j]])));
    if ((options as { wait?: boolean } | undefined)?.wait === false) spy.queued++;
    if (idsAt >= 0 && !("data" in ((inputs as object[])[idsAt] as object))) spy.fedOnTarget++;
    return forward(w, inputs, toHost, options);
  });
  wrap("download", (t) => {
    spy.downloads++;
    return download(t);
  });
  return spy;
}
