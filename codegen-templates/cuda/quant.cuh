// Quantized linears of the cuda target and quantize-on-load on the GPU. The math is
// compiler/ir/quant.ts (the reference), the storage layouts those of common/kiln_quant.h, the
// semantics those of the cpu twins (cpu/kernels.h qlinear4 / qlinear8).
//
// - 4-bit, NF4/FP4 with blockwise absmax and optional double quantization (QLoRA, Dettmers et
//   al., 2023). Decode (M ≤ 8 rows): a fused dequantize-GEMV. bf16/f16 with K and block multiples
//   of 64 (k_qgemv4mma): byte → code pair from a bank-replicated shared table, the products on
//   the tensor cores (mma m16n8k16, the rows of x its n columns), f32 sums, the absmax applied
//   once per 64-weight chunk; otherwise (k_qgemv4v, f32 or blocks of 32) a block of 4 warps per
//   few output features reading the packed codes 16 bytes (32 weights of one absmax block) at a
//   time, the 16 code values in shared memory, f32 FMAs; at one row (bf16/f16), k_qgemv4p:
//   persistent, f16 code pairs, computing the RMSNorm that produced x where there is one (the
//   `_norm` calls) and RoPE + the cache writes in its epilogue (q/k/v); on Hopper it is launched as
//   a programmatic dependent of the kernel before it and runs every such GEMV, elsewhere only those
//   where it saves the norm's or RoPE's kernel. Prefill
//   (larger M): the weight is dequantized into a scratch buffer in the activation dtype exactly
//   as the cpu twin dequantizes it (f32(code·absmax in f64), rounded to T) and multiplied by the
//   16-bit path of `linear` (cuBLASLt on the tensor cores; Kiln's tiled GEMM without it).
// - LLM.int8 (Dettmers et al., 2022): the feature columns holding an outlier (|x| > threshold in
//   any row) are found and listed; the other columns are quantized per row (absmax int8). Decode
//   (M ≤ 8): one kernel finds the outlier columns and quantizes the rows, then a dp4a GEMV whose
//   epilogue scales by the row and feature absmax and adds the outlier columns' products against
//   the dequantized int8 weights (quant.ts int8Matmul). Prefill (i8_prep, i8_run): the rows'
//   int8 and the outlier flags in one pass over x, the list, a row repair that gathers the outlier
//   columns of x dense, then int8 × int8 → int32 on the integer tensor cores — cuBLASLt's IMMA
//   GEMM followed by a streaming epilogue (i8::k_epi: 16-byte loads of the products, scales, bias,
//   16-bit outlier product on the tensor cores from the outlier columns of x and of the weight,
//   both gathered dense once a call), or Kiln's own mma.sync kernel doing all of it (i8::k_gemm);
//   picked by timing, see KILN_INT8_GEMM.
// - Quantize on load (kiln_quantize4 / kiln_quantize8 of kiln_abi.h): the f32 weight is in device
//   memory; absmax, nearest code (ties to the smaller index, in f64, exactly as kiln_quant.h) and
//   int8 rounding run on the GPU; double quantization's mean, int8 codes and scales are computed
//   on the host from the downloaded per-block absmax with kiln_quant.h's own function, so the
//   bytes are those of the host quantizer bit for bit.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>
#include "../common/kiln_types.h"
#include "../common/kiln_quant.h"
#include "runtime.cuh"
#include "cublaslt.cuh"
#include "kernels.cuh"
#include "norm.cuh"
#include "i8wgmma.cuh"

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
  const int8_t* acode;  // with it: int8 code per block, f32 scale per 256 blocks, f32 mean
  const float* ascale;
  const float* mean;
  int64_t block;
  int64_t A;  // the absmax layout (kiln_quant.h tiles4): blocks a row, tiled by 8 rows; 0: block order
  bool dq;
};
// n weights in rows of K
static inline Q4 q4_of(const uint8_t* w, int64_t n, int64_t K, int64_t block, bool dq) {
  const uint8_t* tail = w + quant::pad16((n + 1) / 2);
  const int64_t nb = quant::blocks4(n, block);
  Q4 q;
  q.codes = w;
  q.absmax = (const float*)tail;
  q.acode = (const int8_t*)tail;
  q.ascale = (const float*)(tail + quant::pad16(nb));
  q.mean = (const float*)(tail + quant::pad16(nb) + quant::pad16(4 * quant::groups4(n, block)));
  q.block = block;
  q.A = quant::tiles4(n, block, K);
  q.dq = dq;
  return q;
}
// the storage slot of block b's absmax (kiln_quant.h slot4; a 32-bit division where b fits)
__device__ __forceinline__ int64_t slot_of(const Q4& q, int64_t b) {
  if (q.A == 0) return b;
  int64_t r, j;
  if (b <= 0xffffffffLL && q.A <= 0xffffffffLL) {
    const uint32_t u = (uint32_t)b, a = (uint32_t)q.A, rq = u / a;
    r = rq, j = u - rq * a;
  } else {
    r = b / q.A, j = b - r * q.A;
  }
  return quant::slot4_rj(r, j, q.A);
}
// the slot of block j of row r where a row holds apr whole blocks
__device__ __forceinline__ int64_t slot_rj(const Q4& q, int64_t r, int64_t j, int64_t apr) { return q.A ? quant::slot4_rj(r, j, q.A) : r * apr + j; }
// absmax of block b; with double quantization max(0, f32(f32(code·scale) + mean)) — f32 roundings,
// never contracted, as kiln_quant.h absmax4 and quant.ts dequantizeAbsmax compute it
__device__ __forceinline__ float absmax_dq(float mean, int code, float scale) {
  return fmaxf(0.f, __fadd_rn(__fmul_rn((float)code, scale), mean));
}
// the absmax in slot s
__device__ __forceinline__ float absmax_at(const Q4& q, float mean, int64_t s) {
  if (!q.dq) return __ldg(q.absmax + s);
  return absmax_dq(mean, __ldg(q.acode + s), __ldg(q.ascale + (s >> 8)));
}
// the absmax of block b
__device__ __forceinline__ float absmax_of(const Q4& q, float mean, int64_t b) { return absmax_at(q, mean, slot_of(q, b)); }

// absmax_at when the caller knows at compile time whether the weight is double-quantized (DQ
// false: one load; the hot decode GEMV then carries no branch on q.dq)
template <bool DQ>
__device__ __forceinline__ float absmax_as(const Q4& q, float mean, int64_t s) {
  if constexpr (!DQ) return __ldg(q.absmax + s);
  else return absmax_at(q, mean, s);
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

// log2(v) when v is a power of 2, else -1 (the kernels then divide instead of shifting)
static inline int log2_exact(int64_t v) {
  for (int i = 0; i < 62; i++)
    if (((int64_t)1 << i) == v) return i;
  return -1;
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

// ---------------------------------------------------------------- the 4-bit decode GEMV (M ≤ 8)
//
// One launch computes the linears of a job table. A block finds its job by comparing blockIdx.x
// with first[] and runs on that job's rows alone, exactly as a launch of that job by itself would
// (the same sums in the same order: a job's numbers do not depend on the others). qlinear4 is the
// one-job case; the linears reading one x (q/k/v, gate/up: qlinear4_group) share a launch.
// `pair`: the table is gate (j[0]) and up (j[1]) of one N and every block is job 0's; a block
// computes the same rows of both, so its epilogue holds g and u and stores silu(T(g))·T(u) as the
// fused elementwise kernel would (kiln::silu_mul) into j[0].y; j[1].y is unused.
template <typename T>
struct Q4Job {
  Q4 q;
  const T* bias;
  const T* res;
  T* y;
  int64_t N;
};
template <typename T>
struct Q4Jobs {
  Q4Job<T> j[4];
  int n;
  int64_t first[5];  // first block of job i; first[n] = the grid
  bool pair;
};

// the job of chunk (or block) c: the last i < n with first[i] ≤ c
template <typename T>
__device__ __forceinline__ int job_of_chunk(const Q4Jobs<T>& J, int64_t c) {
  int i = 0;
#pragma unroll
  for (int k = 1; k < 4; k++) i += k < J.n && c >= J.first[k];
  return i;
}
// this block's job
template <typename T>
__device__ __forceinline__ int job_of(const Q4Jobs<T>& J) {
  return job_of_chunk(J, (int64_t)blockIdx.x);
}
// J.j[ji], read at compile-time indices (fewer registers than one read at a run-time index)
template <typename T>
__device__ __forceinline__ Q4Job<T> job_at(const Q4Jobs<T>& J, int ji) {
  Q4Job<T> r = J.j[0];
#pragma unroll
  for (int k = 1; k < 4; k++)
    if (ji == k) r = J.j[k];
  return r;
}
// an output's f32 value (sum, bias and residual, added in each kernel's own order) rounded to T
template <typename T>
__device__ __forceinline__ T round_out(float v) {
  return Num<T>::store((typename Num<T>::C)v);
}
// element i of job ji's output: v alone, or paired (J.pair), silu(T(v))·T(u) into job 0's
template <typename T>
__device__ __forceinline__ void store_out(const Q4Jobs<T>& J, bool pair, int ji, int64_t i, float v, float u) {
  if (pair) J.j[0].y[i] = silu_mul<T>(round_out<T>(v), round_out<T>(u));
  else J.j[ji].y[i] = round_out<T>(v);
}

// y[m, row] = Σ_k x[m, k] · code[c(row, k)] · absmax(block) (+ bias[row]) (+ res[m, row]) for MR ≤ 8
// rows of x, any K and block (the general path; k_qgemv4v is the fast one): one warp per output
// feature (paired: the feature of gate and of up), 8 a block.
template <typename T, int MR>
__global__ void __launch_bounds__(256) k_qgemv4(const T* __restrict__ x, const __grid_constant__ Q4Jobs<T> J, Code16 code, int64_t K) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31, ji = job_of(J);
  const int64_t N = J.j[ji].N;
  const int64_t row = ((int64_t)blockIdx.x - J.first[ji]) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  float v[2][MR];  // the job's values, then up's (paired)
#pragma unroll
  for (int h = 0; h < 2; h++) {
    if (h == 1 && !J.pair) break;
    const Q4Job<T>& jb = J.j[ji + h];
    const Q4& q = jb.q;
    const float mean = q.dq ? __ldg(q.mean) : 0.f;
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
    const float b = jb.bias ? (float)Num<T>::load(jb.bias[row]) : 0.f;
#pragma unroll
    for (int m = 0; m < MR; m++) v[h][m] = acc[m] + b + (jb.res ? (float)Num<T>::load(jb.res[m * N + row]) : 0.f);
  }
  if (lane == 0)
#pragma unroll
    for (int m = 0; m < MR; m++) store_out(J, J.pair, ji, m * N + row, v[0][m], J.pair ? v[1][m] : 0.f);
}

// part[m] += Σ code(weight i)·x(m, i) over the 8 weights of code word j of a 16-byte piece (two a
// byte, the even ones in the low nibbles), for MR rows of x, in i order. tb: the 16 code values as
// f32 in shared memory; a code is found by byte offset: (w << 2) & 0x3c3c3c3c puts 4·code of the
// even weights in the bytes of a word, (w >> 2) & 0x3c3c3c3c those of the odd ones, and one
// byte_perm extracts it.
template <int MR, typename X>
__device__ __forceinline__ void dot8(const uint4& pc, int j, const char* tb, X x, float (&part)[MR]) {
  const uint32_t w = j == 0 ? pc.x : j == 1 ? pc.y : j == 2 ? pc.z : pc.w;
  const uint32_t lo = (w << 2) & 0x3c3c3c3cu, hi = (w >> 2) & 0x3c3c3c3cu;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float v0 = *reinterpret_cast<const float*>(tb + __byte_perm(lo, 0, 0x4440 + k));
    const float v1 = *reinterpret_cast<const float*>(tb + __byte_perm(hi, 0, 0x4440 + k));
#pragma unroll
    for (int m = 0; m < MR; m++) part[m] = fmaf(v1, x(m, 2 * k + 1), fmaf(v0, x(m, 2 * k), part[m]));
  }
}

