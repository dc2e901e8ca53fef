// CUDA kernels of the cuda target: the same functions, template parameters and arguments as
// cpu/kernels.h (host-side launchers taking device pointers), with the same semantics: compute in
// f32 for 16-bit floats, f64 for f32 sums (accumulators of linear/matmul/softmax/reduce, as the cpu
// twin), f64 for integers and bool (Num<T>::C), and round-to-nearest-even stores through Num<T>.
// Every launch goes on kiln::cuda::stream() and is checked; none waits for the GPU except
// gather, which reads back whether an index was out of range.
//
// Hot path: `linear` in bf16/f16 at decode (M ≤ 8 rows) is a bandwidth-bound GEMV, one warp per
// output feature streaming its weight row with 16-byte loads; larger M goes to cuBLASLt (loaded
// at run time, cublaslt.cuh) or, without it, a tiled SIMT GEMM. The memory-bound kernels (fused
// elementwise, strided copies, gathers) move 16-byte words where pointers and shapes allow it and
// fall back to one element a thread where they do not (bench/membound.cu measures both).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#include <type_traits>
#include <utility>
#include "../common/kiln_types.h"
#include "runtime.cuh"
#include "cublaslt.cuh"
#include "flash_attn2.cuh"

namespace kiln {
namespace cuda {

enum { REDUCE_SUM = 0, REDUCE_MEAN = 1, REDUCE_MAX = 2 };

// Accumulator of long sums: f64 for f32 (as the cpu target), f32 for 16-bit floats, f64 for ints.
template <typename T> struct Acc { typedef typename Num<T>::C type; };
template <> struct Acc<float> { typedef double type; };

template <typename T> struct Is16 { static const bool value = false; };
template <> struct Is16<bf16> { static const bool value = true; };
template <> struct Is16<f16> { static const bool value = true; };
template <typename T> struct LtType { static const int value = -1; };
template <> struct LtType<bf16> { static const int value = (int)CUDA_R_16BF; };
template <> struct LtType<f16> { static const int value = (int)CUDA_R_16F; };

namespace detail {

static const int kThreads = 256;

// Lets the kernel after this one start its launch now if it was launched as a programmatic
// dependent (quant.cuh's k_qgemv4p: its blocks take SMs as this grid's leave and read nothing of
// this kernel's before their griddepcontrol.wait); no effect on a plainly launched next kernel.
__device__ __forceinline__ void allow_dependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}
// A kernel launched by launch_dependent calls this before it reads anything the kernel before it
// writes (or writes anything that kernel reads): it returns once that kernel has finished and its
// writes are visible. In a plainly launched kernel that has already happened, and it returns at once.
__device__ __forceinline__ void wait_prior() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// kernel<<<grid, block, smem, s>>>(args…) as a programmatic dependent of the kernel before it on s
// (Hopper's programmatic dependent launch: the grid may start while that kernel finishes; the kernel
// must call wait_prior first, as above). The caller checks the compute capability (≥ 9.0).
template <typename... KArgs, typename... Args>
static void launch_dependent(const char* what, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  if (e != cudaSuccess) rt::fail(KILN_ERR_DEVICE, "CUDA error %s (%s) launching the %s kernel", cudaGetErrorName(e), cudaGetErrorString(e), what);
}
// whether launches may be programmatic dependents: compute capability ≥ 9.0 and KILN_PDL not 0 (an
// A/B switch)
static inline bool& pdl_switch() {
  static bool on = !(getenv("KILN_PDL") && strcmp(getenv("KILN_PDL"), "0") == 0);
  return on;
}
static inline bool pdl_on() { return pdl_switch() && rt::state().cc_major >= 9; }

static inline void launched(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) rt::fail(KILN_ERR_DEVICE, "CUDA error %s (%s) launching the %s kernel", cudaGetErrorName(e), cudaGetErrorString(e), what);
}

// Blocks for `work` items at `per_block` a block, capped for grid-stride loops.
static inline unsigned grid_for(int64_t work, int per_block) {
  int64_t b = (work + per_block - 1) / per_block;
  int sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  int64_t cap = (int64_t)sms * 16;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return (unsigned)b;
}

static inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int i = 0; i < s.rank; i++) n *= s.d[i];
  return n;
}

using kiln::aligned16;

// A shape with the strides of NOPS operands over it, dims of size 1 dropped and neighbours merged
// wherever every operand is contiguous across them (so most strided ops run at rank 1–3).
template <int NOPS>
struct Geo {
  int rank;
  int64_t d[KILN_MAX_RANK];
  int64_t s[NOPS][KILN_MAX_RANK];
};

template <int NOPS>
static Geo<NOPS> coalesce(const Shape& shape, const int64_t* const* st) {
  int64_t d[KILN_MAX_RANK], s[NOPS][KILN_MAX_RANK];
  int r = 0;
  for (int i = shape.rank - 1; i >= 0; i--) {  // innermost first
    int64_t n = shape.d[i];
    if (n == 1) continue;
    if (r > 0) {
      bool merge = true;
      for (int o = 0; o < NOPS; o++)
        if (st[o][i] != s[o][r - 1] * d[r - 1]) merge = false;
      if (merge) {
        d[r - 1] *= n;
        continue;
      }
    }
    d[r] = n;
    for (int o = 0; o < NOPS; o++) s[o][r] = st[o][i];
    r++;
  }
  Geo<NOPS> g;
  g.rank = r;
  for (int k = 0; k < KILN_MAX_RANK; k++) {
    g.d[k] = k < r ? d[r - 1 - k] : 1;
    for (int o = 0; o < NOPS; o++) g.s[o][k] = k < r ? s[o][r - 1 - k] : 0;
  }
  return g;
}

// Offsets of the k-th element (row-major over g) in each operand. I: the index type of the
// division (32-bit when the element count allows it: much cheaper than 64-bit division).
template <int NOPS, typename I>
__device__ __forceinline__ void offsets(I k, const Geo<NOPS>& g, int64_t* off) {
#pragma unroll
  for (int o = 0; o < NOPS; o++) off[o] = 0;
#pragma unroll
  for (int i = KILN_MAX_RANK - 1; i >= 0; i--) {
    if (i < g.rank) {
      I d = (I)g.d[i];
      I c = k % d;
      k /= d;
#pragma unroll
      for (int o = 0; o < NOPS; o++) off[o] += (int64_t)c * g.s[o][i];
    }
  }
}

#define KILN_GRID_STRIDE(I, i, n) for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)(n); i += (I)gridDim.x * blockDim.x)

// ---------------------------------------------------------------- elementwise

// A fused elementwise op: the codegen writes the functor (one element per call).
template <typename F>
__global__ void k_for_each(const F f, int64_t n) {
  KILN_GRID_STRIDE(int64_t, i, n) f(i);
}

// The same in chunks of F::W elements (16-byte loads and stores, one offset computation per
// operand and chunk); the n % W elements past the last chunk one a thread.
template <typename F>
__global__ void k_for_each_chunks(const F f, int64_t chunks, int64_t n) {
  KILN_GRID_STRIDE(int64_t, c, chunks) f.chunk(c * F::W);
  const int64_t t = chunks * F::W + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) f(t);
}

template <typename T>
__global__ void k_fill(T* __restrict__ y, T v, int64_t n) {
  KILN_GRID_STRIDE(int64_t, i, n) y[i] = v;
}

template <typename T>
__global__ void k_arange(T* __restrict__ y, int64_t start, int64_t n) {
  KILN_GRID_STRIDE(int64_t, i, n) y[i] = Num<T>::store((typename Num<T>::C)(start + i));
}

template <typename T, typename I>
__global__ void k_copy_strided(const T* __restrict__ x, T* __restrict__ y, Geo<2> g, int64_t n) {
  KILN_GRID_STRIDE(I, i, n) {
    int64_t off[2];
    offsets<2, I>(i, g, off);
    y[off[1]] = x[off[0]];
  }
}

// The widest unit (16, 8 or 4 bytes, else the element) a strided copy of elements of `size` bytes
// can move instead of single elements: the innermost dim contiguous on both sides, its bytes and
// every other stride's bytes multiples of the unit, both pointers aligned to it. A transpose
// [T, H, 128] → [H, T, 128] of bf16 then moves 16 words of 16 bytes a row instead of 128 elements.
static inline int copy_unit(const void* x, const void* y, const Geo<2>& g, int size) {
  const int r = g.rank - 1;
  if (r < 0 || g.s[0][r] != 1 || g.s[1][r] != 1) return size;
  for (int u = 16; u > size; u /= 2) {
    bool ok = (uintptr_t)x % u == 0 && (uintptr_t)y % u == 0 && g.d[r] * size % u == 0;
    for (int i = 0; i < r; i++) ok = ok && g.s[0][i] * size % u == 0 && g.s[1][i] * size % u == 0;
    if (ok) return u;
  }
  return size;
}

// The copy of g (in elements of `size` bytes) in units of sizeof(U) bytes, as copy_unit allows.
template <typename U>
static void copy_units(const void* x, void* y, Geo<2> g, int64_t n, int size) {
  const int k = (int)sizeof(U) / size, r = g.rank - 1;
  if (k > 1) {
    g.d[r] /= k;
    for (int i = 0; i < r; i++) g.s[0][i] /= k, g.s[1][i] /= k;
    n /= k;
  }
  const unsigned grid = grid_for(n, kThreads);
  if (n <= 0x7fffffffLL) k_copy_strided<U, uint32_t><<<grid, kThreads, 0, stream()>>>((const U*)x, (U*)y, g, n);
  else k_copy_strided<U, uint64_t><<<grid, kThreads, 0, stream()>>>((const U*)x, (U*)y, g, n);
}

// ---------------------------------------------------------------- gather

