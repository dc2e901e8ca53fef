import { afterAll, describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { DType } from "../compiler/ir/dtype.js";
import { DTYPES, DTYPE_BYTES, isFloat } from "../compiler/ir/dtype.js";
import { KilnError } from "../compiler/ir/errors.js";
import type { KilnErrorCode } from "../compiler/ir/errors.js";
import { f32ToBf16Bits, f32ToF16Bits } from "../compiler/ir/numeric.js";
import {
  HEADER_LIMIT,
  INDEX_FILE,
  SafetensorsFile,
  encodeSafetensors,
  findDuplicateKey,
  fromTypedArray,
  openCheckpoint,
  toInterpreterTensor,
  writeSafetensors,
  writeShardedCheckpoint,
} from "../runtime/safetensors.js";
import type { TensorInput } from "../runtime/safetensors.js";

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-safetensors-"));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let tmpCount = 0;
const tmpDir = (): string => fs.mkdtempSync(path.join(tmpRoot, `t${tmpCount++}-`));

function expectKiln(fn: () => unknown, code: KilnErrorCode, ...substrings: string[]): KilnError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KilnError);
    const k = e as KilnError;
    expect(k.code).toBe(code);
    for (const s of substrings) expect(k.message).toContain(s);
    return k;
  }
  throw new Error(`expected a KilnError ${code}`);
}

/** A file from raw header text and data bytes; `length` overrides the u64 prefix. */
function craft(header: string, data: ArrayLike<number> = [], length?: bigint): Uint8Array {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}
const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
const craftJson = (header: object, dataLength: number) => craft(JSON.stringify(header), new Uint8Array(dataLength));
const parse = (bytes: Uint8Array) => SafetensorsFile.fromBytes(bytes, "bad.safetensors");

const VALUES = [1, -2.5, 65504, 1e-3, 0, -0, NaN, Infinity, -Infinity];

