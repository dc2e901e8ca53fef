import { describe, expect, test } from "@jest/globals";
import {
  causalMask, defineModel, Embedding, full, HFConfig, LayerNorm, Linear, Module, Parameter, repeatKv, RMSNorm, rotateHalf, traceModel,
} from "../compiler/dsl/index.js";
import type { Tensor } from "../compiler/dsl/index.js";
import { KilnError, print, parse, run, tensor } from "../compiler/ir/index.js";
import type { Tensor as Data } from "../compiler/ir/index.js";

/** A one-off model around `body`, with inputs `x: f32[B, S, 4]`. */
function model(body: (x: Tensor, m: Module & Record<string, any>) => Tensor, build: (m: Module & Record<string, any>) => void = () => {}) {
  class M extends Module {
    constructor() {
      super();
      build(this as any);
    }
    forward({ x }: Record<string, Tensor>) {
      return { y: body(x, this as any) };
    }
  }
  return defineModel<{}>({ family: "t", modelTypes: [], fromHF: () => ({}), inputs: () => ({ x: { dtype: "f32", shape: ["B", "S", 4] } }), create: () => new M() });
}

const seq = (n: number, f = (i: number) => i) => Array.from({ length: n }, (_, i) => f(i));

describe("tracing", () => {
  test("parameters are named from the module tree with Hugging Face names; tied weights appear once", () => {
    class Block extends Module {
      norm = new RMSNorm(4, 1e-6);
      proj = new Linear(4, 4, { bias: false });
    }
    class Net extends Module {
      embed = new Embedding(10, 4);
      layers = [new Block(), new Block()];
      head = new Linear(4, 10, { bias: false });
      constructor() {
        super();
        this.head.weight = this.embed.weight;
      }
    }
    const names = new Net().namedParameters().map(([n]) => n);
    expect(names).toEqual(["embed.weight", "layers.0.norm.weight", "layers.0.proj.weight", "layers.1.norm.weight", "layers.1.proj.weight"]);
  });

  test("a traced graph has symbolic dims, verifies, and round-trips through the text form", () => {
    const def = model((x, m) => m.ln.forward(m.proj.forward(x)).softmax(-1), (m) => {
      m.proj = new Linear(4, 6);
      m.ln = new LayerNorm(6, 1e-5);
    });
    const g = traceModel(def, {});
    expect(g.outputs[0].value.shape).toEqual(["B", "S", 6]);
    expect(g.params.map((p) => p.name)).toEqual(["proj.weight", "proj.bias", "ln.weight", "ln.bias"]);
    const text = print(g);
    expect(print(parse(text))).toBe(text);
    // every op records the line of this file that created it
    expect(g.nodes.every((n) => n.loc?.file.endsWith("dsl.test.ts"))).toBe(true);
  });

  test("a shape mismatch while tracing names the op, the shapes, and the model source line with a code frame", () => {
    const def = model((x, m) => m.proj.forward(x), (m) => (m.proj = new Linear(5, 3)));
    let err: unknown;
    try {
      traceModel(def, {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KilnError);
    const e = err as KilnError;
    expect(e.code).toBe("E_SHAPE");
    expect(e.message).toContain("linear");
    expect(e.message).toContain("[B, S, 4]");
    expect(e.where).toMatch(/dsl\.test\.ts:\d+:\d+$/);
    expect(e.message).toContain("> ");
    expect(e.message).toContain("m.proj.forward(x)");
  });

  test("bad reshape and chunk are shape errors at the caller", () => {
    expect(() => traceModel(model((x) => x.reshape("B", "S", 3, -1)), {})).toThrow(/reshape/);
    expect(() => traceModel(model((x) => x.chunk(3, -1)[0]), {})).toThrow(/equal chunks/);
  });
});

describe("layers and helpers compute what they say", () => {
  const x = tensor("f32", [1, 2, 4], [1, 2, 3, 4, -1, 0.5, 2, -3]);
  const eval1 = (def: ReturnType<typeof model>, params: Record<string, Data> = {}) => run(traceModel(def, {}), { x }, params).y;

  test("RMSNorm", () => {
    const y = eval1(model((x, m) => m.n.forward(x), (m) => (m.n = new RMSNorm(4, 0))), { "n.weight": tensor("f32", [4], [1, 2, 1, 1]) });
    const r = Math.sqrt((1 + 4 + 9 + 16) / 4);
    expect(y.data[0]).toBeCloseTo(1 / r, 6);
    expect(y.data[1]).toBeCloseTo((2 * 2) / r, 6);
  });

  test("LayerNorm", () => {
    const y = eval1(model((x, m) => m.n.forward(x), (m) => (m.n = new LayerNorm(4, 0))), {
      "n.weight": tensor("f32", [4], [1, 1, 1, 1]),
      "n.bias": tensor("f32", [4], [0, 0, 0, 1]),
    });
    const sd = Math.sqrt(((1.5 ** 2 + 0.5 ** 2) * 2) / 4);
    expect(Array.from(y.data.slice(0, 4))).toEqual([-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd + 1].map(Math.fround).map((v, i) => expect.closeTo(v, 5) as unknown as number));
  });

  test("rotateHalf, causalMask and repeatKv", () => {
    expect(Array.from(eval1(model((x) => rotateHalf(x))).data.slice(0, 4))).toEqual([-3, -4, 1, 2]);
    const mask = eval1(model((x) => x.slice(-1, 0, 1).reshape("B", "S").mul(0).reshape("B", "S", 1).add(causalMask("S"))));
    expect(Array.from(mask.data)).toEqual([0, -Infinity, 0, 0]);
    const rk = eval1(model((x) => repeatKv(x.reshape("B", 1, "S", 4), 3).sum(1)));
    expect(Array.from(rk.data)).toEqual(Array.from(x.data).map((v) => 3 * v));
  });

  test("full, Parameter.t and Embedding", () => {
    const def = model((x, m) => m.e.forward(full(["B"], 2, "i64")).reshape("B", 1, 4).add(x), (m) => (m.e = new Embedding(3, 4)));
    const y = eval1(def, { "e.weight": tensor("f32", [3, 4], seq(12)) });
    expect(Array.from(y.data)).toEqual([9, 11, 13, 15, 7, 9.5, 12, 8]);
    expect(() => new Parameter([2]).t).toThrow(KilnError);
  });
});

describe("HFConfig", () => {
  const c = new HFConfig({ a: 3, b: "x", t: true, f: 1.5, o: { k: 1 } }, "dir/config.json");
  test("reads fields and defaults", () => {
    expect([c.int("a"), c.str("b"), c.bool("t"), c.num("f"), c.int("missing", 7), c.obj("o")!.int("k")]).toEqual([3, "x", true, 1.5, 7, 1]);
  });
  test("errors name the field and the file", () => {
    const cases: [() => unknown, RegExp][] = [
      [() => c.int("missing"), /dir\/config\.json: 'missing' is missing/],
      [() => c.int("f"), /'f' must be a non-negative integer/],
      [() => c.bool("a"), /'a' must be true or false/],
      [() => c.oneOf("b", ["y", "z"]), /'b' is 'x', which Kiln does not support \(supported: y, z\)/],
      [() => c.obj("a"), /'a' must be an object/],
      [() => c.obj("o")!.str("k"), /config\.json \(o\): 'k' must be a string/],
    ];
    for (const [f, re] of cases) {
      expect(f).toThrow(re);
      try {
        f();
      } catch (e) {
        expect((e as KilnError).code).toBe("E_CONFIG");
      }
    }
  });
});
