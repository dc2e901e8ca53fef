// Element types of IR values. `u8` also carries packed 4-bit codes once quantization lands.

export const DTYPES = ["f32", "f16", "bf16", "i64", "i32", "i8", "u8", "bool"] as const;
export type DType = (typeof DTYPES)[number];

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i64: 8, i32: 4, i8: 1, u8: 1, bool: 1 };

export const isDType = (s: string): s is DType => (DTYPES as readonly string[]).includes(s);
export const isFloat = (d: DType): boolean => d === "f32" || d === "f16" || d === "bf16";
export const isInt = (d: DType): boolean => d === "i64" || d === "i32" || d === "i8" || d === "u8";