// Validates every index (the first bad position wins through atomicMin) and copies one row of
// `inner` elements per block iteration, 16 bytes at a time when rows allow it.
template <typename T, typename I, bool VEC>
__global__ void k_gather(const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner, int64_t m,
                         unsigned long long* bad) {
  KILN_GRID_STRIDE(int64_t, j, m) {
    int64_t i = (int64_t)Num<I>::load(idx[j]);
    if (i < 0 || i >= n) atomicMin(bad, (unsigned long long)j);
  }
  const int64_t rows = outer * m;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t o = r / m, j = r - o * m;
    const int64_t i = (int64_t)Num<I>::load(idx[j]);
    if (i < 0 || i >= n) continue;
    const T* src = x + (o * n + i) * inner;
    T* dst = y + r * inner;
    if (VEC) {
      const int64_t nv = inner * (int64_t)sizeof(T) / 16;
      const uint4* s4 = reinterpret_cast<const uint4*>(src);
      uint4* d4 = reinterpret_cast<uint4*>(dst);
      for (int64_t e = threadIdx.x; e < nv; e += blockDim.x) d4[e] = s4[e];
    } else {
      for (int64_t e = threadIdx.x; e < inner; e += blockDim.x) dst[e] = src[e];
    }
  }
}

// One thread per output element, for indices already known to be in range.
template <typename T, typename I, typename E>
__global__ void k_gather_elems(const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y, int64_t n, int64_t inner, int64_t m, int64_t total) {
  // E: the index type of the element loop (32-bit when the tensor allows: cheaper division)
  KILN_GRID_STRIDE(E, e, total) {
    const E c = e % (E)inner, r = e / (E)inner;  // r = o * m + j
    const E o = r / (E)m, j = r - o * (E)m;
    const int64_t i = (int64_t)Num<I>::load(idx[j]);
    y[e] = x[((int64_t)o * n + i) * inner + c];
  }
}

// Along the last axis (inner = 1), indices known to be in range, 16-byte words of V = 16/sizeof(T)
// outputs (V | n, V | m, 16-byte aligned x and y; m/V ≤ kRunsMax): each block first marks which
// words of the index table are an aligned run idx[cV + k] = a + k (a % V == 0; RoPE's rotate-half,
// slices and block permutations are all runs) and keeps their source word a/V in shared memory;
// a run is then one 16-byte copy a word, anything else V element loads into one 16-byte store.
static const int kRunsMax = 2048;
template <typename T, typename I, typename E>
__global__ void k_gather_runs(const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y, int64_t n, int64_t m, int64_t words) {
  constexpr int V = 16 / sizeof(T);
  __shared__ int32_t src[kRunsMax];
  const E per = (E)(m / V);  // words a row
  for (int c = threadIdx.x; c < (int)per; c += blockDim.x) {
    const int64_t a = (int64_t)Num<I>::load(idx[c * V]);
    bool run = a % V == 0;
    for (int k = 1; k < V; k++) run = run && (int64_t)Num<I>::load(idx[c * V + k]) == a + k;
    src[c] = run ? (int32_t)(a / V) : -1;
  }
  __syncthreads();
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
  uint4* y4 = reinterpret_cast<uint4*>(y);
  KILN_GRID_STRIDE(E, w, words) {
    const E r = w / per, c = w - r * per;
    const int32_t s = src[c];
    if (s >= 0) {
      y4[w] = x4[(int64_t)r * (n / V) + s];
    } else {
      T v[V];
      for (int k = 0; k < V; k++) v[k] = x[(int64_t)r * n + (int64_t)Num<I>::load(idx[(int64_t)c * V + k])];
      uint4 q;
      memcpy(&q, v, 16);
      y4[w] = q;
    }
  }
}

// ---------------------------------------------------------------- attention

// One block of 4 warps per (b, h, query i) — and, split over the keys, per chunk of kChunk keys.
// Each warp takes every 4th visible key, computes the score with a warp reduction and keeps its own
// online softmax (running max, sum, and Dv/32 accumulators a lane) as in FlashAttention (Dao et
// al., 2022); the 4 states are merged through shared memory at the end. f32 arithmetic, one
// rounding of the output. Unsplit (SPLIT false, gridDim.y = 1) a block writes its row of y. Split
// (the "flash-decoding" scheme, Dao et al., 2023), block (row, split) writes its partial max, sum
// and weighted values and k_attention_combine merges the splits: a decode step has only B·H query
// rows, and one block a row would leave most SMs idle while each walks the whole cache alone. The
// grid covers the keys' full extent Tk (with the static cache, its capacity: the position lives on
// the device); splits past the query's last key exit at once. This is the simple kernel for decode
// and short prompts (decode, S < 16); prefill goes to the tiled tensor-core kernel of flash_attn2.cuh.
#ifndef KILN_ATTN_CHUNK
#define KILN_ATTN_CHUNK 64  // (a compile-time knob for bench/attn_decode.cu's comparison)
#endif
static const int kChunk = KILN_ATTN_CHUNK;

// 16 bytes of T as f32 (E values)
template <typename T> struct Vec;
template <> struct Vec<bf16> {
  static const int E = 8;
  __device__ __forceinline__ static void unpack(const uint4& q, float* f) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <> struct Vec<f16> {
  static const int E = 8;
  __device__ __forceinline__ static float h2f(uint32_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
    return f;
  }
  __device__ __forceinline__ static void unpack(const uint4& q, float* f) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[2 * i] = h2f(w[i] & 0xffffu);
      f[2 * i + 1] = h2f(w[i] >> 16);
    }
  }
};
template <> struct Vec<float> {
  static const int E = 4;
  __device__ __forceinline__ static void unpack(const uint4& q, float* f) {
    f[0] = __uint_as_float(q.x);
    f[1] = __uint_as_float(q.y);
    f[2] = __uint_as_float(q.z);
    f[3] = __uint_as_float(q.w);
  }
};

// Merges the block's W per-warp online-softmax states (max wm, sum wl, weighted values wacc) after
// a __syncthreads: split, the partial state [M, L, acc[Dv]] goes to `out`; else the row of y, or
// empty(d) for a row that saw no key.
template <typename T, bool SPLIT, int W, int MAXD, typename F>
__device__ __forceinline__ void merge_warp_states(const float* wm, const float* wl, const float (*wacc)[MAXD], int Dv, float* __restrict__ out,
                                                  T* __restrict__ yrow, F empty) {
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < W; w++) M = fmaxf(M, wm[w]);
  float L = 0.f;
#pragma unroll
  for (int w = 0; w < W; w++) L += wm[w] == -INFINITY ? 0.f : wl[w] * __expf(wm[w] - M);
  if (SPLIT && threadIdx.x == 0) {
    out[0] = M;
    out[1] = L;
  }
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float a = 0.f;
#pragma unroll
    for (int w = 0; w < W; w++) a += wm[w] == -INFINITY ? 0.f : wacc[w][d] * __expf(wm[w] - M);
    if (SPLIT) out[2 + d] = a;
    else yrow[d] = Num<T>::store(M == -INFINITY ? empty(d) : a / L);
  }
}

