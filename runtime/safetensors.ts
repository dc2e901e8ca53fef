// Safetensors: a strict reader and an atomic writer for the Hugging Face safetensors format, and
// checkpoints sharded over several files by a `model.safetensors.index.json`.
//
// Format [huggingface/safetensors README; safetensors/src/tensor.rs]: bytes 0..8 hold N, a
// little-endian u64; bytes 8..8+N hold a UTF-8 JSON object mapping each tensor name to
// {dtype, shape, data_offsets: [begin, end)} (offsets relative to the data section right after the
// header), plus an optional "__metadata__" string→string map. Data is little-endian, row-major.
//
// Every file is treated as hostile. Besides the reference reader's checks (`read_metadata`,
// `validate`) we reject duplicate JSON keys (JSON.parse keeps the last, which would let a second
// definition hide behind the first) and any header not starting with '{' (polyglot files).
// Gaps between tensors and trailing bytes are rejected too, as the reference does: tensors must
// cover the data section exactly, so there are no unaccounted bytes for a payload to hide in.
//
// Reading: `open` reads and checks only the header; each tensor's bytes are read on demand with one
// positioned read into a fresh buffer, so a checkpoint larger than a Buffer can hold still opens,
// and nothing stays cached. `fromBytes` serves subarray views over the given bytes, no copies.
// Both sit behind ByteSource, where an mmap source would slot in unchanged. Typed views need the
// data aligned to the element size; the reference writer guarantees it, other writers may not, so
// an unaligned tensor is copied. Node runs little-endian on every platform we target, so typed
// arrays are views straight over the file's bytes.

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { DType } from "../compiler/ir/dtype.js";
import { DTYPE_BYTES, isDType, isFloat } from "../compiler/ir/dtype.js";
import { KilnError } from "../compiler/ir/errors.js";
import { f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../compiler/ir/numeric.js";
import type { Tensor } from "../compiler/ir/tensor.js";

/** Largest header accepted, as in the reference reader (`HeaderTooLarge`). */
export const HEADER_LIMIT = 100_000_000;
export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

const FROM_ST = new Map<string, DType>([
  ["F32", "f32"], ["F16", "f16"], ["BF16", "bf16"], ["I64", "i64"],
  ["I32", "i32"], ["I8", "i8"], ["U8", "u8"], ["BOOL", "bool"],
]);
const TO_ST = new Map<DType, string>([...FROM_ST].map(([s, k]) => [k, s]));
// Dtypes the format defines (up to safetensors 0.6) that Kiln has no element type for.
const UNSUPPORTED = new Set(["F64", "I16", "U16", "U32", "U64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"]);

export type TypedData = Float32Array | Uint16Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;
/** A tensor as stored: f16/bf16 as raw bits in a Uint16Array, bool as 0/1 bytes. */
export interface TensorData { dtype: DType; shape: number[]; data: TypedData }
/**
 * What the writers accept. `data` in the dtype's stored array (Float32Array; Uint16Array bits for
 * f16/bf16; BigInt64Array; Int32Array; Int8Array; Uint8Array for u8/bool) is written as is;
 * anything else is taken as values and converted by fromTypedArray.
 */
export interface TensorInput { dtype: DType; shape: readonly number[]; data: TypedData | ArrayLike<number> | ArrayLike<bigint> }
export interface TensorInfo { name: string; dtype: DType; shape: number[]; byteOffset: number /* absolute in file */; byteLength: number }

/** What a single file and a sharded checkpoint both offer. */
export interface TensorSource {
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  read(name: string): TensorData;
  toFloat32(name: string): Float32Array;
  toFloat64(name: string): Float64Array;
  close(): void;
}

type TypedCtor = { new (n: number): TypedData; new (b: ArrayBufferLike, off: number, n: number): TypedData; BYTES_PER_ELEMENT: number };
const ARRAY: Record<DType, TypedCtor> = {
  f32: Float32Array, f16: Uint16Array, bf16: Uint16Array, i64: BigInt64Array,
  i32: Int32Array, i8: Int8Array, u8: Uint8Array, bool: Uint8Array,
};

const at = (file: string, name?: string): string => (name === undefined ? file : `${file} (${name})`);
const bad = (where: string, message: string): KilnError => new KilnError("E_SAFETENSORS", message, { where });
const usage = (where: string, message: string): KilnError => new KilnError("E_USAGE", message, { where });
const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

// ---------------------------------------------------------------------------------------------
// Reading

interface ByteSource { readonly size: number; read(offset: number, length: number): Uint8Array; close(): void }

function memorySource(bytes: Uint8Array): ByteSource {
  return { size: bytes.length, read: (o, n) => bytes.subarray(o, o + n), close: () => {} };
}

function fileSource(file: string, fd: number, size: number): ByteSource {
  return {
    size,
    read(offset, length) {
      const out = new Uint8Array(length);
      for (let done = 0; done < length; ) {
        let n: number;
        try {
          n = fs.readSync(fd, out, done, Math.min(length - done, 1 << 30), offset + done);
        } catch (e) {
          throw new KilnError("E_IO", `read failed: ${errText(e)}`, { where: file, cause: e });
        }
        if (n === 0) throw new KilnError("E_IO", `file ended at byte ${offset + done} of ${size} (changed since it was opened?)`, { where: file });
        done += n;
      }
      return out;
    },
    close: () => fs.closeSync(fd),
  };
}

export class SafetensorsFile implements TensorSource {
  /** Tensors in data-offset order. */
  readonly tensors: TensorInfo[];
  private readonly byName: Map<string, TensorInfo>;
  private closed = false;

  private constructor(readonly path: string, readonly metadata: Record<string, string>, tensors: TensorInfo[], private readonly source: ByteSource) {
    this.tensors = tensors;
    this.byName = new Map(tensors.map((t) => [t.name, t]));
  }

  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, "r");
    } catch (e) {
      throw new KilnError("E_IO", `cannot open: ${errText(e)}`, { where: file, cause: e });
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new KilnError("E_IO", "not a regular file", { where: file });
      return SafetensorsFile.parse(file, fileSource(file, fd, st.size));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  static fromBytes(bytes: Uint8Array, name = "<memory>"): SafetensorsFile {
    return SafetensorsFile.parse(name, memorySource(bytes));
  }

  private static parse(file: string, src: ByteSource): SafetensorsFile {
    if (src.size < 8) throw bad(file, `file is ${src.size} bytes, shorter than the 8-byte header length`);
    const prefix = src.read(0, 8);
    const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
    // Compare as BigInt before allocating anything sized by n (header-size bomb).
    if (n > BigInt(HEADER_LIMIT)) throw bad(file, `header length ${n} exceeds the limit of ${HEADER_LIMIT} bytes`);
    const headerLength = Number(n);
    if (8 + headerLength > src.size) throw bad(file, `header length ${n} runs past the end of the ${src.size}-byte file`);
    const { metadata, tensors } = parseHeader(src.read(8, headerLength), 8 + headerLength, src.size - 8 - headerLength, file);
    return new SafetensorsFile(file, metadata, tensors, src);
  }

  names(): string[] {
    return this.tensors.map((t) => t.name);
  }
  has(name: string): boolean {
    return this.byName.has(name);
  }
  info(name: string): TensorInfo {
    const t = this.byName.get(name);
    if (!t) throw new KilnError("E_WEIGHTS", `no tensor named ${JSON.stringify(name)}`, { where: at(this.path, name) });
    return t;
  }
  /** The tensor's raw bytes: a view for fromBytes files, a fresh buffer read from disk for open files. */
  bytes(name: string): Uint8Array {
    const t = this.info(name);
    if (this.closed) throw new KilnError("E_IO", "file is closed", { where: at(this.path, name) });
    return this.source.read(t.byteOffset, t.byteLength);
  }
  read(name: string): TensorData {
    const t = this.info(name);
    let b = this.bytes(name);
    const C = ARRAY[t.dtype];
    if (b.byteOffset % C.BYTES_PER_ELEMENT !== 0) b = b.slice(); // unaligned: copy to offset 0
    return { dtype: t.dtype, shape: [...t.shape], data: new C(b.buffer, b.byteOffset, b.byteLength / C.BYTES_PER_ELEMENT) };
  }
  toFloat32(name: string): Float32Array {
    return float32Of(this.read(name), at(this.path, name));
  }
  toFloat64(name: string): Float64Array {
    return float64Of(this.read(name));
  }
  close(): void {
    if (!this.closed) this.source.close();
    this.closed = true;
  }
}

