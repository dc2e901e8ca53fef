// Where a decode step's GPU time goes: runs greedy decode on the bench checkpoint with the artifact
// in KILN_BENCH_ARTIFACT under KILN_PROFILE=ops (set by the caller), which prints GPU time by op
// kind every 32 forwards. Device-side companion of bench/decode.ts (see bench/NOTES.md).
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const art = process.env.KILN_BENCH_ARTIFACT;
if (!art) throw new Error("set KILN_BENCH_ARTIFACT to a compiled artifact folder");
const model = await loadModel(art, { checkpoint: ckpt });
const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919) % 32000);
let n = 0;
for await (const t of model.generate(prompt, { maxNewTokens: 96 })) n += t.id >= 0 ? 1 : 0;
console.log(`profiled ${n} tokens`);
await model.dispose();
