// Check and micro-benchmark of the fused norms (codegen-templates/cuda/norm.cuh) on Llama-2-7B
// shapes: T = 9216 packed tokens and T = 1 (decode), hidden 4096, bf16 and f32, rms_norm and
// layer_norm (+ bias); then the other paths: f16, a short row (one warp), odd rows and a misaligned
// input (the fallback kernel), a long row (1024-thread blocks).
// Correctness: each result against the cpu twin (cpu/kernels.h, itself bit for bit the reference
// interpreter: test/norm-kernels.test.ts) in the output dtype's ulps. Expected: 0 elements differ;
// 1 ulp is allowed, because the GPU adds each row's f64 partial sums in a tree instead of index
// order, which can move the f32 mean by one ulp when the f64 sum sits on an f32 rounding boundary.
// Timing: median per call over a replayed CUDA graph of 20 calls (of 15 replays), 4 buffer sets
// rotated; bandwidth counts x read once and y written once (the weight is L2-resident).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/norm bench/norm.cu
//   bench/tmp/norm        (prints a table, then PASS or FAIL with what differed; exit status 1 on FAIL)
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "graph_timer.cuh"
#include "rand.cuh"
#include "cpu/kernels.h"
#include <algorithm>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-norm"; }
using kiln::bf16;
using kiln::f16;

static void ck(int rc, const char* what) {
  if (rc) {
    fprintf(stderr, "%s failed: %s\n", what, kiln_last_error());
    exit(1);
  }
}
static void cudaCk(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    exit(1);
  }
}


// the output's ordered integer form: adjacent floats of T differ by 1
template <typename T> static int64_t ordered(T v);
template <> int64_t ordered<float>(float v) { int32_t i; memcpy(&i, &v, 4); return i < 0 ? (int64_t)INT32_MIN - i : i; }
template <> int64_t ordered<bf16>(bf16 v) { int16_t i = (int16_t)v.bits; return i < 0 ? (int64_t)INT16_MIN - i : i; }
template <> int64_t ordered<f16>(f16 v) { int16_t i = (int16_t)v.bits; return i < 0 ? (int64_t)INT16_MIN - i : i; }

static bool all_ok = true;

