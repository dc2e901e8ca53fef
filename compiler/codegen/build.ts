// The build step: IR → C++ source → shared library, cached by content. The cache key is a hash of
// everything that decides the bytes of the library: the IR text, every template file, the
// compiler's own version line, the flags, the target and Kiln's version. A build writes into a
// staging folder and renames it into place, so an interrupted or failed build leaves nothing.

import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { $ } from "zx";
import { bindingDim, shapeEq } from "../ir/dim.js";
import { KilnError } from "../ir/errors.js";
import type { Graph } from "../ir/graph.js";
import { typeString } from "../ir/graph.js";
import { ARGMAX_NONE, NEXT_TOKEN } from "../ir/ops.js";
import { peakLiveBytes } from "../ir/memory.js";
import { print } from "../ir/print.js";
import type { Placement } from "../passes/placement.js";
import type { Target } from "./emit.js";
import { emitSource, inPlaceCacheWrites } from "./emit.js";

export const KILN_VERSION = (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
export const ARTIFACT_FORMAT = 1;
export const ABI_VERSION = 1;
export const TEMPLATES_DIR = fileURLToPath(new URL("../../codegen-templates/", import.meta.url));
export const LIBRARY = "libkiln_model.so";
export const ARCHES = ["sm_90a", "sm_80"] as const;
export type Arch = (typeof ARCHES)[number];

export interface TensorSpec {
  name: string;
  dtype: string;
  shape: (number | string)[];
}

export interface Manifest {
  format: number;
  kiln: string;
  abi: number;
  target: Target;
  arch: Arch | null;
  hash: string;
  created: string;
  compiler: { command: string; version: string; flags: string[] };
  model: { family: string; graph: string; dtype: string; config: Record<string, unknown> | null };
  inputs: TensorSpec[];
  /** `aliases`: the output is that input's buffer, written in place (the static KV cache) */
  outputs: (TensorSpec & { aliases?: string })[];
  /** each symbolic dim: its upper bound, and where its value comes from */
  dims: Record<string, { max: number; from: string }>;
  /** quant: how the runtime stores the weight (quantized on load, layouts in codegen-templates/common/kiln_quant.h) */
  weights: (TensorSpec & { quant: WeightQuant | null })[];
  /** bytes of intermediates alive at once at the dims' bounds (no buffer reuse across ops assumed beyond frees) */
  workspace: { bytes: number; at: Record<string, number> };
  /** the KV cache the graph threads through (past.<i>.key|value → present.<i>.key|value), if any */
  kvCache: {
    layers: number;
    inputs: string[];
    outputs: string[];
    /**
     * "growing": past [B, H, P, D] → present [B, H, P+S, D]; "static": [B, H, C, D] written in place
     * at `position`; "varlen": [B, H, C, D] with a row per sequence (`slot`), packed tokens
     */
    mode: "growing" | "static" | "varlen";
    /** the static cache's i64 scalar input (tokens already in the cache); the varlen cache's i64 [N], one per sequence */
    position?: string;
    /** the varlen cache's i32 [N] input: each sequence's cache row */
    slot?: string;
  } | null;
  /**
   * the output holding the target's greedy pick (compile() traces it for decoders with a KV cache:
   * argmax of `logits` over the vocabulary, i64, one per position of `logits`), and the value it has
   * where a position has no token to pick (a NaN or +Inf among its logits, or none finite). Greedy
   * generate() downloads it instead of the logits. Absent in artifacts built before it, and in ones
   * without it; the runtime then takes the argmax of the downloaded logits itself.
   */
  nextToken?: { output: string; none: number };
  /** the placement pass's map of layers onto devices (compiled with maxMemory); absent otherwise */
  placement?: Placement;
  library: string;
}

export interface WeightQuant {
  scheme: "nf4" | "fp4" | "int8";
  block: number;
  doubleQuant: boolean;
}

export interface BuildOptions {
  target: Target;
  arch?: Arch;
  family: string;
  dtype: string;
  config?: Record<string, unknown> | null;
  /** upper bounds of symbolic dims (B, S, P, …) */
  bounds: Record<string, number>;
  /** the layers' devices (placement pass), written into the manifest */
  placement?: Placement;
  cacheDir?: string;
  /** emit.ts's qgroup: the 4-bit linears reading one x in one call (default true) */
  qgroup?: boolean;
  /** emit.ts's batch: independent small launches batched into one (batch-launches.ts; default true) */
  batch?: boolean;
  /** called as the build goes: "cache-hit" | "emit" | "compile" | "done" */
  onProgress?: (stage: "cache-hit" | "emit" | "compile" | "done", info?: string) => void;
}

export const defaultCacheDir = (): string => process.env.KILN_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "kiln", "artifacts");