function parseHeader(bytes: Uint8Array, dataStart: number, dataLength: number, file: string) {
  const root = parseJsonObject(bytes, file, "header", true);
  let metadata: Record<string, string> = {};
  const entries: { info: TensorInfo; begin: number; end: number }[] = [];
  for (const [name, e] of Object.entries(root)) {
    const where = at(file, name);
    if (name === "__metadata__") {
      if (!isObject(e)) throw bad(where, "__metadata__ is not an object");
      for (const [k, v] of Object.entries(e)) if (typeof v !== "string") throw bad(where, `__metadata__ value for ${JSON.stringify(k)} is not a string`);
      metadata = Object.fromEntries(Object.entries(e)) as Record<string, string>;
      continue;
    }
    const keys = isObject(e) ? Object.keys(e) : [];
    if (!isObject(e) || keys.length !== 3 || !["dtype", "shape", "data_offsets"].every((k) => Object.hasOwn(e, k)))
      throw bad(where, `tensor entry must be an object with exactly dtype, shape and data_offsets`);
    const { dtype: st, shape, data_offsets: offsets } = e;
    const dtype = typeof st === "string" ? FROM_ST.get(st) : undefined;
    if (!dtype) {
      const what = typeof st === "string" && UNSUPPORTED.has(st) ? "unsupported" : "unknown";
      throw bad(where, `${what} dtype ${JSON.stringify(st)} (Kiln reads ${[...FROM_ST.keys()].join(", ")})`);
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) throw bad(where, `shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1])
      throw bad(where, `data_offsets ${JSON.stringify(offsets)} are not two non-negative integers [begin, end] with begin <= end`);
    const [begin, end] = offsets as [number, number];
    if (end > dataLength) throw bad(where, `data_offsets end ${end} is beyond the ${dataLength}-byte data section`);
    // BigInt: the product of safe integers may not be safe (the reference's ValidationOverflow).
    const expected = shape.reduce((a: bigint, d: number) => a * BigInt(d), BigInt(DTYPE_BYTES[dtype]));
    if (expected !== BigInt(end - begin))
      throw bad(where, `byte length ${end - begin} does not match shape [${shape.join(", ")}] of ${st} (${expected} bytes)`);
    const info: TensorInfo = { name, dtype, shape: Object.freeze(shape) as number[], byteOffset: dataStart + begin, byteLength: end - begin };
    entries.push({ info: Object.freeze(info), begin, end });
  }
  // The reference's `validate`: sorted by offset, each tensor begins where the previous ended.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev = "";
  for (const { info, begin, end } of entries) {
    if (begin < pos) throw bad(at(file, info.name), `data_offsets [${begin}, ${end}] overlap tensor ${JSON.stringify(prev)}, which ends at ${pos}`);
    if (begin > pos) throw bad(at(file, info.name), `gap of ${begin - pos} unused bytes before this tensor (tensors must be contiguous)`);
    pos = end;
    prev = info.name;
  }
  if (pos !== dataLength) throw bad(file, `${dataLength - pos} trailing bytes after the last tensor's data`);
  return { metadata, tensors: entries.map((e) => e.info) };
}

/** Strict JSON: UTF-8 (no BOM), parsed, an object, no duplicate key in any object. */
function parseJsonObject(bytes: Uint8Array, file: string, what: string, mustStartWithBrace: boolean): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw bad(file, `${what} is not valid UTF-8`);
  }
  if (mustStartWithBrace && !text.startsWith("{")) throw bad(file, `${what} is not a JSON object (must start with '{')`);
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (e) {
    throw bad(file, `${what} is not valid JSON: ${errText(e)}`);
  }
  if (!isObject(root)) throw bad(file, `${what} is not a JSON object`);
  const dup = findDuplicateKey(text);
  if (dup) {
    const inside = dup.owner === undefined ? "" : ` inside ${JSON.stringify(dup.owner)}`;
    throw bad(at(file, dup.owner ?? dup.key), `duplicate key ${JSON.stringify(dup.key)}${inside} in the ${what}`);
  }
  return root;
}

