// rms_norm and layer_norm on the GPU (cpu twin: cpu/kernels.h norm_rows; semantics: compiler/ir/ops.ts).
// One block per row: the row is read from HBM once, with 16-byte loads, into registers (NV vectors
// a thread), reduced in f64 (warp shuffles, then the warps' sums in a fixed order: the same bits on
// every run), normalized and scaled there, and written with 16-byte stores. The rounding steps
// are common/kiln_norm.h's, shared with the cpu twin; only the order of the f64 sums differs from
// its index order, which moves the f32 mean only when the f64 sums straddle an f32 rounding
// boundary (≈ 2^-29 of rows). Rows of any length or alignment fall back to a block per row that
// reads the row from global memory (L1/L2) once per pass.
#pragma once
#include "../common/kiln_norm.h"

namespace kiln {
namespace cuda {
namespace detail {

// the block's f64 sum, in every thread (blockDim.x a multiple of 32; `sh` holds 32 doubles)
__device__ __forceinline__ double block_sum(double v, double* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // sh may still be read by the previous call
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  double t = 0;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += sh[i];
  return t;
}

template <typename T>
union Pack16 {
  uint4 u;
  T t[16 / sizeof(T)];
};

// rows of D = nvec 16-byte vectors; thread t holds vectors t, t + blockDim.x, … (NV of them)
template <bool LAYER, typename T, int NV>
__global__ void __launch_bounds__(NV == 4 ? 1024 : 256) k_norm_vec(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                                                   int64_t rows, int nvec, float eps) {
  typedef Num<T> Nm;
  constexpr int E = 16 / sizeof(T);
  __shared__ double sh[32];
  const int D = nvec * E;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const uint4* xr = reinterpret_cast<const uint4*>(x + r * D);
    float h[NV][E];
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int v = k * blockDim.x + threadIdx.x;
      Pack16<T> p;
      p.u = v < nvec ? xr[v] : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int e = 0; e < E; e++) h[k][e] = Nm::load(p.t[e]);
    }
    float mu = 0;
    if (LAYER) {
      double s = 0;
#pragma unroll
      for (int k = 0; k < NV; k++)
        if (k * (int)blockDim.x + (int)threadIdx.x < nvec)
#pragma unroll
          for (int e = 0; e < E; e++) s += (double)h[k][e];
      mu = (float)(block_sum(s, sh) / (double)D);
    }
    double s = 0;
#pragma unroll
    for (int k = 0; k < NV; k++)
      if (k * (int)blockDim.x + (int)threadIdx.x < nvec)
#pragma unroll
        for (int e = 0; e < E; e++) {
          if (LAYER) h[k][e] = sub_rn(h[k][e], mu);
          s += (double)mul_rn(h[k][e], h[k][e]);
        }
    const float inv = norm_inv(block_sum(s, sh), D, eps);
    uint4* yr = reinterpret_cast<uint4*>(y + r * D);
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int v = k * blockDim.x + threadIdx.x;
      if (v >= nvec) continue;
      Pack16<T> pw, pb, po;
      pw.u = reinterpret_cast<const uint4*>(w)[v];
      if (b) pb.u = reinterpret_cast<const uint4*>(b)[v];
#pragma unroll
      for (int e = 0; e < E; e++) po.t[e] = norm_out<T>(h[k][e], inv, pw.t[e], b ? &pb.t[e] : nullptr);
      yr[v] = po.u;
    }
  }
}

// any D and alignment: a block per row, element-wise loads, the row read once per pass
template <bool LAYER, typename T>
__global__ void k_norm_any(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, int64_t rows, int64_t D, float eps) {
  typedef Num<T> Nm;
  __shared__ double sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    float mu = 0;
    if (LAYER) {
      double s = 0;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += (double)Nm::load(xr[j]);
      mu = (float)(block_sum(s, sh) / (double)D);
    }
    double s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const float h = LAYER ? sub_rn(Nm::load(xr[j]), mu) : Nm::load(xr[j]);
      s += (double)mul_rn(h, h);
    }
    const float inv = norm_inv(block_sum(s, sh), D, eps);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const float h = LAYER ? sub_rn(Nm::load(xr[j]), mu) : Nm::load(xr[j]);
      yr[j] = norm_out<T>(h, inv, w[j], b ? b + j : nullptr);
    }
  }
}

template <bool LAYER, typename T>
void norm_rows(const T* x, const T* w, const T* b, T* y, int64_t rows, int64_t D, double eps_d, const char* what) {
  if (rows <= 0 || D <= 0) return;
  const float eps = (float)eps_d;
  constexpr int E = 16 / sizeof(T);
  const unsigned grid = (unsigned)(rows < 0x7fffffffLL ? rows : 0x7fffffffLL);
  cudaStream_t s = stream();
  const int64_t nvec = D / E;
  const bool vec = D % E == 0 && nvec <= 4 * 1024 && aligned16(x) && aligned16(w) && aligned16(y) && (!b || aligned16(b));
  // the fewest vectors a thread (NV) that keep a block within 256 threads; NV = 4 takes up to 1024
  // threads (rows to 32K 16-bit values); longer rows would spill, and take the fallback
  const int nv = !vec ? 0 : nvec <= 256 ? 1 : nvec <= 512 ? 2 : 4;
  const unsigned threads = !vec ? 256u : (unsigned)(((nvec + nv - 1) / nv + 31) / 32 * 32);
  switch (nv) {
    case 1: k_norm_vec<LAYER, T, 1><<<grid, threads, 0, s>>>(x, w, b, y, rows, (int)nvec, eps); break;
    case 2: k_norm_vec<LAYER, T, 2><<<grid, threads, 0, s>>>(x, w, b, y, rows, (int)nvec, eps); break;
    case 4: k_norm_vec<LAYER, T, 4><<<grid, threads, 0, s>>>(x, w, b, y, rows, (int)nvec, eps); break;
    default: k_norm_any<LAYER, T><<<grid, threads, 0, s>>>(x, w, b, y, rows, D, eps);
  }
  launched(what);
}

}  // namespace detail

// RMSNorm (Zhang & Sennrich, 2019) of each row of D, times w
template <typename T>
void rms_norm(const T* x, const T* w, T* y, int64_t rows, int64_t D, double eps) { detail::norm_rows<false, T>(x, w, nullptr, y, rows, D, eps, "rms_norm"); }

// LayerNorm (Ba et al., 2016) of each row of D, times w, plus b (null: none)
template <typename T>
void layer_norm(const T* x, const T* w, const T* b, T* y, int64_t rows, int64_t D, double eps) { detail::norm_rows<true, T>(x, w, b, y, rows, D, eps, "layer_norm"); }

}  // namespace cuda
}  // namespace kiln
