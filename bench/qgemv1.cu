// Experiment: the 4-bit decode GEMV at M = 1 — qlinear4's k_qgemv4v against warp-streaming
// variants (a warp owns RW output rows and walks all of K, U 16-byte pieces a row in flight a lane,
// the next U loaded before the current are multiplied), K-split, a lean tensor-core kernel, the
// production kernel specialized (v2), the same with f16x2 sums (v2h: how much the arithmetic
// costs), and loads-only floors of two access patterns (v2's own: is it the pattern or the
// arithmetic?). Llama-2-7B shapes, nf4 block 64, bf16 x,
// 8 weight copies rotated (> L2), graph of 20 calls, median of 15. Checks each variant against
// qlinear4's own path (rel L2 ≤ 1e-2) first (the loads-only floors compute nothing and are not checked).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/qgemv1 bench/qgemv1.cu
//   bench/tmp/qgemv1 [shape index]   (one shape only: for ncu)
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <algorithm>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-qgemv1"; }
using kiln::bf16;
namespace Q = kiln::cuda::qdetail;

static Q::Code16 g_code;
// The block's W warps each hold R per-lane partial sums of rows row0…: summed over the lanes and
// the warps, rounded to bf16 and stored (rows past N skipped). All threads call it.
template <int R, int W>
__device__ __forceinline__ void store_block_rows(const float (&acc)[R], int64_t row0, int64_t N, bf16* __restrict__ y) {
  __shared__ float red[W][R];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < R; r++) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) red[wid][r] = v;
  }
  __syncthreads();
  if (threadIdx.x < R && row0 + threadIdx.x < N) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < W; w++) v += red[w][threadIdx.x];
    y[row0 + threadIdx.x] = kiln::Num<bf16>::store(v);
  }
}

// 32 weights of one 16-byte piece against 32 activations (f32), the sum unscaled
__device__ __forceinline__ float dot32(const uint4& pc, const float* xf, const char* tb) {
  float part = 0.f;
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const uint32_t w = j == 0 ? pc.x : j == 1 ? pc.y : j == 2 ? pc.z : pc.w;
    const uint32_t lo = (w << 2) & 0x3c3c3c3cu, hi = (w >> 2) & 0x3c3c3c3cu;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float v0 = *reinterpret_cast<const float*>(tb + __byte_perm(lo, 0, 0x4440 + k));
      const float v1 = *reinterpret_cast<const float*>(tb + __byte_perm(hi, 0, 0x4440 + k));
      part = fmaf(v1, xf[8 * j + 2 * k + 1], fmaf(v0, xf[8 * j + 2 * k], part));
    }
  }
  return part;
}

template <int RW, int U, int WPB, bool FAKE = false>
__global__ void __launch_bounds__(WPB * 32) k_w(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t row0 = ((int64_t)blockIdx.x * WPB + (threadIdx.x >> 5)) * RW;
  if (row0 >= N) return;
  const double mean = q.dq ? __ldg(q.mean) : 0.0;
  const int64_t KV = K / 32;
  const char* tb = reinterpret_cast<const char*>(tab);
  const uint4* base[RW];
  int64_t ebase[RW];
#pragma unroll
  for (int r = 0; r < RW; r++) {
    const int64_t row = row0 + r < N ? row0 + r : N - 1;
    base[r] = reinterpret_cast<const uint4*>(q.codes) + row * KV;
    ebase[r] = row * K;
  }
  float acc[RW];
#pragma unroll
  for (int r = 0; r < RW; r++) acc[r] = 0.f;
  uint4 cur[U][RW];
  float am[U][RW];
  auto load = [&](int64_t p0, uint4 (&c)[U][RW], float (&a)[U][RW]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t p = p0 + 32 * u;
#pragma unroll
      for (int r = 0; r < RW; r++) {
        if (p < KV) {
          c[u][r] = kiln::cuda::detail::ld_stream(base[r] + p);
          const int64_t e = ebase[r] + p * 32;
          a[u][r] = Q::absmax_of(q, mean, lb >= 0 ? (e >> lb) : e / q.block);
        }
      }
    }
  };
  load(lane, cur, am);
  for (int64_t p0 = lane; p0 < KV; p0 += 32 * U) {
    uint4 nxt[U][RW];
    float an[U][RW];
    if (p0 + 32 * U < KV) load(p0 + 32 * U, nxt, an);
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t p = p0 + 32 * u;
      if (p < KV) {
        float xf[32];
#pragma unroll
        for (int j = 0; j < 4; j++) Q::load8<bf16>(x + p * 32 + 8 * j, xf + 8 * j);
#pragma unroll
        for (int r = 0; r < RW; r++) {
          if (FAKE) acc[r] += __uint_as_float((cur[u][r].x ^ cur[u][r].y ^ cur[u][r].z ^ cur[u][r].w) & 0x3fffffffu) * am[u][r] * xf[r];
          else acc[r] = fmaf(dot32(cur[u][r], xf, tb), am[u][r], acc[r]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int r = 0; r < RW; r++) {
        cur[u][r] = nxt[u][r];
        am[u][r] = an[u][r];
      }
  }
#pragma unroll
  for (int r = 0; r < RW; r++) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    acc[r] = v;
  }
  if (lane < RW && row0 + lane < N) {
    float v = acc[0];
#pragma unroll
    for (int r = 1; r < RW; r++)
      if (lane == r) v = acc[r];
    y[row0 + lane] = kiln::Num<bf16>::store(v);
  }
}

