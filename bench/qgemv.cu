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
// or "check: FAIL" (exit 1). Weights are quantized on the GPU by kiln_quantize4/8. The checks also
// hold the grouped launches (check_group: q/k/v in one qlinear4_group launch, gate/up + silu·up in
// one qlinear4_silu_mul launch) against separate ones; their times close the output (time_groups).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/qgemv bench/qgemv.cu
//   bench/tmp/qgemv
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-qgemv"; }
using kiln::bf16;

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
  ck(kiln_quantize4(q, wf, N * K, K, block, dq, code), "quantize4");
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

// The fused elementwise kernel the codegen emits for a Llama MLP's `(mul:T (silu:T $0) $1)` on
// contiguous operands (emit.ts emitElementwise's output for T = bf16, copied; W and the store follow T):
// the unfused path's product.
template <typename T>
struct SiluMulF {
  const T* a0;  // contig
  const T* a1;  // contig
  T* y;
  kiln::Shape out;
  static constexpr int W = 16 / sizeof(T);
  KILN_HD T at(const float x0, const float x1) const {
    const float t0 = kiln::rnd<T>(kiln::OpSilu()(x0));
    const float t1 = kiln::rnd<T>((float)kiln::OpMul()(t0, x1));
    if constexpr (std::is_same<T, bf16>::value) return kiln::bf16_of_rounded(t1);
    else return kiln::Num<T>::store(t1);
  }
  KILN_HD void operator()(int64_t i) const { y[i] = at(kiln::Num<T>::load(a0[i]), kiln::Num<T>::load(a1[i])); }
  KILN_HD void chunk(int64_t i) const {
    float x0[W];
    kiln::load_run<W>(x0, a0 + i);
    float x1[W];
    kiln::load_run<W>(x1, a1 + i);
    T r[W];
    KILN_UNROLL
    for (int j = 0; j < W; j++) r[j] = at(x0[j], x1[j]);
    kiln::store_run<W>(y + i, r);
  }
  bool chunkable() const { return kiln::aligned16(y) && kiln::aligned16(a0) && kiln::aligned16(a1); }
};
template <typename T>
static void silu_mul_separate(const T* g, const T* u, T* y, int64_t M, int64_t N) {
  kiln::cuda::for_each(SiluMulF<T>{g, u, y, kiln::Shape{2, {M, N}}}, M * N);
}

// |a − b| in units in the last place of T (at the larger magnitude); 0 when equal, ∞ for a NaN
template <typename T>
static double ulps(T a, T b) {
  const double x = kiln::Num<T>::load(a), y = kiln::Num<T>::load(b);
  if (x == y) return 0;
  if (x != x || y != y) return INFINITY;
  const int mant = sizeof(T) == 4 ? 23 : std::is_same<T, bf16>::value ? 7 : 10;
  int e;
  frexp(std::max(fabs(x), fabs(y)), &e);
  return fabs(x - y) / ldexp(1.0, e - 1 - mant);
}

