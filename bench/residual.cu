// Check and micro-benchmark of fuse-residual's epilogue (codegen-templates/cuda/kernels.cuh
// `linear` with a residual): y = x · Wᵀ (+ b) + r in bf16 on the Llama-2-7B shapes of the two linears
// a layer ends with (o_proj 4096 → 4096, down_proj 11008 → 4096), M = 1 (the GEMV), 7 and 2048
// (cuBLASLt with C = r, β = 1; or the tiled kernel without the library), with and without bias.
// Each case
//   - checks the fused call and the unfused pair (linear, then a 16-byte add kernel) against
//     x · Wᵀ (+ b) + r from Kiln's tiled GEMM in f32 with f64 sums (relative L2 error ≤ 4e-3:
//     bf16 output rounding ≈ 2e-3), the fused error no larger than the unfused one (it rounds
//     once), and fused vs unfused within 2 bf16 ulps of the larger of |x · Wᵀ| and |y| everywhere;
//   - at M = 7, also the GEMV kernel (MR = 7) and, at M = 7 and 2048, the tiled kernel with the
//     residual, which the artifact runs where cuBLASLt is missing, against the same reference;
//   - times (CUDA events, median of 50 after 10 warm-ups, weights rotating past L2) the fused call,
//     the unfused linear, the add, and the two together.
// Then the same for qlinear (nf4: the 4-bit GEMVs at M = 1, 7, dequantize + GEMM at 2048; LLM.int8:
// the dp4a GEMV, and the GEMM epilogues at 2048, whichever KILN_INT8_GEMM picks): fused vs unfused
// within 2 bf16 ulps everywhere, and the residual really added (fused ≠ the linear alone).
// Prints tables, "PASS" or "FAIL: …" per case, then "ALL PASS" (exit 0) or "FAILED" (exit 1).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/residual bench/residual.cu
//   bench/tmp/residual
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "timing.cuh"
#include <algorithm>
#include <string>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-residual"; }

using kiln::bf16;
namespace D = kiln::cuda::detail;

// uniform in ±scale/2 from an integer hash of the index (Knuth's multiplicative hash, xorshifts)
__global__ void k_uniform(bf16* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = ((uint32_t)i ^ seed) * 2654435761u;
    h ^= h >> 16;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = kiln::Num<bf16>::store(((float)(h & 0xffffff) / 16777216.0f - 0.5f) * scale);
  }
}
__global__ void k_widen(const bf16* a, float* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) b[i] = kiln::Num<bf16>::load(a[i]);
}
// the unfused add: y = a + b, 8 bf16 a thread through 16-byte words (n a multiple of 8)
__global__ void k_add(const uint4* a, const uint4* b, uint4* y, int64_t n8) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    uint4 p = a[i], q = b[i], r;
    const bf16* u = (const bf16*)&p;
    const bf16* v = (const bf16*)&q;
    bf16* w = (bf16*)&r;
#pragma unroll
    for (int j = 0; j < 8; j++) w[j] = kiln::Num<bf16>::store(kiln::Num<bf16>::load(u[j]) + kiln::Num<bf16>::load(v[j]));
    y[i] = r;
  }
}

static std::vector<float> host(const bf16* p, int64_t n) {
  std::vector<uint16_t> h(n);
  ck(cudaMemcpyAsync(h.data(), p, n * 2, cudaMemcpyDeviceToHost, kiln::cuda::stream()), "d2h");
  ck(cudaStreamSynchronize(kiln::cuda::stream()), "sync");
  std::vector<float> f(n);
  for (int64_t i = 0; i < n; i++) f[i] = kiln::bf16_bits_to_f32(h[i]);
  return f;
}
// relative L2 error of a against the reference
static double relerr(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    if (a[i] != a[i]) return INFINITY;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return sqrt(num / den);
}
static double ulp_bf16(double v) { return ldexp(1.0, std::max(-126, (int)floor(log2(fabs(v) > 0 ? fabs(v) : 1e-300))) - 7); }

