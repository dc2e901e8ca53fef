// batch-launches: consecutive independent elementwise launches and cache writes of the emitted
// forward become one K::for_each_n; dependent ones (through aliases too) and ones separated by
// real work do not; releases between batched launches move after the batch, never before a
// launch that reads the buffer; on random bodies, every batch is independent and the launches
// keep their order. (The cpu and cuda targets run the batched code in the other suites: every
// cpu-target model test compiles it, and the GPU suites run it.)

import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import { batchLaunches, parseLaunch } from "../compiler/codegen/batch-launches.js";

const fe = (id: number, reads: string[]): string => `  K::for_each(F${id}{${reads.join(", ")}, kiln::Strides{{(int64_t)1}}, v${id}, kiln::Shape{1, {(int64_t)8}}}, (int64_t)8);`;
const alloc = (id: number): string => `  kiln::bf16* v${id} = (kiln::bf16*)rt::alloc((int64_t)16, "%%${id}");`;

describe("batchLaunches", () => {
  test("independent launches share one call; the releases between them follow it", () => {
    const body = [alloc(10), fe(10, ["v1"]), "  rt::release(v1);", '  rt::op_mark("elementwise");', alloc(11), fe(11, ["v2", "w3"]), "  rt::release(v2);", "  K::linear<kiln::bf16>(v10, w4, nullptr, nullptr, v12, 1, 8, 8);"];
    const out = batchLaunches(body);
    expect(out.filter((l) => l.includes("K::for_each_n("))).toHaveLength(1);
    expect(out.some((l) => l.includes("K::for_each(F"))).toBe(false);
    const call = out.findIndex((l) => l.includes("K::for_each_n("));
    expect(out[call]).toContain("kiln::each(F10{v1, kiln::Strides{{(int64_t)1}}, v10, kiln::Shape{1, {(int64_t)8}}}, (int64_t)8)");
    expect(out[call].indexOf("F10{")).toBeLessThan(out[call].indexOf("F11{"));
    // both allocations before the call, both releases after it, the linear last
    expect(out.indexOf(alloc(11))).toBeLessThan(call);
    expect(out.indexOf("  rt::release(v1);")).toBeGreaterThan(call);
    expect(out.indexOf("  rt::release(v2);")).toBeGreaterThan(call);
    expect(out[out.length - 1]).toContain("K::linear");
    expect(out).toHaveLength(body.length - 1);
  });

  test("a launch reading another's output, directly or through an alias, starts a new batch", () => {
    const direct = batchLaunches([alloc(10), fe(10, ["v1"]), alloc(11), fe(11, ["v10"])]);
    expect(direct.filter((l) => l.includes("K::for_each_n"))).toHaveLength(0);
    const aliased = batchLaunches([alloc(10), fe(10, ["v1"]), "  kiln::bf16* v20 = v10;", alloc(11), fe(11, ["v20"])]);
    expect(aliased.filter((l) => l.includes("K::for_each_n"))).toHaveLength(0);
    expect(aliased.filter((l) => l.includes("K::for_each(F"))).toHaveLength(2);
  });

  test("cache writes batch as cache_write_each; two into one cache, or one reading a written cache, do not", () => {
    const cw7 = (cache: string, upd: string) => `  K::cache_write<kiln::bf16>(${cache}, ${upd}, x1, (d_B) * (int64_t)32, (d_C), (d_S), (int64_t)128);`;
    const cw11 = (cache: string, upd: string) => `  K::cache_write<kiln::bf16>(${cache}, ${upd}, x1, (d_B), (int64_t)32, (d_C), (d_S), (int64_t)128, (d_S) * (int64_t)4096, (int64_t)128, (int64_t)4096);`;
    const kv = batchLaunches(["  kiln::bf16* v57 = x56; // written in place", cw7("v57", "v30"), "  kiln::bf16* v59 = x58; // written in place", cw11("v59", "v54")]);
    const call = kv.find((l) => l.includes("K::for_each_n"))!;
    expect(call).toContain("K::cache_write_each<kiln::bf16>(v57, v30, x1,");
    expect(call).toContain("K::cache_write_each<kiln::bf16>(v59, v54, x1, (d_B), (int64_t)32,");
    const same = batchLaunches(["  kiln::bf16* v57 = x56;", cw7("v57", "v30"), "  kiln::bf16* v60 = x56;", cw7("v60", "v31")]);
    expect(same.some((l) => l.includes("K::for_each_n"))).toBe(false);
    const reader = batchLaunches(["  kiln::bf16* v57 = x56;", cw7("v57", "v30"), alloc(70), fe(70, ["x56"])]);
    expect(reader.some((l) => l.includes("K::for_each_n"))).toBe(false);
  });

  test("work between launches ends the batch", () => {
    const out = batchLaunches([alloc(10), fe(10, ["v1"]), "  K::rms_norm<kiln::bf16>(v2, w3, v4, 1, 8, 0.00001);", alloc(11), fe(11, ["v5"])]);
    expect(out.some((l) => l.includes("K::for_each_n"))).toBe(false);
    // a launch inside a block is not the body's to batch
    const nested = batchLaunches([alloc(10), fe(10, ["v1"]), "  if (d_S > 1) {", `  ${fe(11, ["v5"])}`, "  }"]);
    expect(nested.some((l) => l.includes("K::for_each_n"))).toBe(false);
    expect(parseLaunch(`  ${fe(11, ["v5"])}`)).toBeUndefined();
  });

  test("launches behind one rope-fusion guard batch under it; a guard change ends the batch", () => {
    const g = (n: number, l: string) => `  if (!rf${n}) ${l.slice(2)}`;
    const out = batchLaunches([alloc(10), g(5, fe(10, ["v1"])), alloc(11), g(5, fe(11, ["v2"])), alloc(12), fe(12, ["v3"]), alloc(13), g(6, fe(13, ["v4"]))]);
    const calls = out.filter((l) => /K::for_each/.test(l));
    expect(calls).toHaveLength(3);
    expect(calls[0]).toMatch(/^ {2}if \(!rf5\) K::for_each_n\(kiln::each\(F10\{.*kiln::each\(F11\{/);
    expect(calls[1]).toBe(fe(12, ["v3"]));
    expect(calls[2]).toBe(g(6, fe(13, ["v4"])));
    const l = parseLaunch(g(7, fe(7, ["v1"])))!;
    expect([l.guard, [...l.writes], [...l.reads]]).toEqual(["if (!rf7) ", ["v7"], ["v1"]]);
  });

  test("parseLaunch reads the functor's output and operands", () => {
    const l = parseLaunch(fe(7, ["v1", "x2", "w3"]))!;
    expect([...l.writes]).toEqual(["v7"]);
    expect([...l.reads].sort()).toEqual(["v1", "w3", "x2"]);
    expect(parseLaunch("  K::linear<kiln::bf16>(v1, w2, nullptr, nullptr, v3, 1, 8, 8);")).toBeUndefined();
  });

  test("on random bodies: batches are independent, launch order and the other lines are kept, releases never move before a reader", () => {
    const line = fc.oneof(
      fc.record({ kind: fc.constant("fe" as const), reads: fc.uniqueArray(fc.integer({ min: 1, max: 12 }), { maxLength: 3 }) }),
      fc.record({ kind: fc.constant("release" as const), v: fc.integer({ min: 1, max: 12 }) }),
      fc.record({ kind: fc.constant("alias" as const), v: fc.integer({ min: 1, max: 12 }) }),
      fc.record({ kind: fc.constant("work" as const) }),
    );
    fc.assert(
      fc.property(fc.array(line, { maxLength: 30 }), (spec) => {
        let next = 100;
        const body: string[] = [];
        for (const s of spec) {
          if (s.kind === "fe") {
            const id = next++;
            body.push(alloc(id), fe(id, s.reads.map((r) => `v${r}`)));
          } else if (s.kind === "release") body.push(`  rt::release(v${s.v});`);
          else if (s.kind === "alias") body.push(`  kiln::bf16* v${next++} = v${s.v};`);
          else body.push("  K::softmax<kiln::bf16>(v1, v2, 1, 8, 1);");
        }
        const out = batchLaunches(body);
        // the launches, in order
        const launchesIn = body.filter((l) => parseLaunch(l)).map((l) => /F(\d+)\{/.exec(l)![1]);
        const launchesOut = out.flatMap((l) => [...l.matchAll(/F(\d+)\{/g)].map((m) => m[1]));
        expect(launchesOut).toEqual(launchesIn);
        // the other lines, as a multiset and (releases aside) in order
        const rest = (ls: string[]) => ls.filter((l) => !l.includes("K::for_each"));
        expect([...rest(out)].sort()).toEqual([...rest(body)].sort());
        expect(rest(out).filter((l) => !l.includes("rt::release"))).toEqual(rest(body).filter((l) => !l.includes("rt::release")));
        // a release comes after every launch before it in the input (as the batch its launch is in)
        const posOut = (id: string) => out.findIndex((l) => l.includes(`F${id}{`));
        const nth = (ls: string[], l: string, n: number): number => ls.map((x, j) => (x === l ? j : -1)).filter((j) => j >= 0)[n];
        body.forEach((l, i) => {
          if (!l.includes("rt::release")) return;
          const k = nth(out, l, body.slice(0, i).filter((x) => x === l).length);
          for (const before of body.slice(0, i).filter((x) => parseLaunch(x))) expect(posOut(/F(\d+)\{/.exec(before)![1])).toBeLessThan(k);
        });
        // within a batch, no part reads what another writes (the test's aliases resolved by hand)
        const alias = new Map<string, string>();
        for (const l of body) {
          const m = /(v\d+) = (v\d+);/.exec(l);
          if (m) alias.set(m[1], m[2]);
        }
        const root = (x: string): string => (alias.has(x) ? root(alias.get(x)!) : x);
        for (const l of out.filter((x) => x.includes("K::for_each_n("))) {
          const parts = [...l.matchAll(/F(\d+)\{([^}]*)/g)].map((m) => ({ out: `v${m[1]}`, reads: (m[2].match(/v\d+/g) ?? []).filter((r) => r !== `v${m[1]}`).map(root) }));
          for (const a of parts) for (const b of parts) if (a !== b) expect(b.reads).not.toContain(a.out);
        }
      }),
      { numRuns: 300 },
    );
  });
});
