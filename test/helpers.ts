// Shared test helpers: a failure must be a KilnError with the expected code and message parts;
// float tensors to and from the storage bytes the kernel drivers (test/cpu/*_driver.cpp) read.

import { execFileSync } from "node:child_process";
import { expect } from "@jest/globals";
import { KilnError } from "../compiler/ir/errors.js";
import type { KilnErrorCode } from "../compiler/ir/errors.js";
import type { DType } from "../compiler/ir/dtype.js";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../compiler/ir/numeric.js";
import type { Tensor } from "../compiler/ir/tensor.js";

function check(err: unknown, code: KilnErrorCode, parts: (string | RegExp)[]): KilnError {
  expect(err).toBeInstanceOf(KilnError);
  const e = err as KilnError;
  expect(e.code).toBe(code);
  for (const p of parts) expect(e.message).toMatch(p);
  return e;
}

/** Awaits `p`, which must reject with a KilnError of `code` whose message matches every part. */
export async function expectKilnError(p: Promise<unknown>, code: KilnErrorCode, ...parts: (string | RegExp)[]): Promise<KilnError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  return check(err, code, parts);
}

/** Calls `f`, which must throw a KilnError of `code` whose message matches every part. */
export function expectKilnErrorSync(f: () => unknown, code: KilnErrorCode, ...parts: (string | RegExp)[]): KilnError {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  return check(err, code, parts);
}

/**
 * The dynamic symbols a shared library defines (`nm -D --defined-only`): `kiln`, those that are not
 * the C++ standard library's template instances (namespace std, which its headers keep visible),
 * and `unique`, the GNU_UNIQUE ones (bound to one copy across every library of a process).
 */
export function exportedSymbols(lib: string): { kiln: string[]; unique: string[] } {
  const out = execFileSync("nm", ["-D", "--defined-only", lib], { encoding: "utf8" });
  const rows = out.split("\n").map((l) => l.trim().split(/\s+/)).filter((r) => r.length === 3);
  return {
    kiln: rows.map((r) => r[2]).filter((n) => !n.startsWith("_ZNSt") && !n.startsWith("_ZNKSt") && !n.startsWith("_ZSt") && !n.startsWith("_ZTISt") && !n.startsWith("_ZTSSt")).sort(),
    unique: rows.filter((r) => r[1] === "u").map((r) => r[2]),
  };
}

/** Storage bytes of a float tensor (f32 little-endian, 16-bit floats as their bit patterns). */
export function bytesOf(t: Tensor): Buffer {
  if (t.dtype === "f32") return Buffer.from(Float32Array.from(t.data).buffer);
  const bits = Uint16Array.from(t.data, (v) => (t.dtype === "bf16" ? f32ToBf16Bits(v) : f32ToF16Bits(v)));
  return Buffer.from(bits.buffer);
}

/** The values of storage bytes of a float dtype. */
export function valuesOf(dtype: DType, b: Buffer): number[] {
  if (dtype === "f32") return Array.from(new Float32Array(b.buffer, b.byteOffset, b.length / 4));
  return Array.from(new Uint16Array(b.buffer, b.byteOffset, b.length / 2), (h) => (dtype === "bf16" ? bf16BitsToF32(h) : f16BitsToF32(h)));
}