describe("round trip", () => {
  test("every dtype, from plain values", () => {
    const tensors: Record<string, TensorInput> = {
      f32: { dtype: "f32", shape: [3, 3], data: VALUES },
      f16: { dtype: "f16", shape: [9], data: VALUES },
      bf16: { dtype: "bf16", shape: [9], data: VALUES },
      i64: { dtype: "i64", shape: [4], data: [-(2n ** 63n), 2n ** 63n - 1n, 0n, 42n] },
      i32: { dtype: "i32", shape: [3], data: [-2147483648, 2147483647, -7] },
      i8: { dtype: "i8", shape: [3], data: [-128, 127, 0] },
      u8: { dtype: "u8", shape: [2], data: [0, 255] },
      bool: { dtype: "bool", shape: [3], data: [1, 0, 1] },
    };
    const f = SafetensorsFile.fromBytes(encodeSafetensors(tensors));
    expect(f.names().sort()).toEqual(Object.keys(tensors).sort());
    for (const name of f.names()) {
      const t = tensors[name];
      const r = f.read(name);
      expect(r.dtype).toBe(t.dtype);
      expect(r.shape).toEqual(t.shape);
      expect(f.info(name).byteOffset % DTYPE_BYTES[r.dtype]).toBe(0); // the writer aligns every tensor
    }
    expect(Array.from(f.toFloat32("f32"))).toEqual(VALUES.map(Math.fround));
    // Bit-exact f16/bf16 encodings; NaN is written as the canonical quiet NaN, ±inf as ±inf.
    expect(Array.from(f.read("f16").data as Uint16Array)).toEqual([0x3c00, 0xc100, 0x7bff, 0x1419, 0, 0x8000, 0x7e00, 0x7c00, 0xfc00]);
    expect(Array.from(f.read("bf16").data as Uint16Array)).toEqual([0x3f80, 0xc020, 0x4780, 0x3a83, 0, 0x8000, 0x7fc0, 0x7f80, 0xff80]);
    expect(Array.from(f.toFloat32("f16"))).toEqual([1, -2.5, 65504, 0.0010004043579101562, 0, -0, NaN, Infinity, -Infinity]);
    expect(Array.from(f.toFloat32("bf16"))).toEqual([1, -2.5, 65536, 0.00099945068359375, 0, -0, NaN, Infinity, -Infinity]);
    expect(Array.from(f.read("i64").data as BigInt64Array)).toEqual([-(2n ** 63n), 2n ** 63n - 1n, 0n, 42n]);
    expect(Array.from(f.toFloat64("i64"))).toEqual([-(2 ** 63), 2 ** 63, 0, 42]);
    expect(Array.from(f.toFloat64("i32"))).toEqual([-2147483648, 2147483647, -7]);
    expect(Array.from(f.read("i8").data as Int8Array)).toEqual([-128, 127, 0]);
    expect(f.read("i8").data).toBeInstanceOf(Int8Array);
    expect(Array.from(f.toFloat64("u8"))).toEqual([0, 255]);
    expect(Array.from(f.toFloat64("bool"))).toEqual([1, 0, 1]);
    expect(Array.from(f.toFloat64("bf16"))).toEqual([1, -2.5, 65536, 0.00099945068359375, 0, -0, NaN, Infinity, -Infinity]);
    expectKiln(() => f.toFloat32("i32"), "E_DTYPE", "i32");
  });

  test("raw f16/bf16 bits, NaN payloads included, come back bit-exact", () => {
    const bits = new Uint16Array([0x7c01, 0xfe00, 0x0001, 0x8001, 0x7bff, 0x3555]);
    const f = SafetensorsFile.fromBytes(encodeSafetensors({ h: { dtype: "f16", shape: [6], data: bits }, b: { dtype: "bf16", shape: [6], data: bits } }));
    expect(f.read("h").data).toEqual(bits);
    expect(f.read("b").data).toEqual(bits);
    expect(f.toFloat32("h")[2]).toBe(2 ** -24); // smallest f16 subnormal
  });

  test("empty tensors, scalars, metadata, empty file", () => {
    const meta = { format: "pt", note: 'quotes " and \\ and ünïcode' };
    const f = SafetensorsFile.fromBytes(
      encodeSafetensors(
        { empty: { dtype: "f32", shape: [0], data: [] }, empty2: { dtype: "i64", shape: [3, 0], data: [] }, scalar: { dtype: "bf16", shape: [], data: [3] } },
        meta,
      ),
    );
    expect(f.metadata).toEqual(meta);
    expect(f.read("empty")).toEqual({ dtype: "f32", shape: [0], data: new Float32Array(0) });
    expect(f.read("empty2").shape).toEqual([3, 0]);
    expect(f.read("scalar").shape).toEqual([]);
    expect(Array.from(f.toFloat32("scalar"))).toEqual([3]);
    // Byte-exact: an empty file is the header "{}" padded to 8 with spaces.
    const empty = encodeSafetensors({});
    expect(Array.from(empty)).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 32, 32, 32, 32, 32, 32]);
    expect(SafetensorsFile.fromBytes(empty).names()).toEqual([]);
    expect(SafetensorsFile.fromBytes(empty).metadata).toEqual({});
    expect(new TextDecoder().decode(encodeSafetensors({}, { a: "b" }).subarray(8))).toBe('{"__metadata__":{"a":"b"}}      ');
  });

  test("layout: descending element size, then name; offsets in file order", () => {
    const f = SafetensorsFile.fromBytes(
      encodeSafetensors({
        z: { dtype: "u8", shape: [1], data: [1] },
        b: { dtype: "f16", shape: [1], data: [1] },
        a: { dtype: "f16", shape: [1], data: [1] },
        c: { dtype: "i64", shape: [1], data: [1n] },
      }),
    );
    expect(f.tensors.map((t) => t.name)).toEqual(["c", "a", "b", "z"]);
    expect(f.names()).toEqual(["c", "a", "b", "z"]);
  });

  test("unaligned tensors (third-party writers) are copied, not misread", () => {
    // Header of odd length: the data section starts at an odd offset.
    const data = new Uint8Array(9);
    data[0] = 7;
    new DataView(data.buffer).setFloat32(1, 1.5, true);
    new DataView(data.buffer).setFloat32(5, -3, true);
    const header = JSON.stringify({ a: entry("U8", [1], [0, 1]), b: entry("F32", [2], [1, 9]) });
    const f = parse(craft(header.length % 2 ? header : header + " ", data));
    expect(Array.from(f.toFloat32("b"))).toEqual([1.5, -3]);
    expect(Array.from(f.read("a").data as Uint8Array)).toEqual([7]);
  });

  test("property: random tensors survive encode → parse", () => {
    const dtypeArb = fc.constantFrom<DType>(...DTYPES);
    const tensorArb = fc
      .record({ dtype: dtypeArb, shape: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }) })
      .chain(({ dtype, shape }) => {
        const n = shape.reduce((a, b) => a * b, 1);
        const v = isFloat(dtype) ? fc.float({ noNaN: true }) : fc.integer({ min: -128, max: 127 });
        return fc.array(v, { minLength: n, maxLength: n }).map((data) => fromTypedArray(dtype, shape, data));
      });
    fc.assert(
      fc.property(fc.dictionary(fc.string({ minLength: 1, maxLength: 6 }).filter((s) => s !== "__metadata__" && s !== "__proto__"), tensorArb, { maxKeys: 5 }), (tensors) => {
        const f = SafetensorsFile.fromBytes(encodeSafetensors(tensors));
        expect(new Set(f.names())).toEqual(new Set(Object.keys(tensors)));
        for (const [name, t] of Object.entries(tensors)) {
          expect(f.read(name)).toEqual(t);
          expect(f.info(name).byteOffset % DTYPE_BYTES[t.dtype]).toBe(0);
        }
      }),
      { numRuns: 150 },
    );
  });

  test("fromTypedArray converts and checks", () => {
    expect(fromTypedArray("bool", [4], [2, 0, -1, NaN]).data).toEqual(new Uint8Array([1, 0, 1, 1]));
    expect(fromTypedArray("i64", [2], [3.7, -2]).data).toEqual(new BigInt64Array([3n, -2n]));
    expect(fromTypedArray("f16", [1], [1]).data).toEqual(new Uint16Array([f32ToF16Bits(1)]));
    expect(fromTypedArray("bf16", [1], [-2.5]).data).toEqual(new Uint16Array([f32ToBf16Bits(-2.5)]));
    expectKiln(() => fromTypedArray("f32", [2, 2], [1, 2, 3]), "E_USAGE", "3 values");
    expectKiln(() => fromTypedArray("i64", [1], [NaN]), "E_USAGE");
    expectKiln(() => encodeSafetensors({ __metadata__: { dtype: "f32", shape: [], data: [1] } }), "E_USAGE", "reserved");
  });

  test("interpreter tensors: floats in f32, the rest in f64", () => {
    const f = SafetensorsFile.fromBytes(encodeSafetensors({ w: { dtype: "bf16", shape: [2], data: [1, 2] }, ids: { dtype: "i64", shape: [1, 2], data: [5n, 6n] } }));
    const w = toInterpreterTensor(f, "w");
    expect(w).toEqual({ dtype: "bf16", shape: [2], data: new Float32Array([1, 2]) });
    expect(toInterpreterTensor(f, "ids")).toEqual({ dtype: "i64", shape: [1, 2], data: new Float64Array([5, 6]) });
    w.data[0] = 9; // a copy: does not touch the file's bytes
    expect(Array.from(f.toFloat32("w"))).toEqual([1, 2]);
  });
});