/**
 * The first key repeated within one object of `text`, with the top-level key it sits under.
 * Meant for text JSON.parse accepted (escapes are decoded, so "w" and "\u0077" collide); on
 * other text it still terminates, as each step advances and string scans stop at the end.
 */
export function findDuplicateKey(text: string): { key: string; owner?: string } | undefined {
  const stack: (Set<string> | null)[] = []; // one entry per open object ({}: key set) or array (null)
  let owner: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") stack.push(new Set());
    else if (c === "[") stack.push(null);
    else if (c === "}" || c === "]") stack.pop();
    else if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (j >= text.length) return undefined; // unterminated: not JSON, nothing more to find
      let k = j + 1;
      while (k < text.length && " \t\r\n".includes(text[k])) k++;
      const keys = stack[stack.length - 1];
      if (text[k] === ":" && keys) {
        const key = decodeKey(text.slice(i, j + 1));
        if (keys.has(key)) return { key, owner: stack.length === 1 ? undefined : owner };
        keys.add(key);
        if (stack.length === 1) owner = key;
      }
      i = j;
    }
  }
  return undefined;
}

function decodeKey(raw: string): string {
  try {
    return JSON.parse(raw) as string;
  } catch {
    return raw; // only on text that is not JSON
  }
}

function float32Of(t: TensorData, where: string): Float32Array {
  const n = t.data.length;
  switch (t.dtype) {
    case "f32":
      return (t.data as Float32Array).slice();
    case "bf16": {
      // bf16 is the top half of an f32: shifting the bits is exact.
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      const src = t.data as Uint16Array;
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case "f16": {
      const out = new Float32Array(n);
      const src = t.data as Uint16Array;
      for (let i = 0; i < n; i++) out[i] = f16BitsToF32(src[i]);
      return out;
    }
    default:
      throw new KilnError("E_DTYPE", `toFloat32 takes a float tensor, not ${t.dtype} (use toFloat64)`, { where });
  }
}

/** Any dtype as f64: bool as 0/1; i64 beyond ±2^53 rounds to the nearest double. */
function float64Of(t: TensorData): Float64Array {
  const n = t.data.length;
  const out = new Float64Array(n);
  if (isFloat(t.dtype)) out.set(float32Of(t, ""));
  else if (t.dtype === "i64") for (let i = 0; i < n; i++) out[i] = Number((t.data as BigInt64Array)[i]);
  else if (t.dtype === "bool") for (let i = 0; i < n; i++) out[i] = (t.data as Uint8Array)[i] ? 1 : 0;
  else out.set(t.data as Int32Array | Int8Array | Uint8Array);
  return out;
}

/** A tensor for the reference interpreter (compiler/ir/tensor.ts): floats in f32, the rest in f64. */
export function toInterpreterTensor(source: TensorSource, name: string): Tensor {
  const { dtype, shape } = source.info(name);
  return { dtype, shape: [...shape], data: isFloat(dtype) ? source.toFloat32(name) : source.toFloat64(name) };
}

// ---------------------------------------------------------------------------------------------
// Writing

function numelOf(shape: readonly number[], where: string): number {
  if (!Array.isArray(shape) || !shape.every(isCount)) throw usage(where, `shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
  const n = shape.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(n)) throw usage(where, `shape [${shape.join(", ")}] has too many elements`);
  return n;
}

/**
 * Stored form of plain values: floats (numbers) become f16/bf16 bits by round-to-nearest-even (NaN
 * becomes a quiet NaN, overflow becomes ±inf); ints are truncated and wrap like typed arrays; bool
 * is 1 for any nonzero value, NaN included (as the interpreter's roundToDType); i64 takes bigints
 * or finite numbers (truncated).
 */
export function fromTypedArray(dtype: DType, shape: readonly number[], data: ArrayLike<number> | ArrayLike<bigint>): TensorData {
  if (!isDType(dtype)) throw usage(String(dtype), `unknown dtype`);
  const n = numelOf(shape, dtype);
  if (data.length !== n) throw usage(dtype, `${data.length} values for shape [${shape.join(", ")}] (${n} elements)`);
  if (dtype === "i64") {
    const out = new BigInt64Array(n);
    for (let i = 0; i < n; i++) {
      const v = data[i];
      if (typeof v !== "bigint" && !Number.isFinite(v)) throw usage(dtype, `value ${v} at ${i} is not an integer`);
      out[i] = typeof v === "bigint" ? BigInt.asIntN(64, v) : BigInt(Math.trunc(v));
    }
    return { dtype, shape: [...shape], data: out };
  }
  const out = new ARRAY[dtype](n) as Exclude<TypedData, BigInt64Array>;
  const encode = dtype === "f16" ? f32ToF16Bits : dtype === "bf16" ? f32ToBf16Bits : dtype === "bool" ? (x: number) => (x === 0 ? 0 : 1) : (x: number) => x;
  for (let i = 0; i < n; i++) out[i] = encode(Number(data[i]));
  return { dtype, shape: [...shape], data: out };
}

/** TensorData as given when `data` is already the dtype's stored array; plain values converted. */
function normalize(name: string, t: TensorInput): TensorData {
  if (!t || !isDType(t.dtype)) throw usage(name, `unknown dtype ${JSON.stringify(t?.dtype)}`);
  if (!(t.data instanceof ARRAY[t.dtype])) return fromTypedArray(t.dtype, t.shape, t.data as ArrayLike<number>);
  const n = numelOf(t.shape, name);
  if (t.data.length !== n) throw usage(name, `${t.data.length} values for shape [${t.shape.join(", ")}] (${n} elements)`);
  return { dtype: t.dtype, shape: [...t.shape], data: t.data as TypedData };
}

/**
 * Header bytes and data chunks. Like the reference writer (`prepare`), tensors are laid out by
 * descending element size, then by name, and the header is padded with spaces to a multiple of 8:
 * every tensor is then aligned to its element size.
 */
function layout(tensors: [string, TensorInput][], metadata?: Record<string, string>): Uint8Array[] {
  const items = tensors.map(([name, t]) => {
    if (name === "__metadata__") throw usage(name, "__metadata__ is reserved and cannot name a tensor");
    return { name, t: normalize(name, t) };
  });
  const size = (d: DType) => DTYPE_BYTES[d];
  items.sort((a, b) => size(b.t.dtype) - size(a.t.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const fields: string[] = [];
  if (metadata !== undefined) {
    if (!isObject(metadata) || !Object.values(metadata).every((v) => typeof v === "string"))
      throw usage("__metadata__", "metadata must be an object of strings");
    fields.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const { name, t } of items) {
    const end = offset + t.data.byteLength;
    fields.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype: TO_ST.get(t.dtype), shape: t.shape, data_offsets: [offset, end] })}`);
    offset = end;
  }
  const json = new TextEncoder().encode(`{${fields.join(",")}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return [header, ...items.map(({ t }) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))];
}

export function encodeSafetensors(tensors: Record<string, TensorInput>, metadata?: Record<string, string>): Uint8Array {
  const chunks = layout(Object.entries(tensors), metadata);
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let pos = 0;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}

/** Writes the file atomically: a temp file in the same directory, fsync, rename over `file`. */
export function writeSafetensors(file: string, tensors: Record<string, TensorInput>, metadata?: Record<string, string>): void {
  writeAtomic(file, layout(Object.entries(tensors), metadata));
}

function writeAtomic(file: string, chunks: Uint8Array[]): void {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`;
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, "wx");
    for (const c of chunks) for (let off = 0; off < c.length; ) off += fs.writeSync(fd, c, off, Math.min(c.length - off, 1 << 30));
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) try { fs.closeSync(fd); } catch { /* already failing */ }
    try { fs.rmSync(tmp, { force: true }); } catch { /* reported below */ }
    throw new KilnError("E_IO", `cannot write: ${errText(e)}`, { where: file, cause: e });
  }
  try {
    // Make the rename itself durable; not possible on every platform, and the data is safe anyway.
    const dirFd = fs.openSync(path.dirname(file), "r");
    try { fs.fsyncSync(dirFd); } finally { fs.closeSync(dirFd); }
  } catch { /* best effort */ }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: `model.safetensors`, or shards listed by `model.safetensors.index.json`

