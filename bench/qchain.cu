// A 7B decode step's 4-bit GEMVs in the order a step runs them, as one graph: per layer the q/k/v
// group computing its RMSNorm (k_qgemv4p), a small kernel standing in for the attention (y = q),
// o with the residual, gate/up paired computing its norm with silu·up, down with the residual —
// 32 layers with weights of their own (nf4, block 64, ≈ 3.6 GB: no layer's weights in L2 when it
// runs). µs a step (graph_timer.cuh: a graph of 20 steps, median of 15) with k_qgemv4p launched
// plainly or as a programmatic dependent (q4p_pdl), and o/down on k_qgemv4v or k_qgemv4p
// (q4p_force); checks that the launch mode does not change a bit of the step's output.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -I bench -ldl -o bench/tmp/qchain bench/qchain.cu
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <string.h>
#include <vector>

namespace Q = kiln::cuda::qdetail;
using kiln::bf16;
using kiln::cuda::qlinear4;

constexpr int L = 32;
constexpr int64_t H = 4096, F = 11008;

struct Layer {
  uint8_t *q, *k, *v, *o, *gate, *up, *down;
  bf16 *g1, *g2;  // the two norms' weights
};

// the attention's stand-in: one small grid, plainly launched, reading q and writing its own output
__global__ void k_attn_standin(const bf16* __restrict__ q, bf16* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) y[i] = q[i];
}

