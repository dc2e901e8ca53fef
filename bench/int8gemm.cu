// Check and micro-benchmark of LLM.int8 prefill (codegen-templates/cuda/quant.cuh qlinear8 at
// M = 2048, bf16 activations) on the Llama-2-7B linear shapes, with no outlier feature and with 8
// outlier columns (x ×20 there, so |x| > 6 in most rows), next to the bf16 `linear` (cuBLASLt) on
// the same weights dequantized. Each way of running the int8 product is forced in turn
// (KILN_INT8_GEMM's lt, lt-chunked, own; then auto, which picks one by timing) and
//   - checked against x · deq(W)ᵀ computed here in f32 (relative L2 error ≤ 1.5e-2: per-row int8
//     activations cost ≈ 0.5 %, bf16 output rounding ≈ 0.2 %; a lost outlier product or a wrong
//     fragment is ≥ 30 %), against each other (≤ 3e-3: the same int32 products, f32 rounding), and
//     the decode path (M = 8, dp4a GEMV) against the first 8 rows of the prefill result;
//   - timed per call from a replayed CUDA graph of 10 calls (median of 7), rotating over 3 weight
//     copies.
// Prints one table, then where lt's time goes (each prep kernel, the whole prep, cuBLASLt's int32
// GEMM and the epilogue, timed alone), "CHECK PASS" / "CHECK FAIL: …" (exit 1 on failure) and
// whether qlinear8 (auto) is ≤ the bf16 linear on every shape (issue 6's bar); with
// KILN_VERBOSE=1, auto's pick per shape on stderr. cuBLASLt is dlopen'ed (-ldl), as in artifacts.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/int8gemm bench/int8gemm.cu
//   bench/tmp/int8gemm
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-int8gemm"; }
using kiln::bf16;
namespace Q = kiln::cuda::qdetail;

// uniform in ±scale/2; columns listed in `hot` (n_hot of them) times `boost`
__global__ void k_rand(float* p, int64_t n, int64_t cols, uint32_t seed, float scale, const int* hot, int n_hot, float boost) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    float v = ((float)(h & 0xffffff) / 16777216.0f - 0.5f) * scale;
    for (int j = 0; j < n_hot; j++)
      if (i % cols == hot[j]) v *= boost;
    p[i] = v;
  }
}
__global__ void k_to_bf16(const float* a, bf16* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) b[i] = kiln::Num<bf16>::store(a[i]);
}
// the dequantized int8 weight, f32(code · scale) (kiln_quant.h's layout)
__global__ void k_deq8(const uint8_t* w, int64_t N, int64_t K, float* out) {
  const int8_t* q = (const int8_t*)w;
  const double* sc = (const double*)(w + (N * K + 15) / 16 * 16);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * K; i += (int64_t)gridDim.x * blockDim.x) out[i] = (float)(q[i] * sc[i / K]);
}
// y[m, n] = Σ_k a[m, k] · b[n, k] in f32, 16×16 tiles: the reference
__global__ void k_ref(const float* a, const float* b, float* y, int64_t M, int64_t N, int64_t K) {
  __shared__ float sa[16][17], sb[16][17];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m = blockIdx.y * 16 + ty, n = blockIdx.x * 16 + tx;
  float s = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    sa[ty][tx] = m < M && k0 + tx < K ? a[m * K + k0 + tx] : 0.f;
    sb[ty][tx] = blockIdx.x * 16 + ty < N && k0 + tx < K ? b[(blockIdx.x * 16 + ty) * K + k0 + tx] : 0.f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 16; k++) s += sa[ty][k] * sb[tx][k];
    __syncthreads();
  }
  if (m < M && n < N) y[m * N + n] = s;
}

