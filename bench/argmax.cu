// Check and micro-benchmark of the argmax kernel (codegen-templates/cuda/kernels.cuh), greedy
// decoding's pick on the target: rows of logits → the first index of each row's maximum, -1 for a
// row with a NaN or +Inf or nothing above -Inf.
// Correctness: every case against the cpu twin (cpu/kernels.h, itself equal to the reference
// interpreter: test/argmax.test.ts), exactly: f32, bf16, f16; widths 1 to 128256 (Llama 3's
// vocabulary), odd ones and a misaligned row (the scalar path); rows with ties, -Inf, NaN, +Inf,
// all masked, the maximum first or last. Expected: every index equal.
// Timing: median per call over a replayed CUDA graph of 20 calls (graph_timer.cuh), 4 buffer sets
// rotated, on decode's shapes ([1, 32000] and [8, 32000] bf16, [1, 128256]).
//   mkdir -p bench/tmp && nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/argmax bench/argmax.cu
//   bench/tmp/argmax        (a table, then PASS or FAIL with what differed; exit status 1 on FAIL)
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "graph_timer.cuh"
#include "rand.cuh"
#include "timing.cuh"
#include "cpu/kernels.h"
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-argmax"; }
using kiln::bf16;
using kiln::f16;

static bool all_ok = true;

// rows of kind r % 9, as test/argmax-helpers.ts argmaxRows: normals, small integers (ties), masked
// tokens, all masked, a NaN, a +Inf, the maximum last, constant, values a hair apart
template <typename T>
static void fill_rows(std::vector<T>& h, int64_t off, int64_t R, int64_t V) {
  typedef kiln::Num<T> N;
  for (int64_t r = 0; r < R; r++) {
    T* row = h.data() + off + r * V;
    const int64_t at = (int64_t)(uni() * (float)V) % V;
    for (int64_t j = 0; j < V; j++) {
      float v = gauss();
      switch (r % 9) {
        case 1: v = roundf(v * 1.5f); break;
        case 2: v = (j % 3 == 0 || uni() > 0.5f) ? -INFINITY : v; break;
        case 3: v = -INFINITY; break;
        case 4: v = j == at ? NAN : v; break;
        case 5: v = j == at ? INFINITY : v; break;
        case 6: v = j == V - 1 ? 100.f : v; break;
        case 7: v = -2.5f; break;
        case 8: v = 1.f + (float)(j % 5) * ldexpf(1.f, -12); break;
      }
      row[j] = N::store(v);
    }
  }
}

template <typename T>
static void run_case(const char* dt, int64_t R, int64_t V, int offset, bool timed) {
  const int64_t n = R * V;
  std::vector<T> hx(n + offset);
  fill_rows<T>(hx, offset, R, V);
  std::vector<int64_t> ref(R), got(R);
  kiln::cpu::argmax<T>(hx.data() + offset, ref.data(), R, V);
  const int SETS = timed ? 4 : 1;
  T* x[4];
  int64_t* y[4];
  for (int s = 0; s < SETS; s++) {
    ck(cudaMalloc(&x[s], sizeof(T) * (n + offset)), "cudaMalloc x");
    ck(cudaMalloc(&y[s], sizeof(int64_t) * R), "cudaMalloc y");
    // on Kiln's stream: it is non-blocking, so a plain cudaMemcpy from pageable memory (which may
    // return before its DMA lands) is not ordered before the kernel — the first run read the freed
    // buffers of the previous case in the large cases
    ck(cudaMemcpyAsync(x[s], hx.data(), sizeof(T) * (n + offset), cudaMemcpyHostToDevice, kiln::cuda::stream()), "upload x");
    ck(cudaStreamSynchronize(kiln::cuda::stream()), "upload x (sync)");
  }
  kiln::cuda::argmax<T>(x[0] + offset, y[0], R, V);
  ck(cudaDeviceSynchronize(), "argmax");
  ck(cudaMemcpyAsync(got.data(), y[0], sizeof(int64_t) * R, cudaMemcpyDeviceToHost, kiln::cuda::stream()), "download y");
  ck(cudaStreamSynchronize(kiln::cuda::stream()), "download y (sync)");
  int64_t bad = -1, none = 0;
  for (int64_t r = 0; r < R; r++) {
    if (got[r] != ref[r] && bad < 0) bad = r;
    none += ref[r] < 0;
  }
  // the rows are not degenerate: picks where there is one to make, -1 on the NaN / +Inf / masked rows
  const int64_t want_none = V > 4 ? 3 * (R / 9) : 0;
  const bool ok = bad < 0 && none >= want_none && (V == 1 || R - none >= R / 2);
  all_ok &= ok;
  char t[64] = "";
  if (timed) {
    const double us = median_us([&](int i) { kiln::cuda::argmax<T>(x[i % SETS] + offset, y[i % SETS], R, V); });
    snprintf(t, sizeof t, "%8.2f us %7.1f GB/s", us, (double)n * sizeof(T) / (us * 1e3));
  }
  printf("%-5s %4lld x %-7lld off %d  %-4s %s", dt, (long long)R, (long long)V, offset, ok ? "ok" : "FAIL", t);
  if (bad >= 0) printf("  row %lld: gpu %lld, cpu twin %lld", (long long)bad, (long long)got[bad], (long long)ref[bad]);
  else if (!ok) printf("  degenerate data: %lld rows without a pick", (long long)none);
  printf("\n");
  for (int s = 0; s < SETS; s++) cudaFree(x[s]), cudaFree(y[s]);
}

int main() {
  if (kiln_init(0)) {
    fprintf(stderr, "kiln_init failed: %s\n", kiln_last_error());
    return 1;
  }
  printf("dtype rows x width  offset  check time (median of a replayed graph)\n");
  run_case<bf16>("bf16", 1, 32000, 0, true);
  run_case<bf16>("bf16", 8, 32000, 0, true);
  run_case<bf16>("bf16", 1, 128256, 0, true);
  run_case<float>("f32", 1, 32000, 0, true);
  run_case<bf16>("bf16", 128, 32000, 0, true);
  for (int64_t V : {1, 7, 8, 33, 256, 32001}) {
    run_case<bf16>("bf16", 18, V, 0, false);
    run_case<float>("f32", 18, V, 0, false);
    run_case<f16>("f16", 18, V, 0, false);
  }
  run_case<bf16>("bf16", 18, 32000, 1, false);  // misaligned rows: the scalar path
  run_case<f16>("f16", 18, 32000, 0, false);
  run_case<float>("f32", 70000, 33, 0, false);  // more rows than the grid: grid-stride
  printf("%s\n", all_ok ? "PASS" : "FAIL");
  return all_ok ? 0 : 1;
}
