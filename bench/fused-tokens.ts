// Greedy tokens of one artifact with a run-time fusion on and off (`npx tsx bench/fused-tokens.ts`,
// GPU machine): KILN_BENCH_ARTIFACT, KILN_BENCH_CKPT as bench/profile-decode.ts; FUSE_ENV names the
// switch (default KILN_FUSE_ROPE), read once per loaded library, so the "off" run loads a copy of
// the artifact. Prints both token lists and exits 1 where they differ.
import { cpSync, rmSync } from "node:fs";
import { loadModel } from "../runtime/api.js";

const art = process.env.KILN_BENCH_ARTIFACT;
if (!art) throw new Error("set KILN_BENCH_ARTIFACT to a compiled artifact folder");
const ckpt = process.env.KILN_BENCH_CKPT ?? "/tmp/kiln-bench/llama2-7b-random";
const sw = process.env.FUSE_ENV ?? "KILN_FUSE_ROPE";
const prompt = Array.from({ length: 96 }, (_, i) => (i * 7919 + 13) % 32000);

async function tokens(dir: string): Promise<number[]> {
  await using m = await loadModel(dir, { checkpoint: ckpt });
  const out: number[] = [];
  for await (const t of m.generate(prompt, { maxNewTokens: 48 })) out.push(t.id);
  return out;
}
const on = await tokens(art);
const copy = `${art.replace(/\/$/, "")}-off`;
cpSync(art, copy, { recursive: true });
process.env[sw] = "0";
let off: number[];
try {
  off = await tokens(copy);
} finally {
  delete process.env[sw];
  rmSync(copy, { recursive: true, force: true });
}
const same = on.length === off.length && on.every((t, i) => t === off[i]);
console.log(JSON.stringify({ artifact: art, switch: sw, on, off, same }));
if (!same) process.exit(1);
