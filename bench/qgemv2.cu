// The persistent 4-bit decode GEMV (quant.cuh k_qgemv4p) against the one it replaces at M = 1
// (k_qgemv4v), both through qlinear4's own entry points, with q4p_switch() turning k_qgemv4p on and
// off in one process: nf4, block 64, bf16 x, Llama-2-7B shapes, 8 weight copies rotated (> L2),
// graph of 20 calls, median of 15 (graph_timer.cuh). Rows:
// - one linear (q4p takes it from 32 M weights: not 4096 × 4096);
// - gate/up paired (silu·up in the epilogue), N of each;
// - an RMSNorm then the linear(s) reading it: off = the norm kernel + k_qgemv4v, on = k_qgemv4p
//   computing the norm as it stages x (qlinear4_norm / qlinear4_group_norm / qlinear4_silu_mul_norm
//   with fused = true) — the 12288 × 4096 shape as q/k/v (three jobs of 4096);
// QG_ONCE=1: each call once, no timing (a run for ncu).
// Checks (rel L2 against the off path ≤ 1e-2; the fused norm against norm kernel + k_qgemv4p ≤ 1e-3).
// The design's history (k_v4, the experiment it came from: persistent blocks, the byte → f16 pair
// table, x staged in f16, prefetching across row groups) is in bench/NOTES.md and
// bench/results/qgemv2-2026-11-26.json.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -I bench -ldl -o bench/tmp/qgemv2 bench/qgemv2.cu
#include <cuda_fp16.h>
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <vector>

namespace Q = kiln::cuda::qdetail;
using kiln::bf16;

static Q::Code16 g_code;

static void run_vec(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, K, 64, false), nullptr, nullptr, y, N};
  J.n = 1;
  Q::qgemv4<bf16>(x, J, g_code, 1, K, 64, Q::Q4_VEC, kiln::cuda::stream());
}

static bf16* g_xp;     // the norm's input (x is its result)
static bf16* g_gamma;  // the norm's weight
static uint8_t* g_q4[8];
static uint8_t* g_qkv[8][3];  // N = 3K: q, k, v as three K × K weights of their own
static int copy_of(const uint8_t* w) {
  int c = 0;
  while (c < 7 && g_q4[c] != w) c++;
  return c;
}
static const uint8_t* next_copy(const uint8_t* w) { return g_q4[(copy_of(w) + 1) % 8]; }
static void run_pair(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  kiln::cuda::qlinear4_silu_mul<bf16>(x, 1, K, 64, false, NF4, {w, nullptr, nullptr, nullptr, N}, {next_copy(w), nullptr, nullptr, nullptr, N}, y);
}
// the norm, then the linear(s) reading its result x: fused (k_qgemv4p) when q4p is on, else the
// norm kernel into x and the plain call — what a decode step runs either way
static void run_norm(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  const bool on = Q::q4p_switch();
  if (N == 3 * K) {  // q/k/v: three jobs of K rows each
    uint8_t* const* qkv = g_qkv[copy_of(w)];
    const uint8_t *q = qkv[0], *k = qkv[1], *v = qkv[2];
    if (!on) kiln::cuda::rms_norm<bf16>(g_xp, g_gamma, (bf16*)x, 1, K, 1e-5);
    kiln::cuda::qlinear4_group_norm<bf16>(g_xp, g_gamma, 1e-5, on, (bf16*)x, 1, K, 64, false, NF4,
                                          {{q, nullptr, nullptr, y, K}, {k, nullptr, nullptr, y + K, K}, {v, nullptr, nullptr, y + 2 * K, K}});
  } else {
    if (!on) kiln::cuda::rms_norm<bf16>(g_xp, g_gamma, (bf16*)x, 1, K, 1e-5);
    kiln::cuda::qlinear4_norm<bf16>(g_xp, g_gamma, 1e-5, on, (bf16*)x, w, nullptr, nullptr, y, 1, N, K, 64, false, NF4);
  }
}
static void run_pair_norm(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  const bool on = Q::q4p_switch();
  if (!on) kiln::cuda::rms_norm<bf16>(g_xp, g_gamma, (bf16*)x, 1, K, 1e-5);
  kiln::cuda::qlinear4_silu_mul_norm<bf16>(g_xp, g_gamma, 1e-5, on, (bf16*)x, 1, K, 64, false, NF4, {w, nullptr, nullptr, nullptr, N},
                                           {next_copy(w), nullptr, nullptr, nullptr, N}, y);
}
struct Variant {
  const char* name;
  void (*launch)(const bf16*, const uint8_t*, bf16*, int64_t, int64_t);
};