// attend_row's fast path: 16-bit q/k/v, D = Dv = HD (64 or 128), 16-byte aligned rows, no key
// mask. The simple loop below walks a warp's keys one at a time — a dependent chain of 2-byte loads,
// a 5-step shuffle and two exps a key, ≈ 1 µs of latency each — which made a decode step's
// attention ≈ 20 µs a layer on the H100. Here a warp takes its keys 16 at a time: P = HD / 8 lanes
// share a key, each dotting one 16-byte piece of it with q (all 16 keys' loads in flight at once),
// the scores are exchanged by shuffles, the online-softmax state (Milakov & Gimelshein, 2018) is
// updated once per 16 keys, and each lane accumulates its HD / 32 dims of the 16 value rows (again
// all loads in flight). Same math as the loop (f32, one rounding of the output), other order.
template <typename T, bool SPLIT, int HD>
__device__ __forceinline__ void attend_row_vec(const T* __restrict__ qrow, const T* __restrict__ kb, const T* __restrict__ vb, T* __restrict__ yrow,
                                               float* __restrict__ out, int64_t cb0, int64_t cstride, int64_t j0, int64_t j1, int64_t ks, int64_t vs, float scale,
                                               float slope) {
  constexpr int W = 4, P = HD / 8, KPW = 32 / P, KB = 16, E = HD / 32;
  __shared__ float wm[W], wl[W];
  __shared__ float wacc[W][HD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, part = lane % P;
  float qf[8];
  Vec<T>::unpack(__ldg(reinterpret_cast<const uint4*>(qrow) + part), qf);
  float m = -INFINITY, l = 0.f, acc[E];
#pragma unroll
  for (int e = 0; e < E; e++) acc[e] = 0.f;
  using VW = typename std::conditional<E == 4, uint2, uint32_t>::type;  // a lane's HD / 32 values of a row
  // the block's keys: chunks cb0, cb0 + cstride, … (cstride 0: the one range [j0, j1)) within [j0, j1)
  for (int64_t cb = cb0; cb < j1; cb += cstride) {
  const int64_t ca = cb > j0 ? cb : j0, ce = cstride && cb + kChunk < j1 ? cb + kChunk : j1;
  for (int64_t jb = ca + (int64_t)warp * KB; jb < ce; jb += (int64_t)W * KB) {
    // the batch's key pieces and value rows, all in flight before any is used
    uint4 kw[KB / KPW];
    VW vw[KB];
#pragma unroll
    for (int i = 0; i < KB / KPW; i++) {
      const int64_t j = jb + i * KPW + lane / P;
      kw[i] = j < ce ? __ldg(reinterpret_cast<const uint4*>(kb + j * ks) + part) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int t = 0; t < KB; t++) {
      if (jb + t < ce) vw[t] = __ldg(reinterpret_cast<const VW*>(vb + (jb + t) * vs + lane * E));
      else vw[t] = VW();
    }
    float sp[KB / KPW];
#pragma unroll
    for (int i = 0; i < KB / KPW; i++) {
      float kf[8];
      Vec<T>::unpack(kw[i], kf);
      float d = 0.f;
#pragma unroll
      for (int e = 0; e < 8; e++) d = fmaf(qf[e], kf[e], d);
      sp[i] = d;
    }
#pragma unroll
    for (int i = 0; i < KB / KPW; i++)
#pragma unroll
      for (int o = P / 2; o > 0; o >>= 1) sp[i] += __shfl_xor_sync(0xffffffffu, sp[i], o);
    float sc[KB];
    float mb = -INFINITY;
#pragma unroll
    for (int t = 0; t < KB; t++) {
      const float v = __shfl_sync(0xffffffffu, sp[t / KPW], (t % KPW) * P);
      sc[t] = jb + t < ce ? v * scale + slope * (float)(jb + t) : -INFINITY;
      mb = fmaxf(mb, sc[t]);
    }
    const float mn = fmaxf(m, mb);
    const float corr = m == -INFINITY ? 0.f : __expf(m - mn);
    l *= corr;
#pragma unroll
    for (int e = 0; e < E; e++) acc[e] *= corr;
#pragma unroll
    for (int t = 0; t < KB; t++) {
      if (jb + t < ce) {  // the same for the whole warp
        const float pr = __expf(sc[t] - mn);
        l += pr;
        float vf[8];
        uint4 w4 = make_uint4(0u, 0u, 0u, 0u);
        memcpy(&w4, &vw[t], sizeof(VW));
        Vec<T>::unpack(w4, vf);
#pragma unroll
        for (int e = 0; e < E; e++) acc[e] = fmaf(pr, vf[e], acc[e]);
      }
    }
    m = mn;
  }
  if (!cstride) break;
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < E; e++) wacc[warp][lane * E + e] = acc[e];
  __syncthreads();
  merge_warp_states<T, SPLIT, W, HD>(wm, wl, wacc, HD, out, yrow, [](int) { return (float)NAN; });
}

// One query row (qrow, D values) against keys [j0, j1) of one head (key j's D values at kb + j·ks,
// its Dv values at vb + j·vs), by the block's 4 warps: score scale · q·k + slope · j, keys with km[j] = 0 skipped. Unsplit it writes
// the row (yrow); split it writes the partial state [max, sum, acc[Dv]] to `out`. A row that saw no
// key is the mean of V over Tk keys with a key mask, else NaN (combined rows: NaN).
template <typename T, bool SPLIT>
__device__ __forceinline__ void attend_row(const T* __restrict__ qrow, const T* __restrict__ kb, const T* __restrict__ vb, T* __restrict__ yrow, float* __restrict__ out,
                                           int64_t j0, int64_t j1, int64_t ks, int64_t vs, int D, int Dv, float scale, float slope,
                                           const int64_t* __restrict__ km, int64_t Tk, int64_t cb0 = -1, int64_t cstride = 0) {
  if (cb0 < 0) cb0 = j0;
#ifndef KILN_ATTN_NO_VEC  // (defined: the simple loop only — bench/attn_decode.cu times both)
  if constexpr (sizeof(T) == 2) {
    const bool vec = !km && D == Dv && (D == 128 || D == 64) && ks % 8 == 0 && vs % 8 == 0 && aligned16(qrow) && aligned16(kb) && aligned16(vb);
    if (vec && D == 128) return attend_row_vec<T, SPLIT, 128>(qrow, kb, vb, yrow, out, cb0, cstride, j0, j1, ks, vs, scale, slope);
    if (vec && D == 64) return attend_row_vec<T, SPLIT, 64>(qrow, kb, vb, yrow, out, cb0, cstride, j0, j1, ks, vs, scale, slope);
  }
#endif
  constexpr int W = 4, MAXD = 256, PER = MAXD / 32;
  __shared__ float qs[MAXD];
  __shared__ float wm[W], wl[W];
  __shared__ float wacc[W][MAXD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = Num<T>::load(qrow[d]);
  __syncthreads();
  float m = -INFINITY, l = 0.f, acc[PER];
#pragma unroll
  for (int e = 0; e < PER; e++) acc[e] = 0.f;
  for (int64_t cb = cb0; cb < j1; cb += cstride) {
  const int64_t ca = cb > j0 ? cb : j0, ce = cstride && cb + kChunk < j1 ? cb + kChunk : j1;
  for (int64_t j = ca + warp; j < ce; j += W) {
    if (km && km[j] == 0) continue;  // a padded key (the whole warp skips it)
    const T* kr = kb + j * ks;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += qs[d] * Num<T>::load(kr[d]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    s = s * scale + slope * (float)j;
    const float mn = fmaxf(m, s);
    const float corr = m == -INFINITY ? 0.f : __expf(m - mn);
    const float p = __expf(s - mn);
    l = l * corr + p;
    const T* vr = vb + j * vs;
#pragma unroll
    for (int e = 0; e < PER; e++) {
      const int d = lane + 32 * e;
      if (d < Dv) acc[e] = acc[e] * corr + p * Num<T>::load(vr[d]);
    }
    m = mn;
  }
  if (!cstride) break;
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < PER; e++) {
    const int d = lane + 32 * e;
    if (d < Dv) wacc[warp][d] = acc[e];
  }
  __syncthreads();
  // no visible key: the mean of V under a key mask (every eager score equal), else NaN
  merge_warp_states<T, SPLIT, W, MAXD>(wm, wl, wacc, Dv, out, yrow, [&](int d) {
    float mean = NAN;
    if (km) {
      mean = 0.f;
      for (int64_t j = 0; j < Tk; j++) mean += Num<T>::load(vb[j * vs + d]);
      mean /= (float)Tk;
    }
    return mean;
  });
}

// A split row's blocks as one cluster (Hopper thread block clusters): each block writes its partial
// state [m, l, acc[Dv]] straight into block 0's shared memory (a generic pointer into the cluster's
// distributed shared memory, `cluster_slot`), one cluster barrier makes them visible, and block 0
// merges them from its own shared memory — the combine kernel's math: rescale each state to the
// common max and add, splits that saw no key skipped, in split order. The other blocks leave at the
// barrier (nothing reads their shared memory). Pulling the states from the others' shared memory
// instead took two more round trips and a second barrier (≈ 1 µs a call, bench/attn_decode.cu).
static const int kClusterMax = 8;  // the portable cluster size
__device__ __forceinline__ float* cluster_slot(float* local, unsigned rank) {
  float* r = local;
#if __CUDA_ARCH__ >= 900
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(r) : "l"(local), "r"(rank));
#endif
  return r;
}
template <typename T>
__device__ __forceinline__ void cluster_merge(const float (*st)[2 + 256], T* __restrict__ yrow, int Dv) {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
  if (blockIdx.y != 0) return;
  const unsigned n = gridDim.y;  // ≤ kClusterMax
  float m[kClusterMax], w[kClusterMax];
  float M = -INFINITY;
#pragma unroll
  for (unsigned r = 0; r < kClusterMax; r++) {
    m[r] = r < n ? st[r][0] : -INFINITY;
    M = fmaxf(M, m[r]);
  }
  float L = 0.f;
#pragma unroll
  for (unsigned r = 0; r < kClusterMax; r++) {
    w[r] = m[r] == -INFINITY ? 0.f : __expf(m[r] - M);
    if (m[r] != -INFINITY) L += st[r][1] * w[r];
  }
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float a = 0.f;
#pragma unroll
    for (unsigned r = 0; r < kClusterMax; r++)
      if (m[r] != -INFINITY) a += st[r][2 + d] * w[r];  // (a split that saw no key wrote no values)
    yrow[d] = Num<T>::store(M == -INFINITY ? NAN : a / L);
  }
#endif
}

// CL (split, launched as clusters of the row's gridDim.y blocks: attention_cluster_on): the blocks'
// partial states go to block 0's shared memory and it merges them (cluster_merge) — no partials in
// global memory and no combine kernel.
template <typename T, bool SPLIT, bool CL = false>
__global__ void __launch_bounds__(128) k_attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ y,
                                                   float* __restrict__ part, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int D, int Dv, float scale,
                                                   bool causal, const int64_t* __restrict__ offset, const float* __restrict__ alibi,
                                                   const int64_t* __restrict__ key_mask, const int32_t* __restrict__ cu_seqlens, int64_t n_cu,
                                                   int64_t window, const AttnLayout L) {
  static_assert(SPLIT || !CL, "the cluster merge is of a split row");
  __shared__ float cst[CL ? kClusterMax : 1][CL ? 2 + 256 : 1];  // CL: block 0's, the row's partial states [m, l, acc[Dv]]
  if (CL) {
    allow_dependents();  // the o projection after a decode step's attention (as the combine kernel does)
    // (a block may write block 0's shared memory only once block 0 runs: this barrier phase, waited
    // on before the first such write, says every block of the cluster has started)
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
  }
  const int64_t row = blockIdx.x;  // (b * Hq + h) * S + i
  const int64_t i = row % S, bh = row / S, h = bh % Hq, b = bh / Hq;
  const int64_t g = Hq / Hkv;
  int64_t last = causal ? i + (offset ? *offset : Tk - S) : Tk - 1;
  int64_t first = 0;
  if (cu_seqlens) {  // packed sequences: the keys of query i's own sequence (binary search)
    int64_t lo = 0, hi = n_cu - 2;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu_seqlens[mid] <= i) lo = mid;
      else hi = mid - 1;
    }
    first = cu_seqlens[lo];
    const int64_t end = cu_seqlens[lo + 1];
    last = causal ? i : end - 1;
    if (last > end - 1) last = end - 1;
  }
  if (window > 0) {  // a sliding window: only the last `window` keys up to the query
    const int64_t pos = cu_seqlens ? i : i + (offset ? *offset : Tk - S);
    if (pos - window + 1 > first) first = pos - window + 1;
  }
  // [m, l, acc[Dv]]: CL, this block's slot in block 0's shared memory
  float* out = CL ? cluster_slot(cst[blockIdx.y], 0) : SPLIT ? part + (row * gridDim.y + blockIdx.y) * (int64_t)(Dv + 2) : nullptr;
  // split: block y of P = gridDim.y takes chunks y, y + P, y + 2P, … of kChunk keys (from the first
  // that reaches `first`), so the keys a query sees spread over the row's blocks at any position
  int64_t cb0 = first, cstride = 0;
  if (SPLIT) {
    const int64_t P = gridDim.y, y = blockIdx.y, cf = first / kChunk;
    cb0 = (y >= cf ? y : y + (cf - y + P - 1) / P * P) * kChunk;
    cstride = P * kChunk;
  }
  int64_t j1 = last + 1 < Tk ? last + 1 : Tk;
  const int64_t j0 = first;
  T* yrow = y + b * L.y.b + h * L.y.h + i * L.y.s;
#if __CUDA_ARCH__ >= 900
  if (CL) asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
  if (SPLIT && (cb0 >= j1 || cb0 + kChunk <= j0)) {
    if (threadIdx.x == 0) {
      out[0] = -INFINITY;
      out[1] = 0.f;
    }
    if (!CL) return;
  } else {
    const T* kb = k + b * L.k.b + (h / g) * L.k.h;
    const T* vb = v + b * L.v.b + (h / g) * L.v.h;
    attend_row<T, SPLIT>(q + b * L.q.b + h * L.q.h + i * L.q.s, kb, vb, yrow, out, j0, j1, L.k.s, L.v.s, D, Dv, scale, alibi ? alibi[h] : 0.f,
                         key_mask ? key_mask + b * Tk : nullptr, Tk, cb0, cstride);
  }
  if constexpr (CL) cluster_merge<T>(cst, yrow, Dv);
}