int main() {
  ck(kiln_init(0), "init");
  cudaStream_t s = kiln::cuda::stream();
  float* wf;
  cudaMalloc(&wf, 4 * F * H);
  bool dq = false;  // the layers being built: double-quantized or not
  auto quant = [&](int64_t n, int64_t K, uint32_t seed) {  // n weights in rows of K
    uint8_t* w;
    cudaMalloc(&w, kiln::quant::bytes4(n, 64, dq));
    k_rand<<<1024, 256, 0, s>>>(wf, n, seed, 0.05f);
    ck(kiln_quantize4(w, wf, n, K, 64, dq, NF4), "quantize4");
    return w;
  };
  auto vec = [&](int64_t n, uint32_t seed, float scale, float bias) {
    bf16* p;
    cudaMalloc(&p, 2 * n);
    k_rand<<<256, 256, 0, s>>>(wf, n, seed, scale);
    std::vector<float> h(n);
    cudaMemcpy(h.data(), wf, 4 * n, cudaMemcpyDeviceToHost);
    std::vector<bf16> b(n);
    for (int64_t i = 0; i < n; i++) b[i] = kiln::Num<bf16>::store(h[i] + bias);
    cudaMemcpy(p, b.data(), 2 * n, cudaMemcpyHostToDevice);
    return p;
  };
  std::vector<Layer> lsets[2];
  for (int d = 0; d < 2; d++) {
    dq = d;
    lsets[d].resize(L);
    for (int l = 0; l < L; l++) {
      const uint32_t b = 1000 + 16 * l;
      lsets[d][l] = {quant(H * H, H, b), quant(H * H, H, b + 1), quant(H * H, H, b + 2), quant(H * H, H, b + 3), quant(F * H, H, b + 4), quant(F * H, H, b + 5), quant(H * F, F, b + 6),
                     vec(H, b + 7, 0.2f, 1.f), vec(H, b + 8, 0.2f, 1.f)};
    }
  }
  bf16* h0 = vec(H, 7, 2.f, 0.f);  // the step's input (the embedding's row)
  bf16 *h[2], *xn, *yq, *yk, *yv, *att, *h2, *act;
  for (auto** p : {&h[0], &h[1], &xn, &yq, &yk, &yv, &att, &h2}) cudaMalloc(p, 2 * H);
  cudaMalloc(&act, 2 * F);
  ck(cudaStreamSynchronize(s) == cudaSuccess ? 0 : 1, "set-up");
  // one step: h0 → 32 layers → h[…]; returns the output buffer
  auto step = [&](bool dq) {
    const bf16* x = h0;
    for (int l = 0; l < L; l++) {
      const Layer& w = lsets[dq][l];
      kiln::cuda::qlinear4_group_norm<bf16>(x, w.g1, 1e-5, true, xn, 1, H, 64, dq, NF4,
                                            {{w.q, nullptr, nullptr, yq, H}, {w.k, nullptr, nullptr, yk, H}, {w.v, nullptr, nullptr, yv, H}});
      k_attn_standin<<<32, 128, 0, s>>>(yq, att, H);
      qlinear4<bf16>(att, w.o, nullptr, x, h2, 1, H, H, 64, dq, NF4);
      kiln::cuda::qlinear4_silu_mul_norm<bf16>(h2, w.g2, 1e-5, true, xn, 1, H, 64, dq, NF4, {w.gate, nullptr, nullptr, nullptr, F},
                                               {w.up, nullptr, nullptr, nullptr, F}, act);
      bf16* out = h[l & 1];
      qlinear4<bf16>(act, w.down, nullptr, h2, out, 1, H, F, 64, dq, NF4);
      x = out;
    }
    return x;
  };
  struct Mode {
    const char* name;
    bool pdl, force, dq = false;
  };
  // (launched as dependents, k_qgemv4p takes o and down too: q4p_takes)
  const Mode modes[] = {{"o/down k_qgemv4v, plain launches (production before)", false, false},
                        {"all k_qgemv4p, plain launches", false, true},
                        {"all k_qgemv4p, programmatic dependents", true, true},
                        {"double quant: k_qgemv4v and the norm kernels, plain launches (production before)", false, false, true},
                        {"double quant: all k_qgemv4p, programmatic dependents", true, true, true}};
  const int NM = sizeof(modes) / sizeof(modes[0]);
  std::vector<std::vector<bf16>> out(NM, std::vector<bf16>(H));
  std::vector<std::vector<double>> t(NM);
  const int REPS = getenv("QC_REPS") ? atoi(getenv("QC_REPS")) : 3;
  for (int r = 0; r < REPS; r++)
    for (int m = 0; m < NM; m++) {
      Q::q4p_pdl() = modes[m].pdl;
      Q::q4p_force() = modes[m].force;
      const bf16* y = step(modes[m].dq);
      ck(cudaStreamSynchronize(s) == cudaSuccess ? 0 : 1, modes[m].name);
      cudaMemcpy(out[m].data(), y, 2 * H, cudaMemcpyDeviceToHost);
      t[m].push_back(median_us([&](int) { step(modes[m].dq); }));
    }
  bool ok = true;
  printf("| mode | µs a step (runs) |\n|---|---|\n");
  for (int m = 0; m < NM; m++) {
    printf("| %s |", modes[m].name);
    for (double v : t[m]) printf(" %.1f", v);
    printf(" |\n");
  }
  // the launch mode changes no bit; o/down on k_qgemv4p (f16 products) differ from k_qgemv4v's f32 ones
  {
    const int m = 2;
    int64_t diff = 0;
    for (int64_t i = 0; i < H; i++) diff += memcmp(&out[m][i], &out[m - 1][i], 2) != 0;
    printf("%s vs plain: %lld of %lld outputs differ\n", modes[m].name, (long long)diff, (long long)H);
    if (diff) ok = false;
  }
  // k_qgemv4p (f16 products) against k_qgemv4v (f32) after 32 layers, without and with double quant
  for (int m : {1, 4}) {
    const int ref = m == 1 ? 0 : 3;
    double num = 0, den = 0;
    for (int64_t i = 0; i < H; i++) {
      const double a = kiln::Num<bf16>::load(out[m][i]), b = kiln::Num<bf16>::load(out[ref][i]);
      num += (a - b) * (a - b), den += b * b;
    }
    printf("%s vs %s: rel L2 %.2e (f16 products)\n", modes[m].name, modes[ref].name, sqrt(num / den));
    if (!(sqrt(num / den) < 5e-2)) ok = false;
  }
  // a hash of each mode's output bits, to compare builds (QC_HASH=1)
  if (getenv("QC_HASH"))
    for (int m = 0; m < NM; m++) {
      uint64_t h = 1469598103934665603ull;
      for (int64_t i = 0; i < H; i++) {
        uint16_t b;
        memcpy(&b, &out[m][i], 2);
        h = (h ^ b) * 1099511628211ull;
      }
      printf("hash %d %016llx\n", m, (unsigned long long)h);
    }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