describe("validation", () => {
  const ok = { w: entry("F32", [2], [0, 8]) };

  test("a well-formed handcrafted file parses", () => {
    expect(parse(craftJson(ok, 8)).names()).toEqual(["w"]);
  });

  test("file and header length", () => {
    expectKiln(() => parse(new Uint8Array(5)), "E_SAFETENSORS", "shorter than the 8-byte");
    expectKiln(() => parse(craft("{}", [], BigInt(HEADER_LIMIT + 1))), "E_SAFETENSORS", "exceeds the limit");
    expectKiln(() => parse(craft("{}", [], 2n ** 64n - 1n)), "E_SAFETENSORS", "exceeds the limit");
    expectKiln(() => parse(craft("{}", [], 100n)), "E_SAFETENSORS", "past the end");
    const e = expectKiln(() => parse(craft("{}", [], 1n)), "E_SAFETENSORS", "not valid JSON");
    expect(e.where).toBe("bad.safetensors");
  });

  test("header text", () => {
    const bytes = craft("{ }");
    bytes[9] = 0xff;
    expectKiln(() => parse(bytes), "E_SAFETENSORS", "UTF-8");
    expectKiln(() => parse(craft('{"w":')), "E_SAFETENSORS", "not valid JSON");
    expectKiln(() => parse(craft("[1, 2]")), "E_SAFETENSORS", "not a JSON object");
    expectKiln(() => parse(craft(" {}")), "E_SAFETENSORS", "not a JSON object");
    expectKiln(() => parse(craft("\ufeff{}")), "E_SAFETENSORS", "not a JSON object");
    expect(parse(craft("{}\n\t  ")).names()).toEqual([]);
  });

  test("__metadata__", () => {
    expectKiln(() => parse(craftJson({ __metadata__: { a: "x", n: 1 } }, 0)), "E_SAFETENSORS", "__metadata__", '"n"');
    expectKiln(() => parse(craftJson({ __metadata__: ["a"] }, 0)), "E_SAFETENSORS", "__metadata__ is not an object");
    expectKiln(() => parse(craftJson({ __metadata__: null }, 0)), "E_SAFETENSORS", "__metadata__ is not an object");
  });

  test("entry shape", () => {
    const where = "bad.safetensors (w)";
    expect(expectKiln(() => parse(craftJson({ w: 5 }, 0)), "E_SAFETENSORS", "exactly dtype, shape and data_offsets").where).toBe(where);
    expectKiln(() => parse(craftJson({ w: { ...ok.w, extra: 1 } }, 8)), "E_SAFETENSORS", "(w)", "exactly");
    expectKiln(() => parse(craftJson({ w: { dtype: "F32", shape: [2] } }, 8)), "E_SAFETENSORS", "(w)", "exactly");
    expectKiln(() => parse(craftJson({ w: [] }, 0)), "E_SAFETENSORS", "(w)", "exactly");
  });

  test("dtype", () => {
    expectKiln(() => parse(craftJson({ w: entry("F33", [1], [0, 4]) }, 4)), "E_SAFETENSORS", "(w)", 'unknown dtype "F33"');
    expectKiln(() => parse(craftJson({ w: entry("constructor", [1], [0, 4]) }, 4)), "E_SAFETENSORS", "(w)", "unknown dtype");
    expectKiln(() => parse(craftJson({ w: entry("f32", [1], [0, 4]) }, 4)), "E_SAFETENSORS", "(w)", "unknown dtype");
    for (const d of ["F64", "I16", "U32", "F8_E4M3"])
      expectKiln(() => parse(craftJson({ "model.x": entry(d, [1], [0, 8]) }, 8)), "E_SAFETENSORS", "(model.x)", `unsupported dtype "${d}"`);
    expectKiln(() => parse(craftJson({ w: { dtype: 3, shape: [1], data_offsets: [0, 4] } }, 4)), "E_SAFETENSORS", "(w)", "dtype 3");
  });

  test("shape", () => {
    for (const shape of [[-1], [1.5], "2", [2 ** 53], ["1"], null, [[1]]])
      expectKiln(() => parse(craftJson({ w: entry("U8", shape, [0, 0]) }, 0)), "E_SAFETENSORS", "(w)", "shape");
  });

  test("data_offsets", () => {
    for (const offsets of [[4], [0, 1, 2], [-1, 4], [8, 4], [0, 1.5], "0,4", [0, 2 ** 53]])
      expectKiln(() => parse(craftJson({ w: entry("U8", [4], offsets) }, 8)), "E_SAFETENSORS", "(w)", "data_offsets");
    expectKiln(() => parse(craftJson({ w: entry("U8", [12], [0, 12]) }, 8)), "E_SAFETENSORS", "(w)", "beyond the 8-byte data section");
  });

  test("byte length must match shape × dtype", () => {
    expectKiln(() => parse(craftJson({ w: entry("F32", [3], [0, 8]) }, 8)), "E_SAFETENSORS", "(w)", "does not match shape [3]");
    expectKiln(() => parse(craftJson({ w: entry("F32", [2 ** 52, 2 ** 52], [0, 8]) }, 8)), "E_SAFETENSORS", "(w)", "does not match");
    expectKiln(() => parse(craftJson({ w: entry("F32", [], [0, 0]) }, 0)), "E_SAFETENSORS", "(w)", "does not match shape []");
  });

  test("overlaps, gaps, trailing bytes", () => {
    const overlap = { a: entry("U8", [100], [0, 100]), b: entry("U8", [100], [50, 150]) };
    expectKiln(() => parse(craftJson(overlap, 150)), "E_SAFETENSORS", "(b)", 'overlap tensor "a"');
    const inside = { a: entry("U8", [100], [0, 100]), e: entry("U8", [0], [50, 50]) };
    expectKiln(() => parse(craftJson(inside, 100)), "E_SAFETENSORS", "(e)", "overlap");
    const same = { a: entry("U8", [4], [0, 4]), b: entry("U8", [4], [0, 4]) };
    expectKiln(() => parse(craftJson(same, 4)), "E_SAFETENSORS", "overlap");
    const gap = { a: entry("U8", [4], [0, 4]), b: entry("U8", [4], [8, 12]) };
    expectKiln(() => parse(craftJson(gap, 12)), "E_SAFETENSORS", "(b)", "gap of 4");
    expectKiln(() => parse(craftJson({ b: entry("U8", [4], [4, 8]) }, 8)), "E_SAFETENSORS", "(b)", "gap of 4");
    expectKiln(() => parse(craftJson({ a: entry("U8", [4], [0, 4]) }, 6)), "E_SAFETENSORS", "2 trailing bytes");
    expectKiln(() => parse(craftJson({}, 1)), "E_SAFETENSORS", "1 trailing bytes");
  });

  test("duplicate keys, escapes decoded", () => {
    const w = JSON.stringify(ok.w);
    expectKiln(() => parse(craft(`{"w":${w},"w":${w}}`, new Uint8Array(8))), "E_SAFETENSORS", "(w)", 'duplicate key "w"');
    expectKiln(() => parse(craft(`{"w":${w},"\\u0077":${w}}`, new Uint8Array(8))), "E_SAFETENSORS", "(w)", "duplicate key");
    const nested = `{"w":{"dtype":"F32","dtype":"U8","shape":[2],"data_offsets":[0,8]}}`;
    expectKiln(() => parse(craft(nested, new Uint8Array(8))), "E_SAFETENSORS", "(w)", 'duplicate key "dtype" inside "w"');
    expectKiln(() => parse(craft(`{"__metadata__":{"a":"1","a":"2"}}`)), "E_SAFETENSORS", '"a" inside "__metadata__"');
    // Quotes, backslashes and braces inside strings are not structure.
    const tricky = `{"__metadata__":{"a\\"b":"}{[","a\\\\":"\\"","x":"\\\\"},"q\\"":${JSON.stringify(entry("U8", [0], [0, 0]))}}`;
    expect(parse(craft(tricky)).metadata).toEqual({ 'a"b': "}{[", "a\\": '"', x: "\\" });
    expect(findDuplicateKey(`{"a":[{"a":1},{"a":2}],"b":{"a":1}}`)).toBeUndefined();
    expect(findDuplicateKey(`{"a":1,"b":{"c":{"d":1,"d":2}}}`)).toEqual({ key: "d", owner: "b" });
  });

  test("findDuplicateKey terminates on any text", () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(..."{}[]\":,\\ ab".split("")), maxLength: 40 }), (s) => {
        findDuplicateKey(s);
      }),
      { numRuns: 300 },
    );
  });

  test("unknown tensor names", () => {
    const f = parse(craftJson(ok, 8));
    const e = expectKiln(() => f.read("model.layers.0.mlp.up_proj.weight"), "E_WEIGHTS", "no tensor named");
    expect(e.where).toBe("bad.safetensors (model.layers.0.mlp.up_proj.weight)");
    expect(f.has("w")).toBe(true);
    expect(f.has("toString")).toBe(false);
  });
});