// The decode GEMV's fast path (K and block multiples of 32, 16-byte aligned operands): a block of
// 4 warps computes R output features (paired: R/2 of gate and the same R/2 of up), its 128 lanes
// splitting K into 16-byte pieces of codes (32 weights of one absmax block); the R rows' pieces
// are loaded together, each piece of x once for the R rows, and decoded by dot8. lb =
// log2(block), or -1. A row's sum does not depend on R. P = J.pair, as a template
// parameter. M = 1 takes 8 rows a block at 4 blocks of 4 warps an SM (128 registers), M = 2 4 rows
// at 6 (80 registers): a job table read at a run-time index otherwise costs ~8 more.
template <typename T, int MR, int R, bool P, bool DQ>
__global__ void __launch_bounds__(128, MR == 1 ? 4 : MR == 2 ? 6 : 0) k_qgemv4v(const T* __restrict__ x, const __grid_constant__ Q4Jobs<T> J, Code16 code, int64_t K, int lb) {
  __shared__ float tab[16];
  __shared__ float red[4][R * MR];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, ji = job_of(J);
  // slots 0…H-1: rows row0… of the job; paired, slots H…R-1: the same rows of up
  constexpr int H = P ? R / 2 : R;
  const Q4Job<T> ja = job_at(J, ji);
  const Q4 qa = ja.q, qb = P ? J.j[1].q : qa;
  const int64_t N = ja.N, row0 = ((int64_t)blockIdx.x - J.first[ji]) * H;
  const float meana = DQ ? __ldg(qa.mean) : 0.f, meanb = P && DQ ? __ldg(qb.mean) : 0.f;
  const int64_t KV = K / 32;
  const char* tb = reinterpret_cast<const char*>(tab);
  float acc[R][MR];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MR; m++) acc[r][m] = 0.f;
  // M = 1 with whole absmax blocks in a row (block a power of 2 dividing K): 32-bit offsets from
  // per-block bases, and the piece's 32 x values loaded before its R rows are decoded (the shape
  // of bench/qgemv1.cu's k_v2, which this path matched there)
  const bool lean = MR == 1 && lb >= 0 && (K & ((1LL << lb) - 1)) == 0 && KV * R < 0x7fffffffLL;
  if constexpr (MR == 1) {
    if (lean) {
      const int kv = (int)KV, cs = lb - 5, apr = (int)(K >> lb);
      const uint4* ca = reinterpret_cast<const uint4*>(qa.codes) + row0 * KV;
      const uint4* cb = reinterpret_cast<const uint4*>(qb.codes) + row0 * KV;
      for (int p = threadIdx.x; p < kv; p += 128) {
        uint4 pc[R];
        float a[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
          const int rr = (int)(row0 + (r >= H ? r - H : r) < N ? (r >= H ? r - H : r) : N - 1 - row0);  // rows past N: computed, never stored
          pc[r] = detail::ld_stream((r >= H ? cb : ca) + rr * kv + p);
          a[r] = absmax_as<DQ>(r >= H ? qb : qa, r >= H ? meanb : meana, slot_rj(r >= H ? qb : qa, row0 + rr, p >> cs, apr));
        }
        float xf[32];
#pragma unroll
        for (int j = 0; j < 4; j++) load8<T>(x + p * 32 + 8 * j, xf + 8 * j);
#pragma unroll
        for (int r = 0; r < R; r++) {
          float part[1] = {0.f};
#pragma unroll
          for (int j = 0; j < 4; j++) dot8<1>(pc[r], j, tb, [&](int, int i) { return xf[8 * j + i]; }, part);
          acc[r][0] = fmaf(part[0], a[r], acc[r][0]);
        }
      }
    }
  }
  for (int64_t p = (MR == 1 && lean) ? KV : threadIdx.x; p < KV; p += 128) {
    uint4 pc[R];
    float a[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int64_t want = row0 + (r >= H ? r - H : r);
      const int64_t row = want < N ? want : N - 1;  // rows past N: computed, never stored
      pc[r] = detail::ld_stream(reinterpret_cast<const uint4*>((r >= H ? qb : qa).codes) + row * KV + p);
      const int64_t e = row * K + p * 32;
      a[r] = absmax_as<DQ>(r >= H ? qb : qa, r >= H ? meanb : meana, slot_of(qa, lb >= 0 ? (e >> lb) : e / qa.block));
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
      for (int r = 0; r < R; r++) dot8<MR>(pc[r], j, tb, [&](int m, int i) { return xf[m][i]; }, part[r]);
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
  if (threadIdx.x < H * MR) {
    const int r = threadIdx.x / MR, m = threadIdx.x % MR;
    const int64_t row = row0 + r;
    if (row < N) {
      // slot s of job jb: its four warps' sums + bias + residual
      auto value = [&](int s, const Q4Job<T>& jb) {
        const float b = jb.bias ? (float)Num<T>::load(jb.bias[row]) : 0.f, rs = jb.res ? (float)Num<T>::load(jb.res[m * N + row]) : 0.f;
        return red[0][s * MR + m] + red[1][s * MR + m] + red[2][s * MR + m] + red[3][s * MR + m] + b + rs;
      };
      store_out(J, P, ji, m * N + row, value(r, J.j[ji]), P ? value(r + H, J.j[1]) : 0.f);
    }
  }
}

// ---------------------------------------------------------------- the persistent decode GEMV (M = 1)
//
// k_qgemv4p: the 4-bit GEMV at one row of x, for bf16/f16 (double quantization: DQ), with whole
// absmax blocks (a power of 2 ≥ 32) in each row of K ≤ q4p::KMAX. What it changes against k_qgemv4v (bench/qgemv2.cu, H100):
// - one block of 16 warps an SM for the whole launch, its 4 groups of 4 warps each walking chunks
//   of R = 8 output rows (paired: 4 of gate and the same 4 of up) with k_qgemv4v's access pattern —
//   thread t of a group takes 16-byte pieces t, t + 128, … of each row — so what a block sets up
//   is paid once an SM, not once per 8 rows;
// - a byte of codes (two weights) → the pair (code[lo], code[hi]) as f16x2 from a 256-entry table
//   replicated per lane (word b·64 + lane: a lane always in its own bank, and the byte_perm that
//   extracts the byte forms the whole address): one shared load per two weights instead of one
//   per weight, and one HFMA2 against x's pair. A piece's 16 products are summed in f16x2, then in
//   f32, × absmax in f32;
// - x staged once in shared memory as f16 pairs (16-byte chunks XOR-swizzled so that a quarter
//   warp's 8 chunks fall in 8 bank groups), each 32-value piece scaled by a power of 2 that keeps
//   its values ≤ 1024 in magnitude (exact; a piece's f16 sums then stay far from overflow), the
//   scale put back with the absmax;
// - optionally the RMSNorm that produced x (`gamma` non-null): the block computes it from the
//   norm's input as the norm kernel does (f64 sum of f32 squares, kiln_norm.h's roundings), so the
//   norm's own kernel does not run (emit.ts: the `_norm` calls);
// - the thread's next piece (of this chunk or its next) is loaded before the current one is
//   decoded, the first one before the set-up;
// - launched as a programmatic dependent (pdl, q4p_pdl_on): the first pieces and the table
//   before griddepcontrol.wait, x and every store after it; each launch lets the next kernel launch
//   at its start (bench/qchain.cu: a 7B step's 4-bit GEMVs 2122–2138 → 1945–1958 µs, H100).
// f16 products differ from k_qgemv4v's f32 ones by ≈ 1e-3 relative (rel L2 1.45e-3 on the 7B
// shapes): the bf16 output's own rounding is 2e-3.
namespace q4p {
constexpr int WG = 4, THREADS = WG * 128, R = 8, TAB = 65536, XC = 4;
constexpr int64_t KMAX = 8 * XC * THREADS;  // x chunks of 8 a thread held in registers while staged
static inline int smem_bytes(int64_t K) { return TAB + 2 * (int)K + (int)(K / 32) * 4 + WG * 2 * 4 * R * 4; }
}  // namespace q4p

__device__ __forceinline__ uint32_t f16x2_bits(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
// the R per-lane sums of a warp reduced over its lanes by halving exchanges: lane l ends with the
// whole sum of row q4p_row<R>(l) (R − 1 + 5 − log2 R shuffles instead of 5R)
template <int R>
__device__ __forceinline__ float warp_sum_rows(float (&v)[R], int lane) {
#pragma unroll
  for (int o = 16, n = R; n > 1; o >>= 1, n >>= 1) {
    const bool hi = lane & o;
#pragma unroll
    for (int i = 0; i < n / 2; i++) {
      const float send = hi ? v[i] : v[i + n / 2], keep = hi ? v[i + n / 2] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
  }
  constexpr int LOGR = R == 1 ? 0 : R == 2 ? 1 : R == 4 ? 2 : R == 8 ? 3 : 4;
#pragma unroll
  for (int o = 16 >> LOGR; o > 0; o >>= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
  return v[0];
}
template <int R>
__device__ __forceinline__ int q4p_row(int lane) {
  int r = 0;
#pragma unroll
  for (int s = 0, m = R >> 1; m > 0; s++, m >>= 1) r += ((lane >> (4 - s)) & 1) * m;
  return r;
}

// ROPE (P false): the jobs' rows in RoPE pairs and their epilogue RP's (quant::Q4Rope; D a power of 2
// ≥ 8 dividing every N): chunk c of a job holds rows h·D + 4k … + 3 and the same + D/2 (h = c / (D/8),
// k = c mod D/8), so the thread storing row n also holds row n ± D/2 of its head.
template <typename T, bool P, bool NORM, bool ROPE, bool DQ>
__global__ void __launch_bounds__(q4p::THREADS, 1) k_qgemv4p(const T* __restrict__ x, const T* __restrict__ gamma, float eps, const __grid_constant__ Q4Jobs<T> J,
                                                            Code16 code, int K, int lb, const __grid_constant__ quant::Q4Rope<T> RP, int pdl) {
  using namespace q4p;
  constexpr int H = P ? R / 2 : R;  // rows of a chunk a job
  extern __shared__ __align__(16) uint8_t sm[];
  uint4* xs = reinterpret_cast<uint4*>(sm + TAB);                // K / 8 chunks of 4 f16 pairs
  float* ps = reinterpret_cast<float*>(sm + TAB + 2 * K);         // a piece's scale
  float* red = ps + (K >> 5);                                     // [WG][2][4 warps][R]
  __shared__ float cs[16];
  __shared__ double ssq[THREADS / 32];
  const int tid = threadIdx.x, wg = tid >> 7, t = tid & 127, lane = tid & 31, w = t >> 5;
  const int KV = K >> 5, apr = K >> lb, csh = lb - 5;
  const int64_t C = J.first[J.n], cstep = (int64_t)gridDim.x * WG;
  const int ld = ROPE ? 31 - __clz((int)RP.D) : 0;  // log2 D
  // row of slot r (< H) of chunk cj of a job
  auto row_of = [&](int64_t cj, int r) -> int64_t {
    if constexpr (!ROPE) return cj * H + r;
    else return ((cj >> (ld - 3)) << ld) + ((cj & ((1 << (ld - 3)) - 1)) << 2) + (r & 3) + (r >= 4 ? (int64_t)1 << (ld - 1) : 0);
  };
  // piece p of chunk c's R rows (rows past N read row N − 1: computed, never stored), and the absmax
  // the piece needs in the tiled layout (kiln_quant.h tiles4: q4p_takes asks for it): a 4-row half
  // of the chunk (rows 4i … 4i + 3) has its 4 absmax side by side — one 16-byte load of f32 (DQ
  // false) or one 4-byte load of int8 codes and one f32 scale (DQ: the 4 share a group of 256),
  // combined with the job's mean where the piece is decoded, so the loads do not wait here. With
  // 8 scalar loads (and 8 scales) a piece in block order the double-quantized variants spilled:
  // bench/qchain.cu (H100), a 7B step's 4-bit GEMVs nf4+dq 2024–2037 → 1849–1856 µs, nf4 1799–1808
  // → 1787–1792.
  using AM = typename std::conditional<DQ, int, float>::type;
  // (without P or ROPE a chunk's 8 rows are one tile's: their 8 codes one 8-byte load, one scale)
  constexpr int NA = DQ ? 2 : R, NS = DQ && (P || ROPE) ? 2 : 1;
  auto load = [&](int64_t c, int p, uint4 (&pc)[R], AM (&a)[NA], float (&sc)[NS]) {
    // the chunk's job: only the fields the loads need, selected at compile-time indices
    const uint8_t* ca = J.j[0].q.codes;
    const float* aa = DQ ? J.j[0].q.ascale : J.j[0].q.absmax;
    const int8_t* ia = J.j[0].q.acode;
    int64_t N = J.j[0].N, f0 = 0;
    // one job, or the pair's shared chunks: job 0's fields with no search (a uniform branch that
    // skips ≈ 40 predicated constant loads and selects a piece; qchain: −21 µs a 7B nf4 step)
    if (!P && J.n > 1) {
      const int ji = job_of_chunk(J, c);
#pragma unroll
      for (int k = 1; k < 4; k++)
        if (ji == k) ca = J.j[k].q.codes, aa = DQ ? J.j[k].q.ascale : J.j[k].q.absmax, ia = J.j[k].q.acode, N = J.j[k].N, f0 = J.first[k];
    }
    const uint8_t* cb = P ? J.j[1].q.codes : ca;
    const float* ab = P ? (DQ ? J.j[1].q.ascale : J.j[1].q.absmax) : aa;
    const int8_t* ib = P ? J.j[1].q.acode : ia;
    // the tiled slot of block column p >> csh of row r
    auto slot = [&](int64_t r) { return quant::slot4_rj(r, p >> csh, apr); };
    // slot r's row is r0 + off(r) (off: r mod H, + D/2 from slot 4 on with ROPE); where the chunk's
    // last row is inside the job (all but a job's last chunk) the addresses are the first row's plus
    // off(r) rows, with no clamp: a few instructions a row instead of row_of, the clamp and a 64-bit
    // multiply each (bench/qchain.cu, H100: a 7B nf4 step's GEMVs 1947–1953 → 1803–1807 µs, the
    // same output bits)
    const int64_t cj = c - f0, r0 = row_of(cj, 0);
    const int64_t hi = ROPE ? (int64_t)1 << (ld - 1) : 0;
    if (r0 + hi + (ROPE ? 3 : H - 1) < N) {
      const uint4* wa = reinterpret_cast<const uint4*>(ca) + r0 * KV + p;
      const uint4* wb = reinterpret_cast<const uint4*>(cb) + r0 * KV + p;
#pragma unroll
      for (int r = 0; r < R; r++) {
        const int64_t off = ROPE ? (r & 3) + (r >= 4 ? hi : 0) : r % H;
        pc[r] = detail::ld_stream((r >= H ? wb : wa) + off * KV);
      }
      // the two halves' first slots (rows r0 and r0 + 4 / of up / r0 + D/2; r0 is a multiple of 4)
      const int64_t s0 = slot(r0), s1 = P ? s0 : ROPE ? slot(r0 + hi) : s0 + 4;
      if constexpr (DQ && !P && !ROPE) {
        const int2 u = __ldg(reinterpret_cast<const int2*>(ia + s0));
        a[0] = u.x, a[1] = u.y;
        sc[0] = __ldg(aa + (s0 >> 8));
      } else if constexpr (DQ) {
        a[0] = __ldg(reinterpret_cast<const int*>(ia + s0));
        a[1] = __ldg(reinterpret_cast<const int*>(ib + s1));
        sc[0] = __ldg(aa + (s0 >> 8));
        sc[NS - 1] = __ldg(ab + (s1 >> 8));
      } else {
        const float4 u = __ldg(reinterpret_cast<const float4*>(aa + s0)), v = __ldg(reinterpret_cast<const float4*>(ab + s1));
        a[0] = u.x, a[1] = u.y, a[2] = u.z, a[3] = u.w, a[4] = v.x, a[5] = v.y, a[6] = v.z, a[7] = v.w;
      }
      return;
    }
    // (a job's last chunk: rows past N read row N − 1; a half's 4 rows are all past N or none, as N
    // is a multiple of 8, so its 4 codes share one scale either way)
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int64_t row = min(row_of(c - f0, r >= H ? r - H : r), N - 1);
      pc[r] = detail::ld_stream(reinterpret_cast<const uint4*>(r >= H ? cb : ca) + row * KV + p);
      const int64_t b = slot(row);
      if constexpr (DQ) {
        const int v = (uint8_t)__ldg((r >= H ? ib : ia) + b);
        if ((r & 3) == 0) a[r >> 2] = v, sc[(r >> 2) % NS] = __ldg((r >= H ? ab : aa) + (b >> 8));
        else a[r >> 2] |= v << (8 * (r & 3));
      } else {
        a[r] = __ldg((r >= H ? ab : aa) + b);
      }
    }
  };
  // the next kernel may start its own launch now: its blocks take an SM as one of ours leaves it, and
  // read nothing of ours before their griddepcontrol.wait (programmatic dependent launch)
  detail::allow_dependents();
  // x (and the norm's weight) first: a few KB from L2 that must not queue behind the weights —
  // unless launched as a dependent (pdl), where x is the previous kernel's until its wait returns
  detail::Pack16<T> xr[XC], g[NORM ? XC : 1];
  auto load_x = [&]() {
#pragma unroll
    for (int u = 0; u < XC; u++) {
      const int qi = tid + u * THREADS;
      if (qi < K / 8) {
        xr[u].u = __ldg(reinterpret_cast<const uint4*>(x + 8 * qi));
        if (NORM) g[u].u = __ldg(reinterpret_cast<const uint4*>(gamma + 8 * qi));
      }
    }
  };
  if (!pdl) load_x();
  uint4 pc[R];
  AM a[NA];
  float sc[NS];
  int64_t c = (int64_t)blockIdx.x * WG + wg;
  if (c < C && t < KV) load(c, t, pc, a, sc);  // then the first pieces: they do not wait for the set-up
  if (tid < 16) cs[tid] = code.f[tid];
  __syncthreads();  // cs
  for (int i = tid; i < 256 * 8; i += THREADS) {  // the table, while x is on its way
    const int b = i >> 3;
    const uint32_t v = f16x2_bits(cs[b & 15], cs[b >> 4]);
    reinterpret_cast<uint4*>(sm)[b * 16 + (i & 7)] = make_uint4(v, v, v, v);
  }
  if (pdl) {
    // weights, codes and the table need nothing of the previous kernel; x (and every store) waits
    // for it to finish and its writes to be visible
    detail::wait_prior();
    load_x();
  }
  float f[XC][8];
  double s = 0;
#pragma unroll
  for (int u = 0; u < XC; u++) {
    const int qi = tid + u * THREADS;
    if (qi < K / 8)
#pragma unroll
      for (int e = 0; e < 8; e++) {
        f[u][e] = Num<T>::load(xr[u].t[e]);
        if (NORM) s += (double)mul_rn(f[u][e], f[u][e]);
      }
  }
  if (NORM) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) ssq[tid >> 5] = s;
    __syncthreads();  // ssq
  }
  float inv = 0.f;
  if (NORM) {
    double tot = 0;
#pragma unroll
    for (int i = 0; i < THREADS / 32; i++) tot += ssq[i];  // the warps in order: the same bits every run
    inv = norm_inv(tot, K, eps);
  }
#pragma unroll
  for (int u = 0; u < XC; u++) {
    const int qi = tid + u * THREADS;
    float m = 0.f;
    if (qi < K / 8) {
      if (NORM)
#pragma unroll
        for (int e = 0; e < 8; e++) f[u][e] = Num<T>::load(norm_out<T>(f[u][e], inv, g[NORM ? u : 0].t[e], nullptr));
#pragma unroll
      for (int e = 0; e < 8; e++) m = fmaxf(m, fabsf(f[u][e]));
    }
    // the piece (4 chunks: 4 neighbouring lanes) shares one scale
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    float up = 1.f;
    if (m > 1024.f && m <= 3.0e38f) {
      int e;
      frexpf(m, &e);
      up = ldexpf(1.f, e - 10);
    }
    const float dn = 1.f / up;
    if (qi < K / 8) {
      const int p = qi >> 2, j = qi & 3;
      if (j == 0) ps[p] = up;
      xs[4 * p + (j ^ ((p >> 1) & 3))] = make_uint4(f16x2_bits(f[u][0] * dn, f[u][1] * dn), f16x2_bits(f[u][2] * dn, f[u][3] * dn),
                                                    f16x2_bits(f[u][4] * dn, f[u][5] * dn), f16x2_bits(f[u][6] * dn, f[u][7] * dn));
    }
  }
  __syncthreads();  // table, xs, ps (the table's writers passed the barrier after cs: ordered by this one)
  const uint32_t lane4 = lane * 4;
  const char* tb = reinterpret_cast<const char*>(sm);
  for (int par = 0; c < C; c += cstep, par ^= 1) {
    const int ji = job_of_chunk(J, c);
    // DQ: the chunk's jobs' means (one a weight)
    float mean = 0.f, meanb = 0.f;
    if constexpr (DQ) {
      mean = __ldg(job_at(J, ji).q.mean);
      meanb = P ? __ldg(J.j[1].q.mean) : mean;
    }
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    for (int p = t; p < KV; p += 128) {
      uint4 cur[R];
      float ca[R];
#pragma unroll
      for (int r = 0; r < R; r++) {
        cur[r] = pc[r];
        if constexpr (DQ) ca[r] = absmax_dq(r >= H ? meanb : mean, (int)(int8_t)(a[r >> 2] >> (8 * (r & 3))), sc[(r >> 2) % NS]);
        else ca[r] = a[r];
      }
      const bool same = p + 128 < KV;
      const int64_t cn = same ? c : c + cstep;
      if (cn < C) load(cn, same ? p + 128 : t, pc, a, sc);
      uint32_t x2[16];
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const uint4 v = xs[4 * p + (j ^ ((p >> 1) & 3))];
        x2[4 * j] = v.x, x2[4 * j + 1] = v.y, x2[4 * j + 2] = v.z, x2[4 * j + 3] = v.w;
      }
      const float sp = ps[p];
#pragma unroll
      for (int r = 0; r < R; r++) {
        __half2 h = __floats2half2_rn(0.f, 0.f);
        const uint32_t wv[4] = {cur[r].x, cur[r].y, cur[r].z, cur[r].w};
#pragma unroll
        for (int k = 0; k < 16; k++) {
          const uint32_t tv = *reinterpret_cast<const uint32_t*>(tb + __byte_perm(wv[k >> 2], lane4, 0x5504 | ((k & 3) << 4)));
          h = __hfma2(*reinterpret_cast<const __half2*>(&tv), *reinterpret_cast<const __half2*>(&x2[k]), h);
        }
        const float2 f2 = __half22float2(h);
        acc[r] = fmaf(f2.x + f2.y, ca[r] * sp, acc[r]);
      }
    }
    const float v = warp_sum_rows<R>(acc, lane);
    float* rb = red + ((wg * 2 + par) * 4) * R;
    if ((lane & (32 / R - 1)) == 0) rb[w * R + q4p_row<R>(lane)] = v;
    asm volatile("bar.sync %0, 128;" ::"r"(wg + 1) : "memory");
    if (t < H) {
      const Q4Job<T> ja = job_at(J, ji);
      const int64_t row = row_of(c - J.first[ji], t);
      if (row < ja.N) {
        auto value = [&](int slot, const Q4Job<T>& jb, int64_t rw) {
          const float b = jb.bias ? (float)Num<T>::load(jb.bias[rw]) : 0.f, rs = jb.res ? (float)Num<T>::load(jb.res[rw]) : 0.f;
          return rb[slot] + rb[R + slot] + rb[2 * R + slot] + rb[3 * R + slot] + b + rs;
        };
        int mode = 0;
        if (ROPE) {
#pragma unroll
          for (int k = 0; k < 4; k++)
            if (ji == k) mode = RP.mode[k];
        }
        if (!ROPE || mode == 0) store_out(J, P, ji, row, value(t, ja, row), P ? value(t + H, J.j[1], row) : 0.f);
        else {
          const int64_t d = row & (RP.D - 1);
          T y = round_out<T>(value(t, ja, row));
          if (mode != 3) {
            const int64_t pr = row ^ (RP.D >> 1);  // the partner: slot t ^ 4
            y = rope_at<T>(y, round_out<T>(value(t ^ 4, ja, pr)), RP.cos[d], RP.sin[d], rope_sign<T>(RP, d));
          }
          rope_put<T>(RP, ji, row, y);
        }
      }
    }
  }
}

