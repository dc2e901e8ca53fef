// Pipelined greedy decode (LoadOptions.pipelineDecode, cpu target, tiny random Llama): each
// one-token step is issued without waiting, with the next step queued right behind it, fed by
// this step's pick where it lies on the target. The tokens must be those of the unpipelined loop
// in every case (lengths, stop tokens, aborts, a reused cache), the steps issued ahead must be only
// those the loop may still ask for, and the binding pieces it rests on (DeviceTensor.reshape, the
// queued download) must refuse misuse with clear errors.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "@jest/globals";
import { compile } from "../compiler/codegen/compile.js";
import type { CompiledArtifact } from "../compiler/codegen/compile.js";
import type { Model } from "../runtime/api.js";
import { loadModel, nativeBinding } from "../runtime/api.js";
import type { SamplingOptions } from "../runtime/sampling.js";
import { spyOnBinding } from "./argmax-helpers.js";
import { PROMPTS, runBatch } from "./varlen-helpers.js";

const FIXTURE = join(import.meta.dirname, "fixtures", "llama-gqa");
const tmp = mkdtempSync(join(tmpdir(), "kiln-pipeline-"));
let art: CompiledArtifact;
let varlen: CompiledArtifact;
const open: Model[] = [];
const load = async (pipelineDecode: boolean, dir = art.dir): Promise<Model> => {
  const m = await loadModel(dir, { checkpoint: FIXTURE, pipelineDecode });
  open.push(m);
  return m;
};

beforeAll(async () => {
  art = await compile(FIXTURE, { target: "cpu", cacheDir: join(tmp, "cache"), maxSeq: 64 });
  varlen = await compile(FIXTURE, { target: "cpu", cacheDir: join(tmp, "cache"), maxSeq: 64, maxBatch: 4, kvCache: "varlen" });
}, 300_000);
afterAll(async () => {
  for (const m of open) await m.dispose();
  rmSync(tmp, { recursive: true, force: true });
});

async function ids(model: Model, prompt: number[], o: SamplingOptions): Promise<{ ids: number[]; reason: string }> {
  const out: number[] = [];
  const gen = model.generate(prompt, o);
  for (;;) {
    const r = await gen.next();
    if (r.done) return { ids: out, reason: r.value.reason };
    out.push(r.value.id);
  }
}

const PROMPT = [5, 17, 200, 3, 99, 42, 7];

