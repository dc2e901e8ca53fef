// Quantized linears of the cuda target and quantize-on-load on the GPU. The math is
// compiler/ir/quant.ts (the reference), the storage layouts those of common/kiln_quant.h, the
// semantics those of the cpu twins (cpu/kernels.h qlinear4 / qlinear8).
//
// - 4-bit, NF4/FP4 with blockwise absmax and optional double quantization (QLoRA, Dettmers et
//   al., 2023). Decode (M ≤ 8 rows): a fused dequantize-GEMV, a block of 4 warps per few output
//   features reading the packed codes 16 bytes (32 weights of one absmax block) at a time, the 16
//   code values in shared memory, f32 accumulation, the block's absmax applied once per 32
//   products. Prefill
//   (larger M): the weight is dequantized into a scratch buffer in the activation dtype exactly
//   as the cpu twin dequantizes it (f32(code·absmax in f64), rounded to T) and multiplied by the
//   16-bit path of `linear` (cuBLASLt on the tensor cores; Kiln's tiled GEMM without it).
// - LLM.int8 (Dettmers et al., 2022): the feature columns holding an outlier (|x| > threshold in
//   any row) are found and listed; the other columns are quantized per row (absmax int8); int8 ×
//   int8 → int32 on the integer tensor cores (cuBLASLt, TN) or, for M ≤ 8, a dp4a GEMV after one
//   kernel that finds the outlier columns and quantizes the rows; the
//   epilogue scales by the row and feature absmax and adds the outlier columns' products in
//   floating point against the dequantized int8 weights (quant.ts int8Matmul).
// - Quantize on load (kiln_quantize4 / kiln_quantize8 of kiln_abi.h): the f32 weight is in device
//   memory; absmax, nearest code (ties to the smaller index, in f64, exactly as kiln_quant.h) and
//   int8 rounding run on the GPU; double quantization's mean, int8 codes and scales are computed
//   on the host from the downloaded per-block absmax with kiln_quant.h's own function, so the
//   bytes are those of the host quantizer bit for bit.
#pragma once
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <type_traits>
#include <vector>
#include "../common/kiln_types.h"
#include "../common/kiln_quant.h"
#include "runtime.cuh"
#include "cublaslt.cuh"
#include "kernels.cuh"

