// The `kiln` command, end to end as a user runs it (node bin/kiln.mjs in a child process).

import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, test } from "@jest/globals";
import { parse, print } from "../compiler/ir/index.js";
import { openCheckpoint } from "../runtime/safetensors.js";

const ROOT = join(import.meta.dirname, "..");
const run = async (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
  try {
    const { stdout, stderr } = await promisify(execFile)("node", [join(ROOT, "bin/kiln.mjs"), ...args], { cwd: ROOT, maxBuffer: 64 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
};

describe("kiln ir", () => {
  test("prints IR for a fixture config that parses back to the same text", async () => {
    const r = await run("ir", "models/llama.ts", "--config", "test/fixtures/llama-gqa/config.json");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^graph llama \{\n  input %input_ids: i64\[B, S\]\n/);
    expect(r.stdout).toContain("param %model.layers.1.mlp.down_proj.weight: f32[64, 128]");
    expect(print(parse(r.stdout))).toBe(r.stdout);
  });

  test("picks the model from a checkpoint folder's model_type and prints JSON", async () => {
    const r = await run("ir", "test/fixtures/llama-mqa-tied", "--json", "--dtype", "bf16");
    expect(r.code).toBe(0);
    const g = JSON.parse(r.stdout);
    expect(g.name).toBe("llama");
    expect(g.params.some((p: { name: string }) => p.name === "lm_head.weight")).toBe(false); // tied
    expect(g.params.every((p: { dtype: string }) => p.dtype === "bf16")).toBe(true);
  });

  test("a model file with type errors shows them with code frames and runs nothing", async () => {
    const r = await run("ir", "test/fixtures/models/bad-types.ts", "--config", "test/fixtures/llama-mha");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E_MODEL]");
    expect(r.stderr).toContain("bad-types.ts:8:11 - error TS2322");
    expect(r.stderr).toContain("const y: number = this.proj.forward(x);");
    expect(r.stdout).toBe("");
  });

  test("a shape error while tracing points at the model's line with a code frame", async () => {
    const r = await run("ir", "test/fixtures/models/bad-shape.ts", "--config", "test/fixtures/llama-mha");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E_SHAPE] test/fixtures/models/bad-shape.ts:10:27: op 'linear'");
    expect(r.stderr).toContain("> 10 |     return { y: this.down.forward(h) };");
  });

  test("bad configs are clear errors naming the file and field", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kiln-cli-"));
    try {
      const cfg = JSON.parse(readFileSync(join(ROOT, "test/fixtures/llama-mha/config.json"), "utf8"));
      writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, hidden_act: "gelu" }));
      let r = await run("ir", dir);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`error[E_CONFIG] ${join(dir, "config.json")}: 'hidden_act' is 'gelu', which Kiln does not support (supported: silu)`);
      writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, model_type: "gpt_neox" }));
      r = await run("ir", dir);
      expect(r.stderr).toContain("'model_type' is 'gpt_neox', which Kiln does not support");
      writeFileSync(join(dir, "config.json"), "{ not json");
      r = await run("ir", dir);
      expect(r.stderr).toContain("error[E_CONFIG]");
      expect(r.stderr).toContain("not valid JSON");
      r = await run("ir", "models/llama.ts");
      expect(r.stderr).toContain("error[E_USAGE] models/llama.ts: --config <config.json> is required");
      r = await run("ir", "models/nope.ts", "--config", dir);
      expect(r.stderr).toContain("error[E_IO] models/nope.ts: model file not found");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("kiln ir --passes prints the IR after a pipeline (quantized, attention fused) and it parses back", async () => {
  const r = await run("ir", "test/fixtures/llama-gqa", "--kv-cache", "--passes", "quantize-linear,cse,fuse-attention,dce,fuse-elementwise", "--quant", "int8");
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/= qlinear\(%\d+, %model\.layers\.0\.self_attn\.q_proj\.weight\) \{block = 64, double_quant = false, scheme = "int8", threshold = 6\}/);
  expect(r.stdout).toMatch(/= flash_attention\(/);
  expect(r.stdout).not.toMatch(/= softmax\(/);
  expect(r.stderr).toContain("quantize-linear: 14 linear(s) → qlinear int8, outlier threshold 6");
  expect(print(parse(r.stdout))).toBe(r.stdout);
  const tmp = mkdtempSync(join(tmpdir(), "kiln-quant-"));
  try {
    const q = await run("compile", "test/fixtures/llama-gqa", "--out", join(tmp, "nf4"), "--quant", "nf4", "--double-quant", "--cache-dir", join(tmp, "cache"));
    expect(q.code).toBe(0);
    const r2 = await run("run", join(tmp, "nf4"), "--checkpoint", "test/fixtures/llama-gqa", "--ids", "1,2,3", "--max-new-tokens", "4");
    expect(r2.code).toBe(0);
    expect(r2.stdout.trim().split(" ")).toHaveLength(4);
    // an unknown scheme is a clear error before anything is built (the cuda target's quantized kernels compile: runtime-cpu.test.ts)
    const c = await run("compile", "test/fixtures/llama-gqa", "--out", join(tmp, "never"), "--quant", "nf8", "--target", "cuda", "--cache-dir", join(tmp, "cache"));
    expect(c.code).toBe(1);
    expect(c.stderr).toMatch(/'nf8' is invalid. Allowed choices are int8, nf4, fp4/);
    expect(existsSync(join(tmp, "never"))).toBe(false);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("kiln compile --explain says which attention fused; inspect describes the artifact; a file in the way is an error", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "kiln-compile-"));
  try {
    const out = join(tmp, "art");
    const r = await run("compile", "test/fixtures/llama-gqa", "--out", out, "--explain", "--dump-ir-after", "fuse-attention", "--cache-dir", join(tmp, "cache"));
    expect(r.code).toBe(0);
    const dumped = r.stderr.split("// ----- IR after fuse-attention\n")[1];
    expect(dumped).toMatch(/^graph llama \{/);
    expect(print(parse(dumped.slice(0, dumped.indexOf("\n}\n") + 3)))).toContain("flash_attention(");
    const passes = await run("passes");
    expect(passes.stdout).toMatch(/^fuse-attention\s+softmax/m);
    expect(passes.stdout).toContain("default pipeline: quantize-linear,cse,fuse-attention,unpad-varlen,fuse-norm,fuse-residual,dce,fuse-elementwise");
    expect(r.stdout.trim()).toBe(out);
    expect(r.stderr).toMatch(/fuse-attention: attention at models\/llama\.ts:\d+:\d+: fused \(causal from the static cache's position, kv_groups 4, scale 0\.35355/);
    const i = await run("inspect", out);
    expect(i.stdout).toMatch(/target\s+cpu/);
    expect(i.stdout).toMatch(/kv cache\s+2 layers, static/);
    writeFileSync(join(tmp, "file"), "x");
    const bad = await run("compile", "test/fixtures/llama-gqa", "--out", join(tmp, "file"), "--cache-dir", join(tmp, "cache"));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("error[E_IO]");
    expect(bad.stderr).toContain("exists and is not a folder");
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("kiln demo writes a checkpoint, compiles, loads and generates text", async () => {
  const dir = join(mkdtempSync(join(tmpdir(), "kiln-demo-")), "ckpt");
  try {
    const r = await run("demo", "--out", dir, "--tokens", "5", "--cache-dir", join(dir, "..", "cache"));
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("text form round-trips: yes");
    expect(r.stdout).toContain("reference interpreter gives the same tokens: yes");
    expect(r.stdout).toContain('"Once upon a time" →');
    const line = r.stdout.split("\n").find((l) => /token ids: \[\d+(, \d+){4}\]/.test(l));
    expect(line).toBeDefined();
    const ckpt = openCheckpoint(dir);
    expect(ckpt.names()).toContain("model.layers.1.self_attn.k_proj.weight");
    ckpt.close();
    // the same seed gives the same tokens
    const again = await run("demo", "--out", dir, "--tokens", "5", "--cache-dir", join(dir, "..", "cache"));
    expect(again.stderr).toContain("cache hit");
    expect(again.stdout.split("\n").find((l) => /token ids: /.test(l))).toBe(line);
  } finally {
    rmSync(join(dir, ".."), { recursive: true, force: true });
  }
});

test("kiln compile --kv-cache varlen packs the cache; inspect says so; kiln run generates through it", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "kiln-varlen-"));
  try {
    const out = join(tmp, "varlen");
    const c = await run("compile", "test/fixtures/llama-gqa", "--out", out, "--kv-cache", "varlen", "--max-batch", "2", "--max-seq", "32", "--explain", "--cache-dir", join(tmp, "cache"));
    expect(c.code).toBe(0);
    expect(c.stderr).toMatch(/unpad-varlen: packed with the varlen cache: 2 attention\(s\)/);
    const i = await run("inspect", out);
    expect(i.stdout).toMatch(/kv cache  2 layers, varlen/);
    expect(i.stdout).toMatch(/N ≤ 2 \(cu_seqlens dim 0 − 1\)/);
    const r = await run("run", out, "--checkpoint", "test/fixtures/llama-gqa", "--ids", "5,17,200", "--max-new-tokens", "3");
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split(" ").map(Number)).toHaveLength(3);
    const bad = await run("compile", "test/fixtures/llama-gqa", "--out", join(tmp, "x"), "--kv-cache", "paged", "--cache-dir", join(tmp, "cache"));
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/kvCache must be static, growing, none or varlen, got 'paged'/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}, 120_000);
