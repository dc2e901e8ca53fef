// 4-bit prefill's dequantization (qlinear4 at M > 8 writes the weight in T, then the 16-bit GEMM):
// k_dequant4w (4 bytes of codes a thread a step: contiguous warp loads and stores) against the
// byte-a-thread k_dequant4 it replaced, on the Llama-2-7B shapes, nf4 block 64 ± double quant, bf16
// out: µs and TB/s of bytes moved (codes + absmax read, T written), and a bit-for-bit check against
// k_dequant4. 8 weight copies rotated (> L2), graph of 20 calls, median of 15.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/dequant bench/dequant.cu
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-dequant"; }
using kiln::bf16;
namespace Q = kiln::cuda::qdetail;
namespace D = kiln::cuda::detail;

int main() {
  ck(kiln_init(0), "init");
  const Q::Code16 code = Q::code16(NF4);
  const int64_t shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  const int COPIES = 8;
  bool ok = true;
  printf("| weight | double quant | k_dequant4 µs (TB/s) | k_dequant4w µs (TB/s) | same bits |\n|---|---|---|---|---|\n");
  for (auto& sh : shapes)
    for (int dq = 0; dq < 2; dq++) {
      const int64_t n = sh[0] * sh[1];
      float* wf;
      cudaMalloc(&wf, 4 * n);
      bf16 *a, *b;
      cudaMalloc(&a, 2 * n);
      cudaMalloc(&b, 2 * n);
      uint8_t* q4[COPIES];
      const int64_t b4 = kiln::quant::bytes4(n, 64, dq);
      for (int c = 0; c < COPIES; c++) {
        k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, n, 500 + c, 0.05f);
        cudaMalloc(&q4[c], b4);
        ck(kiln_quantize4(q4[c], wf, n, sh[1], 64, dq, NF4), "quantize4");
      }
      auto byte = [&](int i) {
        Q::k_dequant4<bf16><<<D::grid_for((n + 1) / 2, D::kThreads), D::kThreads, 0, kiln::cuda::stream()>>>(Q::q4_of(q4[i % COPIES], n, sh[1], 64, dq), code, a, n);
      };
      auto vec = [&](int i) {
        Q::k_dequant4w<bf16><<<D::grid_for(n / 8, 256), 256, 0, kiln::cuda::stream()>>>(Q::q4_of(q4[i % COPIES], n, sh[1], 64, dq), code, b, n / 8, 3);
      };
      byte(0), vec(0);
      ck(kiln_synchronize(), "sync");
      std::vector<uint16_t> ha(n), hb(n);
      cudaMemcpy(ha.data(), a, 2 * n, cudaMemcpyDeviceToHost);
      cudaMemcpy(hb.data(), b, 2 * n, cudaMemcpyDeviceToHost);
      const bool same = ha == hb;
      ok = ok && same;
      const double t0 = median_us(byte), t1 = median_us(vec), bytes = (double)b4 + 2.0 * n;
      printf("| %lld×%lld | %s | %.1f (%.2f) | %.1f (%.2f) | %s |\n", (long long)sh[0], (long long)sh[1], dq ? "yes" : "no", t0, bytes / t0 / 1e6, t1, bytes / t1 / 1e6,
             same ? "yes" : "NO");
      for (int c = 0; c < COPIES; c++) cudaFree(q4[c]);
      cudaFree(wf), cudaFree(a), cudaFree(b);
    }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
