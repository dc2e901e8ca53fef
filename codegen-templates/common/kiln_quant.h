// Storage of quantized weights (compiler/ir/quant.ts is the reference; the runtime quantizes on
// load with these functions and the kernels read the same layouts).
//   4-bit (nf4/fp4): code indices packed two a byte (element 2i in the low nibble), padded to 16
//     bytes; then the absmax of each block of `block` weights: one f32 each, or with double
//     quantization one int8 code each (padded to 16), one f32 scale per 256 blocks (padded to 16)
//     and the f64 mean that was removed; a block's absmax is then f32(max(0, mean + code·scale)).
//   int8 (LLM.int8): N·K int8 codes (absmax per output feature), padded to 16 bytes, then N f64 scales.
// Rounding follows the reference exactly: JavaScript's Math.round is floor(x + 0.5).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <vector>

namespace kiln {
namespace quant {

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }
inline int64_t blocks4(int64_t n, int64_t block) { return (n + block - 1) / block; }
inline int64_t groups4(int64_t n, int64_t block) { return (blocks4(n, block) + 255) / 256; }
inline int64_t bytes4(int64_t n, int64_t block, bool dq) {
  const int64_t nb = blocks4(n, block);
  return pad16((n + 1) / 2) + (dq ? pad16(nb) + pad16(4 * groups4(n, block)) + 8 : 4 * nb);
}

// The absmax of block b, from either layout.
inline float absmax4(const uint8_t* w, int64_t n, int64_t block, bool dq, int64_t b) {
  const uint8_t* a = w + pad16((n + 1) / 2);
  if (!dq) {
    float f;
    memcpy(&f, a + 4 * b, 4);
    return f;
  }
  const int64_t nb = blocks4(n, block);
  const int8_t code = (int8_t)a[b];
  float scale;
  memcpy(&scale, a + pad16(nb) + 4 * (b / 256), 4);
  double mean;
  memcpy(&mean, a + pad16(nb) + pad16(4 * groups4(n, block)), 8);
  return (float)fmax(0.0, mean + (double)code * (double)scale);
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

inline void quantize4(const float* w, int64_t n, int64_t block, bool dq, const double* code, uint8_t* out) {
  const int64_t nb = blocks4(n, block);
  std::vector<float> absmax((size_t)nb);
  for (int64_t b = 0; b < nb; b++) {
    double m = 0;
    for (int64_t i = b * block; i < n && i < (b + 1) * block; i++) m = fmax(m, fabs((double)w[i]));
    absmax[(size_t)b] = (float)m;
  }
  std::vector<int8_t> dcodes;
  std::vector<float> dscales;
  double mean = 0;
  if (dq && nb > 0) {
    // double quantization: mean removed, int8 absmax per 256 blocks (quant.ts quantizeAbsmax)
    double sum = 0;
    for (int64_t b = 0; b < nb; b++) sum += absmax[(size_t)b];
    mean = sum / (double)nb;
    dcodes.assign((size_t)nb, 0);
    for (int64_t g = 0; g < nb; g += 256) {
      const int64_t end = g + 256 < nb ? g + 256 : nb;
      double m = 0;
      for (int64_t b = g; b < end; b++) m = fmax(m, fabs(absmax[(size_t)b] - mean));
      const float scale = (float)(m / 127);
      dscales.push_back(scale);
      for (int64_t b = g; b < end; b++) {
        const double c = m > 0 ? js_round(((absmax[(size_t)b] - mean) / m) * 127) : 0;
        dcodes[(size_t)b] = (int8_t)c;
        absmax[(size_t)b] = (float)fmax(0.0, mean + c * (double)scale);  // what the codes decode to
      }
    }
  }
  memset(out, 0, (size_t)bytes4(n, block, dq));
  for (int64_t i = 0; i < n; i++) {
    const double m = absmax[(size_t)(i / block)];
    const int c = nearest(code, m > 0 ? (double)w[i] / m : 0.0);
    out[i / 2] |= (uint8_t)(i % 2 ? c << 4 : c);
  }
  uint8_t* a = out + pad16((n + 1) / 2);
  if (!dq) memcpy(a, absmax.data(), 4 * (size_t)nb);
  else if (nb > 0) {
    memcpy(a, dcodes.data(), (size_t)nb);
    memcpy(a + pad16(nb), dscales.data(), 4 * dscales.size());
    memcpy(a + pad16(nb) + pad16(4 * groups4(n, block)), &mean, 8);
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

}  // namespace quant
}  // namespace kiln