// Merges the splits of a row ((b · Hq + h) · S + i, written at y + b·ys.b + h·ys.h + i·ys.s):
// rescales each partial state to the common max and adds.
template <typename T>
__global__ void k_attention_combine(const float* __restrict__ part, T* __restrict__ y, int splits, int Dv, int64_t Hq, int64_t S, const HeadStrides ys) {
  // the block's threads read the splits' states side by side (a loop over them one at a time was a
  // chain of dependent L2 reads, ≈ 5 µs of a decode step's attention), the weights exp(m_s − M)
  // are computed once into shared memory, then each thread sums its dims over the splits with
  // several loads in flight
  allow_dependents();  // the o projection after a decode step's attention
  constexpr int TILE = 1024;
  __shared__ float wsh[TILE];
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  T* yrow = y + (row / S / Hq) * ys.b + ((row / S) % Hq) * ys.h + (row % S) * ys.s;
  const float* p = part + row * (int64_t)splits * (Dv + 2);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  auto block_reduce = [&](float v, bool is_max) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float u = __shfl_xor_sync(0xffffffffu, v, o);
      v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = is_max ? -INFINITY : 0.f;
    for (int w = 0; w < nw; w++) v = is_max ? fmaxf(v, red[w]) : v + red[w];
    return v;
  };
  float M = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += blockDim.x) M = fmaxf(M, p[(int64_t)s * (Dv + 2)]);
  M = block_reduce(M, true);
  float L = 0.f;
  for (int s = threadIdx.x; s < splits; s += blockDim.x) {
    const float ms = p[(int64_t)s * (Dv + 2)];
    if (ms != -INFINITY) L += p[(int64_t)s * (Dv + 2) + 1] * __expf(ms - M);
  }
  L = block_reduce(L, false);
  float a[2] = {0.f, 0.f};  // dims threadIdx.x and threadIdx.x + blockDim.x (Dv ≤ 256, blockDim ≥ Dv / 2)
  for (int s0 = 0; s0 < splits; s0 += TILE) {
    const int n = splits - s0 < TILE ? splits - s0 : TILE;
    __syncthreads();
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
      const float ms = p[(int64_t)(s0 + s) * (Dv + 2)];
      wsh[s] = ms == -INFINITY ? -1.f : __expf(ms - M);  // -1: a split that saw no key (skipped)
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 2; k++) {
      const int d = threadIdx.x + k * blockDim.x;
      if (d >= Dv) continue;
      const float* pd = p + (int64_t)s0 * (Dv + 2) + 2 + d;
      float acc = 0.f;
#pragma unroll 8
      for (int s = 0; s < n; s++)
        if (wsh[s] >= 0.f) acc += pd[(int64_t)s * (Dv + 2)] * wsh[s];
      a[k] += acc;
    }
  }
#pragma unroll
  for (int k = 0; k < 2; k++) {
    const int d = threadIdx.x + k * blockDim.x;
    if (d < Dv) yrow[d] = Num<T>::store(M == -INFINITY ? NAN : a[k] / L);
  }
}

// ---------------------------------------------------------------- the varlen KV cache
// N sequences packed end to end (cu_seqlens [N + 1]), each with its cache row slot[n] and past
// length pos[n]: token t of sequence n sits at pos[n] + t − cu[n] of that row (vLLM's per-sequence
// cache slots, Kwon et al., 2023; contiguous rows, no paging). Everything per sequence stays on the
// device, so a decode step of N rows replays as a CUDA graph whatever its positions.

/** The sequence of packed token t (binary search over cu_seqlens). */
__device__ __forceinline__ int64_t sequence_of(const int32_t* __restrict__ cu, int64_t N, int64_t t) {
  int64_t lo = 0, hi = N - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__global__ void k_varlen_cache_positions(const int32_t* __restrict__ cu, const int64_t* __restrict__ pos, int64_t* __restrict__ y, int64_t N, int64_t T) {
  KILN_GRID_STRIDE(int64_t, t, T) {
    const int64_t n = sequence_of(cu, N, t);
    y[t] = pos[n] + t - cu[n];
  }
}

template <typename T>
__global__ void k_varlen_cache_write(T* __restrict__ cache, const T* __restrict__ update, const int32_t* __restrict__ cu, const int32_t* __restrict__ slot,
                                     const int64_t* __restrict__ pos, int64_t N, int64_t B, int64_t H, int64_t C, int64_t Tq, int64_t D) {
  KILN_GRID_STRIDE(int64_t, e, H * Tq * D) {
    const int64_t d = e % D, t = (e / D) % Tq, h = e / (D * Tq);
    const int64_t n = sequence_of(cu, N, t);
    const int64_t p = pos[n] + t - cu[n], s = slot[n];
    if (s >= 0 && s < B && p >= 0 && p < C) cache[((s * H + h) * C + p) * D + d] = update[e];  // the runtime checked the bounds; never write past them
  }
}

// One block per (head, packed query) — split over the keys like k_attention for decode — reading
// the keys 0..position of its sequence's cache row through attend_row.
template <typename T, bool SPLIT>
__global__ void __launch_bounds__(128) k_varlen_cache_attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ y, float* __restrict__ part,
                                                                const int32_t* __restrict__ cu, const int32_t* __restrict__ slot, const int64_t* __restrict__ pos,
                                                                int64_t N, int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t C, int D, int Dv, float scale,
                                                                const float* __restrict__ alibi, int64_t window) {
  const int64_t row = blockIdx.x;  // h * Tq + t
  const int64_t t = row % Tq, h = row / Tq;
  const int64_t n = sequence_of(cu, N, t);
  const int64_t s = slot[n];
  int64_t last = pos[n] + t - cu[n];
  if (last > C - 1) last = C - 1;
  if (s < 0 || s >= B) last = -1;  // out of range (the runtime checks): no key, NaN
  const int64_t first = window > 0 && last - window + 1 > 0 ? last - window + 1 : 0;
  float* out = SPLIT ? part + (row * gridDim.y + blockIdx.y) * (int64_t)(Dv + 2) : nullptr;  // [m, l, acc[Dv]]
  const int64_t j0 = SPLIT ? ((int64_t)blockIdx.y * kChunk > first ? (int64_t)blockIdx.y * kChunk : first) : first;
  int64_t j1 = SPLIT ? ((int64_t)blockIdx.y + 1) * kChunk : C;
  if (j1 > last + 1) j1 = last + 1;
  if (SPLIT && j0 >= j1) {
    if (threadIdx.x == 0) {
      out[0] = -INFINITY;
      out[1] = 0.f;
    }
    return;
  }
  const int64_t kv = (s < 0 || s >= B ? 0 : s) * Hkv + h / (Hq / Hkv);
  attend_row<T, SPLIT>(q + row * D, k + kv * C * D, v + kv * C * Dv, y + row * Dv, out, j0, j1, D, Dv, D, Dv, scale, alibi ? alibi[h] : 0.f, nullptr, C);
}

}  // namespace detail

// whether the decode attention merges its splits in a cluster (compute capability ≥ 9.0;
// KILN_ATTN_MERGE=kernel: the combine kernel, an A/B switch for bench/attn_decode.cu)
static inline bool attention_cluster_on() {
  static const bool on = !(getenv("KILN_ATTN_MERGE") && strcmp(getenv("KILN_ATTN_MERGE"), "kernel") == 0);
  return on && rt::state().cc_major >= 9;
}
// The operands' rows lie where `L` says (kiln_types.h's AttnLayout: the [B, S, H, D] tensors around
// a layer's head transposes are read and written in place); the overload without it takes them
// row-major.
template <typename T>
void flash_attention(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D, int64_t Dv,
                     double scale, bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask, const int32_t* cu_seqlens,
                     int64_t n_cu, int64_t window, const AttnLayout& L) {
  const int64_t rows = B * Hq * S;
  if (rows <= 0) return;
  if (D > 256 || Dv > 256) rt::fail(KILN_ERR_INVALID, "flash_attention: head dims %lld/%lld are over 256", (long long)D, (long long)Dv);
  if (rows > 0x7fffffffLL) rt::fail(KILN_ERR_INVALID, "flash_attention: %lld rows is too many for one launch", (long long)rows);
  // the tiled FlashAttention-2 kernel (flash_attn2.cuh) takes what it supports (no sliding window
  // yet); the rest falls through
  if (window <= 0 && flash_attention_tiled<T>(q, k, v, y, B, Hq, Hkv, S, Tk, D, Dv, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, stream(), L)) {
    detail::launched("flash_attention (tiled)");
    return;
  }
  const int64_t chunks = (Tk + detail::kChunk - 1) / detail::kChunk;
  const int sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  // few rows against many keys (decode): split the keys across blocks, then combine. A row's P
  // blocks take its chunks in turn (k_attention), P ≈ 2 blocks an SM over all rows: at a short
  // position each visible chunk still has its own block, at a long one a block walks several
  // instead of the grid holding a block per chunk of the whole cache (H100, 7B shape, cache 2304,
  // µs a call at positions 224 / 1024 / 2303: 9.12 / 14.67 / 24.75 with a block a chunk, 8.69 /
  // 12.41 / 19.30 at 2 an SM; 1, 3, 4, 8 measured too: bench/NOTES.md, "The decode attention's splits")
  static const int64_t per_sm = getenv("KILN_ATTN_BLOCKS") ? atoll(getenv("KILN_ATTN_BLOCKS")) : 2;  // (KILN_ATTN_BLOCKS: an A/B knob, bench/attn_decode.cu)
  const int64_t splits = std::min<int64_t>(chunks, std::max<int64_t>(2, (per_sm * (int64_t)sms + rows - 1) / rows));
  if (chunks > 1 && rows < 2 * (int64_t)sms && !key_mask && !cu_seqlens) {
    // Hopper: the row's blocks as one cluster (≤ 8), merged in distributed shared memory (no
    // combine kernel, no partials in global memory)
    if (attention_cluster_on()) {
      const unsigned P = (unsigned)std::min<int64_t>(splits, detail::kClusterMax);
      cudaLaunchConfig_t cfg = {};
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeClusterDimension;
      at[0].val.clusterDim.x = 1;
      at[0].val.clusterDim.y = P;
      at[0].val.clusterDim.z = 1;
      cfg.gridDim = dim3((unsigned)rows, P);
      cfg.blockDim = dim3(128);
      cfg.stream = stream();
      cfg.attrs = at;
      cfg.numAttrs = 1;
      const cudaError_t e = cudaLaunchKernelEx(&cfg, detail::k_attention<T, true, true>, q, k, v, y, (float*)nullptr, Hq, Hkv, S, Tk, (int)D, (int)Dv, (float)scale, causal, offset,
                                               alibi, key_mask, cu_seqlens, n_cu, window, L);
      if (e != cudaSuccess) rt::fail(KILN_ERR_DEVICE, "CUDA error %s (%s) launching the flash_attention (split KV, cluster merge) kernel", cudaGetErrorName(e), cudaGetErrorString(e));
      detail::launched("flash_attention (split KV, cluster merge)");
      return;
    }
    float* part = (float*)rt::alloc((int64_t)sizeof(float) * rows * splits * (Dv + 2), "flash_attention split-KV partials");
    // (not launched as a dependent of the q/k/v GEMV: that made the 7B nf4 step slower, 2397–2405
    // vs 2343–2345 µs, H100 — bench/NOTES.md)
    detail::k_attention<T, true><<<dim3((unsigned)rows, (unsigned)splits), 128, 0, stream()>>>(q, k, v, y, part, Hq, Hkv, S, Tk, (int)D, (int)Dv, (float)scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, window, L);
    detail::launched("flash_attention (split KV)");
    detail::k_attention_combine<T><<<(unsigned)rows, Dv < 32 ? 32 : (unsigned)((Dv + 31) / 32 * 32), 0, stream()>>>(part, y, (int)splits, (int)Dv, Hq, S, L.y);
    detail::launched("flash_attention (combine)");
    rt::release(part);
    return;
  }
  detail::k_attention<T, false><<<(unsigned)rows, 128, 0, stream()>>>(q, k, v, y, nullptr, Hq, Hkv, S, Tk, (int)D, (int)Dv, (float)scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, window, L);
  detail::launched("flash_attention");
}
template <typename T>
void flash_attention(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D, int64_t Dv,
                     double scale, bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask, const int32_t* cu_seqlens,
                     int64_t n_cu, int64_t window) {
  flash_attention<T>(q, k, v, y, B, Hq, Hkv, S, Tk, D, Dv, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, window, row_major_attention(Hq, Hkv, S, Tk, D, Dv));
}

