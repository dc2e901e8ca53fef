// Where a decode step's time goes: runs greedy decode on the bench checkpoint with the artifact in
// KILN_BENCH_ARTIFACT. Under KILN_PROFILE=ops (set by the caller) the runtime prints GPU time by op
// kind every 32 forwards (eager: graphs off); under KILN_PROFILE=1 (graphs on) the host's issue time
// and its wait for the GPU per forward. This script prints the median time between tokens, so the
// Node side of a step (async hop, logits to the host, sampling) is that minus issue + wait.
// Greedy decoding picks its token on the target (the artifact's next_token; the logits stay there);
// KILN_BENCH_GREEDY=host loads the artifact with greedyOnTarget: false (the logits come to Node,
// which takes their argmax), the path of artifacts built before next_token, for an A/B. The first
// line says which path ran. Greedy decode on the target is pipelined (generate() queues step t + 1
// before token t reaches Node; a forward that does not wait reports no GPU wait under
// KILN_PROFILE=1): KILN_PIPELINE=0 loads with pipelineDecode: false, each forward waiting.
// Device-side companion of bench/decode.ts (see bench/NOTES.md).
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const art = process.env.KILN_BENCH_ARTIFACT;
if (!art) throw new Error("set KILN_BENCH_ARTIFACT to a compiled artifact folder");
const onHost = process.env.KILN_BENCH_GREEDY === "host";
const pipelineDecode = process.env.KILN_PIPELINE !== "0";
const model = await loadModel(art, { checkpoint: ckpt, greedyOnTarget: !onHost, pipelineDecode });
console.log(
  onHost || !model.manifest.nextToken
    ? `greedy: argmax in Node over the downloaded logits (${onHost ? "KILN_BENCH_GREEDY=host" : "the artifact has no next_token"})`
    : `greedy: next_token picked on the target (the logits stay there), ${pipelineDecode ? "pipelined" : "each step waited for (KILN_PIPELINE=0)"}`,
);
const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919) % 32000);
let n = 0;
const gaps: number[] = [];
let last = performance.now();
for await (const t of model.generate(prompt, { maxNewTokens: 96 })) {
  const now = performance.now();
  if (n > 0) gaps.push(now - last); // the first token includes the prefill
  last = now;
  n += t.id >= 0 ? 1 : 0;
}
const sorted = [...gaps].sort((a, b) => a - b);
console.log(`profiled ${n} tokens; between tokens: median ${sorted[Math.floor(sorted.length / 2)].toFixed(3)} ms, min ${sorted[0].toFixed(3)} ms`);
await model.dispose();