describe("files on disk", () => {
  test("atomic write, lazy reads, close", () => {
    const dir = tmpDir();
    const file = path.join(dir, "model.safetensors");
    writeSafetensors(file, { w: { dtype: "f16", shape: [2, 2], data: [1, 2, 3, 4] }, b: { dtype: "i32", shape: [1], data: [9] } }, { format: "pt" });
    expect(fs.readdirSync(dir)).toEqual(["model.safetensors"]);
    const f = SafetensorsFile.open(file);
    expect(f.path).toBe(file);
    expect(f.metadata).toEqual({ format: "pt" });
    expect(Array.from(f.toFloat32("w"))).toEqual([1, 2, 3, 4]);
    expect(f.info("b")).toMatchObject({ dtype: "i32", shape: [1], byteLength: 4 });
    expect(Array.from(f.bytes("b"))).toEqual([9, 0, 0, 0]);
    // Overwriting goes through the same temp-and-rename.
    writeSafetensors(file, { x: { dtype: "u8", shape: [1], data: [1] } });
    expect(fs.readdirSync(dir)).toEqual(["model.safetensors"]);
    f.close();
    expectKiln(() => f.read("w"), "E_IO", "closed");
    f.close();
  });

  test("write failures are E_IO and leave no temp file", () => {
    const dir = tmpDir();
    const missing = path.join(dir, "no", "such", "model.safetensors");
    expect(expectKiln(() => writeSafetensors(missing, {}), "E_IO").where).toBe(missing);
    const target = path.join(dir, "taken");
    fs.mkdirSync(target); // renaming a file over a directory fails after the temp file was written
    expectKiln(() => writeSafetensors(target, { w: { dtype: "u8", shape: [1], data: [1] } }), "E_IO");
    expect(fs.readdirSync(dir)).toEqual(["taken"]);
  });

  test("open errors", () => {
    const dir = tmpDir();
    const missing = path.join(dir, "missing.safetensors");
    expect(expectKiln(() => SafetensorsFile.open(missing), "E_IO", "cannot open").where).toBe(missing);
    expectKiln(() => SafetensorsFile.open(dir), "E_IO", "not a regular file");
    const file = path.join(dir, "cut.safetensors");
    writeSafetensors(file, { w: { dtype: "f32", shape: [4], data: [1, 2, 3, 4] } });
    fs.truncateSync(file, fs.statSync(file).size - 4);
    expectKiln(() => SafetensorsFile.open(file), "E_SAFETENSORS", `${file} (w)`, "beyond");
    fs.writeFileSync(file, craft("{}", [], 1000n));
    expectKiln(() => SafetensorsFile.open(file), "E_SAFETENSORS", "past the end");
  });
});