// Absolute positions of the packed tokens of the varlen cache (i64 [T]): pos[n] + t − cu[n].
inline void varlen_cache_positions(const int32_t* cu, const int64_t* pos, int64_t* y, int64_t N, int64_t T) {
  if (T <= 0 || N < 1) return;
  detail::k_varlen_cache_positions<<<detail::grid_for(T, detail::kThreads), detail::kThreads, 0, stream()>>>(cu, pos, y, N, T);
  detail::launched("varlen_cache_positions");
}

// Each packed token's keys or values (update [H, T, D]) into cache [B, H, C, D] at [slot, :, position, :];
// the runtime checks slots and positions before the call.
template <typename T>
void varlen_cache_write(T* cache, const T* update, const int32_t* cu, const int32_t* slot, const int64_t* pos, int64_t N, int64_t B, int64_t H, int64_t C, int64_t Tq, int64_t D) {
  const int64_t total = H * Tq * D;
  if (total <= 0 || N < 1) return;
  detail::k_varlen_cache_write<T><<<detail::grid_for(total, detail::kThreads), detail::kThreads, 0, stream()>>>(cache, update, cu, slot, pos, N, B, H, C, Tq, D);
  detail::launched("varlen_cache_write");
}

// Causal attention of packed queries q [Hq, T, D] against their sequences' cache rows k [B, Hkv, C, D],
// v [B, Hkv, C, Dv]. Decode (few query rows) splits the keys across blocks (flash-decoding) and
// combines; a long prefill runs one block a query row, which is correct but not the tiled
// tensor-core kernel (flash_attn2.cuh reads packed keys, not cache rows).
template <typename T>
void varlen_cache_attention(const T* q, const T* k, const T* v, const int32_t* cu, const int32_t* slot, const int64_t* pos, T* y, int64_t N, int64_t B,
                            int64_t Hq, int64_t Hkv, int64_t Tq, int64_t C, int64_t D, int64_t Dv, double scale, const float* alibi, int64_t window) {
  const int64_t rows = Hq * Tq;
  if (rows <= 0 || N < 1) return;
  if (D > 256 || Dv > 256) rt::fail(KILN_ERR_INVALID, "varlen_cache_attention: head dims %lld/%lld are over 256", (long long)D, (long long)Dv);
  if (rows > 0x7fffffffLL) rt::fail(KILN_ERR_INVALID, "varlen_cache_attention: %lld rows is too many for one launch", (long long)rows);
  const int64_t splits = (C + detail::kChunk - 1) / detail::kChunk;
  const int sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  if (splits > 1 && rows < 2 * (int64_t)sms && splits <= 65535) {
    float* part = (float*)rt::alloc((int64_t)sizeof(float) * rows * splits * (Dv + 2), "varlen_cache_attention split-KV partials");
    detail::k_varlen_cache_attention<T, true><<<dim3((unsigned)rows, (unsigned)splits), 128, 0, stream()>>>(q, k, v, y, part, cu, slot, pos, N, B, Hq, Hkv, Tq, C, (int)D, (int)Dv, (float)scale, alibi, window);
    detail::launched("varlen_cache_attention (split KV)");
    detail::k_attention_combine<T><<<(unsigned)rows, Dv < 32 ? 32 : (unsigned)((Dv + 31) / 32 * 32), 0, stream()>>>(part, y, (int)splits, (int)Dv, Hq, Tq, row_major_heads(Hq, Tq, Dv));
    detail::launched("varlen_cache_attention (combine)");
    rt::release(part);
    return;
  }
  detail::k_varlen_cache_attention<T, false><<<(unsigned)rows, 128, 0, stream()>>>(q, k, v, y, nullptr, cu, slot, pos, N, B, Hq, Hkv, Tq, C, (int)D, (int)Dv, (float)scale, alibi, window);
  detail::launched("varlen_cache_attention");
}

namespace detail {

// ---------------------------------------------------------------- GEMV (decode)

// 16 bytes of weights, loaded once: no L1 allocation (each weight is read once a forward).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

template <typename T, int MR, typename A>
__device__ __forceinline__ void gemv_dot(const uint4& q, const T* __restrict__ x, int64_t K, int64_t k0, A* acc) {
  const int E = Vec<T>::E;
  float wf[E];
  Vec<T>::unpack(q, wf);
#pragma unroll
  for (int m = 0; m < MR; m++) {
    uint4 xq = __ldg(reinterpret_cast<const uint4*>(x + m * K + k0));
    float xf[E];
    Vec<T>::unpack(xq, xf);
#pragma unroll
    for (int e = 0; e < E; e++) acc[m] += (A)wf[e] * (A)xf[e];
  }
}

// y[m, row] = Σ_k x[m, k] · w[row, k] (+ bias[row]) (+ res[m, row]) for MR ≤ 8 rows of x: one warp
// per output feature, blockDim/32 a block. VEC: rows 16-byte aligned (K a multiple of 16 / sizeof(T)); the
// lanes of a warp read consecutive 16-byte pieces, U in flight per lane.
template <typename T, int MR, bool VEC, int U = (MR == 1 ? 16 : 4)>
__global__ void __launch_bounds__(256) k_gemv(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, const T* __restrict__ res,
                                               T* __restrict__ y, int64_t N, int64_t K) {
  typedef typename Acc<T>::type A;
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  A acc[MR];
#pragma unroll
  for (int m = 0; m < MR; m++) acc[m] = 0;
  const T* wr = w + row * K;
  if (VEC) {
    const int E = Vec<T>::E;
    const int64_t KV = K / E;
    const uint4* w4 = reinterpret_cast<const uint4*>(wr);
    // U loads in flight per lane, issued before the first use: each step is one memory round trip
    // (a 4096-wide bf16 row is one step at U = 16); the tail goes in steps of 4, then singly.
    // (A predicated tail inside the U-step needed 150 registers and halved occupancy: slower.)
    int64_t i = lane;
    for (; i + 32 * (U - 1) < KV; i += 32 * U) {
      uint4 q[U];
#pragma unroll
      for (int u = 0; u < U; u++) q[u] = ld_stream(w4 + i + 32 * u);
#pragma unroll
      for (int u = 0; u < U; u++) gemv_dot<T, MR, A>(q[u], x, K, (i + 32 * u) * E, acc);
    }
    if (U > 4)
      for (; i + 96 < KV; i += 128) {
        uint4 q[4];
#pragma unroll
        for (int u = 0; u < 4; u++) q[u] = ld_stream(w4 + i + 32 * u);
#pragma unroll
        for (int u = 0; u < 4; u++) gemv_dot<T, MR, A>(q[u], x, K, (i + 32 * u) * E, acc);
      }
    for (; i < KV; i += 32) gemv_dot<T, MR, A>(ld_stream(w4 + i), x, K, i * E, acc);
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      A wv = (A)Num<T>::load(wr[k]);
#pragma unroll
      for (int m = 0; m < MR; m++) acc[m] += wv * (A)Num<T>::load(x[m * K + k]);
    }
  }
#pragma unroll
  for (int m = 0; m < MR; m++)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  if (lane == 0) {
    A b = bias ? (A)Num<T>::load(bias[row]) : (A)0;
#pragma unroll
    for (int m = 0; m < MR; m++) y[m * N + row] = Num<T>::store((typename Num<T>::C)(acc[m] + b + (res ? (A)Num<T>::load(res[m * N + row]) : (A)0)));
  }
}

// ---------------------------------------------------------------- tiled GEMM (SIMT)

