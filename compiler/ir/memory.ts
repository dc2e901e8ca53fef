// Bytes of values at the bounds of their symbolic dims: the sizes the workspace in a manifest and
// the placement pass count, and how they print.

import { evalDim } from "./dim.js";
import { DTYPE_BYTES } from "./dtype.js";
import type { Graph, TensorType } from "./graph.js";

/** Bytes of a tensor of this type with its symbolic dims at `at`. */
export const valueBytes = (t: TensorType, at: Readonly<Record<string, number>>): number =>
  DTYPE_BYTES[t.dtype] * t.shape.reduce<number>((a, d) => a * evalDim(d, at), 1);

/**
 * Peak bytes of op results alive at once, at the bounds (reshapes, and the ops `aliases` names,
 * alias their first operand; constants are not counted). With `keep`, only the nodes it keeps (by
 * index) run and count; a result that a node not kept, or a graph output, reads stays alive to the end.
 */
export function peakLiveBytes(
  g: Graph,
  at: Readonly<Record<string, number>>,
  { keep = () => true, aliases = [] }: { keep?: (node: number) => boolean; aliases?: readonly string[] } = {},
): number {
  const root = new Map<number, number>();
  const size = new Map<number, number>();
  const last = new Map<number, number>();
  g.nodes.forEach((n, i) => {
    for (const o of n.operands) if (root.has(o.id)) last.set(root.get(o.id)!, keep(i) ? i : Infinity);
    if (!keep(i)) return;
    const alias = n.op === "reshape" || aliases.includes(n.op);
    root.set(n.result.id, alias ? (root.get(n.operands[0].id) ?? -1) : n.result.id);
    if (!alias && n.op !== "constant") size.set(n.result.id, valueBytes(n.result, at));
  });
  for (const o of g.outputs) if (root.has(o.value.id)) last.set(root.get(o.value.id)!, Infinity);
  const freedAt = new Map<number, number[]>();
  for (const [r, l] of last) if (l !== Infinity) freedAt.set(l, [...(freedAt.get(l) ?? []), r]);
  let live = 0, peak = 0;
  g.nodes.forEach((n, i) => {
    if (!keep(i)) return;
    live += size.get(n.result.id) ?? 0;
    peak = Math.max(peak, live);
    for (const r of freedAt.get(i) ?? []) live -= size.get(r) ?? 0;
  });
  return peak;
}

/** "1.50 GiB", "12.0 MiB", "3.0 KiB", "17 B". */
export const formatBytes = (n: number): string =>
  n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