// K split in two halves across a warp pair? no: a block of WPB warps, each warp a slice of K for the
// same RW rows, partial sums added in shared memory (more warps in flight for short N)
template <int RW, int U, int WPB>
__global__ void __launch_bounds__(WPB * 32) k_ws(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int64_t row0 = (int64_t)blockIdx.x * RW;
  const double mean = q.dq ? __ldg(q.mean) : 0.0;
  const int64_t KV = K / 32;
  const char* tb = reinterpret_cast<const char*>(tab);
  const uint4* base[RW];
  int64_t ebase[RW];
#pragma unroll
  for (int r = 0; r < RW; r++) {
    const int64_t row = row0 + r < N ? row0 + r : N - 1;
    base[r] = reinterpret_cast<const uint4*>(q.codes) + row * KV;
    ebase[r] = row * K;
  }
  float acc[RW];
#pragma unroll
  for (int r = 0; r < RW; r++) acc[r] = 0.f;
  const int T = WPB * 32;
  for (int64_t p0 = threadIdx.x; p0 < KV; p0 += T * U) {
    uint4 c[U][RW];
    float a[U][RW];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t p = p0 + T * u;
#pragma unroll
      for (int r = 0; r < RW; r++)
        if (p < KV) {
          c[u][r] = kiln::cuda::detail::ld_stream(base[r] + p);
          const int64_t e = ebase[r] + p * 32;
          a[u][r] = Q::absmax_of(q, mean, lb >= 0 ? (e >> lb) : e / q.block);
        }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t p = p0 + T * u;
      if (p < KV) {
        float xf[32];
#pragma unroll
        for (int j = 0; j < 4; j++) Q::load8<bf16>(x + p * 32 + 8 * j, xf + 8 * j);
#pragma unroll
        for (int r = 0; r < RW; r++) acc[r] = fmaf(dot32(c[u][r], xf, tb), a[u][r], acc[r]);
      }
    }
  }
  store_block_rows<RW, WPB>(acc, row0, N, y);
}


