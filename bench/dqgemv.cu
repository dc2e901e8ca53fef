// What double quantization costs the 4-bit decode GEMV (qlinear4 at M = 1, nf4, block 64): the
// same GEMV without and with double quantization (8 weight copies rotated, > L2; graph of 20
// calls, median of 15), the dq output checked against the non-dq one's (the same weights quantized
// both ways: rel L2 ≤ 2e-2), and a checksum of the dq output (to compare builds bit for bit).
// bench/NOTES.md has the runs, including a build that made the f64 absmax operands from their
// bits instead of the conversion pipe (bit-identical, slower; not kept).
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <vector>
using bf16 = kiln::bf16;

int main() {
  ck(kiln_init(0), "init");
  cudaStream_t s = kiln::cuda::stream();
  const int64_t shapes[4][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {12288, 4096}};
  bool ok = true;
  printf("| shape | no dq µs | dq µs | dq / no dq | dq checksum |\n|---|---|---|---|---|\n");
  for (auto& sh : shapes) {
    const int64_t N = sh[0], K = sh[1], n = N * K;
    float *wf, *xf;
    cudaMalloc(&wf, 4 * n), cudaMalloc(&xf, 4 * K);
    bf16 *x, *y0, *y1;
    cudaMalloc(&x, 2 * K), cudaMalloc(&y0, 2 * N), cudaMalloc(&y1, 2 * N);
    k_rand<<<1024, 256, 0, s>>>(xf, K, 7, 4.f);
    k_to<bf16><<<1024, 256, 0, s>>>(xf, x, K);
    uint8_t *q0[8], *q1[8];
    for (int c = 0; c < 8; c++) {
      k_rand<<<1024, 256, 0, s>>>(wf, n, 100 + c, 0.05f);
      cudaMalloc(&q0[c], kiln::quant::bytes4(n, 64, false));
      cudaMalloc(&q1[c], kiln::quant::bytes4(n, 64, true));
      ck(kiln_quantize4(q0[c], wf, n, K, 64, 0, NF4), "quantize4");
      ck(kiln_quantize4(q1[c], wf, n, K, 64, 1, NF4), "quantize4 dq");
    }
    auto run = [&](bool dq, int c, bf16* y) { kiln::cuda::qlinear4<bf16>(x, dq ? q1[c] : q0[c], nullptr, nullptr, y, 1, N, K, 64, dq, NF4); };
    run(false, 0, y0);
    run(true, 0, y1);
    ck(kiln_synchronize(), "sync");
    std::vector<bf16> h0(N), h1(N);
    cudaMemcpy(h0.data(), y0, 2 * N, cudaMemcpyDeviceToHost);
    cudaMemcpy(h1.data(), y1, 2 * N, cudaMemcpyDeviceToHost);
    double num = 0, den = 0;
    uint64_t sum = 1469598103934665603ULL;
    for (int64_t i = 0; i < N; i++) {
      const double a = kiln::Num<bf16>::load(h1[i]), b = kiln::Num<bf16>::load(h0[i]);
      num += (a - b) * (a - b), den += b * b;
      uint16_t bits;
      memcpy(&bits, &h1[i], 2);
      sum = (sum ^ bits) * 1099511628211ULL;
    }
    if (!(sqrt(num / den) <= 2e-2)) {
      printf("WRONG %lld×%lld: dq vs no dq rel %.3g\n", (long long)N, (long long)K, sqrt(num / den));
      ok = false;
    }
    const double t0 = median_us([&](int i) { run(false, i % 8, y0); });
    const double t1 = median_us([&](int i) { run(true, i % 8, y1); });
    printf("| %lld×%lld | %.1f | %.1f | %.3f | %016llx |\n", (long long)N, (long long)K, t0, t1, t1 / t0, (unsigned long long)sum);
    for (int c = 0; c < 8; c++) cudaFree(q0[c]), cudaFree(q1[c]);
    cudaFree(wf), cudaFree(xf), cudaFree(x), cudaFree(y0), cudaFree(y1);
  }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