namespace kiln {
namespace cuda {
namespace qdetail {

// The 16 code values, passed by value to the kernels (f32 for the GEMV, f64 for exact dequantization).
struct Code16 {
  float f[16];
  double d[16];
};
static inline Code16 code16(const double* code) {
  Code16 c;
  for (int i = 0; i < 16; i++) {
    c.d[i] = code[i];
    c.f[i] = (float)code[i];
  }
  return c;
}

// A 4-bit weight of n values in kiln_quant.h's layout, as pointers into device memory.
struct Q4 {
  const uint8_t* codes;
  const float* absmax;  // without double quantization
  const int8_t* acode;  // with it: int8 code per block, f32 scale per 256 blocks, f64 mean
  const float* ascale;
  const double* mean;
  int64_t block;
  bool dq;
};
static inline Q4 q4_of(const uint8_t* w, int64_t n, int64_t block, bool dq) {
  const uint8_t* tail = w + quant::pad16((n + 1) / 2);
  const int64_t nb = quant::blocks4(n, block);
  Q4 q;
  q.codes = w;
  q.absmax = (const float*)tail;
  q.acode = (const int8_t*)tail;
  q.ascale = (const float*)(tail + quant::pad16(nb));
  q.mean = (const double*)(tail + quant::pad16(nb) + quant::pad16(4 * quant::groups4(n, block)));
  q.block = block;
  q.dq = dq;
  return q;
}
// absmax of block b; with double quantization f32(max(0, mean + code·scale)) in f64 without
// contraction, as kiln_quant.h absmax4 computes it on the host
__device__ __forceinline__ float absmax_of(const Q4& q, double mean, int64_t b) {
  if (!q.dq) return __ldg(q.absmax + b);
  const double v = __dadd_rn(mean, __dmul_rn((double)__ldg(q.acode + b), (double)__ldg(q.ascale + (b >> 8))));
  return (float)fmax(0.0, v);
}

// 8 activations as f32 from 16-byte aligned memory
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* f) {
  if (sizeof(T) == 4) {
    detail::Vec<T>::unpack(__ldg(reinterpret_cast<const uint4*>(p)), f);
    detail::Vec<T>::unpack(__ldg(reinterpret_cast<const uint4*>(p) + 1), f + 4);
  } else {
    detail::Vec<T>::unpack(__ldg(reinterpret_cast<const uint4*>(p)), f);
  }
}

// y[m, row] = Σ_k x[m, k] · code[c(row, k)] · absmax(block) (+ bias[row]) for MR ≤ 8 rows of x, any
// K and block (the general path; k_qgemv4v is the fast one): one warp per output feature, 8 a block.
template <typename T, int MR>
__global__ void __launch_bounds__(256) k_qgemv4(const T* __restrict__ x, Q4 q, Code16 code, const T* __restrict__ bias, T* __restrict__ y, int64_t N,
                                                 int64_t K) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  const double mean = q.dq ? __ldg(q.mean) : 0.0;
  float acc[MR];
#pragma unroll
  for (int m = 0; m < MR; m++) acc[m] = 0.f;
  for (int64_t k = lane; k < K; k += 32) {
    const int64_t e = row * K + k;
    const float wv = tab[(q.codes[e >> 1] >> ((e & 1) * 4)) & 15] * absmax_of(q, mean, e / q.block);
#pragma unroll
    for (int m = 0; m < MR; m++) acc[m] = fmaf(wv, (float)Num<T>::load(x[m * K + k]), acc[m]);
  }
#pragma unroll
  for (int m = 0; m < MR; m++)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  if (lane == 0) {
    const float b = bias ? (float)Num<T>::load(bias[row]) : 0.f;
#pragma unroll
    for (int m = 0; m < MR; m++) y[m * N + row] = Num<T>::store((typename Num<T>::C)(acc[m] + b));
  }
}

// The decode GEMV's fast path (K and block multiples of 32, 16-byte aligned operands): a block of
// 4 warps computes R output features, its 128 lanes splitting K into 16-byte pieces of codes (32
// weights of one absmax block); the R rows' pieces are loaded together, each piece of x once for
// the R rows. A code is found by byte offset: (w << 2) & 0x3c3c3c3c puts 4·code of the even
// elements in the bytes of a word, (w >> 2) & 0x3c3c3c3c those of the odd ones; one byte_perm
// extracts it and one shared load fetches the value. lb = log2(block), or -1.
template <typename T, int MR, int R>
__global__ void __launch_bounds__(128) k_qgemv4v(const T* __restrict__ x, Q4 q, Code16 code, const T* __restrict__ bias, T* __restrict__ y, int64_t N,
                                                  int64_t K, int lb) {
  __shared__ float tab[16];
  __shared__ float red[4][R * MR];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const int64_t row0 = (int64_t)blockIdx.x * R;
  const double mean = q.dq ? __ldg(q.mean) : 0.0;
  const int64_t KV = K / 32;
  const char* tb = reinterpret_cast<const char*>(tab);
  float acc[R][MR];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MR; m++) acc[r][m] = 0.f;
  for (int64_t p = threadIdx.x; p < KV; p += 128) {
    uint4 pc[R];
    float a[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int64_t row = row0 + r < N ? row0 + r : N - 1;  // rows past N: computed, never stored
      pc[r] = detail::ld_stream(reinterpret_cast<const uint4*>(q.codes) + row * KV + p);
      const int64_t e = row * K + p * 32;
      a[r] = absmax_of(q, mean, lb >= 0 ? (e >> lb) : e / q.block);
    }
    float part[R][MR];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int m = 0; m < MR; m++) part[r][m] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      float xf[MR][8];
#pragma unroll
      for (int m = 0; m < MR; m++) load8<T>(x + m * K + p * 32 + 8 * j, xf[m]);
#pragma unroll
      for (int r = 0; r < R; r++) {
        const uint32_t w = j == 0 ? pc[r].x : j == 1 ? pc[r].y : j == 2 ? pc[r].z : pc[r].w;
        const uint32_t lo = (w << 2) & 0x3c3c3c3cu, hi = (w >> 2) & 0x3c3c3c3cu;
#pragma unroll
        for (int k = 0; k < 4; k++) {
          const float v0 = *reinterpret_cast<const float*>(tb + __byte_perm(lo, 0, 0x4440 + k));
          const float v1 = *reinterpret_cast<const float*>(tb + __byte_perm(hi, 0, 0x4440 + k));
#pragma unroll
          for (int m = 0; m < MR; m++) part[r][m] = fmaf(v1, xf[m][2 * k + 1], fmaf(v0, xf[m][2 * k], part[r][m]));
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int m = 0; m < MR; m++) acc[r][m] = fmaf(part[r][m], a[r], acc[r][m]);
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MR; m++) {
      float v = acc[r][m];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) red[wid][r * MR + m] = v;
    }
  __syncthreads();
  if (threadIdx.x < R * MR) {
    const int r = threadIdx.x / MR, m = threadIdx.x % MR;
    const int64_t row = row0 + r;
    if (row < N) {
      const float b = bias ? (float)Num<T>::load(bias[row]) : 0.f;
      y[m * N + row] = Num<T>::store((typename Num<T>::C)(red[0][threadIdx.x] + red[1][threadIdx.x] + red[2][threadIdx.x] + red[3][threadIdx.x] + b));
    }
  }
}

