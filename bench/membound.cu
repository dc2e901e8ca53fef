// Memory-bound kernels of the cuda target (codegen-templates/cuda/kernels.cuh) on the Llama-2-7B
// prefill shapes of `npm run bench:padded` (T = 9216 packed tokens, hidden 4096, MLP 11008, 32
// heads × 128, bf16): the fused elementwise chains (RMSNorm's x·rsqrt(m)·w with [T, 1] and [H]
// broadcasts, silu(g)·u, the residual adds, RoPE's q·cos + rotate_half(q)·sin), the rotate-half
// gather and the [1, T, 32, 128] ↔ [1, 32, T, 128] transposes. Each runs the old path (one element
// a thread: the functors as emit.ts wrote them before chunks, detail::k_for_each; the element-wise
// strided copy and gather kernels) and the new one (the launchers: chunks of 16 bytes, 16-byte
// copy units, run-aware gather). Checks first that new == old bit for bit (outputs poisoned with
// different bytes first), on these shapes and on edge cases that take the fallbacks (odd innermost
// dims, misaligned pointers, tails, non-run indices); then times each (CUDA events, median of 30
// after 5 warm-ups, random non-zero data) and prints GB/s (bytes read once + written) beside a
// device-to-device copy. Prints PASS or FAIL last.
//   nvcc -O3 -std=c++17 -arch=sm_90a -I codegen-templates bench/membound.cu -o /tmp/mb -ldl && /tmp/mb [T ≥ 2368]
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "timing.cuh"
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-membound"; }

using kiln::bf16;
namespace K = kiln::cuda;
namespace D = kiln::cuda::detail;

// the old path's per-operand offset (it lived in kiln_types.h until the functors split coordinates
// once for all operands): the k-th element's offset, skipping leading broadcast dims and size-1 dims
KILN_HD int64_t old_offset_of(int64_t k, const kiln::Shape& shape, const kiln::Strides& st) {
  int lo = 0;
  while (lo < shape.rank && st.s[lo] == 0) lo++;
  int64_t off = 0;
  for (int i = shape.rank - 1; i >= lo; i--) {
    if (shape.d[i] == 1) continue;
    int64_t c;
    k = kiln::divmod(k, shape.d[i], &c);
    off += c * st.s[i];
  }
  return off;
}

// ---- the old functors: what emit.ts wrote before chunks (one element a call, old_offset_of per broadcast operand)
// (mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 $3)))))
struct OldRms {
  const kiln::bf16* a0; kiln::Strides s0; bool c0;
  const kiln::bf16* a1; kiln::Strides s1; bool c1;
  const float* a2; kiln::Strides s2; bool c2;
  const float* a3; kiln::Strides s3; bool c3;
  kiln::bf16* y;
  kiln::Shape out;
  KILN_HD void operator()(int64_t i) const {
    const float x0 = kiln::Num<kiln::bf16>::load(a0[c0 ? i : old_offset_of(i, out, s0)]);
    const float x1 = kiln::Num<kiln::bf16>::load(a1[c1 ? i : old_offset_of(i, out, s1)]);
    const float x2 = kiln::Num<float>::load(a2[c2 ? i : old_offset_of(i, out, s2)]);
    const float x3 = kiln::Num<float>::load(a3[c3 ? i : old_offset_of(i, out, s3)]);
    const float t0 = kiln::rnd<float>((float)x1);
    const float t1 = kiln::rnd<float>((float)kiln::OpAdd()(x2, x3));
    const float t2 = kiln::rnd<float>(kiln::OpRsqrt()(t1));
    const float t3 = kiln::rnd<float>((float)kiln::OpMul()(t0, t2));
    const float t4 = kiln::rnd<kiln::bf16>((float)t3);
    const float t5 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x0, t4));
    y[i] = kiln::Num<kiln::bf16>::store(t5);
  }
};

// (mul:bf16 (silu:bf16 $0) $1)
struct OldSiluMul {
  const kiln::bf16* a0; kiln::Strides s0; bool c0;
  const kiln::bf16* a1; kiln::Strides s1; bool c1;
  kiln::bf16* y;
  kiln::Shape out;
  KILN_HD void operator()(int64_t i) const {
    const float x0 = kiln::Num<kiln::bf16>::load(a0[c0 ? i : old_offset_of(i, out, s0)]);
    const float x1 = kiln::Num<kiln::bf16>::load(a1[c1 ? i : old_offset_of(i, out, s1)]);
    const float t0 = kiln::rnd<kiln::bf16>(kiln::OpSilu()(x0));
    const float t1 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(t0, x1));
    y[i] = kiln::Num<kiln::bf16>::store(t1);
  }
};

