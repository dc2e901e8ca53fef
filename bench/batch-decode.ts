// Batched greedy decode on the varlen cache, pipelined (as generateBatch runs it) against the same
// model with pipelining off, alternated in one process: 8 prompts of 128 tokens, 64 new tokens
// each, median of 3 of each after a warm-up; the tokens of both must agree. A device-side A/B for
// LoadOptions.pipelineDecode (bench/NOTES.md), not a peer comparison: bench:decode and bench:quant
// hold those. KILN_BENCH_ARTIFACT: a 7B varlen artifact (kiln compile … --kv-cache varlen
// --max-batch 8); writes $OUT/batch-decode.json when OUT is set.
import { execSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const dir = process.env.KILN_BENCH_ARTIFACT;
if (!dir) throw new Error("set KILN_BENCH_ARTIFACT to a varlen artifact folder");
const ROWS = 8, PROMPT = 128, NEW = 64, RUNS = 3;
const model = await loadModel(dir, { checkpoint: ckpt });
const internals = model as unknown as { pipelineDecode: boolean };
const prompts = Array.from({ length: ROWS }, (_, r) => Array.from({ length: PROMPT }, (_, i) => (i * 7919 + r * 104729) % 32000));
const once = async (piped: boolean) => {
  internals.pipelineDecode = piped;
  const tokens = prompts.map((): number[] => []);
  let first = 0;
  for await (const t of model.generateBatch(prompts, { maxNewTokens: NEW })) {
    if (first === 0) first = performance.now();
    tokens[t.row].push(t.id);
  }
  const end = performance.now();
  // decode: the tokens after each row's first, over the time after the first token came
  return { tokensPerS: (ROWS * (NEW - 1)) / ((end - first) / 1000), tokens };
};
await once(true);
await once(false);
const piped: number[] = [], plain: number[] = [];
let ref: number[][] | undefined;
for (let i = 0; i < RUNS; i++) {
  for (const p of [true, false]) {
    const r = await once(p);
    (p ? piped : plain).push(r.tokensPerS);
    ref ??= r.tokens;
    if (JSON.stringify(r.tokens) !== JSON.stringify(ref)) throw new Error(`pipelined ${p}: different tokens`);
  }
}
await model.dispose();
const median = (x: number[]) => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];
const device = (() => { try { return execSync("nvidia-smi --query-gpu=name --format=csv,noheader").toString().trim().split("\n")[0]; } catch { return "unknown"; } })();
const result = {
  bench: "batch-decode", date: new Date().toISOString(), commit: process.env.KILN_COMMIT ?? "unknown", device, artifact: dir,
  workload: `generateBatch, ${ROWS} prompts of ${PROMPT} tokens, ${NEW} new tokens each, greedy, median of ${RUNS} (pipelined and not, alternated)`,
  pipelined_tokens_per_s: median(piped), unpipelined_tokens_per_s: median(plain), runs: { piped, plain }, same_tokens: true,
};
console.log(`${device}: ${result.workload}\n| mode | decode tokens/s (all rows) |\n| --- | --- |\n| pipelined | ${result.pipelined_tokens_per_s.toFixed(1)} |\n| unpipelined | ${result.unpipelined_tokens_per_s.toFixed(1)} |`);
if (process.env.OUT) writeFileSync(join(process.env.OUT, "batch-decode.json"), `${JSON.stringify(result, null, 2)}\n`);