// Linears reading one x in one launch — qlinear4_group, or paired (gate, up) qlinear4_silu_mul —
// against separate qlinear4 launches (+ the emitted elementwise product when paired), at M = 1…8
// distinct rows of x, a bias on the first linear and a residual on the second. Bit-identical
// where the grouped launch runs each linear's own kernel; on the tensor-core path (bf16/f16,
// M ≥ 3, K and block multiples of 64) a grouped launch may split K over fewer warps than a lone
// one (f32 sums reassociated): there within 2 ulps of T (of the product, paired). Paired, also
// against silu·up computed on the host (kiln::silu_mul, host expf) from the separate outputs:
// within 1 ulp of T. One line; false when out of bounds.
template <typename T>
static bool check_group(const char* label, bool pair, std::vector<int64_t> Ns, int64_t K, int64_t block, bool dq, const double* code) {
  cudaStream_t s = kiln::cuda::stream();
  const int n = (int)Ns.size();
  float* xf;
  cudaMalloc(&xf, 4 * 8 * K);
  k_rand<<<1024, 256, 0, s>>>(xf, 8 * K, 91, 4.f);
  T* x;
  cudaMalloc(&x, sizeof(T) * 8 * K);
  k_to<T><<<1024, 256, 0, s>>>(xf, x, 8 * K);
  std::vector<uint8_t*> w(n);
  std::vector<T*> ys(n), yg(n), extra(n);  // separate and grouped outputs [8, N]; a bias (member 0) or residual (member 1)
  for (int i = 0; i < n; i++) {
    const int64_t N = Ns[i];
    float* wf;
    cudaMalloc(&wf, 4 * N * K);
    k_rand<<<1024, 256, 0, s>>>(wf, N * K, 300 + i, 0.05f);
    cudaMalloc(&w[i], kiln::quant::bytes4(N * K, block, dq));
    ck(kiln_quantize4(w[i], wf, N * K, K, block, dq, code), "quantize4");
    cudaFree(wf);
    cudaMalloc(&ys[i], sizeof(T) * 8 * N);
    cudaMalloc(&yg[i], sizeof(T) * 8 * N);
    float* ef;
    cudaMalloc(&ef, 4 * 8 * N);
    k_rand<<<1024, 256, 0, s>>>(ef, 8 * N, 500 + i, 1.f);
    cudaMalloc(&extra[i], sizeof(T) * 8 * N);
    k_to<T><<<1024, 256, 0, s>>>(ef, extra[i], 8 * N);
    cudaFree(ef);
  }
  T *ps = nullptr, *pg = nullptr;  // paired: the product, separate and grouped
  if (pair) cudaMalloc(&ps, sizeof(T) * 8 * Ns[0]), cudaMalloc(&pg, sizeof(T) * 8 * Ns[0]);
  auto linear = [&](int i, T* y) { return kiln::quant::Q4Linear<T>{w[i], i == 0 ? extra[0] : nullptr, i == 1 ? extra[1] : nullptr, y, Ns[i]}; };
  const int64_t N0 = Ns[0];
  int64_t diff = 0, total = 0;
  double worst = 0, worst_host = 0;
  bool ok = true;
  for (int M = 1; M <= 8; M++) {
    const bool mma = M >= 3 && K % 64 == 0 && block % 64 == 0 && sizeof(T) == 2;
    for (int i = 0; i < n; i++) {
      const kiln::quant::Q4Linear<T> l = linear(i, ys[i]);
      kiln::cuda::qlinear4<T>(x, l.w, l.bias, l.res, l.y, M, l.N, K, block, dq, code);
      cudaMemset(yg[i], 0xff, sizeof(T) * 8 * Ns[i]);  // NaN: a row the grouped launch misses fails
    }
    if (pair) {
      silu_mul_separate<T>(ys[0], ys[1], ps, M, N0);
      cudaMemset(pg, 0xff, sizeof(T) * 8 * N0);
      kiln::cuda::qlinear4_silu_mul<T>(x, M, K, block, dq, code, linear(0, nullptr), linear(1, nullptr), pg);
    } else if (n == 2) {
      kiln::cuda::qlinear4_group<T>(x, M, K, block, dq, code, {linear(0, yg[0]), linear(1, yg[1])});
    } else {
      kiln::cuda::qlinear4_group<T>(x, M, K, block, dq, code, {linear(0, yg[0]), linear(1, yg[1]), linear(2, yg[2])});
    }
    ck(kiln_synchronize(), "sync");
    for (int i = 0; i < (pair ? 1 : n); i++) {
      std::vector<T> a(M * Ns[i]), b(M * Ns[i]);
      cudaMemcpy(a.data(), pair ? ps : ys[i], sizeof(T) * M * Ns[i], cudaMemcpyDeviceToHost);
      cudaMemcpy(b.data(), pair ? pg : yg[i], sizeof(T) * M * Ns[i], cudaMemcpyDeviceToHost);
      for (size_t e = 0; e < a.size(); e++) {
        const double d = ulps(a[e], b[e]);
        diff += d != 0;
        total++;
        worst = std::max(worst, d);
        if (mma ? !(d <= 2) : d != 0) ok = false;
      }
    }
    if (pair) {
      std::vector<T> g(M * N0), u(M * N0), p(M * N0);
      cudaMemcpy(g.data(), ys[0], sizeof(T) * M * N0, cudaMemcpyDeviceToHost);
      cudaMemcpy(u.data(), ys[1], sizeof(T) * M * N0, cudaMemcpyDeviceToHost);
      cudaMemcpy(p.data(), pg, sizeof(T) * M * N0, cudaMemcpyDeviceToHost);
      for (int64_t e = 0; e < M * N0; e++) {
        const double d = ulps(kiln::silu_mul<T>(g[e], u[e]), p[e]);
        worst_host = std::max(worst_host, d);
        // 16-bit T rounds the host/device expf difference away (≤ 1 ulp); in f32 it shows: CUDA's
        // expf is within 2 ulp (programming guide, math functions) and the host's within 1, then
        // the quotient and product round once each — up to 4 ulp of f32
        if (!mma && !(d <= (sizeof(T) == 4 ? 4 : 1))) ok = false;
      }
    }
  }
  printf("check %-22s %s N = %lld…, K = %lld, block %lld%s, M = 1…8: %lld of %lld differ from separate launches (max %.0f ulp)%s: %s\n", label,
         pair ? "silu·up" : "group  ", (long long)N0, (long long)K, (long long)block, dq ? " dq" : "", (long long)diff, (long long)total, worst,
         pair ? (std::string(", host silu·up max ") + std::to_string((int)worst_host) + " ulp").c_str() : "", ok ? "ok" : "WRONG");
  for (int i = 0; i < n; i++) {
    cudaFree(w[i]);
    cudaFree(ys[i]);
    cudaFree(yg[i]);
    cudaFree(extra[i]);
  }
  cudaFree(ps);
  cudaFree(pg);
  cudaFree(xf);
  cudaFree(x);
  return ok;
}