static void ck(int rc, const char* what) {
  if (rc) {
    fprintf(stderr, "%s failed: %s\n", what, kiln_last_error());
    exit(1);
  }
}
static void cu(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(e));
    exit(1);
  }
}
// Every copy and fill here runs on Kiln's stream, and a copy waits for it. That stream is
// non-blocking: a plain cudaMemcpy / cudaMemset (the legacy default stream) does not wait for the
// kernels queued on it, so it read the reference y while k_ref was still writing it (the partial
// reference made K = 11008 look wrong, ≈ 0.9 relative error, in every variant) and x before
// k_to_bf16 had written it (the stale NaN bytes of a freed buffer made the K = 202 edge "inf").
static void copy(void* dst, const void* src, size_t bytes) {
  cudaStream_t s = kiln::cuda::stream();
  cu(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), "cudaMemcpyAsync");
  cu(cudaStreamSynchronize(s), "cudaStreamSynchronize (copy)");
}
static void fill(void* p, int byte, size_t bytes) { cu(cudaMemsetAsync(p, byte, bytes, kiln::cuda::stream()), "cudaMemsetAsync"); }
// µs per call from a CUDA graph of 10 calls replayed (median of 7), after 3 calls outside it
template <typename F>
static double median_us(F launch) {
  cudaStream_t s = kiln::cuda::stream();
  for (int i = 0; i < 3; i++) launch(i);
  cu(cudaStreamSynchronize(s), "warm-up");
  cudaGraph_t g;
  cudaGraphExec_t ge;
  cu(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "capture");
  for (int i = 0; i < 10; i++) launch(i);
  cu(cudaStreamEndCapture(s, &g), "end capture");
  cu(cudaGraphInstantiate(&ge, g, 0), "graph instantiate");
  const int iters = 7;
  std::vector<cudaEvent_t> ev(2 * iters);
  for (auto& e : ev) cudaEventCreate(&e);
  cudaGraphLaunch(ge, s);
  for (int i = 0; i < iters; i++) {
    cudaEventRecord(ev[2 * i], s);
    cudaGraphLaunch(ge, s);
    cudaEventRecord(ev[2 * i + 1], s);
  }
  cu(cudaStreamSynchronize(s), "timing");
  std::vector<double> t(iters);
  for (int i = 0; i < iters; i++) {
    float ms;
    cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]);
    t[i] = ms * 1000 / 10;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return t[iters / 2];
}
static std::vector<float> down(const bf16* d, int64_t n) {
  std::vector<bf16> h((size_t)n);
  copy(h.data(), d, 2 * n);
  std::vector<float> f((size_t)n);
  for (int64_t i = 0; i < n; i++) f[(size_t)i] = kiln::Num<bf16>::load(h[(size_t)i]);
  return f;
}
// ‖a − b‖ / ‖b‖ over n values (NaN counts as a failure)
static double rel(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    const double d = (double)a[i] - b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  const double r = sqrt(num / den);
  return r == r ? r : INFINITY;
}

// x as T (bf16 or f32) on the device and its exact f32 values on the host
template <typename T>
static std::vector<float> make_x(T* x, float* xf, int64_t n) {
  std::vector<float> h((size_t)n);
  if (std::is_same<T, float>::value) {
    copy(x, xf, 4 * n);
    copy(h.data(), xf, 4 * n);
  } else {
    k_to_bf16<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, (bf16*)x, n);
    h = down((const bf16*)x, n);
  }
  return h;
}
template <typename T>
static std::vector<float> down_t(const T* d, int64_t n) {
  if (!std::is_same<T, float>::value) return down((const bf16*)d, n);
  std::vector<float> h((size_t)n);
  copy(h.data(), d, 4 * n);
  return h;
}

