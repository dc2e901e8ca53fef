// `npm run bench:padded` (GPU machine): a padded batch run on its real tokens only. The
// Llama-2-7B-shaped random bf16 model, 8 sequences of lengths 256, 512, …, 2048 padded to 2048,
// forward to each sequence's last-token logits: Kiln's packed build (compile({ padded, kvCache:
// "none", lastToken }): unpad-varlen, varlen attention) beside Hugging Face transformers with sdpa
// and eager attention on the same prompts (bench/padded_peer.py runs first). Prints a table and
// writes bench/results/padded-<date>-<commit>.json.

import { execSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../compiler/codegen/compile.js";
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const peer = JSON.parse(readFileSync(process.env.KILN_BENCH_PEER ?? "/tmp/kiln-bench/padded-peer.json", "utf8")) as {
  device: string; lengths: number[]; prompts: number[][]; peer: string; sdpa: { forward_s: number; argmax: number[] }; eager: { forward_s: number; argmax: number[] };
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// KILN_BENCH_ARTIFACT: the packed artifact compiled elsewhere (saves device time)
const art = process.env.KILN_BENCH_ARTIFACT
  ? { dir: process.env.KILN_BENCH_ARTIFACT }
  : await compile(ckpt, { target: "cuda", dtype: "bf16", padded: true, kvCache: "none", lastToken: true, maxBatch: 8, maxSeq: 2048 });
const model = await loadModel(art.dir, { checkpoint: ckpt });
if (!model.packed) throw new Error(`${art.dir} is not a packed build (compile with padded, kvCache none, lastToken)`);
const times: number[] = [];
let logits: Float32Array = new Float32Array(0);
let shape: number[] = [];
for (let r = 0; r < 6; r++) {
  const t0 = performance.now();
  const out = await model.forward(peer.prompts);
  const t = (performance.now() - t0) / 1000;
  if (r > 0) times.push(t); // the first run warms up (allocator, cuBLASLt heuristics)
  ({ logits, shape } = out);
}
await model.dispose();
const V = shape[2];
const argmax = peer.lengths.map((_n, b) => {
  let best = 0;
  for (let v = 1; v < V; v++) if (logits[b * V + v] > logits[b * V + best]) best = v;
  return best;
});
const agree = argmax.filter((t, b) => t === peer.sdpa.argmax[b]).length;
const kiln = median(times);
const commit = process.env.KILN_COMMIT ?? (() => { try { return execSync("git rev-parse --short HEAD", { stdio: ["ignore", "pipe", "ignore"] }).toString().trim(); } catch { return "unknown"; } })();
const result = {
  bench: "padded", date: new Date().toISOString(), commit, device: peer.device,
  model: "Llama-2-7B shape (32 layers, 4096 hidden, 11008 MLP, 32000 vocab), random bf16 weights",
  workload: `8 sequences of ${peer.lengths.join(", ")} tokens padded to 2048 (${peer.lengths.reduce((a, b) => a + b, 0)} real tokens), forward to each last-token logits; median of ${times.length} after warm-up`,
  kiln: { forward_s: kiln, runs_s: times },
  peer: { name: peer.peer, sdpa_s: peer.sdpa.forward_s, eager_s: peer.eager.forward_s },
  last_token_argmax_agreeing_with_sdpa: `${agree}/8`,
  bar_s: 0.22,
};
const dir = join(import.meta.dirname, "results");
mkdirSync(dir, { recursive: true });
const file = join(dir, `padded-${result.date.slice(0, 10)}-${commit.slice(0, 7)}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
if (process.env.OUT) writeFileSync(join(process.env.OUT, "padded.json"), `${JSON.stringify(result, null, 2)}\n`);
console.log(`\n${result.device}: ${result.workload}`);
console.log(`| | forward | vs Kiln |`);
console.log(`| --- | --- | --- |`);
console.log(`| Kiln (packed, varlen) | ${(kiln * 1000).toFixed(1)} ms | 1.00× |`);
console.log(`| ${peer.peer} sdpa | ${(peer.sdpa.forward_s * 1000).toFixed(1)} ms | ${(peer.sdpa.forward_s / kiln).toFixed(2)}× slower |`);
console.log(`| ${peer.peer} eager | ${(peer.eager.forward_s * 1000).toFixed(1)} ms | ${(peer.eager.forward_s / kiln).toFixed(2)}× slower |`);
console.log(`last-token argmax agreeing with sdpa (bf16 rounding differs): ${agree}/8; bar ≤ 220 ms: ${kiln <= 0.22 ? "met" : "not met"}`);
console.log(`wrote ${file}`);