export class Checkpoint implements TensorSource {
  /** @internal use openCheckpoint */
  constructor(
    readonly dir: string,
    /** The index's "metadata" (e.g. total_size), or the single file's __metadata__. */
    readonly metadata: Record<string, unknown>,
    readonly files: SafetensorsFile[],
    private readonly owner: Map<string, SafetensorsFile>,
  ) {}

  names(): string[] {
    return [...this.owner.keys()];
  }
  has(name: string): boolean {
    return this.owner.has(name);
  }
  /** Path of the file holding `name`. */
  fileOf(name: string): string {
    return this.file(name).path;
  }
  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }
  read(name: string): TensorData {
    return this.file(name).read(name);
  }
  toFloat32(name: string): Float32Array {
    return this.file(name).toFloat32(name);
  }
  toFloat64(name: string): Float64Array {
    return this.file(name).toFloat64(name);
  }
  close(): void {
    for (const f of this.files) f.close();
  }
  private file(name: string): SafetensorsFile {
    const f = this.owner.get(name);
    if (!f) throw new KilnError("E_WEIGHTS", `no tensor named ${JSON.stringify(name)} in the checkpoint`, { where: at(this.dir, name) });
    return f;
  }
}

/**
 * Opens `dir/model.safetensors`, or else the shards of `dir/model.safetensors.index.json` (the
 * single file wins when both exist, as in transformers' from_pretrained). Shard names must be
 * plain file names in `dir` (no separators, no "..": no path traversal). Symlinks are followed,
 * since the Hugging Face hub cache is made of them.
 */