describe("generate() pipelined on the static cache", () => {
  test("the same tokens as the unpipelined loop at every length; every decode step queued, all but the first fed on the target", async () => {
    const piped = await load(true);
    const plain = await load(false);
    const spyP = spyOnBinding(piped);
    const spyN = spyOnBinding(plain);
    let steps = 0;
    for (const [prompt, n] of [[PROMPT, 1], [PROMPT, 2], [PROMPT, 3], [[77], 17], [PROMPT, 30]] as const) {
      spyP.calls.length = 0;
      spyP.queued = spyP.fedOnTarget = 0;
      const want = await ids(plain, [...prompt], { maxNewTokens: n });
      const got = await ids(piped, [...prompt], { maxNewTokens: n });
      expect(got).toEqual(want);
      expect(got.ids.length).toBe(n);
      // one forward a token, no step issued past the last token; a prefill of several tokens
      // waits (its pick is one of several positions), a one-token prompt is a decode step already
      const waits = prompt.length > 1 ? 1 : 0;
      expect(spyP.calls.length).toBe(n);
      expect(spyP.queued).toBe(n - waits);
      expect(spyP.fedOnTarget).toBe(Math.max(0, n - waits - 1));
      steps += n;
    }
    expect(new Set((await ids(piped, PROMPT, { maxNewTokens: 30 })).ids).size).toBeGreaterThan(1); // not a degenerate run
    // the unpipelined loop never queues
    expect(spyN.queued).toBe(0);
    expect(spyN.calls.length).toBe(steps);
  });

  test("a stop token: the same tokens; the one step issued past it is dropped and the kept cache serves the next call unharmed", async () => {
    const piped = await load(true);
    const plain = await load(false);
    const ref = await ids(plain, PROMPT, { maxNewTokens: 20 });
    const stop = ref.ids[5];
    const first = ref.ids.indexOf(stop);
    const spy = spyOnBinding(piped);
    const got = await ids(piped, PROMPT, { maxNewTokens: 20, stopTokens: [stop] });
    expect(got).toEqual(await ids(plain, PROMPT, { maxNewTokens: 20, stopTokens: [stop] }));
    expect(got.reason).toBe("stop");
    expect(got.ids.length).toBe(first + 1);
    // prefill + one step a later token + the step issued after the stop token's, never read
    expect(spy.calls.length).toBe(first + 2);
    expect(spy.fedOnTarget).toBe(first);
    // that step wrote the cache one position past the end; the next generation (the same kept
    // cache) overwrites it and gives the reference's tokens
    expect(await ids(piped, PROMPT, { maxNewTokens: 20 })).toEqual(ref);
    expect(await ids(piped, [9, 8, 7], { maxNewTokens: 12 })).toEqual(await ids(plain, [9, 8, 7], { maxNewTokens: 12 }));
  });

  test("an abort between tokens stops it; the model then generates the reference tokens again", async () => {
    const piped = await load(true);
    const plain = await load(false);
    const ref = await ids(plain, PROMPT, { maxNewTokens: 16 });
    const ac = new AbortController();
    const seen: number[] = [];
    await expect(
      (async () => {
        for await (const t of piped.generate(PROMPT, { maxNewTokens: 16, signal: ac.signal })) {
          seen.push(t.id);
          if (seen.length === 4) ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(seen).toEqual(ref.ids.slice(0, 4));
    expect(await ids(piped, PROMPT, { maxNewTokens: 16 })).toEqual(ref);
  });

  test("sampling is not pipelined (it needs the logits on the host) and gives the unpipelined tokens", async () => {
    const piped = await load(true);
    const plain = await load(false);
    const spy = spyOnBinding(piped);
    const o = { maxNewTokens: 8, temperature: 0.7, seed: 11 };
    expect(await ids(piped, PROMPT, o)).toEqual(await ids(plain, PROMPT, o));
    expect(spy.queued).toBe(0);
    expect(spy.calls.every((c) => c.logits === true)).toBe(true);
  });
});

describe("generateBatch() pipelined on the varlen cache", () => {
  const batch = async (model: Model, o: SamplingOptions | SamplingOptions[]) => {
    const r = await runBatch(model, PROMPTS, o, false);
    return { tokens: r.tokens, rows: r.result.rows };
  };

  test("the same tokens as the unpipelined loop: equal and unequal lengths, a stop token, a sampling row; calls fed on the target only while the rows stay", async () => {
    const piped = await load(true, varlen.dir);
    const plain = await load(false, varlen.dir);
    const spy = spyOnBinding(piped);
    // every row to 12 tokens: after the prefill, every call but the first is fed on the target
    const same = await batch(piped, { maxNewTokens: 12 });
    expect(same).toEqual(await batch(plain, { maxNewTokens: 12 }));
    expect(same.tokens.every((t) => t.length === 12)).toBe(true);
    expect(spy.calls.length).toBe(12);
    expect(spy.queued).toBe(11);
    expect(spy.fedOnTarget).toBe(10);
    // rows of different lengths and a stop token: the rows change, and so do the calls fed ahead
    const ref = await batch(plain, { maxNewTokens: 10 });
    const mixed = PROMPTS.map((_p, r) => (r === 1 ? { maxNewTokens: 10, stopTokens: [ref.tokens[1][3]] } : { maxNewTokens: 4 + 3 * r }));
    spy.calls.length = 0;
    spy.queued = spy.fedOnTarget = 0;
    const got = await batch(piped, mixed);
    expect(got).toEqual(await batch(plain, mixed));
    expect(got.tokens.map((t) => t.length)).toEqual(PROMPTS.map((_p, r) => (r === 1 ? ref.tokens[1].indexOf(ref.tokens[1][3]) + 1 : 4 + 3 * r)));
    expect(spy.fedOnTarget).toBeGreaterThan(0);
    // a row that samples: that call needs the logits on the host, so nothing is queued
    spy.queued = 0;
    const sampled = PROMPTS.map((_p, r) => (r === 0 ? { maxNewTokens: 6, temperature: 0.8, seed: 3 } : { maxNewTokens: 6 }));
    expect(await batch(piped, sampled)).toEqual(await batch(plain, sampled));
    expect(spy.queued).toBe(0);
    // and the kept cache serves a plain greedy batch again
    expect(await batch(piped, { maxNewTokens: 10 })).toEqual(ref);
  });
});

describe("the binding pieces", () => {
  test("DeviceTensor.reshape shares the buffer and refuses a different element count; a queued download is waited for once", async () => {
    const model = await load(true);
    // a forward whose logits stay on the target with a queued download
    const inputs = model.manifest.inputs.map((i) =>
      i.name === "input_ids"
        ? { dtype: 3, shape: [1, 3], data: new BigInt64Array([5n, 17n, 200n]) }
        : i.name === "cache_position"
          ? { dtype: 3, shape: [], data: new BigInt64Array([0n]) }
          : { dtype: 0, shape: [1, Number(i.shape[1]), 64, Number(i.shape[3])], data: new Float32Array(Number(i.shape[1]) * 64 * Number(i.shape[3])) },
    );
    const m = model as unknown as { art: InstanceType<ReturnType<typeof nativeBinding>["Artifact"]> };
    const how = model.manifest.outputs.map((o) => (o.name === "next_token" ? 2 : false));
    const outs = await m.art.forward(null, inputs, how, { wait: false });
    const j = model.manifest.outputs.findIndex((o) => o.name === "next_token");
    const { tensor, pending } = outs[j] as unknown as { tensor: { shape: number[]; reshape(s: number[]): { shape: number[]; bytes: number }; free(): void }; pending: { wait(): Promise<ArrayBuffer> } };
    expect(tensor.shape).toEqual([1, 3]);
    const flat = tensor.reshape([3]);
    expect(flat.shape).toEqual([3]);
    expect(flat.bytes).toBe(24);
    expect(() => tensor.reshape([2, 2])).toThrow(/reshape of a tensor of shape \[1, 3\] \(3 elements\) to \[2, 2\] \(4\)/);
    expect(() => tensor.reshape([1.5])).toThrow(/non-negative integers/);
    const got = new BigInt64Array(await pending.wait());
    // the queued download is the pick the waiting forward gives for the same input
    const sync = await m.art.forward(null, inputs, model.manifest.outputs.map((o) => o.name === "next_token"));
    expect(got).toEqual(new BigInt64Array((sync[j] as unknown as { data: ArrayBuffer }).data));
    expect(got.length).toBe(3);
    await expect(pending.wait()).rejects.toMatchObject({ code: "E_USAGE", message: expect.stringMatching(/waited for already/) });
    tensor.free();
    expect(flat.bytes).toBe(24); // the reshaped tensor keeps the buffer alive
    expect(() => (flat as unknown as { free(): void }).free()).not.toThrow();
  });
});
