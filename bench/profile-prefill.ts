// Where a single-sequence prefill's GPU time goes: one forward of KILN_PREFILL (default 2048)
// tokens through the static-cache artifact in KILN_BENCH_ARTIFACT (the shape bench/quant.ts times),
// run under KILN_PROFILE=ops (set by the caller, with KILN_PROFILE_EVERY=2), which prints GPU time
// by op kind. Companion of bench/quant.ts (see bench/NOTES.md).
import { loadModel } from "../runtime/api.js";

const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const art = process.env.KILN_BENCH_ARTIFACT;
if (!art) throw new Error("set KILN_BENCH_ARTIFACT to a compiled artifact folder");
const S = Number(process.env.KILN_PREFILL ?? 2048);
interface Internals {
  newCache(B: number, S: number): Map<string, unknown>;
  invoke(feed: Map<string, unknown>, toHost: (name: string) => boolean): Promise<Map<string, { free?: () => void }>>;
  manifest: { kvCache?: { position?: string } };
}
const model = await loadModel(art, { checkpoint: ckpt });
const m = model as unknown as Internals;
const ids = BigInt64Array.from({ length: S }, (_, i) => BigInt((i * 7919 + 13) % 32000));
let cache = m.newCache(1, S);
for (let r = 0; r < 4; r++) {
  const feed = new Map(cache);
  feed.set("input_ids", { dtype: 3, shape: [1, S], data: ids });
  if (m.manifest.kvCache?.position) feed.set(m.manifest.kvCache.position, { dtype: 3, shape: [], data: new BigInt64Array([0n]) });
  const t = performance.now();
  const outs = await m.invoke(feed, () => false);
  console.log(`prefill ${r}: ${(performance.now() - t).toFixed(1)} ms`);
  cache = new Map();
  for (const [k, o] of outs) {
    if (k.startsWith("present.")) cache.set(k.replace(/^present\./, "past."), o);
    else o.free?.();
  }
}
for (const c of cache.values()) (c as { free?: () => void }).free?.();
await model.dispose();