// Lean tensor-core GEMV for M ≤ 8 (here M = 1): a block of KS warps owns 16 output rows, warp w
// takes the 64-weight chunks w, w + KS, …, U chunks in flight a lane; the byte → code-pair table
// replicated per lane (32 KB); absmax of a chunk = block (power of 2 ≥ 64) lookup, no division.
template <int KS, int U, bool DQ>
__global__ void __launch_bounds__(KS * 32) k_t(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ __align__(16) uint32_t tab[256 * 32];
  __shared__ float cf[16];
  __shared__ float red[KS][16];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  if (threadIdx.x < 16) cf[threadIdx.x] = code.f[threadIdx.x];
  const int64_t row0 = (int64_t)blockIdx.x * 16, KC = K / 64;
  const int64_t ra = row0 + g < N ? row0 + g : N - 1, rb = row0 + g + 8 < N ? row0 + g + 8 : N - 1;
  const uint2* wa = reinterpret_cast<const uint2*>(q.codes + ra * (K / 2)) + t;
  const uint2* wb = reinterpret_cast<const uint2*>(q.codes + rb * (K / 2)) + t;
  const uint4* xp = reinterpret_cast<const uint4*>(x) + 2 * t;
  const int lc = lb - 6;  // chunks an absmax block: 2^lc
  const int64_t ba0 = (ra * KC) >> lc, bb0 = (rb * KC) >> lc;  // (row·KC + kc) >> lc = row·KC>>lc + kc>>lc when KC % 2^lc == 0
  const double mean = DQ ? __ldg(q.mean) : 0.0;
  auto am = [&](int64_t b) -> float {
    if (!DQ) return __ldg(q.absmax + b);
    const double v = __dadd_rn(mean, __dmul_rn((double)__ldg(q.acode + b), (double)__ldg(q.ascale + (b >> 8))));
    return (float)fmax(0.0, v);
  };
  uint2 ca[U], cb[U];
  float sa[U], sb[U];
  auto load = [&](int64_t kc0, uint2 (&pa)[U], uint2 (&pb)[U], float (&xa)[U], float (&xb)[U]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t kc = kc0 + (int64_t)u * KS;
      if (kc < KC) {
        pa[u] = Q::ld_stream8(wa + 4 * kc);
        pb[u] = Q::ld_stream8(wb + 4 * kc);
        xa[u] = am(ba0 + (kc >> lc));
        xb[u] = am(bb0 + (kc >> lc));
      } else {
        pa[u] = pb[u] = make_uint2(0, 0);
        xa[u] = xb[u] = 0.f;
      }
    }
  };
  load(wid, ca, cb, sa, sb);
  __syncthreads();
  for (int i = threadIdx.x; i < 256 * 8; i += KS * 32) {
    const int b = i >> 3;
    const uint32_t v = kiln::cuda::fa2::Mma<bf16>::pack(cf[b & 15], cf[b >> 4]);
    reinterpret_cast<uint4*>(tab)[i] = make_uint4(v, v, v, v);
  }
  __syncthreads();
  const uint32_t* tl = tab + lane;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t kc0 = wid; kc0 < KC; kc0 += (int64_t)U * KS) {
    uint2 na[U], nb[U];
    float xa[U], xb[U];
    load(kc0 + (int64_t)U * KS, na, nb, xa, xb);
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t kc = kc0 + (int64_t)u * KS;
      uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
      if (g == 0 && kc < KC) x0 = __ldg(xp + 8 * kc), x1 = __ldg(xp + 8 * kc + 1);
      const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
      float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int s = 0; s < 4; s++) {
        const uint32_t va = s < 2 ? ca[u].x : ca[u].y, vb = s < 2 ? cb[u].x : cb[u].y;
        const int k = 2 * (s & 1);
        const uint32_t a[4] = {tl[__byte_perm(va, 0, 0x4440 + k) << 5], tl[__byte_perm(vb, 0, 0x4440 + k) << 5], tl[__byte_perm(va, 0, 0x4441 + k) << 5],
                               tl[__byte_perm(vb, 0, 0x4441 + k) << 5]};
        kiln::cuda::fa2::Mma<bf16>::run(part, a, xw[2 * s], xw[2 * s + 1]);
      }
      acc[0] = fmaf(part[0], sa[u], acc[0]);
      acc[2] = fmaf(part[2], sb[u], acc[2]);
    }