// The dequantized weight in T, as the cpu twin computes it: T(f32(code[c] · absmax)), the product in f64.
template <typename T>
__global__ void k_dequant4(Q4 q, Code16 code, T* __restrict__ out, int64_t n) {
  const double mean = q.dq ? __ldg(q.mean) : 0.0;
  const int64_t bytes = (n + 1) / 2;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
    const uint8_t c = __ldg(q.codes + i);
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int64_t e = 2 * i + h;
      if (e >= n) break;
      const double a = (double)absmax_of(q, mean, e / q.block);
      out[e] = Num<T>::store((typename Num<T>::C)__double2float_rn(__dmul_rn(code.d[(c >> (4 * h)) & 15], a)));
    }
  }
}

// ---------------------------------------------------------------- quantize on load

// absmax of each block: one warp a block
__global__ void k_absmax_blocks(const float* __restrict__ w, int64_t n, int64_t block, float* __restrict__ absmax, int64_t nb) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t b = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); b < nb; b += warps) {
    float m = 0.f;
    const int64_t end = (b + 1) * block < n ? (b + 1) * block : n;
    for (int64_t i = b * block + lane; i < end; i += 32) m = fmaxf(m, fabsf(w[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) absmax[b] = m;
  }
}

// one byte of codes a thread: the nearest code of w/absmax in f64, ties to the smaller index
__global__ void k_codes4(const float* __restrict__ w, int64_t n, int64_t block, const float* __restrict__ absmax, Code16 code, uint8_t* __restrict__ out) {
  const int64_t bytes = (n + 1) / 2;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t byte = 0;
    for (int h = 0; h < 2; h++) {
      const int64_t e = 2 * i + h;
      if (e >= n) break;
      const double m = (double)absmax[e / block];
      const double v = m > 0 ? __ddiv_rn((double)w[e], m) : 0.0;
      int best = 0;
      for (int c = 1; c < 16; c++)
        if (fabs(code.d[c] - v) < fabs(code.d[best] - v)) best = c;
      byte |= (uint32_t)best << (4 * h);
    }
    out[i] = (uint8_t)byte;
  }
}

// the largest of every thread's m over the block (all of its threads call it)
__device__ __forceinline__ float block_max(float m) {
  __shared__ float red[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, red[i]);
  __syncthreads();  // red is free again
  return m;
}

// int8 per row: one block a row; scale f64 absmax/127, codes floor(w/absmax·127 + 0.5) in f64
__global__ void __launch_bounds__(256) k_quantize8(const float* __restrict__ w, int64_t K, int8_t* __restrict__ q, double* __restrict__ scale) {
  const int64_t r = blockIdx.x;
  const float* wr = w + r * K;
  float m = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, fabsf(wr[k]));
  const double md = (double)block_max(m);
  if (threadIdx.x == 0) scale[r] = __ddiv_rn(md, 127.0);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    q[r * K + k] = (int8_t)(md > 0 ? floor(__dadd_rn(__dmul_rn(__ddiv_rn((double)wr[k], md), 127.0), 0.5)) : 0.0);
}

