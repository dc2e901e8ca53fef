// `npm run bench:decode` (GPU machine): greedy decode of a Llama-2-7B-shaped random bf16 model,
// batch 1, 128 new tokens after a 128-token prompt; Kiln beside Hugging Face transformers on the
// same checkpoint and prompt (bench/decode_peer.py runs first and leaves its numbers in a JSON).
// Prints a short table and writes bench/results/decode-<date>.json.

import { execSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../compiler/codegen/compile.js";
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const peer = JSON.parse(readFileSync(process.env.KILN_BENCH_PEER ?? "/tmp/kiln-bench/peer.json", "utf8")) as {
  peer: string; device: string; prompt: number[]; tokens: number[]; new_tokens: number; runs: number; tokens_per_s: number; decode_tokens_per_s: number; prefill_s: number; total_s: number;
};
// KILN_CUDA_GRAPHS=0: decode steps run eagerly instead of replaying a captured CUDA graph (A/B)
const graphs = process.env.KILN_CUDA_GRAPHS !== "0";
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// KILN_BENCH_ARTIFACT: an artifact compiled elsewhere for this checkpoint's config (saves device time)
const t0 = performance.now();
const art = process.env.KILN_BENCH_ARTIFACT
  ? { dir: process.env.KILN_BENCH_ARTIFACT, cached: true }
  : await compile(ckpt, { target: "cuda", dtype: "bf16", maxBatch: 1, maxSeq: 512, arch: (process.env.KILN_ARCH as "sm_90a") ?? "sm_90a" });
const compileS = (performance.now() - t0) / 1000;
const t1 = performance.now();
const model = await loadModel(art.dir, { checkpoint: ckpt });
const loadS = (performance.now() - t1) / 1000;

async function once(n: number): Promise<{ total: number; first: number; tokens: number[] }> {
  const start = performance.now();
  let first = 0;
  const tokens: number[] = [];
  for await (const t of model.generate(peer.prompt, { maxNewTokens: n })) {
    if (tokens.length === 0) first = performance.now() - start;
    tokens.push(t.id);
  }
  return { total: (performance.now() - start) / 1000, first: first / 1000, tokens };
}
await once(8); // warm-up: allocator, cuBLASLt heuristics, page-in
const runs = [];
for (let i = 0; i < peer.runs; i++) runs.push(await once(peer.new_tokens));
await model.dispose();

const total = median(runs.map((r) => r.total));
const first = median(runs.map((r) => r.first));
const tps = peer.new_tokens / total;
const decodeTps = (peer.new_tokens - 1) / (total - first);
let agree = 0;
while (agree < runs[0].tokens.length && runs[0].tokens[agree] === peer.tokens[agree]) agree++;

const commit = process.env.KILN_COMMIT ?? (() => { try { return execSync("git rev-parse HEAD", { stdio: ["ignore", "pipe", "ignore"] }).toString().trim(); } catch { return "unknown"; } })();
const result = {
  bench: "decode", date: new Date().toISOString(), commit, device: peer.device,
  model: "Llama-2-7B shape (32 layers, 4096 hidden, 11008 MLP, 32000 vocab), random bf16 weights",
  workload: `batch 1, ${peer.prompt.length}-token prompt, ${peer.new_tokens} new tokens, greedy; median of ${peer.runs} runs after warm-up`,
  kiln: { tokens_per_s: tps, decode_tokens_per_s: decodeTps, first_token_s: first, compile_s: compileS, load_s: loadS, cached_compile: art.cached, cuda_graphs: graphs },
  peer: { name: peer.peer, tokens_per_s: peer.tokens_per_s, decode_tokens_per_s: peer.decode_tokens_per_s, prefill_s: peer.prefill_s },
  greedy_tokens_agreeing_with_peer: agree,
};
const dir = join(import.meta.dirname, "results");
mkdirSync(dir, { recursive: true });
const file = join(dir, `decode-${result.date.slice(0, 10)}-${commit.slice(0, 7)}${graphs ? "" : "-nographs"}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
if (process.env.OUT) writeFileSync(join(process.env.OUT, `decode${graphs ? "" : "-nographs"}.json`), `${JSON.stringify(result, null, 2)}\n`);
console.log(`\n${result.device}: ${result.workload}`);
console.log(`| | tokens/s | decode tokens/s | first token |`);
console.log(`| --- | --- | --- | --- |`);
console.log(`| Kiln${graphs ? "" : " (no CUDA graphs)"} | ${tps.toFixed(1)} | ${decodeTps.toFixed(1)} | ${(first * 1000).toFixed(1)} ms |`);
console.log(`| ${peer.peer} | ${peer.tokens_per_s.toFixed(1)} | ${peer.decode_tokens_per_s.toFixed(1)} | ${(peer.prefill_s * 1000).toFixed(1)} ms (prefill) |`);
console.log(`| ratio | ${(tps / peer.tokens_per_s).toFixed(2)}× | ${(decodeTps / peer.decode_tokens_per_s).toFixed(2)}× | |`);
console.log(`greedy tokens agreeing with the peer (bf16 rounding differs): first ${agree} of ${peer.new_tokens}; load ${loadS.toFixed(1)} s, compile ${compileS.toFixed(1)} s`);
console.log(`wrote ${file}`);
