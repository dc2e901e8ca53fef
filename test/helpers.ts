// Shared test helpers: a failure must be a KilnError with the expected code and message parts.

import { expect } from "@jest/globals";
import { KilnError } from "../compiler/ir/errors.js";
import type { KilnErrorCode } from "../compiler/ir/errors.js";

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