// y[z] (M×N, row-major) = A[z] (M×K, row-major) · B[z] (+ bias[n]) (+ res[z][m, n]); B(k, n) is b[n*K + k] when
// B_NK (linear's weight [N, K]) and b[k*N + n] otherwise (matmul's [K, N]). 64×64 tiles, 16-deep
// k-steps through shared memory, a 4×4 micro-tile per thread (the classic register-blocked SGEMM).
template <typename T, bool B_NK>
__global__ void __launch_bounds__(256) k_gemm_tile(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ bias, const T* __restrict__ res,
                                                    T* __restrict__ y, int64_t M, int64_t N, int64_t K, Geo<2> batch, int64_t z0, int64_t mb0) {
  typedef typename Num<T>::C S;
  typedef typename Acc<T>::type A;
  __shared__ S As[16][64 + 1];
  __shared__ S Bs[16][64 + 1];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t z = z0 + blockIdx.z;
  int64_t off[2];
  offsets<2, uint64_t>((uint64_t)z, batch, off);
  const T* ab = a + off[0];
  const T* bb = b + off[1];
  T* yb = y + z * M * N;
  const int64_t m0 = (mb0 + blockIdx.y) * 64, n0 = (int64_t)blockIdx.x * 64;
  A acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0;
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const int e = tid + 256 * r, ml = e >> 4, kl = e & 15;
      const int64_t gm = m0 + ml, gk = k0 + kl;
      As[kl][ml] = (gm < M && gk < K) ? (S)Num<T>::load(ab[gm * K + gk]) : (S)0;
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const int e = tid + 256 * r;
      const int kl = B_NK ? (e & 15) : (e >> 6), nl = B_NK ? (e >> 4) : (e & 63);
      const int64_t gn = n0 + nl, gk = k0 + kl;
      Bs[kl][nl] = (gn < N && gk < K) ? (S)Num<T>::load(B_NK ? bb[gn * K + gk] : bb[gk * N + gn]) : (S)0;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; kk++) {
      S av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += (A)av[i] * (A)bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn >= N) continue;
      A v = acc[i][j];
      if (bias) v += (A)Num<T>::load(bias[gn]);
      if (res) v += (A)Num<T>::load(res[z * M * N + gm * N + gn]);
      yb[gm * N + gn] = Num<T>::store((typename Num<T>::C)v);
    }
  }
}

template <typename T, bool B_NK>
static void gemm_tile(const T* a, const T* b, const T* bias, const T* res, T* y, int64_t M, int64_t N, int64_t K, const Geo<2>& batch, int64_t nb,
                      const char* what) {
  const int64_t gx = (N + 63) / 64, gy = (M + 63) / 64;
  if (gx > 0x7fffffffLL) rt::fail(KILN_ERR_INVALID, "%s: N = %lld is too large for the GEMM kernel", what, (long long)N);
  cudaStream_t s = stream();
  for (int64_t z0 = 0; z0 < nb; z0 += 65535)
    for (int64_t y0 = 0; y0 < gy; y0 += 65535) {
      dim3 grid((unsigned)gx, (unsigned)(gy - y0 < 65535 ? gy - y0 : 65535), (unsigned)(nb - z0 < 65535 ? nb - z0 : 65535));
      k_gemm_tile<T, B_NK><<<grid, 256, 0, s>>>(a, b, bias, res, y, M, N, K, batch, z0, y0);
      launched(what);
    }
}

// ---------------------------------------------------------------- softmax and reductions

// The cpu target's running maximum: a NaN, once seen, stays.
template <typename A>
__device__ __forceinline__ A nan_max(A m, A v) {
  return (v > m || v != v) ? v : m;
}
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// inner == 1: one warp per line (lines are contiguous).
template <typename T>
__global__ void k_softmax_rows(const T* __restrict__ x, T* __restrict__ y, int64_t lines, int64_t n) {
  typedef Num<T> Nm;
  typedef typename Acc<T>::type A;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t l = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); l < lines; l += warps) {
    const T* xl = x + l * n;
    T* yl = y + l * n;
    A m = -INFINITY;
    for (int64_t j = lane; j < n; j += 32) m = nan_max(m, (A)Nm::load(xl[j]));
    m = warp_max(m);
    A s = 0;
    for (int64_t j = lane; j < n; j += 32) s += exp((A)Nm::load(xl[j]) - m);
    s = warp_sum(s);
    for (int64_t j = lane; j < n; j += 32) yl[j] = Nm::store((typename Nm::C)(exp((A)Nm::load(xl[j]) - m) / s));
  }
}

// inner > 1: one thread per (outer, inner) line; neighbouring threads read neighbouring elements.
template <typename T>
__global__ void k_softmax_strided(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner) {
  typedef Num<T> Nm;
  typedef typename Acc<T>::type A;
  KILN_GRID_STRIDE(int64_t, t, outer * inner) {
    const int64_t o = t / inner, i = t - o * inner;
    const T* xl = x + o * n * inner + i;
    T* yl = y + o * n * inner + i;
    A m = -INFINITY;
    for (int64_t j = 0; j < n; j++) m = nan_max(m, (A)Nm::load(xl[j * inner]));
    A s = 0;
    for (int64_t j = 0; j < n; j++) s += exp((A)Nm::load(xl[j * inner]) - m);
    for (int64_t j = 0; j < n; j++) yl[j * inner] = Nm::store((typename Nm::C)(exp((A)Nm::load(xl[j * inner]) - m) / s));
  }
}

template <int KIND, typename A>
__device__ __forceinline__ A reduce_step(A acc, A v) {
  if (KIND == REDUCE_MAX) return (v != v || acc != acc) ? acc + v : (v > acc ? v : acc);
  return acc + v;
}

template <int KIND, typename T>
__global__ void k_reduce_rows(const T* __restrict__ x, T* __restrict__ y, int64_t lines, int64_t n) {
  typedef Num<T> Nm;
  typedef typename Acc<T>::type A;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t l = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); l < lines; l += warps) {
    const T* xl = x + l * n;
    A acc = KIND == REDUCE_MAX ? (A)-INFINITY : (A)0;
    for (int64_t j = lane; j < n; j += 32) acc = reduce_step<KIND, A>(acc, (A)Nm::load(xl[j]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc = reduce_step<KIND, A>(acc, __shfl_xor_sync(0xffffffffu, acc, o));
    if (KIND == REDUCE_MEAN) acc /= (A)n;
    if (lane == 0) y[l] = Nm::store((typename Nm::C)acc);
  }
}

template <int KIND, typename T>
__global__ void k_reduce_strided(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner) {
  typedef Num<T> Nm;
  typedef typename Acc<T>::type A;
  KILN_GRID_STRIDE(int64_t, t, outer * inner) {
    const int64_t o = t / inner, i = t - o * inner;
    const T* xl = x + o * n * inner + i;
    A acc = KIND == REDUCE_MAX ? (A)-INFINITY : (A)0;
    for (int64_t j = 0; j < n; j++) acc = reduce_step<KIND, A>(acc, (A)Nm::load(xl[j * inner]));
    if (KIND == REDUCE_MEAN) acc /= (A)n;
    y[t] = Nm::store((typename Nm::C)acc);
  }
}

// ---------------------------------------------------------------- argmax (greedy decoding's pick)

static const int kArgmaxThreads = 1024;

// (v, i) ← the better of (v, i) and (v2, i2): the larger value, equal values → the smaller index;
// i < 0 is "nothing yet" (values are finite or -Inf here: a NaN / +Inf row is flagged apart).
__device__ __forceinline__ void argmax_take(float& v, long long& i, float v2, long long i2) {
  if (i2 >= 0 && (i < 0 || v2 > v || (v2 == v && i2 < i))) {
    v = v2;
    i = i2;
  }
}

// One block a row (grid-stride over rows; a decode step has B of them, 32000 wide for Llama).
// Each thread scans its elements in increasing index order (16-byte loads when VEC) keeping the
// FIRST index of its maximum with a strict >, so combining by (value, smaller index) gives the
// row's first maximum whatever the thread count: a warp shuffle, then one pass through shared
// memory. A NaN or +Inf anywhere in the row, or nothing above -Inf, gives -1 (ARGMAX_NONE).
template <typename T, bool VEC>
__global__ void __launch_bounds__(kArgmaxThreads) k_argmax(const T* __restrict__ x, int64_t* __restrict__ y, int64_t rows, int64_t n) {
  typedef Num<T> Nm;
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ long long si[kArgmaxThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    float m = -INFINITY;
    long long best = -1;
    int bad = 0;
    if (VEC) {
      const int E = Vec<T>::E;
      const uint4* xv = reinterpret_cast<const uint4*>(xr);
      const int64_t units = n / E, step = blockDim.x;
      auto scan = [&](const uint4& q, int64_t c) {
        float f[E];
        Vec<T>::unpack(q, f);
#pragma unroll
        for (int e = 0; e < E; e++) {
          bad |= (f[e] != f[e]) | (f[e] == INFINITY);
          if (f[e] > m) {
            m = f[e];
            best = c * E + e;
          }
        }
      };
      // four 16-byte loads in flight a thread (a decode step's one row is one block's work), then
      // scanned in index order
      int64_t c = threadIdx.x;
      for (; c + 3 * step < units; c += 4 * step) {
        uint4 q[4];
#pragma unroll
        for (int k = 0; k < 4; k++) q[k] = __ldg(xv + c + k * step);
#pragma unroll
        for (int k = 0; k < 4; k++) scan(q[k], c + k * step);
      }
      for (; c < units; c += step) scan(__ldg(xv + c), c);
    } else {
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = (float)Nm::load(xr[j]);
        bad |= (v != v) | (v == INFINITY);
        if (v > m) {
          m = v;
          best = j;
        }
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_take(m, best, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, best, o));
    if (lane == 0) {
      sv[warp] = m;
      si[warp] = best;
    }
    bad = __syncthreads_or(bad);  // also the barrier before the warps' results are read
    if (warp == 0) {
      m = lane < warps ? sv[lane] : -INFINITY;
      best = lane < warps ? si[lane] : -1;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) argmax_take(m, best, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, best, o));
      if (lane == 0) y[r] = bad ? -1 : (int64_t)best;
    }
    __syncthreads();  // sv / si are the next row's
  }
}

}  // namespace detail

// ======================================================================== launchers (cpu/kernels.h)

