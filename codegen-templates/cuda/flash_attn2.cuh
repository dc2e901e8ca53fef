// Tiled FlashAttention-2 forward for the cuda target (bf16 / f16 in, f32 accumulation).
//
// The algorithm is FlashAttention-2 (Tri Dao, "FlashAttention-2: Faster Attention with Better
// Parallelism and Work Partitioning", 2023), written here from the paper: one thread block owns a
// tile of BM query rows of one (batch, head); each warp owns WM·16 of those rows, so the softmax
// statistics of a row never leave its warp. K and V tiles of BN keys stream through shared memory
// (cp.async, two stages, so tile j+1 lands while tile j is multiplied); S = Q·Kᵀ and O += P·V run on
// mma.sync m16n8k16 with ldmatrix (.trans for V), P stays in registers as the A operand of P·V, the
// online softmax works in the exp2 domain with scale·log2(e) folded into S, and O is rescaled once
// a tile and divided by the row sum once at the end. No S×S matrix touches memory, and there is no
// workspace beyond q, k, v and y.
//
// Shared-memory rows are 16-byte chunks: for head dims that are a multiple of 64 the chunk index is
// XOR-swizzled with (row & 7), which keeps both the cp.async stores and the ldmatrix loads free of
// bank conflicts; 80 and 96 (not a whole number of 128-byte lines) use rows padded by one chunk,
// which has the same effect (an odd number of chunks a row).
//
// Causal: query i sees keys j <= i + off, off = *offset (device memory) when given, else Tk - S.
// Key tiles wholly past a block's last visible key are never loaded; only the tiles that straddle
// the diagonal (or the end of the keys) pay for per-element masks. GQA/MQA: query head h reads kv
// head h / (Hq / Hkv). A row that sees no key at all comes out NaN, as in the simple kernel.
//
// Every operand is addressed by its own (batch, head, row) strides (kiln_types.h's AttnLayout), so
// a layer's q, k, v are read straight from their [B, S, H, D] projections and y is written in the
// [B, S, H, D] layout the output projection reads: the head transposes around attention cost no
// copy (compiler/codegen/emit.ts, attentionLayouts).
//
// The flash_attention op's other forms, with the semantics of kernels.cuh's k_attention:
// - varlen (cu_seqlens, B = 1, S = Tk packed tokens): query i of sequence s ([cu[s], cu[s+1]))
//   sees keys [cu[s], i] when causal, the whole sequence otherwise. The grid has ceil(S/BM) + N
//   m-blocks (an upper bound on the Q tiles when each sequence starts a new tile; the lengths live
//   on the device); each block finds its (sequence, tile) by a warp scan of cu_seqlens, so a Q tile
//   never crosses a sequence boundary, its key loop covers only its sequence's keys, and causal
//   block skipping works relative to the sequence start. Rows outside [cu[0], cu[N]) are not
//   written (unpad-varlen's cu_seqlens start at 0 and end at S).
// - ALiBi (score += alibi[h] · j) and key_mask (i64 [B, Tk], 0 = hidden key) run in the EXT
//   instantiation: the bias is added after scaling, before the row max (shifted by a per-block
//   constant, which softmax ignores), every tile is masked under a key mask, and a row that sees no
//   key under a key mask gets the mean of V over all Tk keys (the eager form's answer).
//
// Tiles (fa2_launch): hd64 128x64 with Q in registers; hd80/96/128 128x64; hd256 64x32; all 4 warps
// (32 query rows a warp), two blocks an SM. On an H100 the hd128 kernel runs at 350-375 TFLOP/s
// non-causal for S >= 2048, at or just above SDPA's FlashAttention-2 backend in the same run
// (bench/attention.py, bench/results/attention-*.json). What kept it there: few or no register
// spills (each thread's copy addresses advance by fixed steps; with the per-operand strides ptxas
// reports 52 bytes of spill stores for the hd128 plain kernel, timed by bench/attn_layout.cu), masks
// only on diagonal/edge tiles, the scale folded into the exp2's FFMA, and O rescaled only when a
// row max moved (a warp vote).
//
// flash_attention_tiled<T> returns false (and launches nothing) where it does not apply: f32, D !=
// Dv, a head dim outside {64, 80, 96, 128, 256}, a scale <= 0 (the row max is taken on raw
// scores), decode-sized S (< 16: the split-KV kernel is better there), pointers not 16-byte
// aligned or rows of an operand not a multiple of 8 elements apart, S or Tk over 2^30, varlen with
// B != 1, S != Tk, an offset or a key mask, or sizes over the grid limits. detail::fa2_launch runs
// a chosen tile configuration on any S (the benchmark and its correctness grid use it).
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "../common/kiln_types.h"

