// placement — decoder layers onto devices within a memory budget per device, the way
// accelerate's infer_auto_device_map (device_map="auto", no_split_module_classes = the decoder
// layer) does, read from the pipeline options:
//   maxMemory: { 0: "20GiB", 1: "40GiB" } (sizes: bytes as a number, or "600MB" / "1GB" decimal,
//              "512MiB" / "20GiB" binary), or "auto": balanced over `deviceMemory`, as accelerate's
//              get_balanced_memory does (every device but the last gets at most total/n plus the
//              largest layer's bytes, the last all it has)
//   deviceMemory: each device's memory, for "auto" (compiling sees no GPU, so it is given)
//   bounds: { B, S, P, C, T } the symbolic dims' bounds, or maxBatch (default 8) + maxSeq
// Groups: a decoder layer is every node from the first that reads a parameter of layer i (HF names
//   `….layers.<i>.…`, `….layer.<i>.…`, `….h.<i>.…`) or its KV cache (`past.<i>.*`) up to the next
//   layer's first; the nodes before layer 0 are the embeddings, those after the last layer's last
//   parameter read that read another parameter begin the head (final norm, lm_head).
// Counts, per device, at the bounds: the weights its nodes read (each once; a qlinear's weight at
//   its quantized size, kiln_quant.h's layouts; a weight read on two devices, e.g. tied
//   embeddings, on both, and listed under `replicated`), the KV cache of its layers (static
//   [B, H, C, D] or growing [B, H, P, D]), and a workspace: the peak bytes of its nodes' results
//   alive at once (a static cache's cache_write writes in place: not counted again) plus the
//   tensors it receives from other devices.
// Guarantees: groups go to devices in order (embeddings on the first device used, the head on the
//   last, layer i's device ≤ layer i+1's), each exactly once, every device within its budget; the
//   first device is filled as far as it goes before the next is used, so a model that fits device
//   0 stays there. A group that fits on no device left is E_USAGE naming the group, the bytes it
//   needs against those left on the last device, and the total needed against the total given.
// The graph is returned unchanged: the map is an analysis, kept in ctx.results ("placement") for
//   the codegen to write into manifest.json. Not in the default pipeline; compile({ maxMemory })
//   appends it. Running the placed artifact over several GPUs is the runtime's part (not built).

import { KilnError } from "../ir/errors.js";
import type { Graph, Value } from "../ir/graph.js";
import { formatBytes, peakLiveBytes, valueBytes } from "../ir/memory.js";
import { bytes4, bytes8 } from "../ir/quant.js";
import type { Pass } from "./manager.js";

export type MaxMemory = "auto" | Readonly<Record<string | number, string | number>>;

export interface PlacementOptions {
  maxMemory?: MaxMemory;
  deviceMemory?: Readonly<Record<string | number, string | number>>;
  bounds?: Readonly<Record<string, number>>;
  maxBatch?: number;
  maxSeq?: number;
}

export interface DeviceBytes {
  budget: number;
  weights: number;
  kvCache: number;
  workspace: number;
  total: number;
}

export interface Placement {
  /** the devices given, in order */
  devices: number[];
  /** the devices that hold something */
  used: number[];
  embed: number;
  /** layers[i]: the device of decoder layer i */
  layers: number[];
  head: number;
  /** module → device, as accelerate's device_map ("model.embed_tokens", "model.layers.3", "lm_head") */
  deviceMap: Record<string, number>;
  /** weights read on several devices (tied embeddings), held on each */
  replicated: { name: string; devices: number[] }[];
  /** per device (by id) */
  bytes: Record<string, DeviceBytes>;
  /** the bounds the KV cache and workspace were counted at */
  at: Record<string, number>;
}

// ---------------------------------------------------------------- sizes

const UNITS: Record<string, number> = { "": 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, KI: 2 ** 10, MI: 2 ** 20, GI: 2 ** 30, TI: 2 ** 40 };

/** A size in bytes: a number of bytes, or "600MB", "1GB" (powers of 1000), "512MiB", "20GiB" (of 1024), "4096" / "4096B". */
export function parseSize(v: string | number, what = "size"): number {
  const bad = (why: string) => new KilnError("E_USAGE", `${what} ${JSON.stringify(v)} ${why} (give bytes, or a size such as "600MB", "1GB", "20GiB")`);
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 0) throw bad("is not a whole, non-negative number of bytes");
    return v;
  }
  if (typeof v !== "string") throw bad("is not a number or a string");
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([kKmMgGtT])(i?))?([Bb]?)\s*$/.exec(v);
  if (!m) throw bad("is not a size");
  const [, num, prefix = "", bin, b] = m;
  if (b === "b") throw bad("ends in 'b', which means bits; write 'B' for bytes");
  if (bin && !b) throw bad(`has no 'B' after '${prefix}i'`);
  const bytes = Number(num) * UNITS[`${prefix.toUpperCase()}${bin ? "I" : ""}`];
  if (!prefix && !Number.isInteger(bytes)) throw bad("is not a whole number of bytes");
  if (!Number.isSafeInteger(Math.floor(bytes))) throw bad("is too large");
  return Math.floor(bytes);
}

