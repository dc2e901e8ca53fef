// Experiment: prefetching the next decode GEMV's weights into L2 while the current one (and the
// small kernels after it) run. A 7B decode step at batch 1 is ≈ 32 × (norm, q/k/v GEMV, RoPE and
// cache writes, attention split + combine, o GEMV, norm, gate/up GEMV, down GEMV); the HBM is busy
// only during the GEMVs, and the 4-bit GEMVs reach 1.6–1.9 TB/s of the ≈ 3 TB/s. Here the weights
// of GEMV i + 1 (up to CAP bytes) are prefetched by `cp.async.bulk.prefetch.L2` from a side stream
// forked at GEMV i's launch (a branch of the replayed graph), so they stream in during GEMV i and
// the gaps after it, and GEMV i + 1 reads them from L2.
// The step is built from the production kernels (rms_norm, qlinear4_group / qlinear4 /
// qlinear4_silu_mul for nf4; linear for bf16) with spin kernels standing in for RoPE, cache writes
// and attention (their measured times); 32 layers with their own weights (3.4 GB nf4, 12.9 GB bf16,
// never the same bytes twice a step). Prints µs a step per mode, median of the graph replays.
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <vector>

using bf16 = kiln::bf16;
namespace Q = kiln::cuda::qdetail;

// holds one block for `ns` nanoseconds (a stand-in for a latency-bound small kernel)
__global__ void k_spin(unsigned ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// every thread of the grid issues bulk L2 prefetches of `chunk`-byte pieces, strided by the grid
template <bool LAST>
__global__ void k_l2pf(const char* __restrict__ p, int64_t bytes, int chunk) {
  uint64_t pol = 0;
  if (LAST) asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  const int64_t stride = (int64_t)gridDim.x * blockDim.x * chunk;
  for (int64_t off = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * chunk; off < bytes; off += stride) {
    const uint32_t n = (uint32_t)(bytes - off < chunk ? bytes - off : chunk);
    if (LAST) asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(p + off), "r"(n), "l"(pol) : "memory");
    else asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(n) : "memory");
  }
}

struct Mode {
  const char* name;
  int64_t cap;  // bytes of the next weight prefetched (0: no prefetch)
  int grid, threads, chunk;
  bool last;
  bool gaps;  // the spin kernels between GEMVs
};

static cudaStream_t g_side;
static cudaEvent_t g_fork[512], g_join;
static int g_nfork;
static const Mode* g_mode;
// fork the side stream at this point of the main stream and prefetch, there, the first `cap` bytes
// of the next GEMV's weights: pieces in the order the GEMV reads them (q, k, v one after another;
// gate and up side by side: `paired` splits the cap between the two)
struct Piece {
  const void* p;
  int64_t bytes;
};
static void prefetch(std::initializer_list<Piece> ps, bool paired = false) {
  const Mode& m = *g_mode;
  if (m.cap == 0) return;
  cudaStream_t s = kiln::cuda::stream();
  cudaEvent_t e = g_fork[g_nfork++ % 512];
  cudaEventRecord(e, s);
  cudaStreamWaitEvent(g_side, e, 0);
  int64_t left = m.cap;
  for (const Piece& pc : ps) {
    int64_t b = paired ? (pc.bytes < m.cap / 2 ? pc.bytes : m.cap / 2) : (pc.bytes < left ? pc.bytes : left);
    b = b / 16 * 16;
    if (b <= 0) break;
    left -= b;
    if (m.last) k_l2pf<true><<<m.grid, m.threads, 0, g_side>>>((const char*)pc.p, b, m.chunk);
    else k_l2pf<false><<<m.grid, m.threads, 0, g_side>>>((const char*)pc.p, b, m.chunk);
  }
}
static void join() {
  if (g_mode->cap == 0) return;
  cudaEventRecord(g_join, g_side);
  cudaStreamWaitEvent(kiln::cuda::stream(), g_join, 0);
}
static void gap(unsigned ns) {
  if (g_mode->gaps) k_spin<<<1, 32, 0, kiln::cuda::stream()>>>(ns);
}

