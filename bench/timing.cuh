// Timing helpers of the standalone CUDA benches (bench/*.cu): an error check that exits, and the
// median time of a launch over CUDA events on kiln::cuda::stream() after warm-ups.
#pragma once
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "cuda/runtime.cuh"

static void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    exit(1);
  }
}

// launch(i) for i = 0, 1, …: the i-th warm-up or timed run
template <typename F>
static double median_us(F launch, int warm, int iters) {
  cudaStream_t s = kiln::cuda::stream();
  std::vector<cudaEvent_t> ev(2 * iters);
  for (auto& e : ev) ck(cudaEventCreate(&e), "event");
  for (int i = 0; i < warm; i++) launch(i);
  for (int i = 0; i < iters; i++) {
    ck(cudaEventRecord(ev[2 * i], s), "record");
    launch(i);
    ck(cudaEventRecord(ev[2 * i + 1], s), "record");
  }
  ck(cudaStreamSynchronize(s), "sync");
  std::vector<double> t(iters);
  for (int i = 0; i < iters; i++) {
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]), "elapsed");
    t[i] = ms * 1000.0;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(t.begin(), t.end());
  return t[iters / 2];
}