export function openCheckpoint(dir: string): Checkpoint {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new KilnError("E_IO", `cannot open checkpoint directory: ${errText(e)}`, { where: dir, cause: e });
  }
  if (!st.isDirectory()) throw new KilnError("E_IO", "checkpoint path is not a directory", { where: dir });
  const single = path.join(dir, SINGLE_FILE);
  if (fs.existsSync(single)) {
    const f = SafetensorsFile.open(single);
    return new Checkpoint(dir, { ...f.metadata }, [f], new Map(f.names().map((n) => [n, f])));
  }
  const indexPath = path.join(dir, INDEX_FILE);
  if (!fs.existsSync(indexPath)) throw new KilnError("E_IO", `no ${SINGLE_FILE} or ${INDEX_FILE}`, { where: dir });
  let bytes: Uint8Array;
  try {
    bytes = fs.statSync(indexPath).size > HEADER_LIMIT ? new Uint8Array(0) : fs.readFileSync(indexPath);
  } catch (e) {
    throw new KilnError("E_IO", `cannot read index: ${errText(e)}`, { where: indexPath, cause: e });
  }
  if (bytes.length === 0) throw bad(indexPath, `index is empty or larger than ${HEADER_LIMIT} bytes`);
  const root = parseJsonObject(bytes, indexPath, "index", false);
  const metadata = root.metadata ?? {};
  if (!isObject(metadata)) throw bad(indexPath, "index metadata is not an object");
  if (!isObject(root.weight_map)) throw bad(indexPath, "index has no weight_map object");
  const shardOf = new Map<string, string>();
  for (const [name, shard] of Object.entries(root.weight_map)) {
    if (typeof shard !== "string" || !shard || shard === "." || shard === ".." || /[/\\\0]/.test(shard))
      throw bad(at(indexPath, name), `weight_map value ${JSON.stringify(shard)} is not a file name inside the checkpoint directory`);
    shardOf.set(name, shard);
  }
  const files = new Map<string, SafetensorsFile>();
  try {
    for (const shard of new Set(shardOf.values())) files.set(shard, SafetensorsFile.open(path.join(dir, shard)));
    const owner = new Map<string, SafetensorsFile>();
    for (const f of files.values())
      for (const name of f.names()) {
        const other = owner.get(name);
        if (other) throw bad(at(f.path, name), `tensor is also in ${other.path}`);
        if (!shardOf.has(name)) throw bad(at(f.path, name), `tensor is missing from the weight_map of ${indexPath}`);
        owner.set(name, f);
      }
    for (const [name, shard] of shardOf)
      if (!files.get(shard)!.has(name)) throw bad(at(indexPath, name), `weight_map points to ${shard}, which has no such tensor`);
    return new Checkpoint(dir, metadata, [...files.values()], owner);
  } catch (e) {
    for (const f of files.values()) f.close();
    throw e;
  }
}

