// The per-row steps of rms_norm and layer_norm (compiler/ir/ops.ts), shared by the cpu and cuda
// kernels so that both round exactly where the eager graph (and so the interpreter) rounds: every
// f32 step rounded to f32 (no FMA contraction on the device: the _rn intrinsics), the means from f64
// sums rounded once, rsqrt as 1/sqrt in f64 rounded to f32, the normalized value rounded to T before
// the weight multiplies it, and the product (and the bias sum) rounded to T.
#pragma once
#include "kiln_types.h"

namespace kiln {

KILN_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KILN_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KILN_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// rsqrt(mean + eps) of a row of D from the f64 sum of its f32 squares
KILN_HD float norm_inv(double sumsq, int64_t D, float eps) {
  const float mean = (float)(sumsq / (double)D);
  return (float)(1.0 / sqrt((double)add_rn(mean, eps)));
}

// one element of the result: h (centered for layer_norm) times inv, rounded to T, times w, plus b
template <typename T>
KILN_HD T norm_out(float h, float inv, T w, const T* b) {
  typedef Num<T> N;
  const float y = rnd<T>(mul_rn(rnd<T>(mul_rn(h, inv)), N::load(w)));
  return N::store(b ? add_rn(y, N::load(*b)) : y);
}

}  // namespace kiln