describe("checkpoints", () => {
  const tensors = (): Record<string, TensorInput> => ({
    "model.embed_tokens.weight": { dtype: "bf16", shape: [4, 4], data: Array.from({ length: 16 }, (_, i) => i) },
    "model.layers.0.mlp.up_proj.weight": { dtype: "f32", shape: [4, 2], data: [1, 2, 3, 4, 5, 6, 7, 8] },
    "model.layers.0.input_layernorm.weight": { dtype: "f16", shape: [4], data: [1, 1, 1, 1] },
    "lm_head.weight": { dtype: "f32", shape: [4, 4], data: Array.from({ length: 16 }, (_, i) => -i) },
  });

  test("sharded write → open → read", () => {
    const dir = path.join(tmpDir(), "ckpt");
    const written = writeShardedCheckpoint(dir, tensors(), { maxShardBytes: 40, metadata: { format: "pt" } });
    expect(written.map((p) => path.basename(p))).toEqual([
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      INDEX_FILE,
    ]);
    expect(fs.readdirSync(dir).sort()).toEqual(written.map((p) => path.basename(p)).sort());
    const index = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), "utf8"));
    expect(index.metadata).toEqual({ total_size: 32 + 32 + 8 + 64 });
    expect(index.weight_map["lm_head.weight"]).toBe("model-00003-of-00003.safetensors");
    const ck = openCheckpoint(dir);
    expect(ck.metadata).toEqual({ total_size: 136 });
    expect(ck.names().sort()).toEqual(Object.keys(tensors()).sort());
    expect(ck.fileOf("lm_head.weight")).toBe(path.join(dir, "model-00003-of-00003.safetensors"));
    expect(ck.files[0].metadata).toEqual({ format: "pt" });
    expect(Array.from(ck.toFloat32("model.embed_tokens.weight"))).toEqual(Array.from({ length: 16 }, (_, i) => i));
    expect(Array.from(ck.toFloat64("model.layers.0.input_layernorm.weight"))).toEqual([1, 1, 1, 1]);
    expect(ck.read("model.layers.0.mlp.up_proj.weight").shape).toEqual([4, 2]);
    expect(ck.info("lm_head.weight").byteLength).toBe(64);
    expect(toInterpreterTensor(ck, "lm_head.weight").data).toEqual(new Float32Array(Array.from({ length: 16 }, (_, i) => -i)));
    expect(ck.has("nope")).toBe(false);
    expectKiln(() => ck.read("nope"), "E_WEIGHTS", "nope");
    ck.close();
  });

  test("a checkpoint that fits one shard is model.safetensors; rewriting replaces the other layout", () => {
    const dir = tmpDir();
    writeShardedCheckpoint(dir, tensors(), { maxShardBytes: 40 });
    expect(fs.existsSync(path.join(dir, INDEX_FILE))).toBe(true);
    const written = writeShardedCheckpoint(dir, tensors());
    expect(written).toEqual([path.join(dir, "model.safetensors")]);
    expect(fs.existsSync(path.join(dir, INDEX_FILE))).toBe(false);
    const ck = openCheckpoint(dir);
    expect(ck.fileOf("lm_head.weight")).toBe(path.join(dir, "model.safetensors"));
    expect(ck.names().length).toBe(4);
    ck.close();
  });

  function sharded(): string {
    const dir = tmpDir();
    writeShardedCheckpoint(dir, tensors(), { maxShardBytes: 40 });
    return dir;
  }
  const editIndex = (dir: string, edit: (index: { weight_map: Record<string, string> }) => void) => {
    const file = path.join(dir, INDEX_FILE);
    const index = JSON.parse(fs.readFileSync(file, "utf8"));
    edit(index);
    fs.writeFileSync(file, JSON.stringify(index));
  };

  test("index errors", () => {
    let dir = sharded();
    editIndex(dir, (i) => (i.weight_map.ghost = "model-00001-of-00003.safetensors"));
    expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", "(ghost)", "has no such tensor");

    dir = sharded();
    editIndex(dir, (i) => delete i.weight_map["model.layers.0.input_layernorm.weight"]); // its shard is still listed
    expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", "(model.layers.0.input_layernorm.weight)", "missing from the weight_map");

    dir = sharded();
    const shard2 = path.join(dir, "model-00002-of-00003.safetensors");
    fs.rmSync(shard2);
    expect(expectKiln(() => openCheckpoint(dir), "E_IO").where).toBe(shard2);

    dir = sharded(); // the same tensor in two shards
    writeSafetensors(path.join(dir, "model-00002-of-00003.safetensors"), {
      ...tensors(),
      "model.embed_tokens.weight": tensors()["model.embed_tokens.weight"],
    });
    expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", "also in");

    for (const evil of ["../model-00001-of-00003.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ""]) {
      dir = sharded();
      editIndex(dir, (i) => (i.weight_map["lm_head.weight"] = evil));
      expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", "(lm_head.weight)", "not a file name");
    }

    dir = sharded();
    fs.writeFileSync(path.join(dir, INDEX_FILE), '{"weight_map":{"a":"x","a":"y"}}');
    expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", 'duplicate key "a"');
    fs.writeFileSync(path.join(dir, INDEX_FILE), '{"metadata":{}}');
    expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", "weight_map");
    fs.writeFileSync(path.join(dir, INDEX_FILE), "{");
    expectKiln(() => openCheckpoint(dir), "E_SAFETENSORS", INDEX_FILE, "JSON");
  });

  test("missing directory or files", () => {
    const missing = path.join(tmpRoot, "does-not-exist");
    expect(expectKiln(() => openCheckpoint(missing), "E_IO").where).toBe(missing);
    const empty = tmpDir();
    expect(expectKiln(() => openCheckpoint(empty), "E_IO", "no model.safetensors").where).toBe(empty);
  });
});