// Edges: rows, features and K that are not multiples of the tiles (K = 202: no cuBLASLt, no
// mma.sync kernel, the dp4a fallback and the scalar flag/quantize kernels; N = 130 and 999: the
// epilogue's scalar loads and stores; N = 1000: its 16-byte ones with a ragged last row tile;
// K = 11008 as Llama's down projection; the row quantizer's register forms, 2, 4 and 8 chunks a
// thread, and its two-pass form at f32 K = 8320), f32 activations (the bf16 hi + lo outlier
// product), 3 outlier columns, bias; lt and own each against the f32 reference and each other.
template <typename T>
static void edge(int64_t M, int64_t N, int64_t K, const char* tname, std::string& failures) {
  cudaStream_t s = kiln::cuda::stream();
  float *xf, *wf, *wd, *yref, *bf;
  T *x, *y, *b;
  uint8_t* q8;
  int* hot;
  cu(cudaMalloc(&xf, 4 * M * K), "malloc");
  cu(cudaMalloc(&wf, 4 * N * K), "malloc");
  cu(cudaMalloc(&wd, 4 * N * K), "malloc");
  cu(cudaMalloc(&yref, 4 * M * N), "malloc");
  cu(cudaMalloc(&bf, 4 * N), "malloc");
  cu(cudaMalloc(&x, sizeof(T) * M * K), "malloc");
  cu(cudaMalloc(&y, sizeof(T) * M * N), "malloc");
  cu(cudaMalloc(&b, sizeof(T) * N), "malloc");
  cu(cudaMalloc(&q8, kiln::quant::bytes8(N, K)), "malloc");
  cu(cudaMalloc(&hot, 4 * 3), "malloc");
  const int hh[3] = {1, (int)(K / 2), (int)(K - 1)};
  copy(hot, hh, sizeof hh);
  k_rand<<<1024, 256, 0, s>>>(wf, N * K, K, 11, 0.05f, hot, 0, 1.f);
  ck(kiln_quantize8(q8, wf, N, K), "quantize8");
  k_deq8<<<1024, 256, 0, s>>>(q8, N, K, wd);
  k_rand<<<1024, 256, 0, s>>>(bf, N, N, 13, 1.f, hot, 0, 1.f);
  k_rand<<<1024, 256, 0, s>>>(xf, M * K, K, 17, 4.f, hot, 3, 20.f);
  std::vector<float> xh = make_x<T>(x, xf, M * K), bh = make_x<T>(b, bf, N);
  copy(xf, xh.data(), 4 * M * K);
  k_ref<<<dim3((unsigned)((N + 15) / 16), (unsigned)((M + 15) / 16)), dim3(16, 16), 0, s>>>(xf, wd, yref, M, N, K);
  std::vector<float> ref((size_t)(M * N));
  copy(ref.data(), yref, 4 * M * N);
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) ref[(size_t)(m * N + n)] += bh[(size_t)n];
  std::vector<float> first;
  char label[96];
  for (int v = 0; v < 3; v++) {
    Q::i8_mode() = v == 0 ? Q::I8_LT : v == 1 ? Q::I8_OWN : Q::I8_WG;
    snprintf(label, sizeof label, "edge %s M=%lld N=%lld K=%lld %s", tname, (long long)M, (long long)N, (long long)K, Q::i8_name(Q::i8_mode()));
    fill(y, 0xff, sizeof(T) * M * N);
    kiln::cuda::qlinear8<T>(x, q8, b, nullptr, y, M, N, K, 6.0);
    ck(kiln_synchronize(), label);
    std::vector<float> got = down_t<T>(y, M * N);
    const double e = rel(got.data(), ref.data(), M * N);
    if (v == 0) first = got;
    const double d = v == 0 ? 0 : rel(got.data(), first.data(), M * N);
    printf("%s: rel err %.2e, vs lt %.2e\n", label, e, d);
    if (!(e <= 1.5e-2) || !(d <= 3e-3)) failures += std::string(" [") + label + "]";
  }
  Q::i8_mode() = Q::I8_AUTO;
  cudaFree(xf), cudaFree(wf), cudaFree(wd), cudaFree(yref), cudaFree(bf), cudaFree(x), cudaFree(y), cudaFree(b), cudaFree(q8), cudaFree(hot);
}