// (add:bf16 (add:bf16 $0 $1) $2)
struct OldAdd3 {
  const kiln::bf16* a0; kiln::Strides s0; bool c0;
  const kiln::bf16* a1; kiln::Strides s1; bool c1;
  const kiln::bf16* a2; kiln::Strides s2; bool c2;
  kiln::bf16* y;
  kiln::Shape out;
  KILN_HD void operator()(int64_t i) const {
    const float x0 = kiln::Num<kiln::bf16>::load(a0[c0 ? i : old_offset_of(i, out, s0)]);
    const float x1 = kiln::Num<kiln::bf16>::load(a1[c1 ? i : old_offset_of(i, out, s1)]);
    const float x2 = kiln::Num<kiln::bf16>::load(a2[c2 ? i : old_offset_of(i, out, s2)]);
    const float t0 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(x0, x1));
    const float t1 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(t0, x2));
    y[i] = kiln::Num<kiln::bf16>::store(t1);
  }
};

// (cast:f32 (add:bf16 $0 $1))
struct OldAddF32 {
  const kiln::bf16* a0; kiln::Strides s0; bool c0;
  const kiln::bf16* a1; kiln::Strides s1; bool c1;
  float* y;
  kiln::Shape out;
  KILN_HD void operator()(int64_t i) const {
    const float x0 = kiln::Num<kiln::bf16>::load(a0[c0 ? i : old_offset_of(i, out, s0)]);
    const float x1 = kiln::Num<kiln::bf16>::load(a1[c1 ? i : old_offset_of(i, out, s1)]);
    const float t0 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(x0, x1));
    const float t1 = kiln::rnd<float>((float)t0);
    y[i] = kiln::Num<float>::store(t1);
  }
};

// (add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 (cast:bf16 $3)) $4))
struct OldRope {
  const kiln::bf16* a0; kiln::Strides s0; bool c0;
  const kiln::bf16* a1; kiln::Strides s1; bool c1;
  const kiln::bf16* a2; kiln::Strides s2; bool c2;
  const float* a3; kiln::Strides s3; bool c3;
  const kiln::bf16* a4; kiln::Strides s4; bool c4;
  kiln::bf16* y;
  kiln::Shape out;
  KILN_HD void operator()(int64_t i) const {
    const float x0 = kiln::Num<kiln::bf16>::load(a0[c0 ? i : old_offset_of(i, out, s0)]);
    const float x1 = kiln::Num<kiln::bf16>::load(a1[c1 ? i : old_offset_of(i, out, s1)]);
    const float x2 = kiln::Num<kiln::bf16>::load(a2[c2 ? i : old_offset_of(i, out, s2)]);
    const float x3 = kiln::Num<float>::load(a3[c3 ? i : old_offset_of(i, out, s3)]);
    const float x4 = kiln::Num<kiln::bf16>::load(a4[c4 ? i : old_offset_of(i, out, s4)]);
    const float t0 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x0, x1));
    const float t1 = kiln::rnd<kiln::bf16>((float)x3);
    const float t2 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x2, t1));
    const float t3 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(t2, x4));
    const float t4 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(t0, t3));
    y[i] = kiln::Num<kiln::bf16>::store(t4);
  }
};

