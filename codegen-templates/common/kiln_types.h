// Element types and scalar math shared by the host and device kernels. bf16 and f16 are stored
// as raw 16-bit patterns and computed in f32, rounding to nearest even on store: bit-for-bit
// what compiler/ir/numeric.ts does, so the targets and the reference interpreter agree.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>

#ifdef __CUDACC__
#define KILN_HD __host__ __device__ __forceinline__
#else
#define KILN_HD inline
#endif

namespace kiln {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

KILN_HD uint32_t f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
KILN_HD float bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

// x rounded to bf16 (nearest, ties to even; a NaN quieted), as f32 bits whose low half is zero
KILN_HD uint32_t bf16_rounded_bits(float x) {
  const uint32_t b = f32_bits(x);
  if (x != x) return (b | 0x00400000u) & 0xffff0000u;
  return (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
}
KILN_HD uint16_t f32_to_bf16_bits(float x) { return (uint16_t)(bf16_rounded_bits(x) >> 16); }
KILN_HD float bf16_bits_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

KILN_HD uint16_t f32_to_f16_bits(float x) {
  uint32_t b = f32_bits(x);
  uint32_t sign = (b >> 16) & 0x8000u;
  int32_t exp = (int32_t)((b >> 23) & 0xff);
  uint32_t mant = b & 0x7fffffu;
  if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u));
  int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e), half = 1u << (shift - 1), rest = mant & ((1u << shift) - 1);
    uint32_t m = mant >> shift;
    if (rest > half || (rest == half && (m & 1u))) m += 1;
    return (uint16_t)(sign | m);
  }
  uint32_t rest = mant & 0x1fffu, m = mant >> 13;
  if (rest > 0x1000u || (rest == 0x1000u && (m & 1u))) {
    m += 1;
    if (m == 0x400u) { m = 0; e += 1; if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u); }
  }
  return (uint16_t)(sign | ((uint32_t)e << 10) | m);
}
KILN_HD float f16_bits_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) { float v = (float)m * 5.9604644775390625e-8f; return sign ? -v : v; }
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e - 15 + 127) << 23) | (m << 13));
}

// Compute type: floats in f32; integers and bool in double (exact below 2^53, as the interpreter holds them).
template <typename T> struct Num;
template <> struct Num<float> { typedef float C; KILN_HD static float load(float x) { return x; } KILN_HD static float store(float x) { return x; } };
template <> struct Num<bf16> { typedef float C; KILN_HD static float load(bf16 x) { return bf16_bits_to_f32(x.bits); } KILN_HD static bf16 store(float x) { bf16 r; r.bits = f32_to_bf16_bits(x); return r; } };
template <> struct Num<f16> { typedef float C; KILN_HD static float load(f16 x) { return f16_bits_to_f32(x.bits); } KILN_HD static f16 store(float x) { f16 r; r.bits = f32_to_f16_bits(x); return r; } };
template <typename I> struct IntNum {
  typedef double C;
  KILN_HD static double load(I x) { return (double)x; }
  // truncation toward zero, then the integer type's own wrap-around (as the interpreter's roundToDType)
  KILN_HD static I store(double x) { return (x != x) ? (I)0 : (I)(int64_t)x; }
};
template <> struct Num<int64_t> : IntNum<int64_t> {};
template <> struct Num<int32_t> : IntNum<int32_t> {};
template <> struct Num<int8_t> : IntNum<int8_t> {};
template <> struct Num<uint8_t> : IntNum<uint8_t> {};
struct boolean { uint8_t v; };
template <> struct Num<boolean> {
  typedef double C;
  KILN_HD static double load(boolean x) { return x.v ? 1.0 : 0.0; }
  KILN_HD static boolean store(double x) { boolean r; r.v = (x != 0.0) ? 1 : 0; return r; }  // NaN is true
};

// ---- scalar ops (functors usable on host and device); C is the compute type
#define KILN_UNARY(NAME, EXPR) struct NAME { template <typename C> KILN_HD C operator()(C x) const { return EXPR; } };
KILN_UNARY(OpNeg, -x)
KILN_UNARY(OpAbs, x < 0 ? -x : x)
KILN_UNARY(OpExp, (C)exp(x))
KILN_UNARY(OpLog, (C)log(x))
KILN_UNARY(OpSqrt, (C)sqrt(x))
KILN_UNARY(OpRsqrt, (C)1 / (C)sqrt(x))
KILN_UNARY(OpReciprocal, (C)1 / x)
KILN_UNARY(OpTanh, (C)tanh(x))
KILN_UNARY(OpSigmoid, (C)1 / ((C)1 + (C)exp(-x)))
KILN_UNARY(OpSilu, x / ((C)1 + (C)exp(-x)))
KILN_UNARY(OpRelu, x > 0 ? x : (C)0)
KILN_UNARY(OpGelu, (C)0.5 * x * ((C)1 + (C)erf(x * (C)0.70710678118654752440)))
KILN_UNARY(OpGeluTanh, (C)0.5 * x * ((C)1 + (C)tanh((C)0.79788456080286535588 * (x + (C)0.044715 * x * x * x))))
KILN_UNARY(OpCos, (C)cos(x))
KILN_UNARY(OpSin, (C)sin(x))
#undef KILN_UNARY