template <typename T>
void fill(T* y, double v, int64_t n) {
  if (n <= 0) return;
  const T t = Num<T>::store((typename Num<T>::C)v);
  detail::k_fill<T><<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream()>>>(y, t, n);
  detail::launched("fill");
}

template <typename T>
void arange(T* y, int64_t start, int64_t n) {
  if (n <= 0) return;
  detail::k_arange<T><<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream()>>>(y, start, n);
  detail::launched("arange");
}

// y (strides sy) = x (strides sx) over `shape`: transpose, expand, slice and concat are all this.
template <typename T>
void copy_strided(const T* x, T* y, Shape shape, Strides sx, Strides sy) {
  const int64_t n = detail::numel(shape);
  if (n <= 0) return;
  const int64_t* st[2] = {sx.s, sy.s};
  detail::Geo<2> g = detail::coalesce<2>(shape, st);
  if (g.rank == 0 || (g.rank == 1 && g.s[0][0] == 1 && g.s[1][0] == 1)) {
    rt::check(cudaMemcpyAsync(y, x, (size_t)n * sizeof(T), cudaMemcpyDeviceToDevice, stream()), "cudaMemcpyAsync (copy_strided)");
    return;
  }
  switch (detail::copy_unit(x, y, g, (int)sizeof(T))) {
    case 16: detail::copy_units<uint4>(x, y, g, n, (int)sizeof(T)); break;
    case 8: detail::copy_units<uint2>(x, y, g, n, (int)sizeof(T)); break;
    case 4: detail::copy_units<uint32_t>(x, y, g, n, (int)sizeof(T)); break;
    default: detail::copy_units<T>(x, y, g, n, (int)sizeof(T));
  }
  detail::launched("copy_strided");
}

// y[b] = a[b] · w[b] for every batch index b of `batch` (sa/sb: each operand's matrix strides over it).
template <typename T>
void matmul(const T* a, const T* w, T* y, Shape batch, Strides sa, Strides sb, int64_t M, int64_t N, int64_t K) {
  const int64_t nb = detail::numel(batch);
  if (nb <= 0 || M <= 0 || N <= 0) return;
  Strides sy;
  int64_t acc = M * N;
  for (int i = KILN_MAX_RANK - 1; i >= 0; i--) {
    sy.s[i] = i < batch.rank ? acc : 0;
    if (i < batch.rank) acc *= batch.d[i];
  }
  // decode attention (M = 1 query row per head) changes shape every step (K or N = P + 1): a
  // cuBLASLt plan per shape would cost a heuristic query per step; the tiled kernel needs none
  static const bool lt_small = getenv("KILN_LT_SMALL_M") && getenv("KILN_LT_SMALL_M")[0] == '1';  // A/B switch for measurements
  if (Is16<T>::value && K > 0 && (M > 8 || lt_small)) {
    // one strided batch when the batch dims collapse to one stride per operand
    const int64_t* st3[3] = {sa.s, sb.s, sy.s};
    detail::Geo<3> g3 = detail::coalesce<3>(batch, st3);
    if (g3.rank <= 1) {
      const int64_t bsa = g3.rank ? g3.s[0][0] : 0, bsb = g3.rank ? g3.s[1][0] : 0, bsy = g3.rank ? g3.s[2][0] : M * N;
      // column-major view: yᵀ[N×M] = wᵀ[N×K] · aᵀ[K×M]
      if (lt::gemm(LtType<T>::value, false, false, N, M, K, w, N, bsb, a, K, bsa, y, N, bsy, nb, nullptr, "matmul")) return;
    }
  }
  const int64_t* st[2] = {sa.s, sb.s};
  detail::Geo<2> g = detail::coalesce<2>(batch, st);
  detail::gemm_tile<T, false>(a, w, nullptr, nullptr, y, M, N, K, g, nb, "matmul");
}

// y[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]) (+ residual[m, n]): torch.nn.Linear with W [out, in],
// and fuse-residual's add in every path's epilogue (the GEMV's store, cuBLASLt's β·C with C = the
// residual, the tiled kernel's store), rounded once from the f32 accumulator.
template <typename T>
void linear(const T* x, const T* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return;
  // GEMV: M = 1 always (it beats cuBLASLt there: 2.65 vs 2.33 TB/s on 4096→11008, H100), and up to
  // M = 8 where cuBLASLt is not there (f32, or no library); cuBLASLt is ahead from M = 2 on
  if (M == 1 || (M <= 8 && !(Is16<T>::value && K > 0 && lt::available()))) {
    const bool vec = (K % detail::Vec<T>::E == 0) && detail::aligned16(x) && detail::aligned16(w);
    const int64_t blocks = (N + 7) / 8;
    if (blocks > 0x7fffffffLL) rt::fail(KILN_ERR_INVALID, "linear: N = %lld is too large", (long long)N);
    cudaStream_t s = stream();
#define KILN_GEMV_CASE(MR)                                                                                           \
  case MR:                                                                                                           \
    if (vec) detail::k_gemv<T, MR, true><<<(unsigned)blocks, 256, 0, s>>>(x, w, bias, residual, y, N, K);           \
    else detail::k_gemv<T, MR, false><<<(unsigned)blocks, 256, 0, s>>>(x, w, bias, residual, y, N, K);              \
    break;
    switch (M) {
      KILN_GEMV_CASE(1)
      KILN_GEMV_CASE(2)
      KILN_GEMV_CASE(3)
      KILN_GEMV_CASE(4)
      KILN_GEMV_CASE(5)
      KILN_GEMV_CASE(6)
      KILN_GEMV_CASE(7)
      KILN_GEMV_CASE(8)
    }
#undef KILN_GEMV_CASE
    detail::launched("linear (GEMV)");
    return;
  }
  // column-major view: yᵀ[N×M] = W[N×K] · xᵀ[K×M], W stored K×N (transposed)
  if (Is16<T>::value && K > 0 && lt::gemm(LtType<T>::value, true, false, N, M, K, w, K, 0, x, K, 0, y, N, 0, 1, bias, "linear", residual)) return;
  detail::Geo<2> none;
  none.rank = 0;
  for (int i = 0; i < KILN_MAX_RANK; i++) {
    none.d[i] = 1;
    none.s[0][i] = none.s[1][i] = 0;
  }
  detail::gemm_tile<T, true>(x, w, bias, residual, y, M, N, K, none, 1, "linear");
}

// softmax along an axis of length n; `inner` elements separate neighbours along it.
template <typename T>
void softmax(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  if (outer <= 0 || n <= 0 || inner <= 0) return;
  if (inner == 1) detail::k_softmax_rows<T><<<detail::grid_for(outer * 32, detail::kThreads), detail::kThreads, 0, stream()>>>(x, y, outer, n);
  else detail::k_softmax_strided<T><<<detail::grid_for(outer * inner, detail::kThreads), detail::kThreads, 0, stream()>>>(x, y, outer, n, inner);
  detail::launched("softmax");
}

template <int KIND, typename T>
void reduce(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (inner == 1) detail::k_reduce_rows<KIND, T><<<detail::grid_for(outer * 32, detail::kThreads), detail::kThreads, 0, stream()>>>(x, y, outer, n);
  else detail::k_reduce_strided<KIND, T><<<detail::grid_for(outer * inner, detail::kThreads), detail::kThreads, 0, stream()>>>(x, y, outer, n, inner);
  detail::launched("reduce");
}

// argmax over the last axis: y[r] = the first index of the maximum of row r of n, or -1 where the
// row holds a NaN or +Inf or nothing above -Inf (ir/ops.ts argmax; cpu/kernels.h is the twin).
template <typename T>
void argmax(const T* x, int64_t* y, int64_t rows, int64_t n) {
  if (rows <= 0) return;
  const bool vec = n % detail::Vec<T>::E == 0 && detail::aligned16(x);
  const unsigned grid = detail::grid_for(rows, 1);
  if (vec) detail::k_argmax<T, true><<<grid, detail::kArgmaxThreads, 0, stream()>>>(x, y, rows, n);
  else detail::k_argmax<T, false><<<grid, detail::kArgmaxThreads, 0, stream()>>>(x, y, rows, n);
  detail::launched("argmax");
}

