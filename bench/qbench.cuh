// Shared by the 4-bit GEMV benches (qgemv.cu, qgemv1.cu): deterministic device data, the f32 → T
// conversion, an exit-on-error check of the C ABI, and the code tables of compiler/ir/quant.ts.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include "common/kiln_types.h"

// uniform in [-scale/2, scale/2) from a hash of the index (no state: any grid)
__global__ void k_rand(float* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = ((float)(h & 0xffffff) / 16777216.0f - 0.5f) * scale;
  }
}
template <typename T>
__global__ void k_to(const float* a, T* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) b[i] = kiln::Num<T>::store(a[i]);
}
// a kiln_* call's status: exits with kiln_last_error() when it failed
static void ck(int rc, const char* what) {
  if (rc) {
    fprintf(stderr, "%s failed: %s\n", what, kiln_last_error());
    exit(1);
  }
}

// The codes of compiler/ir/quant.ts: NF4 (its values to f32 precision, as bitsandbytes lists them) and FP4 (exact).
static const double NF4[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
                               -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                               0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
static void fp4_code(double* c) {
  for (int i = 0; i < 8; i++) {
    const int e = i >> 1, m = i & 1;
    c[i] = (e == 0 ? m / 16.0 : (1 << e) * (1 + m / 2.0)) / 12.0;
    c[i + 8] = -c[i];
  }
}