// the RMSNorm a decode GEMV may compute itself (emit.ts's `_norm` calls): its weight, eps, and
// where the norm's result goes when it runs on its own instead
template <typename T>
struct Q4Norm {
  const T* gamma;
  double eps;
  T* xn;
};
// where a call cannot compute the norm inside its GEMV: x (the norm's input when nrm is set)
// becomes the norm's result, run by the norm kernel, and nrm is spent
template <typename T>
static const T* unfuse(const T* x, const Q4Norm<T>*& nrm, int64_t M, int64_t K) {
  if (!nrm) return x;
  rms_norm<T>(x, nrm->gamma, nrm->xn, M, K, nrm->eps);
  x = nrm->xn;
  nrm = nullptr;
  return x;
}

// whether k_qgemv4p runs these jobs: M = 1, bf16/f16, whole absmax blocks of 2^lb ≥ 32 in a row,
// K ≤ KMAX, x (and gamma) 16-byte aligned, and either launched as a programmatic dependent
// (q4p_pdl_on) or with a norm or RoPE to compute: launched plainly and alone, the GEMV is no faster
// than k_qgemv4v (bench/qgemv2.cu, H100: 15.6 vs 14.6 µs on 11008 × 4096, 24.8 vs 25.4 on gate/up
// paired), so there it runs where it also saves a kernel. Double-quantized weights only as a
// dependent: launched plainly it was slower than k_qgemv4v + the norm kernel in the step
// (bench:quant at 7fc9f15: nf4 + dq 310.6 tokens/s against 324.9), as a dependent faster (2871 →
// 2781 µs a 7B step). KILN_Q4P=0 turns it off (an A/B switch).
static inline bool& q4p_switch() {
  static bool on = !(getenv("KILN_Q4P") && strcmp(getenv("KILN_Q4P"), "0") == 0);
  return on;
}
static inline bool& q4p_force() {  // also where there is no norm (KILN_Q4P=all; bench/qgemv2.cu's comparison)
  static bool on = getenv("KILN_Q4P") && strcmp(getenv("KILN_Q4P"), "all") == 0;
  return on;
}
// k_qgemv4p launched as a programmatic dependent of the kernel before it (compute capability ≥ 9.0;
// KILN_PDL=0: plain launches, an A/B switch). Then it runs every GEMV q4p_takes allows, with or
// without a norm: in a step of such launches each GEMV's set-up and first weight loads overlap the
// tail of the one before (bench/qchain.cu, H100, a 7B step's 4-bit GEMVs: 2122–2136 µs with o and
// down on k_qgemv4v and plain launches, 2187–2190 all on k_qgemv4p plainly, 1950 all as dependents).
static inline bool& q4p_pdl() { return detail::pdl_switch(); }
static inline bool q4p_pdl_on() { return detail::pdl_on(); }
template <typename T>
static bool q4p_takes(const T* x, const T* gamma, int64_t M, int64_t K, int64_t block, bool dq, int64_t rows, bool norm) {
  // double quantization: only as a programmatic dependent (launched plainly it was slower than
  // k_qgemv4v and the norm kernel: below) or where forced (KILN_Q4P=all: a test's plain launches)
  if (!(std::is_same<T, bf16>::value || std::is_same<T, f16>::value) || M != 1 || (dq && !q4p_pdl_on() && !q4p_force()) || !q4p_switch()) return false;
  const int lb = log2_exact(block);
  if (lb < 5 || K % block != 0 || K % 32 != 0 || K > q4p::KMAX || !detail::aligned16(x) || (gamma && !detail::aligned16(gamma))) return false;
  return (norm || q4p_force() || q4p_pdl_on()) && rows > 0;
}
// the jobs' rows can be RoPE pairs in k_qgemv4p's chunks (its ROPE epilogue): D a power of 2 ≥ 8
// dividing every N, and not the pair (gate/up) table
template <typename T>
static bool q4p_rope_ok(const Q4Jobs<T>& J, const quant::Q4Rope<T>& rp) {
  if (J.pair || rp.D < 8 || (rp.D & (rp.D - 1)) != 0) return false;
  for (int i = 0; i < J.n; i++)
    if (J.j[i].N % rp.D != 0) return false;
  return true;
}
template <typename T, bool P, bool NORM, bool ROPE, bool DQ>
static bool q4p_launch(const T* x, const Q4Norm<T>* nrm, const Q4Jobs<T>& J, const Code16& c, int64_t K, int lb, unsigned grid, cudaStream_t s,
                       const quant::Q4Rope<T>& rp) {
  static const bool ready = cudaFuncSetAttribute(k_qgemv4p<T, P, NORM, ROPE, DQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, q4p::smem_bytes(q4p::KMAX)) == cudaSuccess;
  if (!ready) {
    (void)cudaGetLastError();  // (not an error of the launch the caller makes instead: clear it)
    return false;
  }
  const T* gamma = NORM ? nrm->gamma : nullptr;
  const float eps = NORM ? (float)nrm->eps : 0.f;
  if (!q4p_pdl_on()) {
    k_qgemv4p<T, P, NORM, ROPE, DQ><<<grid, q4p::THREADS, q4p::smem_bytes(K), s>>>(x, gamma, eps, J, c, (int)K, lb, rp, 0);
    return true;
  }
  // programmatic dependent launch: this grid may start while the previous kernel finishes (its
  // set-up and first weight loads overlap that kernel's tail); the kernel waits before reading x
  detail::launch_dependent("qlinear4 (persistent GEMV)", k_qgemv4p<T, P, NORM, ROPE, DQ>, dim3(grid), dim3(q4p::THREADS), (size_t)q4p::smem_bytes(K), s, x, gamma, eps, J, c,
                           (int)K, lb, rp, 1);
  return true;
}
// J on k_qgemv4p (q4p_takes said yes): fills first[] with its chunks; false when it could not
// launch. rope (q4p_rope_ok): its epilogue RoPEs and writes the cache.
template <typename T>
static bool qgemv4p(const T* x, const Q4Norm<T>* nrm, Q4Jobs<T>& J, const Code16& c, int64_t K, int lb, cudaStream_t s, const quant::Q4Rope<T>* rope) {
  const int64_t chunks = q4_grid(J, J.pair ? q4p::R / 2 : q4p::R);
  const int64_t sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  const unsigned grid = (unsigned)std::min<int64_t>(sms, (chunks + q4p::WG - 1) / q4p::WG);
  const quant::Q4Rope<T> rp = rope ? *rope : quant::Q4Rope<T>{};
  auto go = [&](auto dq) {
    constexpr bool DQ = decltype(dq)::value;
    if (J.pair) return nrm ? q4p_launch<T, true, true, false, DQ>(x, nrm, J, c, K, lb, grid, s, rp) : q4p_launch<T, true, false, false, DQ>(x, nrm, J, c, K, lb, grid, s, rp);
    if (rope) return nrm ? q4p_launch<T, false, true, true, DQ>(x, nrm, J, c, K, lb, grid, s, rp) : q4p_launch<T, false, false, true, DQ>(x, nrm, J, c, K, lb, grid, s, rp);
    return nrm ? q4p_launch<T, false, true, false, DQ>(x, nrm, J, c, K, lb, grid, s, rp) : q4p_launch<T, false, false, false, DQ>(x, nrm, J, c, K, lb, grid, s, rp);
  };
  const bool ok = J.j[0].q.dq ? go(std::true_type()) : go(std::false_type());
  if (ok) detail::launched(rope ? "qlinear4 (persistent GEMV, RoPE and cache writes)" : "qlinear4 (persistent GEMV)");
  return ok;
}

// Q4Rope's epilogue where the GEMV could not run it (double quantization, f32, a split group, D not
// a power of 2): the linears' results y are in place; one launch RoPEs and writes them, element by
// element exactly as k_qgemv4p's epilogue (and the rotary op and cache_write kernels) would.
template <typename T>
struct RopeYs {
  const T* y[4];
  int64_t N[4];
  int n;
};
template <typename T>
__global__ void k_unrope(const __grid_constant__ RopeYs<T> Y, const __grid_constant__ quant::Q4Rope<T> RP, int64_t total) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t row = e;
    int i = 0;
    while (i + 1 < Y.n && row >= Y.N[i]) row -= Y.N[i++];
    rope_store<T>(RP, i, Y.y[i], row);
  }
}
template <typename T>
static void unrope(std::initializer_list<quant::Q4Linear<T>> ls, const quant::Q4Rope<T>& rp, cudaStream_t s) {
  RopeYs<T> Y = {};
  int64_t total = 0;
  for (const quant::Q4Linear<T>& l : ls) {
    if (Y.n == 4) rt::fail(KILN_ERR_INVALID, "qlinear4_group: RoPE over more than 4 linears");
    Y.y[Y.n] = l.y, Y.N[Y.n++] = l.N, total += l.N;
  }
  if (total <= 0) return;
  k_unrope<T><<<detail::grid_for(total, detail::kThreads), detail::kThreads, 0, s>>>(Y, rp, total);
  detail::launched("qlinear4 (RoPE and cache writes)");
}

// the line holding p on its way into L1 (a hint: no register waits for it)
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }
// 8 bytes of packed codes, past L1 (each weight is read once a forward)
__device__ __forceinline__ uint2 ld_stream8(const uint2* p) {
  uint2 r;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}