#pragma unroll
    for (int u = 0; u < U; u++) ca[u] = na[u], cb[u] = nb[u], sa[u] = xa[u], sb[u] = xb[u];
  }
  if (t == 0) red[wid][g] = acc[0], red[wid][g + 8] = acc[2];
  __syncthreads();
  if (threadIdx.x < 16 && row0 + threadIdx.x < N) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < KS; w++) v += red[w][threadIdx.x];
    y[row0 + threadIdx.x] = kiln::Num<bf16>::store(v);
  }
}
template <int KS, int U>
static void run_t(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  k_t<KS, U, false><<<(unsigned)((N + 15) / 16), KS * 32, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 64, false), g_code, y, N, K, 6);
}
// KS by N: about 16 warps an SM
static void run_tauto(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  const int64_t tiles = (N + 15) / 16;
  if (tiles * 8 <= 2 * 132 * 16) run_t<8, 2>(x, w, y, N, K);
  else run_t<4, 2>(x, w, y, N, K);
}

// Piece p of the R rows row0… (rows past N read row N − 1): their 16-byte code pieces, absmax
// values, and the 32 x values they multiply — what k_v2 and k_v2h load each step.
template <int R>
struct V2Rows {
  const uint4* cbase;
  const float* abase;
  int KV, apr, cs;
  int64_t row0, N;
  __device__ V2Rows(const Q::Q4& q, int64_t row0_, int64_t N_, int64_t K, int lb)
      : cbase(reinterpret_cast<const uint4*>(q.codes) + row0_ * (K / 32)), abase(q.absmax + ((row0_ * K) >> lb)), KV((int)(K / 32)),
        apr((int)(K >> lb)), cs(lb - 5), row0(row0_), N(N_) {}
  __device__ __forceinline__ void load(const bf16* __restrict__ x, int p, uint4 (&pc)[R], float (&a)[R], float (&xf)[32]) const {
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int rr = row0 + r < N ? r : (int)(N - 1 - row0);
      pc[r] = kiln::cuda::detail::ld_stream(cbase + rr * KV + p);
      a[r] = __ldg(abase + rr * apr + (p >> cs));
    }
#pragma unroll
    for (int j = 0; j < 4; j++) Q::load8<bf16>(x + p * 32 + 8 * j, xf + 8 * j);
  }
};

// k_qgemv4v specialized: M = 1, no double quant, block = 2^lb, MINB blocks an SM asked of ptxas
template <int R, int MINB, int TPB, bool FAKE = false>
__global__ void __launch_bounds__(TPB, MINB) k_v2(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const int64_t row0 = (int64_t)blockIdx.x * R;
  const char* tb = reinterpret_cast<const char*>(tab);
  const V2Rows<R> rows(q, row0, N, K, lb);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  for (int p = threadIdx.x; p < rows.KV; p += TPB) {
    uint4 pc[R];
    float a[R], xf[32];
    rows.load(x, p, pc, a, xf);
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (FAKE) acc[r] += __uint_as_float((pc[r].x ^ pc[r].y ^ pc[r].z ^ pc[r].w) & 0x3fffffffu) * a[r] * xf[r];
      else acc[r] = fmaf(dot32(pc[r], xf, tb), a[r], acc[r]);
    }
  }
  store_block_rows<R, TPB / 32>(acc, row0, N, y);
}