describe("fuzz: mutated files parse or fail with a KilnError", () => {
  const valid = encodeSafetensors(
    {
      "a.weight": { dtype: "f32", shape: [2, 3], data: [1, 2, 3, 4, 5, 6] },
      "a.bias": { dtype: "bf16", shape: [3], data: [1, -1, 0.5] },
      h: { dtype: "f16", shape: [2], data: [1, 2] },
      ids: { dtype: "i64", shape: [2], data: [1n, 2n] },
      i: { dtype: "i32", shape: [1], data: [3] },
      s: { dtype: "i8", shape: [], data: [-1] },
      m: { dtype: "bool", shape: [2, 0], data: [] },
      u: { dtype: "u8", shape: [3], data: [1, 2, 3] },
    },
    { format: "pt" },
  );
  const headerLength = Number(new DataView(valid.buffer).getBigUint64(0, true));
  const FRAGMENTS = ['"', "{", "}", "[", "]", ",", ":", "-1", "1e309", "0.5", '"F64"', '"BOOL"', '"dtype"', "\\u0000", "\\", "99999999999999999999", "[]", "null", " ", '"__metadata__"', '"a.bias"', "\u00e9", "\ud800"];

  type Mutation = (b: Uint8Array) => Uint8Array;
  const setLength = (b: Uint8Array, n: bigint): Uint8Array => {
    if (b.length < 8) return b;
    const out = b.slice();
    new DataView(out.buffer).setBigUint64(0, n, true);
    return out;
  };
  const flip = fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([i, x]): Mutation => (b) => {
    const out = b.slice();
    if (out.length) out[i % out.length] ^= x;
    return out;
  });
  const truncate = fc.nat().map((n): Mutation => (b) => b.subarray(0, n % (b.length + 1)));
  const length = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.integer({ min: -16, max: 16 }).map((d) => BigInt(Math.max(0, headerLength + d))));
  const relength = length.map((n): Mutation => (b) => setLength(b, n));
  const insert = fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 })).map(([i, bytes]): Mutation => (b) => {
    const at = i % (b.length + 1);
    const out = new Uint8Array(b.length + bytes.length);
    out.set(b.subarray(0, at));
    out.set(bytes, at);
    out.set(b.subarray(at), at + bytes.length);
    return out;
  });
  // Replace a slice of the header text, then (usually) fix the length prefix so the JSON checks run.
  const replaceText = fc
    .tuple(fc.nat(), fc.integer({ min: 0, max: 12 }), fc.constantFrom(...FRAGMENTS), fc.boolean())
    .map(([i, len, frag, fixLength]): Mutation => (b) => {
      if (b.length < 8) return b;
      const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
      if (8 + n > b.length) return b;
      const text = new TextDecoder().decode(b.subarray(8, 8 + n));
      const at = i % (text.length + 1);
      const json = new TextEncoder().encode(text.slice(0, at) + frag + text.slice(at + len));
      const out = new Uint8Array(8 + json.length + b.length - 8 - n);
      out.set(json, 8);
      out.set(b.subarray(8 + n), 8 + json.length);
      return setLength(out, fixLength ? BigInt(json.length) : BigInt(n));
    });
  // Replace one JSON token (number or string) of the header, keeping the JSON well-formed more often
  // than not, so the semantic checks (dtype, shape, offsets, overlaps, duplicates) get exercised.
  const TOKENS = ["0", "1", "7", "8", "-1", "1.5", "1e3", "9007199254740993", '"F64"', '"U8"', '"I64"', '"a.bias"', '"h"', '"__metadata__"', '"dtype"', '"shape"', "[]", "[0,0]", "[1,2,3]", "{}", "null"];
  const replaceToken = fc.tuple(fc.nat(), fc.constantFrom(...TOKENS)).map(([i, token]): Mutation => (b) => {
    if (b.length < 8) return b;
    const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
    if (8 + n > b.length) return b;
    const text = new TextDecoder().decode(b.subarray(8, 8 + n));
    const spans = [...text.matchAll(/-?\d+|"[^"]*"/g)];
    if (spans.length === 0) return b;
    const m = spans[i % spans.length];
    const json = new TextEncoder().encode(text.slice(0, m.index) + token + text.slice(m.index + m[0].length));
    const out = new Uint8Array(8 + json.length + b.length - 8 - n);
    out.set(json, 8);
    out.set(b.subarray(8 + n), 8 + json.length);
    return setLength(out, BigInt(json.length));
  });
  // Any data bytes are a valid file: the reads must cope with every bit pattern (NaNs, bools of 7).
  const flipData = fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([i, x]): Mutation => (b) => {
    const out = b.slice();
    const start = 8 + headerLength;
    if (out.length > start) out[start + (i % (out.length - start))] ^= x;
    return out;
  });
  const mutation = fc.oneof(flip, truncate, relength, insert, replaceText, flipData, { arbitrary: replaceToken, weight: 4 });

  test("every mutation", () => {
    const started = Date.now();
    let parsed = 0;
    fc.assert(
      fc.property(fc.array(replaceToken, { maxLength: 2 }), fc.array(mutation, { minLength: 1, maxLength: 2 }), (first, ms) => {
        const bytes = [...first, ...ms].reduce((b, m) => m(b), valid);
        try {
          const f = SafetensorsFile.fromBytes(bytes);
          for (const name of f.names()) {
            const info = f.info(name);
            const t = f.read(name);
            expect(t.data.byteLength).toBe(info.byteLength);
            expect(f.toFloat64(name).length).toBe(t.data.length);
            if (isFloat(info.dtype)) f.toFloat32(name);
          }
          parsed++;
        } catch (e) {
          if (!(e instanceof KilnError)) throw e;
        }
      }),
      { numRuns: 500 },
    );
    expect(parsed).toBeGreaterThan(0); // some mutations (data bytes, header padding) keep the file valid
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
