// What programmatic dependent launch (PDL, sm_90) saves a kernel in a replayed CUDA graph: a chain
// of dependent small kernels (each reads what the previous wrote) captured three ways — plain
// launches, launches with programmatic stream serialization whose kernels wait
// (griddepcontrol.wait) before touching memory, and the same with the dependents triggered early
// (griddepcontrol.launch_dependents). Prints µs a kernel (median of 15 replays) and checks the
// chain's result is the same every way (a race would change it).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o bench/tmp/pdl bench/pdl.cu
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e = (x);                                                       \
    if (e != cudaSuccess) {                                                    \
      fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e), __LINE__); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

// y[i] = x[i]·a + x[(i + 1) % n] (each kernel depends on all of the previous one's output block)
template <int MODE>
__global__ void k_step(const float* __restrict__ x, float* __restrict__ y, int n, float a, int work) {
  if (MODE >= 1) asm volatile("griddepcontrol.wait;" ::: "memory");
  if (MODE == 2) asm volatile("griddepcontrol.launch_dependents;");
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float v = x[i] * a + x[(i + 1) % n];
    for (int k = 0; k < work; k++) v = v * 0.999f + 0.001f;
    y[i] = v;
  }
}

template <int MODE>
static double run(int blocks, int n, int work, int chain, float* buf0, float* buf1, float* out) {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CK(cudaMemset(buf0, 0, 4 * n));
  auto issue = [&]() {
    for (int c = 0; c < chain; c++) {
      const float* x = c % 2 ? buf1 : buf0;
      float* y = c % 2 ? buf0 : buf1;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(blocks);
      cfg.blockDim = dim3(256);
      cfg.stream = s;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = at;
      cfg.numAttrs = MODE >= 1 ? 1 : 0;
      CK(cudaLaunchKernelEx(&cfg, k_step<MODE>, x, y, n, 1.0001f, work));
    }
  };
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  issue();
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  // the result of one replay from zeros + 1 (checked across modes)
  std::vector<float> init(n);
  for (int i = 0; i < n; i++) init[i] = (float)(i % 17) * 0.01f;
  CK(cudaMemcpy(buf0, init.data(), 4 * n, cudaMemcpyHostToDevice));
  CK(cudaGraphLaunch(ge, s));
  CK(cudaStreamSynchronize(s));
  CK(cudaMemcpy(out, chain % 2 ? buf1 : buf0, 4 * n, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(ge, s));
  std::vector<double> t;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 15; i++) {
    cudaEventRecord(a, s);
    CK(cudaGraphLaunch(ge, s));
    cudaEventRecord(b, s);
    CK(cudaStreamSynchronize(s));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1000.0 / chain);
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
  return t[7];
}

int main() {
  const int chain = 400;
  struct Case {
    int blocks, n, work;
    const char* what;
  } cases[] = {{16, 4096, 0, "tiny (16 blocks, 4096 floats)"},
               {132, 4096 * 8, 0, "small (132 blocks)"},
               {264, 1 << 20, 0, "1M floats (264 blocks)"},
               {528, 1 << 22, 4, "4M floats, some math"}};
  bool ok = true;
  printf("| chain of %d dependent kernels | plain µs/kernel | PDL wait µs | PDL wait+trigger µs |\n|---|---|---|---|\n", chain);
  for (auto& c : cases) {
    float *b0, *b1;
    CK(cudaMalloc(&b0, 4 * c.n));
    CK(cudaMalloc(&b1, 4 * c.n));
    std::vector<float> r0(c.n), r1(c.n), r2(c.n);
    const double t0 = run<0>(c.blocks, c.n, c.work, chain, b0, b1, r0.data());
    const double t1 = run<1>(c.blocks, c.n, c.work, chain, b0, b1, r1.data());
    const double t2 = run<2>(c.blocks, c.n, c.work, chain, b0, b1, r2.data());
    for (int i = 0; i < c.n; i++)
      if (r0[i] != r1[i] || r0[i] != r2[i]) {
        ok = false;
        printf("MISMATCH %s at %d: %g %g %g\n", c.what, i, r0[i], r1[i], r2[i]);
        break;
      }
    printf("| %s | %.2f | %.2f | %.2f |\n", c.what, t0, t1, t2);
    cudaFree(b0);
    cudaFree(b1);
  }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
