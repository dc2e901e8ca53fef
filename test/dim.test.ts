// Dim algebra: canonical forms, arithmetic and evaluation, by example and by property
// (evaluating the result of an operation equals operating on the evaluated dims).

import { describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import type { Dim } from "../compiler/ir/index.js";
import { canonDim, dimAdd, dimEq, dimMul, dimProduct, dimSub, dimSymbols, evalDim, formatShape, KilnError, shapeEq } from "../compiler/ir/index.js";
import { arbDim, arbDimExpr, arbShape } from "../compiler/testing/index.js";

const SYMS = ["B", "S", "P"];
const expr = arbDimExpr({ symbols: SYMS });
const bindings = fc.record({ B: fc.integer({ min: -6, max: 9 }), S: fc.integer({ min: -6, max: 9 }), P: fc.integer({ min: -6, max: 9 }) });
const RUNS = { numRuns: 300, seed: 11 };

describe("canonical forms", () => {
  test("examples", () => {
    expect(canonDim("S+P")).toBe("P+S");
    expect(canonDim(" S + 1 ")).toBe("S+1");
    expect(canonDim("1+S")).toBe("S+1");
    expect(canonDim("S*B")).toBe("B*S");
    expect(canonDim("S*2")).toBe("2*S");
    expect(canonDim("S+S")).toBe("2*S");
    expect(canonDim("S-S")).toBe(0);
    expect(canonDim("3")).toBe(3);
    expect(canonDim("-S+2")).toBe("-S+2");
    expect(canonDim("2-S")).toBe("-S+2");
    expect(canonDim("B*S*S+S*S*B")).toBe("2*B*S*S");
    expect(canonDim("0*S+4")).toBe(4);
    expect(canonDim(7)).toBe(7);
    expect(canonDim("+S")).toBe("S");
  });

  test("malformed expressions are E_SHAPE naming the expression", () => {
    for (const bad of ["", "S**2", "S+", "2S", "S--1", "(S)", "S/2", "S*-1", "1.5"]) {
      let err: unknown;
      try {
        canonDim(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(KilnError);
      expect((err as KilnError).code).toBe("E_SHAPE");
      expect((err as KilnError).message).toBe(`malformed dim expression '${bad}'`);
    }
  });

  test("canonDim is idempotent and keeps the value", () => {
    fc.assert(
      fc.property(expr, bindings, (d, b) => {
        const c = canonDim(d);
        expect(canonDim(c)).toBe(c);
        expect(evalDim(c, b) + 0).toBe(evalDim(d, b) + 0);
        // a canonical dim is a number exactly when it is constant
        expect(typeof c === "number").toBe(dimSymbols(d).length === 0);
      }),
      RUNS,
    );
  });

  test("equal dims have equal canonical strings (term and factor order do not matter)", () => {
    fc.assert(
      fc.property(expr, expr, (a, b) => {
        expect(dimEq(dimAdd(a, b), dimAdd(b, a))).toBe(true);
        expect(canonDim(dimMul(a, b))).toEqual(canonDim(dimMul(b, a)));
      }),
      RUNS,
    );
  });
});

describe("arithmetic", () => {
  test("examples", () => {
    expect(dimAdd("P", "S")).toBe("P+S");
    expect(dimAdd("S", 1)).toBe("S+1");
    expect(dimAdd(2, 3)).toBe(5);
    expect(dimSub("S+1", 1)).toBe("S");
    expect(dimSub("S", "S")).toBe(0);
    expect(dimSub(3, "S")).toBe("-S+3");
    expect(dimMul("B", "S")).toBe("B*S");
    expect(dimMul("S+1", "S-1")).toBe("S*S-1");
    expect(dimMul("S", 0)).toBe(0);
    expect(dimProduct(["B", "S", 4])).toBe("4*B*S");
    expect(dimProduct([])).toBe(1);
    expect(dimProduct([2, 3])).toBe(6);
    expect(dimEq("B*S", "S*B")).toBe(true);
    expect(dimEq("S", "P")).toBe(false);
    expect(dimEq(3, "3")).toBe(true);
    expect(shapeEq(["B*S", 4], ["S*B", "4"])).toBe(true);
    expect(shapeEq(["B"], ["B", 1])).toBe(false);
    expect(dimSymbols("2*B*S+P-1").sort()).toEqual(["B", "P", "S"]);
    expect(dimSymbols(5)).toEqual([]);
    expect(formatShape(["B", "S+1", 4])).toBe("[B, S+1, 4]");
    expect(formatShape([])).toBe("[]");
  });

  test("evaluation is a ring homomorphism: eval(a ∘ b) = eval(a) ∘ eval(b)", () => {
    fc.assert(
      fc.property(expr, expr, bindings, (a, b, env) => {
        const [x, y] = [evalDim(a, env), evalDim(b, env)];
        const z = (v: number): number => v + 0; // dims are integers: -0 is 0
        expect(z(evalDim(dimAdd(a, b), env))).toBe(z(x + y));
        expect(z(evalDim(dimSub(a, b), env))).toBe(z(x - y));
        expect(z(evalDim(dimMul(a, b), env))).toBe(z(x * y));
        expect(z(evalDim(dimProduct([a, b, a]), env))).toBe(z(x * y * x));
      }),
      RUNS,
    );
  });

  test("ring laws hold symbolically", () => {
    fc.assert(
      fc.property(expr, expr, expr, (a, b, c) => {
        expect(dimEq(dimAdd(dimAdd(a, b), c), dimAdd(a, dimAdd(b, c)))).toBe(true);
        expect(dimEq(dimMul(dimMul(a, b), c), dimMul(a, dimMul(b, c)))).toBe(true);
        expect(dimEq(dimMul(a, dimAdd(b, c)), dimAdd(dimMul(a, b), dimMul(a, c)))).toBe(true);
        expect(dimEq(dimSub(dimAdd(a, b), b), a)).toBe(true);
        expect(dimEq(dimMul(a, 1), a)).toBe(true);
        expect(dimSub(a, a)).toBe(0);
      }),
      RUNS,
    );
  });

  test("dimEq is equality of polynomials: equal exactly when equal on a grid", () => {
    // a polynomial of degree <= 2 in each symbol (arbDimExpr's terms have at most 2 factors) that
    // vanishes on {0, 1, 2}^3 is zero, so this grid decides equality
    const grid = [0, 1, 2].flatMap((B) => [0, 1, 2].flatMap((S) => [0, 1, 2].map((P) => ({ B, S, P }))));
    fc.assert(
      fc.property(expr, expr, (a, b) => {
        expect(dimEq(a, b)).toBe(grid.every((env) => evalDim(a, env) === evalDim(b, env)));
      }),
      RUNS,
    );
    expect(dimEq("S*S", "S")).toBe(false); // equal at S = 0 and 1, not at 2
  });

  test("dimSymbols lists what evaluation needs", () => {
    fc.assert(
      fc.property(expr, (d) => {
        const syms = dimSymbols(d);
        const env = Object.fromEntries(syms.map((s) => [s, 2]));
        expect(Number.isInteger(evalDim(d, env))).toBe(true);
        for (const s of syms) {
          const missing = Object.fromEntries(syms.filter((x) => x !== s).map((x) => [x, 2]));
          expect(() => evalDim(d, missing)).toThrow(`symbolic dim '${s}'`);
        }
      }),
      RUNS,
    );
  });
});

describe("evaluation", () => {
  test("examples and unbound symbols", () => {
    expect(evalDim("B*S+1", { B: 2, S: 3 })).toBe(7);
    expect(evalDim("-S+2", { S: 5 })).toBe(-3);
    expect(evalDim(4, {})).toBe(4);
    let err: unknown;
    try {
      evalDim("P+S", { S: 1 });
    } catch (e) {
      err = e;
    }
    expect((err as KilnError).code).toBe("E_SHAPE");
    expect((err as KilnError).message).toBe("symbolic dim 'P' (in 'P+S') has no value");
  });

  test("arbDim and arbShape give valid dims", () => {
    fc.assert(
      fc.property(arbShape({ maxRank: 4, maxDim: 5, symbols: SYMS }), arbDim({ symbols: ["T"] }), (shape: Dim[], d) => {
        expect(shape.length).toBeLessThanOrEqual(4);
        for (const x of shape) expect(typeof x === "number" ? x >= 1 && x <= 5 : SYMS.includes(x)).toBe(true);
        expect(canonDim(d)).toEqual(d);
      }),
      { numRuns: 100, seed: 5 },
    );
  });
});
