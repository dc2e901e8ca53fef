// Storage of quantized weights (compiler/ir/quant.ts is the reference; the runtime quantizes on
// load with these functions and the kernels read the same layouts).
//   4-bit (nf4/fp4): code indices packed two a byte (element 2i in the low nibble), padded to 16
//     bytes; then the absmax of each block of `block` weights: one f32 each, or with double
//     quantization one int8 code each (padded to 16), one f32 scale per 256 blocks (padded to 16)
//     and the f32 mean that was removed (then 4 zero bytes); a block's absmax is then
//     max(0, f32(f32(code·scale) + mean)) — f32 arithmetic, as bitsandbytes dequantizes its nested
//     absmax (code times scale, plus the offset, in f32).
//     The absmax (or their int8 codes) are stored in block order, except for a weight of rows of K
//     with K a multiple of `block` and a multiple of 8 rows: there, in tiles of 8 rows — slot
//     ((r / 8)·A + j)·8 + r mod 8 for block j of row r (A = K / block blocks a row), so the 8 rows'
//     absmax of one block column are 8 neighbouring values (one 32-byte or 8-byte load for the
//     decode GEMV, which walks 8 rows at a time) — and double quantization's groups of 256 are
//     256 neighbouring slots (32 block columns of a tile), so one scale serves a piece's 8 rows.
//     tiles4 gives A (0: block order), slot4 the slot of a block.
//   int8 (LLM.int8): N·K int8 codes (absmax per output feature), padded to 16 bytes, then N f64 scales.
// Rounding follows the reference exactly: JavaScript's Math.round is floor(x + 0.5).
#pragma once
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <vector>
#include "kiln_types.h"