namespace kiln {
namespace cuda {
namespace fa2 {

// ---------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global → shared, bypassing L1; zero-filled when !pred (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// D += A·B on one m16n8k16 tile (f32 accumulators), and two f32 rounded into the packed pair type.
template <typename T> struct Mma;
#define KILN_FA2_MMA(T, PTX, PAIR, CVT)                                                                          \
  template <> struct Mma<T> {                                                                                    \
    __device__ static __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { \
      asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                       \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                                     \
    }                                                                                                            \
    __device__ static __forceinline__ uint32_t pack(float lo, float hi) {                                        \
      PAIR h = CVT(lo, hi);                                                                                      \
      return *reinterpret_cast<uint32_t*>(&h);                                                                   \
    }                                                                                                            \
  };
KILN_FA2_MMA(bf16, "bf16", __nv_bfloat162, __floats2bfloat162_rn)
KILN_FA2_MMA(f16, "f16", __half2, __floats2half2_rn)
#undef KILN_FA2_MMA

// The warp's WM m16 tiles times the two n8 tiles that one ldmatrix.x4 of B holds: acc[.][n], acc[.][n+1].
template <typename T, int WM, int N>
__device__ __forceinline__ void mma_pair(float (&acc)[WM][N][4], int n, const uint32_t (&a)[WM][4], const uint32_t (&b)[4]) {
#pragma unroll
  for (int mi = 0; mi < WM; mi++) {
    Mma<T>::run(acc[mi][n], a[mi], b[0], b[1]);
    Mma<T>::run(acc[mi][n + 1], a[mi], b[2], b[3]);
  }
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------- shared-memory layout

// Element offset of 16-byte chunk `c` of row `r` in a tile whose rows hold HD 16-bit elements.
template <int HD> struct Layout {
  static constexpr bool kSwizzle = (HD % 64) == 0;
  static constexpr int kStride = kSwizzle ? HD : HD + 8;  // elements a row
  __device__ static __forceinline__ int off(int r, int c) {
    return kSwizzle ? r * HD + ((c ^ (r & 7)) << 3) : r * kStride + (c << 3);
  }
};

// ---------------------------------------------------------------- kernel

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* y;
  int64_t Hq, Hkv, S, Tk;
  float scale_log2;  // scale · log2(e)
  int causal;
  const int64_t* offset;
  const float* alibi;        // [Hq] slopes, or nullptr (EXT kernels only)
  const int64_t* key_mask;   // [B, Tk], 0 = hidden key, or nullptr (EXT kernels only)
  const int32_t* cu_seqlens; // [n_cu] packed sequences (B = 1, S = Tk), or nullptr
  int64_t n_cu;
  AttnLayout L;              // where the rows of q, k, v and y lie (multiples of 8 elements)
};

// HD: head dim; BM query rows a block; BN keys a tile; NW warps (BM = NW · WM · 16);
// QREG: keep the Q fragments in registers for the whole block (else re-read them with ldmatrix);
// EXT: the ALiBi / key-mask kernel (scores biased and scaled before the row max, every tile masked
// when a key mask is given, rows with no visible key under a key mask get the mean of V).
template <typename T, int HD, int BM, int BN, int NW, bool QREG, int MINB, bool EXT>
__global__ void __launch_bounds__(NW * 32, MINB) k_fa2_fwd(const Params p) {
  static_assert(HD % 16 == 0 && BN % 16 == 0, "tile shape");
  constexpr int WM = BM / (NW * 16);  // m16 tiles a warp
  static_assert(WM * NW * 16 == BM && WM >= 1, "BM must be NW * 16 * WM");
  constexpr int NT = NW * 32;
  constexpr int CPR = HD / 8;  // 16-byte chunks a row
  constexpr int KS = HD / 16;  // k16 steps of Q·Kᵀ
  constexpr int NS = BN / 8;   // n8 tiles of S
  constexpr int DT = HD / 8;   // n8 tiles of O
  typedef Layout<HD> L;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * L::kStride;        // [2][BN][stride]
  T* sV = sK + 2 * BN * L::kStride;    // [2][BN][stride]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t h = blockIdx.y;
  const int64_t S = p.S, Tk = p.Tk;
  const int64_t hk = h / (p.Hq / p.Hkv);
  // The block's query rows [m0, q_end) and the keys its rows may see, [k_beg, k_end) with causal
  // query r seeing keys j <= r + off. Rows and keys are indices into q's and k's S and Tk axes.
  int64_t b, m0, q_end, k_beg, k_end, off;
  if (p.cu_seqlens) {
    // varlen (B = 1): a Q tile never crosses a sequence boundary. Sequence s has ceil(len_s / BM)
    // tiles; the grid holds ceil(S / BM) + N >= their total, and block gi (heaviest first, as
    // below) finds its (sequence, tile) by a warp-wide scan of cu_seqlens (every warp does the
    // same scan, so no shared memory or barrier is needed). Blocks past the last tile exit.
    const int64_t gi = (int64_t)gridDim.x - 1 - (int64_t)blockIdx.x;
    const int64_t n_seq = p.n_cu - 1;
    int64_t before = 0, seq_st = -1, seq_en = 0, tile = 0;
    for (int64_t c0 = 0; c0 < n_seq; c0 += 32) {
      const int64_t sq = c0 + lane;
      int64_t st = 0, en = 0, nt = 0;
      if (sq < n_seq) {
        st = p.cu_seqlens[sq], en = p.cu_seqlens[sq + 1];
        nt = en > st ? (en - st + BM - 1) / BM : 0;
      }
      int64_t inc = nt;  // inclusive scan of the tile counts over the warp
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int64_t x = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += x;
      }
      const int64_t excl = before + inc - nt;
      const unsigned hit = __ballot_sync(0xffffffffu, nt > 0 && gi >= excl && gi < excl + nt);
      if (hit) {
        const int src = __ffs(hit) - 1;
        seq_st = __shfl_sync(0xffffffffu, st, src);
        seq_en = __shfl_sync(0xffffffffu, en, src);
        tile = gi - __shfl_sync(0xffffffffu, excl, src);
        break;
      }
      before += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (seq_st < 0) return;  // past the last tile (the grid is an upper bound)
    b = 0, m0 = seq_st + tile * BM, q_end = seq_en, k_beg = seq_st, k_end = seq_en < Tk ? seq_en : Tk, off = 0;
  } else {
    const int m_block = (int)gridDim.x - 1 - (int)blockIdx.x;  // heaviest (causal) blocks first
    b = blockIdx.z, m0 = (int64_t)m_block * BM, q_end = S, k_beg = 0, k_end = Tk;
    off = p.causal ? (p.offset ? *p.offset : Tk - S) : 0;
  }

  // each operand's (batch, head) slab; its rows are qs, ks, vs, ys elements apart
  const T* qg = reinterpret_cast<const T*>(p.q) + b * p.L.q.b + h * p.L.q.h;
  const T* kg = reinterpret_cast<const T*>(p.k) + b * p.L.k.b + hk * p.L.k.h;
  const T* vg = reinterpret_cast<const T*>(p.v) + b * p.L.v.b + hk * p.L.v.h;
  T* yg = reinterpret_cast<T*>(p.y) + b * p.L.y.b + h * p.L.y.h;
  const int64_t qs = p.L.q.s, ks = p.L.k.s, vs = p.L.v.s, ys = p.L.y.s;
  const int64_t* km = EXT && p.key_mask ? p.key_mask + b * Tk : nullptr;

  const int64_t q_last = (m0 + BM < q_end ? m0 + BM : q_end) - 1;  // the block's last real row
  int64_t n_end = k_end;
  if (p.causal && q_last + off + 1 < n_end) n_end = q_last + off + 1;  // past the last row's last key
  const int g = lane >> 2, t = lane & 3;
  const int row_w = warp * WM * 16;  // the warp's first row in the block

  if (n_end <= k_beg) {  // no row of this block sees any key: NaN, or under a key mask the mean of V
    for (int i = tid; i < BM * HD; i += NT) {
      const int64_t r = m0 + i / HD;
      if (r > q_last) continue;
      float val = NAN;
      if (EXT && km) {
        val = 0.f;
        for (int64_t j = 0; j < Tk; j++) val += Num<T>::load(vg[j * vs + i % HD]);
        val /= (float)Tk;
      }
      yg[r * ys + i % HD] = Num<T>::store(val);
    }
    return;
  }
  const int n_blocks = (int)((n_end - k_beg + BN - 1) / BN);

  // From here on rows and keys are 32-bit and relative (fewer registers in the main loop): block
  // row r is query m0 + r, key c is k_beg + c; there are q_rows rows and kn keys, and causal row r
  // sees keys c <= r + diag (diag > -BM here; non-causal: a bound no key reaches).
  const int q_rows = (int)(q_last - m0 + 1), kn = (int)(k_end - k_beg);
  const int64_t dg = m0 + off - k_beg;
  const int diag = p.causal ? (int)(dg < (1 << 30) ? dg : (1 << 30)) : (1 << 30);
  // EXT: ALiBi's key index is taken relative to key k_beg + ashift (the diagonal when causal, else
  // the block's first row), a per-block shift that keeps the biases near the row max small.
  const int ashift = EXT ? (p.causal && dg < (1 << 30) ? diag : (int)(m0 - k_beg)) : 0;
  qg += m0 * qs, yg += m0 * ys;
  kg += k_beg * ks, vg += k_beg * vs;  // (a key mask comes without varlen: k_beg = 0 there)

  // ---- async tile loads
  // Each thread copies a fixed chunk column of every (NT / CPR)-th row, so its shared and global
  // addresses advance by fixed steps (the swizzle term (row & 7) stays the same when the row step is
  // a multiple of 8; global rows are rs elements apart): no per-copy address registers kept alive
  // across the main loop.
  auto load_rows = [&](T* s, const T* g0, int64_t rs, int row0, int rows_total, int R) {
    if constexpr (NT % CPR == 0 && (!L::kSwizzle || (NT / CPR) % 8 == 0)) {
      constexpr int RPP = NT / CPR;  // rows a pass
      const int r0 = tid / CPR, c = tid % CPR;
      const uint32_t d0 = smem_u32(s + L::off(r0, c));
      const T* src = g0 + (int64_t)(row0 + r0) * rs + c * 8;
      const int64_t step = RPP * rs;            // one pointer bumped a pass: no address kept per pass
      const int left = rows_total - row0 - r0;  // rows of this thread's column still in bounds
#pragma unroll
      for (int i = 0; i < (R + RPP - 1) / RPP; i++, src += step) {
        if (R % RPP == 0 || r0 + i * RPP < R) {
          const bool ok = i * RPP < left;
          cp_async16(d0 + (uint32_t)(i * RPP * L::kStride * sizeof(T)), ok ? (const void*)src : (const void*)g0, ok);
        }
      }
    } else {
      for (int i = tid; i < R * CPR; i += NT) {
        const int r = i / CPR, c = i % CPR;
        const int gr = row0 + r;
        const bool ok = gr < rows_total;
        cp_async16(smem_u32(s + L::off(r, c)), ok ? (const void*)(g0 + (int64_t)gr * rs + c * 8) : (const void*)g0, ok);
      }
    }
  };
  load_rows(sQ, qg, qs, 0, q_rows, BM);
  load_rows(sK, kg, ks, 0, kn, BN);
  load_rows(sV, vg, vs, 0, kn, BN);
  cp_async_commit();

  float o[WM][DT][4];
#pragma unroll
  for (int mi = 0; mi < WM; mi++)
#pragma unroll
    for (int d = 0; d < DT; d++) o[mi][d][0] = o[mi][d][1] = o[mi][d][2] = o[mi][d][3] = 0.f;
  float m_run[WM][2], l_run[WM][2];
#pragma unroll
  for (int mi = 0; mi < WM; mi++) m_run[mi][0] = m_run[mi][1] = -INFINITY, l_run[mi][0] = l_run[mi][1] = 0.f;

  uint32_t qf[QREG ? WM : 1][QREG ? KS : 1][4];
  const float alibi_l2 = EXT && p.alibi ? p.alibi[h] * 1.4426950408889634f : 0.f;  // slope · log2(e)

  // per-lane ldmatrix coordinates (row within a 16-row group, chunk within a k16 step)
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_chk = lane >> 4;        // Q (A, row-major)
  const int b_row = (lane & 7) + ((lane >> 4) << 3), b_chk = (lane >> 3) & 1;       // K (B, n-major)
  const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_chk = lane >> 4;        // V (B via .trans)
  const uint32_t sQa = smem_u32(sQ), sKa = smem_u32(sK), sVa = smem_u32(sV);
  constexpr uint32_t STAGE_BYTES = BN * L::kStride * sizeof(T);

  for (int j = 0; j < n_blocks; j++) {
    cp_async_wait<0>();
    __syncthreads();  // tile j is in; every warp is done with tile j-1, so its stage may be refilled
    if (QREG && j == 0) {
#pragma unroll
      for (int mi = 0; mi < WM; mi++)
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
          ldsm_x4(qf[mi][ks], sQa + 2u * L::off(row_w + mi * 16 + a_row, ks * 2 + a_chk));
    }
    if (j + 1 < n_blocks) {
      const int st = (j + 1) & 1;
      load_rows(sK + st * BN * L::kStride, kg, ks, (j + 1) * BN, kn, BN);
      load_rows(sV + st * BN * L::kStride, vg, vs, (j + 1) * BN, kn, BN);
    }
    cp_async_commit();
    const uint32_t kb = sKa + (j & 1) * STAGE_BYTES, vb = sVa + (j & 1) * STAGE_BYTES;
    const int n0 = j * BN;

    // ---- S = Q · Kᵀ
    float s[WM][NS][4];
#pragma unroll
    for (int mi = 0; mi < WM; mi++)
#pragma unroll
      for (int n = 0; n < NS; n++) s[mi][n][0] = s[mi][n][1] = s[mi][n][2] = s[mi][n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
      uint32_t a[WM][4];
#pragma unroll
      for (int mi = 0; mi < WM; mi++) {
        if (QREG) {
#pragma unroll
          for (int e = 0; e < 4; e++) a[mi][e] = qf[QREG ? mi : 0][QREG ? ks : 0][e];
        } else {
          ldsm_x4(a[mi], sQa + 2u * L::off(row_w + mi * 16 + a_row, ks * 2 + a_chk));
        }
      }
#pragma unroll
      for (int np = 0; np < NS / 2; np++) {
        uint32_t bk[4];
        ldsm_x4(bk, kb + 2u * L::off(np * 16 + b_row, ks * 2 + b_chk));
        mma_pair<T>(s, 2 * np, a, bk);
      }
    }

    // ---- mask (only tiles that straddle the diagonal or the end of the keys, or every tile under a
    // key mask), online softmax. The plain kernel takes the max on raw scores (scale > 0) and folds
    // scale·log2(e) into one FFMA before each exp2; the EXT kernel first maps each score to
    // (scale·s + slope·(j − k_beg − ashift))·log2(e) — the op's slope·j shifted by a per-block
    // constant, which softmax ignores. m_run lives in that scaled domain.
    const bool need_mask = (n0 + BN > kn) || (p.causal && n0 + BN - 1 > diag) || (EXT && km);
    if (need_mask) {
#pragma unroll
      for (int mi = 0; mi < WM; mi++) {
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          // last visible key of this row, relative to the tile and clamped to [-1, BN]
          const int row = row_w + mi * 16 + g + hf * 8;
          int l = kn - 1 - n0;
          if (diag + row - n0 < l) l = diag + row - n0;
          const int lim = l < -1 ? -1 : (l > BN ? BN : l);
#pragma unroll
          for (int n = 0; n < NS; n++) {
#pragma unroll
            for (int e = 0; e < 2; e++)
              if (n * 8 + 2 * t + e > lim) s[mi][n][2 * hf + e] = -INFINITY;
          }
        }
      }
      if (EXT && km) {  // hidden keys (the columns are the same for every row of the thread)
        const int lim = kn - n0;
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
          for (int e = 0; e < 2; e++) {
            const int c = n * 8 + 2 * t + e;
            if (c < lim && km[n0 + c] == 0) {
#pragma unroll
              for (int mi = 0; mi < WM; mi++) s[mi][n][e] = s[mi][n][2 + e] = -INFINITY;
            }
          }
        }
      }
    }
    const float sl2 = p.scale_log2;
    if constexpr (EXT) {
      const float base = alibi_l2 * (float)(n0 - ashift + 2 * t);
#pragma unroll
      for (int mi = 0; mi < WM; mi++)
#pragma unroll
        for (int n = 0; n < NS; n++)
#pragma unroll
          for (int e = 0; e < 4; e++) s[mi][n][e] = fmaf(s[mi][n][e], sl2, fmaf(alibi_l2, (float)(n * 8 + (e & 1)), base));
    }
    const float mult = EXT ? 1.f : sl2;
#pragma unroll
    for (int mi = 0; mi < WM; mi++) {
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < NS; n++) mx = fmaxf(mx, fmaxf(s[mi][n][2 * hf], s[mi][n][2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[mi][hf], mx * mult);
        const float mu = (m_new == -INFINITY) ? 0.f : m_new;
        const float a = ex2(m_run[mi][hf] - mu);  // exactly 1 when the row max did not move
        m_run[mi][hf] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < NS; n++) {
#pragma unroll
          for (int e = 0; e < 2; e++) {
            const float pe = ex2(fmaf(s[mi][n][2 * hf + e], mult, -mu));
            s[mi][n][2 * hf + e] = pe;
            sum += pe;
          }
        }
        l_run[mi][hf] = l_run[mi][hf] * a + sum;  // this lane's share; the quad is summed at the end
        if (__any_sync(0xffffffffu, a != 1.f)) {  // rescale O only when some row of the warp has a new max
#pragma unroll
          for (int d = 0; d < DT; d++) o[mi][d][2 * hf] *= a, o[mi][d][2 * hf + 1] *= a;
        }
      }
    }

