// `npm run bench:quant` (GPU machine): the Llama-2-7B-shaped random model (bench/decode_peer.py
// makes the checkpoint when it is missing) in bf16, LLM.int8, FP4 and NF4 (± double quantization),
// in one run: weight memory on the device, greedy decode at batch 1 (128 new tokens after a
// 128-token prompt, median of 3 after a warm-up, as bench/decode.ts) and prefill at S = 2048 (one
// forward of a 2048-token prompt, logits left on the device; median of 7 after a warm-up).
// Bars (issue 6): 4-bit linears ≤ 0.29× their bf16 bytes (≤ 0.27× with double quantization);
// 4-bit decode ≥ 2.5× Kiln's bf16 decode; int8 prefill no slower than bf16 prefill.
//
// Artifacts: KILN_QUANT_ARTIFACTS=<prefix> takes <prefix>-bf16, -int8, -fp4, -fp4dq, -nf4, -nf4dq
// compiled elsewhere (`kiln compile <config> --target cuda --dtype bf16 --max-batch 1 --max-seq 2304
// [--quant …] --out <prefix>-…`), else they are compiled here. KILN_QUANT_ONLY=a,b runs a subset.
// Writes bench/results/quant-<date>-<commit>.json (KILN_COMMIT names the commit) and prints a table.

import { execFileSync, execSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../compiler/codegen/compile.js";
import type { CompileOptions } from "../compiler/codegen/compile.js";
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const ROOT = join(import.meta.dirname, "..");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
// prefill runs: 7 (3 left the median at the mercy of one slow run: 46.5 / 60.5 / 83.3 ms on an H200)
const PROMPT = 128, NEW = 128, RUNS = 3, PREFILL = 2048, PREFILL_RUNS = 7;

if (!existsSync(join(ckpt, "config.json"))) {
  // bench/decode_peer.py's own checkpoint code (everything before it loads the model to time it)
  const py = `import sys; sys.argv = ["decode_peer.py", "--ckpt", ${JSON.stringify(ckpt)}]
src = open(${JSON.stringify(join(ROOT, "bench", "decode_peer.py"))}).read()
exec(src.split("model = LlamaForCausalLM.from_pretrained")[0])`;
  execFileSync("python3", ["-c", py], { stdio: "inherit" });
}

const VARIANTS: { name: string; label: string; q: Pick<CompileOptions, "quant" | "doubleQuant"> }[] = [
  { name: "bf16", label: "bf16", q: {} },
  { name: "int8", label: "LLM.int8", q: { quant: "int8" } },
  { name: "fp4", label: "fp4", q: { quant: "fp4" } },
  { name: "fp4dq", label: "fp4 + double quant", q: { quant: "fp4", doubleQuant: true } },
  { name: "nf4", label: "nf4", q: { quant: "nf4" } },
  { name: "nf4dq", label: "nf4 + double quant", q: { quant: "nf4", doubleQuant: true } },
];
const only = process.env.KILN_QUANT_ONLY?.split(",");

// a fixed pseudo-random prompt (LCG), the same for every variant
const ids = (n: number, seed: number) => {
  let s = seed;
  return Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31), s % 32000));
};
const prompt = ids(PROMPT, 1), long = ids(PREFILL, 2);

interface Internals {
  newCache(B: number, S: number): Map<string, unknown>;
  invoke(feed: Map<string, unknown>, toHost: (name: string) => boolean): Promise<Map<string, { free?: () => void }>>;
  manifest: { kvCache?: { position?: string } };
  pipelineDecode: boolean;
}

const device = (() => {
  try {
    return execSync("nvidia-smi --query-gpu=name --format=csv,noheader", { stdio: ["ignore", "pipe", "ignore"] }).toString().trim().split("\n")[0];
  } catch {
    return "unknown";
  }
})();