// The decode GEMV on the tensor cores, for bf16/f16 activations with K and block multiples of 64
// (the fast path; k_qgemv4v serves f32 and blocks of 32). At 2+ TB/s of packed bytes the GEMV
// must spend well under an instruction a weight, so the multiply-adds go to mma.sync m16n8k16
// (the M ≤ 8 rows of x are its n = 8 columns, unused ones zero) and decoding costs one byte_perm
// + shift and one shared load per TWO weights: a 256-entry table maps a byte of packed codes to
// the pair T(code[lo]), T(code[hi]) — already the mma's A register. The table is replicated 32
// times, word b·32 + lane, so a warp's 32 lookups hit 32 different banks whatever the bytes
// (32 KB). The absmax scales each 64-weight chunk's f32 partial sums once (a fresh accumulator
// per chunk), the double-quant absmax decoded once per (row, chunk). (The same split of decoding
// from tensor-core multiplication as Marlin, Frantar et al. 2024, "MARLIN: Mixed-Precision
// Auto-Regressive Parallel Inference on Large Language Models"; the code is ours.)
//
// A block computes 16 output features (rows g and g+8 of the mma tile, g = lane/4; paired: rows
// g of gate and g of up, 8 features of each); its W warps
// split K into 64-weight chunks, chunk kc to warp kc mod W, U chunks in flight a lane (8 bytes of
// each of its two rows a chunk), and add their partial sums in shared memory. The K order inside
// a chunk is permuted so that lane (g, t) loads 8 contiguous bytes: bytes 8t…8t+7 of a row's
// 32-byte chunk hold weights 16t…16t+15; step s of the 4 mma steps takes byte 2s as the k pair
// (2t, 2t+1) and byte 2s+1 as (2t+8, 2t+9), so its B registers are words 2s and 2s+1 of
// x[g][16t … 16t+15] — the same permutation for every row of the tile.
// (64 registers a thread: 32 warps an SM.)
template <typename T, int W, int MR>
__global__ void __launch_bounds__(W * 32, 1024 / (W * 32))
    k_qgemv4mma(const T* __restrict__ x, const __grid_constant__ Q4Jobs<T> J, Code16 code, int64_t K, int lb) {
  constexpr int U = 4;
  __shared__ __align__(16) uint32_t tab[256 * 32];
  __shared__ float red[W][16 * MR];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, ji = job_of(J);
  // tile rows 0…7 and 8…15: the job's rows row0… and row0 + 8…, or paired, rows row0… of gate and of up
  const int H = J.pair ? 8 : 16;
  const Q4 qa = J.j[ji].q, qb = J.j[J.pair ? 1 : ji].q;
  const int64_t N = J.j[ji].N, row0 = ((int64_t)blockIdx.x - J.first[ji]) * H, KC = K / 64;
  const int64_t ga = row0 + g, gb = row0 + g + (J.pair ? 0 : 8);
  const int64_t ra = ga < N ? ga : N - 1, rb = gb < N ? gb : N - 1;  // rows past N: computed, never stored
  const uint2* wa = reinterpret_cast<const uint2*>(qa.codes + ra * (K / 2)) + t;
  const uint2* wb = reinterpret_cast<const uint2*>(qb.codes + rb * (K / 2)) + t;
  const uint4* xp = reinterpret_cast<const uint4*>(x + (int64_t)(g < MR ? g : 0) * K) + 2 * t;
  const int64_t ca0 = ra * KC, cb0 = rb * KC;  // the rows' first chunks (the absmax block of chunk c: c·64 / block)
  const int lc = lb - 6;                         // block = 64·2^lc; negative: not a power of 2
  const float meana = qa.dq ? __ldg(qa.mean) : 0.f, meanb = qb.dq ? __ldg(qb.mean) : 0.f;
  // the absmax block of chunk c of the weight (gate and up share the block size)
  auto block_of = [&](int64_t c) { return lc >= 0 ? c >> lc : c / (qa.block / 64); };
  // codes of chunks kc0 + u·W of rows g, g + 8 into pa, pb; their absmax (or double-quant code and
  // scale) prefetched into L1, where absmax_of finds it without a second trip to memory
  uint2 pa[U], pb[U];
  auto load = [&](int64_t kc0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t kc = kc0 + u * W;
      pa[u] = pb[u] = make_uint2(0, 0);
      if (kc < KC) {
        pa[u] = ld_stream8(wa + 4 * kc);
        pb[u] = ld_stream8(wb + 4 * kc);
        if (t == 0) {
          const int64_t ba = slot_of(qa, block_of(ca0 + kc)), bb = slot_of(qb, block_of(cb0 + kc));
          if (qa.dq) {
            prefetch_l1(qa.acode + ba), prefetch_l1(qb.acode + bb), prefetch_l1(qa.ascale + (ba >> 8)), prefetch_l1(qb.ascale + (bb >> 8));
          } else {
            prefetch_l1(qa.absmax + ba), prefetch_l1(qb.absmax + bb);
          }
        }
      }
    }
  };
  load(wid);  // the first codes are on their way while the table is built
  for (int i = threadIdx.x; i < 256 * 8; i += W * 32) {
    const int b = i >> 3;
    const uint32_t v = fa2::Mma<T>::pack(code.f[b & 15], code.f[b >> 4]);
    reinterpret_cast<uint4*>(tab)[i] = make_uint4(v, v, v, v);
  }
  __syncthreads();
  const uint32_t* tl = tab + lane;  // this lane's copy: pair b at tl[32 b]
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t kc0 = wid; kc0 < KC; kc0 += U * W) {
    uint2 ca[U], cb[U];
#pragma unroll
    for (int u = 0; u < U; u++) ca[u] = pa[u], cb[u] = pb[u];
    load(kc0 + U * W);  // the next chunks in flight while these are computed
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t kc = kc0 + u * W;
      if (kc >= KC) break;  // the same for the whole warp
      const float sa = absmax_of(qa, meana, block_of(ca0 + kc)), sb = absmax_of(qb, meanb, block_of(cb0 + kc));
      uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
      if (g < MR) x0 = __ldg(xp + 8 * kc), x1 = __ldg(xp + 8 * kc + 1);
      const uint32_t xb[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
      float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int s = 0; s < 4; s++) {
        const uint32_t va = s < 2 ? ca[u].x : ca[u].y, vb = s < 2 ? cb[u].x : cb[u].y;  // 4 bytes of codes of rows g, g + 8
        const int k = 2 * (s & 1);
        const uint32_t a[4] = {tl[__byte_perm(va, 0, 0x4440 + k) << 5], tl[__byte_perm(vb, 0, 0x4440 + k) << 5], tl[__byte_perm(va, 0, 0x4441 + k) << 5],
                               tl[__byte_perm(vb, 0, 0x4441 + k) << 5]};
        fa2::Mma<T>::run(part, a, xb[2 * s], xb[2 * s + 1]);
      }
      acc[0] = fmaf(part[0], sa, acc[0]);
      acc[1] = fmaf(part[1], sa, acc[1]);
      acc[2] = fmaf(part[2], sb, acc[2]);
      acc[3] = fmaf(part[3], sb, acc[3]);
    }
  }
  // acc: rows g (0, 1) and g + 8 (2, 3) of the tile, rows 2t and 2t + 1 of x
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int r = g + 8 * (i >> 1), m = 2 * t + (i & 1);
    if (m < MR) red[wid][r * MR + m] = acc[i];
  }
  __syncthreads();
  if (threadIdx.x < H * MR) {
    const int r = threadIdx.x / MR, m = threadIdx.x % MR;
    const int64_t row = row0 + r;
    if (row < N) {
      // tile row s of job jb: bias + its W warps' sums + residual
      auto value = [&](int s, const Q4Job<T>& jb) {
        float v = jb.bias ? (float)Num<T>::load(jb.bias[row]) : 0.f;
#pragma unroll
        for (int w = 0; w < W; w++) v += red[w][s * MR + m];
        if (jb.res) v += (float)Num<T>::load(jb.res[m * N + row]);  // fuse-residual's add, rounded once with the rest
        return v;
      };
      store_out(J, J.pair, ji, m * N + row, value(r, J.j[ji]), J.pair ? value(r + 8, J.j[1]) : 0.f);
    }
  }
}

// Blocks of k_qgemv4mma<T, W, MR> resident on one SM (registers, the 32 KB table), asked once.
template <typename T, int W, int MR>
static int qgemv4mma_resident() {
  static const int r = [] {
    int b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, k_qgemv4mma<T, W, MR>, W * 32, 0) != cudaSuccess) {
      cudaGetLastError();  // not this launch's error: assume one block
      b = 1;
    }
    return b > 0 ? b : 1;
  }();
  return r;
}

// first[] of J for `rows` output features a block (paired: of gate and of up each); the grid
template <typename T>
static unsigned q4_grid(Q4Jobs<T>& J, int64_t rows) {
  int64_t b = 0;
  for (int i = 0; i < J.n; i++) {
    J.first[i] = b;
    if (!J.pair || i == 0) b += (J.j[i].N + rows - 1) / rows;
  }
  J.first[J.n] = b;
  if (b > 0x7fffffffLL) rt::fail(KILN_ERR_INVALID, "qlinear4: N = %lld is too large (%lld blocks)", (long long)J.j[0].N, (long long)b);
  return (unsigned)b;
}

// k_qgemv4mma with the most warps a block (K split the finest) that still lets every block of the
// launch (all its jobs) be resident at once — one wave, no tail — and at least 4 chunks of K a
// warp; else 4 warps a block. (W orders the f32 sums: a grouped launch with more tiles than one
// job's may pick a smaller W than that job alone, and then differs from it by that reassociation.)
template <typename T, int MR>
static void qgemv4mma(const T* x, Q4Jobs<T>& J, const Code16& c, int64_t K, int lb, cudaStream_t s) {
  const unsigned tiles = q4_grid(J, J.pair ? 8 : 16);
  const int64_t KC = K / 64, sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  if (KC >= 64 && tiles <= sms * qgemv4mma_resident<T, 16, MR>()) k_qgemv4mma<T, 16, MR><<<tiles, 512, 0, s>>>(x, J, c, K, lb);
  else if (KC >= 32 && tiles <= sms * qgemv4mma_resident<T, 8, MR>()) k_qgemv4mma<T, 8, MR><<<tiles, 256, 0, s>>>(x, J, c, K, lb);
  else k_qgemv4mma<T, 4, MR><<<tiles, 128, 0, s>>>(x, J, c, K, lb);
}

// Which decode GEMV runs a linear (M ≤ 8): the general kernel, the CUDA-core fast path, or the
// tensor cores. Linears sharing a launch must share the path (their numbers are then those of
// their own launches).
enum Q4Path { Q4_ANY, Q4_VEC, Q4_MMA };
template <typename T>
static Q4Path qgemv4_path(const T* x, const uint8_t* w, int64_t M, int64_t K, int64_t block) {
  const bool vec = K % 32 == 0 && block % 32 == 0 && detail::aligned16(x) && detail::aligned16(w);
  // the tensor-core GEMV from 3 rows: measured on the H100 (bench/qgemv.cu, 7B shapes, µs) it
  // takes 12–31 at every M ≤ 8, where k_qgemv4v takes 8–17 at M = 1, 10–21 at 2, 18–41 at 4 and
  // 42–107 at 8
  const bool mma = M >= 3 && vec && K % 64 == 0 && block % 64 == 0 && (std::is_same<T, bf16>::value || std::is_same<T, f16>::value);
  return mma ? Q4_MMA : vec ? Q4_VEC : Q4_ANY;
}

// One launch of the decode GEMV over J's jobs (1 ≤ M ≤ 8 rows of x), all by `path`; fills first[].
// nrm: x is the input of an RMSNorm whose result the jobs read — k_qgemv4p computes it (when
// q4p_takes), else the norm runs into nrm->xn first.
// rope: the jobs' RoPE epilogue (Q4Rope), run by k_qgemv4p where it can; returns whether it ran
// (else the caller runs it: unrope).
template <typename T>
static bool qgemv4(const T* x, Q4Jobs<T>& J, const Code16& c, int64_t M, int64_t K, int64_t block, Q4Path path, cudaStream_t s, const Q4Norm<T>* nrm = nullptr,
                   const quant::Q4Rope<T>* rope = nullptr) {
  const int lb = log2_exact(block);
  if constexpr (std::is_same<T, bf16>::value || std::is_same<T, f16>::value) {
    if (path == Q4_VEC) {
      int64_t rows = 0;
      bool tiled = true;  // k_qgemv4p reads the absmax in the tiled layout only (multiples of 8 rows)
      for (int i = 0; i < J.n; i++) rows += J.j[i].N, tiled = tiled && J.j[i].q.A != 0;
      // with a RoPE epilogue too: it saves the rotary and cache-write launch
      const bool rp = rope && q4p_rope_ok(J, *rope);
      if (tiled && q4p_takes(x, nrm ? nrm->gamma : nullptr, M, K, block, J.j[0].q.dq, rows, nrm != nullptr || rp) && qgemv4p<T>(x, nrm, J, c, K, lb, s, rp ? rope : nullptr))
        return rp;
    }
  }
  x = unfuse(x, nrm, M, K);
  with_rows(M, [&](auto rows) {
    constexpr int MR = decltype(rows)::value;
    // output features a block (registers: R·MR sums). M = 1: 8 rows, 4 blocks an SM — each piece
    // of x then serves 8 rows (its loads are as many L1 wavefronts as the codes' at 4 rows, and
    // the GEMV is bound by that pipe, not by HBM: bench/NOTES.md); 17 / 8 / 14 / 10 % faster than
    // 4 rows at 8 blocks an SM on the 7B shapes (bench/qgemv1.cu, H100)
    constexpr int R = MR == 1 ? 8 : MR <= 2 ? 4 : MR <= 4 ? 2 : 1;
    constexpr int RP = R < 2 ? 2 : R;                 // paired: R/2 features of gate and of up
    if constexpr (std::is_same<T, bf16>::value || std::is_same<T, f16>::value) {
      if (path == Q4_MMA) return qgemv4mma<T, MR>(x, J, c, K, lb, s);
    }
    // the jobs of a launch share double quantization (a group's key; one job alone trivially)
    const bool dq = J.j[0].q.dq;
    if (path == Q4_VEC && !J.pair) {
      const unsigned grid = q4_grid(J, R);
      if (dq) k_qgemv4v<T, MR, R, false, true><<<grid, 128, 0, s>>>(x, J, c, K, lb);
      else k_qgemv4v<T, MR, R, false, false><<<grid, 128, 0, s>>>(x, J, c, K, lb);
    } else if (path == Q4_VEC) {
      const unsigned grid = q4_grid(J, RP / 2);
      if (dq) k_qgemv4v<T, MR, RP, true, true><<<grid, 128, 0, s>>>(x, J, c, K, lb);
      else k_qgemv4v<T, MR, RP, true, false><<<grid, 128, 0, s>>>(x, J, c, K, lb);
    } else {
      const unsigned grid = q4_grid(J, 8);
      k_qgemv4<T, MR><<<grid, 256, 0, s>>>(x, J, c, K);
    }
  });
  detail::launched("qlinear4 (GEMV)");
  return false;
}

// silu(g)·u elementwise (the paired linears' prefill)
template <typename T>
__global__ void k_silu_mul(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) y[i] = silu_mul<T>(g[i], u[i]);
}

