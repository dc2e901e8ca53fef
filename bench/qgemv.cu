// Micro-benchmark of the quantized decode GEMVs (codegen-templates/cuda/quant.cuh) on the
// Llama-2-7B shapes, bf16 activations: NF4 (± double quant) and LLM.int8 next to the bf16
// `linear`, timed with CUDA events over a replayed CUDA graph of 20 calls (median of 15), rotating over 4 weight copies
// to miss L2; bandwidth counts the packed weight bytes (codes + absmax), and the prefill shapes at M = 2048.
// The 4-bit GEMV (the tensor-core k_qgemv4mma) is also timed at M = 2, 4, 8 next to the CUDA-core
// k_qgemv4v it replaced for bf16/f16 (launched directly).
// Checks first, on every shape and on a ragged one (N % 16 ≠ 0), that the 4-bit GEMV at M = 1…8
// DISTINCT rows agrees with the prefill path (the same rows among 9: dequantize + cuBLASLt), with a
// bias, for nf4 and fp4 (the codes of compiler/ir/quant.ts), ± double quant, blocks of 64 and 128,
// bf16 and f16; and the int8 GEMV (M = 1) with its prefill path. A line per case, then "check: PASS"
// or "check: FAIL" (exit 1). Weights are quantized on the GPU by kiln_quantize4/8.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/qgemv bench/qgemv.cu
//   bench/tmp/qgemv
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "graph_timer.cuh"
#include <algorithm>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-qgemv"; }
using kiln::bf16;

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

// The 4-bit GEMV at M = 1…8 distinct rows of x against the prefill path on the same rows (the first
// M of 9 rows: dequantize + GEMM), with a bias. One line; false when max |Δ| > 2 % of max |y| or the
// relative L2 error > 1 % (the paths differ by where T rounds: T(code·absmax) in the prefill,
// T(code)·absmax in the GEMV; a wrong layout or scale is off by O(1)).
template <typename T>
static bool check4(const char* label, int64_t N, int64_t K, int64_t block, bool dq, const double* code) {
  cudaStream_t s = kiln::cuda::stream();
  float *wf, *xf, *bf;
  cudaMalloc(&wf, 4 * N * K);
  cudaMalloc(&xf, 4 * 9 * K);
  cudaMalloc(&bf, 4 * N);
  k_rand<<<1024, 256, 0, s>>>(wf, N * K, 1234 + (uint32_t)N, 0.05f);
  k_rand<<<1024, 256, 0, s>>>(xf, 9 * K, 77, 4.f);
  k_rand<<<1024, 256, 0, s>>>(bf, N, 5, 1.f);
  T *x, *b, *y, *y9;
  cudaMalloc(&x, sizeof(T) * 9 * K);
  cudaMalloc(&b, sizeof(T) * N);
  cudaMalloc(&y, sizeof(T) * 8 * N);
  cudaMalloc(&y9, sizeof(T) * 9 * N);
  k_to<T><<<1024, 256, 0, s>>>(xf, x, 9 * K);
  k_to<T><<<1024, 256, 0, s>>>(bf, b, N);
  uint8_t* q;
  cudaMalloc(&q, kiln::quant::bytes4(N * K, block, dq));
  ck(kiln_quantize4(q, wf, N * K, block, dq, code), "quantize4");
  kiln::cuda::qlinear4<T>(x, q, b, nullptr, y9, 9, N, K, block, dq, code);
  std::vector<T> h(8 * N), h9(9 * N);
  ck(kiln_synchronize(), "sync");
  cudaMemcpy(h9.data(), y9, sizeof(T) * 9 * N, cudaMemcpyDeviceToHost);
  double maxd = 0, maxy = 0, num = 0, den = 0;
  for (int M = 1; M <= 8; M++) {
    cudaMemset(y, 0xff, sizeof(T) * 8 * N);  // NaN: a row the GEMV misses fails
    kiln::cuda::qlinear4<T>(x, q, b, nullptr, y, M, N, K, block, dq, code);
    ck(kiln_synchronize(), "sync");
    cudaMemcpy(h.data(), y, sizeof(T) * M * N, cudaMemcpyDeviceToHost);
    for (int64_t i = 0; i < M * N; i++) {
      const double g = kiln::Num<T>::load(h[i]), w = kiln::Num<T>::load(h9[i]);
      const double d = fabs(g - w);
      maxd = d == d ? std::max(maxd, d) : INFINITY;
      maxy = std::max(maxy, fabs(w));
      num += d * d;
      den += w * w;
    }
  }
  const double rel = sqrt(num / den);
  const bool ok = maxd <= 0.02 * maxy && rel <= 1e-2;
  printf("check %-14s %5lld×%-5lld block %3lld, M = 1…8: max |Δ| %.3g (max |y| %.3g), rel L2 %.2e: %s\n", label, (long long)N, (long long)K, (long long)block,
         maxd, maxy, rel, ok ? "ok" : "WRONG");
  for (void* p : {(void*)wf, (void*)xf, (void*)bf, (void*)x, (void*)b, (void*)y, (void*)y9, (void*)q}) cudaFree(p);
  return ok;
}

