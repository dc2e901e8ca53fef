// Greedy decoding picks its token on the target (cpu target, tiny random Llama): the artifact's
// next_token output (argmax of the logits) comes to Node instead of the logits. generate() and
// generateBatch() give the tokens, stream text, stop tokens and errors of the JS path (the same
// artifact loaded with greedyOnTarget: false, which downloads the logits and takes their argmax in
// sampling.ts), and a spy on the binding shows that greedy steps leave the logits on the target
// while sampling, a repetition penalty or `logits: true` bring them to the host as before.

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import type { CompiledArtifact } from "../compiler/codegen/compile.js";
import { KilnError } from "../compiler/ir/errors.js";
import type { Model } from "../runtime/api.js";
import { loadModel } from "../runtime/api.js";
import type { SamplingOptions } from "../runtime/sampling.js";
import { SafetensorsFile, writeSafetensors } from "../runtime/safetensors.js";
import { spyOnBinding } from "./argmax-helpers.js";
import { PROMPTS } from "./varlen-helpers.js";

const FIXTURE = join(import.meta.dirname, "fixtures", "llama-gqa");
const tmp = mkdtempSync(join(tmpdir(), "kiln-greedy-"));
const cacheDir = join(tmp, "cache");
let art: CompiledArtifact;
let varlen: CompiledArtifact;
const open: Model[] = [];
const load = async (dir: string, greedyOnTarget?: boolean, checkpoint = FIXTURE): Promise<Model> => {
  const m = await loadModel(dir, { checkpoint, greedyOnTarget });
  open.push(m);
  return m;
};

beforeAll(async () => {
  art = await compile(FIXTURE, { target: "cpu", cacheDir, maxSeq: 64 });
  varlen = await compile(FIXTURE, { target: "cpu", cacheDir, maxSeq: 64, maxBatch: 4, kvCache: "varlen" });
}, 300_000);
afterAll(async () => {
  for (const m of open) await m.dispose();
  rmSync(tmp, { recursive: true, force: true });
});

/** Every token generate() yields (id, index, text) and its return value. */
async function drain(model: Model, prompt: number[], o: SamplingOptions): Promise<{ tokens: { id: number; index: number; text?: string }[]; result: unknown }> {
  const tokens: { id: number; index: number; text?: string }[] = [];
  const gen = model.generate(prompt, o);
  for (;;) {
    const r = await gen.next();
    if (r.done) return { tokens, result: r.value };
    tokens.push(r.value);
  }
}

const PROMPT = [5, 17, 200, 3, 99, 42, 7];

test("the manifest records next_token: argmax of the logits, i64 per position, -1 where there is no pick", () => {
  expect(art.manifest.nextToken).toEqual({ output: "next_token", none: -1 });
  expect(art.manifest.outputs.find((o) => o.name === "next_token")).toEqual({ name: "next_token", dtype: "i64", shape: ["B", "S"] });
  expect(varlen.manifest.outputs.find((o) => o.name === "next_token")).toEqual({ name: "next_token", dtype: "i64", shape: ["N", 1] });
  expect(readFileSync(join(art.dir, "model.kir"), "utf8")).toMatch(/= argmax\(%\d+\) \{axis = -1\}/);
  expect(readFileSync(join(art.dir, "model.cpp"), "utf8")).toMatch(/K::argmax<float>\(v\d+, v\d+, \(d_B\) \* \(d_S\), \(int64_t\)256\);/);
});