// ---- the new functors: what emitElementwise writes now for the same expressions (test/elementwise-chunks.test.ts
// regenerates them from this IR and checks that the block below is that text)
/* IR of the functors below:
graph membound {
  input %x: bf16[1, T, 4096]
  input %m: f32[1, T, 1]
  input %eps: f32[]
  input %gate: bf16[1, T, 11008]
  input %up: bf16[1, T, 11008]
  input %r: bf16[1, T, 4096]
  input %q: bf16[1, 32, T, 128]
  input %cos: bf16[1, 1, T, 128]
  input %rot: bf16[1, 32, T, 128]
  input %sign: f32[128]
  input %sin: bf16[1, 1, T, 128]
  input %xd: bf16[1, T, D]
  param %w: bf16[4096]
  param %wd: bf16[D]
  %0: bf16[1, T, 4096] = elementwise(%w, %x, %m, %eps) {expr = "(mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 $3)))))"}
  %1: bf16[1, T, 11008] = elementwise(%gate, %up) {expr = "(mul:bf16 (silu:bf16 $0) $1)"}
  %2: bf16[1, T, 4096] = elementwise(%x, %r, %0) {expr = "(add:bf16 (add:bf16 $0 $1) $2)"}
  %3: f32[1, T, 4096] = elementwise(%x, %r) {expr = "(cast:f32 (add:bf16 $0 $1))"}
  %4: bf16[1, 32, T, 128] = elementwise(%q, %cos, %rot, %sign, %sin) {expr = "(add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 (cast:bf16 $3)) $4))"}
  %5: bf16[1, T, D] = elementwise(%wd, %xd, %m, %eps) {expr = "(mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 $3)))))"}
  output a = %0
  output b = %1
  output c = %2
  output d = %3
  output e = %4
  output f = %5
}*/
// BEGIN emitted
// (mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 $3)))))
struct F14 {
  const kiln::bf16* a0; kiln::Strides s0; // row
  const kiln::bf16* a1; // contig
  const float* a2; kiln::Strides s2; // col
  const float* a3; // scalar
  kiln::bf16* y;
  kiln::Shape out;
  static constexpr int W = 8;
  KILN_HD kiln::bf16 at(const float x0, const float x1, const float x2, const float x3) const {
    const float t0 = kiln::rnd<float>((float)x1);
    const float t1 = kiln::rnd<float>((float)kiln::OpAdd()(x2, x3));
    const float t2 = kiln::rnd<float>(kiln::OpRsqrt()(t1));
    const float t3 = kiln::rnd<float>((float)kiln::OpMul()(t0, t2));
    const float t4 = kiln::rnd<kiln::bf16>((float)t3);
    const float t5 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x0, t4));
    return kiln::bf16_of_rounded(t5);
  }
  KILN_HD void operator()(int64_t i) const {
    int64_t q_ = i;
    int64_t c2; q_ = kiln::divmod(q_, (int64_t)4096, &c2);
    const int64_t c1 = q_;
    (void)q_;
    y[i] = at(kiln::Num<kiln::bf16>::load(a0[c2 * s0.s[2]]), kiln::Num<kiln::bf16>::load(a1[i]), kiln::Num<float>::load(a2[c1 * s2.s[1]]), kiln::Num<float>::load(a3[0]));
  }
  KILN_HD void chunk(int64_t i) const {
    int64_t q_ = i;
    int64_t c2; q_ = kiln::divmod(q_, (int64_t)4096, &c2);
    const int64_t c1 = q_;
    (void)q_;
    float x0[W]; kiln::load_run<W>(x0, a0 + c2 * s0.s[2]);
    float x1[W]; kiln::load_run<W>(x1, a1 + i);
    const float x2 = kiln::Num<float>::load(a2[c1 * s2.s[1]]);
    const float x3 = kiln::Num<float>::load(a3[0]);
    kiln::bf16 r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j], x2, x3);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1) && out.d[out.rank - 1] % W == 0; }
};

// (mul:bf16 (silu:bf16 $0) $1)
struct F15 {
  const kiln::bf16* a0; // contig
  const kiln::bf16* a1; // contig
  kiln::bf16* y;
  kiln::Shape out;
  static constexpr int W = 8;
  KILN_HD kiln::bf16 at(const float x0, const float x1) const {
    const float t0 = kiln::rnd<kiln::bf16>(kiln::OpSilu()(x0));
    const float t1 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(t0, x1));
    return kiln::bf16_of_rounded(t1);
  }
  KILN_HD void operator()(int64_t i) const {
    y[i] = at(kiln::Num<kiln::bf16>::load(a0[i]), kiln::Num<kiln::bf16>::load(a1[i]));
  }
  KILN_HD void chunk(int64_t i) const {
    float x0[W]; kiln::load_run<W>(x0, a0 + i);
    float x1[W]; kiln::load_run<W>(x1, a1 + i);
    kiln::bf16 r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j]);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1); }
};

// (add:bf16 (add:bf16 $0 $1) $2)
struct F16 {
  const kiln::bf16* a0; // contig
  const kiln::bf16* a1; // contig
  const kiln::bf16* a2; // contig
  kiln::bf16* y;
  kiln::Shape out;
  static constexpr int W = 8;
  KILN_HD kiln::bf16 at(const float x0, const float x1, const float x2) const {
    const float t0 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(x0, x1));
    const float t1 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(t0, x2));
    return kiln::bf16_of_rounded(t1);
  }
  KILN_HD void operator()(int64_t i) const {
    y[i] = at(kiln::Num<kiln::bf16>::load(a0[i]), kiln::Num<kiln::bf16>::load(a1[i]), kiln::Num<kiln::bf16>::load(a2[i]));
  }
  KILN_HD void chunk(int64_t i) const {
    float x0[W]; kiln::load_run<W>(x0, a0 + i);
    float x1[W]; kiln::load_run<W>(x1, a1 + i);
    float x2[W]; kiln::load_run<W>(x2, a2 + i);
    kiln::bf16 r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j], x2[j]);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1) && kiln::aligned16(a2); }
};

// (cast:f32 (add:bf16 $0 $1))
struct F17 {
  const kiln::bf16* a0; // contig
  const kiln::bf16* a1; // contig
  float* y;
  kiln::Shape out;
  static constexpr int W = 8;
  KILN_HD float at(const float x0, const float x1) const {
    const float t0 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(x0, x1));
    const float t1 = kiln::rnd<float>((float)t0);
    return kiln::Num<float>::store(t1);
  }
  KILN_HD void operator()(int64_t i) const {
    y[i] = at(kiln::Num<kiln::bf16>::load(a0[i]), kiln::Num<kiln::bf16>::load(a1[i]));
  }
  KILN_HD void chunk(int64_t i) const {
    float x0[W]; kiln::load_run<W>(x0, a0 + i);
    float x1[W]; kiln::load_run<W>(x1, a1 + i);
    float r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j]);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1); }
};