// k_v2's structure with the products of a 16-byte piece (32 weights) summed in f16x2: a byte of
// codes → the pair (code[lo], code[hi]) as half2 from a 256-entry table replicated per lane (32 KB,
// no bank conflicts), one HFMA2 a byte against x's pair converted once to f16x2; the piece's sum
// to f32, then × absmax in f32. ≈ 2 instructions a weight against ≈ 3.5 — a measurement of how
// much the CUDA-core arithmetic costs (f16 accumulation over 16 products: not a production path).
template <int R, int TPB>
__global__ void __launch_bounds__(TPB) k_v2h(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ uint32_t ptab[256 * 32];
  for (int i = threadIdx.x; i < 256 * 32; i += TPB) {
    const int b = i >> 5;
    const __half2 h = __floats2half2_rn(code.f[b & 15], code.f[b >> 4]);
    ptab[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t row0 = (int64_t)blockIdx.x * R;
  const uint32_t* tl = ptab + lane;
  const V2Rows<R> rows(q, row0, N, K, lb);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  for (int p = threadIdx.x; p < rows.KV; p += TPB) {
    uint4 pc[R];
    float a[R], xf[32];
    rows.load(x, p, pc, a, xf);
    __half2 x2[16];
#pragma unroll
    for (int k = 0; k < 16; k++) x2[k] = __floats2half2_rn(xf[2 * k], xf[2 * k + 1]);
#pragma unroll
    for (int r = 0; r < R; r++) {
      __half2 s2 = __floats2half2_rn(0.f, 0.f);
      const uint32_t wv[4] = {pc[r].x, pc[r].y, pc[r].z, pc[r].w};
#pragma unroll
      for (int k = 0; k < 16; k++) {
        const uint32_t b = (wv[k >> 2] >> (8 * (k & 3))) & 0xffu;
        const uint32_t t = tl[b << 5];
        s2 = __hfma2(*reinterpret_cast<const __half2*>(&t), x2[k], s2);
      }
      const float2 f = __half22float2(s2);
      acc[r] = fmaf(f.x + f.y, a[r], acc[r]);
    }
  }
  store_block_rows<R, TPB / 32>(acc, row0, N, y);
}
template <int R, int TPB>
static void run_v2h(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  k_v2h<R, TPB><<<(unsigned)((N + R - 1) / R), TPB, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 64, false), g_code, y, N, K, 6);
}
template <int R, int MINB, int TPB, bool FAKE = false>
static void run_v2(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  k_v2<R, MINB, TPB, FAKE><<<(unsigned)((N + R - 1) / R), TPB, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 64, false), g_code, y, N, K, 6);
}

struct Variant {
  const char* name;
  void (*launch)(const bf16*, const uint8_t*, bf16*, int64_t, int64_t);
};
template <int RW, int U, int WPB, bool FAKE = false>
static void run_w(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  const int64_t rows = (int64_t)RW * WPB;
  k_w<RW, U, WPB, FAKE><<<(unsigned)((N + rows - 1) / rows), WPB * 32, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 64, false), g_code, y, N, K, 6);
}
template <int RW, int U, int WPB>
static void run_ws(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  k_ws<RW, U, WPB><<<(unsigned)((N + RW - 1) / RW), WPB * 32, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 64, false), g_code, y, N, K, 6);
}
// the production path (qlinear4 → the job-table k_qgemv4v), nf4, block 64, no double quant
static void run_old(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  kiln::cuda::qlinear4<bf16>(x, w, nullptr, nullptr, y, 1, N, K, 64, false, NF4);
}