// The dequantized weight in T, as the cpu twin computes it: T(f32(code[c] · absmax)), the product in f64.
template <typename T>
__global__ void k_dequant4(Q4 q, Code16 code, T* __restrict__ out, int64_t n) {
  const float mean = q.dq ? __ldg(q.mean) : 0.f;
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

// k_dequant4 for n and block multiples of 32 and 16-byte aligned codes and output: the same values
// (code · absmax in f64, rounded to f32, then to T), a thread taking 4 bytes of codes (8 weights of
// one absmax block) a step, so that a warp's loads read 128 contiguous bytes and its 16-byte stores
// write 512: ≈ 2.5 TB/s of bytes moved on the 7B shapes. k_dequant4 takes a byte a thread and
// divides a 64-bit index by the block for each weight: ≈ 4.6× slower. Measured and not kept
// (bench/NOTES.md): 4 words a thread a step (strided by the grid: 2.0–2.2 TB/s), 16 bytes of codes
// a thread (its 16-byte stores land 64 bytes apart: 1.6–2× slower). lw = log2(words a block), or -1.
template <typename T>
__global__ void __launch_bounds__(256) k_dequant4w(Q4 q, Code16 code, T* __restrict__ out, int64_t words, int lw) {
  __shared__ double cd[16];
  if (threadIdx.x < 16) cd[threadIdx.x] = code.d[threadIdx.x];
  __syncthreads();
  const float mean = q.dq ? __ldg(q.mean) : 0.f;
  const int64_t wpb = q.block / 8;  // words an absmax block
  constexpr int PER = 16 / sizeof(T);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t c = __ldg(reinterpret_cast<const uint32_t*>(q.codes) + i);
    const double a = (double)absmax_of(q, mean, lw >= 0 ? i >> lw : i / wpb);
    uint4* o = reinterpret_cast<uint4*>(out + i * 8);
#pragma unroll
    for (int s = 0; s < 8 / PER; s++) {
      T v[PER];
#pragma unroll
      for (int e = 0; e < PER; e++) {
        const int k = PER * s + e;  // weight k of the word: low nibble of byte k/2 when k is even
        v[e] = Num<T>::store((typename Num<T>::C)__double2float_rn(__dmul_rn(cd[(c >> (4 * k)) & 15u], a)));
      }
      uint4 w;
      memcpy(&w, v, 16);
      o[s] = w;
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

// absmax[b] into its storage slot (kiln_quant.h slot4; A = 0: block order)
__global__ void k_absmax_place(const float* __restrict__ absmax, int64_t nb, int64_t A, float* __restrict__ out) {
  for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += (int64_t)gridDim.x * blockDim.x) out[quant::slot4(b, A)] = absmax[b];
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

// One round of the ordered outlier list (one block of 1024; every thread calls it): this thread's
// flags f of columns k … k + 3 are appended at their place in column order — a warp scan of the
// per-thread counts, the warps' totals in shared memory — and base grows by the round's count.
__device__ __forceinline__ void list_round(const int (&f)[4], int64_t k, int* warp_n, int& base, int* __restrict__ list) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  const int c = (f[0] != 0) + (f[1] != 0) + (f[2] != 0) + (f[3] != 0);
  int incl = c;  // inclusive scan over the warp
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_n[wid] = incl;
  __syncthreads();
  int at = base + incl - c;
  for (int i = 0; i < wid; i++) at += warp_n[i];
#pragma unroll
  for (int e = 0; e < 4; e++)
    if (f[e]) list[at++] = (int)(k + e);
  __syncthreads();
  if (threadIdx.x == 0)
    for (int i = 0; i < 32; i++) base += warp_n[i];
  __syncthreads();
}

// Decode's activation side in one launch (one block of 1024; M ≤ 8 rows of x): the outlier flags
// (|x| > threshold in any row; none when !decomp), their ordered list and count, and the rows'
// int8 (absmax over the unflagged columns, sx = absmax/127, codes 0 at flagged columns and from
// K up to Kp) — 4 consecutive columns a thread, 4096 a round (the list's scan once a round).
template <typename T>
__global__ void __launch_bounds__(1024) k_i8_list(const T* __restrict__ x, int small_m, bool decomp, float threshold, int* __restrict__ flags, int64_t K,
                                                  int* __restrict__ list, int* __restrict__ count, int64_t Kp, int8_t* __restrict__ q, float* __restrict__ sx) {
  __shared__ int warp_n[32];
  __shared__ int base;
  if (threadIdx.x == 0) base = 0;
  __syncthreads();
  for (int64_t k0 = 0; k0 < K; k0 += 4 * 1024) {
    const int64_t k = k0 + 4 * threadIdx.x;
    int f[4] = {0, 0, 0, 0};
#pragma unroll
    for (int e = 0; e < 4; e++) {
      if (k + e >= K) continue;
      if (decomp)
        for (int m = 0; m < small_m; m++) f[e] |= fabsf((float)Num<T>::load(x[m * K + k + e])) > threshold;
      flags[k + e] = f[e];
    }
    list_round(f, k, warp_n, base, list);
  }
  if (threadIdx.x == 0) *count = base;
  for (int m = 0; m < small_m; m++) {  // flags[k] was written by this thread (k = k0 + 4·threadIdx.x + e)
    const T* xr = x + (int64_t)m * K;
    float mx = 0.f;
    for (int64_t k = 4 * threadIdx.x; k < K; k += 4 * 1024)
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (k + e < K && !flags[k + e]) mx = fmaxf(mx, fabsf((float)Num<T>::load(xr[k + e])));
    mx = block_max(mx);
    if (threadIdx.x == 0) sx[m] = mx / 127.f;
    int8_t* qr = q + (int64_t)m * Kp;
    for (int64_t k = 4 * threadIdx.x; k < Kp; k += 4 * 1024) {
      uint32_t w = 0;
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float v = 0.f;
        if (k + e < K && mx > 0.f && !flags[k + e]) v = floorf(__fadd_rn(__fmul_rn(__fdiv_rn((float)Num<T>::load(xr[k + e]), mx), 127.f), 0.5f));
        w |= (uint32_t)(uint8_t)(int8_t)v << (8 * e);
      }
      *reinterpret_cast<uint32_t*>(qr + k) = w;  // Kp and k multiples of 4 (Kp of 16), q 16-byte aligned
    }
  }
}

// The ordered list of the flagged (outlier) columns and its length at prefill, after
// k_i8_quant_rows (one block of 1024): a thread reads 4 flags at a time (16 bytes; flags is
// 16-byte aligned), a block-wide scan of the per-thread counts orders them — 4096 columns a round.
__global__ void __launch_bounds__(1024) k_i8_list4(const int* __restrict__ flags, int64_t K, int* __restrict__ list, int* __restrict__ count) {
  __shared__ int warp_n[32];
  __shared__ int base;
  if (threadIdx.x == 0) base = 0;
  __syncthreads();
  for (int64_t k0 = 0; k0 < K; k0 += 4 * 1024) {
    const int64_t k = k0 + 4 * threadIdx.x;
    int f[4];
    if (k + 3 < K) {
      const int4 v = __ldg(reinterpret_cast<const int4*>(flags + k));
      f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
    } else {
#pragma unroll
      for (int e = 0; e < 4; e++) f[e] = k + e < K ? flags[k + e] : 0;
    }
    list_round(f, k, warp_n, base, list);
  }
  if (threadIdx.x == 0) *count = base;
}

// x[m, k] as the 16-bit operand of the outlier product: its own bits (16-bit T), or bf16 hi + lo (f32).
template <typename T> struct Split {
  typedef T U;
  __device__ static __forceinline__ void run(T v, uint16_t& hi, uint16_t&) { hi = v.bits; }
};
template <> struct Split<float> {
  typedef bf16 U;
  __device__ static __forceinline__ void run(float v, uint16_t& hi, uint16_t& lo) {
    hi = Num<bf16>::store(v).bits;
    const float r = v - Num<bf16>::load(Num<bf16>::store(v));
    lo = isfinite(r) ? Num<bf16>::store(r).bits : 0;
  }
};

// A row of x, E elements at a time (VEC: 16-byte loads, K a multiple of E = 16/sizeof(T), x 16-byte
// aligned; else one): the block's absmax over the elements that skip(k, |x|) keeps, and the codes
// floor(x/absmax·127 + 0.5) (0 where skipped, past K up to Kp), as the cpu twin rounds them.
template <typename T, bool VEC>
struct Row {
  static constexpr int E = VEC ? detail::Vec<T>::E : 1;
  __device__ static __forceinline__ void load(const T* xr, int64_t i, float* f) {
    if (VEC) detail::Vec<T>::unpack(__ldg(reinterpret_cast<const uint4*>(xr) + i), f);
    else f[0] = (float)Num<T>::load(xr[i]);
  }
  template <typename S>
  __device__ static float absmax(const T* xr, int64_t K, S skip) {
    float mx = 0.f;
    for (int64_t i = threadIdx.x; i < K / E; i += blockDim.x) {
      float f[E];
      load(xr, i, f);
#pragma unroll
      for (int e = 0; e < E; e++)
        if (!skip(i * E + e, fabsf(f[e]))) mx = fmaxf(mx, fabsf(f[e]));
    }
    return block_max(mx);
  }
  // the codes of the E elements f of chunk i into qr (one 8-, 4- or 1-byte store)
  template <typename S>
  __device__ static __forceinline__ void code(const float* f, int64_t i, float mx, S skip, int8_t* qr) {
    uint32_t w[(E + 3) / 4] = {};
#pragma unroll
    for (int e = 0; e < E; e++) {
      float v = 0.f;
      if (mx > 0.f && !skip(i * E + e, fabsf(f[e]))) v = floorf(__fadd_rn(__fmul_rn(__fdiv_rn(f[e], mx), 127.f), 0.5f));
      w[e >> 2] |= (uint32_t)(uint8_t)(int8_t)v << (8 * (e & 3));
    }
    if (E == 8) *reinterpret_cast<uint2*>(qr + i * 8) = make_uint2(w[0], w[(E + 3) / 4 - 1]);
    else if (E == 4) *reinterpret_cast<uint32_t*>(qr + i * 4) = w[0];
    else qr[i] = (int8_t)w[0];
  }
  template <typename S>
  __device__ static void codes(const T* xr, int64_t K, int64_t Kp, float mx, S skip, int8_t* qr) {
    for (int64_t i = threadIdx.x; i < K / E; i += blockDim.x) {
      float f[E];
      load(xr, i, f);
      code(f, i, mx, skip, qr);
    }
    pad(K, Kp, qr);
  }
  // zero codes from K up to Kp
  __device__ static __forceinline__ void pad(int64_t K, int64_t Kp, int8_t* qr) {
    for (int64_t k = K + threadIdx.x; k < Kp; k += blockDim.x) qr[k] = 0;
  }
};

// The rows' int8 at prefill, one block a row, in one read of x (plus one from L1): absmax over the
// row's elements with |x| ≤ threshold, sx[m] = absmax/127, the codes (0 where |x| > threshold);
// every column where |x| > threshold gets flags[k] = 1 (zeroed before; racing stores all write 1;
// threshold ∞ without the decomposition). The paper's absmax is over the columns that no row
// flags: that differs only where another row flagged this row's largest column, and
// k_i8_fix_rows then repairs the row (and zeroes the codes of every flagged column).
// RC > 0 (VEC): the row, at most RC·256 16-byte chunks, stays in registers: its loads are all
// issued before the first is used, and x is read once (i8_quant_rows picks RC and the block size).
template <typename T, bool VEC, int RC>
__global__ void __launch_bounds__(1024) k_i8_quant_rows(const T* __restrict__ x, int64_t K, int64_t Kp, float threshold, int* __restrict__ flags,
                                                       int8_t* __restrict__ q, float* __restrict__ sx) {
  const int64_t m = blockIdx.x;
  const T* xr = x + m * K;
  typedef Row<T, VEC> R;
  const int64_t KE = K / R::E;
  if (VEC && RC > 0 && KE <= RC * (int64_t)blockDim.x) {
    uint4 v[RC > 0 ? RC : 1];
#pragma unroll
    for (int u = 0; u < RC; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      v[u] = i < KE ? __ldg(reinterpret_cast<const uint4*>(xr) + i) : make_uint4(0, 0, 0, 0);
    }
    float mx = 0.f;
#pragma unroll
    for (int u = 0; u < RC; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      float f[detail::Vec<T>::E];
      detail::Vec<T>::unpack(v[u], f);
#pragma unroll
      for (int e = 0; e < detail::Vec<T>::E; e++) {
        const float a = fabsf(f[e]);
        if (i >= KE) continue;
        if (a > threshold) flags[i * detail::Vec<T>::E + e] = 1;
        else mx = fmaxf(mx, a);
      }
    }
    mx = block_max(mx);
    if (threadIdx.x == 0) sx[m] = __fdiv_rn(mx, 127.f);
    int8_t* qr = q + m * Kp;
#pragma unroll
    for (int u = 0; u < RC; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      if (i >= KE) continue;
      float f[detail::Vec<T>::E];
      detail::Vec<T>::unpack(v[u], f);
      R::code(f, i, mx, [&](int64_t, float a) { return a > threshold; }, qr);
    }
    R::pad(K, Kp, qr);
    return;
  }
  const float mx = R::absmax(xr, K, [&](int64_t k, float a) {
    if (!(a > threshold)) return false;
    flags[k] = 1;
    return true;
  });
  if (threadIdx.x == 0) sx[m] = __fdiv_rn(mx, 127.f);
  R::codes(xr, K, Kp, mx, [&](int64_t, float a) { return a > threshold; }, q + m * Kp);
}

// After k_i8_quant_rows and the list (one block a row): the listed (outlier) columns of the row are
// gathered, as 16-bit operands, into xo[m, j] (row stride Cp; for f32 x the lo parts M·Cp further;
// zero from cnt up to a multiple of 64); their codes become 0; a row whose absmax was at a column
// that another row flagged (a listed column with |x| ≤ threshold and |x|/127 ≥ sx) is quantized
// again over the unflagged columns, as the cpu twin does.
template <typename T, bool VEC>
__global__ void __launch_bounds__(1024) k_i8_fix_rows(const T* __restrict__ x, int64_t M, int64_t K, int64_t Kp, float threshold, const int* __restrict__ flags,
                                                     const int* __restrict__ list, const int* __restrict__ count, int8_t* __restrict__ q,
                                                     float* __restrict__ sx, uint16_t* __restrict__ xo, int64_t Cp) {
  const int cnt = *count;
  if (cnt == 0) return;
  const int64_t m = blockIdx.x;
  const T* xr = x + m * K;
  int8_t* qr = q + m * Kp;
  const float s = sx[m];
  bool redo = false;
  for (int j = threadIdx.x; j < (cnt + 63) / 64 * 64; j += blockDim.x) {
    uint16_t hi = 0, lo = 0;
    if (j < cnt) {
      const T v = xr[list[j]];
      const float a = fabsf((float)Num<T>::load(v));
      redo |= s > 0.f && a <= threshold && __fdiv_rn(a, 127.f) >= s;
      Split<T>::run(v, hi, lo);
    }
    xo[m * Cp + j] = hi;
    if (std::is_same<T, float>::value) xo[(M + m) * Cp + j] = lo;
  }
  if (!__syncthreads_or(redo)) {
    for (int j = threadIdx.x; j < cnt; j += blockDim.x) qr[list[j]] = 0;
    return;
  }
  auto flagged = [&](int64_t k, float) { return flags[k] != 0; };
  const float mx = Row<T, VEC>::absmax(xr, K, flagged);
  if (threadIdx.x == 0) sx[m] = __fdiv_rn(mx, 127.f);
  Row<T, VEC>::codes(xr, K, Kp, mx, flagged, qr);
}

// The listed (outlier) columns of the weight codes as dense 16-bit operands of the outlier
// product, once a call: wo[n, j] = code(n, list[j]) for j < cnt, zero up to a multiple of 64 (a
// warp a weight row); the blocks of the product then load them as tiles by cp.async.
template <typename T>
__global__ void __launch_bounds__(256) k_i8_gather_w(const int8_t* __restrict__ qw, int64_t N, int64_t K, const int* __restrict__ list,
                                                     const int* __restrict__ count, uint16_t* __restrict__ wo, int64_t Cp) {
  typedef typename Split<T>::U U;
  const int cnt = *count;
  const int64_t n = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  if (cnt == 0 || n >= N) return;
  for (int j = threadIdx.x & 31; j < (cnt + 63) / 64 * 64; j += 32)
    wo[n * Cp + j] = j < cnt ? Num<U>::store((float)qw[n * K + __ldg(list + j)]).bits : (uint16_t)0;
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
                                                const int* __restrict__ count, const T* __restrict__ bias, const T* __restrict__ res, T* __restrict__ y,
                                                int64_t N, int64_t K) {
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
    if (lane == 0)
      y[m * N + row] = Num<T>::store((typename Num<T>::C)((float)a * sx[m] * swf + o * swf + b + (res ? (float)Num<T>::load(res[m * N + row]) : 0.f)));
  }
}

// int8 GEMM of last resort (no cuBLASLt algorithm and K not a multiple of 16, so no i8::k_gemm):
// acc[m, n] = Σ_k qx[m, k] · qw[n, k] (ld N), 64×64 tiles, 32-deep k-steps, dp4a on 4×4 outputs a thread.
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

// ---------------------------------------------------------------- LLM.int8 prefill on the tensor cores
//
// The paper's matrix multiplication (LLM.int8, Dettmers et al., 2022, §3.2: "vector-wise
// quantization" plus the "mixed-precision decomposition") on tiles of 128 rows of x × 128 output
// features, 8 warps as 2 × 4 warp tiles of 64 × 32:
//   1. the int8 products, Σ_k qx[m, k] · qw[n, k] in int32: either computed here (k_gemm) by
//      mma.sync m16n8k32 s8 from a 3-stage cp.async pipeline of 128-byte k-slices (K a multiple
//      of 16), or read from the int32 matrix that cuBLASLt's integer GEMM wrote (k_epi);
//   2. f = acc · sx[m] (the activation row's scale), in f32;
//   3. the outlier feature dimensions as the paper does them: the cnt listed columns of x and of
//      the weight (each made a dense 16-bit matrix once a call, by k_i8_fix_rows and
//      k_i8_gather_w), 64 columns at a time, multiplied on the tensor cores (mma m16n8k16, f32
//      accumulation; add_outliers): x in its own 16-bit type (exact), f32 x as a bf16 pair hi +
//      lo (error ≈ 2⁻¹⁷ relative), the int8 weight codes exactly (|code| ≤ 127 is exact in bf16
//      and f16);
//   4. y = f · sw[n] + bias[n] — the cpu twin's acc·sx·sw + (Σ x·code)·sw + b up to f32 rounding.
// Shared tiles are rows of 128 bytes (a k-slice: 128 int8 codes or 64 16-bit values) whose eight
// 16-byte chunks are XOR-swizzled by row % 8, so that an ldmatrix of 8 rows reads 8 distinct bank
// groups; an int8 k32 step and a 16-bit k16 step are the same 32 bytes of a row, so both use the
// same fragment loads. Blocks walk the rows of x fastest: the blocks resident together share
// weight tiles, and x (the smaller operand at prefill) stays in L2.
namespace i8 {
constexpr int BM = 128, BN = 128, BK = 128, STAGES = 3, THREADS = 256;
constexpr int TILE = BM * BK;  // bytes of one operand tile (BM == BN)
constexpr int STEPS = BK / 32;  // 32-byte k-steps of a slice
__device__ __forceinline__ int off(int r, int c) { return r * BK + ((c ^ (r & 7)) << 4); }

__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One 32-byte k-step (s < STEPS of a slice) of the warp's 4 × 4 m16n8 tiles: fragments of A
// (rows wm·64…) and B (rows wn·32…) by ldmatrix, then mma(i, j, a, b0, b1) on each tile.
template <typename F>
__device__ __forceinline__ void warp_step(uint32_t sa, uint32_t sb, int s, int wm, int wn, int lane, F mma) {
  uint32_t a[4][4], b[2][4];
#pragma unroll
  for (int i = 0; i < 4; i++) fa2::ldsm_x4(a[i], sa + off(wm * 64 + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * s + (lane >> 4)));
#pragma unroll
  for (int p = 0; p < 2; p++) fa2::ldsm_x4(b[p], sb + off(wn * 32 + p * 16 + (lane & 7) + (lane >> 4) * 8, 2 * s + ((lane >> 3) & 1)));
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) mma(i, j, a[i], b[j >> 1][(j & 1) * 2], b[j >> 1][(j & 1) * 2 + 1]);
}