// ---------------------------------------------------------------- LLM.int8

// outlier columns: flags[k] = 1 when some |x[m, k]| > threshold (large M; many blocks)
template <typename T>
__global__ void k_i8_flags(const T* __restrict__ x, int64_t total, int64_t K, float threshold, int* __restrict__ flags) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    if (fabsf((float)Num<T>::load(x[i])) > threshold) flags[i % K] = 1;
}

// The ordered list of outlier columns and its length (one block of 1024). small_m > 0 (decode):
// the flags are computed here from the small_m rows of x (none when !decomp), and the rows are
// quantized here too (as k_i8_quant_rows): one launch before the GEMV.
template <typename T>
__global__ void __launch_bounds__(1024) k_i8_list(const T* __restrict__ x, int small_m, bool decomp, float threshold, int* __restrict__ flags, int64_t K,
                                                  int* __restrict__ list, int* __restrict__ count, int64_t Kp, int8_t* __restrict__ q, float* __restrict__ sx) {
  __shared__ int warp_n[32];
  __shared__ int base;
  if (threadIdx.x == 0) base = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  for (int64_t k0 = 0; k0 < K; k0 += 1024) {
    const int64_t k = k0 + threadIdx.x;
    int f = 0;
    if (k < K) {
      if (small_m > 0) {
        if (decomp)
          for (int m = 0; m < small_m; m++) f |= fabsf((float)Num<T>::load(x[m * K + k])) > threshold;
        flags[k] = f;
      } else {
        f = flags[k];
      }
    }
    const unsigned bal = __ballot_sync(0xffffffffu, f);
    if (lane == 0) warp_n[wid] = __popc(bal);
    __syncthreads();
    int before = base;
    for (int i = 0; i < wid; i++) before += warp_n[i];
    if (f) list[before + __popc(bal & ((1u << lane) - 1u))] = (int)k;
    __syncthreads();
    if (threadIdx.x == 0)
      for (int i = 0; i < 32; i++) base += warp_n[i];
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = base;
  for (int m = 0; m < small_m; m++) {  // flags[k] was written by this thread (k ≡ threadIdx.x)
    const T* xr = x + (int64_t)m * K;
    float mx = 0.f;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
      if (!flags[k]) mx = fmaxf(mx, fabsf((float)Num<T>::load(xr[k])));
    mx = block_max(mx);
    if (threadIdx.x == 0) sx[m] = mx / 127.f;
    for (int64_t k = threadIdx.x; k < Kp; k += blockDim.x) {
      float v = 0.f;
      if (k < K && mx > 0.f && !flags[k]) v = floorf(__fadd_rn(__fmul_rn(__fdiv_rn((float)Num<T>::load(xr[k]), mx), 127.f), 0.5f));
      q[(int64_t)m * Kp + k] = (int8_t)v;
    }
  }
}

// per-row absmax int8 of x over the non-outlier columns (one block a row): q rows of Kp ≥ K bytes
// (zero past K and at outlier columns), scale sx[m] = absmax/127
template <typename T>
__global__ void __launch_bounds__(256) k_i8_quant_rows(const T* __restrict__ x, int64_t K, int64_t Kp, const int* __restrict__ flags, int8_t* __restrict__ q,
                                                       float* __restrict__ sx) {
  const int64_t m = blockIdx.x;
  const T* xr = x + m * K;
  float mx = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    if (!(flags && flags[k])) mx = fmaxf(mx, fabsf((float)Num<T>::load(xr[k])));
  mx = block_max(mx);
  if (threadIdx.x == 0) sx[m] = mx / 127.f;
  for (int64_t k = threadIdx.x; k < Kp; k += blockDim.x) {
    float v = 0.f;
    if (k < K && mx > 0.f && !(flags && flags[k])) v = floorf(__fadd_rn(__fmul_rn(__fdiv_rn((float)Num<T>::load(xr[k]), mx), 127.f), 0.5f));
    q[m * Kp + k] = (int8_t)v;
  }
}

// Σ over the outlier columns of x[m, k] · qw[n, k] (the weight dequantized: times sw[n] by the caller)
template <typename T>
__device__ __forceinline__ float outlier_sum(const T* __restrict__ x, const int8_t* __restrict__ qw, const int* __restrict__ list, int cnt, int64_t m, int64_t n,
                                             int64_t K, int from, int step) {
  float s = 0.f;
  for (int j = from; j < cnt; j += step) {
    const int k = list[j];
    s = fmaf((float)Num<T>::load(x[m * K + k]), (float)qw[n * K + k], s);
  }
  return s;
}

// y[m, row] for MR ≤ 8 rows: int8 · int8 by dp4a (one warp a weight row, 16 bytes a lane a step),
// then the LLM.int8 epilogue. VEC: K a multiple of 16 and 16-byte aligned weights.
template <typename T, int MR, bool VEC>
__global__ void __launch_bounds__(256) k_qgemv8(const T* __restrict__ x, const int8_t* __restrict__ qx, int64_t Kp, const float* __restrict__ sx,
                                                const int8_t* __restrict__ qw, const double* __restrict__ sw, const int* __restrict__ list,
                                                const int* __restrict__ count, const T* __restrict__ bias, T* __restrict__ y, int64_t N, int64_t K) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  int acc[MR];
#pragma unroll
  for (int m = 0; m < MR; m++) acc[m] = 0;
  if (VEC) {
    const int64_t KV = K / 16;
    const uint4* w4 = reinterpret_cast<const uint4*>(qw + row * K);
    int64_t i = lane;
    const int U = 4;
    for (; i < KV; i += 32 * U) {
      uint4 pw[U];
#pragma unroll
      for (int u = 0; u < U; u++) pw[u] = i + 32 * u < KV ? detail::ld_stream(w4 + i + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (i + 32 * u >= KV) break;
#pragma unroll
        for (int m = 0; m < MR; m++) {
          const uint4 px = __ldg(reinterpret_cast<const uint4*>(qx + m * Kp) + i + 32 * u);
          acc[m] = __dp4a((int)pw[u].x, (int)px.x, acc[m]);
          acc[m] = __dp4a((int)pw[u].y, (int)px.y, acc[m]);
          acc[m] = __dp4a((int)pw[u].z, (int)px.z, acc[m]);
          acc[m] = __dp4a((int)pw[u].w, (int)px.w, acc[m]);
        }
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const int wv = qw[row * K + k];
#pragma unroll
      for (int m = 0; m < MR; m++) acc[m] += wv * (int)qx[m * Kp + k];
    }
  }
  const int cnt = *count;
  const float swf = (float)sw[row];
  const float b = bias ? (float)Num<T>::load(bias[row]) : 0.f;
#pragma unroll
  for (int m = 0; m < MR; m++) {
    int a = acc[m];
    float o = outlier_sum<T>(x, qw, list, cnt, m, row, K, lane, 32);
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) {
      a += __shfl_xor_sync(0xffffffffu, a, s);
      o += __shfl_xor_sync(0xffffffffu, o, s);
    }
    if (lane == 0) y[m * N + row] = Num<T>::store((typename Num<T>::C)((float)a * sx[m] * swf + o * swf + b));
  }
}