int main() {
  ck(kiln_init(0), "init");
  g_code = Q::code16(NF4);
  const bool once = getenv("QG_ONCE") != nullptr;  // each variant launched once, untimed (for ncu)
  Q::q4p_force() = true;  // k_qgemv4p for the plain linears too (decode runs it only with a norm to compute)
  const Variant vs[] = {
      {"one linear", run_vec},
      {"gate/up paired (N each; TB/s of both)", run_pair},
      {"RMSNorm → linear (12288: → q/k/v)", run_norm},
      {"RMSNorm → gate/up paired", run_pair_norm},
  };
  const int NV = sizeof(vs) / sizeof(vs[0]);
  const int64_t shapes[4][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {12288, 4096}};
  // QG_HOT=1: the timed calls all read copy 0 (L2-resident from 4096 × 4096 to 12288 × 4096 nf4):
  // how much of a GEMV's time is DRAM, against the default 8 copies rotated
  const int COPIES = 8, ROT = getenv("QG_HOT") ? 1 : COPIES;
  bool ok = true;
  std::vector<std::vector<double>> t(2 * NV, std::vector<double>(4, 0.0));
  for (int si = 0; si < 4; si++) {
    const int64_t N = shapes[si][0], K = shapes[si][1], n = N * K;
    float *wf, *xf;
    cudaMalloc(&wf, 4 * n);
    cudaMalloc(&xf, 4 * K);
    bf16 *x, *y, *y0;
    cudaMalloc(&x, 2 * K);
    cudaMalloc(&g_xp, 2 * K);
    cudaMalloc(&g_gamma, 2 * K);
    cudaMalloc(&y, 2 * N);
    cudaMalloc(&y0, 2 * N);
    k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, K, 7, 4.f);
    k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(xf, x, K);
    k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, K, 8, 40.f);  // the norm's input: large values
    k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(xf, g_xp, K);
    k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, K, 9, 2.f);
    k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(xf, g_gamma, K);
    const int64_t b4 = kiln::quant::bytes4(n, 64, false);
    for (int c = 0; c < COPIES; c++) {
      k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, n, 100 + c, 0.05f);
      cudaMalloc(&g_q4[c], b4);
      ck(kiln_quantize4(g_q4[c], wf, n, K, 64, 0, NF4), "quantize4");
      for (int j = 0; j < 3 && N == 3 * K; j++) {
        cudaMalloc(&g_qkv[c][j], kiln::quant::bytes4(K * K, 64, false));
        ck(kiln_quantize4(g_qkv[c][j], wf + j * K * K, K * K, K, 64, 0, NF4), "quantize4 qkv");
      }
    }
    for (int v = 0; v < NV; v++) {
      const int64_t outN = N;  // every variant writes N outputs (paired: N of silu·up)
      std::vector<bf16> h[2];
      for (int on = 0; on < 2; on++) {
        Q::q4p_switch() = on;
        cudaMemset(y, 0xff, 2 * outN);
        vs[v].launch(x, g_q4[0], y, N, K);
        ck(cudaDeviceSynchronize(), vs[v].name);
        h[on].resize(outN);
        cudaMemcpy(h[on].data(), y, 2 * outN, cudaMemcpyDeviceToHost);
        if (!once) t[2 * v + on][si] = median_us([&](int i) { vs[v].launch(x, g_q4[i % ROT], y, N, K); });
      }
      double num = 0, den = 0;
      for (int64_t i = 0; i < outN; i++) {
        const double a = kiln::Num<bf16>::load(h[1][i]), b = kiln::Num<bf16>::load(h[0][i]);
        num += (a - b) * (a - b);
        den += b * b;
      }
      const double rel = sqrt(num / den);
      printf("%s %lld×%lld: rel L2 on vs off %.2e\n", vs[v].name, (long long)N, (long long)K, rel);
      if (!(rel <= 1e-2)) ok = false;
    }
    // the fused norm against the norm kernel + the same persistent GEMV
    {
      Q::q4p_switch() = true;
      std::vector<bf16> a(N), b(N);
      run_norm(x, g_q4[0], y, N, K);
      ck(cudaDeviceSynchronize(), "fused");
      cudaMemcpy(a.data(), y, 2 * N, cudaMemcpyDeviceToHost);
      kiln::cuda::rms_norm<bf16>(g_xp, g_gamma, x, 1, K, 1e-5);
      if (N == 3 * K) {
        uint8_t* const* q = g_qkv[0];
        kiln::cuda::qlinear4_group<bf16>(x, 1, K, 64, false, NF4, {{q[0], nullptr, nullptr, y, K}, {q[1], nullptr, nullptr, y + K, K}, {q[2], nullptr, nullptr, y + 2 * K, K}});
      } else {
        kiln::cuda::qlinear4<bf16>(x, g_q4[0], nullptr, nullptr, y, 1, N, K, 64, false, NF4);
      }
      ck(cudaDeviceSynchronize(), "unfused");
      cudaMemcpy(b.data(), y, 2 * N, cudaMemcpyDeviceToHost);
      int64_t diff = 0;
      for (int64_t i = 0; i < N; i++) diff += memcmp(&a[i], &b[i], 2) != 0;
      printf("fused norm vs norm kernel + the same GEMV %lld×%lld: %lld of %lld outputs differ\n", (long long)N, (long long)K, (long long)diff, (long long)N);
      // (below 32 M weights a plain linear runs k_qgemv4v: the reference then differs in its f32 sums)
      if (N * K >= ((int64_t)32 << 20) && diff * 100 > N) ok = false;
    }
    for (int c = 0; c < COPIES; c++) {
      cudaFree(g_q4[c]);
      for (int j = 0; j < 3 && N == 3 * K; j++) cudaFree(g_qkv[c][j]);
    }
    cudaFree(wf), cudaFree(xf), cudaFree(x), cudaFree(y), cudaFree(y0), cudaFree(g_xp), cudaFree(g_gamma);
  }
  printf("| µs: k_qgemv4v → k_qgemv4p |");
  for (auto& sh : shapes) printf(" %lld×%lld |", (long long)sh[0], (long long)sh[1]);
  printf("\n|---|---|---|---|---|\n");
  for (int v = 0; v < NV; v++) {
    printf("| %s |", vs[v].name);
    for (int si = 0; si < 4; si++) printf(" %.1f → %.1f |", t[2 * v][si], t[2 * v + 1][si]);
    printf("\n");
  }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