describe("generate() on the static cache", () => {
  test("greedy: the target's picks are the JS path's tokens, text and result, and no logits come to the host", async () => {
    const onTarget = await load(art.dir);
    const onHost = await load(art.dir, false);
    const spyT = spyOnBinding(onTarget);
    const spyH = spyOnBinding(onHost);
    for (const [prompt, o] of [[PROMPT, { maxNewTokens: 20 }], [[77], { maxNewTokens: 9, temperature: 0 }], [PROMPT, { maxNewTokens: 12, doSample: false, topK: 3 }]] as const) {
      const want = await drain(onHost, [...prompt], o);
      const got = await drain(onTarget, [...prompt], o);
      expect(got).toEqual(want);
      expect(got.tokens.length).toBe(o.maxNewTokens);
      expect(new Set(got.tokens.map((t) => t.id)).size).toBeGreaterThan(1); // not a degenerate run
    }
    // every step of the target path brought next_token and not the logits; the JS path the reverse
    expect(spyT.calls.length).toBe(20 + 9 + 12);
    expect(spyT.calls.every((c) => c.logits === false && c.next_token !== false)).toBe(true);
    expect(spyT.downloads).toBe(0);
    expect(spyH.calls.every((c) => c.logits === true && c.next_token === false)).toBe(true);
  });

  test("a stop token ends both paths at the same place; an abort stops the target path between steps", async () => {
    const onTarget = await load(art.dir);
    const onHost = await load(art.dir, false);
    const ref = await drain(onHost, PROMPT, { maxNewTokens: 20 });
    const stop = ref.tokens[5].id;
    const want = await drain(onHost, PROMPT, { maxNewTokens: 20, stopTokens: [stop] });
    const got = await drain(onTarget, PROMPT, { maxNewTokens: 20, stopTokens: [stop] });
    expect(got).toEqual(want);
    expect((got.result as { reason: string }).reason).toBe("stop");
    expect(got.tokens.at(-1)!.id).toBe(stop);
    const ac = new AbortController();
    const seen: number[] = [];
    await expect(
      (async () => {
        for await (const t of onTarget.generate(PROMPT, { maxNewTokens: 20, signal: ac.signal })) {
          seen.push(t.id);
          if (seen.length === 3) ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(seen).toEqual(ref.tokens.slice(0, 3).map((t) => t.id));
  });

  test("sampling and a repetition penalty still bring the logits to the host, with the JS path's tokens", async () => {
    const onTarget = await load(art.dir);
    const onHost = await load(art.dir, false);
    const spy = spyOnBinding(onTarget);
    for (const o of [{ maxNewTokens: 10, temperature: 0.8, seed: 3 }, { maxNewTokens: 10, repetitionPenalty: 1.5 }, { maxNewTokens: 10, topP: 0.9, seed: 4 }]) {
      spy.calls.length = 0;
      expect(await drain(onTarget, PROMPT, o)).toEqual(await drain(onHost, PROMPT, o));
      expect(spy.calls.length).toBe(10);
      expect(spy.calls.every((c) => c.logits === true && c.next_token === false)).toBe(true);
    }
  });

  test("an artifact without next_token in its manifest (built before it) takes the JS path", async () => {
    const old = join(tmp, "old-artifact");
    cpSync(art.dir, old, { recursive: true });
    const m = JSON.parse(readFileSync(join(old, "manifest.json"), "utf8")) as Record<string, unknown>;
    delete m.nextToken;
    writeFileSync(join(old, "manifest.json"), JSON.stringify(m));
    const model = await load(old);
    const spy = spyOnBinding(model);
    expect(await drain(model, PROMPT, { maxNewTokens: 8 })).toEqual(await drain(await load(art.dir), PROMPT, { maxNewTokens: 8 }));
    expect(spy.calls.every((c) => c.logits === true)).toBe(true);
  });

  test("a NaN logit: the target has no pick (-1), the logits come down after all, and the error is the JS path's", async () => {
    // lm_head row 9 all NaN: logit 9 is NaN at every position
    const ckpt = join(tmp, "nan-ckpt");
    cpSync(FIXTURE, ckpt, { recursive: true });
    const f = SafetensorsFile.open(join(FIXTURE, "model.safetensors"));
    const tensors = Object.fromEntries(f.names().map((n) => [n, f.read(n)]));
    f.close();
    const w = Float32Array.from(tensors["lm_head.weight"].data as Float32Array);
    const H = tensors["lm_head.weight"].shape[1];
    w.fill(NaN, 9 * H, 10 * H);
    writeSafetensors(join(ckpt, "model.safetensors"), { ...tensors, "lm_head.weight": { ...tensors["lm_head.weight"], data: w } });
    const onTarget = await load(art.dir, true, ckpt);
    const onHost = await load(art.dir, false, ckpt);
    const spy = spyOnBinding(onTarget);
    const err = async (m: Model) => {
      try {
        await drain(m, PROMPT, { maxNewTokens: 4 });
      } catch (e) {
        return e as KilnError;
      }
      throw new Error("generate did not fail");
    };
    const [got, want] = [await err(onTarget), await err(onHost)];
    expect(got).toBeInstanceOf(KilnError);
    expect([got.code, got.message]).toEqual([want.code, want.message]);
    expect(got.message).toMatch(/logits\[9\] is NaN/);
    expect(spy.downloads).toBe(1);
  });
});

describe("generateBatch() on the varlen cache", () => {
  test("greedy rows: the target's picks, the JS path's tokens, no logits to the host", async () => {
    const onTarget = await load(varlen.dir);
    const onHost = await load(varlen.dir, false);
    const spy = spyOnBinding(onTarget);
    const run = async (m: Model, o: SamplingOptions | SamplingOptions[], logits = false) => {
      const tokens = PROMPTS.map((): number[] => []);
      const gen = m.generateBatch(PROMPTS, o, { logits });
      for (;;) {
        const r = await gen.next();
        if (r.done) return { tokens, rows: r.value.rows };
        tokens[r.value.row].push(r.value.id);
        expect(r.value.logits !== undefined).toBe(logits);
      }
    };
    expect(await run(onTarget, { maxNewTokens: 6 })).toEqual(await run(onHost, { maxNewTokens: 6 }));
    expect(spy.calls.length).toBe(6);
    expect(spy.calls.every((c) => c.logits === false && c.next_token !== false)).toBe(true);
    // a row that samples needs the logits of its calls; logits: true needs them always
    spy.calls.length = 0;
    const mixed = [{ maxNewTokens: 6 }, { maxNewTokens: 3, temperature: 0.9, seed: 2 }, { maxNewTokens: 6 }, { maxNewTokens: 6 }];
    expect(await run(onTarget, mixed)).toEqual(await run(onHost, mixed));
    expect(spy.calls.map((c) => c.logits)).toEqual([true, true, true, false, false, false]);
    spy.calls.length = 0;
    expect(await run(onTarget, { maxNewTokens: 4 }, true)).toEqual(await run(onHost, { maxNewTokens: 4 }, true));
    expect(spy.calls.every((c) => c.logits === true)).toBe(true);
    // generate() on this artifact is generateBatch of one prompt: the target path too
    spy.calls.length = 0;
    expect(await drain(onTarget, PROMPT, { maxNewTokens: 5 })).toEqual(await drain(onHost, PROMPT, { maxNewTokens: 5 }));
    expect(spy.calls.every((c) => c.logits === false && c.next_token !== false)).toBe(true);
  });

  test("forward() drops next_token and gives the logits as before", async () => {
    const model = await load(varlen.dir);
    const spy = spyOnBinding(model);
    const out = await model.forward([PROMPT]);
    expect(out.shape).toEqual([1, 1, 256]);
    expect(spy.calls).toEqual([expect.objectContaining({ logits: true, next_token: false })]);
  });
});
