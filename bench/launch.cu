// Launch overhead on the GPU machine: host cost of a cudaLaunchKernel (small and large parameter
// blocks) against replaying the same kernels as one CUDA graph. Decides how decode spends its host
// time (bench/NOTES.md). Build: nvcc -O3 -arch=sm_90a bench/launch.cu -o /tmp/launch
#include <chrono>
#include <cstdio>
#include <cuda_runtime.h>
struct Big { long long v[60]; };
__global__ void k_small(float* y, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] += 1.f; }
__global__ void k_big(float* y, int n, Big b) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] += (float)b.v[i % 60]; }
static double now() { return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main() {
  float* y; cudaMalloc(&y, 4096 * 4); cudaMemset(y, 0, 4096 * 4);
  cudaStream_t s; cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  Big b{}; for (int i = 0; i < 60; i++) b.v[i] = i;
  const int N = 1000;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = now();
    for (int i = 0; i < N; i++) k_small<<<16, 256, 0, s>>>(y, 4096);
    double t1 = now(); cudaStreamSynchronize(s); double t2 = now();
    for (int i = 0; i < N; i++) k_big<<<16, 256, 0, s>>>(y, 4096, b);
    double t3 = now(); cudaStreamSynchronize(s); double t4 = now();
    printf("eager: small params issue %.2f us/launch (total %.0f us), big params issue %.2f us/launch (total %.0f us)\n", (t1 - t0) / N, t2 - t0, (t3 - t2) / N, t4 - t2);
  }
  cudaGraph_t g; cudaGraphExec_t ge;
  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  double c0 = now();
  for (int i = 0; i < N; i++) { if (i & 1) k_big<<<16, 256, 0, s>>>(y, 4096, b); else k_small<<<16, 256, 0, s>>>(y, 4096); }
  cudaStreamEndCapture(s, &g);
  double c1 = now();
  cudaGraphInstantiate(&ge, g, 0);
  double c2 = now();
  printf("graph: capture %.0f us, instantiate %.0f us for %d nodes\n", c1 - c0, c2 - c1, N);
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now(); cudaGraphLaunch(ge, s); double t1 = now(); cudaStreamSynchronize(s); double t2 = now();
    printf("graph replay: issue %.0f us, total %.0f us (%.2f us/node)\n", t1 - t0, t2 - t0, (t2 - t0) / N);
  }
  cudaError_t e = cudaGetLastError();
  printf("status: %s\n", cudaGetErrorString(e));
  return 0;
}