constexpr int L = 32;
constexpr int64_t D = 4096, F = 11008;

int main() {
  ck(kiln_init(0), "init");
  cudaStreamCreateWithFlags(&g_side, cudaStreamNonBlocking);
  for (auto& e : g_fork) cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  cudaEventCreateWithFlags(&g_join, cudaEventDisableTiming);
  cudaStream_t s = kiln::cuda::stream();
  const Q::Code16 code = Q::code16(NF4);
  (void)code;
  // activations
  float* xf;
  cudaMalloc(&xf, 4 * F);
  bf16 *h, *xn, *a1, *qkv, *att, *h2, *act, *nw;
  cudaMalloc(&h, 2 * D), cudaMalloc(&xn, 2 * D), cudaMalloc(&a1, 2 * D), cudaMalloc(&qkv, 2 * 3 * D), cudaMalloc(&att, 2 * D);
  cudaMalloc(&h2, 2 * D), cudaMalloc(&act, 2 * F), cudaMalloc(&nw, 2 * D);
  k_rand<<<64, 256, 0, s>>>(xf, F, 5, 2.f);
  k_to<bf16><<<64, 256, 0, s>>>(xf, h, D);
  k_to<bf16><<<64, 256, 0, s>>>(xf, att, D);
  k_to<bf16><<<64, 256, 0, s>>>(xf, act, F);
  k_rand<<<64, 256, 0, s>>>(xf, D, 6, 0.5f);
  k_to<bf16><<<64, 256, 0, s>>>(xf, nw, D);
  // one real weight of each shape (random f32 → nf4 / bf16), copied to every layer's own slot
  const int64_t nDD = D * D, nFD = F * D;
  const int64_t q4DD = kiln::quant::bytes4(nDD, 64, false), q4FD = kiln::quant::bytes4(nFD, 64, false);
  float* wf;
  cudaMalloc(&wf, 4 * nFD);
  uint8_t *s4DD, *s4FD;
  bf16 *s16DD, *s16FD;
  cudaMalloc(&s4DD, q4DD), cudaMalloc(&s4FD, q4FD), cudaMalloc(&s16DD, 2 * nDD), cudaMalloc(&s16FD, 2 * nFD);
  k_rand<<<1024, 256, 0, s>>>(wf, nFD, 17, 0.05f);
  ck(kiln_quantize4(s4DD, wf, nDD, D, 64, 0, NF4), "quantize4");
  ck(kiln_quantize4(s4FD, wf, nFD, D, 64, 0, NF4), "quantize4");
  k_to<bf16><<<1024, 256, 0, s>>>(wf, s16DD, nDD);
  k_to<bf16><<<1024, 256, 0, s>>>(wf, s16FD, nFD);
  // per layer: q, k, v, o (D×D), gate, up (F×D), down (D×F: same byte count as F×D)
  struct Layer {
    uint8_t* q4[7];
    bf16* w16[7];
  } lay[L];
  for (int l = 0; l < L; l++)
    for (int i = 0; i < 7; i++) {
      const bool big = i >= 4;
      cudaMalloc(&lay[l].q4[i], big ? q4FD : q4DD);
      cudaMemcpyAsync(lay[l].q4[i], big ? s4FD : s4DD, big ? q4FD : q4DD, cudaMemcpyDeviceToDevice, s);
      cudaMalloc(&lay[l].w16[i], 2 * (big ? nFD : nDD));
      cudaMemcpyAsync(lay[l].w16[i], big ? s16FD : s16DD, 2 * (big ? nFD : nDD), cudaMemcpyDeviceToDevice, s);
    }
  ck(kiln_synchronize(), "setup");
  cudaFree(wf);
  const int64_t b16DD = 2 * nDD, b16FD = 2 * nFD;

  // one decode step, nf4: the GEMV order is qkv(l), o(l), gate/up(l), down(l), qkv(l + 1), …
  auto step4 = [&]() {
    for (int l = 0; l < L; l++) {
      const Layer& y = lay[l];
      gap(2000);  // the norm's kernel (stand-in; the real norm follows)
      kiln::cuda::rms_norm<bf16>(h, nw, xn, 1, D, 1e-5);
      prefetch({{y.q4[3], q4DD}});  // o, while q/k/v run
      kiln::cuda::qlinear4_group<bf16>(xn, 1, D, 64, false, NF4, {{y.q4[0], nullptr, nullptr, qkv, D}, {y.q4[1], nullptr, nullptr, qkv + D, D}, {y.q4[2], nullptr, nullptr, qkv + 2 * D, D}});
      gap(3000);  // RoPE + cache writes
      gap(6000);  // attention split
      gap(2500);  // combine
      prefetch({{y.q4[4], q4FD}, {y.q4[5], q4FD}}, true);  // gate and up
      kiln::cuda::qlinear4<bf16>(att, y.q4[3], nullptr, h, h2, 1, D, D, 64, false, NF4);
      kiln::cuda::rms_norm<bf16>(h2, nw, xn, 1, D, 1e-5);
      prefetch({{y.q4[6], q4FD}});  // down
      kiln::cuda::qlinear4_silu_mul<bf16>(xn, 1, D, 64, false, NF4, {y.q4[4], nullptr, nullptr, nullptr, F}, {y.q4[5], nullptr, nullptr, nullptr, F}, act);
      if (l + 1 < L) prefetch({{lay[l + 1].q4[0], q4DD}, {lay[l + 1].q4[1], q4DD}, {lay[l + 1].q4[2], q4DD}});
      kiln::cuda::qlinear4<bf16>(act, y.q4[6], nullptr, h2, h, 1, D, F, 64, false, NF4);
    }
    join();
  };
  auto step16 = [&]() {
    for (int l = 0; l < L; l++) {
      const Layer& y = lay[l];
      gap(2000);
      kiln::cuda::rms_norm<bf16>(h, nw, xn, 1, D, 1e-5);
      prefetch({{y.w16[1], b16DD}});
      kiln::cuda::linear<bf16>(xn, y.w16[0], nullptr, nullptr, qkv, 1, D, D);
      prefetch({{y.w16[2], b16DD}});
      kiln::cuda::linear<bf16>(xn, y.w16[1], nullptr, nullptr, qkv + D, 1, D, D);
      prefetch({{y.w16[3], b16DD}});
      kiln::cuda::linear<bf16>(xn, y.w16[2], nullptr, nullptr, qkv + 2 * D, 1, D, D);
      gap(3000);
      gap(6000);
      gap(2500);
      prefetch({{y.w16[4], b16FD}});
      kiln::cuda::linear<bf16>(att, y.w16[3], nullptr, h, h2, 1, D, D);
      kiln::cuda::rms_norm<bf16>(h2, nw, xn, 1, D, 1e-5);
      prefetch({{y.w16[5], b16FD}});
      kiln::cuda::linear<bf16>(xn, y.w16[4], nullptr, nullptr, act, 1, F, D);
      prefetch({{y.w16[6], b16FD}});
      kiln::cuda::linear<bf16>(xn, y.w16[5], nullptr, nullptr, act, 1, F, D);
      if (l + 1 < L) prefetch({{lay[l + 1].w16[0], b16DD}});
      kiln::cuda::linear<bf16>(act, y.w16[6], nullptr, h2, h, 1, D, F);
    }
    join();
  };
  const int64_t MB = 1 << 20;
  const Mode modes[] = {
      {"no prefetch", 0, 0, 0, 0, false, true},
      {"fork only (16 bytes)", 16, 1, 1, 32768, false, true},
      {"cap 8 MB, 132×32 thr, 32 KB", 8 * MB, 132, 32, 32768, false, true},
      {"cap 16 MB, 132×32, 32 KB", 16 * MB, 132, 32, 32768, false, true},
      {"cap 24 MB, 132×32, 32 KB", 24 * MB, 132, 32, 32768, false, true},
      {"cap 32 MB, 132×32, 32 KB", 32 * MB, 132, 32, 32768, false, true},
      {"cap 48 MB, 132×32, 32 KB", 48 * MB, 132, 32, 32768, false, true},
      {"cap 24 MB, 16×32, 32 KB", 24 * MB, 16, 32, 32768, false, true},
      {"cap 24 MB, 132×32, 4 KB", 24 * MB, 132, 32, 4096, false, true},
      {"cap 24 MB, 132×32, 32 KB, evict_last", 24 * MB, 132, 32, 32768, true, true},
      {"no prefetch, no gaps", 0, 0, 0, 0, false, false},
      {"cap 24 MB, no gaps", 24 * MB, 132, 32, 32768, false, false},
  };
  const int NM = sizeof(modes) / sizeof(modes[0]);
  // one GEMV alone (nf4 11008×4096, 22.5 MB): cold (8 layers' copies in turn, > L2), hot (the
  // same copy every call: L2-resident), and a prefetch of its weight queued just before it
  {
    Mode pf = {"", 64 * (1 << 20), 132, 32, 32768, false, true};
    g_mode = &pf;
    auto gemv = [&](int c) { kiln::cuda::qlinear4<bf16>(xn, lay[c].q4[4], nullptr, nullptr, act, 1, F, D, 64, false, NF4); };
    const double cold = median_us([&](int i) { gemv(i % 8); });
    const double hot = median_us([&](int) { gemv(0); });
    const double pfs = median_us([&](int i) {
      k_l2pf<false><<<132, 32, 0, s>>>((const char*)lay[i % 8].q4[4], q4FD / 16 * 16, 32768);
      gemv(i % 8);
    });
    const double pfo = median_us([&](int i) { k_l2pf<false><<<132, 32, 0, s>>>((const char*)lay[i % 8].q4[4], q4FD / 16 * 16, 32768); });
    const double pf1 = median_us([&](int i) {
      k_l2pf<false><<<132, 32, 0, s>>>((const char*)lay[i % 8].q4[4], q4FD / 16 * 16, 32768);
      gemv((i + 7) % 8);  // another copy: the prefetch of i alongside the GEMV of another
    });
    printf("| nf4 GEMV 11008×4096 alone, µs | cold %.1f | hot %.1f | prefetch then GEMV %.1f | prefetch kernel alone %.1f | prefetch ‖ GEMV of another %.1f |\n\n", cold, hot, pfs, pfo, pf1);
    const double c16 = median_us([&](int i) { kiln::cuda::linear<bf16>(xn, lay[i % 8].w16[0], nullptr, nullptr, att, 1, D, D); });
    const double h16 = median_us([&](int) { kiln::cuda::linear<bf16>(xn, lay[0].w16[0], nullptr, nullptr, att, 1, D, D); });
    printf("| bf16 GEMV 4096×4096 alone, µs | cold %.1f | hot %.1f |\n\n", c16, h16);
  }
  // the output must not depend on the prefetch (it is only a cache hint)
  std::vector<bf16> ref(D), got(D);
  bool ok = true;
  printf("| mode | nf4 µs a step | bf16 µs a step | bf16 / nf4 |\n|---|---|---|---|\n");
  for (int mi = 0; mi < NM; mi++) {
    g_mode = &modes[mi];
    double t[2];
    for (int v = 0; v < 2; v++) {
      auto run = [&](int) { v == 0 ? step4() : step16(); };
      k_to<bf16><<<64, 256, 0, s>>>(xf, h, D);
      run(0);
      ck(kiln_synchronize(), "step");
      cudaMemcpy(got.data(), h, 2 * D, cudaMemcpyDeviceToHost);
      if (mi == 0 && v == 0) ref = got;
      if (v == 0 && memcmp(ref.data(), got.data(), 2 * D)) {
        printf("WRONG: mode %s changes the nf4 step's output\n", modes[mi].name);
        ok = false;
      }
      t[v] = median_us(run);  // one call = one step
    }
    printf("| %s | %.0f | %.0f | %.3f |\n", modes[mi].name, t[0], t[1], t[1] / t[0]);
    fflush(stdout);
  }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