/** `--max-memory`: "0=20GiB,1=40GiB" → { 0: "20GiB", 1: "40GiB" }; "auto" stays "auto". */
export function parseMaxMemory(text: string, what = "--max-memory"): MaxMemory {
  if (text.trim() === "auto") return "auto";
  const out: Record<number, string> = {};
  for (const part of text.split(",").map((s) => s.trim())) {
    const m = /^(\w+)\s*[=:]\s*(.+)$/.exec(part);
    if (!m) throw new KilnError("E_USAGE", `${what}: '${part}' is not <device>=<size> (e.g. "0=20GiB,1=40GiB", or "auto")`);
    out[deviceId(m[1], what)] = m[2];
  }
  budgetsOf(out, what); // check every size now
  return out;
}

function deviceId(key: string, what: string): number {
  if (/^\d+$/.test(key)) return Number(key);
  const offload = ["cpu", "disk", "mps"].includes(key) ? `: offloading to '${key}' is not supported, only GPU ordinals` : ": a device is a GPU ordinal (0, 1, …)";
  throw new KilnError("E_USAGE", `${what} names device '${key}'${offload}`);
}

/** Device ordinals in order, each with its budget in bytes. */
function budgetsOf(spec: Readonly<Record<string | number, string | number>>, what: string): { id: number; bytes: number }[] {
  const list = Object.entries(spec).map(([k, v]) => ({ id: deviceId(k, what), bytes: parseSize(v, `${what} for device ${k}:`) }));
  if (list.length === 0) throw new KilnError("E_USAGE", `${what} names no device`);
  return list.sort((a, b) => a.id - b.id);
}

/** The symbolic dims' bounds compile() gives: B sequences of S tokens, cache capacity C = P = S, T = B·S packed tokens. */
export const dimBounds = (maxBatch: number, maxSeq: number): Record<string, number> => ({ B: maxBatch, N: maxBatch, S: maxSeq, P: maxSeq, C: maxSeq, T: maxBatch * maxSeq });

// ---------------------------------------------------------------- groups

interface Group {
  label: string;
  /** value ids of the parameters its nodes read */
  params: Set<number>;
  /** node indices */
  nodes: number[];
  kvCache: number;
  /** module names → this group, for the device map */
  modules: Set<string>;
}

const LAYER = /^(.*?(?:^|\.)(?:layers|layer|h)\.(\d+))\./;
const PAST = /^past\.(\d+)\./;
const layerOfParam = (v: Value): number | undefined => (v.kind === "param" && LAYER.exec(v.name) ? Number(LAYER.exec(v.name)![2]) : undefined);
const layerOfValue = (v: Value): number | undefined => (v.kind === "input" && PAST.test(v.name) ? Number(PAST.exec(v.name)![1]) : layerOfParam(v));
const moduleOf = (name: string): string => LAYER.exec(name)?.[1] ?? (name.split(".").slice(0, -1).join(".") || name);

function groupsOf(g: Graph, at: Record<string, number>): { groups: Group[]; layerIds: number[] } {
  const layerIds = [...new Set([...g.params, ...g.inputs].flatMap((v) => layerOfValue(v) ?? []))].sort((a, b) => a - b);
  const index = new Map(layerIds.map((l, i) => [l, i + 1]));
  const group = (label: string): Group => ({ label, params: new Set(), nodes: [], kvCache: 0, modules: new Set() });
  const groups = [group("the embedding layer"), ...layerIds.map((l) => group(`layer ${l}`)), group("the head")];
  const head = groups.length - 1;
  const nodeLayer = g.nodes.map((n) => n.operands.map(layerOfValue).find((l) => l !== undefined));
  const lastLayerNode = nodeLayer.reduce<number>((a, l, i) => (l !== undefined ? i : a), -1);
  let cur = 0;
  g.nodes.forEach((n, i) => {
    const l = nodeLayer[i];
    if (l !== undefined) cur = index.get(l)!;
    else if (i > lastLayerNode && lastLayerNode >= 0 && n.operands.some((o) => o.kind === "param")) cur = head;
    groups[cur].nodes.push(i);
    for (const o of n.operands) if (o.kind === "param") groups[cur].params.add(o.id);
  });
  // parameters no node reads still load: with their layer, or the embeddings
  const read = new Set(groups.flatMap((x) => [...x.params]));
  for (const p of g.params) if (!read.has(p.id)) groups[index.get(layerOfParam(p) ?? -1) ?? 0].params.add(p.id);
  for (const v of g.inputs) if (PAST.test(v.name)) groups[index.get(layerOfValue(v)!)!].kvCache += valueBytes(v, at);
  const byId = new Map(g.params.map((p) => [p.id, p]));
  for (const x of groups) for (const id of x.params) x.modules.add(moduleOf(byId.get(id)!.name));
  return { groups, layerIds };
}

