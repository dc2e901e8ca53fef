// Where a packed prefill's GPU time goes: 8 random prompts of 256…2048 tokens through the packed
// artifact in KILN_BENCH_ARTIFACT, under KILN_PROFILE=ops (set by the caller with
// KILN_PROFILE_EVERY=4), which prints GPU time by op kind. Companion of bench/padded.ts.
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const art = process.env.KILN_BENCH_ARTIFACT;
if (!art) throw new Error("set KILN_BENCH_ARTIFACT to a packed artifact folder");
const model = await loadModel(art, { checkpoint: ckpt });
const prompts = Array.from({ length: 8 }, (_, b) => Array.from({ length: 256 * (b + 1) }, (_x, i) => (i * 7919 + b * 104729) % 32000));
for (let r = 0; r < 5; r++) {
  const t0 = performance.now();
  await model.forward(prompts);
  console.log(`forward ${r}: ${(performance.now() - t0).toFixed(1)} ms`);
}
await model.dispose();