// (add:bf16 (mul:bf16 $0 $1) (mul:bf16 (mul:bf16 $2 (cast:bf16 $3)) $4))
struct F18 {
  const kiln::bf16* a0; // contig
  const kiln::bf16* a1; kiln::Strides s1; // row
  const kiln::bf16* a2; // contig
  const float* a3; kiln::Strides s3; // row
  const kiln::bf16* a4; kiln::Strides s4; // row
  kiln::bf16* y;
  kiln::Shape out;
  static constexpr int W = 8;
  KILN_HD kiln::bf16 at(const float x0, const float x1, const float x2, const float x3, const float x4) const {
    const float t0 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x0, x1));
    const float t1 = kiln::rnd<kiln::bf16>((float)x3);
    const float t2 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x2, t1));
    const float t3 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(t2, x4));
    const float t4 = kiln::rnd<kiln::bf16>((float)kiln::OpAdd()(t0, t3));
    return kiln::bf16_of_rounded(t4);
  }
  KILN_HD void operator()(int64_t i) const {
    int64_t q_ = i;
    int64_t c3; q_ = kiln::divmod(q_, (int64_t)128, &c3);
    int64_t c2; q_ = kiln::divmod(q_, out.d[2], &c2);
    (void)q_;
    y[i] = at(kiln::Num<kiln::bf16>::load(a0[i]), kiln::Num<kiln::bf16>::load(a1[c2 * s1.s[2] + c3 * s1.s[3]]), kiln::Num<kiln::bf16>::load(a2[i]), kiln::Num<float>::load(a3[c3 * s3.s[3]]), kiln::Num<kiln::bf16>::load(a4[c2 * s4.s[2] + c3 * s4.s[3]]));
  }
  KILN_HD void chunk(int64_t i) const {
    int64_t q_ = i;
    int64_t c3; q_ = kiln::divmod(q_, (int64_t)128, &c3);
    int64_t c2; q_ = kiln::divmod(q_, out.d[2], &c2);
    (void)q_;
    float x0[W]; kiln::load_run<W>(x0, a0 + i);
    float x1[W]; kiln::load_run<W>(x1, a1 + c2 * s1.s[2] + c3 * s1.s[3]);
    float x2[W]; kiln::load_run<W>(x2, a2 + i);
    float x3[W]; kiln::load_run<W>(x3, a3 + c3 * s3.s[3]);
    float x4[W]; kiln::load_run<W>(x4, a4 + c2 * s4.s[2] + c3 * s4.s[3]);
    kiln::bf16 r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j], x2[j], x3[j], x4[j]);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1) && kiln::aligned16(a2) && kiln::aligned16(a3) && kiln::aligned16(a4) && out.d[out.rank - 1] % W == 0; }
};

// (mul:bf16 $0 (cast:bf16 (mul:f32 (cast:f32 $1) (rsqrt:f32 (add:f32 $2 $3)))))
struct F19 {
  const kiln::bf16* a0; kiln::Strides s0; // row
  const kiln::bf16* a1; // contig
  const float* a2; kiln::Strides s2; // col
  const float* a3; // scalar
  kiln::bf16* y;
  kiln::Shape out;
  static constexpr int W = 8;
  KILN_HD kiln::bf16 at(const float x0, const float x1, const float x2, const float x3) const {
    const float t0 = kiln::rnd<float>((float)x1);
    const float t1 = kiln::rnd<float>((float)kiln::OpAdd()(x2, x3));
    const float t2 = kiln::rnd<float>(kiln::OpRsqrt()(t1));
    const float t3 = kiln::rnd<float>((float)kiln::OpMul()(t0, t2));
    const float t4 = kiln::rnd<kiln::bf16>((float)t3);
    const float t5 = kiln::rnd<kiln::bf16>((float)kiln::OpMul()(x0, t4));
    return kiln::bf16_of_rounded(t5);
  }
  KILN_HD void operator()(int64_t i) const {
    int64_t q_ = i;
    int64_t c2; q_ = kiln::divmod(q_, out.d[2], &c2);
    const int64_t c1 = q_;
    (void)q_;
    y[i] = at(kiln::Num<kiln::bf16>::load(a0[c2 * s0.s[2]]), kiln::Num<kiln::bf16>::load(a1[i]), kiln::Num<float>::load(a2[c1 * s2.s[1]]), kiln::Num<float>::load(a3[0]));
  }
  KILN_HD void chunk(int64_t i) const {
    int64_t q_ = i;
    int64_t c2; q_ = kiln::divmod(q_, out.d[2], &c2);
    const int64_t c1 = q_;
    (void)q_;
    float x0[W]; kiln::load_run<W>(x0, a0 + c2 * s0.s[2]);
    float x1[W]; kiln::load_run<W>(x1, a1 + i);
    const float x2 = kiln::Num<float>::load(a2[c1 * s2.s[1]]);
    const float x3 = kiln::Num<float>::load(a3[0]);
    kiln::bf16 r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j], x2, x3);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1) && out.d[out.rank - 1] % W == 0; }
};