// The replaced CUDA-core GEMV (k_qgemv4v, as qlinear4 launched it for M ≤ 8), nf4 without double quant, block 64
template <int MR>
static void old_qgemv4(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K, const double* code) {
  namespace Q = kiln::cuda::qdetail;
  constexpr int R = MR <= 2 ? 4 : MR <= 4 ? 2 : 1;
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, K, 64, false), nullptr, nullptr, y, N};
  J.n = 1;
  const unsigned grid = Q::q4_grid(J, R);
  Q::k_qgemv4v<bf16, MR, R, false, false><<<grid, 128, 0, kiln::cuda::stream()>>>(x, J, Q::code16(code), K, 6);
}

// Grouped against separate launches, nf4 bf16, 7B shapes, M = 1 and 4: q/k/v (3 × 4096×4096) in one
// qlinear4_group launch vs 3 qlinear4 launches; gate/up (2 × 11008×4096) in one qlinear4_silu_mul
// launch vs 2 qlinear4 launches + the emitted elementwise product.
static void time_groups(const double* code) {
  const int COPIES = 4;
  const int64_t K = 4096, NQ = 4096, NG = 11008;
  cudaStream_t s = kiln::cuda::stream();
  float *wf, *xf;
  cudaMalloc(&wf, 4 * NG * K);
  cudaMalloc(&xf, 4 * 8 * K);
  k_rand<<<1024, 256, 0, s>>>(xf, 8 * K, 17, 4.f);
  bf16 *x, *y[3], *p;
  cudaMalloc(&x, 2 * 8 * K);
  k_to<bf16><<<1024, 256, 0, s>>>(xf, x, 8 * K);
  for (auto& b : y) cudaMalloc(&b, 2 * 8 * NG);
  cudaMalloc(&p, 2 * 8 * NG);
  uint8_t *qkv[COPIES][3], *gu[COPIES][2];
  auto make = [&](uint8_t*& q, int64_t N, uint32_t seed) {
    k_rand<<<1024, 256, 0, s>>>(wf, N * K, seed, 0.05f);
    cudaMalloc(&q, kiln::quant::bytes4(N * K, 64, false));
    ck(kiln_quantize4(q, wf, N * K, K, 64, 0, code), "quantize4");
  };
  for (int c = 0; c < COPIES; c++) {
    for (int j = 0; j < 3; j++) make(qkv[c][j], NQ, 700 + 5 * c + j);
    for (int j = 0; j < 2; j++) make(gu[c][j], NG, 900 + 5 * c + j);
  }
  printf("\n| nf4 bf16, 7B | M | separate µs | one launch µs |\n|---|---|---|---|\n");
  for (int M : {1, 4}) {
    using L = kiln::quant::Q4Linear<bf16>;
    const double qs = median_us([&](int i) {
      for (int j = 0; j < 3; j++) kiln::cuda::qlinear4<bf16>(x, qkv[i % COPIES][j], nullptr, nullptr, y[j], M, NQ, K, 64, false, code);
    });
    const double qg = median_us([&](int i) {
      uint8_t** w = qkv[i % COPIES];
      kiln::cuda::qlinear4_group<bf16>(x, M, K, 64, false, code, {L{w[0], nullptr, nullptr, y[0], NQ}, L{w[1], nullptr, nullptr, y[1], NQ}, L{w[2], nullptr, nullptr, y[2], NQ}});
    });
    const double gs = median_us([&](int i) {
      kiln::cuda::qlinear4<bf16>(x, gu[i % COPIES][0], nullptr, nullptr, y[0], M, NG, K, 64, false, code);
      kiln::cuda::qlinear4<bf16>(x, gu[i % COPIES][1], nullptr, nullptr, y[1], M, NG, K, 64, false, code);
      silu_mul_separate<bf16>(y[0], y[1], p, M, NG);
    });
    const double gg = median_us([&](int i) {
      uint8_t** w = gu[i % COPIES];
      kiln::cuda::qlinear4_silu_mul<bf16>(x, M, K, 64, false, code, L{w[0], nullptr, nullptr, nullptr, NG}, L{w[1], nullptr, nullptr, nullptr, NG}, p);
    });
    ck(kiln_synchronize(), "sync");
    printf("| q/k/v 3×%lld×%lld | %d | %.1f | %.1f |\n", (long long)NQ, (long long)K, M, qs, qg);
    printf("| gate/up 2×%lld×%lld + silu·up | %d | %.1f | %.1f |\n", (long long)NG, (long long)K, M, gs, gg);
  }
  for (int c = 0; c < COPIES; c++) {
    for (auto q : qkv[c]) cudaFree(q);
    for (auto q : gu[c]) cudaFree(q);
  }
  for (auto b : y) cudaFree(b);
  cudaFree(p);
  cudaFree(x);
  cudaFree(xf);
  cudaFree(wf);
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
  // grouped launches (q/k/v; gate/up with silu·up) against separate ones, on every GEMV path
  ok &= check_group<bf16>("bf16 nf4 q/k/v 7B", false, {4096, 4096, 4096}, 4096, 64, false, NF4);
  ok &= check_group<bf16>("bf16 nf4 q/k/v GQA", false, {4096, 1024, 1024}, 4096, 64, true, NF4);
  ok &= check_group<bf16>("bf16 nf4 ragged", false, {1000, 24, 200}, 2048, 64, false, NF4);  // tails, a job of 2 tiles
  ok &= check_group<bf16>("bf16 nf4 gate/up 7B", true, {11008, 11008}, 4096, 64, false, NF4);
  ok &= check_group<bf16>("bf16 nf4 gate/up 7B", true, {11008, 11008}, 4096, 64, true, NF4);
  ok &= check_group<bf16>("bf16 fp4 gate/up ragged", true, {1000, 1000}, 2048, 64, false, fp4);
  ok &= check_group<bf16>("bf16 nf4 block 32", false, {4096, 1024}, 4096, 32, false, NF4);  // k_qgemv4v at every M
  ok &= check_group<bf16>("bf16 nf4 block 32", true, {4096, 4096}, 4096, 32, false, NF4);   // paired k_qgemv4v (R = 2 from M = 5)
  ok &= check_group<bf16>("bf16 nf4 K 1000", false, {500, 300, 200}, 1000, 64, false, NF4);  // K % 32 ≠ 0: the general k_qgemv4
  ok &= check_group<bf16>("bf16 nf4 K 1000", true, {500, 500}, 1000, 64, true, NF4);
  ok &= check_group<kiln::f16>("f16 nf4 gate/up", true, {11008, 11008}, 4096, 64, false, NF4);
  ok &= check_group<float>("f32 nf4 q/k/v GQA", false, {4096, 1024, 1024}, 4096, 64, false, NF4);
  ok &= check_group<float>("f32 nf4 gate/up", true, {4096, 4096}, 4096, 64, false, NF4);
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
      ck(kiln_quantize4(q4[c], wf, n, K, 64, 0, nf4), "quantize4");
      ck(kiln_quantize4(q4d[c], wf, n, K, 64, 1, nf4), "quantize4 dq");
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
  time_groups(nf4);
  return 0;
}
