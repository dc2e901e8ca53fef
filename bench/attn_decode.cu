// Check and timing of the decode attention (flash_attention at S = 1 against a static cache: the
// split-KV kernel and its combine, kernels.cuh attend_row / attend_row_vec). Correctness: each case
// against a host reference in f64 over the same bf16 numbers (max |Δ| ≤ 2e-2 · max |y| and rel L2 ≤
// 1e-2: bf16 output rounding is 4e-3); cases cover hd 128 and 64 (the vectorized path), GQA,
// ALiBi, positions 0, 15, 16, 63, 64, 200 and the last slot of the cache (chunk and 16-key batch
// edges), hd 96 (the simple loop), sliding windows (a block's first chunk past `first`), and a row's
// blocks walking several chunks each (cache 2304). Timing: Llama-2-7B's decode (32 heads of 128,
// cache 2304, positions 64 … 2303), one call in a CUDA graph of 20 (µs a call, median of 15).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/attn_decode bench/attn_decode.cu
//   (add -DKILN_ATTN_NO_VEC for the simple loop alone, to time the two; -DKILN_ATTN_CHUNK=n for n keys a split)
//   bench/tmp/attn_decode      (a line per case, the timing, then PASS or FAIL; exit status 1 on FAIL)
//   KILN_ATTN_MERGE=kernel: the combine kernel instead of the cluster merge (Hopper's default);
//   AD_POS=p: only the timing at position p (for ncu)
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "graph_timer.cuh"
#include <math.h>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-attn-decode"; }
using kiln::bf16;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uni() {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.f;
}
static void ckr(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    exit(1);
  }
}

struct Case {
  const char* what;
  int64_t Hq, Hkv, C, D, pos;
  bool alibi;
  int64_t window = 0;  // > 0: a sliding window, keys pos − window + 1 … pos
};

static int failures = 0;

// q [Hq, D], cache k/v [Hkv, C, D] (B = 1); the query at position pos sees keys 0..pos (or the window's)
static double run_case(const Case& c, bool time_it) {
  const int64_t Hq = c.Hq, Hkv = c.Hkv, C = c.C, D = c.D;
  std::vector<bf16> q(Hq * D), k(Hkv * C * D), v(Hkv * C * D);
  for (auto& x : q) x = kiln::Num<bf16>::store(uni() * 2.f);
  for (auto& x : k) x = kiln::Num<bf16>::store(uni());
  for (auto& x : v) x = kiln::Num<bf16>::store(uni());
  std::vector<float> slopes(Hq);
  for (int64_t h = 0; h < Hq; h++) slopes[h] = c.alibi ? -powf(2.f, -8.f * (float)(h + 1) / (float)Hq) : 0.f;
  bf16 *dq, *dk, *dv, *dy;
  int64_t* doff;
  float* dal;
  ckr(cudaMalloc(&dq, 2 * q.size()), "malloc");
  ckr(cudaMalloc(&dk, 2 * k.size()), "malloc");
  ckr(cudaMalloc(&dv, 2 * v.size()), "malloc");
  ckr(cudaMalloc(&dy, 2 * Hq * D), "malloc");
  ckr(cudaMalloc(&doff, 8), "malloc");
  ckr(cudaMalloc(&dal, 4 * Hq), "malloc");
  cudaStream_t s = kiln::cuda::stream();
  ckr(cudaMemcpyAsync(dq, q.data(), 2 * q.size(), cudaMemcpyHostToDevice, s), "up");
  ckr(cudaMemcpyAsync(dk, k.data(), 2 * k.size(), cudaMemcpyHostToDevice, s), "up");
  ckr(cudaMemcpyAsync(dv, v.data(), 2 * v.size(), cudaMemcpyHostToDevice, s), "up");
  ckr(cudaMemcpyAsync(doff, &c.pos, 8, cudaMemcpyHostToDevice, s), "up");
  ckr(cudaMemcpyAsync(dal, slopes.data(), 4 * Hq, cudaMemcpyHostToDevice, s), "up");
  const double scale = 1.0 / sqrt((double)D);
  auto call = [&](int) {
    kiln::cuda::flash_attention<bf16>(dq, dk, dv, dy, 1, Hq, Hkv, 1, C, D, D, scale, true, doff, c.alibi ? dal : nullptr, nullptr, nullptr, 0, c.window);
  };
  call(0);
  std::vector<bf16> y(Hq * D);
  ckr(cudaMemcpyAsync(y.data(), dy, 2 * Hq * D, cudaMemcpyDeviceToHost, s), "down");
  ckr(cudaStreamSynchronize(s), "sync");
  double maxd = 0, maxy = 0, num = 0, den = 0;
  for (int64_t h = 0; h < Hq; h++) {
    const int64_t kh = h / (Hq / Hkv);
    const int64_t j0 = c.window > 0 && c.pos - c.window + 1 > 0 ? c.pos - c.window + 1 : 0;
    std::vector<double> sc(c.pos + 1, -INFINITY);
    double m = -INFINITY;
    for (int64_t j = j0; j <= c.pos; j++) {
      double d = 0;
      for (int64_t e = 0; e < D; e++) d += (double)kiln::Num<bf16>::load(q[h * D + e]) * kiln::Num<bf16>::load(k[(kh * C + j) * D + e]);
      sc[j] = d * scale + (double)slopes[h] * (double)j;
      m = fmax(m, sc[j]);
    }
    double l = 0;
    for (auto& x : sc) l += (x = x == -INFINITY ? 0.0 : exp(x - m));
    for (int64_t e = 0; e < D; e++) {
      double a = 0;
      for (int64_t j = j0; j <= c.pos; j++) a += sc[j] * kiln::Num<bf16>::load(v[(kh * C + j) * D + e]);
      a /= l;
      const double g = kiln::Num<bf16>::load(y[h * D + e]);
      const double dd = fabs(g - a);
      maxd = dd == dd ? fmax(maxd, dd) : INFINITY;
      maxy = fmax(maxy, fabs(a));
      num += dd * dd;
      den += a * a;
    }
  }
  const double rel = sqrt(num / den);
  const bool ok = maxd <= 2e-2 * maxy && rel <= 1e-2;
  if (!ok) failures++;
  double us = 0;
  if (time_it) us = median_us(call);
  printf("%-52s max |Δ| %.3g (max |y| %.3g), rel L2 %.2e: %s", c.what, maxd, maxy, rel, ok ? "ok" : "WRONG");
  if (time_it) printf(", %.2f µs a call", us);
  printf("\n");
  for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)dy, (void*)doff, (void*)dal}) cudaFree(p);
  return us;
}