// int8 GEMM without cuBLASLt: acc[m, n] = Σ_k qx[m, k] · qw[n, k], 64×64 tiles, 32-deep k-steps,
// dp4a on 4×4 outputs a thread.
__global__ void __launch_bounds__(256) k_gemm_i8(const int8_t* __restrict__ qx, int64_t Kp, const int8_t* __restrict__ qw, int32_t* __restrict__ acc, int64_t M,
                                                 int64_t N, int64_t K) {
  __shared__ int sa[64][9], sb[64][9];  // 8 words (32 bytes) of k a row, padded against bank conflicts
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t m0 = (int64_t)blockIdx.y * 64, n0 = (int64_t)blockIdx.x * 64;
  int c[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += 32) {
    for (int t = threadIdx.x; t < 64 * 8; t += 256) {
      const int r = t >> 3, wd = t & 7;
      uint32_t va = 0, vb = 0;
      for (int j = 0; j < 4; j++) {
        const int64_t k = k0 + wd * 4 + j;
        if (k < K && m0 + r < M) va |= (uint32_t)(uint8_t)qx[(m0 + r) * Kp + k] << (8 * j);
        if (k < K && n0 + r < N) vb |= (uint32_t)(uint8_t)qw[(n0 + r) * K + k] << (8 * j);
      }
      sa[r][wd] = (int)va;
      sb[r][wd] = (int)vb;
    }
    __syncthreads();
#pragma unroll
    for (int wd = 0; wd < 8; wd++)
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) c[i][j] = __dp4a(sa[ty * 4 + i][wd], sb[tx * 4 + j][wd], c[i][j]);
    __syncthreads();
  }
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < M && n < N) acc[m * N + n] = c[i][j];
    }
}