#define KILN_BINARY(NAME, EXPR) struct NAME { template <typename C> KILN_HD C operator()(C a, C b) const { return EXPR; } };
KILN_BINARY(OpAdd, a + b)
KILN_BINARY(OpSub, a - b)
KILN_BINARY(OpMul, a * b)
KILN_BINARY(OpDiv, a / b)
KILN_BINARY(OpIntDiv, (C)(int64_t)(a / b))
KILN_BINARY(OpPow, (C)pow(a, b))
KILN_BINARY(OpMaximum, (a != a || b != b) ? a + b : (a > b ? a : b))
KILN_BINARY(OpMinimum, (a != a || b != b) ? a + b : (a < b ? a : b))
KILN_BINARY(OpLess, (C)(a < b))
KILN_BINARY(OpLessEqual, (C)(a <= b))
KILN_BINARY(OpGreater, (C)(a > b))
KILN_BINARY(OpGreaterEqual, (C)(a >= b))
KILN_BINARY(OpEqual, (C)(a == b))
KILN_BINARY(OpNotEqual, (C)(a != b))
#undef KILN_BINARY

// Shapes and strides of up to KILN_MAX_RANK dims, passed by value to kernels.
struct Shape {
  int32_t rank;
  int64_t d[8];
};
struct Strides {
  int64_t s[8];
};

// Where the rows of the flash_attention operands q, k, v and its output y lie: element (b, h, s, d)
// of a [B, H, S, D] operand sits at b·b + h·h + s·s + d (strides in elements; the head dim is
// contiguous). Row-major [B, H, S, D] is {H·S·D, S·D, D}; the [B, S, H, D] tensor a layer has
// before (q, k, v) and after (y) its head transposes is {S·H·D, D, H·D}, so the attention kernels
// read and write through those transposes without a copy (compiler/codegen/emit.ts,
// attentionLayouts).
struct HeadStrides {
  int64_t b, h, s;
};
struct AttnLayout {
  HeadStrides q, k, v, y;
};
KILN_HD HeadStrides row_major_heads(int64_t H, int64_t S, int64_t D) { return HeadStrides{H * S * D, S * D, D}; }
KILN_HD AttnLayout row_major_attention(int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D, int64_t Dv) {
  return AttnLayout{row_major_heads(Hq, S, D), row_major_heads(Hkv, Tk, D), row_major_heads(Hkv, Tk, Dv), row_major_heads(Hq, S, Dv)};
}

// k / d, with k − (k / d)·d in *c: 32-bit division whenever the numbers fit (several times cheaper
// on the GPU); with d a literal the compiler turns it into a multiply. Fused elementwise functors
// split an element index into coordinates once with it and share them among their operands.
KILN_HD int64_t divmod(int64_t k, int64_t d, int64_t* c) {
  const int64_t q = ((((uint64_t)k | (uint64_t)d) >> 31) == 0) ? (int64_t)((uint32_t)k / (uint32_t)d) : k / d;
  *c = k - q * d;
  return q;
}

// A value already rounded to bf16 (rnd<bf16>: the low 16 bits are zero, a NaN already quieted as
// store quiets it) as a bf16: its upper half, the same bits Num<bf16>::store gives it.
KILN_HD bf16 bf16_of_rounded(float x) {
  bf16 r;
  r.bits = (uint16_t)(f32_bits(x) >> 16);
  return r;
}

// ---- chunks of a fused elementwise kernel: W consecutive elements of one innermost row, loaded
// and stored as 16-byte words. The codegen's functors call these; the targets' for_each run them
// only where every pointer read or written in runs is 16-byte aligned (checked at run time).
#ifdef __CUDACC__
#define KILN_UNROLL _Pragma("unroll")
#else
#define KILN_UNROLL
#endif
struct alignas(16) Word16 { uint32_t w[4]; };

KILN_HD bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// x[0, W) = the W elements at p (16-byte aligned), in T's compute type
template <int W, typename T>
KILN_HD void load_run(typename Num<T>::C* x, const T* p) {
  static_assert((W * sizeof(T)) % 16 == 0, "a run is whole 16-byte words");
  constexpr int PER = 16 / sizeof(T);
  KILN_UNROLL
  for (int v = 0; v < W / PER; v++) {
    const Word16 q = reinterpret_cast<const Word16*>(p)[v];
    T e[PER];
    memcpy(e, &q, 16);
    KILN_UNROLL
    for (int k = 0; k < PER; k++) x[v * PER + k] = Num<T>::load(e[k]);
  }
}