const rows: Record<string, unknown>[] = [];
for (const v of VARIANTS) {
  if (only && !only.includes(v.name)) continue;
  const pre = process.env.KILN_QUANT_ARTIFACTS && `${process.env.KILN_QUANT_ARTIFACTS}-${v.name}`;
  const dir =
    pre && existsSync(join(pre, "manifest.json"))
      ? pre
      : (await compile(ckpt, { target: "cuda", dtype: "bf16", maxBatch: 1, maxSeq: PREFILL + 256, arch: (process.env.KILN_ARCH as "sm_90a") ?? "sm_90a", ...v.q })).dir;
  const t0 = performance.now();
  const model = await loadModel(dir, { checkpoint: ckpt });
  const loadS = (performance.now() - t0) / 1000;
  const bytes = model.weightBytes();
  const total = Object.values(bytes).reduce((a, b) => a + b, 0);
  // the linears (the weights quantize-linear rewrites: every linear but lm_head) against their bf16 bytes
  const linears = model.manifest.weights.filter((w) => /\.(q|k|v|o|gate|up|down)_proj\.weight$/.test(w.name));
  const linBytes = linears.reduce((a, w) => a + bytes[w.name], 0);
  const linBf16 = linears.reduce((a, w) => a + 2 * (w.shape as number[]).reduce((x, y) => x * y, 1), 0);

  const once = async (n: number) => {
    const start = performance.now();
    let first = 0;
    const tokens: number[] = [];
    for await (const t of model.generate(prompt, { maxNewTokens: n })) {
      if (tokens.length === 0) first = performance.now() - start;
      tokens.push(t.id);
    }
    return { total: (performance.now() - start) / 1000, first: first / 1000, tokens };
  };
  await once(8);
  // decode as generate() runs it (pipelined: step t + 1 issued before token t reaches Node), and
  // the same model with pipelining off, alternated; both must give the same tokens
  const mi = model as unknown as Internals;
  const runs: Awaited<ReturnType<typeof once>>[] = [], plainRuns: Awaited<ReturnType<typeof once>>[] = [];
  for (let i = 0; i < RUNS; i++) {
    mi.pipelineDecode = true;
    runs.push(await once(NEW));
    mi.pipelineDecode = false;
    plainRuns.push(await once(NEW));
  }
  mi.pipelineDecode = true;
  if (plainRuns.some((r) => r.tokens.join() !== runs[0].tokens.join())) throw new Error(`${v.name}: pipelined and unpipelined decode gave different tokens`);
  const tot = median(runs.map((r) => r.total)), first = median(runs.map((r) => r.first));
  const plainTot = median(plainRuns.map((r) => r.total)), plainFirst = median(plainRuns.map((r) => r.first));

  // prefill: one forward of PREFILL tokens through the artifact, the logits left on the device;
  // the static cache the first call uploads (zeros) is written in place and fed back as it is, so
  // the timed calls upload only the ids (and replay the captured forward, as decode steps do)
  const m = model as unknown as Internals;
  let cache = m.newCache(1, PREFILL);
  const prefillOnce = async () => {
    const feed = new Map(cache);
    feed.set("input_ids", { dtype: 3, shape: [1, PREFILL], data: BigInt64Array.from(long, (x) => BigInt(x)) });
    if (m.manifest.kvCache?.position) feed.set(m.manifest.kvCache.position, { dtype: 3, shape: [], data: new BigInt64Array([0n]) });
    const t = performance.now();
    const outs = await m.invoke(feed, () => false);
    const ms = performance.now() - t;
    cache = new Map();
    for (const [k, o] of outs) {
      if (k.startsWith("present.")) cache.set(k.replace(/^present\./, "past."), o);
      else o.free?.();
    }
    return ms;
  };
  await prefillOnce();
  const preMs: number[] = [];
  for (let i = 0; i < PREFILL_RUNS; i++) preMs.push(await prefillOnce());
  for (const c of cache.values()) (c as { free?: () => void }).free?.();
  await model.dispose();

  const row = {
    variant: v.name, label: v.label, artifact: dir, load_s: loadS,
    weight_bytes: total, linear_bytes: linBytes, linear_bf16_bytes: linBf16, linear_ratio: linBytes / linBf16,
    decode_tokens_per_s: (NEW - 1) / (tot - first), tokens_per_s: NEW / tot, first_token_ms: first * 1000,
    decode_unpipelined_tokens_per_s: (NEW - 1) / (plainTot - plainFirst),
    prefill_ms: median(preMs), prefill_runs_ms: preMs, tokens: runs[0].tokens.slice(0, 16),
  };
  rows.push(row);
  console.log(JSON.stringify({ ...row, tokens: undefined }));
}

