// GEMV micro-benchmark of the cuda target's decode `linear` (codegen-templates/cuda/kernels.cuh):
// y[M, N] = x[M, K] · W[N, K]ᵀ in bf16 for the Llama-2-7B shapes, timed with CUDA events (median
// of 200 after 20 warm-ups, rotating over enough weight copies to miss L2), next to cuBLASLt on
// the same operands and a device-to-device copy (the bandwidth ceiling). Checks each result
// against Kiln's tiled f32-accumulating GEMM first (output poisoned before every check).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/gemv bench/gemv.cu
//   bench/tmp/gemv [out.json]
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "timing.cuh"
#include <algorithm>
#include <string>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-gemv"; }

using kiln::bf16;

__global__ void k_random(bf16* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;  // a cheap integer hash (Knuth's multiplicative + xorshift)
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    float u = (float)(h & 0xffffff) / 16777216.0f - 0.5f;
    p[i] = kiln::Num<bf16>::store(u * scale);
  }
}

int main(int argc, char** argv) {
  if (kiln_init(0) != 0) {
    fprintf(stderr, "kiln_init: %s\n", kiln_last_error());
    return 1;
  }
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, 0), "props");
  cudaStream_t s = kiln::cuda::stream();
  std::string json = std::string("{\n  \"device\": \"") + prop.name + "\",\n  \"cases\": [\n";

  // ceiling: a 1 GiB device-to-device copy (bytes read + written)
  const size_t cbytes = (size_t)1 << 30;
  void *ca, *cb;
  ck(cudaMalloc(&ca, cbytes), "malloc");
  ck(cudaMalloc(&cb, cbytes), "malloc");
  ck(cudaMemsetAsync(ca, 1, cbytes, s), "memset");
  double copy_us = median_us([&](int) { cudaMemcpyAsync(cb, ca, cbytes, cudaMemcpyDeviceToDevice, s); }, 3, 20);
  double copy_tbs = 2.0 * cbytes / (copy_us * 1e-6) / 1e12;
  cudaFree(ca);
  cudaFree(cb);
  printf("device-to-device copy 1 GiB: %.1f us, %.2f TB/s (read + write)\n", copy_us, copy_tbs);

  // reference: the tiled GEMM (f32 accumulation)
  kiln::cuda::detail::Geo<2> none;
  none.rank = 0;
  for (int i = 0; i < KILN_MAX_RANK; i++) none.d[i] = 1, none.s[0][i] = none.s[1][i] = 0;
  auto relerr = [&](const bf16* a, const bf16* b, int64_t n) {
    std::vector<uint16_t> ha(n), hb(n);
    ck(cudaMemcpyAsync(ha.data(), a, n * 2, cudaMemcpyDeviceToHost, s), "d2h");
    ck(cudaMemcpyAsync(hb.data(), b, n * 2, cudaMemcpyDeviceToHost, s), "d2h");
    ck(cudaStreamSynchronize(s), "sync");
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
      double u = kiln::bf16_bits_to_f32(ha[i]), v = kiln::bf16_bits_to_f32(hb[i]);
      if (u != u) return (double)INFINITY;
      num += (u - v) * (u - v);
      den += v * v;
    }
    return sqrt(num / den);
  };
  auto rnd = [&](int64_t n, uint32_t seed, float scale) {
    bf16* p;
    ck(cudaMalloc(&p, n * 2), "malloc");
    k_random<<<1024, 256, 0, s>>>(p, n, seed, scale);
    return p;
  };
  bool first = true, ok = true;
  const bool lt_ok = kiln::lt::available();
  printf("cuBLASLt available: %s\n", lt_ok ? "yes" : "no");

  struct Case { int M; int64_t N, K; const char* what; };
  const Case cases[] = {{1, 11008, 4096, "gate/up_proj"}, {1, 4096, 11008, "down_proj"}, {1, 4096, 4096, "q/o_proj"}, {1, 32000, 4096, "lm_head"},
                        {2, 11008, 4096, "gate/up M=2"}, {3, 11008, 4096, "gate/up M=3"}, {4, 11008, 4096, "gate/up M=4"}, {8, 11008, 4096, "gate/up M=8"}};
  printf("| M x K -> N | what | linear() us | TB/s | U4/256 | U8/256 | U16/256 | U16/128 | U32/256 | cuBLASLt us | TB/s | rel err |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Case& c : cases) {
    const int64_t wn = c.N * c.K;
    const int copies = (int)std::max<int64_t>(2, (int64_t)(200ll << 20) / (wn * 2) + 1);  // > 200 MB of weights in rotation
    std::vector<bf16*> W(copies);
    for (int i = 0; i < copies; i++) W[i] = rnd(wn, 1234u + i, 0.25f);
    bf16* x = rnd(c.M * c.K, 99u, 2.0f);
    bf16 *y, *yref;
    ck(cudaMalloc(&y, c.M * c.N * 2), "malloc y");
    ck(cudaMalloc(&yref, c.M * c.N * 2), "malloc yref");
    kiln::cuda::detail::gemm_tile<bf16, true>(x, W[0], nullptr, nullptr, yref, c.M, c.N, c.K, none, 1, "ref");
    ck(cudaMemsetAsync(y, 0xff, c.M * c.N * 2, s), "poison");  // NaN pattern
    kiln::cuda::linear<bf16>(x, W[0], nullptr, nullptr, y, c.M, c.N, c.K);
    const double rel = relerr(y, yref, c.M * c.N);
    if (!(rel < 1e-2)) ok = false;
    const double bytes = (double)wn * 2 + c.M * c.K * 2.0 + c.M * c.N * 2.0;
    auto tbs = [&](double us) { return bytes / (us * 1e-6) / 1e12; };
    double us = median_us([&](int i) { kiln::cuda::linear<bf16>(x, W[i % copies], nullptr, nullptr, y, c.M, c.N, c.K); }, 20, 200);
    // GEMV variants at M = 1: loads in flight per lane (U) and threads a block
    double v[5] = {NAN, NAN, NAN, NAN, NAN};
    if (c.M == 1) {
      using namespace kiln::cuda::detail;
      auto var = [&](auto kern, int threads) {
        const unsigned blocks = (unsigned)((c.N * 32 + threads - 1) / threads);
        ck(cudaMemsetAsync(y, 0xff, c.N * 2, s), "poison");
        kern<<<blocks, threads, 0, s>>>(x, W[0], nullptr, nullptr, y, c.N, c.K);
        if (!(relerr(y, yref, c.N) < 1e-2)) ok = false;
        return median_us([&](int i) { kern<<<blocks, threads, 0, s>>>(x, W[i % copies], nullptr, nullptr, y, c.N, c.K); }, 20, 200);
      };
      v[0] = var(k_gemv<bf16, 1, true, 4>, 256);
      v[1] = var(k_gemv<bf16, 1, true, 8>, 256);
      v[2] = var(k_gemv<bf16, 1, true, 16>, 256);
      v[3] = var(k_gemv<bf16, 1, true, 16>, 128);
      v[4] = var(k_gemv<bf16, 1, true, 32>, 256);
    }
    double lt_us = NAN;
    if (lt_ok && kiln::lt::gemm(CUDA_R_16BF, true, false, c.N, c.M, c.K, W[0], c.K, 0, x, c.K, 0, y, c.N, 0, 1, nullptr, "bench"))
      lt_us = median_us([&](int i) { kiln::lt::gemm(CUDA_R_16BF, true, false, c.N, c.M, c.K, W[i % copies], c.K, 0, x, c.K, 0, y, c.N, 0, 1, nullptr, "bench"); },
                        20, 200);
    printf("| %d x %lld -> %lld | %s | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f | %.1e |\n", c.M, (long long)c.K, (long long)c.N, c.what, us,
           tbs(us), tbs(v[0]), tbs(v[1]), tbs(v[2]), tbs(v[3]), tbs(v[4]), lt_us, tbs(lt_us), rel);
    char buf[640];
    snprintf(buf, sizeof buf,
             "%s    {\"M\": %d, \"K\": %lld, \"N\": %lld, \"what\": \"%s\", \"kiln_us\": %.2f, \"kiln_tbs\": %.3f, \"variants_tbs\": {\"U4_256\": %.3f, \"U8_256\": %.3f, "
             "\"U16_256\": %.3f, \"U16_128\": %.3f, \"U32_256\": %.3f}, \"cublaslt_us\": %.2f, \"cublaslt_tbs\": %.3f, \"rel_err\": %.2e}",
             first ? "" : ",\n", c.M, (long long)c.K, (long long)c.N, c.what, us, tbs(us), tbs(v[0]), tbs(v[1]), tbs(v[2]), tbs(v[3]), tbs(v[4]), lt_us, tbs(lt_us), rel);
    json += buf;
    first = false;
    for (auto p : W) cudaFree(p);
    cudaFree(x);
    cudaFree(y);
    cudaFree(yref);
  }
  json += "\n  ],\n  \"gemm\": [\n";

  // larger M through linear()/matmul() (cuBLASLt when present) against the tiled kernel, and the
  // prefill-size GEMM rate
  {
    const int64_t M = 64, N = 4096, K = 4096;
    bf16 *x = rnd(M * K, 7u, 2.0f), *w = rnd(N * K, 8u, 0.25f), *b = rnd(N, 9u, 1.0f), *y, *yr;
    ck(cudaMalloc(&y, M * N * 2), "malloc");
    ck(cudaMalloc(&yr, M * N * 2), "malloc");
    kiln::cuda::detail::gemm_tile<bf16, true>(x, w, b, nullptr, yr, M, N, K, none, 1, "ref");
    ck(cudaMemsetAsync(y, 0xff, M * N * 2, s), "poison");
    kiln::cuda::linear<bf16>(x, w, b, nullptr, y, M, N, K);
    const double rel = relerr(y, yr, M * N);
    if (!(rel < 1e-2)) ok = false;
    printf("linear M=64 N=4096 K=4096 with bias vs tiled: rel err %.1e\n", rel);
    char buf[256];
    snprintf(buf, sizeof buf, "    {\"case\": \"linear M=64 N=4096 K=4096 bias\", \"rel_err_vs_tile\": %.2e}", rel);
    json += buf;
    cudaFree(x), cudaFree(w), cudaFree(b), cudaFree(y), cudaFree(yr);
  }
  {
    // attention-like batched matmul: [2, 8, 96, 64] · [2, 8, 64, 80]
    const int64_t B = 2, H = 8, M = 96, K = 64, N = 80, nb = B * H;
    bf16 *a = rnd(nb * M * K, 11u, 2.0f), *w = rnd(nb * K * N, 12u, 1.0f), *y, *yr;
    ck(cudaMalloc(&y, nb * M * N * 2), "malloc");
    ck(cudaMalloc(&yr, nb * M * N * 2), "malloc");
    kiln::Shape batch{2, {B, H}};
    kiln::Strides sa{{H * M * K, M * K}}, sb{{H * K * N, K * N}};
    const int64_t* st[2] = {sa.s, sb.s};
    kiln::cuda::detail::Geo<2> g = kiln::cuda::detail::coalesce<2>(batch, st);
    kiln::cuda::detail::gemm_tile<bf16, false>(a, w, nullptr, nullptr, yr, M, N, K, g, nb, "ref");
    ck(cudaMemsetAsync(y, 0xff, nb * M * N * 2, s), "poison");
    kiln::cuda::matmul<bf16>(a, w, y, batch, sa, sb, M, N, K);
    const double rel = relerr(y, yr, nb * M * N);
    if (!(rel < 1e-2)) ok = false;
    printf("batched matmul [2,8,96,64]x[2,8,64,80] vs tiled: rel err %.1e\n", rel);
    char buf[256];
    snprintf(buf, sizeof buf, ",\n    {\"case\": \"matmul [2,8,96,64]x[2,8,64,80]\", \"rel_err_vs_tile\": %.2e}", rel);
    json += buf;
    cudaFree(a), cudaFree(w), cudaFree(y), cudaFree(yr);
  }
  {
    const int64_t M = 4096, N = 4096, K = 4096;
    bf16 *x = rnd(M * K, 21u, 2.0f), *w = rnd(N * K, 22u, 0.25f), *y;
    ck(cudaMalloc(&y, M * N * 2), "malloc");
    double us = median_us([&](int) { kiln::cuda::linear<bf16>(x, w, nullptr, nullptr, y, M, N, K); }, 5, 30);
    double tflops = 2.0 * M * N * K / (us * 1e-6) / 1e12;
    printf("linear 4096^3 bf16 (prefill GEMM): %.1f us, %.0f TFLOP/s\n", us, tflops);
    char buf[256];
    snprintf(buf, sizeof buf, ",\n    {\"case\": \"linear 4096^3\", \"us\": %.1f, \"tflops\": %.1f}", us, tflops);
    json += buf;
    cudaFree(x), cudaFree(w), cudaFree(y);
  }
  json += "\n  ]";
  char tail[256];
  snprintf(tail, sizeof tail, ",\n  \"copy_tbs\": %.3f,\n  \"checks_ok\": %s\n}\n", copy_tbs, ok ? "true" : "false");
  json += tail;
  ck(cudaGetLastError(), "last error");
  // JSON has no NaN: cases without a number (variants at M > 1, no cuBLASLt) are null
  for (size_t at; (at = json.find(": nan")) != std::string::npos;) json.replace(at, 5, ": null");
  for (size_t at; (at = json.find(": -nan")) != std::string::npos;) json.replace(at, 6, ": null");
  if (argc > 1) {
    FILE* f = fopen(argv[1], "w");
    if (f) {
      fputs(json.c_str(), f);
      fclose(f);
    }
  }
  printf("checks: %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