// Where qlinear8 (lt)'s time goes, each stage timed alone on the same operands: the prep kernels
// one by one (they are idempotent, so the state after them is a proper prep), the whole prep (with
// its memset, the weight's outlier columns, allocations and launch gaps), cuBLASLt's int32
// product and the epilogue (k_epi).
struct Stages {
  double quant, list, fix, gather, prep, gemm, epi;
};
static Stages stages(const bf16* x, uint8_t* const* q8, int copies, bf16* y, int32_t* acc, int64_t M, int64_t N, int64_t K) {
  cudaStream_t s = kiln::cuda::stream();
  Stages t;
  t.prep = median_us([&](int i) {
    Q::I8Act a = Q::i8_act<bf16>(x, M, K, 6.0, s);
    Q::i8_release(Q::i8_prep<bf16>(a, q8[i % copies], nullptr, nullptr, y, N, s));
    Q::i8_act_release(a);
  });
  Q::I8Act a = Q::i8_act<bf16>(x, M, K, 6.0, s);
  const Q::I8Prep<bf16> p = Q::i8_prep<bf16>(a, q8[0], nullptr, nullptr, y, N, s);
  const Q::I8Ws& w = a.ws;
  const int64_t Kp = p.g.Kp;
  t.quant = median_us([&](int) { Q::i8_quant_rows<bf16>(x, true, M, K, Kp, 6.f, w, s); });
  t.list = median_us([&](int) { Q::k_i8_list4<<<1, 1024, 0, s>>>(w.flags, K, w.list, w.count); });
  t.fix = median_us([&](int) { Q::k_i8_fix_rows<bf16, true><<<(unsigned)M, Q::i8_row_threads<bf16>(K), 0, s>>>(x, M, K, Kp, 6.f, w.flags, w.list, w.count, w.qx, w.sx, a.xo, p.g.Cp); });
  t.gather = median_us([&](int) { Q::k_i8_gather_w<bf16><<<(unsigned)((N + 7) / 8), 256, 0, s>>>(p.g.qw, N, K, w.list, w.count, p.wo, p.g.Cp); });
  if (Q::i8_products<bf16>(p.g, 0, N, acc, s)) {
    t.gemm = median_us([&](int) { Q::i8_products<bf16>(p.g, 0, N, acc, s); });
    t.epi = median_us([&](int) { Q::i8_epi<bf16>(p.g, acc, N, 0, N, s); });
  } else {
    t.gemm = t.epi = NAN;
  }
  ck(kiln_synchronize(), "stages");
  Q::i8_release(p);
  Q::i8_act_release(a);
  return t;
}