namespace kiln {
namespace quant {

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }
inline int64_t blocks4(int64_t n, int64_t block) { return (n + block - 1) / block; }
inline int64_t groups4(int64_t n, int64_t block) { return (blocks4(n, block) + 255) / 256; }
inline int64_t bytes4(int64_t n, int64_t block, bool dq) {
  const int64_t nb = blocks4(n, block);
  return pad16((n + 1) / 2) + (dq ? pad16(nb) + pad16(4 * groups4(n, block)) + 8 : 4 * nb);
}

// The absmax layout of n weights in rows of K (K ≤ 0: unknown, block order): the blocks a row in
// tiles of 8 rows (A > 0), or 0 for block order.
inline int64_t tiles4(int64_t n, int64_t block, int64_t K) {
  if (K <= 0 || block <= 0 || n <= 0 || n % K != 0 || K % block != 0 || (n / K) % 8 != 0) return 0;
  return K / block;
}
// the storage slot of block j of row r in the tiled layout (A = tiles4 > 0); host and device
KILN_HD int64_t slot4_rj(int64_t r, int64_t j, int64_t A) { return (((r >> 3) * A + j) << 3) + (r & 7); }
// the storage slot of block b's absmax (A from tiles4; 0: block order)
KILN_HD int64_t slot4(int64_t b, int64_t A) {
  if (A == 0) return b;
  const int64_t r = b / A;
  return slot4_rj(r, b - r * A, A);
}

// A double-quantized block's absmax: max(0, f32(f32(code·scale) + mean)). Each operation is done in
// f64 and rounded to f32, which gives the correctly rounded f32 result (the product is exact in f64;
// f64 carries more than twice f32's digits, so the sum's double rounding is innocuous) and leaves the
// compiler nothing to contract; the cuda kernels use __fmul_rn / __fadd_rn, quant.ts Math.fround.
inline float absmax_dq(float mean, int code, float scale) {
  const float p = (float)((double)code * (double)scale);
  const float a = (float)((double)p + (double)mean);
  return a > 0.f ? a : 0.f;
}

// The absmax of block b, from either layout (A from tiles4).
inline float absmax4(const uint8_t* w, int64_t n, int64_t block, bool dq, int64_t A, int64_t b) {
  const uint8_t* a = w + pad16((n + 1) / 2);
  b = slot4(b, A);
  if (!dq) {
    float f;
    memcpy(&f, a + 4 * b, 4);
    return f;
  }
  const int64_t nb = blocks4(n, block);
  const int8_t code = (int8_t)a[b];
  float scale;
  memcpy(&scale, a + pad16(nb) + 4 * (b / 256), 4);
  float mean;
  memcpy(&mean, a + pad16(nb) + pad16(4 * groups4(n, block)), 4);
  return absmax_dq(mean, code, scale);
}
inline int64_t bytes8(int64_t N, int64_t K) { return pad16(N * K) + 8 * N; }
inline double js_round(double x) { return floor(x + 0.5); }

// nearest code value to x, ties to the smaller index (quant.ts nearestCode)
inline int nearest(const double* code, double x) {
  int best = 0;
  for (int i = 1; i < 16; i++)
    if (fabs(code[i] - x) < fabs(code[best] - x)) best = i;
  return best;
}

// Absmax of each block of `block` weights (exact: the largest |w| as f32).
inline void absmax_blocks(const float* w, int64_t n, int64_t block, float* absmax) {
  const int64_t nb = blocks4(n, block);
  for (int64_t b = 0; b < nb; b++) {
    double m = 0;
    for (int64_t i = b * block; i < n && i < (b + 1) * block; i++) m = fmax(m, fabs((double)w[i]));
    absmax[b] = (float)m;
  }
}

// The tail of the 4-bit layout after the packed codes, from the per-block absmax. Without double
// quantization it is the absmax itself; with it (QLoRA §3, quant.ts quantizeAbsmax) the absmax
// minus their mean as int8 codes per 256 blocks, the f32 scales and the f32 mean, and `absmax` is
// overwritten with what the codes decode to (the values the weights are then quantized against).
// The cuda target calls this on the host with the absmax it computed on the GPU, so both targets
// write the same bytes. `absmax` is in block order (in and out), the tail in slot order (A: tiles4);
// the mean, the groups of 256 and their codes are taken in slot order.
inline int64_t tail4_bytes(int64_t n, int64_t block, bool dq) { return bytes4(n, block, dq) - pad16((n + 1) / 2); }
inline void tail4(float* absmax_in, int64_t n, int64_t block, bool dq, int64_t A, uint8_t* tail) {
  const int64_t nb = blocks4(n, block);
  memset(tail, 0, (size_t)tail4_bytes(n, block, dq));
  std::vector<float> slots;
  float* absmax = absmax_in;
  if (A != 0) {
    slots.resize((size_t)nb);
    for (int64_t b = 0; b < nb; b++) slots[(size_t)slot4(b, A)] = absmax_in[b];
    absmax = slots.data();
  }
  if (!dq) {
    memcpy(tail, absmax, 4 * (size_t)nb);
    return;
  }
  if (nb == 0) return;
  double sum = 0;
  for (int64_t b = 0; b < nb; b++) sum += absmax[b];
  const float mean = (float)(sum / (double)nb);
  int8_t* dcodes = (int8_t*)tail;
  uint8_t* dscales = tail + pad16(nb);
  for (int64_t g = 0; g < nb; g += 256) {
    const int64_t end = g + 256 < nb ? g + 256 : nb;
    double m = 0;
    for (int64_t b = g; b < end; b++) m = fmax(m, fabs((double)absmax[b] - (double)mean));
    const float scale = (float)(m / 127);
    memcpy(dscales + 4 * (g / 256), &scale, 4);
    for (int64_t b = g; b < end; b++) {
      const double c = m > 0 ? js_round((((double)absmax[b] - (double)mean) / m) * 127) : 0;
      dcodes[b] = (int8_t)c;
      absmax[b] = absmax_dq(mean, (int)c, scale);  // what the codes decode to
    }
  }
  memcpy(tail + pad16(nb) + pad16(4 * groups4(n, block)), &mean, 4);
  if (A != 0)
    for (int64_t b = 0; b < nb; b++) absmax_in[b] = slots[(size_t)slot4(b, A)];
}

// n weights in rows of K (K ≤ 0: block order for the absmax, whatever the shape)
inline void quantize4(const float* w, int64_t n, int64_t block, bool dq, const double* code, uint8_t* out, int64_t K) {
  std::vector<float> absmax((size_t)blocks4(n, block));
  absmax_blocks(w, n, block, absmax.data());
  memset(out, 0, (size_t)pad16((n + 1) / 2));
  tail4(absmax.data(), n, block, dq, tiles4(n, block, K), out + pad16((n + 1) / 2));
  for (int64_t i = 0; i < n; i++) {
    const double m = absmax[(size_t)(i / block)];
    const int c = nearest(code, m > 0 ? (double)w[i] / m : 0.0);
    out[i / 2] |= (uint8_t)(i % 2 ? c << 4 : c);
  }
}

inline void quantize8(const float* w, int64_t N, int64_t K, uint8_t* out) {
  memset(out, 0, (size_t)bytes8(N, K));
  int8_t* q = (int8_t*)out;
  double* scale = (double*)(out + pad16(N * K));
  for (int64_t r = 0; r < N; r++) {
    double m = 0;
    for (int64_t c = 0; c < K; c++) m = fmax(m, fabs((double)w[r * K + c]));
    scale[r] = m / 127;
    for (int64_t c = 0; c < K; c++) q[r * K + c] = (int8_t)(m > 0 ? js_round(((double)w[r * K + c] / m) * 127) : 0);
  }
}

// One 4-bit linear of the targets' qlinear4_group / qlinear4_silu_mul (cpu/kernels.h,
// cuda/quant.cuh): y = x · deq(w)ᵀ (+ bias) (+ res), N output features, w in the layout above.
template <typename T>
struct Q4Linear {
  const uint8_t* w;
  const T* bias;
  const T* res;
  T* y;
  int64_t N;
};

// RoPE and the static cache's writes as the epilogue of a decode step's q/k/v linears (emit.ts,
// rope-fusion.ts: `qlinear4_group(..., rope)` where K::rope_fused said so). Linear i of the group
// (one row of x: B = S = 1) puts its row n = h·D + d
//   mode 0: into its own y (as without this),
//   mode 1: RoPE'd into dst[i][n]                   — the rotary elementwise op's result,
//   mode 2: RoPE'd into dst[i][(h·C + pos)·D + d]   — the rotary op's result written into the cache,
//   mode 3: as it is into dst[i][(h·C + pos)·D + d] — written into the cache,
// RoPE as kiln::rope_at computes the fused elementwise `(add (mul $x $cos) (mul (mul $x' $sign) $sin))`
// where x' is row d + D/2 (mod D) of the same head: cos, sin and sign are the op's rows at the one
// position, pos the cache position (a write at pos ∉ [0, C) is skipped, as cache_write's).
template <typename T>
struct Q4Rope {
  const T* cos;
  const T* sin;
  const T* sign;
  const float* sign32;  // instead of sign where the op casts an f32 sign to T itself: `(cast:T $sign)`
  const int64_t* pos;
  int64_t C;
  int64_t D;
  T* dst[4];
  int mode[4];
};
// Whether a step of `rows` rows fuses (emit.ts's `rfN`): one row, unless KILN_FUSE_ROPE=0 (an A/B
// switch); the same on both targets, so CI's cpu runs take the fused form the GPU takes.
static inline bool rope_fused(int64_t rows) {
  static const bool on = !(getenv("KILN_FUSE_ROPE") && strcmp(getenv("KILN_FUSE_ROPE"), "0") == 0);
  return rows == 1 && on;
}

}  // namespace quant
}  // namespace kiln