// the LLM.int8 epilogue of the large-M path: y = acc · sx[m] · sw[n] + outliers · sw[n] + bias
template <typename T>
__global__ void k_i8_epilogue(const int32_t* __restrict__ acc, const T* __restrict__ x, const float* __restrict__ sx, const int8_t* __restrict__ qw,
                              const double* __restrict__ sw, const int* __restrict__ list, const int* __restrict__ count, const T* __restrict__ bias,
                              T* __restrict__ y, int64_t M, int64_t N, int64_t K) {
  const int cnt = *count;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < M * N; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / N, n = i % N;
    const float swf = (float)sw[n];
    float v = (float)acc[i] * sx[m] * swf;
    if (cnt) v += outlier_sum<T>(x, qw, list, cnt, m, n, K, 0, 1) * swf;
    if (bias) v += (float)Num<T>::load(bias[n]);
    y[i] = Num<T>::store((typename Num<T>::C)v);
  }
}

// f(std::integral_constant<int, M>()) for M in 1…8 (the GEMVs' rows, a template parameter)
template <typename F>
static void with_rows(int64_t M, F f) {
  switch (M) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 6: f(std::integral_constant<int, 6>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    case 8: f(std::integral_constant<int, 8>()); break;
  }
}

}  // namespace qdetail

// qlinear, 4-bit: y = x · deq(W)ᵀ (+ b); W in kiln_quant.h's 4-bit layout, `code` the 16 code
// values (host memory: they travel to the kernels by value).
template <typename T>
void qlinear4(const T* x, const uint8_t* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K, int64_t block, bool dq, const double* code) {
  if (M <= 0 || N <= 0) return;
  const qdetail::Q4 q = qdetail::q4_of(w, N * K, block, dq);
  const qdetail::Code16 c = qdetail::code16(code);
  cudaStream_t s = stream();
  if (M <= 8) {
    const bool vec = K % 32 == 0 && block % 32 == 0 && detail::aligned16(x) && detail::aligned16(w);
    const int64_t blocks = (N + 7) / 8;
    if (blocks > 0x7fffffffLL) rt::fail(KILN_ERR_INVALID, "qlinear4: N = %lld is too large", (long long)N);
    int lb = -1;
    for (int i = 0; i < 62; i++)
      if (((int64_t)1 << i) == block) lb = i;
    qdetail::with_rows(M, [&](auto rows) {
      constexpr int MR = decltype(rows)::value;
      constexpr int R = MR <= 2 ? 4 : MR <= 4 ? 2 : 1;  // output features a block (registers: R·MR sums)
      if (vec) qdetail::k_qgemv4v<T, MR, R><<<(unsigned)((N + R - 1) / R), 128, 0, s>>>(x, q, c, bias, y, N, K, lb);
      else qdetail::k_qgemv4<T, MR><<<(unsigned)blocks, 256, 0, s>>>(x, q, c, bias, y, N, K);
    });
    detail::launched("qlinear4 (GEMV)");
    return;
  }
  // prefill: dequantize into a scratch weight, then the 16-bit GEMM of `linear`
  T* wd = (T*)rt::alloc((int64_t)sizeof(T) * N * K, "qlinear4 (dequantized weight)");
  qdetail::k_dequant4<T><<<detail::grid_for((N * K + 1) / 2, detail::kThreads), detail::kThreads, 0, s>>>(q, c, wd, N * K);
  detail::launched("qlinear4 (dequantize)");
  linear<T>(x, wd, bias, y, M, N, K);
  rt::release(wd);
}