int main() {
  if (kiln_init(0) != 0) {
    fprintf(stderr, "kiln_init: %s\n", kiln_last_error());
    return 1;
  }
  const Case cases[] = {
      {"hd128 32:32, cache 2304, pos 0", 32, 32, 2304, 128, 0, false},
      {"hd128 32:32, cache 2304, pos 15", 32, 32, 2304, 128, 15, false},
      {"hd128 32:32, cache 2304, pos 16", 32, 32, 2304, 128, 16, false},
      {"hd128 32:32, cache 2304, pos 63", 32, 32, 2304, 128, 63, false},
      {"hd128 32:32, cache 2304, pos 64", 32, 32, 2304, 128, 64, false},
      {"hd128 GQA 32:8, cache 1000, pos 999 (last slot)", 32, 8, 1000, 128, 999, false},
      {"hd64 ALiBi 16:16, cache 700, pos 200", 16, 16, 700, 64, 200, true},
      {"hd64 MQA 8:1, cache 300, pos 131", 8, 1, 300, 64, 131, false},
      {"hd96 (the simple loop) 8:8, cache 300, pos 100", 8, 8, 300, 96, 100, false},
      {"hd128 32:8, cache 2304, pos 2000, window 700", 32, 8, 2304, 128, 2000, false, 700},
      {"hd128 32:8, cache 2304, pos 1500, window 100", 32, 8, 2304, 128, 1500, false, 100},
      {"hd96 (the simple loop) 32:32, cache 2304, pos 1800, window 333", 32, 32, 2304, 96, 1800, false, 333},
      {"hd96 (the simple loop) 32:32, cache 2304, pos 1800", 32, 32, 2304, 96, 1800, false},
  };
  // AD_POS=p: only the timing at position p (for a profiler)
  const int64_t only = getenv("AD_POS") ? atoll(getenv("AD_POS")) : -1;
  if (only < 0)
    for (const Case& c : cases) run_case(c, false);
  printf("\nLlama-2-7B decode (32 heads of 128, static cache 2304):\n");
  for (int64_t pos : {64, 128, 224, 512, 1024, 2000, 2303}) {
    if (only >= 0 && pos != only) continue;
    char what[64];
    snprintf(what, sizeof what, "  position %lld", (long long)pos);
    run_case({what, 32, 32, 2304, 128, pos, false}, true);
  }
  printf("%s\n", failures ? "FAIL" : "PASS");
  return failures ? 1 : 0;
}