/** Bytes each parameter takes on the device: packed when a qlinear reads it, its dtype's size otherwise. */
function paramBytes(g: Graph): Map<number, number> {
  const out = new Map(g.params.map((p) => [p.id, valueBytes(p, {})]));
  for (const n of g.nodes) {
    const w = n.operands[1];
    if (n.op !== "qlinear" || w?.kind !== "param") continue;
    const [N, K] = w.shape as number[];
    out.set(w.id, n.attrs.scheme === "int8" ? bytes8(N, K) : bytes4(N * K, n.attrs.block as number, n.attrs.double_quant as boolean));
  }
  return out;
}

// ---------------------------------------------------------------- placing

type Usage = Omit<DeviceBytes, "budget">;

function usageOf(g: Graph, groups: readonly Group[], sizes: Map<number, number>, constants: Set<number>, at: Record<string, number>): Usage {
  const params = new Set(groups.flatMap((x) => [...x.params]));
  const nodes = new Set(groups.flatMap((x) => x.nodes));
  const weights = [...params].reduce((a, id) => a + sizes.get(id)!, 0);
  const kvCache = groups.reduce((a, x) => a + x.kvCache, 0);
  // tensors from elsewhere: other devices' results (constants are compiled in) and the graph's
  // inputs (the KV cache is counted above)
  const local = new Set([...nodes].map((i) => g.nodes[i].result.id));
  const received = new Map<number, Value>();
  for (const i of nodes)
    for (const o of g.nodes[i].operands)
      if ((o.kind === "op" && !local.has(o.id) && !constants.has(o.id)) || (o.kind === "input" && !PAST.test(o.name))) received.set(o.id, o);
  const workspace = peakLiveBytes(g, at, { keep: (i) => nodes.has(i), aliases: ["cache_write", "varlen_cache_write"] }) + [...received.values()].reduce((a, v) => a + valueBytes(v, at), 0);
  return { weights, kvCache, workspace, total: weights + kvCache + workspace };
}

function boundsOf(o: PlacementOptions): Record<string, number> {
  if (o.bounds) return { ...o.bounds };
  if (o.maxSeq === undefined) throw new KilnError("E_USAGE", "placement counts the KV cache and workspace at the bounds: give bounds, or maxSeq (and maxBatch, default 8)");
  const maxBatch = o.maxBatch ?? 8;
  for (const [k, v] of Object.entries({ maxBatch, maxSeq: o.maxSeq }))
    if (!Number.isSafeInteger(v) || v < 1) throw new KilnError("E_USAGE", `${k} must be a positive integer, got ${v}`);
  return dimBounds(maxBatch, o.maxSeq);
}

const fmt = (n: number): string => (n >= 1024 ? `${formatBytes(n)} (${n} bytes)` : `${n} bytes`);
const parts = (u: Usage): string => `weights ${fmt(u.weights)}, KV cache ${fmt(u.kvCache)}, workspace ${fmt(u.workspace)}`;