    // ---- O += P · V (P from registers, rounded to T, as the A operand)
    uint32_t pk[WM][NS][2];
#pragma unroll
    for (int mi = 0; mi < WM; mi++)
#pragma unroll
      for (int n = 0; n < NS; n++) {
        pk[mi][n][0] = Mma<T>::pack(s[mi][n][0], s[mi][n][1]);
        pk[mi][n][1] = Mma<T>::pack(s[mi][n][2], s[mi][n][3]);
      }
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      uint32_t pa[WM][4];
#pragma unroll
      for (int mi = 0; mi < WM; mi++) {
        pa[mi][0] = pk[mi][2 * kk][0];
        pa[mi][1] = pk[mi][2 * kk][1];
        pa[mi][2] = pk[mi][2 * kk + 1][0];
        pa[mi][3] = pk[mi][2 * kk + 1][1];
      }
#pragma unroll
      for (int dp = 0; dp < HD / 16; dp++) {
        uint32_t bv[4];
        ldsm_x4_t(bv, vb + 2u * L::off(kk * 16 + v_row, dp * 2 + v_chk));
        mma_pair<T>(o, 2 * dp, pa, bv);
      }
    }
  }
  cp_async_wait<0>();

  // ---- epilogue: O / l, rounded to T
  // Under a key mask a row that saw no key (l = 0) gets the mean of V over all Tk keys: the block
  // computes it once into shared memory (sQ is free now) if any of its rows needs it.
  float* vmean = reinterpret_cast<float*>(smem_raw);
  if constexpr (EXT) {
    bool empty = false;
    if (km) {
#pragma unroll
      for (int mi = 0; mi < WM; mi++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) empty |= m_run[mi][hf] == -INFINITY && row_w + mi * 16 + g + hf * 8 < q_rows;
    }
    if (__syncthreads_or(empty)) {
      for (int d = tid; d < HD; d += NT) {
        float acc = 0.f;
        for (int64_t j = 0; j < Tk; j++) acc += Num<T>::load(vg[j * vs + d]);
        vmean[d] = acc / (float)Tk;
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int mi = 0; mi < WM; mi++) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      float l = l_run[mi][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = 1.f / l;  // l == 0 (no visible key): 0 · inf = NaN, as the simple kernel
      const int row = row_w + mi * 16 + g + hf * 8;
      if (row < q_rows) {
        T* yr = yg + (int64_t)row * ys;
        if (EXT && km && m_run[mi][hf] == -INFINITY) {
#pragma unroll
          for (int d = 0; d < DT; d++)
            *reinterpret_cast<uint32_t*>(yr + d * 8 + 2 * t) = Mma<T>::pack(vmean[d * 8 + 2 * t], vmean[d * 8 + 2 * t + 1]);
          continue;
        }
#pragma unroll
        for (int d = 0; d < DT; d++) {
          const uint32_t v2 = Mma<T>::pack(o[mi][d][2 * hf] * inv, o[mi][d][2 * hf + 1] * inv);
          *reinterpret_cast<uint32_t*>(yr + d * 8 + 2 * t) = v2;
        }
      }
    }
  }
}