// qlinear, int8 (LLM.int8): see the header. W: N·K int8 codes (padded to 16 bytes), then N f64 scales.
template <typename T>
void qlinear8(const T* x, const uint8_t* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K, double threshold) {
  if (M <= 0 || N <= 0) return;
  const int8_t* qw = (const int8_t*)w;
  const double* sw = (const double*)(w + quant::pad16(N * K));
  const bool decomp = threshold > 0 && isfinite(threshold);
  const int64_t Kp = (K + 15) / 16 * 16;
  const bool small = M <= 8;
  // one workspace: flags[K], list[K], count, sx[M], qx[M·Kp], and the int32 products (large M)
  const int64_t off_list = quant::pad16(4 * K), off_count = off_list + quant::pad16(4 * K), off_sx = off_count + 16, off_qx = off_sx + quant::pad16(4 * M),
                off_acc = off_qx + quant::pad16(M * Kp), total = off_acc + (small ? 0 : 4 * M * N);
  uint8_t* ws = (uint8_t*)rt::alloc(total, "qlinear8 (workspace)");
  int* flags = (int*)ws;
  int* list = (int*)(ws + off_list);
  int* count = (int*)(ws + off_count);
  float* sx = (float*)(ws + off_sx);
  int8_t* qx = (int8_t*)(ws + off_qx);
  int32_t* acc = (int32_t*)(ws + off_acc);
  cudaStream_t s = stream();
  const float thr = (float)threshold;
  if (small) {
    // decode: outlier columns and the rows' int8 in one launch
    qdetail::k_i8_list<T><<<1, 1024, 0, s>>>(x, (int)M, decomp, thr, flags, K, list, count, Kp, qx, sx);
    detail::launched("qlinear8 (outliers, quantize activations)");
  } else {
    if (!decomp) {
      rt::check(cudaMemsetAsync(count, 0, 4, s), "cudaMemsetAsync (qlinear8)");
    } else {
      rt::check(cudaMemsetAsync(flags, 0, 4 * K, s), "cudaMemsetAsync (qlinear8)");
      qdetail::k_i8_flags<T><<<detail::grid_for(M * K, detail::kThreads), detail::kThreads, 0, s>>>(x, M * K, K, thr, flags);
      qdetail::k_i8_list<T><<<1, 1024, 0, s>>>(x, 0, true, thr, flags, K, list, count, Kp, qx, sx);
      detail::launched("qlinear8 (outlier columns)");
    }
    qdetail::k_i8_quant_rows<T><<<(unsigned)M, 256, 0, s>>>(x, K, Kp, decomp ? flags : nullptr, qx, sx);
    detail::launched("qlinear8 (quantize activations)");
  }
  if (small) {
    const bool vec = K % 16 == 0 && detail::aligned16(w);
    const unsigned blocks = (unsigned)((N + 7) / 8);
    qdetail::with_rows(M, [&](auto rows) {
      constexpr int MR = decltype(rows)::value;
      if (vec) qdetail::k_qgemv8<T, MR, true><<<blocks, 256, 0, s>>>(x, qx, Kp, sx, qw, sw, list, count, bias, y, N, K);
      else qdetail::k_qgemv8<T, MR, false><<<blocks, 256, 0, s>>>(x, qx, Kp, sx, qw, sw, list, count, bias, y, N, K);
    });
    detail::launched("qlinear8 (GEMV)");
  } else {
    // column-major view, TN: accᵀ[N×M] = Wᵀ(stored K×N)ᵀ · qxᵀ(stored K×M)
    if (!lt::gemm_i8(N, M, K, qw, K, qx, Kp, acc, N, "qlinear8")) {
      static bool noted = false;
      if (!noted) fprintf(stderr, "kiln: no cuBLASLt int8 GEMM here (m=%lld n=%lld k=%lld); LLM.int8 runs on Kiln's own dp4a kernel (slow)\n", (long long)N, (long long)M, (long long)K);
      noted = true;
      dim3 grid((unsigned)((N + 63) / 64), (unsigned)((M + 63) / 64));
      qdetail::k_gemm_i8<<<grid, 256, 0, s>>>(qx, Kp, qw, acc, M, N, K);
      detail::launched("qlinear8 (int8 GEMM)");
    }
    qdetail::k_i8_epilogue<T><<<detail::grid_for(M * N, detail::kThreads), detail::kThreads, 0, s>>>(acc, x, sx, qw, sw, list, count, bias, y, M, N, K);
    detail::launched("qlinear8 (epilogue)");
  }
  rt::release(ws);
}

}  // namespace cuda
}  // namespace kiln