/** Places a graph's layers onto the devices of `o.maxMemory`; see the header for what it counts. */
export function place(g: Graph, o: PlacementOptions): Placement {
  if (o.maxMemory === undefined) throw new KilnError("E_USAGE", "placement needs maxMemory (e.g. { 0: \"20GiB\", 1: \"40GiB\" }, or \"auto\" with deviceMemory)");
  const at = boundsOf(o);
  const { groups, layerIds } = groupsOf(g, at);
  const sizes = paramBytes(g);
  const constants = new Set(g.nodes.filter((n) => n.op === "constant").map((n) => n.result.id));
  const usage = (gs: number[]): Usage => usageOf(g, gs.map((i) => groups[i]), sizes, constants, at);
  const all = usage(groups.map((_x, i) => i));
  let devices: { id: number; bytes: number }[];
  if (o.maxMemory === "auto") {
    if (!o.deviceMemory) throw new KilnError("E_USAGE", "maxMemory \"auto\" needs deviceMemory, each device's memory (compiling sees no GPU): e.g. { 0: \"80GiB\", 1: \"80GiB\" }");
    const caps = budgetsOf(o.deviceMemory, "deviceMemory");
    const largest = Math.max(...groups.map((_x, i) => usage([i]).total));
    const share = Math.ceil(all.total / caps.length) + largest;
    devices = caps.map((d, k) => ({ id: d.id, bytes: k === caps.length - 1 ? d.bytes : Math.min(d.bytes, share) }));
  } else devices = budgetsOf(o.maxMemory, "maxMemory");

  const deviceOf: number[] = [];
  const onDevice: number[][] = devices.map(() => []);
  let d = 0;
  for (let gi = 0; gi < groups.length; gi++) {
    if (groups[gi].nodes.length === 0 && groups[gi].params.size === 0 && groups[gi].kvCache === 0) {
      deviceOf[gi] = d; // an empty group (no head in a graph without one) goes with its neighbour
      onDevice[d].push(gi);
      continue;
    }
    for (;;) {
      const before = usage(onDevice[d]);
      const after = usage([...onDevice[d], gi]);
      if (after.total <= devices[d].bytes) break;
      if (d === devices.length - 1) {
        const need = after.total - before.total, left = devices[d].bytes - before.total;
        const alone = usage([gi]);
        const given = devices.reduce((a, x) => a + x.bytes, 0);
        throw new KilnError(
          "E_USAGE",
          `placement: ${groups[gi].label} needs ${fmt(need)} more on device ${devices[d].id} (alone: ${parts(alone)}), ` +
            `but device ${devices[d].id} has ${fmt(Math.max(0, left))} of its ${fmt(devices[d].bytes)} left: ${fmt(need - Math.max(0, left))} short, and no device after it. ` +
            `The model needs ${fmt(all.total)} in all on one device (${parts(all)}) at ${Object.entries(at).map(([k, v]) => `${k}=${v}`).join(", ")}; ` +
            `the budgets give ${fmt(given)} over device${devices.length > 1 ? "s" : ""} ${devices.map((x) => `${x.id} (${formatBytes(x.bytes)})`).join(", ")}`,
        );
      }
      d++;
    }
    deviceOf[gi] = d;
    onDevice[d].push(gi);
  }

  const idOf = (gi: number) => devices[deviceOf[gi]].id;
  const bytes: Record<string, DeviceBytes> = {};
  devices.forEach((x, k) => (bytes[x.id] = { budget: x.bytes, ...usage(onDevice[k]) }));
  const deviceMap: Record<string, number> = {};
  for (let gi = 0; gi < groups.length; gi++) for (const m of groups[gi].modules) deviceMap[m] ??= idOf(gi);
  const holders = new Map<number, Set<number>>();
  groups.forEach((x, gi) => x.params.forEach((p) => holders.set(p, (holders.get(p) ?? new Set()).add(idOf(gi)))));
  const replicated = g.params.filter((p) => holders.get(p.id)!.size > 1).map((p) => ({ name: p.name, devices: [...holders.get(p.id)!].sort((a, b) => a - b) }));
  return {
    devices: devices.map((x) => x.id),
    used: devices.filter((_x, k) => onDevice[k].some((gi) => groups[gi].nodes.length || groups[gi].params.size)).map((x) => x.id),
    embed: idOf(0),
    layers: layerIds.map((_l, i) => idOf(i + 1)),
    head: idOf(groups.length - 1),
    deviceMap,
    replicated,
    bytes,
    at,
  };
}

/** One line per device: "device 0: the embeddings, layers 0–13 — 18.2 GiB of 20.00 GiB". */
export function describePlacement(p: Placement): string[] {
  return p.devices.map((id) => {
    const what: string[] = [];
    if (p.embed === id) what.push("embeddings");
    const ls = p.layers.map((d, i) => (d === id ? i : -1)).filter((i) => i >= 0);
    if (ls.length) what.push(ls.length === 1 ? `layer ${ls[0]}` : `layers ${ls[0]}–${ls[ls.length - 1]}`);
    if (p.head === id) what.push("head");
    const b = p.bytes[id];
    return `device ${id}: ${what.join(", ") || "nothing"}; ${formatBytes(b.total)} of ${formatBytes(b.budget)} (weights ${formatBytes(b.weights)}, KV cache ${formatBytes(b.kvCache)}, workspace ${formatBytes(b.workspace)})`;
  });
}

export const placementPass: Pass = {
  name: "placement",
  description: "decoder layers onto devices within maxMemory (device_map=\"auto\"); records the map, leaves the graph as it is",
  run(g, ctx) {
    const o = ctx.options as PlacementOptions;
    if (o.maxMemory === undefined) {
      ctx.explain("no maxMemory given: nothing placed");
      return g;
    }
    const p = place(g, o);
    ctx.results.set("placement", p);
    for (const line of describePlacement(p)) ctx.explain(line);
    return g;
  },
};