const byName = (n: string) => rows.find((r) => r.variant === n) as Record<string, number> | undefined;
const bf = byName("bf16");
for (const r of rows) {
  const x = r as Record<string, number | string | boolean>;
  x.total_ratio = bf ? (x.weight_bytes as number) / bf.weight_bytes : NaN;
  x.decode_vs_bf16 = bf ? (x.decode_tokens_per_s as number) / bf.decode_tokens_per_s : NaN;
  x.decode_unpipelined_vs_bf16 = bf ? (x.decode_unpipelined_tokens_per_s as number) / bf.decode_unpipelined_tokens_per_s : NaN;
  x.prefill_vs_bf16 = bf ? (x.prefill_ms as number) / bf.prefill_ms : NaN;
}
const four = rows.filter((r) => /^(fp4|nf4)/.test(r.variant as string)) as Record<string, number & string>[];
const bars = {
  // null (n/a) where the run had no 4-bit variant: every() of nothing is not a measurement
  "4-bit linears ≤ 0.29× bf16 bytes (≤ 0.27× with double quant)": four.length === 0 ? null : four.every((r) => r.linear_ratio <= (String(r.variant).endsWith("dq") ? 0.27 : 0.29)),
  "4-bit decode ≥ 2.5× bf16 decode": bf && four.length > 0 ? four.every((r) => r.decode_vs_bf16 >= 2.5) : null,
  "int8 prefill no slower than bf16 prefill": bf && byName("int8") ? byName("int8")!.prefill_ms <= bf.prefill_ms : null,
};

const commit = process.env.KILN_COMMIT ?? (() => { try { return execSync("git rev-parse --short HEAD", { stdio: ["ignore", "pipe", "ignore"] }).toString().trim(); } catch { return "unknown"; } })();
const result = {
  bench: "quant", date: new Date().toISOString(), commit, device,
  model: "Llama-2-7B shape (32 layers, 4096 hidden, 11008 MLP, 32000 vocab), random bf16 weights; lm_head kept in bf16 (llm_int8_skip_modules)",
  workload: `decode: batch 1, ${PROMPT}-token prompt, ${NEW} new tokens, greedy, median of ${RUNS} after warm-up (CUDA graphs on; pipelined as generate() runs it, and unpipelined alternately); prefill: one forward of ${PREFILL} tokens, logits left on the device, median of ${PREFILL_RUNS} after warm-up`,
  rows, bars,
};
const outDir = join(import.meta.dirname, "results");
mkdirSync(outDir, { recursive: true });
const file = join(outDir, `quant-${result.date.slice(0, 10)}-${commit.slice(0, 7)}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
if (process.env.OUT) writeFileSync(join(process.env.OUT, "quant.json"), `${JSON.stringify(result, null, 2)}\n`);
const f = (x: unknown, d = 1) => (typeof x === "number" ? x.toFixed(d) : String(x));
console.log(`\n${device}: ${result.workload}`);
console.log("| variant | weights (GB) | linears vs bf16 | decode tok/s | vs bf16 | unpipelined tok/s | vs bf16 | prefill S=2048 (ms) | vs bf16 | load (s) |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows as Record<string, number>[])
  console.log(
    `| ${r.label} | ${f(r.weight_bytes / 1e9, 2)} | ${f(r.linear_ratio, 3)}× | ${f(r.decode_tokens_per_s)} | ${f(r.decode_vs_bf16, 2)}× | ${f(r.decode_unpipelined_tokens_per_s)} | ${f(r.decode_unpipelined_vs_bf16, 2)}× | ${f(r.prefill_ms)} | ${f(r.prefill_vs_bf16, 2)}× | ${f(r.load_s)} |`,
  );
for (const [k, v] of Object.entries(bars)) console.log(`${v === true ? "met" : v === false ? "NOT met" : "n/a"}: ${k}`);
console.log(`wrote ${file}`);