// a warp's 4 × 4 m16n8 accumulator fragments, zeroed
template <typename A>
__device__ __forceinline__ void zero(A (&f)[4][4][4]) {
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) f[i][j][e] = 0;
}

// The outlier feature dimensions (LLM.int8 §3.2's 16-bit part) of the block's 128 × 128 tile, added
// to the warp's fragments f[i][j][e] (the layout of warp_step's mma): the cnt listed columns of x
// from the dense 16-bit xo (k_i8_fix_rows gathered them; f32 x: hi, then the lo parts M·Cp
// further) and of the weight codes from the dense 16-bit wo (k_i8_gather_w), BK / 2 columns a
// round by cp.async, multiplied by mma m16n8k16 with f32 accumulation. smem: (f32 x ? 3 : 2) · TILE
// bytes, free on entry and on return.
template <typename T>
__device__ __forceinline__ void add_outliers(float (&f)[4][4][4], uint8_t* smem, int cnt, const uint16_t* __restrict__ xo, const uint16_t* __restrict__ wo,
                                             int64_t Cp, int64_t M, int64_t m0, int64_t n0, int64_t n_end, int wm, int wn, int lane) {
  typedef typename Split<T>::U U;
  constexpr bool LO = std::is_same<T, float>::value;
  static_assert(BM == BN, "the x and weight tiles of a round share their loads");
  const uint32_t s0 = fa2::smem_u32(smem);
  constexpr int JS = BK / 2;  // columns a round
  for (int j0 = 0; j0 < cnt; j0 += JS) {
#pragma unroll 1
    for (int h = 0; h < TILE / 16 / THREADS; h++) {  // (not unrolled: k_gemm's registers are its accumulators')
      const int idx = threadIdx.x + h * THREADS, r = idx / (BK / 16), ch = idx % (BK / 16);
      const bool p = m0 + r < M, pw = n0 + r < n_end;
      const uint16_t* src = xo + (p ? m0 + r : 0) * Cp + j0 + ch * 8;
      fa2::cp_async16(s0 + off(r, ch), src, p);
      fa2::cp_async16(s0 + TILE + off(r, ch), wo + (pw ? n0 + r : 0) * Cp + j0 + ch * 8, pw);
      if (LO) fa2::cp_async16(s0 + 2 * TILE + off(r, ch), src + M * Cp, p);
    }
    fa2::cp_async_commit();
    fa2::cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int s = 0; s < STEPS; s++) {
      warp_step(s0, s0 + TILE, s, wm, wn, lane, [&](int i, int j, const uint32_t(&a)[4], uint32_t b0, uint32_t b1) { fa2::Mma<U>::run(f[i][j], a, b0, b1); });
      if (LO)
        warp_step(s0 + 2 * TILE, s0 + TILE, s, wm, wn, lane,
                  [&](int i, int j, const uint32_t(&a)[4], uint32_t b0, uint32_t b1) { fa2::Mma<U>::run(f[i][j], a, b0, b1); });
    }
    __syncthreads();
  }
}

// Shared memory of k_gemm: the pipeline (the outlier tiles fit in it).
constexpr int gemm_smem() { return STAGES * 2 * TILE; }

// y[m, n] = (Σ_k qx[m, k] · qw[n, k] · sx[m] + outliers) · sw[n] + bias[n] (+ res[m, n]), all in one kernel (K a
// multiple of 16, 16-byte aligned codes): the int8 products by mma.sync m16n8k32 s8 from a 3-stage
// cp.async pipeline of 128-byte k-slices. Grid: x over 128 rows, y over 128 features.
template <typename T>
__global__ void __launch_bounds__(THREADS, 2) k_gemm(const int8_t* __restrict__ qx, int64_t Kp, const int8_t* __restrict__ qw, const float* __restrict__ sx,
                                                  const double* __restrict__ sw, const int* __restrict__ count, const uint16_t* __restrict__ xo,
                                                  const uint16_t* __restrict__ wo, int64_t Cp, const T* __restrict__ bias, const T* __restrict__ res,
                                                  T* __restrict__ y, int64_t M, int64_t N, int64_t K) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t s0 = fa2::smem_u32(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3, g = lane >> 2, tg = lane & 3;
  const int64_t m0 = (int64_t)blockIdx.x * BM, n0 = (int64_t)blockIdx.y * BN;
  float f[4][4][4];  // [m16 tile][n8 tile][c0…c3]: rows g, g, g+8, g+8; columns 2tg, 2tg+1, 2tg, 2tg+1
  {
    int c[4][4][4];
zero(c);
    const int64_t nk = (Kp + BK - 1) / BK;
    auto load = [&](int64_t kt) {  // the k-slice kt of both tiles into its stage, zero past the edges
      const uint32_t sa = s0 + (uint32_t)(kt % STAGES) * 2 * TILE, sb = sa + TILE;
#pragma unroll
      for (int h = 0; h < TILE / 16 / THREADS; h++) {
        const int idx = threadIdx.x + h * THREADS, r = idx / (BK / 16), ch = idx % (BK / 16);
        const int64_t k = kt * BK + ch * 16;
        const bool pa = m0 + r < M && k < Kp, pb = n0 + r < N && k < K;
        fa2::cp_async16(sa + off(r, ch), pa ? qx + (m0 + r) * Kp + k : qx, pa);
        fa2::cp_async16(sb + off(r, ch), pb ? qw + (n0 + r) * K + k : qw, pb);
      }
    };
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
      if (st < nk) load(st);
      fa2::cp_async_commit();
    }
    for (int64_t kt = 0; kt < nk; kt++) {
      fa2::cp_async_wait<STAGES - 2>();
      __syncthreads();  // slice kt is in; every warp is done with the stage the next load overwrites
      if (kt + STAGES - 1 < nk) load(kt + STAGES - 1);
      fa2::cp_async_commit();
      const uint32_t sa = s0 + (uint32_t)(kt % STAGES) * 2 * TILE;
#pragma unroll
      for (int s = 0; s < STEPS; s++)
        warp_step(sa, sa + TILE, s, wm, wn, lane, [&](int i, int j, const uint32_t(&a)[4], uint32_t b0, uint32_t b1) { mma_s8(c[i][j], a, b0, b1); });
    }
    fa2::cp_async_wait<0>();
    __syncthreads();  // the tiles are free for the outlier part
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int64_t r = m0 + wm * 64 + i * 16 + g;
      const float s_lo = r < M ? sx[r] : 0.f, s_hi = r + 8 < M ? sx[r + 8] : 0.f;
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) f[i][j][e] = (float)c[i][j][e] * (e < 2 ? s_lo : s_hi);
    }
  }
  add_outliers<T>(f, smem, *count, xo, wo, Cp, M, m0, n0, N, wm, wn, lane);
  // y = f · sw[n] + bias[n] (+ res[m, n])
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int64_t n = n0 + wn * 32 + j * 8 + tg * 2;
    float swn[2], bn[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
      swn[e] = n + e < N ? (float)sw[n + e] : 0.f;
      bn[e] = bias && n + e < N ? (float)Num<T>::load(bias[n + e]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int64_t r = m0 + wm * 64 + i * 16 + g + 8 * h;
        if (r >= M) continue;
        T* yp = y + r * N + n;
        const float r0 = res && n < N ? (float)Num<T>::load(res[r * N + n]) : 0.f, r1 = res && n + 1 < N ? (float)Num<T>::load(res[r * N + n + 1]) : 0.f;
        const T v0 = Num<T>::store((typename Num<T>::C)(f[i][j][2 * h] * swn[0] + bn[0] + r0));
        const T v1 = Num<T>::store((typename Num<T>::C)(f[i][j][2 * h + 1] * swn[1] + bn[1] + r1));
        if (sizeof(T) == 2 && n + 1 < N && (N & 1) == 0 && ((uintptr_t)y & 3) == 0) {  // both in one 4-byte store (n is even)
          T pair[2] = {v0, v1};
          *reinterpret_cast<uint32_t*>(yp) = *reinterpret_cast<const uint32_t*>(pair);
        } else {
          if (n < N) yp[0] = v0;
          if (n + 1 < N) yp[1] = v1;
        }
      }
  }
}

// The epilogue of an int32 product matrix (cuBLASLt's, or the dp4a kernel's): f32 row stride LDO of
// the outlier tile staged in shared memory, and the kernel's shared memory.
constexpr int LDO = BN + 4;  // 4 floats of padding: the fragments' float2 stores spread over the banks
template <typename T>
constexpr int epi_smem() { return BM * LDO * 4 > (std::is_same<T, float>::value ? 3 : 2) * TILE ? BM * LDO * 4 : (std::is_same<T, float>::value ? 3 : 2) * TILE; }

// y[m, n] = (acc[m, n − n_begin] · sx[m] + outliers) · sw[n] + bias[n] (+ res[m, n]) for n in [n_begin, n_end),
// acc with row stride ldacc. A block owns 128 rows × 128 features: with outlier columns (cnt > 0)
// their product is computed on the tensor cores (add_outliers, into zeroed fragments) and staged
// in shared memory as f32; then the tile is streamed row by row, a warp reading one row's 128
// int32 (512 bytes, 16 a lane) and writing its 128 outputs in one contiguous store, 8 rows of
// loads in flight per lane. Without outliers the kernel is that stream alone.
template <typename T>
__global__ void __launch_bounds__(THREADS, 2) k_epi(const int32_t* __restrict__ acc, int64_t ldacc, const float* __restrict__ sx, const double* __restrict__ sw,
                                                 const int* __restrict__ count, const uint16_t* __restrict__ xo, const uint16_t* __restrict__ wo, int64_t Cp,
                                                 const T* __restrict__ bias, const T* __restrict__ res, T* __restrict__ y, int64_t M, int64_t N, int64_t n_begin,
                                                 int64_t n_end) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t m0 = (int64_t)blockIdx.x * BM, n0 = n_begin + (int64_t)blockIdx.y * BN;
  const int cnt = *count;
  const float* so = reinterpret_cast<const float*>(smem);
  if (cnt > 0) {
    const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, tg = lane & 3;
    float o[4][4][4];
zero(o);
    add_outliers<T>(o, smem, cnt, xo, wo, Cp, M, m0, n0, n_end, wm, wn, lane);
    float* sw_o = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          *reinterpret_cast<float2*>(sw_o + (wm * 64 + i * 16 + g + 8 * h) * LDO + wn * 32 + j * 8 + tg * 2) = make_float2(o[i][j][2 * h], o[i][j][2 * h + 1]);
    __syncthreads();
  }
  const int c = lane * 4;  // this lane's 4 features of every row: n … n + 3
  const int64_t n = n0 + c;
  float swn[4], bn[4];
#pragma unroll
  for (int e = 0; e < 4; e++) {
    swn[e] = n + e < n_end ? (float)sw[n + e] : 0.f;
    bn[e] = bias && n + e < n_end ? (float)Num<T>::load(bias[n + e]) : 0.f;
  }
  // 16-byte loads: ldacc and the column offset multiples of 4, acc 16-byte aligned; 4·sizeof(T)-byte stores likewise
  const bool lv = n + 3 < n_end && (ldacc & 3) == 0 && ((uintptr_t)acc & 15) == 0;
  const bool sv = n + 3 < n_end && (N & 3) == 0 && (n & 3) == 0 && ((uintptr_t)y % (4 * sizeof(T))) == 0;
  constexpr int RS = THREADS / 32, U = 8;  // rows a pass, passes in flight
#pragma unroll 1
  for (int r0 = warp; r0 < BM; r0 += RS * U) {
    int a[U][4];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t m = m0 + r0 + u * RS;
      const int32_t* ap = acc + (m < M ? m : 0) * ldacc + (n - n_begin);
      if (m < M && lv) {
        const int4 v = __ldg(reinterpret_cast<const int4*>(ap));
        a[u][0] = v.x, a[u][1] = v.y, a[u][2] = v.z, a[u][3] = v.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; e++) a[u][e] = m < M && n + e < n_end ? __ldg(ap + e) : 0;
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int r = r0 + u * RS;
      const int64_t m = m0 + r;
      if (m >= M) continue;
      const float s = sx[m];
      alignas(16) T out[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float v = (float)a[u][e] * s;
        if (cnt > 0) v += so[r * LDO + c + e];
        const float re = res && n + e < n_end ? (float)Num<T>::load(res[m * N + n + e]) : 0.f;
        out[e] = Num<T>::store((typename Num<T>::C)(v * swn[e] + bn[e] + re));
      }
      T* yp = y + m * N + n;
      if (sv) {
        if (sizeof(T) == 2) *reinterpret_cast<uint2*>(yp) = *reinterpret_cast<const uint2*>(out);
        else *reinterpret_cast<uint4*>(yp) = *reinterpret_cast<const uint4*>(out);
      } else {
#pragma unroll
        for (int e = 0; e < 4; e++)
          if (n + e < n_end) yp[e] = out[e];
      }
    }
  }
}
}  // namespace i8


// How the large-M LLM.int8 product runs (KILN_INT8_GEMM): "lt", cuBLASLt's integer GEMM into an
// int32 matrix, then i8::k_epi (scales, outliers, bias); "lt-chunked", the same over column chunks
// whose int32 products (≤ 16 MiB) are read back while still in L2; "own", i8::k_gemm alone (one
// launch, no int32 matrix); "wgmma", i8w::k_gemm (sm_90a, bf16/f16: the int8 wgmma GEMM with the
// whole epilogue, one launch); "auto" (the default), the fastest of those, timed once per (M
// rounded up to a power of 2, N, K, dtype) on the first call outside a CUDA graph capture (inside
// one: "wgmma" where it runs, else "lt").
enum { I8_AUTO = 0, I8_LT = 1, I8_LT_CHUNKED = 2, I8_OWN = 3, I8_WG = 4 };
static int& i8_mode() {
  static int mode = [] {
    const char* e = getenv("KILN_INT8_GEMM");
    if (!e || !*e || !strcmp(e, "auto")) return (int)I8_AUTO;
    if (!strcmp(e, "lt")) return (int)I8_LT;
    if (!strcmp(e, "lt-chunked")) return (int)I8_LT_CHUNKED;
    if (!strcmp(e, "own")) return (int)I8_OWN;
    if (!strcmp(e, "wgmma")) return (int)I8_WG;
    rt::fail(KILN_ERR_INVALID, "KILN_INT8_GEMM = \"%s\": expected auto, lt, lt-chunked, own or wgmma", e);
    return (int)I8_AUTO;
  }();
  return mode;
}
static const char* i8_name(int how) {
  return how == I8_LT ? "lt" : how == I8_LT_CHUNKED ? "lt-chunked" : how == I8_OWN ? "own" : how == I8_WG ? "wgmma" : "auto";
}