// y[o, j, :] = x[o, idx[j], :]; returns the position of the first out-of-range index, or -1.
// The check runs in the kernel; the host waits for its one flag (gather starts a forward, when
// the stream holds little else).
template <typename T, typename I>
int64_t gather(const T* x, const I* idx, T* y, int64_t outer, int64_t n, int64_t inner, int64_t m, bool check) {
  if (m <= 0) return -1;
  rt::CudaState& s = rt::state();
  cudaStream_t st = stream();
  if (!check) {
    // indices known at compile time to be in range (a constant): no flag, no sync; short rows
    // (e.g. a permutation of the last axis) get one thread per element
    const int64_t total = outer * m * inner;
    if (total <= 0) return -1;
    const int V = 16 / (int)sizeof(T);
    const bool words = detail::aligned16(x) && detail::aligned16(y);
    if (words && inner * (int64_t)sizeof(T) % 16 == 0) {
      // rows of whole 16-byte words: the same gather over words
      const int64_t w = inner * (int64_t)sizeof(T) / 16, tw = total / V;
      if (tw <= 0x7fffffffLL) detail::k_gather_elems<uint4, I, uint32_t><<<detail::grid_for(tw, detail::kThreads), detail::kThreads, 0, st>>>((const uint4*)x, idx, (uint4*)y, n, w, m, tw);
      else detail::k_gather_elems<uint4, I, uint64_t><<<detail::grid_for(tw, detail::kThreads), detail::kThreads, 0, st>>>((const uint4*)x, idx, (uint4*)y, n, w, m, tw);
      detail::launched("gather");
      return -1;
    }
    if (words && inner == 1 && n % V == 0 && m % V == 0 && m / V <= detail::kRunsMax) {
      const int64_t tw = total / V;
      if (tw <= 0x7fffffffLL) detail::k_gather_runs<T, I, uint32_t><<<detail::grid_for(tw, detail::kThreads), detail::kThreads, 0, st>>>(x, idx, y, n, m, tw);
      else detail::k_gather_runs<T, I, uint64_t><<<detail::grid_for(tw, detail::kThreads), detail::kThreads, 0, st>>>(x, idx, y, n, m, tw);
      detail::launched("gather");
      return -1;
    }
    if (total <= 0x7fffffffLL) detail::k_gather_elems<T, I, uint32_t><<<detail::grid_for(total, detail::kThreads), detail::kThreads, 0, st>>>(x, idx, y, n, inner, m, total);
    else detail::k_gather_elems<T, I, uint64_t><<<detail::grid_for(total, detail::kThreads), detail::kThreads, 0, st>>>(x, idx, y, n, inner, m, total);
    detail::launched("gather");
    return -1;
  }
  rt::check(cudaMemsetAsync(s.flag_dev, 0xff, sizeof(unsigned long long), st), "cudaMemsetAsync (gather flag)");
  const int64_t rows = outer * inner > 0 ? outer * m : 0;
  const int64_t work = rows > (m + detail::kThreads - 1) / detail::kThreads ? rows : (m + detail::kThreads - 1) / detail::kThreads;
  const unsigned grid = detail::grid_for(work, 1);
  const bool vec = ((inner * (int64_t)sizeof(T)) % 16 == 0) && detail::aligned16(x) && detail::aligned16(y);
  if (vec) detail::k_gather<T, I, true><<<grid, detail::kThreads, 0, st>>>(x, idx, y, rows ? outer : 0, n, inner, m, s.flag_dev);
  else detail::k_gather<T, I, false><<<grid, detail::kThreads, 0, st>>>(x, idx, y, rows ? outer : 0, n, inner, m, s.flag_dev);
  detail::launched("gather");
  rt::check(cudaMemcpyAsync(s.flag_host, s.flag_dev, sizeof(unsigned long long), cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync (gather flag)");
  if (rt::capturing()) {
    // inside a CUDA graph: the host reads the flag after the replay (rt::check_replayed_gathers)
    s.captured_gather = true;
    return -1;
  }
  rt::check(cudaStreamSynchronize(st), "cudaStreamSynchronize (gather)");
  const unsigned long long bad = *s.flag_host;
  return bad == ~0ULL ? -1 : (int64_t)bad;
}

namespace detail {
__global__ void k_mask_positions(const int64_t* __restrict__ m, float* __restrict__ y, int64_t B, int64_t T) {
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b >= B) return;
  int64_t n = 0;
  for (int64_t t = 0; t < T; t++) y[b * T + t] = m[b * T + t] != 0 ? (float)n++ : 1.f;
}
__global__ void k_varlen_positions(const int32_t* __restrict__ cu, float* __restrict__ y, int64_t n_cu, int64_t T) {
  KILN_GRID_STRIDE(int64_t, t, T) {
    int64_t lo = 0, hi = n_cu - 2;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    y[t] = (float)(t - cu[lo]);
  }
}
}  // namespace detail

// Position ids from an attention_mask [B, T] (cumsum − 1 at real tokens, 1 at padding): a row a thread.
inline void mask_positions(const int64_t* m, float* y, int64_t B, int64_t T) {
  if (B <= 0 || T <= 0) return;
  detail::k_mask_positions<<<(unsigned)((B + 127) / 128), 128, 0, stream()>>>(m, y, B, T);
  detail::launched("mask_positions");
}
// Position ids of packed sequences: t − cu_seqlens[s] for token t of sequence s.
inline void varlen_positions(const int32_t* cu, float* y, int64_t n_cu, int64_t T) {
  if (T <= 0 || n_cu < 2) return;
  detail::k_varlen_positions<<<detail::grid_for(T, detail::kThreads), detail::kThreads, 0, stream()>>>(cu, y, n_cu, T);
  detail::launched("varlen_positions");
}

// A cache_write as a functor (one element of [B, H, S, D] a call; W of one row a chunk), so that
// it can share a launch with other independent small kernels (for_each_n). Positions past the
// capacity are skipped (the runtime checked the bounds; never write past them).
template <typename T>
struct CacheWriteF {
  T* cache;
  const T* update;
  const int64_t* pos;
  int64_t H, C, S, D, ub, uh, us;
  static constexpr int W = 16 / sizeof(T);
  __device__ __forceinline__ void operator()(int64_t e) const {
    const int64_t p = *pos, d = e % D, s = (e / D) % S, bh = e / (D * S), b = bh / H, h = bh % H;
    if (p >= 0 && p + s < C) cache[(bh * C + p + s) * D + d] = update[b * ub + h * uh + s * us + d];
  }
  __device__ __forceinline__ void chunk(int64_t e) const {
    const int64_t p = *pos, d = e % D, s = (e / D) % S, bh = e / (D * S), b = bh / H, h = bh % H;
    if (p >= 0 && p + s < C)
      *reinterpret_cast<uint4*>(cache + (bh * C + p + s) * D + d) = *reinterpret_cast<const uint4*>(update + b * ub + h * uh + s * us + d);
  }
  bool chunkable() const { return D % W == 0 && ub % W == 0 && uh % W == 0 && us % W == 0 && aligned16(cache) && aligned16(update); }
};
template <typename T>
Each<CacheWriteF<T>> cache_write_each(T* cache, const T* update, const int64_t* pos, int64_t B, int64_t H, int64_t C, int64_t S, int64_t D, int64_t ub, int64_t uh, int64_t us) {
  return Each<CacheWriteF<T>>{CacheWriteF<T>{cache, update, pos, H, C, S, D, ub, uh, us}, B * H * S * D};
}
template <typename T>
Each<CacheWriteF<T>> cache_write_each(T* cache, const T* update, const int64_t* pos, int64_t BH, int64_t C, int64_t S, int64_t D) {
  return cache_write_each<T>(cache, update, pos, 1, BH, C, S, D, BH * S * D, S * D, D);
}

namespace detail {
// Part k of a batched launch: its element count, chunks (0: element by element) and block range.
struct EachPart {
  int64_t n, chunks;
  unsigned first, blocks;
};
template <int N>
struct EachParts {
  EachPart p[N];
};
// block b of the part: a grid-stride loop over the part's own blocks (k_for_each / k_for_each_chunks)
template <typename F>
__device__ __forceinline__ void each_part(const F& f, const EachPart& p, int64_t b) {
  const int64_t stride = (int64_t)p.blocks * blockDim.x;
  if (p.chunks > 0) {
    for (int64_t c = b * blockDim.x + threadIdx.x; c < p.chunks; c += stride) f.chunk(c * F::W);
    const int64_t t = p.chunks * F::W + b * blockDim.x + threadIdx.x;
    if (t < p.n) f(t);
  } else {
    for (int64_t i = b * blockDim.x + threadIdx.x; i < p.n; i += stride) f(i);
  }
}
template <int K, int N, typename F, typename... Rest>
__device__ __forceinline__ void each_dispatch(const EachParts<N>& P, const F& f, const Rest&... rest) {
  const unsigned b = blockIdx.x;
  if (b >= P.p[K].first && b < P.p[K].first + P.p[K].blocks) return each_part(f, P.p[K], (int64_t)(b - P.p[K].first));
  if constexpr (sizeof...(Rest) > 0) each_dispatch<K + 1, N>(P, rest...);
}
template <int N, typename... Fs>
__global__ void k_for_each_n(EachParts<N> P, Fs... fs) {
  each_dispatch<0, N>(P, fs...);
}
}  // namespace detail

// Independent elementwise loops and cache writes in ONE launch (the codegen batches consecutive
// ones that neither read what another writes nor write what another touches): each keeps its own
// blocks, chunking and loop; at decode, where each is a few blocks, one launch instead of several.
template <typename... Fs>
void for_each_n(const Each<Fs>&... es) {
  constexpr int N = sizeof...(Fs);
  detail::EachParts<N> P;
  unsigned total = 0;
  int k = 0;
  auto part = [&](const auto& e) {
    using F = typename std::decay<decltype(e.f)>::type;
    detail::EachPart& p = P.p[k++];
    p.n = e.n > 0 ? e.n : 0;
    p.chunks = p.n > 0 && e.f.chunkable() ? p.n / F::W : 0;
    p.first = total;
    p.blocks = p.n <= 0 ? 0 : detail::grid_for(p.chunks > 0 ? p.chunks : p.n, detail::kThreads);
    total += p.blocks;
  };
  (part(es), ...);
  if (total == 0) return;
  detail::k_for_each_n<N, Fs...><<<total, detail::kThreads, 0, stream()>>>(P, es.f...);
  detail::launched("fused elementwise (batched)");
}

// Runs f(i) for i in [0, n): the loop of a fused elementwise kernel (the codegen writes f), in
// chunks of F::W elements where the functor allows them (aligned pointers, and W dividing the
// innermost dim where an operand broadcasts), else one element a thread.
template <typename F>
void for_each(const F& f, int64_t n) {
  if (n <= 0) return;
  if (f.chunkable()) {
    const int64_t chunks = n / F::W;
    detail::k_for_each_chunks<F><<<detail::grid_for(chunks > 0 ? chunks : 1, detail::kThreads), detail::kThreads, 0, stream()>>>(f, chunks, n);
  } else {
    detail::k_for_each<F><<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream()>>>(f, n);
  }
  detail::launched("fused elementwise");
}

// The static KV cache's write: rows [*pos, *pos + S) of each [C, D] slab of `cache` become the rows
// of `update` ([BH, S, D]). The position stays on the device (a replayed decode step reads it there);
// the runtime checks *pos + S ≤ C before the call. The update may be read through (b, h, s) strides
// (ub, uh, us; d contiguous): v's transpose into [B, H, S, D] is then not materialized (emit.ts,
// elementwiseViews). The CacheWriteF functor above, alone (the codegen batches it with its
// neighbours where it can: cache_write_each).
template <typename T>
void cache_write(T* cache, const T* update, const int64_t* pos, int64_t B, int64_t H, int64_t C, int64_t S, int64_t D, int64_t ub, int64_t uh, int64_t us) {
  const Each<CacheWriteF<T>> e = cache_write_each<T>(cache, update, pos, B, H, C, S, D, ub, uh, us);
  for_each(e.f, e.n);
}
template <typename T>
void cache_write(T* cache, const T* update, const int64_t* pos, int64_t BH, int64_t C, int64_t S, int64_t D) {
  cache_write<T>(cache, update, pos, 1, BH, C, S, D, BH * S * D, S * D, D);
}

}  // namespace cuda
}  // namespace kiln

#include "quant.cuh"  // qlinear4 / qlinear8 and quantize-on-load (issue 6)
#include "norm.cuh"   // rms_norm / layer_norm