// END emitted

// Random non-zero values in ±[lo, hi] (a cheap integer hash: Knuth's multiplicative + xorshift).
template <typename T>
__global__ void k_random(T* p, int64_t n, uint32_t seed, float lo, float hi, bool positive) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float u = (float)(h & 0xffffff) / 16777216.0f, v = lo + (hi - lo) * u;
    p[i] = kiln::Num<T>::store(positive || (h >> 31) ? v : -v);
  }
}
template <typename T>
static T* rnd(int64_t n, uint32_t seed, float lo, float hi, bool positive = false) {
  T* p;
  ck(cudaMalloc(&p, (size_t)(n > 0 ? n : 1) * sizeof(T) + 64), "cudaMalloc");
  k_random<T><<<1024, 256, 0, K::stream()>>>(p, n + 64 / (int64_t)sizeof(T), seed, lo, hi, positive);
  return p;
}

// the old paths: one element a thread
template <typename F>
static void old_for_each(const F& f, int64_t n) {
  D::k_for_each<F><<<D::grid_for(n, D::kThreads), D::kThreads, 0, K::stream()>>>(f, n);
  D::launched("old for_each");
}
template <typename T>
static void old_copy_strided(const T* x, T* y, kiln::Shape shape, kiln::Strides sx, kiln::Strides sy) {
  const int64_t n = D::numel(shape);
  const int64_t* st[2] = {sx.s, sy.s};
  D::Geo<2> g = D::coalesce<2>(shape, st);
  D::k_copy_strided<T, uint32_t><<<D::grid_for(n, D::kThreads), D::kThreads, 0, K::stream()>>>(x, y, g, n);
  D::launched("old copy_strided");
}
template <typename T, typename I>
static void old_gather(const T* x, const I* idx, T* y, int64_t outer, int64_t n, int64_t inner, int64_t m) {
  const int64_t total = outer * m * inner;
  D::k_gather_elems<T, I, uint32_t><<<D::grid_for(total, D::kThreads), D::kThreads, 0, K::stream()>>>(x, idx, y, n, inner, m, total);
  D::launched("old gather");
}

static kiln::Shape shape(std::initializer_list<int64_t> d) {
  kiln::Shape s;
  s.rank = (int)d.size();
  int i = 0;
  for (int64_t x : d) s.d[i++] = x;
  for (; i < 8; i++) s.d[i] = 1;
  return s;
}
static kiln::Strides strides(std::initializer_list<int64_t> d) {
  kiln::Strides s;
  int i = 0;
  for (int64_t x : d) s.s[i++] = x;
  for (; i < 8; i++) s.s[i] = 0;
  return s;
}
static kiln::Strides own(const kiln::Shape& s) {  // row-major strides
  kiln::Strides r = strides({});
  int64_t a = 1;
  for (int i = s.rank - 1; i >= 0; i--) r.s[i] = a, a *= s.d[i];
  return r;
}

struct Case {
  std::string name;
  size_t out_bytes;  // bytes each path writes into its output
  double bytes;      // bytes moved (read once + written), for GB/s; 0: a check only
  std::function<void(void* y)> old_path, new_path;
  size_t skip = 0;   // leading bytes neither path writes (a misaligned output)
};