// columns of one chunk of "lt-chunked": int32 products of at most 16 MiB, at least 256 columns
static int64_t i8_chunk(int64_t M) {
  const int64_t c = ((int64_t)16 << 20) / (4 * M) / i8::BN * i8::BN;
  return c < 256 ? 256 : c;
}

// The operands of one large-M qlinear8 after its activations are quantized.
template <typename T>
struct I8Gemm {
  const int8_t* qx;
  int64_t Kp;
  const int8_t* qw;
  const double* sw;
  const float* sx;
  const int* list;
  const int* count;
  const uint16_t* xo;  // the outlier columns of x, 16-bit, row stride Cp (k_i8_fix_rows)
  const uint16_t* wo;  // the outlier columns of the weight codes, 16-bit, row stride Cp (k_i8_gather_w)
  int64_t Cp;
  const T* bias;
  const T* res;  // fuse-residual's residual [M, N], or null
  T* y;
  int64_t M, N, K;
  bool own_ok;  // K % 16 == 0 and 16-byte aligned codes: the mma.sync kernel can read them
};

// i8::k_gemm: the whole product in one launch (g.own_ok)
template <typename T>
static void i8_own(const I8Gemm<T>& g, cudaStream_t s) {
  constexpr int bytes = i8::gemm_smem();
  static bool attr = false;  // opting in to > 48 KiB of shared memory, once per instantiation
  if (!attr) rt::check(cudaFuncSetAttribute(i8::k_gemm<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), "cudaFuncSetAttribute (qlinear8)");
  attr = true;
  const dim3 grid((unsigned)((g.M + i8::BM - 1) / i8::BM), (unsigned)((g.N + i8::BN - 1) / i8::BN));
  i8::k_gemm<T><<<grid, i8::THREADS, bytes, s>>>(g.qx, g.Kp, g.qw, g.sx, g.sw, g.count, g.xo, g.wo, g.Cp, g.bias, g.res, g.y, g.M, g.N, g.K);
  detail::launched("qlinear8 (int8 GEMM, outliers)");
}

// i8::k_epi over the columns [n_begin, n_end): acc holds their int32 products, row stride ldacc
template <typename T>
static void i8_epi(const I8Gemm<T>& g, const int32_t* acc, int64_t ldacc, int64_t n_begin, int64_t n_end, cudaStream_t s) {
  constexpr int bytes = i8::epi_smem<T>();
  static bool attr = false;
  if (!attr) rt::check(cudaFuncSetAttribute(i8::k_epi<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), "cudaFuncSetAttribute (qlinear8)");
  attr = true;
  const dim3 grid((unsigned)((g.M + i8::BM - 1) / i8::BM), (unsigned)((n_end - n_begin + i8::BN - 1) / i8::BN));
  i8::k_epi<T><<<grid, i8::THREADS, bytes, s>>>(acc, ldacc, g.sx, g.sw, g.count, g.xo, g.wo, g.Cp, g.bias, g.res, g.y, g.M, g.N, n_begin, n_end);
  detail::launched("qlinear8 (scales, outliers)");
}

// The int32 products of the columns [n, n + nc) into acc (row stride nc): cuBLASLt's IMMA GEMM,
// else (K not a multiple of 4, or no algorithm) Kiln's dp4a kernel; false, launching nothing,
// when neither should run because the mma.sync kernel can do the whole product (own_ok).
template <typename T>
static bool i8_products(const I8Gemm<T>& g, int64_t n, int64_t nc, int32_t* acc, cudaStream_t s) {
  // column-major view, TN: accᵀ[nc×M] = (W rows n…)ᵀ(stored K×nc)ᵀ · qxᵀ(stored Kp×M)
  if (lt::gemm_i8(nc, g.M, g.K, g.qw + n * g.K, g.K, g.qx, g.Kp, acc, nc, "qlinear8")) return true;
  static bool noted = false;
  if (!noted)
    fprintf(stderr, "kiln: no cuBLASLt int8 GEMM here (m=%lld n=%lld k=%lld); LLM.int8 runs on Kiln's own %s kernel\n", (long long)nc, (long long)g.M,
            (long long)g.K, g.own_ok ? "mma.sync" : "dp4a (slow: K is not a multiple of 16)");
  noted = true;
  if (g.own_ok) return false;
  const dim3 grid((unsigned)((nc + 63) / 64), (unsigned)((g.M + 63) / 64));
  k_gemm_i8<<<grid, 256, 0, s>>>(g.qx, g.Kp, g.qw + n * g.K, acc, g.M, nc, g.K);
  detail::launched("qlinear8 (int8 GEMM)");
  return true;
}

// whether i8w::k_gemm can compute g (the same conditions as i8w::run, asked before choosing it)
template <typename T>
static bool i8w_ok(const I8Gemm<T>& g) {
  return g.own_ok && i8w::available<T>() && g.K > 0 && g.K % 16 == 0 && g.Kp % 16 == 0 && g.Cp % 64 == 0 && detail::aligned16(g.qx) && (!g.xo || detail::aligned16(g.xo)) &&
         (!g.wo || detail::aligned16(g.wo)) && g.M <= 0x7fffffffLL - i8w::BM && g.N <= 0x7fffffffLL - i8w::BN;
}

// y of a large-M qlinear8 the way `how` says; acc: room for the int32 products (4·M·N bytes; unused by "own").
template <typename T>
static void i8_run(int how, const I8Gemm<T>& g, int32_t* acc, cudaStream_t s) {
  if (how == I8_OWN && g.own_ok) return i8_own<T>(g, s);
  if constexpr (std::is_same<T, bf16>::value || std::is_same<T, f16>::value) {
    if (how == I8_WG && i8w_ok(g)) {
      // a map the driver refused (never seen): the other one-launch kernel (no int32 matrix either)
      if (!i8w::run<T>(g.qx, g.Kp, g.qw, g.sx, g.sw, g.count, g.xo, g.wo, g.Cp, g.bias, g.res, g.y, g.M, g.N, g.K, s)) i8_own<T>(g, s);
      return;
    }
  }
  const int64_t step = how == I8_LT_CHUNKED ? i8_chunk(g.M) : g.N;
  for (int64_t n = 0; n < g.N; n += step) {
    const int64_t nc = step < g.N - n ? step : g.N - n;
    if (!i8_products<T>(g, n, nc, acc, s)) return i8_own<T>(g, s);  // all of y, whatever chunks came before
    i8_epi<T>(g, acc, nc, n, n + nc, s);
  }
}

// The variant of i8_mode() for this call; "auto" times the candidates once per shape.
template <typename T>
static int i8_choose(const I8Gemm<T>& g, cudaStream_t s) {
  const int mode = i8_mode();
  if (mode == I8_WG && !i8w_ok(g)) {
    static bool noted = false;  // forced, but it cannot run here: say so once (lt computes the same y)
    if (!noted)
      fprintf(stderr, "kiln: KILN_INT8_GEMM=wgmma: the int8 wgmma kernel cannot run here (it needs an sm_90a build on an sm_90 device, bf16/f16, K a multiple of 16; this call: M=%lld N=%lld K=%lld); using lt\n",
              (long long)g.M, (long long)g.N, (long long)g.K);
    noted = true;
    return I8_LT;
  }
  if (mode != I8_AUTO) return mode;
  if (!lt::available()) return i8w_ok(g) ? I8_WG : g.own_ok ? I8_OWN : I8_LT;  // no cuBLASLt: Kiln's own one-launch kernels
  int64_t mb = 1;
  while (mb < g.M) mb <<= 1;
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int>, int> chosen;
  const auto key = std::make_tuple(mb, g.N, g.K, std::is_same<T, bf16>::value ? 1 : std::is_same<T, f16>::value ? 2 : 4);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = chosen.find(key);
    if (it != chosen.end()) return it->second;
  }
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  rt::check(cudaStreamIsCapturing(s, &cs), "cudaStreamIsCapturing (qlinear8)");
  if (cs != cudaStreamCaptureStatusNone) return i8w_ok(g) ? I8_WG : I8_LT;
  int cands[4], nc = 0;
  cands[nc++] = I8_LT;
  if (g.N > i8_chunk(g.M)) cands[nc++] = I8_LT_CHUNKED;
  if (g.own_ok) cands[nc++] = I8_OWN;
  if (i8w_ok(g)) cands[nc++] = I8_WG;
  int32_t* acc = (int32_t*)rt::alloc(4 * g.M * g.N, "qlinear8 (int32 products)");
  cudaEvent_t ev[2];
  for (auto& e : ev) rt::check(cudaEventCreate(&e), "cudaEventCreate (qlinear8)");
  int best = I8_LT;
  float best_ms = INFINITY;
  for (int i = 0; i < nc; i++) {
    i8_run<T>(cands[i], g, acc, s);  // warm: plans, shared-memory opt-in
    rt::check(cudaEventRecord(ev[0], s), "cudaEventRecord (qlinear8)");
    i8_run<T>(cands[i], g, acc, s);
    rt::check(cudaEventRecord(ev[1], s), "cudaEventRecord (qlinear8)");
    rt::check(cudaEventSynchronize(ev[1]), "cudaEventSynchronize (qlinear8)");
    float ms = 0;
    rt::check(cudaEventElapsedTime(&ms, ev[0], ev[1]), "cudaEventElapsedTime (qlinear8)");
    if (ms < best_ms) best = cands[i], best_ms = ms;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  rt::release(acc);
  const char* verbose = getenv("KILN_VERBOSE");
  if (verbose && *verbose && strcmp(verbose, "0") != 0)
    fprintf(stderr, "kiln: qlinear8 M≤%lld N=%lld K=%lld: %s (%.1f µs)\n", (long long)mb, (long long)g.N, (long long)g.K, i8_name(best), best_ms * 1e3);
  std::lock_guard<std::mutex> lock(mu);
  chosen[key] = best;
  return best;
}

// The workspace of one qlinear8, one allocation: flags[K], list[K], count, sx[M], qx[M·Kp].
struct I8Ws {
  void* base = nullptr;
  int *flags = nullptr, *list = nullptr, *count = nullptr;
  float* sx = nullptr;
  int8_t* qx = nullptr;
};
static I8Ws i8_ws(int64_t M, int64_t K) {
  const int64_t Kp = (K + 15) / 16 * 16;
  const int64_t off_list = quant::pad16(4 * K), off_count = off_list + quant::pad16(4 * K), off_sx = off_count + 16, off_qx = off_sx + quant::pad16(4 * M),
                total = off_qx + quant::pad16(M * Kp);
  uint8_t* ws = (uint8_t*)rt::alloc(total, "qlinear8 (workspace)");
  return {ws, (int*)ws, (int*)(ws + off_list), (int*)(ws + off_count), (float*)(ws + off_sx), (int8_t*)(ws + off_qx)};
}

// k_i8_quant_rows with the fewest registers that hold a row of K (VEC), else the two-pass form
// Threads a block of the row kernels (k_i8_quant_rows, k_i8_fix_rows): enough that a thread holds
// at most two 16-byte chunks of a row, from 256 to 1024. (At 256 a K = 11008 row took 5–6 chunks a
// thread, 8 in registers: 55–60 µs for M = 2048 on the H100, 3× what its bytes need.)
template <typename T>
static unsigned i8_row_threads(int64_t K) {
  const int64_t half = (K / detail::Vec<T>::E + 1) / 2;
  const int64_t t = (half + 31) / 32 * 32;
  return (unsigned)(t < 256 ? 256 : t > 1024 ? 1024 : t);
}

template <typename T>
static void i8_quant_rows(const T* x, bool vx, int64_t M, int64_t K, int64_t Kp, float cut, const I8Ws& ws, cudaStream_t s) {
  const unsigned nt = i8_row_threads<T>(K);
  const int64_t chunks = (K / detail::Vec<T>::E + nt - 1) / nt;  // 16-byte chunks a thread
  if (vx && chunks <= 2) k_i8_quant_rows<T, true, 2><<<(unsigned)M, nt, 0, s>>>(x, K, Kp, cut, ws.flags, ws.qx, ws.sx);
  else if (vx && chunks <= 4) k_i8_quant_rows<T, true, 4><<<(unsigned)M, nt, 0, s>>>(x, K, Kp, cut, ws.flags, ws.qx, ws.sx);
  else if (vx && chunks <= 8) k_i8_quant_rows<T, true, 8><<<(unsigned)M, nt, 0, s>>>(x, K, Kp, cut, ws.flags, ws.qx, ws.sx);
  else if (vx) k_i8_quant_rows<T, true, 0><<<(unsigned)M, nt, 0, s>>>(x, K, Kp, cut, ws.flags, ws.qx, ws.sx);
  else k_i8_quant_rows<T, false, 0><<<(unsigned)M, nt, 0, s>>>(x, K, Kp, cut, ws.flags, ws.qx, ws.sx);
}

// The activation side of a large-M qlinear8 (what depends on x and the threshold only): the rows'
// int8 and scales, the outlier list, and x's outlier columns gathered dense and 16-bit. Linears
// that read the same x (q/k/v, gate/up) share one (Q8Shared below).
struct I8Act {
  I8Ws ws;  // default members: a declared-only I8Act (Q8Shared in emitted code) holds nothing
  uint16_t* xo = nullptr;
  const void* x = nullptr;
  int64_t M = 0, K = 0;
  double threshold = 0;
};

// A large-M qlinear8 with its activations quantized (i8_prep) and the buffers that holds.
template <typename T>
struct I8Prep {
  I8Gemm<T> g;
  uint16_t* wo;
};

// Prefill's first stage: the rows' int8 and the outlier flags in one pass over x, the list of
// outlier columns, the rows' repair (outlier codes zeroed; absmax redone where another row flagged
// its maximum) with the outlier columns of x gathered dense and 16-bit (f32 x: hi then lo) for
// the tensor-core outlier product.
template <typename T>
static I8Act i8_act(const T* x, int64_t M, int64_t K, double threshold, cudaStream_t s) {
  const bool decomp = threshold > 0 && isfinite(threshold);
  const float thr = (float)threshold;
  const int64_t Kp = (K + 15) / 16 * 16, Cp = (K + 63) / 64 * 64;
  I8Act a;
  a.ws = i8_ws(M, K);
  a.x = x, a.M = M, a.K = K, a.threshold = threshold;
  const bool vx = K % detail::Vec<T>::E == 0 && detail::aligned16(x);
  const float cut = decomp ? thr : INFINITY;
  rt::check(cudaMemsetAsync(decomp ? (void*)a.ws.flags : (void*)a.ws.count, 0, decomp ? 4 * K : 4, s), "cudaMemsetAsync (qlinear8)");
  i8_quant_rows<T>(x, vx, M, K, Kp, cut, a.ws, s);
  detail::launched("qlinear8 (quantize activations, outlier columns)");
  if (decomp) {
    a.xo = (uint16_t*)rt::alloc(2 * M * Cp * (std::is_same<T, float>::value ? 2 : 1), "qlinear8 (outlier columns of x)");
    k_i8_list4<<<1, 1024, 0, s>>>(a.ws.flags, K, a.ws.list, a.ws.count);
    const unsigned nt = i8_row_threads<T>(K);
    if (vx) k_i8_fix_rows<T, true><<<(unsigned)M, nt, 0, s>>>(x, M, K, Kp, thr, a.ws.flags, a.ws.list, a.ws.count, a.ws.qx, a.ws.sx, a.xo, Cp);
    else k_i8_fix_rows<T, false><<<(unsigned)M, nt, 0, s>>>(x, M, K, Kp, thr, a.ws.flags, a.ws.list, a.ws.count, a.ws.qx, a.ws.sx, a.xo, Cp);
    detail::launched("qlinear8 (outlier columns)");
  }
  return a;
}
static inline void i8_act_release(I8Act& a) {
  if (a.xo) rt::release(a.xo);
  if (a.ws.base) rt::release(a.ws.base);
  a = I8Act();
}