export interface ShardOptions {
  /** Tensor bytes per shard (headers not counted); default 5e9, as transformers' "5GB". */
  maxShardBytes?: number;
  /** Written as every file's __metadata__. */
  metadata?: Record<string, string>;
}

/**
 * Writes `tensors` into `dir` (created if missing): `model.safetensors` when they fit in one shard,
 * else `model-0000i-of-0000n.safetensors` filled greedily in the given order (a tensor larger than
 * the limit gets a shard of its own) and the index, written last. Each file is written atomically;
 * the other layout's entry file, if left from an earlier write, is removed so it cannot shadow this
 * one. Returns the paths written.
 */
export function writeShardedCheckpoint(dir: string, tensors: Record<string, TensorInput>, options: ShardOptions = {}): string[] {
  const max = options.maxShardBytes ?? 5e9;
  if (!(max > 0)) throw usage(dir, `maxShardBytes must be positive, not ${max}`);
  const shards: [string, TensorData][][] = [];
  let used = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const data = normalize(name, t);
    const size = data.data.byteLength;
    if (shards.length === 0 || (used > 0 && used + size > max)) {
      shards.push([]);
      used = 0;
    }
    shards[shards.length - 1].push([name, data]);
    used += size;
  }
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new KilnError("E_IO", `cannot create checkpoint directory: ${errText(e)}`, { where: dir, cause: e });
  }
  const remove = (name: string) => {
    try {
      fs.rmSync(path.join(dir, name), { force: true });
    } catch (e) {
      throw new KilnError("E_IO", `cannot remove stale file: ${errText(e)}`, { where: path.join(dir, name), cause: e });
    }
  };
  if (shards.length <= 1) {
    const file = path.join(dir, SINGLE_FILE);
    writeAtomic(file, layout(shards[0] ?? [], options.metadata));
    remove(INDEX_FILE);
    return [file];
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const written: string[] = [];
  const weightMap: [string, string][] = [];
  let totalSize = 0;
  shards.forEach((shard, i) => {
    const name = `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    written.push(path.join(dir, name));
    writeAtomic(written[i], layout(shard, options.metadata));
    for (const [tensor, t] of shard) {
      weightMap.push([tensor, name]);
      totalSize += t.data.byteLength;
    }
  });
  weightMap.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const index = { metadata: { total_size: totalSize }, weight_map: Object.fromEntries(weightMap) };
  written.push(path.join(dir, INDEX_FILE));
  writeAtomic(written[written.length - 1], [new TextEncoder().encode(JSON.stringify(index, null, 2) + "\n")]);
  remove(SINGLE_FILE);
  return written;
}