function templateFiles(): [string, string][] {
  const out: [string, string][] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push([relative(TEMPLATES_DIR, p), readFileSync(p, "utf8")]);
    }
  };
  walk(TEMPLATES_DIR);
  return out;
}

/** The code generator's own sources: a change to how code is emitted must miss the cache. */
function codegenSources(): string {
  const dir = fileURLToPath(new URL(".", import.meta.url));
  return readdirSync(dir)
    .filter((f) => f.endsWith(".ts"))
    .sort()
    .map((f) => `${f}\n${readFileSync(join(dir, f), "utf8")}`)
    .join("\n");
}

const compilerVersions = new Map<string, string>();
async function compilerVersion(cmd: string): Promise<string> {
  let v = compilerVersions.get(cmd);
  if (v === undefined) {
    const r = await $({ nothrow: true, quiet: true })`${cmd} --version`;
    if (r.exitCode !== 0) throw new KilnError("E_BUILD", `the compiler '${cmd}' is not available (${r.stderr.trim() || `exit ${r.exitCode}`})`);
    v = r.stdout.trim().split("\n").filter(Boolean).join(" | ");
    compilerVersions.set(cmd, v);
  }
  return v;
}

function compilerCommand(target: Target, arch: Arch): { cmd: string; flags: string[]; source: string } {
  // -z nodelete: the binding dlcloses the library when its last buffer is freed, which would unmap
  // libgomp under OpenMP worker threads still spinning after a parallel region (a SIGSEGV at exit).
  // -fvisibility=hidden: only the C ABI (kiln_abi.h) is exported. Otherwise the function-local
  // statics of templates (e.g. the FA2 kernel's "shared-memory limit set" flag) are GNU_UNIQUE
  // symbols, which the dynamic linker binds to ONE copy across every library of the process even
  // under RTLD_LOCAL: a second artifact then skipped setting its own kernel's limit and failed to
  // launch it (cudaErrorInvalidValue) after a first artifact had run.
  if (target === "cpu") return { cmd: process.env.KILN_CXX ?? "g++", flags: ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-shared", "-fopenmp", "-Wl,-z,nodelete", "-Wall", "-Wno-unused-variable", "-Wno-unused-function"], source: "model.cpp" };
  const sm = arch.replace("sm_", "");
  return {
    cmd: process.env.KILN_NVCC ?? "nvcc",
    flags: ["-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden", `-gencode=arch=compute_${sm},code=sm_${sm}`, "-ldl", "--expt-relaxed-constexpr"],
    source: "model.cu",
  };
}

/** Peak bytes of op results alive at once, at the bounds (reshapes alias their operand). */
export const workspaceBytes = (g: Graph, at: Record<string, number>): number => peakLiveBytes(g, at);

/** Builds (or finds in the cache) the artifact of a graph; returns its folder and manifest. */
export async function buildArtifact(g: Graph, o: BuildOptions): Promise<{ dir: string; manifest: Manifest; cached: boolean }> {
  const arch: Arch = o.arch ?? "sm_90a";
  if (o.target === "cuda" && !ARCHES.includes(arch)) throw new KilnError("E_USAGE", `arch '${arch}' is not supported (supported: ${ARCHES.join(", ")})`);
  const { cmd, flags, source } = compilerCommand(o.target, arch);
  const version = await compilerVersion(cmd);
  const irText = print(g);
  const templates = templateFiles();
  const hash = createHash("sha256")
    .update(JSON.stringify({ kiln: KILN_VERSION, format: ARTIFACT_FORMAT, abi: ABI_VERSION, target: o.target, arch: o.target === "cuda" ? arch : null, cmd, version, flags, bounds: o.bounds, config: o.config ?? null, family: o.family, qgroup: o.qgroup !== false, ...(o.batch === false ? { batch: false } : {}), ...(o.placement ? { placement: o.placement } : {}) }))
    .update(irText)
    .update(JSON.stringify(templates))
    .update(codegenSources())
    .digest("hex")
    .slice(0, 32);
  const cacheDir = resolve(o.cacheDir ?? defaultCacheDir());
  const dir = join(cacheDir, hash);
  if (existsSync(join(dir, "manifest.json")) && existsSync(join(dir, LIBRARY))) {
    o.onProgress?.("cache-hit", dir);
    return { dir, manifest: JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as Manifest, cached: true };
  }

  o.onProgress?.("emit");
  const template = readFileSync(join(TEMPLATES_DIR, "model.cpp.tpl"), "utf8");
  const code = emitSource(g, { target: o.target, hash, kilnVersion: KILN_VERSION, template, qgroup: o.qgroup, batch: o.batch });
  mkdirSync(cacheDir, { recursive: true });
  const staging = join(cacheDir, `${hash}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(staging);
  try {
    writeFileSync(join(staging, source), code);
    writeFileSync(join(staging, "model.kir"), irText);
    o.onProgress?.("compile", `${cmd} ${source}`);
    const r = await $({ nothrow: true, quiet: true, cwd: staging })`${cmd} ${flags} -I${TEMPLATES_DIR} -o ${LIBRARY} ${source}`;
    if (r.exitCode !== 0) {
      const msg = (r.stderr || r.stdout).trim().split("\n").slice(0, 40).join("\n");
      throw new KilnError("E_BUILD", `${cmd} failed (exit ${r.exitCode}) compiling the ${o.target} target:\n${msg}`, { where: `${g.name} (${source})` });
    }
    const manifest = makeManifest(g, o, { hash, arch, cmd, version, flags });
    writeFileSync(join(staging, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    try {
      renameSync(staging, dir);
    } catch (e) {
      // another build of the same content won the race: use it
      if (!existsSync(join(dir, "manifest.json"))) throw new KilnError("E_IO", `cannot move the artifact into the cache: ${(e as Error).message}`, { where: dir });
      rmSync(staging, { recursive: true, force: true });
    }
    o.onProgress?.("done", dir);
    return { dir, manifest, cached: false };
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    throw e;
  }
}

function makeManifest(g: Graph, o: BuildOptions, b: { hash: string; arch: Arch; cmd: string; version: string; flags: string[] }): Manifest {
  const spec = (v: { name: string; dtype: string; shape: (number | string)[] }): TensorSpec => ({ name: v.name, dtype: v.dtype, shape: [...v.shape] });
  const dims: Manifest["dims"] = {};
  for (const v of g.inputs)
    v.shape.forEach((d, k) => {
      const bd = bindingDim(d);
      if (bd && !dims[bd.sym]) {
        if (o.bounds[bd.sym] === undefined) throw new KilnError("E_USAGE", `no upper bound given for the symbolic dim ${bd.sym} (of input '${v.name}')`);
        dims[bd.sym] = { max: o.bounds[bd.sym], from: `${v.name} dim ${k}${bd.offset ? ` − ${bd.offset}` : ""}` };
      }
    });
  const pasts = g.inputs.filter((v) => v.name.startsWith("past."));
  const aliased = inPlaceCacheWrites(g);
  const isStatic = g.inputs.some((v) => v.name === "cache_position");
  const isVarlen = isStatic && g.inputs.some((v) => v.name === "cache_slot");
  if (isStatic && aliased.size !== pasts.length) throw new KilnError("E_BUILD", `a static KV cache must be written in place: ${aliased.size} of ${pasts.length} past.* inputs are`);
  const quantOf = new Map<number, WeightQuant>();
  for (const n of g.nodes)
    if (n.op === "qlinear") {
      const w = n.operands[1];
      const q: WeightQuant = { scheme: n.attrs.scheme as WeightQuant["scheme"], block: n.attrs.block as number, doubleQuant: n.attrs.double_quant as boolean };
      const prev = quantOf.get(w.id);
      if (w.kind !== "param") throw new KilnError("E_BUILD", `qlinear's weight must be a parameter, got ${w.kind} ${w.name}`);
      if (prev && JSON.stringify(prev) !== JSON.stringify(q)) throw new KilnError("E_BUILD", `weight '${w.name}' is quantized two ways`);
      quantOf.set(w.id, q);
    }
  for (const n of g.nodes)
    if (n.op !== "qlinear") for (const o of n.operands) if (quantOf.has(o.id)) throw new KilnError("E_BUILD", `weight '${o.name}' is quantized for qlinear but '${n.op}' reads it too`);
  return {
    format: ARTIFACT_FORMAT,
    kiln: KILN_VERSION,
    abi: ABI_VERSION,
    target: o.target,
    arch: o.target === "cuda" ? b.arch : null,
    hash: b.hash,
    created: new Date().toISOString(),
    compiler: { command: b.cmd, version: b.version, flags: b.flags },
    model: { family: o.family, graph: g.name, dtype: o.dtype, config: o.config ?? null },
    inputs: g.inputs.map(spec),
    outputs: g.outputs.map((x) => {
      const a = aliased.get(x.value.id);
      return a ? { ...spec({ ...x.value, name: x.name }), aliases: a } : spec({ ...x.value, name: x.name });
    }),
    dims,
    weights: g.params.map((p) => ({ ...spec(p), quant: quantOf.get(p.id) ?? null })),
    workspace: { bytes: workspaceBytes(g, o.bounds), at: o.bounds },
    kvCache: pasts.length
      ? {
          layers: new Set(pasts.map((v) => v.name.split(".")[1])).size,
          inputs: pasts.map((v) => v.name),
          outputs: g.outputs.filter((x) => x.name.startsWith("present.")).map((x) => x.name),
          mode: isVarlen ? ("varlen" as const) : isStatic ? ("static" as const) : ("growing" as const),
          ...(isStatic ? { position: "cache_position" } : {}),
          ...(isVarlen ? { slot: "cache_slot" } : {}),
        }
      : null,
    ...(nextTokenOf(g) ? { nextToken: { output: NEXT_TOKEN, none: ARGMAX_NONE } } : {}),
    ...(o.placement ? { placement: o.placement } : {}),
    library: LIBRARY,
  };
}

/** Whether the graph has the output next_token: i64 with the shape of `logits` less its last dim (one pick per position). */
function nextTokenOf(g: Graph): boolean {
  const next = g.outputs.find((x) => x.name === NEXT_TOKEN)?.value;
  const logits = g.outputs.find((x) => x.name === "logits")?.value;
  if (!next) return false;
  const ok = !!logits && next.dtype === "i64" && shapeEq(next.shape, logits.shape.slice(0, -1));
  if (!ok) throw new KilnError("E_BUILD", `output '${NEXT_TOKEN}' must be i64 with the shape of 'logits' less its last dim, got ${typeString(next)}${logits ? ` for logits ${typeString(logits)}` : " and no logits"}`);
  return true;
}

/** Reads and checks an artifact folder's manifest. */
export function readManifest(dir: string): Manifest {
  const file = join(dir, "manifest.json");
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new KilnError("E_ARTIFACT", "not an artifact folder (it does not exist)", { where: dir });
  if (!existsSync(file)) throw new KilnError("E_ARTIFACT", "not an artifact folder (no manifest.json)", { where: dir });
  let m: Manifest;
  try {
    m = JSON.parse(readFileSync(file, "utf8")) as Manifest;
  } catch (e) {
    throw new KilnError("E_ARTIFACT", `manifest.json is not valid JSON: ${(e as Error).message}`, { where: file });
  }
  if (m.format !== ARTIFACT_FORMAT || m.abi !== ABI_VERSION)
    throw new KilnError("E_ARTIFACT", `artifact format ${m.format} / ABI ${m.abi}, this Kiln reads format ${ARTIFACT_FORMAT} / ABI ${ABI_VERSION}: recompile the model`, { where: dir });
  if (!existsSync(join(dir, m.library ?? LIBRARY))) throw new KilnError("E_ARTIFACT", `the library ${m.library} is missing`, { where: dir });
  return m;
}

/** Copies an artifact to `out` (atomically: a staging copy renamed into place). */
export function copyArtifact(from: string, out: string): void {
  const target = resolve(out);
  if (existsSync(target) && !statSync(target).isDirectory()) throw new KilnError("E_IO", "exists and is not a folder: cannot write an artifact there", { where: out });
  mkdirSync(dirname(target), { recursive: true });
  const staging = `${target}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  cpSync(from, staging, { recursive: true });
  if (existsSync(target)) {
    if (!statSync(target).isDirectory()) throw new KilnError("E_IO", "exists and is not a folder: cannot write an artifact there", { where: out });
    if (!existsSync(join(target, "manifest.json")) && readdirSync(target).length > 0)
      throw new KilnError("E_IO", "refusing to replace a folder that is not an artifact", { where: out });
    rmSync(target, { recursive: true, force: true });
  }
  renameSync(staging, target);
}