// The replaced CUDA-core GEMV (k_qgemv4v, as qlinear4 launched it for M ≤ 8), nf4 without double quant, block 64
template <int MR>
static void old_qgemv4(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K, const double* code) {
  namespace Q = kiln::cuda::qdetail;
  constexpr int R = MR <= 2 ? 4 : MR <= 4 ? 2 : 1;
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, 64, false), nullptr, nullptr, y, N};
  J.n = 1;
  const unsigned grid = Q::q4_grid(J, R);
  Q::k_qgemv4v<bf16, MR, R, false><<<grid, 128, 0, kiln::cuda::stream()>>>(x, J, Q::code16(code), K, 6);
}

int main() {
  ck(kiln_init(0), "init");
  const int64_t shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  // correctness first
  double fp4[16];
  fp4_code(fp4);
  bool ok = true;
  for (auto& sh : shapes) {
    ok &= check4<bf16>("bf16 nf4", sh[0], sh[1], 64, false, NF4);
    ok &= check4<bf16>("bf16 nf4+dq", sh[0], sh[1], 64, true, NF4);
  }
  ok &= check4<bf16>("bf16 fp4", 4096, 4096, 64, false, fp4);
  ok &= check4<bf16>("bf16 fp4+dq", 4096, 4096, 64, true, fp4);
  ok &= check4<bf16>("bf16 nf4+dq", 4096, 4096, 128, true, NF4);
  ok &= check4<bf16>("bf16 nf4", 1000, 2048, 64, false, NF4);   // N % 16 ≠ 0, few tiles
  ok &= check4<bf16>("bf16 nf4+dq", 1000, 11008, 64, true, NF4);
  ok &= check4<bf16>("bf16 nf4", 4096, 4096, 32, false, NF4);   // block 32: the CUDA-core k_qgemv4v
  ok &= check4<kiln::f16>("f16 nf4", 4096, 4096, 64, false, NF4);
  ok &= check4<kiln::f16>("f16 fp4+dq", 11008, 4096, 64, true, fp4);
  ok &= check4<float>("f32 nf4", 4096, 4096, 64, false, NF4);  // k_qgemv4v
  const double* nf4 = NF4;
  const int COPIES = 4;
  printf("check: %s\n\n", ok ? "PASS" : "FAIL");
  if (!ok) return 1;
  printf("| N×K | bf16 linear µs (TB/s) | nf4 µs (TB/s) | nf4+dq µs (TB/s) | nf4, old k_qgemv4v µs (TB/s) | int8 µs (TB/s) | max |Δ| GEMV vs prefill path (nf4, int8) |\n|---|---|---|---|---|---|---|\n");
  for (auto& sh : shapes) {
    const int64_t N = sh[0], K = sh[1], n = N * K;
    float *wf, *xf;
    cudaMalloc(&wf, 4 * n);
    cudaMalloc(&xf, 4 * 9 * K);
    bf16 *wb[COPIES], *x, *y, *y9;
    cudaMalloc(&x, 2 * 9 * K);
    cudaMalloc(&y, 2 * N);
    cudaMalloc(&y9, 2 * 9 * N);
    k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, K, 7, 4.f);
    for (int r = 1; r < 9; r++) cudaMemcpyAsync(xf + r * K, xf, 4 * K, cudaMemcpyDeviceToDevice, kiln::cuda::stream());
    k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(xf, x, 9 * K);
    uint8_t *q4[COPIES], *q4d[COPIES], *q8[COPIES];
    const int64_t b4 = kiln::quant::bytes4(n, 64, false), b4d = kiln::quant::bytes4(n, 64, true), b8 = kiln::quant::bytes8(N, K);
    for (int c = 0; c < COPIES; c++) {
      k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, n, 100 + c, 0.05f);
      cudaMalloc(&wb[c], 2 * n);
      k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(wf, wb[c], n);
      cudaMalloc(&q4[c], b4);
      cudaMalloc(&q4d[c], b4d);
      cudaMalloc(&q8[c], b8);
      ck(kiln_quantize4(q4[c], wf, n, 64, 0, nf4), "quantize4");
      ck(kiln_quantize4(q4d[c], wf, n, 64, 1, nf4), "quantize4 dq");
      ck(kiln_quantize8(q8[c], wf, N, K), "quantize8");
    }
    // the GEMV against the prefill path
    double d4 = 0, d8 = 0;
    std::vector<bf16> h1(N), h9(9 * N);
    for (int which = 0; which < 2; which++) {
      if (which == 0) {
        kiln::cuda::qlinear4<bf16>(x, q4[0], nullptr, nullptr, y, 1, N, K, 64, false, nf4);
        kiln::cuda::qlinear4<bf16>(x, q4[0], nullptr, nullptr, y9, 9, N, K, 64, false, nf4);
      } else {
        kiln::cuda::qlinear8<bf16>(x, q8[0], nullptr, nullptr, y, 1, N, K, 6.0);
        kiln::cuda::qlinear8<bf16>(x, q8[0], nullptr, nullptr, y9, 9, N, K, 6.0);
      }
      ck(kiln_synchronize(), "sync");
      cudaMemcpy(h1.data(), y, 2 * N, cudaMemcpyDeviceToHost);
      cudaMemcpy(h9.data(), y9, 2 * 9 * N, cudaMemcpyDeviceToHost);
      double d = 0;
      for (int64_t i = 0; i < N; i++)
        d = std::max(d, (double)fabsf(kiln::Num<bf16>::load(h1[i]) - kiln::Num<bf16>::load(h9[8 * N + i])));
      (which == 0 ? d4 : d8) = d;
    }
    // prefill shape M = 2048: bf16 (cuBLASLt) against LLM.int8 (quantize, int8 GEMM, epilogue)
    bf16 *xp, *yp;
    cudaMalloc(&xp, 2 * 2048 * K);
    cudaMalloc(&yp, 2 * 2048 * N);
    for (int r = 0; r < 2048; r++) cudaMemcpyAsync(xp + r * K, x, 2 * K, cudaMemcpyDeviceToDevice, kiln::cuda::stream());
    const double pb = median_us([&](int i) { kiln::cuda::linear<bf16>(xp, wb[i % COPIES], nullptr, nullptr, yp, 2048, N, K); });
    const double p8 = median_us([&](int i) { kiln::cuda::qlinear8<bf16>(xp, q8[i % COPIES], nullptr, nullptr, yp, 2048, N, K, 6.0); });
    const double p4 = median_us([&](int i) { kiln::cuda::qlinear4<bf16>(xp, q4[i % COPIES], nullptr, nullptr, yp, 2048, N, K, 64, false, nf4); });
    printf("prefill M=2048 %lld×%lld: bf16 %.1f µs, int8 %.1f µs, nf4 %.1f µs\n", (long long)N, (long long)K, pb, p8, p4);
    cudaFree(xp);
    cudaFree(yp);
    const double tb = median_us([&](int i) { kiln::cuda::linear<bf16>(x, wb[i % COPIES], nullptr, nullptr, y, 1, N, K); });
    const double t4 = median_us([&](int i) { kiln::cuda::qlinear4<bf16>(x, q4[i % COPIES], nullptr, nullptr, y, 1, N, K, 64, false, nf4); });
    const double t4d = median_us([&](int i) { kiln::cuda::qlinear4<bf16>(x, q4d[i % COPIES], nullptr, nullptr, y, 1, N, K, 64, true, nf4); });
    const double t8 = median_us([&](int i) { kiln::cuda::qlinear8<bf16>(x, q8[i % COPIES], nullptr, nullptr, y, 1, N, K, 6.0); });
    const double t4o = median_us([&](int i) { old_qgemv4<1>(x, q4[i % COPIES], y, N, K, nf4); });
    ck(kiln_synchronize(), "sync");
    printf("| %lld×%lld | %.1f (%.2f) | %.1f (%.2f) | %.1f (%.2f) | %.1f (%.2f) | %.1f (%.2f) | %.3g, %.3g |\n", (long long)N, (long long)K, tb, 2.0 * n / tb / 1e6, t4,
           b4 / t4 / 1e6, t4d, b4d / t4d / 1e6, t4o, b4 / t4o / 1e6, t8, b8 / t8 / 1e6, d4, d8);
    // M = 2, 4, 8 (y has room for 9 rows)
    double tm[3], to[3];
    const int ms[3] = {2, 4, 8};
    for (int j = 0; j < 3; j++) tm[j] = median_us([&](int i) { kiln::cuda::qlinear4<bf16>(x, q4[i % COPIES], nullptr, nullptr, y9, ms[j], N, K, 64, false, nf4); });
    to[0] = median_us([&](int i) { old_qgemv4<2>(x, q4[i % COPIES], y9, N, K, nf4); });
    to[1] = median_us([&](int i) { old_qgemv4<4>(x, q4[i % COPIES], y9, N, K, nf4); });
    to[2] = median_us([&](int i) { old_qgemv4<8>(x, q4[i % COPIES], y9, N, K, nf4); });
    ck(kiln_synchronize(), "sync");
    printf("nf4 M = 2, 4, 8 %lld×%lld: %.1f, %.1f, %.1f µs (old k_qgemv4v %.1f, %.1f, %.1f µs)\n", (long long)N, (long long)K, tm[0], tm[1], tm[2], to[0], to[1],
           to[2]);
    for (int c = 0; c < COPIES; c++) {
      cudaFree(wb[c]);
      cudaFree(q4[c]);
      cudaFree(q4d[c]);
      cudaFree(q8[c]);
    }
    cudaFree(wf);
    cudaFree(xf);
    cudaFree(x);
    cudaFree(y);
    cudaFree(y9);
  }
  return 0;
}
