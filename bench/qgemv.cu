// Micro-benchmark of the quantized decode GEMVs (codegen-templates/cuda/quant.cuh) on the
// Llama-2-7B shapes, M = 1, bf16 activations: NF4 (± double quant) and LLM.int8 next to the bf16
// `linear`, timed with CUDA events over a replayed CUDA graph of 20 calls (median of 15), rotating over 4 weight copies
// to miss L2; bandwidth counts the packed weight bytes, and the prefill shapes at M = 2048. Checks first that the GEMV (M = 1) agrees
// with the prefill path (M = 9 identical rows: dequantize + cuBLASLt for 4-bit, the int8 GEMM for
// int8). Weights are quantized on the GPU by kiln_quantize4/8.
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
__global__ void k_to_bf16(const float* a, bf16* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) b[i] = kiln::Num<bf16>::store(a[i]);
}
static void ck(int rc, const char* what) {
  if (rc) {
    fprintf(stderr, "%s failed: %s\n", what, kiln_last_error());
    exit(1);
  }
}

int main() {
  ck(kiln_init(0), "init");
  double nf4[16];  // any 16 sorted values in [-1, 1] time the same: an evenly spaced code
  for (int i = 0; i < 16; i++) nf4[i] = -1.0 + 2.0 * i / 15;
  const int64_t shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  const int COPIES = 4;
  printf("| N×K | bf16 linear µs (TB/s) | nf4 µs (TB/s) | nf4+dq µs (TB/s) | int8 µs (TB/s) | max |Δ| GEMV vs prefill path (nf4, int8) |\n|---|---|---|---|---|---|\n");
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
    k_to_bf16<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, x, 9 * K);
    uint8_t *q4[COPIES], *q4d[COPIES], *q8[COPIES];
    const int64_t b4 = kiln::quant::bytes4(n, 64, false), b4d = kiln::quant::bytes4(n, 64, true), b8 = kiln::quant::bytes8(N, K);
    for (int c = 0; c < COPIES; c++) {
      k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, n, 100 + c, 0.05f);
      cudaMalloc(&wb[c], 2 * n);
      k_to_bf16<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, wb[c], n);
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
    ck(kiln_synchronize(), "sync");
    printf("| %lld×%lld | %.1f (%.2f) | %.1f (%.2f) | %.1f (%.2f) | %.1f (%.2f) | %.3g, %.3g |\n", (long long)N, (long long)K, tb, 2.0 * n / tb / 1e6, t4, b4 / t4 / 1e6, t4d,
           b4d / t4d / 1e6, t8, b8 / t8 / 1e6, d4, d8);
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