// the W values r at p (16-byte aligned)
template <int W, typename T>
KILN_HD void store_run(T* p, const T* r) {
  static_assert((W * sizeof(T)) % 16 == 0, "a run is whole 16-byte words");
  constexpr int PER = 16 / sizeof(T);
  KILN_UNROLL
  for (int v = 0; v < W / PER; v++) {
    Word16 q;
    memcpy(&q, r + v * PER, 16);
    reinterpret_cast<Word16*>(p)[v] = q;
  }
}

// x rounded to what T holds, back in T's compute type (how a fused chain stores intermediates).
template <typename T>
KILN_HD typename Num<T>::C rnd(typename Num<T>::C x) { return Num<T>::load(Num<T>::store(x)); }
template <>
KILN_HD float rnd<float>(float x) { return x; }
// bf16: load(store(x)) without the round trip through 16 bits (fused chains round every
// intermediate, and on the GPU that rounding, not memory, bounds chains such as RoPE's)
template <>
KILN_HD float rnd<bf16>(float x) { return bits_f32(bf16_rounded_bits(x)); }

// silu(g)·u for g, u of T, exactly as the fused elementwise kernel computes `(mul:T (silu:T $0) $1)`
// (emit.ts emitElementwise: each op in T's compute type, rounded to T after it; a product's
// operands commute bit for bit): the paired gate/up linears' epilogue on both targets.
template <typename T>
KILN_HD T silu_mul(T g, T u) {
  typedef typename Num<T>::C C;
  const C s = rnd<T>(OpSilu()(Num<T>::load(g)));
  return Num<T>::store(rnd<T>((C)OpMul()(s, Num<T>::load(u))));
}

// RoPE of one element as the fused elementwise kernel computes the rotary op
// `(add:T (mul:T $x $cos) (mul:T (mul:T $xr $sign) $sin))` (xr: the rotate-half partner; each op in
// T's compute type, rounded to T after it): the q/k/v GEMV's RoPE epilogue on both targets (Q4Rope).
template <typename T>
KILN_HD T rope_at(T x, T xr, T c, T s, T sign) {
  typedef typename Num<T>::C C;
  const C t0 = rnd<T>((C)OpMul()(Num<T>::load(x), Num<T>::load(c)));
  const C t1 = rnd<T>((C)OpMul()(Num<T>::load(xr), Num<T>::load(sign)));
  const C t2 = rnd<T>((C)OpMul()(t1, Num<T>::load(s)));
  return Num<T>::store(rnd<T>((C)OpAdd()(t0, t2)));
}

// RoPE's sign at d (quant::Q4Rope: a T row, or an f32 one the rotary op casts to T)
template <typename T, typename R>
KILN_HD T rope_sign(const R& r, int64_t d) {
  return r.sign32 ? Num<T>::store((typename Num<T>::C)r.sign32[d]) : r.sign[d];
}

// Row `row` (= h·D + d) of linear i's result, value v, put where Q4Rope r's mode i says: the rotary
// op's result (1), or the cache at the position (2, 3; skipped outside [0, C) as cache_write skips)
template <typename T, typename R>
KILN_HD void rope_put(const R& r, int i, int64_t row, T v) {
  if (r.mode[i] == 1) {
    r.dst[i][row] = v;
    return;
  }
  const int64_t p = *r.pos, D = r.D;
  if (p >= 0 && p < r.C) r.dst[i][((row / D) * r.C + p) * D + row % D] = v;
}
// Q4Rope's epilogue for row `row` of linear i whose result y is in memory (the cpu target; cuda
// where the GEMV could not do it: qdetail::k_unrope): RoPE'd from y's row and its rotate-half
// partner (modes 1, 2) or as it is (3), then rope_put
template <typename T, typename R>
KILN_HD void rope_store(const R& r, int i, const T* y, int64_t row) {
  const int mode = r.mode[i];
  if (mode == 0) return;
  const int64_t D = r.D, d = row % D;
  T v = y[row];
  if (mode != 3) v = rope_at<T>(v, y[row - d + (d + D / 2) % D], r.cos[d], r.sin[d], rope_sign<T>(r, d));
  rope_put<T>(r, i, row, v);
}

// One launch's share of a batched launch (K::for_each_n, codegen's batching of independent
// elementwise and cache-write kernels): a functor and its element count.
template <typename F>
struct Each {
  F f;
  int64_t n;
};
template <typename F>
inline Each<F> each(const F& f, int64_t n) {
  return Each<F>{f, n};
}

}  // namespace kiln