int main(int argc, char** argv) {
  ck(kiln_init(0), "init");
  const int only = argc > 1 ? atoi(argv[1]) : -1;  // one shape (for ncu)
  g_code = Q::code16(NF4);
  const Variant vs[] = {
      {"qlinear4 (k_qgemv4v)", run_old},
      {"w RW1 U4 W4", run_w<1, 4, 4>},
      {"w RW2 U2 W4", run_w<2, 2, 4>},
      {"w RW2 U4 W4", run_w<2, 4, 4>},
      {"w RW4 U2 W4", run_w<4, 2, 4>},
      {"w RW2 U2 W8", run_w<2, 2, 8>},
      {"w RW1 U8 W4", run_w<1, 8, 4>},
      {"ws RW2 U2 W4", run_ws<2, 2, 4>},
      {"ws RW4 U1 W4", run_ws<4, 1, 4>},
      {"ws RW2 U1 W8", run_ws<2, 1, 8>},
      {"t KS4 U2", run_t<4, 2>},
      {"t KS8 U2", run_t<8, 2>},
      {"t KS16 U2", run_t<16, 2>},
      {"t KS4 U4", run_t<4, 4>},
      {"t KS8 U4", run_t<8, 4>},
      {"t KS2 U4", run_t<2, 4>},
      {"t auto", run_tauto},
      {"v2 R4 minb8 128", run_v2<4, 8, 128>},
      {"v2 R4 minb12 128", run_v2<4, 12, 128>},
      {"v2 R4 minb16 128", run_v2<4, 16, 128>},
      {"v2 R2 minb16 128", run_v2<2, 16, 128>},
      {"v2 R8 minb8 128", run_v2<8, 8, 128>},
      {"v2 R4 minb8 64", run_v2<4, 16, 64>},
      {"v2 R8 minb4 256", run_v2<8, 4, 256>},
      {"v2 R2 minb16 64", run_v2<2, 24, 64>},
      {"v2h (f16x2 sums) R4 128", run_v2h<4, 128>},
      {"v2h (f16x2 sums) R8 128", run_v2h<8, 128>},
      {"loads only RW2 U2 W4 (floor)", run_w<2, 2, 4, true>},
      {"loads only RW2 U4 W4 (floor)", run_w<2, 4, 4, true>},
      {"loads only, v2 R4 minb8 128 (its floor)", run_v2<4, 8, 128, true>},
  };
  const int NCHECK = 27;  // the loads-only variants compute nothing checkable
  const int NV = sizeof(vs) / sizeof(vs[0]);
  const int64_t shapes[4][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {12288, 4096}};
  const int COPIES = 8;
  bool ok = true;
  printf("| variant |");
  for (auto& sh : shapes) printf(" %lld×%lld µs (TB/s) |", (long long)sh[0], (long long)sh[1]);
  printf("\n|---|---|---|---|---|\n");
  std::vector<std::vector<double>> t(NV, std::vector<double>(4));
  for (int si = 0; si < 4; si++) {
    if (only >= 0 && si != only) continue;
    const int64_t N = shapes[si][0], K = shapes[si][1], n = N * K;
    float *wf, *xf;
    cudaMalloc(&wf, 4 * n);
    cudaMalloc(&xf, 4 * K);
    bf16 *x, *y, *y0;
    cudaMalloc(&x, 2 * K);
    cudaMalloc(&y, 2 * N);
    cudaMalloc(&y0, 2 * N);
    k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(xf, K, 7, 4.f);
    k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(xf, x, K);
    uint8_t* q4[COPIES];
    const int64_t b4 = kiln::quant::bytes4(n, 64, false);
    for (int c = 0; c < COPIES; c++) {
      k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, n, 100 + c, 0.05f);
      cudaMalloc(&q4[c], b4);
      ck(kiln_quantize4(q4[c], wf, n, 64, 0, NF4), "quantize4");
    }
    run_old(x, q4[0], y0, N, K);
    std::vector<bf16> h0(N), h(N);
    ck(kiln_synchronize(), "sync");
    cudaMemcpy(h0.data(), y0, 2 * N, cudaMemcpyDeviceToHost);
    for (int v = 0; v < NV; v++) {
      cudaMemset(y, 0xff, 2 * N);
      vs[v].launch(x, q4[0], y, N, K);
      ck(kiln_synchronize(), "sync");
      cudaMemcpy(h.data(), y, 2 * N, cudaMemcpyDeviceToHost);
      double num = 0, den = 0;
      for (int64_t i = 0; i < N; i++) {
        const double a = kiln::Num<bf16>::load(h[i]), b = kiln::Num<bf16>::load(h0[i]);
        num += (a - b) * (a - b);
        den += b * b;
      }
      const double rel = sqrt(num / den);
      if (v < NCHECK && !(rel <= 1e-2)) {
        printf("WRONG %s %lld×%lld rel %.3g\n", vs[v].name, (long long)N, (long long)K, rel);
        ok = false;
      }
      t[v][si] = median_us([&](int i) { vs[v].launch(x, q4[i % COPIES], y, N, K); });
    }
    ck(kiln_synchronize(), "sync");
    for (int c = 0; c < COPIES; c++) cudaFree(q4[c]);
    cudaFree(wf);
    cudaFree(xf);
    cudaFree(x);
    cudaFree(y);
    cudaFree(y0);
  }
  for (int v = 0; v < NV; v++) {
    printf("| %s |", vs[v].name);
    for (int si = 0; si < 4; si++) {
      const double bytes = (double)kiln::quant::bytes4(shapes[si][0] * shapes[si][1], 64, false);
      printf(" %.1f (%.2f) |", t[v][si], bytes / t[v][si] / 1e6);
    }
    printf("\n");
  }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
