// The benches' timer: the median time of one call, from a CUDA graph of 20 calls replayed 15 times
// (decode replays its step the same way), so the host's launch cost is out of the measurement.
// `launch(i)` issues call i on kiln::cuda::stream() (i lets a bench rotate over buffer copies).
#pragma once
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "cuda/runtime.cuh"

template <typename F>
static double median_us(F launch) {
  cudaStream_t s = kiln::cuda::stream();
  auto check = [](cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
      fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
      exit(1);
    }
  };
  for (int i = 0; i < 3; i++) launch(i);  // warm: allocator cache, cuBLASLt plans
  check(cudaStreamSynchronize(s), "warm-up");
  cudaGraph_t g;
  cudaGraphExec_t ge;
  check(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "begin capture");
  for (int i = 0; i < 20; i++) launch(i);
  check(cudaStreamEndCapture(s, &g), "end capture");
  check(cudaGraphInstantiate(&ge, g, 0), "graph instantiate");
  const int iters = 15;
  std::vector<cudaEvent_t> ev(2 * iters);
  for (auto& e : ev) cudaEventCreate(&e);
  for (int i = 0; i < 3; i++) cudaGraphLaunch(ge, s);
  for (int i = 0; i < iters; i++) {
    cudaEventRecord(ev[2 * i], s);
    cudaGraphLaunch(ge, s);
    cudaEventRecord(ev[2 * i + 1], s);
  }
  check(cudaStreamSynchronize(s), "timed replays");
  std::vector<double> t(iters);
  for (int i = 0; i < iters; i++) {
    float ms;
    cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]);
    t[i] = ms * 1000 / 20;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return t[iters / 2];
}