// Sets the dynamic shared-memory limit of one kernel instantiation once (per process: one device
// at a time here).
template <typename T, int HD, int BM, int BN, int NW, bool QREG, int MINB, bool EXT>
bool prepare(int smem) {
  static bool attr_done = false;
  if (!attr_done) {
    if (cudaFuncSetAttribute(k_fa2_fwd<T, HD, BM, BN, NW, QREG, MINB, EXT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    attr_done = true;
  }
  return true;
}

template <typename T, int HD, int BM, int BN, int NW, bool QREG, int MINB>
bool launch(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, double scale,
            bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask, const int32_t* cu_seqlens, int64_t n_cu,
            cudaStream_t stream, const AttnLayout& L) {
  constexpr int smem = (BM + 4 * BN) * Layout<HD>::kStride * (int)sizeof(T);
  const bool ext = alibi != nullptr || key_mask != nullptr;
  if (!(ext ? prepare<T, HD, BM, BN, NW, QREG, MINB, true>(smem) : prepare<T, HD, BM, BN, NW, QREG, MINB, false>(smem))) return false;
  Params p;
  p.q = q, p.k = k, p.v = v, p.y = y;
  p.Hq = Hq, p.Hkv = Hkv, p.S = S, p.Tk = Tk;
  p.scale_log2 = (float)(scale * 1.4426950408889634);
  p.causal = causal ? 1 : 0;
  p.offset = offset;
  p.alibi = alibi, p.key_mask = key_mask, p.cu_seqlens = cu_seqlens, p.n_cu = n_cu;
  p.L = L;
  // varlen: ceil(S / BM) + N blocks bound the tiles when every sequence starts a new one
  const int64_t mb = (S + BM - 1) / BM + (cu_seqlens ? n_cu - 1 : 0);
  if (mb > 0x7fffffffLL) return false;
  const dim3 grid((unsigned)mb, (unsigned)Hq, (unsigned)B);
  if (ext) k_fa2_fwd<T, HD, BM, BN, NW, QREG, MINB, true><<<grid, NW * 32, smem, stream>>>(p);
  else k_fa2_fwd<T, HD, BM, BN, NW, QREG, MINB, false><<<grid, NW * 32, smem, stream>>>(p);
  return true;
}

}  // namespace fa2

namespace detail {

// Tile configurations. variant < 0 picks the default for the head dim; the benchmark times others.
// `L` places the operands' rows (kiln_types.h); without it they are row-major.
template <typename T>
bool fa2_launch(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D,
                int64_t Dv, double scale, bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask,
                const int32_t* cu_seqlens, int64_t n_cu, cudaStream_t stream, int variant, const AttnLayout& L) {
  if (!(scale > 0) || D != Dv || B <= 0 || Hq <= 0 || Hkv <= 0 || S <= 0 || Tk <= 0 || Hq % Hkv != 0) return false;
  if (B > 65535 || Hq > 65535 || S > (int64_t)1 << 30 || Tk > (int64_t)1 << 30) return false;
  if ((((uintptr_t)q) | ((uintptr_t)k) | ((uintptr_t)v) | ((uintptr_t)y)) & 15) return false;
  // every row 16-byte aligned too (cp.async of 16-byte chunks)
  const HeadStrides hs[4] = {L.q, L.k, L.v, L.y};
  for (const HeadStrides& x : hs)
    if ((x.b | x.h | x.s) & 7) return false;
  if (cu_seqlens && (B != 1 || S != Tk || n_cu < 2 || offset || key_mask)) return false;  // the op's varlen form only
#define KILN_FA2(HD, BM, BN, NW, QREG, MINB) \
  return fa2::launch<T, HD, BM, BN, NW, QREG, MINB>(q, k, v, y, B, Hq, Hkv, S, Tk, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, stream, L)
  switch (D) {
    case 64: KILN_FA2(64, 128, 64, 4, true, 2);
    case 80: KILN_FA2(80, 128, 64, 4, false, 2);
    case 96: KILN_FA2(96, 128, 64, 4, false, 2);
    case 128:
      switch (variant) {
        case 1: KILN_FA2(128, 128, 32, 4, false, 2);
        default: KILN_FA2(128, 128, 64, 4, false, 2);
      }
    case 256: KILN_FA2(256, 64, 32, 4, false, 2);
    default: return false;
  }
#undef KILN_FA2
}
template <typename T>
bool fa2_launch(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D,
                int64_t Dv, double scale, bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask,
                const int32_t* cu_seqlens, int64_t n_cu, cudaStream_t stream, int variant) {
  return fa2_launch<T>(q, k, v, y, B, Hq, Hkv, S, Tk, D, Dv, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, stream, variant,
                       row_major_attention(Hq, Hkv, S, Tk, D, Dv));
}

}  // namespace detail

// The fast path of the flash_attention op (kernels.cuh's flash_attention tries it first). All
// pointers are device memory; nullptr = absent. Returns false, launching nothing, where it does
// not apply (the caller's simple kernel then runs). `L` places the operands' rows (kiln_types.h);
// without it they are row-major.
template <typename T>
bool flash_attention_tiled(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk,
                           int64_t D, int64_t Dv, double scale, bool causal, const int64_t* offset, const float* alibi,
                           const int64_t* key_mask, const int32_t* cu_seqlens, int64_t n_cu, cudaStream_t stream, const AttnLayout& L) {
  if (S < 16) return false;  // decode-sized: the split-KV kernel wins there
  return detail::fa2_launch<T>(q, k, v, y, B, Hq, Hkv, S, Tk, D, Dv, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, stream, -1, L);
}
// f32 is not handled (no 16-bit tensor-core path): the caller falls back.
template <>
inline bool flash_attention_tiled<float>(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, int64_t, double, bool, const int64_t*, const float*, const int64_t*, const int32_t*,
                                         int64_t, cudaStream_t, const AttnLayout&) {
  return false;
}
template <typename T>
bool flash_attention_tiled(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk,
                           int64_t D, int64_t Dv, double scale, bool causal, const int64_t* offset, const float* alibi,
                           const int64_t* key_mask, const int32_t* cu_seqlens, int64_t n_cu, cudaStream_t stream) {
  return flash_attention_tiled<T>(q, k, v, y, B, Hq, Hkv, S, Tk, D, Dv, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, stream,
                                  row_major_attention(Hq, Hkv, S, Tk, D, Dv));
}

}  // namespace cuda
}  // namespace kiln