int main() {
  if (kiln_init(0) != 0) {
    fprintf(stderr, "kiln_init: %s\n", kiln_last_error());
    return 1;
  }
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, 0), "props");
  cudaStream_t s = kiln::cuda::stream();
  const bool lt_ok = kiln::lt::available();
  printf("%s; cuBLASLt: %s\n", prop.name, lt_ok ? "yes" : "no (the tiled kernel runs M > 1)");
  auto rnd = [&](int64_t n, uint32_t seed, float scale) {
    bf16* p;
    ck(cudaMalloc(&p, n * 2), "malloc");
    k_uniform<<<1024, 256, 0, s>>>(p, n, seed, scale);
    return p;
  };
  auto widen = [&](const bf16* a, int64_t n) {
    float* f;
    ck(cudaMalloc(&f, n * 4), "malloc");
    k_widen<<<1024, 256, 0, s>>>(a, f, n);
    return f;
  };
  D::Geo<2> none;
  none.rank = 0;
  for (int i = 0; i < KILN_MAX_RANK; i++) none.d[i] = 1, none.s[0][i] = none.s[1][i] = 0;

  bool all = true;
  printf("| M | K -> N | bias | path | fused us | linear us | add us | linear+add us | saved us | err fused | err unfused | max ulps | other paths err | check |\n"
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const int64_t shapes[2][2] = {{4096, 4096}, {11008, 4096}};  // {K, N}
  const int Ms[3] = {1, 7, 2048};
  for (const auto& sh : shapes)
    for (int M : Ms) {
      const int64_t K = sh[0], N = sh[1], wn = N * K;
      const int copies = (int)std::max<int64_t>(2, (int64_t)(200ll << 20) / (wn * 2) + 1);  // > 200 MB of weights in rotation
      std::vector<bf16*> W(copies);
      for (int i = 0; i < copies; i++) W[i] = rnd(wn, 1234u + i, 0.25f);
      bf16* x = rnd(M * K, 99u, 2.0f);
      bf16* b = rnd(N, 7u, 1.0f);
      bf16* r = rnd(M * N, 5u, 8.0f);  // |r| comparable to |x · Wᵀ| (≈ 1.2 at K = 4096): cancellations happen
      bf16 *y, *t, *y2, *yo;
      for (bf16** p : {&y, &t, &y2, &yo}) ck(cudaMalloc(p, M * N * 2), "malloc");
      // reference x · Wᵀ in f32 with f64 sums (the tiled kernel of `linear`'s f32 path)
      float *xf = widen(x, M * K), *wf = widen(W[0], wn), *lf;
      ck(cudaMalloc(&lf, M * N * 4), "malloc");
      D::gemm_tile<float, true>(xf, wf, nullptr, nullptr, lf, M, N, K, none, 1, "reference");
      std::vector<float> lin(M * N), hb = host(b, N), hr = host(r, M * N);
      ck(cudaMemcpyAsync(lin.data(), lf, M * N * 4, cudaMemcpyDeviceToHost, s), "d2h");
      ck(cudaStreamSynchronize(s), "sync");
      for (int bias = 0; bias < 2; bias++) {
        const bf16* bp = bias ? b : nullptr;
        std::vector<double> ref(M * N);
        for (int64_t i = 0; i < M * N; i++) ref[i] = (double)lin[i] + (bias ? hb[i % N] : 0.0) + hr[i];
        const int64_t n8 = M * N / 8;
        auto add = [&]() { k_add<<<(unsigned)std::min<int64_t>((n8 + 255) / 256, 4096), 256, 0, s>>>((const uint4*)t, (const uint4*)r, (uint4*)y2, n8); };
        for (bf16* p : {y, y2}) ck(cudaMemsetAsync(p, 0xff, M * N * 2, s), "poison");  // NaN
        kiln::cuda::linear<bf16>(x, W[0], bp, r, y, M, N, K);
        kiln::cuda::linear<bf16>(x, W[0], bp, nullptr, t, M, N, K);
        add();
        ck(cudaGetLastError(), "launch");
        std::vector<float> hy = host(y, M * N), ht = host(t, M * N), hy2 = host(y2, M * N);
        const double ef = relerr(hy, ref), eu = relerr(hy2, ref);
        double ulps = 0;
        for (int64_t i = 0; i < M * N; i++) {
          const double d = fabs((double)hy[i] - hy2[i]) / ulp_bf16(std::max({fabs(ht[i]), fabs(hy[i]), fabs(hy2[i])}));
          ulps = std::max(ulps, d != d ? INFINITY : d);
        }
        // the other kernels with a residual: the GEMV at M = 7 (MR = 7), the tiled kernel at M > 1
        std::string other;
        bool other_ok = true;
        auto check_other = [&](const char* what) {
          const double e = relerr(host(yo, M * N), ref);
          char buf[64];
          snprintf(buf, sizeof buf, "%s%s %.1e", other.empty() ? "" : ", ", what, e);
          other += buf;
          if (!(e <= 4e-3)) other_ok = false;
        };
        if (M == 7) {
          ck(cudaMemsetAsync(yo, 0xff, M * N * 2, s), "poison");
          D::k_gemv<bf16, 7, true><<<(unsigned)((N + 7) / 8), 256, 0, s>>>(x, W[0], bp, r, yo, N, K);
          check_other("gemv");
        }
        if (M > 1) {
          ck(cudaMemsetAsync(yo, 0xff, M * N * 2, s), "poison");
          D::gemm_tile<bf16, true>(x, W[0], bp, r, yo, M, N, K, none, 1, "tile");
          check_other("tile");
        }
        const double tf = median_us([&](int i) { kiln::cuda::linear<bf16>(x, W[i % copies], bp, r, y, M, N, K); }, 10, 50);
        const double tl = median_us([&](int i) { kiln::cuda::linear<bf16>(x, W[i % copies], bp, nullptr, t, M, N, K); }, 10, 50);
        const double ta = median_us([&](int) { add(); }, 10, 50);
        const double tu = median_us([&](int i) { kiln::cuda::linear<bf16>(x, W[i % copies], bp, nullptr, t, M, N, K); add(); }, 10, 50);
        std::string why;
        if (!(ef <= 4e-3)) why += " fused error too large;";
        if (!(eu <= 4e-3)) why += " unfused error too large;";
        if (!(ef <= eu * 1.05 + 1e-5)) why += " fused less accurate than unfused;";
        if (!(ulps <= 2)) why += " fused and unfused more than 2 ulps apart;";
        if (!other_ok) why += " another path's error too large;";
        all = all && why.empty();
        printf("| %d | %lld -> %lld | %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.2e | %.2e | %.2f | %s | %s%s |\n", M, (long long)K, (long long)N, bias ? "yes" : "no",
               M == 1 ? "GEMV" : lt_ok ? "cuBLASLt" : M <= 8 ? "GEMV" : "tile", tf, tl, ta, tu, tu - tf, ef, eu, ulps, other.empty() ? "-" : other.c_str(),
               why.empty() ? "PASS" : "FAIL:", why.c_str());
        fflush(stdout);
      }
      for (bf16* p : W) cudaFree(p);
      for (void* p : {(void*)x, (void*)b, (void*)r, (void*)y, (void*)t, (void*)y2, (void*)yo, (void*)xf, (void*)wf, (void*)lf}) cudaFree(p);
    }

  // qlinear: weights quantized on the GPU (kiln_quantize4/8) from f32 uniform ±0.125
  double code[16];  // an evenly spaced 4-bit code: any 16 sorted values in [-1, 1] exercise the kernels
  for (int i = 0; i < 16; i++) code[i] = -1.0 + 2.0 * i / 15;
  printf("\n| scheme | M | K -> N | fused us | qlinear us | qlinear+add us | saved us | max ulps fused vs unfused | check |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& sh : shapes)
    for (int scheme = 0; scheme < 2; scheme++) {
      const int64_t K = sh[0], N = sh[1], wn = N * K;
      const int64_t qb = scheme ? kiln::quant::bytes8(N, K) : kiln::quant::bytes4(wn, 64, false);
      const int copies = (int)std::max<int64_t>(2, (int64_t)(200ll << 20) / qb + 1);
      std::vector<uint8_t*> Q(copies);
      float* wf;
      ck(cudaMalloc(&wf, wn * 4), "malloc");
      for (int c = 0; c < copies; c++) {
        bf16* wb = rnd(wn, 777u + c, 0.25f);
        k_widen<<<1024, 256, 0, s>>>(wb, wf, wn);
        ck(cudaMalloc(&Q[c], qb), "malloc");
        if ((scheme ? kiln_quantize8(Q[c], wf, N, K) : kiln_quantize4(Q[c], wf, wn, K, 64, 0, code)) != 0) {
          fprintf(stderr, "quantize: %s\n", kiln_last_error());
          return 1;
        }
        cudaFree(wb);
      }
      for (int M : Ms) {
        bf16* x = rnd(M * K, 99u, 2.0f);
        bf16* b = rnd(N, 7u, 1.0f);
        bf16* r = rnd(M * N, 5u, 8.0f);
        bf16 *y, *t, *y2;
        for (bf16** p : {&y, &t, &y2}) ck(cudaMalloc(p, M * N * 2), "malloc");
        auto q = [&](int i, const bf16* res, bf16* out) {
          if (scheme) kiln::cuda::qlinear8<bf16>(x, Q[i % copies], b, res, out, M, N, K, 6.0);
          else kiln::cuda::qlinear4<bf16>(x, Q[i % copies], b, res, out, M, N, K, 64, false, code);
        };
        const int64_t n8 = M * N / 8;
        auto add = [&]() { k_add<<<(unsigned)std::min<int64_t>((n8 + 255) / 256, 4096), 256, 0, s>>>((const uint4*)t, (const uint4*)r, (uint4*)y2, n8); };
        for (bf16* p : {y, y2}) ck(cudaMemsetAsync(p, 0xff, M * N * 2, s), "poison");
        q(0, r, y);
        q(0, nullptr, t);
        add();
        ck(cudaGetLastError(), "launch");
        std::vector<float> hy = host(y, M * N), ht = host(t, M * N), hy2 = host(y2, M * N);
        double ulps = 0;
        int64_t moved = 0;
        for (int64_t i = 0; i < M * N; i++) {
          const double d = fabs((double)hy[i] - hy2[i]) / ulp_bf16(std::max({fabs(ht[i]), fabs(hy[i]), fabs(hy2[i])}));
          ulps = std::max(ulps, d != d ? INFINITY : d);
          moved += hy[i] != ht[i];
        }
        const double tf = median_us([&](int i) { q(i, r, y); }, 10, 50);
        const double tq = median_us([&](int i) { q(i, nullptr, t); }, 10, 50);
        const double tu = median_us([&](int i) { q(i, nullptr, t); add(); }, 10, 50);
        std::string why;
        if (!(ulps <= 2)) why += " fused and unfused more than 2 ulps apart;";
        if (!(moved > M * N / 2)) why += " the residual was not added;";
        all = all && why.empty();
        printf("| %s | %d | %lld -> %lld | %.1f | %.1f | %.1f | %.1f | %.2f | %s%s |\n", scheme ? "int8" : "nf4", M, (long long)K, (long long)N, tf, tq, tu, tu - tf, ulps,
               why.empty() ? "PASS" : "FAIL:", why.c_str());
        fflush(stdout);
        for (void* p : {(void*)x, (void*)b, (void*)r, (void*)y, (void*)t, (void*)y2}) cudaFree(p);
      }
      for (uint8_t* p : Q) cudaFree(p);
      cudaFree(wf);
    }
  printf(all ? "ALL PASS\n" : "FAILED\n");
  return all ? 0 : 1;
}