// Quantize-on-load on the GPU (kiln_abi.h): bit for bit kiln_quant.h's host functions.
extern "C" int kiln_quantize4(void* dst, const float* src, int64_t n, int64_t block, int dq, const double* code16) {
  return kiln::rt::guard([&] {
    namespace Q = kiln::quant;
    if (n < 0 || block <= 0) kiln::rt::fail(KILN_ERR_INVALID, "kiln_quantize4: n = %lld, block = %lld", (long long)n, (long long)block);
    kiln::rt::ensure_device();
    cudaStream_t s = kiln::rt::state().stream;
    const int64_t nb = Q::blocks4(n, block), codes = Q::pad16((n + 1) / 2);
    uint8_t* out = (uint8_t*)dst;
    float* absmax = (float*)kiln::rt::alloc(4 * (nb > 0 ? nb : 1), "kiln_quantize4 (absmax)");
    namespace D = kiln::cuda::detail;
    if (nb > 0) {
      kiln::cuda::qdetail::k_absmax_blocks<<<D::grid_for(nb * 32, D::kThreads), D::kThreads, 0, s>>>(src, n, block, absmax, nb);
      D::launched("kiln_quantize4 (absmax)");
    }
    if (dq) {
      // double quantization on the host, from the exact absmax: kiln_quant.h's own function
      std::vector<float> host((size_t)nb);
      std::vector<uint8_t> tail((size_t)Q::tail4_bytes(n, block, true));
      if (nb > 0) kiln::rt::check(cudaMemcpyAsync(host.data(), absmax, 4 * (size_t)nb, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (absmax down)");
      kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_quantize4)");
      Q::tail4(host.data(), n, block, true, tail.data());
      if (nb > 0) kiln::rt::check(cudaMemcpyAsync(absmax, host.data(), 4 * (size_t)nb, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (absmax up)");
      kiln::rt::check(cudaMemcpyAsync(out + codes, tail.data(), tail.size(), cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (double quant up)");
      kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_quantize4)");
    } else if (nb > 0) {
      kiln::rt::check(cudaMemcpyAsync(out + codes, absmax, 4 * (size_t)nb, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync (absmax)");
    }
    kiln::rt::check(cudaMemsetAsync(out, 0, (size_t)codes, s), "cudaMemsetAsync (kiln_quantize4)");
    if (n > 0) {
      kiln::cuda::qdetail::k_codes4<<<D::grid_for((n + 1) / 2, D::kThreads), D::kThreads, 0, s>>>(src, n, block, absmax, kiln::cuda::qdetail::code16(code16), out);
      D::launched("kiln_quantize4 (codes)");
    }
    kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_quantize4)");
    kiln::rt::release(absmax);
  });
}
extern "C" int kiln_quantize8(void* dst, const float* src, int64_t N, int64_t K) {
  return kiln::rt::guard([&] {
    namespace Q = kiln::quant;
    if (N < 0 || K < 0) kiln::rt::fail(KILN_ERR_INVALID, "kiln_quantize8: N = %lld, K = %lld", (long long)N, (long long)K);
    kiln::rt::ensure_device();
    cudaStream_t s = kiln::rt::state().stream;
    uint8_t* out = (uint8_t*)dst;
    kiln::rt::check(cudaMemsetAsync(out, 0, (size_t)Q::bytes8(N, K), s), "cudaMemsetAsync (kiln_quantize8)");
    if (N > 0 && N <= 0x7fffffffLL) {
      kiln::cuda::qdetail::k_quantize8<<<(unsigned)N, 256, 0, s>>>(src, K, (int8_t*)out, (double*)(out + Q::pad16(N * K)));
      kiln::cuda::detail::launched("kiln_quantize8");
    }
    kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_quantize8)");
  });
}
