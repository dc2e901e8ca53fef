// Where a packed prefill's time goes: 8 random prompts of 256…2048 tokens through the packed
// artifact in KILN_BENCH_ARTIFACT. Under KILN_PROFILE=ops (set by the caller, with
// KILN_PROFILE_EVERY=4) the runtime prints GPU and host time by op kind; this script also times
// the same forward through the Node API and through the artifact call alone (inputs prebuilt), so
// the JavaScript side shows as their difference. Companion of bench/padded.ts.
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const art = process.env.KILN_BENCH_ARTIFACT;
if (!art) throw new Error("set KILN_BENCH_ARTIFACT to a packed artifact folder");
interface Internals {
  invoke(feed: Map<string, unknown>, toHost: (name: string) => boolean): Promise<Map<string, { free?: () => void }>>;
}
const model = await loadModel(art, { checkpoint: ckpt });
const prompts = Array.from({ length: 8 }, (_, b) => Array.from({ length: 256 * (b + 1) }, (_x, i) => (i * 7919 + b * 104729) % 32000));
for (let r = 0; r < 5; r++) {
  const t0 = performance.now();
  await model.forward(prompts);
  console.log(`forward ${r}: ${(performance.now() - t0).toFixed(1)} ms (Node API)`);
}
const T = prompts.reduce((a, p) => a + p.length, 0);
const cu = new Int32Array(prompts.length + 1);
prompts.forEach((p, b) => (cu[b + 1] = cu[b] + p.length));
const feed = new Map<string, unknown>([
  ["input_ids", { dtype: 3, shape: [1, T], data: BigInt64Array.from(prompts.flat(), (x) => BigInt(x)) }],
  ["cu_seqlens", { dtype: 4, shape: [prompts.length + 1], data: cu }],
]);
for (let r = 0; r < 4; r++) {
  const t0 = performance.now();
  const outs = await (model as unknown as Internals).invoke(feed, () => true);
  console.log(`artifact call ${r}: ${(performance.now() - t0).toFixed(1)} ms (inputs prebuilt, outputs to the host)`);
  for (const o of outs.values()) o.free?.();
}
await model.dispose();