int main(int argc, char** argv) {
  if (kiln_init(0) != 0) {
    fprintf(stderr, "kiln_init: %s\n", kiln_last_error());
    return 1;
  }
  const int64_t T = argc > 1 ? atoll(argv[1]) : 9216, H = 4096, I = 11008, NH = 32, HD = 128;
  if (T < 37 * 64) {  // the edge cases read up to 37 × 64 values of m [T]
    fprintf(stderr, "T must be at least %d\n", 37 * 64);
    return 1;
  }
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, 0), "props");
  cudaStream_t s = K::stream();
  printf("%s, T = %lld, hidden %lld, MLP %lld, %lld heads x %lld, bf16\n", prop.name, (long long)T, (long long)H, (long long)I, (long long)NH, (long long)HD);

  bf16* x = rnd<bf16>(T * H, 1, 0.05f, 2.f);
  bf16* r = rnd<bf16>(T * H, 2, 0.05f, 2.f);
  bf16* w = rnd<bf16>(H, 3, 0.5f, 1.5f);
  float* m = rnd<float>(T, 4, 0.1f, 2.f, true);
  float* eps = rnd<float>(1, 5, 1e-5f, 2e-5f, true);
  bf16* gate = rnd<bf16>(T * I, 6, 0.05f, 4.f);
  bf16* up = rnd<bf16>(T * I, 7, 0.05f, 2.f);
  bf16* q = rnd<bf16>(NH * T * HD, 8, 0.05f, 2.f);  // [1, 32, T, 128]
  bf16* rot = rnd<bf16>(NH * T * HD, 9, 0.05f, 2.f);
  bf16* cosb = rnd<bf16>(T * HD, 10, 0.05f, 1.f);
  bf16* sinb = rnd<bf16>(T * HD, 11, 0.05f, 1.f);
  float* sign = rnd<float>(HD, 12, 1.f, 1.f);
  // rotate_half as a gather (Llama's model file): [64..127, 0..63]; and a random permutation (no runs)
  std::vector<int64_t> h_half(HD), h_perm(HD);
  for (int64_t i = 0; i < HD; i++) h_half[i] = (i + HD / 2) % HD, h_perm[i] = i;
  for (int64_t i = HD - 1; i > 0; i--) std::swap(h_perm[i], h_perm[(i * 7919 + 13) % (i + 1)]);
  int64_t *half, *perm;
  ck(cudaMalloc(&half, HD * 8), "cudaMalloc");
  ck(cudaMalloc(&perm, HD * 8), "cudaMalloc");
  ck(cudaMemcpy(half, h_half.data(), HD * 8, cudaMemcpyHostToDevice), "h2d");
  ck(cudaMemcpy(perm, h_perm.data(), HD * 8, cudaMemcpyHostToDevice), "h2d");

  const kiln::Shape sTH = shape({1, T, H}), sTI = shape({1, T, I}), sQ = shape({1, NH, T, HD});
  const kiln::Strides wS = strides({0, 0, 1}), mS = strides({0, 1, 0}), cS = strides({0, 0, HD, 1}), signS = strides({0, 0, 0, 1});
  std::vector<Case> cases;
  const double b2 = 2.0;
  // the RMSNorm chain: y = w · bf16(f32(x) · rsqrt(m + eps)), w [H], m [1, T, 1], eps []
  cases.push_back({"rmsnorm chain x*rsqrt(m+eps)*w", (size_t)(T * H * 2), b2 * T * H * 2 + 2 * H + 4 * T,
                   [=](void* y) { old_for_each(OldRms{w, wS, false, x, own(sTH), true, m, mS, false, eps, strides({}), false, (bf16*)y, sTH}, T * H); },
                   [=](void* y) { K::for_each(F14{w, wS, x, m, mS, eps, (bf16*)y, sTH}, T * H); }});
  cases.push_back({"silu(g)*u [T, 11008]", (size_t)(T * I * 2), 3.0 * T * I * 2,
                   [=](void* y) { old_for_each(OldSiluMul{gate, own(sTI), true, up, own(sTI), true, (bf16*)y, sTI}, T * I); },
                   [=](void* y) { K::for_each(F15{gate, up, (bf16*)y, sTI}, T * I); }});
  cases.push_back({"residual add x+r+z", (size_t)(T * H * 2), 4.0 * T * H * 2,
                   [=](void* y) { old_for_each(OldAdd3{x, own(sTH), true, r, own(sTH), true, up, own(sTH), true, (bf16*)y, sTH}, T * H); },
                   [=](void* y) { K::for_each(F16{x, r, up, (bf16*)y, sTH}, T * H); }});
  cases.push_back({"residual add -> f32", (size_t)(T * H * 4), 2.0 * T * H * 2 + 4.0 * T * H,
                   [=](void* y) { old_for_each(OldAddF32{x, own(sTH), true, r, own(sTH), true, (float*)y, sTH}, T * H); },
                   [=](void* y) { K::for_each(F17{x, r, (float*)y, sTH}, T * H); }});
  cases.push_back({"rope chain q*cos+rot(q)*sin", (size_t)(NH * T * HD * 2), 3.0 * NH * T * HD * 2 + 2.0 * T * HD * 2 + 4 * HD,
                   [=](void* y) { old_for_each(OldRope{q, own(sQ), true, cosb, cS, false, rot, own(sQ), true, sign, signS, false, sinb, cS, false, (bf16*)y, sQ}, NH * T * HD); },
                   [=](void* y) { K::for_each(F18{q, cosb, cS, rot, sign, signS, sinb, cS, (bf16*)y, sQ}, NH * T * HD); }});
  cases.push_back({"rope gather rotate_half(q)", (size_t)(NH * T * HD * 2), 2.0 * NH * T * HD * 2,
                   [=](void* y) { old_gather(q, half, (bf16*)y, NH * T, HD, 1, HD); },
                   [=](void* y) { K::gather(q, half, (bf16*)y, NH * T, HD, 1, HD, false); }});
  // [1, T, 32, 128] -> [1, 32, T, 128] (transpose perm [0, 2, 1, 3]) and back, as emit.ts calls copy_strided
  const kiln::Strides toHeadsX = strides({T * H, HD, H, 1}), backX = strides({T * H, HD, NH * HD, 1});
  cases.push_back({"transpose [T,32,128]->[32,T,128]", (size_t)(T * H * 2), 2.0 * T * H * 2,
                   [=](void* y) { old_copy_strided(x, (bf16*)y, sQ, toHeadsX, own(sQ)); },
                   [=](void* y) { K::copy_strided(x, (bf16*)y, sQ, toHeadsX, own(sQ)); }});
  const kiln::Shape sT = shape({1, T, NH, HD});
  cases.push_back({"transpose [32,T,128]->[T,32,128]", (size_t)(T * H * 2), 2.0 * T * H * 2,
                   [=](void* y) { old_copy_strided(q, (bf16*)y, sT, strides({NH * T * HD, HD, T * HD, 1}), own(sT)); },
                   [=](void* y) { K::copy_strided(q, (bf16*)y, sT, strides({NH * T * HD, HD, T * HD, 1}), own(sT)); }});
  (void)backX;

  // edge cases (checked, not timed): each takes a fallback or a partial path of the new code
  const int64_t t2 = 37;
  const kiln::Shape odd = shape({1, t2, 4100}), tail = shape({1, 1, 8 * 1001 + 5});
  cases.push_back({"check: rmsnorm, innermost D = 4100 (scalar path)", (size_t)(t2 * 4100 * 2), 0,
                   [=](void* y) { old_for_each(OldRms{w, strides({0, 0, 1}), false, x, own(odd), true, m, mS, false, eps, strides({}), false, (bf16*)y, odd}, t2 * 4100); },
                   [=](void* y) { K::for_each(F19{w, strides({0, 0, 1}), x, m, mS, eps, (bf16*)y, odd}, t2 * 4100); }});
  cases.push_back({"check: rmsnorm, x and w misaligned", (size_t)(t2 * H * 2), 0,
                   [=](void* y) { old_for_each(OldRms{w + 1, wS, false, x + 3, own(shape({1, t2, H})), true, m, mS, false, eps, strides({}), false, (bf16*)y, shape({1, t2, H})}, t2 * H); },
                   [=](void* y) { K::for_each(F14{w + 1, wS, x + 3, m, mS, eps, (bf16*)y, shape({1, t2, H})}, t2 * H); }});
  cases.push_back({"check: silu*u, 8*1001+5 elements (chunks + tail)", (size_t)(tail.d[2] * 2), 0,
                   [=](void* y) { old_for_each(OldSiluMul{gate, own(tail), true, up, own(tail), true, (bf16*)y, tail}, tail.d[2]); },
                   [=](void* y) { K::for_each(F15{gate, up, (bf16*)y, tail}, tail.d[2]); }});
  cases.push_back({"check: add -> f32, misaligned output", (size_t)(t2 * H * 4 + 4), 0,
                   [=](void* y) { old_for_each(OldAddF32{x, own(shape({1, t2, H})), true, r, own(shape({1, t2, H})), true, (float*)y + 1, shape({1, t2, H})}, t2 * H); },
                   [=](void* y) { K::for_each(F17{x, r, (float*)y + 1, shape({1, t2, H})}, t2 * H); }, 4});
  cases.push_back({"check: gather, random permutation (no runs)", (size_t)(NH * t2 * HD * 2), 0,
                   [=](void* y) { old_gather(q, perm, (bf16*)y, NH * t2, HD, 1, HD); },
                   [=](void* y) { K::gather(q, perm, (bf16*)y, NH * t2, HD, 1, HD, false); }});
  cases.push_back({"check: gather rows of 64 (16-byte words)", (size_t)(t2 * HD * 64 * 2), 0,
                   [=](void* y) { old_gather(q, perm, (bf16*)y, t2, HD, 64, HD); },
                   [=](void* y) { K::gather(q, perm, (bf16*)y, t2, HD, 64, HD, false); }});
  cases.push_back({"check: gather, misaligned source", (size_t)(NH * t2 * HD * 2), 0,
                   [=](void* y) { old_gather(q + 1, half, (bf16*)y, NH * t2, HD, 1, HD); },
                   [=](void* y) { K::gather(q + 1, half, (bf16*)y, NH * t2, HD, 1, HD, false); }});
  const kiln::Shape s124 = shape({1, NH, t2, 124}), s3 = shape({1, NH, t2, 3});
  cases.push_back({"check: transpose, head dim 124 (8-byte units)", (size_t)(NH * t2 * 124 * 2), 0,
                   [=](void* y) { old_copy_strided(x, (bf16*)y, s124, strides({0, 124, NH * 124, 1}), own(s124)); },
                   [=](void* y) { K::copy_strided(x, (bf16*)y, s124, strides({0, 124, NH * 124, 1}), own(s124)); }});
  cases.push_back({"check: transpose, head dim 3 (elements)", (size_t)(NH * t2 * 3 * 2), 0,
                   [=](void* y) { old_copy_strided(x, (bf16*)y, s3, strides({0, 3, NH * 3, 1}), own(s3)); },
                   [=](void* y) { K::copy_strided(x, (bf16*)y, s3, strides({0, 3, NH * 3, 1}), own(s3)); }});
  cases.push_back({"check: transpose, misaligned source", (size_t)(NH * t2 * HD * 2), 0,
                   [=](void* y) { old_copy_strided(x + 1, (bf16*)y, shape({1, NH, t2, HD}), strides({0, HD, H, 1}), own(shape({1, NH, t2, HD}))); },
                   [=](void* y) { K::copy_strided(x + 1, (bf16*)y, shape({1, NH, t2, HD}), strides({0, HD, H, 1}), own(shape({1, NH, t2, HD}))); }});
  // RoPE's angle table: concat([T, 64], [T, 64]) of f32 along the last axis, one copy a half
  cases.push_back({"check: f32 concat [T,64] x 2 -> [T,128]", (size_t)(t2 * HD * 4), 0,
                   [=](void* y) {
                     for (int h = 0; h < 2; h++) old_copy_strided(m, (float*)y + 64 * h, shape({1, t2, 64}), strides({0, 64, 1}), strides({0, HD, 1}));
                   },
                   [=](void* y) {
                     for (int h = 0; h < 2; h++) K::copy_strided(m, (float*)y + 64 * h, shape({1, t2, 64}), strides({0, 64, 1}), strides({0, HD, 1}));
                   }});

  size_t most = 0;
  for (const Case& c : cases) most = std::max(most, c.out_bytes + 64);
  void *yo, *yn;
  ck(cudaMalloc(&yo, most), "cudaMalloc");
  ck(cudaMalloc(&yn, most), "cudaMalloc");
  std::vector<unsigned char> ho(most), hn(most);
  bool ok = true;

  // ceiling: a device-to-device copy of one [T, 4096] bf16 tensor (bytes read + written)
  const double copy_us = median_us([&](int) { cudaMemcpyAsync(yo, x, (size_t)(T * H * 2), cudaMemcpyDeviceToDevice, s); }, 5, 30);
  printf("\n| kernel | MB moved | old us | old GB/s | new us | new GB/s | speedup | new == old |\n|---|---|---|---|---|---|---|---|\n");
  printf("| device-to-device copy [T, 4096] bf16 | %.1f | | | %.1f | %.0f | | |\n", 4.0 * T * H / 1e6, copy_us, 4.0 * T * H / (copy_us * 1e3));
  for (const Case& c : cases) {
    ck(cudaMemsetAsync(yo, 0xab, most, s), "memset");
    ck(cudaMemsetAsync(yn, 0xcd, most, s), "memset");
    c.old_path(yo);
    c.new_path(yn);
    ck(cudaMemcpyAsync(ho.data(), yo, c.out_bytes + 16, cudaMemcpyDeviceToHost, s), "d2h");
    ck(cudaMemcpyAsync(hn.data(), yn, c.out_bytes + 16, cudaMemcpyDeviceToHost, s), "d2h");
    ck(cudaStreamSynchronize(s), "sync");
    // the first differing byte (unwritten bytes differ too: the outputs were poisoned differently)
    size_t bad = c.out_bytes;
    for (size_t i = c.skip; i < c.out_bytes && bad == c.out_bytes; i++)
      if (ho[i] != hn[i]) bad = i;
    const bool same = bad == c.out_bytes;
    if (!same) {
      ok = false;
      printf("MISMATCH %s: first at byte %zu of %zu (old %02x, new %02x)\n", c.name.c_str(), bad, c.out_bytes, ho[bad], hn[bad]);
    }
    if (c.bytes == 0) {
      printf("| %s | | | | | | | %s |\n", c.name.c_str(), same ? "yes" : "NO");
      continue;
    }
    const double to = median_us([&](int) { c.old_path(yo); }, 5, 30), tn = median_us([&](int) { c.new_path(yn); }, 5, 30);
    printf("| %s | %.1f | %.1f | %.0f | %.1f | %.0f | %.2fx | %s |\n", c.name.c_str(), c.bytes / 1e6, to, c.bytes / (to * 1e3), tn, c.bytes / (tn * 1e3), to / tn, same ? "yes" : "NO");
  }
  printf("\n%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