// The weight side: the weight's outlier columns (those of the act's list) gathered as 16-bit tiles.
// i8_run then makes y; i8_release gives the weight side's buffer back.
template <typename T>
static I8Prep<T> i8_prep(const I8Act& a, const uint8_t* w, const T* bias, const T* res, T* y, int64_t N, cudaStream_t s) {
  const int64_t M = a.M, K = a.K;
  if ((N + i8::BN - 1) / i8::BN > 65535 || (M + i8::BM - 1) / i8::BM > 0x7fffffffLL)
    rt::fail(KILN_ERR_INVALID, "qlinear8: M = %lld, N = %lld is too large", (long long)M, (long long)N);
  const int64_t Kp = (K + 15) / 16 * 16, Cp = (K + 63) / 64 * 64;
  const int8_t* qw = (const int8_t*)w;
  const double* sw = (const double*)(w + quant::pad16(N * K));
  uint16_t* wo = a.xo ? (uint16_t*)rt::alloc(2 * N * Cp, "qlinear8 (outlier columns of the weight)") : nullptr;
  if (wo) {
    k_i8_gather_w<T><<<(unsigned)((N + 7) / 8), 256, 0, s>>>(qw, N, K, a.ws.list, a.ws.count, wo, Cp);
    detail::launched("qlinear8 (outlier columns of the weight)");
  }
  const I8Gemm<T> g = {a.ws.qx, Kp, qw, sw, a.ws.sx, a.ws.list, a.ws.count, a.xo, wo, Cp, bias, res, y, M, N, K, K % 16 == 0 && detail::aligned16(w)};
  return {g, wo};
}
template <typename T>
static void i8_release(const I8Prep<T>& p) {
  if (p.wo) rt::release(p.wo);
}

}  // namespace qdetail

// qlinear, 4-bit: y = x · deq(W)ᵀ (+ b) (+ residual, fuse-residual's, in the GEMV's store or the
// GEMM's epilogue); W in kiln_quant.h's 4-bit layout, `code` the 16 code values (host memory: they
// travel to the kernels by value). nrm (the `_norm` calls below): x is the input of the RMSNorm
// whose result the linear reads.
template <typename T>
void qlinear4(const T* x, const uint8_t* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N, int64_t K, int64_t block, bool dq, const double* code,
              const qdetail::Q4Norm<T>* nrm = nullptr) {
  if (M <= 0 || N <= 0) return;
  const qdetail::Q4 q = qdetail::q4_of(w, N * K, K, block, dq);
  const qdetail::Code16 c = qdetail::code16(code);
  cudaStream_t s = stream();
  if (M <= 8) {
    qdetail::Q4Jobs<T> J = {};
    J.j[0] = {q, bias, residual, y, N};
    J.n = 1;
    qdetail::qgemv4<T>(x, J, c, M, K, block, qdetail::qgemv4_path(x, w, M, K, block), s, nrm);
    return;
  }
  x = qdetail::unfuse(x, nrm, M, K);
  // prefill: dequantize into a scratch weight, then the 16-bit GEMM of `linear`
  T* wd = (T*)rt::alloc((int64_t)sizeof(T) * N * K, "qlinear4 (dequantized weight)");
  if ((N * K) % 32 == 0 && block % 32 == 0 && detail::aligned16(w) && detail::aligned16(wd)) {
    const int64_t words = N * K / 8;
    qdetail::k_dequant4w<T><<<detail::grid_for(words, 256), 256, 0, s>>>(q, c, wd, words, qdetail::log2_exact(block / 8));
  } else {
    qdetail::k_dequant4<T><<<detail::grid_for((N * K + 1) / 2, detail::kThreads), detail::kThreads, 0, s>>>(q, c, wd, N * K);
  }
  detail::launched("qlinear4 (dequantize)");
  linear<T>(x, wd, bias, residual, y, M, N, K);
  rt::release(wd);
}

using quant::Q4Linear;
using quant::Q4Rope;

// rope: the group is a decode step's q/k/v and Q4Rope says where RoPE and the cache writes put each
// one's row (emit.ts's rope fusion, where rope_fused said so): k_qgemv4p does it in its epilogue,
// else one launch after the GEMVs (qdetail::unrope). KILN_FUSE_ROPE=0 turns it off (an A/B switch).
using quant::rope_fused;

// The 4-bit linears that read one x with one scheme, block, double quant and K (emit.ts groups
// q/k/v and gate/up): at decode (M ≤ 8) ONE GEMV launch (up to 4 linears a launch) computes them
// all, each as its own qlinear4 would; prefill runs them one by one (as do linears whose weights
// would take different GEMV paths, e.g. one not 16-byte aligned).
template <typename T>
void qlinear4_group(const T* x, int64_t M, int64_t K, int64_t block, bool dq, const double* code, std::initializer_list<Q4Linear<T>> ls,
                    const qdetail::Q4Norm<T>* nrm = nullptr, const Q4Rope<T>* rope = nullptr) {
  if (M <= 0 || ls.size() == 0) return;
  if (rope && (M != 1 || ls.size() > 4)) rt::fail(KILN_ERR_INVALID, "qlinear4_group: a RoPE epilogue needs one row of x and at most 4 linears (M = %lld, %lld linears)", (long long)M, (long long)ls.size());
  const Q4Linear<T>* l = ls.begin();
  const int64_t n = (int64_t)ls.size();
  const qdetail::Q4Path path = qdetail::qgemv4_path(x, l[0].w, M, K, block);
  bool one = M <= 8;
  for (int64_t i = 0; i < n; i++) one = one && l[i].N > 0 && qdetail::qgemv4_path(x, l[i].w, M, K, block) == path;
  bool roped = false;
  if (!one) {
    x = qdetail::unfuse(x, nrm, M, K);
    for (int64_t i = 0; i < n; i++) qlinear4<T>(x, l[i].w, l[i].bias, l[i].res, l[i].y, M, l[i].N, K, block, dq, code);
  } else {
    const qdetail::Code16 c = qdetail::code16(code);
    for (int64_t i0 = 0; i0 < n; i0 += 4) {  // (a norm: each launch computes it, or runs its kernel first)
      qdetail::Q4Jobs<T> J = {};
      for (int64_t i = i0; i < n && i < i0 + 4; i++) J.j[J.n++] = {qdetail::q4_of(l[i].w, l[i].N * K, K, block, dq), l[i].bias, l[i].res, l[i].y, l[i].N};
      roped = qdetail::qgemv4<T>(x, J, c, M, K, block, path, stream(), nrm, rope);
    }
  }
  if (rope && !roped) qdetail::unrope<T>(ls, *rope, stream());
}

template <typename T>
void qlinear4_group_rope(const T* x, int64_t M, int64_t K, int64_t block, bool dq, const double* code, std::initializer_list<Q4Linear<T>> ls, const Q4Rope<T>* rope) {
  qlinear4_group<T>(x, M, K, block, dq, code, ls, nullptr, rope);
}

// y = silu(x · Wgᵀ (+ bg) (+ rg)) · (x · Wuᵀ (+ bu) (+ ru)), y [M, N]: a gated MLP's gate and up
// linears and the fused elementwise `(mul (silu $gate) $up)` that is their only reader, with that
// kernel's rounding (g and u rounded to T, then kiln::silu_mul). Decode (M ≤ 8): one launch, a
// block computing the same rows of gate and up so its epilogue holds both; prefill (or weights
// taking different GEMV paths): both linears into scratch, then the product. gate.y and up.y are
// unused.
template <typename T>
void qlinear4_silu_mul(const T* x, int64_t M, int64_t K, int64_t block, bool dq, const double* code, const Q4Linear<T>& gate, const Q4Linear<T>& up, T* y,
                       const qdetail::Q4Norm<T>* nrm = nullptr) {
  const int64_t N = gate.N;
  if (up.N != N) rt::fail(KILN_ERR_INVALID, "qlinear4_silu_mul: gate has N = %lld, up N = %lld", (long long)N, (long long)up.N);
  if (M <= 0 || N <= 0) return;
  cudaStream_t s = stream();
  const qdetail::Q4Path path = qdetail::qgemv4_path(x, gate.w, M, K, block);
  if (M <= 8 && qdetail::qgemv4_path(x, up.w, M, K, block) == path) {
    qdetail::Q4Jobs<T> J = {};
    J.j[0] = {qdetail::q4_of(gate.w, N * K, K, block, dq), gate.bias, gate.res, y, N};
    J.j[1] = {qdetail::q4_of(up.w, N * K, K, block, dq), up.bias, up.res, nullptr, N};
    J.n = 2;
    J.pair = true;
    qdetail::qgemv4<T>(x, J, qdetail::code16(code), M, K, block, path, s, nrm);
    return;
  }
  x = qdetail::unfuse(x, nrm, M, K);
  T* gu = (T*)rt::alloc(2 * (int64_t)sizeof(T) * M * N, "qlinear4_silu_mul (gate and up)");
  qlinear4<T>(x, gate.w, gate.bias, gate.res, gu, M, N, K, block, dq, code);
  qlinear4<T>(x, up.w, up.bias, up.res, gu + M * N, M, N, K, block, dq, code);
  qdetail::k_silu_mul<T><<<detail::grid_for(M * N, detail::kThreads), detail::kThreads, 0, s>>>(gu, gu + M * N, y, M * N);
  detail::launched("qlinear4 (silu·up)");
  rt::release(gu);
}

// The readers of an RMSNorm that are all 4-bit linears (emit.ts's `_norm` calls): at one row
// (decode) k_qgemv4p computes the norm from its input xp as it stages x, so the norm's own kernel
// does not run (norm_fused(rows) decides at the norm's position); otherwise (or where k_qgemv4p
// does not take the shape) the norm runs into xn and the plain call follows. fused false: xn
// already holds the norm's result.
static inline bool norm_fused(int64_t rows) { return rows == 1 && qdetail::q4p_switch(); }
template <typename T>
void qlinear4_norm(const T* xp, const T* gamma, double eps, bool fused, T* xn, const uint8_t* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N,
                   int64_t K, int64_t block, bool dq, const double* code) {
  const qdetail::Q4Norm<T> nrm = {gamma, eps, xn};
  qlinear4<T>(fused ? xp : xn, w, bias, residual, y, M, N, K, block, dq, code, fused ? &nrm : nullptr);
}
template <typename T>
void qlinear4_group_norm(const T* xp, const T* gamma, double eps, bool fused, T* xn, int64_t M, int64_t K, int64_t block, bool dq, const double* code,
                         std::initializer_list<Q4Linear<T>> ls, const Q4Rope<T>* rope = nullptr) {
  const qdetail::Q4Norm<T> nrm = {gamma, eps, xn};
  qlinear4_group<T>(fused ? xp : xn, M, K, block, dq, code, ls, fused ? &nrm : nullptr, rope);
}
template <typename T>
void qlinear4_silu_mul_norm(const T* xp, const T* gamma, double eps, bool fused, T* xn, int64_t M, int64_t K, int64_t block, bool dq, const double* code,
                            const Q4Linear<T>& gate, const Q4Linear<T>& up, T* y) {
  const qdetail::Q4Norm<T> nrm = {gamma, eps, xn};
  qlinear4_silu_mul<T>(fused ? xp : xn, M, K, block, dq, code, gate, up, y, fused ? &nrm : nullptr);
}

// Linears of one graph that read the same activation x with the same threshold share its int8
// quantization, at prefill and at decode (emit.ts declares one Q8Shared for them and calls
// qlinear8_done after the last): x is an SSA value, unchanged while they run, so the first one's
// result is exactly what each would compute.
struct Q8Shared {
  qdetail::I8Act act;
};
static inline void qlinear8_done(Q8Shared* sh) {
  if (sh && sh->act.ws.base) qdetail::i8_act_release(sh->act);
}

// qlinear, int8 (LLM.int8): see the header. W: N·K int8 codes (padded to 16 bytes), then N f64
// scales; `residual` (fuse-residual's, or null) is added in every path's epilogue.
template <typename T>
void qlinear8(const T* x, const uint8_t* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N, int64_t K, double threshold, Q8Shared* sh = nullptr) {
  if (M <= 0 || N <= 0) return;
  cudaStream_t s = stream();
  const bool reuse = sh && sh->act.ws.base && sh->act.x == (const void*)x && sh->act.M == M && sh->act.K == K && sh->act.threshold == threshold;
  if (M <= 8) {
    // decode: outlier columns and the rows' int8 in one launch (shared, as at prefill, by the
    // linears that read this x: q/k/v, gate/up), then the dp4a GEMV
    const int8_t* qw = (const int8_t*)w;
    const double* sw = (const double*)(w + quant::pad16(N * K));
    const int64_t Kp = (K + 15) / 16 * 16;
    qdetail::I8Ws ws;
    if (reuse) {
      ws = sh->act.ws;
    } else {
      ws = qdetail::i8_ws(M, K);
      qdetail::k_i8_list<T><<<1, 1024, 0, s>>>(x, (int)M, threshold > 0 && isfinite(threshold), (float)threshold, ws.flags, K, ws.list, ws.count, Kp, ws.qx,
                                               ws.sx);
      detail::launched("qlinear8 (outliers, quantize activations)");
      if (sh) {
        qlinear8_done(sh);
        sh->act.ws = ws, sh->act.x = x, sh->act.M = M, sh->act.K = K, sh->act.threshold = threshold;
      }
    }
    const bool vec = K % 16 == 0 && detail::aligned16(w);
    const unsigned blocks = (unsigned)((N + 7) / 8);
    qdetail::with_rows(M, [&](auto rows) {
      constexpr int MR = decltype(rows)::value;
      if (vec) qdetail::k_qgemv8<T, MR, true><<<blocks, 256, 0, s>>>(x, ws.qx, Kp, ws.sx, qw, sw, ws.list, ws.count, bias, residual, y, N, K);
      else qdetail::k_qgemv8<T, MR, false><<<blocks, 256, 0, s>>>(x, ws.qx, Kp, ws.sx, qw, sw, ws.list, ws.count, bias, residual, y, N, K);
    });
    detail::launched("qlinear8 (GEMV)");
    if (!sh) rt::release(ws.base);  // else qlinear8_done gives it back after the group's last linear
    return;
  }
  // prefill: the activations' int8 and outlier columns (i8_prep), then the product (i8_run)
  qdetail::I8Act own;
  if (!reuse) {
    qlinear8_done(sh);
    (sh ? sh->act : own) = qdetail::i8_act<T>(x, M, K, threshold, s);
  }
  const qdetail::I8Act& a = sh ? sh->act : own;
  const qdetail::I8Prep<T> p = qdetail::i8_prep<T>(a, w, bias, residual, y, N, s);
  const int how = qdetail::i8_choose<T>(p.g, s);
  const int64_t cols = how == qdetail::I8_LT_CHUNKED && qdetail::i8_chunk(M) < N ? qdetail::i8_chunk(M) : N;
  const bool no_acc = (how == qdetail::I8_OWN && p.g.own_ok) || (how == qdetail::I8_WG && qdetail::i8w_ok(p.g));
  int32_t* acc = no_acc ? nullptr : (int32_t*)rt::alloc(4 * M * cols, "qlinear8 (int32 products)");
  qdetail::i8_run<T>(how, p.g, acc, s);
  if (acc) rt::release(acc);
  qdetail::i8_release(p);
  if (!sh) qdetail::i8_act_release(own);
}

}  // namespace cuda
}  // namespace kiln

// Quantize-on-load on the GPU (kiln_abi.h): bit for bit kiln_quant.h's host functions.
extern "C" int kiln_quantize4(void* dst, const float* src, int64_t n, int64_t K, int64_t block, int dq, const double* code16) {
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
      Q::tail4(host.data(), n, block, true, Q::tiles4(n, block, K), tail.data());
      if (nb > 0) kiln::rt::check(cudaMemcpyAsync(absmax, host.data(), 4 * (size_t)nb, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (absmax up)");
      kiln::rt::check(cudaMemcpyAsync(out + codes, tail.data(), tail.size(), cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (double quant up)");
      kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_quantize4)");
    } else if (nb > 0) {
      // the absmax in their slots (block order, or tiled: kiln_quant.h tiles4)
      kiln::cuda::qdetail::k_absmax_place<<<D::grid_for(nb, D::kThreads), D::kThreads, 0, s>>>(absmax, nb, Q::tiles4(n, block, K), (float*)(out + codes));
      D::launched("kiln_quantize4 (absmax)");
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
