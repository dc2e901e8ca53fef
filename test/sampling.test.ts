import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import {
  Rng,
  applyRepetitionPenalty,
  generateTokens,
  selectToken,
  validateSamplingOptions,
} from "../runtime/sampling.js";
import type { GeneratedToken, GenerationResult, SamplingOptions, StepFn } from "../runtime/sampling.js";
import { expectKilnErrorSync } from "./helpers.js";

const f32 = (xs: number[]): Float32Array => Float32Array.from(xs);
const opts = (o: SamplingOptions = {}) => validateSamplingOptions(o);


/** Draws `n` tokens and returns how often each id came up. */
function histogram(logits: Float32Array, o: SamplingOptions, n: number, seed = 1, history: number[] = []): number[] {
  const norm = opts(o);
  const rng = new Rng(seed);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[selectToken(logits, history, norm, rng)]++;
  return counts;
}

function softmax(xs: number[], t = 1): number[] {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp((x - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

describe("options", () => {
  test("defaults", () => {
    const o = opts({ seed: 5 });
    expect(o).toEqual({ maxNewTokens: 32, doSample: false, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1, seed: 5, stopTokens: [], signal: undefined });
    expect(Number.isSafeInteger(opts().seed)).toBe(true);
  });

  test.each<[SamplingOptions, boolean]>([
    [{}, false],
    [{ repetitionPenalty: 1.3, maxNewTokens: 4, stopTokens: [2] }, false],
    [{ temperature: 0.7 }, true],
    [{ temperature: 1 }, true],
    [{ topK: 5 }, true],
    [{ topK: 0 }, false],
    [{ topP: 0.9 }, true],
    [{ topP: 1 }, false],
    [{ doSample: true }, true],
    [{ doSample: false, temperature: 0.7, topK: 3 }, false],
    [{ temperature: 0 }, false],
    [{ temperature: 0, doSample: true, topP: 0.5 }, false],
  ])("doSample rule: %j → %s", (o, expected) => {
    expect(opts(o).doSample).toBe(expected);
  });

  test.each<[string, unknown, string]>([
    ["temperature", -0.5, "-0.5"],
    ["temperature", NaN, "NaN"],
    ["temperature", Infinity, "Infinity"],
    ["temperature", "1", '"1"'],
    ["topK", -1, "-1"],
    ["topK", 2.5, "2.5"],
    ["topK", NaN, "NaN"],
    ["topP", 0, "0"],
    ["topP", 1.5, "1.5"],
    ["topP", -0.1, "-0.1"],
    ["topP", NaN, "NaN"],
    ["repetitionPenalty", 0, "0"],
    ["repetitionPenalty", -1, "-1"],
    ["repetitionPenalty", NaN, "NaN"],
    ["maxNewTokens", -1, "-1"],
    ["maxNewTokens", 1.5, "1.5"],
    ["maxNewTokens", NaN, "NaN"],
    ["stopTokens", [1, 2.5], "2.5"],
    ["stopTokens", [-3], "-3"],
    ["stopTokens", 7, "7"],
    ["seed", 0.5, "0.5"],
    ["doSample", "yes", '"yes"'],
    ["signal", {}, "{}"],
  ])("%s = %p is E_USAGE naming the option and value", (name, value, shown) => {
    const k = expectKilnErrorSync(() => validateSamplingOptions({ [name]: value } as SamplingOptions), "E_USAGE", name, shown);
    expect(k.where).toBe("sampling options");
  });
});

describe("Rng (xoshiro128**)", () => {
  test("fixed stream for a seed (same on every machine)", () => {
    const r = new Rng(42);
    expect([r.next(), r.next(), r.next()]).toEqual([0.5764152380658767, 0.36570179447259843, 0.049702061296795774]);
    expect(new Rng(-7).nextUint32()).toBe(1287378374);
    expect(new Rng(2 ** 53 - 1).nextUint32()).toBe(3292082215);
  });

  test("uniform-looking, in [0, 1); different seeds differ; bad seeds rejected", () => {
    const r = new Rng(7);
    let sum = 0;
    let outside = 0;
    for (let i = 0; i < 10000; i++) {
      const u = r.next();
      if (!(u >= 0 && u < 1)) outside++;
      sum += u;
    }
    expect(outside).toBe(0);
    expect(Math.abs(sum / 10000 - 0.5)).toBeLessThan(0.02);
    expect(new Rng(1).next()).not.toBe(new Rng(2).next());
    expect(new Rng(2 ** 32).next()).not.toBe(new Rng(0).next()); // the high bits count
    expectKilnErrorSync(() => new Rng(1.5), "E_USAGE", "seed", "1.5");
    expect(Number.isSafeInteger(new Rng().seed)).toBe(true);
  });
});

describe("selectToken", () => {
  test("greedy is argmax, ties go to the first index", () => {
    const rng = new Rng(0);
    expect(selectToken(f32([1, 3, 3, 2]), [], opts(), rng)).toBe(1);
    expect(selectToken(f32([-Infinity, -5, -2, -2]), [], opts(), rng)).toBe(2);
    expect(selectToken(f32([0.5]), [], opts(), rng)).toBe(0);
    expect(selectToken(f32([1, 3, 3, 2]), [], opts({ temperature: 0 }), rng)).toBe(1);
  });

  test("temperature → 0 tends to greedy", () => {
    const logits = f32([0.1, 2.3, 2.2, -1, 2.29]);
    for (const temperature of [1e-3, 1e-6, 1e-30])
      expect(histogram(logits, { temperature }, 200, 3)).toEqual([0, 200, 0, 0, 0]);
  });

  test("seeded sampling is reproducible; different seeds differ", () => {
    const logits = f32(Array.from({ length: 100 }, (_, i) => Math.sin(i)));
    const draw = (seed: number): number[] => {
      const rng = new Rng(seed);
      return Array.from({ length: 50 }, () => selectToken(logits, [], opts({ temperature: 1 }), rng));
    };
    expect(draw(123)).toEqual(draw(123));
    expect(draw(123)).not.toEqual(draw(124));
  });

  test("empirical distribution matches the softmax (temperature 1 and 0.5)", () => {
    const xs = [0, 1, 2, -1];
    for (const t of [1, 0.5]) {
      const n = 20000;
      const counts = histogram(f32(xs), { temperature: t }, n, 99);
      const p = softmax(xs, t);
      for (let i = 0; i < xs.length; i++) expect(Math.abs(counts[i] / n - p[i])).toBeLessThan(0.02);
    }
  });

  test("top-k = 1 is greedy (a tied maximum keeps every tied token, as in HF)", () => {
    expect(histogram(f32([0.3, 1.2, -0.4, 1.1, 1.19]), { topK: 1, temperature: 5 }, 300)).toEqual([0, 300, 0, 0, 0]);
    const tied = histogram(f32([0.3, 1.2, -0.4, 1.1, 1.2]), { topK: 1, temperature: 5 }, 300);
    expect(tied[0] + tied[2] + tied[3]).toBe(0);
    expect(tied[1] > 0 && tied[4] > 0).toBe(true);
  });

  test("top-k keeps only the k largest (all ties at the boundary)", () => {
    const counts = histogram(f32([5, 1, 4, 3, 2]), { topK: 2, temperature: 3 }, 3000);
    expect(counts[1] + counts[3] + counts[4]).toBe(0);
    expect(counts[0]).toBeGreaterThan(0);
    expect(counts[2]).toBeGreaterThan(0);
    const tied = histogram(f32([3, 2, 2, 1]), { topK: 2, temperature: 3 }, 3000);
    expect(tied[3]).toBe(0);
    expect(tied.slice(0, 3).every((c) => c > 0)).toBe(true);
    // k larger than the number of unmasked tokens keeps them all, never a masked one
    const masked = histogram(f32([1, -Infinity, 1, -Infinity]), { topK: 3 }, 1000);
    expect(masked[1] + masked[3]).toBe(0);
  });

  test("top-p keeps the minimal nucleus", () => {
    const p = [0.5, 0.3, 0.15, 0.05];
    const logits = f32(p.map(Math.log));
    const n = 8000;
    const c = histogram(logits, { topP: 0.8 }, n, 11);
    expect(c[2] + c[3]).toBe(0);
    expect(Math.abs(c[0] / n - 0.5 / 0.8)).toBeLessThan(0.02); // renormalized over the nucleus
    const c3 = histogram(logits, { topP: 0.81 }, n, 11);
    expect(c3[3]).toBe(0);
    expect(c3[2]).toBeGreaterThan(0);
    expect(histogram(logits, { topP: 0.1 }, 500)).toEqual([500, 0, 0, 0]); // at least one token
    // order of ids does not matter
    const shuffled = f32([0.15, 0.5, 0.05, 0.3].map(Math.log));
    const s = histogram(shuffled, { topP: 0.8 }, 2000);
    expect(s[0] + s[2]).toBe(0);
    // top-p is taken after temperature: at temperature 0.5 the probabilities sharpen to
    // ∝ [0.25, 0.09, 0.0225, 0.0025] and 0.25 / 0.3648 ≈ 0.685 ≥ 0.6, so only token 0 survives
    expect(histogram(logits, { topP: 0.6, temperature: 0.5 }, 500)).toEqual([500, 0, 0, 0]);
  });

  test("repetition penalty, as HF: divide positive logits, multiply negative ones, once per token", () => {
    const logits = f32([2, -2, 1, 0.5, 0]);
    const out = applyRepetitionPenalty(logits, [0, 1, 1, 4], 2);
    expect(Array.from(out)).toEqual([1, -4, 1, 0.5, 0]);
    expect(Array.from(logits)).toEqual([2, -2, 1, 0.5, 0]); // input untouched
    expect(Array.from(applyRepetitionPenalty(f32([3, -3]), [0, 1], 0.5))).toEqual([6, -1.5]); // < 1 encourages
    const rng = new Rng(0);
    expect(selectToken(f32([2, 1.5]), [0], opts({ repetitionPenalty: 2 }), rng)).toBe(1); // 2/2 = 1 < 1.5
    expect(selectToken(f32([-1, -1.5]), [0, 0], opts({ repetitionPenalty: 2 }), rng)).toBe(1); // -1*2 = -2 < -1.5
    expect(selectToken(f32([2, 1.5]), [0], opts({ repetitionPenalty: 1 }), rng)).toBe(0);
    expectKilnErrorSync(() => selectToken(f32([1, 2]), [5], opts({ repetitionPenalty: 1.2 }), rng), "E_USAGE", "5");
  });

  test("-Infinity logits are masked", () => {
    const one = f32([-Infinity, -Infinity, 0.7, -Infinity]);
    for (const o of [{}, { temperature: 2 }, { topK: 3 }, { topP: 0.3 }, { topK: 2, topP: 0.9, repetitionPenalty: 1.5 }])
      expect(histogram(one, o, 100, 1, [2, 0])).toEqual([0, 0, 100, 0]);
    const two = histogram(f32([-Infinity, 1, -Infinity, 1]), { temperature: 1 }, 2000);
    expect(two[0] + two[2]).toBe(0);
    expect(Math.abs(two[1] / 2000 - 0.5)).toBeLessThan(0.05);
    expectKilnErrorSync(() => selectToken(f32([-Infinity, -Infinity]), [], opts(), new Rng(0)), "E_RUNTIME", "-Infinity");
  });

  test("NaN or +Infinity logits are E_RUNTIME", () => {
    for (const o of [{}, { temperature: 1 }]) {
      expectKilnErrorSync(() => selectToken(f32([1, NaN, 2]), [], opts(o), new Rng(0)), "E_RUNTIME", "logits[1]", "NaN");
      expectKilnErrorSync(() => selectToken(f32([1, 2, Infinity]), [], opts(o), new Rng(0)), "E_RUNTIME", "logits[2]", "Infinity");
    }
    expectKilnErrorSync(() => selectToken(new Float32Array(0), [], opts(), new Rng(0)), "E_RUNTIME", "empty");
  });

  test("a 150k vocabulary with top-k and top-p", () => {
    const v = 150_000;
    const logits = new Float32Array(v);
    const r = new Rng(5);
    for (let i = 0; i < v; i++) logits[i] = r.next() * 10;
    logits[777] = 20;
    const o = opts({ topK: 40, topP: 0.95, temperature: 0.8 });
    for (let i = 0; i < 5; i++) expect(selectToken(logits, [1, 2, 3], o, r)).toBe(777);
    const wide = opts({ topP: 0.9, temperature: 1 });
    const id = selectToken(logits, [], wide, r);
    expect(id >= 0 && id < v).toBe(true);
  });

  test("property: the chosen token is finite and survives penalty, top-k and top-p", () => {
    const logit = fc.oneof(
      { weight: 4, arbitrary: fc.float({ min: -30, max: 30, noNaN: true, noDefaultInfinity: true }) },
      { weight: 1, arbitrary: fc.constant(-Infinity) },
    );
    const input = fc.record({
      logits: fc.array(logit, { minLength: 1, maxLength: 30 }).filter((xs) => xs.some(Number.isFinite)),
      history: fc.array(fc.nat(), { maxLength: 10 }),
      temperature: fc.oneof(fc.constant(0), fc.double({ min: 0.05, max: 5, noNaN: true })),
      topK: fc.nat({ max: 35 }),
      topP: fc.oneof(fc.constant(1), fc.double({ min: 0.01, max: 1, noNaN: true })),
      repetitionPenalty: fc.oneof(fc.constant(1), fc.double({ min: 0.5, max: 3, noNaN: true })),
      doSample: fc.option(fc.boolean(), { nil: undefined }),
      seed: fc.integer(),
    });
    fc.assert(
      fc.property(input, ({ logits, history, seed, ...o }) => {
        const hist = history.map((h) => h % logits.length);
        const x = f32(logits);
        const norm = opts({ ...o, seed });
        const chosen = selectToken(x, hist, norm, new Rng(seed));
        // reference penalty, in float32 like the implementation and torch
        const pen = Array.from(x);
        for (const h of new Set(hist)) if (o.repetitionPenalty !== 1) pen[h] = Math.fround(pen[h] < 0 ? pen[h] * o.repetitionPenalty : pen[h] / o.repetitionPenalty);
        expect(Number.isFinite(pen[chosen])).toBe(true);
        const finite = pen.filter(Number.isFinite);
        const max = Math.max(...finite);
        if (!norm.doSample) {
          expect(chosen).toBe(pen.indexOf(max));
          return;
        }
        const sorted = [...finite].sort((a, b) => b - a);
        const kth = norm.topK > 0 ? sorted[Math.min(norm.topK, sorted.length) - 1] : -Infinity;
        expect(pen[chosen]).toBeGreaterThanOrEqual(kth);
        const w = pen.map((v) => (Number.isFinite(v) && v >= kth ? Math.exp((v - max) / norm.temperature) : 0));
        const total = w.reduce((a, b) => a + b, 0);
        const heavier = w.filter((v) => v > w[chosen]).reduce((a, b) => a + b, 0);
        expect(w[chosen]).toBeGreaterThan(0);
        expect(heavier).toBeLessThan(norm.topP * total); // it lies inside the minimal nucleus
      }),
      { numRuns: 300 },
    );
  });
});

describe("generateTokens", () => {
  /** A fake model: emits `script` in order (one-hot logits over `vocab`), recording each call. */
  function scripted(script: number[], vocab = 10): { step: StepFn; calls: [number[], boolean][] } {
    const calls: [number[], boolean][] = [];
    const step: StepFn = async (ids, isFirst) => {
      calls.push([ids, isFirst]);
      const out = new Float32Array(vocab).fill(-1);
      out[script[calls.length - 1] ?? 0] = 5;
      return out;
    };
    return { step, calls };
  }

  async function drain(gen: AsyncGenerator<GeneratedToken, GenerationResult, undefined>): Promise<{ yielded: GeneratedToken[]; result: GenerationResult }> {
    const yielded: GeneratedToken[] = [];
    for (;;) {
      const r = await gen.next();
      if (r.done) return { yielded, result: r.value };
      yielded.push(r.value);
    }
  }

  test("prefill with the whole prompt, then decode one token at a time", async () => {
    const { step, calls } = scripted([4, 6, 8]);
    const { yielded, result } = await drain(generateTokens(step, [1, 2, 3], { maxNewTokens: 3 }));
    expect(calls).toEqual([
      [[1, 2, 3], true],
      [[4], false],
      [[6], false],
    ]);
    expect(yielded).toEqual([
      { id: 4, index: 0 },
      { id: 6, index: 1 },
      { id: 8, index: 2 },
    ]);
    expect(result).toEqual({ reason: "length", tokens: [4, 6, 8] });
  });

  test("stops after yielding a stop token", async () => {
    const { step, calls } = scripted([5, 7, 2, 9]);
    const { yielded, result } = await drain(generateTokens(step, [1], { stopTokens: [2, 3] }));
    expect(yielded.map((t) => t.id)).toEqual([5, 7, 2]);
    expect(result).toEqual({ reason: "stop", tokens: [5, 7, 2] });
    expect(calls.length).toBe(3);
  });

  test("a stop token as the last allowed token reports stop", async () => {
    const { step } = scripted([5, 2]);
    expect((await drain(generateTokens(step, [1], { maxNewTokens: 2, stopTokens: [2] }))).result.reason).toBe("stop");
  });

  test("maxNewTokens 0 yields nothing and never runs the model", async () => {
    const { step, calls } = scripted([5]);
    const { yielded, result } = await drain(generateTokens(step, [1, 2], { maxNewTokens: 0 }));
    expect(yielded).toEqual([]);
    expect(result).toEqual({ reason: "length", tokens: [] });
    expect(calls).toEqual([]);
  });

  test("the repetition penalty sees prompt and generated tokens", async () => {
    // flat logits 1 for tokens 0..2: penalized tokens drop to 0.5, so greedy walks 2 → 1 → 0
    const calls: number[][] = [];
    const step: StepFn = async (ids) => {
      calls.push(ids);
      return f32([1, 1, 1, 0.9, 0.8]);
    };
    const { result } = await drain(generateTokens(step, [3, 4], { maxNewTokens: 3, repetitionPenalty: 2 }));
    expect(result.tokens).toEqual([0, 1, 2]);
    const { result: r2 } = await drain(generateTokens(step, [0, 1], { maxNewTokens: 2, repetitionPenalty: 2 }));
    expect(r2.tokens).toEqual([2, 3]);
  });

  test("seeded sampling is reproducible end to end", async () => {
    const step: StepFn = async (ids) => f32(Array.from({ length: 50 }, (_, i) => Math.cos(i * (ids[0] + 1))));
    const run = async (seed: number) => (await drain(generateTokens(step, [1, 2], { temperature: 1.2, topK: 20, seed, maxNewTokens: 16 }))).result.tokens;
    expect(await run(8)).toEqual(await run(8));
    expect(await run(8)).not.toEqual(await run(9));
  });

  test("abort between steps throws AbortError and makes no more steps", async () => {
    const { step, calls } = scripted([1, 2, 3, 4, 5]);
    const ac = new AbortController();
    const seen: number[] = [];
    await expect(
      (async () => {
        for await (const t of generateTokens(step, [0], { signal: ac.signal })) {
          seen.push(t.id);
          if (seen.length === 2) ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ name: "AbortError" });
    expect(seen).toEqual([1, 2]);
    expect(calls.length).toBe(2);
  });

  test("abort during a step drops that token; a given reason is thrown as is", async () => {
    const ac = new AbortController();
    const reason = new Error("user cancelled");
    let n = 0;
    const step: StepFn = async () => {
      if (++n === 2) ac.abort(reason);
      return f32([0, 1]);
    };
    const gen = generateTokens(step, [0], { signal: ac.signal });
    expect(await gen.next()).toEqual({ done: false, value: { id: 1, index: 0 } });
    await expect(gen.next()).rejects.toBe(reason);
    expect(n).toBe(2);
  });

  test("already aborted: the model never runs", async () => {
    const { step, calls } = scripted([1]);
    const gen = generateTokens(step, [0], { signal: AbortSignal.abort() });
    await expect(gen.next()).rejects.toMatchObject({ name: "AbortError" });
    expect(calls).toEqual([]);
  });

  test("bad arguments are E_USAGE at the call; bad model output is E_RUNTIME", async () => {
    const { step } = scripted([1]);
    expectKilnErrorSync(() => generateTokens(step, [], {}), "E_USAGE", "prompt");
    expectKilnErrorSync(() => generateTokens(step, [1, -2], {}), "E_USAGE", "prompt[1]", "-2");
    expectKilnErrorSync(() => generateTokens(step, [1], { topP: 2 }), "E_USAGE", "topP", "2");
    const nan: StepFn = async () => f32([0, NaN]);
    await expect(generateTokens(nan, [0]).next()).rejects.toMatchObject({ code: "E_RUNTIME" });
    let v = 3;
    const shrinking: StepFn = async () => new Float32Array(v--);
    const gen = generateTokens(shrinking, [0]);
    await gen.next();
    await expect(gen.next()).rejects.toMatchObject({ code: "E_RUNTIME", message: expect.stringContaining("2 logits") });
  });

  test("a step may answer a greedy step with the token id it picked: same tokens, stops and result", async () => {
    const script = [4, 6, 8, 2, 9];
    const { step: logits } = scripted(script);
    const greedyFlags: boolean[] = [];
    let k = 0;
    const ids: StepFn = async (_ids, _first, greedy) => {
      greedyFlags.push(greedy);
      return greedy ? script[k++] : logits(_ids, _first, greedy);
    };
    for (const o of [{ maxNewTokens: 5 }, { maxNewTokens: 5, stopTokens: [8] }, { maxNewTokens: 4, temperature: 0 }, { maxNewTokens: 3, doSample: false, topK: 2 }]) {
      k = 0;
      greedyFlags.length = 0;
      const want = await drain(generateTokens(scripted(script).step, [1, 2], o));
      expect(await drain(generateTokens(ids, [1, 2], o))).toEqual(want);
      expect(greedyFlags.every((g) => g)).toBe(true);
    }
    // sampling or a repetition penalty: the loop asks for logits (greedy false) and takes them
    for (const o of [{ maxNewTokens: 3, temperature: 0.7, seed: 1 }, { maxNewTokens: 3, repetitionPenalty: 1.2 }, { maxNewTokens: 3, topP: 0.5, seed: 2 }]) {
      greedyFlags.length = 0;
      await drain(generateTokens(ids, [1], o));
      expect(greedyFlags).toEqual([false, false, false]);
    }
  });

  test("a token id where logits were needed, or an id outside the vocabulary, is E_RUNTIME", async () => {
    const always: (id: number) => StepFn = (id) => async () => id;
    await expect(generateTokens(always(3), [0], { temperature: 0.5 }).next()).rejects.toMatchObject({ code: "E_RUNTIME", message: expect.stringContaining("need logits") });
    for (const bad of [-1, 2.5, NaN])
      await expect(generateTokens(always(bad), [0]).next()).rejects.toMatchObject({ code: "E_RUNTIME", message: expect.stringContaining("not in the vocabulary") });
    // once a step gave logits, the vocabulary is known: an id past it is refused
    let first = true;
    const mixed: StepFn = async () => (first ? ((first = false), f32([0, 1, 0])) : 3);
    const gen = generateTokens(mixed, [0]);
    expect((await gen.next()).value).toEqual({ id: 1, index: 0 });
    await expect(gen.next()).rejects.toMatchObject({ code: "E_RUNTIME", message: expect.stringContaining("[0, 3)") });
  });
});