int main() {
  ck(kiln_init(0), "init");
  cudaStream_t s = kiln::cuda::stream();
  const int64_t M = 2048, shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  const int COPIES = 3;
  const int modes[5] = {Q::I8_LT, Q::I8_LT_CHUNKED, Q::I8_OWN, Q::I8_WG, Q::I8_AUTO};
  std::string failures, stage_rows;
  int met = 0, rows = 0;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  printf("LLM.int8 prefill, M = %lld, bf16 activations, %s; µs per call (TOPS = 2·M·N·K / time)\n\n", (long long)M, prop.name);
  printf("| N×K | outlier cols | bf16 linear | cuBLASLt int8 GEMM alone | qlinear8 lt | lt-chunked | own | wgmma | auto | auto ≤ bf16 | rel err lt / chunked / own / wgmma / auto | decode vs prefill |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (auto& sh : shapes) {
    const int64_t N = sh[0], K = sh[1];
    float *xf, *wf, *wd, *yref;
    bf16 *x, *y, *y8, *wb[COPIES];
    uint8_t* q8[COPIES];
    int8_t* qa;  // random int8 codes for the GEMM-alone timing
    int32_t* acc;
    int* hot;
    const int64_t b8 = kiln::quant::bytes8(N, K);
    cu(cudaMalloc(&xf, 4 * M * K), "malloc");
    cu(cudaMalloc(&wf, 4 * N * K), "malloc");
    cu(cudaMalloc(&wd, 4 * N * K), "malloc");
    cu(cudaMalloc(&yref, 4 * M * N), "malloc");
    cu(cudaMalloc(&x, 2 * M * K), "malloc");
    cu(cudaMalloc(&y, 2 * M * N), "malloc");
    cu(cudaMalloc(&y8, 2 * 8 * N), "malloc");
    cu(cudaMalloc(&qa, M * K), "malloc");
    cu(cudaMalloc(&acc, 4 * M * N), "malloc");
    cu(cudaMalloc(&hot, 4 * 8), "malloc");
    for (int c = 0; c < COPIES; c++) {
      cu(cudaMalloc(&wb[c], 2 * N * K), "malloc");
      cu(cudaMalloc(&q8[c], b8), "malloc");
      k_rand<<<1024, 256, 0, s>>>(wf, N * K, K, 100 + c, 0.05f, hot, 0, 1.f);
      ck(kiln_quantize8(q8[c], wf, N, K), "quantize8");
      k_deq8<<<1024, 256, 0, s>>>(q8[c], N, K, wd);
      k_to_bf16<<<1024, 256, 0, s>>>(wd, wb[c], N * K);
    }
    k_deq8<<<1024, 256, 0, s>>>(q8[0], N, K, wd);  // the reference's weight: copy 0
    {
      std::vector<int8_t> h((size_t)(M * K));
      for (size_t i = 0; i < h.size(); i++) h[i] = (int8_t)((i * 2654435761u >> 13) % 255 - 127);
      copy(qa, h.data(), M * K);
    }
    for (int n_hot : {0, 8}) {
      int hh[8];
      for (int j = 0; j < 8; j++) hh[j] = (int)((37 + 501 * j) % K);
      copy(hot, hh, sizeof hh);
      k_rand<<<1024, 256, 0, s>>>(xf, M * K, K, 7 + n_hot, 4.f, hot, n_hot, 20.f);
      k_to_bf16<<<1024, 256, 0, s>>>(xf, x, M * K);
      // the reference takes the bf16 activations exactly
      std::vector<float> xr = down(x, M * K);
      copy(xf, xr.data(), 4 * M * K);
      k_ref<<<dim3((unsigned)((N + 15) / 16), (unsigned)((M + 15) / 16)), dim3(16, 16), 0, s>>>(xf, wd, yref, M, N, K);
      std::vector<float> ref((size_t)(M * N));
      copy(ref.data(), yref, 4 * M * N);
      char label[64];
      snprintf(label, sizeof label, "%lld×%lld, %d outlier cols", (long long)N, (long long)K, n_hot);
      // each way of running it: error against the reference, against lt, time
      double err[5], t[5], vs_lt = 0;
      std::vector<float> first;
      for (int v = 0; v < 5; v++) {
        Q::i8_mode() = modes[v];
        fill(y, 0xff, 2 * M * N);  // NaN: a result never written fails
        kiln::cuda::qlinear8<bf16>(x, q8[0], nullptr, nullptr, y, M, N, K, 6.0);
        ck(kiln_synchronize(), "qlinear8");
        std::vector<float> got = down(y, M * N);
        err[v] = rel(got.data(), ref.data(), M * N);
        if (v == 0) first = got;
        else vs_lt = std::max(vs_lt, rel(got.data(), first.data(), M * N));
        if (!(err[v] <= 1.5e-2)) failures += std::string(" [") + label + ": " + Q::i8_name(modes[v]) + " rel err " + std::to_string(err[v]) + "]";
        t[v] = median_us([&](int i) { kiln::cuda::qlinear8<bf16>(x, q8[i % COPIES], nullptr, nullptr, y, M, N, K, 6.0); });
      }
      if (!(vs_lt <= 3e-3)) failures += std::string(" [") + label + ": variants differ by " + std::to_string(vs_lt) + "]";
      // decode (M = 8, the dp4a GEMV) against the prefill rows
      kiln::cuda::qlinear8<bf16>(x, q8[0], nullptr, nullptr, y8, 8, N, K, 6.0);
      ck(kiln_synchronize(), "qlinear8 (M = 8)");
      std::vector<float> d8 = down(y8, 8 * N);
      // (the 8 rows alone flag the same columns: |x| ≤ 2 elsewhere, |x| > 6 in 85 % of the rows of a hot column)
      const double dec = rel(d8.data(), first.data(), 8 * N);
      if (!(dec <= 3e-3)) failures += std::string(" [") + label + ": decode vs prefill rel " + std::to_string(dec) + "]";
      // the bf16 linear and cuBLASLt's int8 GEMM alone (random codes)
      Q::i8_mode() = Q::I8_AUTO;
      const double tb = median_us([&](int i) { kiln::cuda::linear<bf16>(x, wb[i % COPIES], nullptr, nullptr, y, M, N, K); });
      double tg = NAN;
      if (kiln::lt::gemm_i8(N, M, K, (const int8_t*)q8[0], K, qa, K, acc, N, "int8gemm")) {
        tg = median_us([&](int i) { kiln::lt::gemm_i8(N, M, K, (const int8_t*)q8[i % COPIES], K, qa, K, acc, N, "int8gemm"); });
      }
      ck(kiln_synchronize(), "timing");
      const double ops = 2.0 * M * N * K;
      auto cell = [&](double us) {
        static char b[4][48];
        static int r = 0;
        r = (r + 1) % 4;
        if (us != us) snprintf(b[r], sizeof b[r], "n/a");
        else snprintf(b[r], sizeof b[r], "%.1f (%.0f)", us, ops / us / 1e6);
        return b[r];
      };
      const bool ok = t[4] <= tb;
      met += ok;
      rows++;
      printf("| %lld×%lld | %d | %s | %s | ", (long long)N, (long long)K, n_hot, cell(tb), cell(tg));
      printf("%s | %s | ", cell(t[0]), cell(t[1]));
      printf("%s | %s | %s | %s | %.2e / %.2e / %.2e / %.2e / %.2e | %.2e |\n", cell(t[2]), cell(t[3]), cell(t[4]), ok ? "yes" : "NO", err[0], err[1], err[2], err[3],
             err[4], dec);
      fflush(stdout);
      const Stages st = stages(x, q8, COPIES, y, acc, M, N, K);
      char line[256];
      snprintf(line, sizeof line, "| %lld×%lld | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", (long long)N, (long long)K, n_hot,
               st.quant, st.list, st.fix, st.gather, st.prep, st.gemm, st.epi, st.prep + st.gemm + st.epi, t[0]);
      stage_rows += line;
    }
    for (int c = 0; c < COPIES; c++) {
      cudaFree(wb[c]);
      cudaFree(q8[c]);
    }
    cudaFree(xf);
    cudaFree(wf);
    cudaFree(wd);
    cudaFree(yref);
    cudaFree(x);
    cudaFree(y);
    cudaFree(y8);
    cudaFree(qa);
    cudaFree(acc);
    cudaFree(hot);
  }
  printf("\nWhere qlinear8 (lt) spends its time, µs, each stage alone (prep = memset + quantize rows + list + fix rows + gather w + launch gaps):\n\n");
  printf("| N×K | outlier cols | quantize rows | list | fix rows | gather w | prep | int32 GEMM (cuBLASLt) | epilogue | prep + GEMM + epilogue | qlinear8 lt |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|\n%s\n", stage_rows.c_str());
  edge<float>(300, 999, 1024, "f32", failures);
  edge<bf16>(300, 999, 1024, "bf16", failures);
  edge<float>(130, 256, 208, "f32", failures);
  edge<bf16>(70, 130, 202, "bf16", failures);
  edge<bf16>(300, 1000, 11008, "bf16", failures);
  edge<float>(130, 256, 4096, "f32", failures);
  edge<float>(64, 128, 8320, "f32", failures);
  printf("\nTARGET (qlinear8 auto ≤ bf16 linear): %d of %d shapes\n", met, rows);
  if (!failures.empty()) {
    printf("CHECK FAIL:%s\n", failures.c_str());
    return 1;
  }
  printf("CHECK PASS\n");
  return 0;
}