// one case (rows of gauss() at scales 2^-12 … 2^12, a constant row): check against the cpu twin; time it when `timed`
template <typename T>
static void run_case(const char* dt, bool layer, int64_t T_, int64_t D, int offset, bool timed) {
  typedef kiln::Num<T> N;
  const int64_t n = T_ * D;
  const double eps = layer ? 1e-5 : 1e-6;
  std::vector<T> hx(n + offset), hw(D), hb(D), hy(n), ref(n);
  for (int64_t r = 0; r < T_; r++) {
    const float scale = ldexpf(1.f, (int)((r * 5) % 25) - 12), shift = layer ? 3 * scale * gauss() : 0.f;
    for (int64_t j = 0; j < D; j++) hx[offset + r * D + j] = N::store(r == 2 ? 0.75f : shift + scale * gauss());
  }
  for (int64_t j = 0; j < D; j++) hw[j] = N::store(1 + 0.2f * gauss()), hb[j] = N::store(0.1f * gauss());
  const int SETS = timed ? 4 : 1;
  T *x[4], *y[4], *w, *b;
  for (int s = 0; s < SETS; s++) {
    cudaCk(cudaMalloc(&x[s], sizeof(T) * (n + offset)), "cudaMalloc x");
    cudaCk(cudaMalloc(&y[s], sizeof(T) * n), "cudaMalloc y");
    cudaCk(cudaMemcpy(x[s], hx.data(), sizeof(T) * (n + offset), cudaMemcpyHostToDevice), "upload x");
  }
  cudaCk(cudaMalloc(&w, sizeof(T) * D), "cudaMalloc w");
  cudaCk(cudaMalloc(&b, sizeof(T) * D), "cudaMalloc b");
  cudaCk(cudaMemcpy(w, hw.data(), sizeof(T) * D, cudaMemcpyHostToDevice), "upload w");
  cudaCk(cudaMemcpy(b, hb.data(), sizeof(T) * D, cudaMemcpyHostToDevice), "upload b");
  auto gpu = [&](int s) {
    if (layer) kiln::cuda::layer_norm<T>(x[s] + offset, w, b, y[s], T_, D, eps);
    else kiln::cuda::rms_norm<T>(x[s] + offset, w, y[s], T_, D, eps);
  };
  gpu(0);
  ck(kiln_synchronize(), layer ? "layer_norm" : "rms_norm");
  cudaCk(cudaMemcpy(hy.data(), y[0], sizeof(T) * n, cudaMemcpyDeviceToHost), "download y");
  if (layer) kiln::cpu::layer_norm<T>(hx.data() + offset, hw.data(), hb.data(), ref.data(), T_, D, eps);
  else kiln::cpu::rms_norm<T>(hx.data() + offset, hw.data(), ref.data(), T_, D, eps);
  int64_t differ = 0, worst = 0, at = -1;
  for (int64_t i = 0; i < n; i++) {
    const float a = N::load(hy[i]), e = N::load(ref[i]);
    if (a != a && e != e) continue;  // NaN where the twin has NaN
    const int64_t d = std::llabs(ordered<T>(hy[i]) - ordered<T>(ref[i]));
    if (d) differ++;
    if (d > worst) worst = d, at = i;
  }
  const bool ok = worst <= 1;
  all_ok &= ok;
  char name[96];
  snprintf(name, sizeof name, "%s %s T=%lld D=%lld%s", layer ? "layer_norm+bias" : "rms_norm", dt, (long long)T_, (long long)D, offset ? " misaligned" : "");
  printf("| %-40s | %9lld | %8lld |", name, (long long)differ, (long long)worst);
  if (timed) {
    const double us = median_us([&](int i) { gpu(i % SETS); });
    const double bytes = 2.0 * n * sizeof(T);
    printf(" %9.2f | %7.0f |\n", us, bytes / us / 1e3);
  } else printf("         - |       - |\n");
  if (!ok)
    printf("FAIL %s: element %lld (row %lld, col %lld): gpu %.9g, cpu twin %.9g (%lld ulps)\n", name, (long long)at, (long long)(at / D), (long long)(at % D),
           (double)N::load(hy[at]), (double)N::load(ref[at]), (long long)worst);
  for (int s = 0; s < SETS; s++) cudaFree(x[s]), cudaFree(y[s]);
  cudaFree(w);
  cudaFree(b);
}

int main() {
  ck(kiln_init(0), "init");
  printf("| case | elements ≠ cpu twin | max ulps | µs / call | GB/s |\n|---|---|---|---|---|\n");
  for (int layer = 0; layer < 2; layer++) {
    run_case<bf16>("bf16", layer, 9216, 4096, 0, true);
    run_case<bf16>("bf16", layer, 1, 4096, 0, true);
    run_case<float>("f32", layer, 9216, 4096, 0, true);
    run_case<float>("f32", layer, 1, 4096, 0, true);
  }
  // the other paths: f16, a 64-wide row, odd rows and a misaligned input (fallback), a long row
  for (int layer = 0; layer < 2; layer++) {
    run_case<f16>("f16", layer, 512, 4096, 0, false);
    run_case<bf16>("bf16", layer, 300, 64, 0, false);
    run_case<bf16>("bf16", layer, 300, 4095, 0, false);
    run_case<bf16>("bf16", layer, 300, 4096, 1, false);
    run_case<float>("f32", layer, 64, 14336, 0, false);
    run_case<bf16>("bf16", layer, 16, 40000, 0, false);
  }
  // the roofline: a device-to-device copy of the same bytes (x read, y written)
  {
    void *a, *b;
    const size_t bytes = (size_t)9216 * 4096 * 2;
    cudaCk(cudaMalloc(&a, bytes), "cudaMalloc");
    cudaCk(cudaMalloc(&b, bytes), "cudaMalloc");
    const double us = median_us([&](int) { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, kiln::cuda::stream()); });
    printf("| %-40s | %9s | %8s | %9.2f | %7.0f |\n", "copy of a bf16 9216×4096 tensor", "-", "-", us, 2.0 * bytes / us / 1e3);
  }
  printf(all_ok ? "PASS\n" : "FAIL\n");
  return all_ok ? 0 : 1;
}
