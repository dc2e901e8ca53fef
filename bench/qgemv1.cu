// Experiment: the 4-bit decode GEMV at M = 1. qlinear4's paths (k_qgemv4v, the reference of
// the check, and k_qgemv4mma) against kernels that decouple the weight loads from the decoding:
// k_qgemv4r (a TMA ring of 2 KB stages fed by one producer thread, 16 consumer warps decoding on
// the tensor cores), v3 (k_qgemv4v's access pattern with D units a thread in flight by cp.async),
// the lean tensor-core kernel t, k_qgemv4v specialized (v2), the same with f16x2 sums (v2h), and
// loads-only floors (v2's pattern; k_qgemv4r's ring with and without its absmax/x reads, and with
// 2 KB contiguous stages). Llama-2-7B shapes, nf4 block 64, bf16 x, 8 weight copies rotated
// (> L2), graph of 20 calls, median of 15. Checks each computing variant against k_qgemv4v
// (rel L2 ≤ 1e-2) first (the loads-only floors compute nothing and are not checked).
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/qgemv1 bench/qgemv1.cu
//   bench/tmp/qgemv1 [shape index]   (one shape only: for ncu)
// Its kernels read the absmax in block order, so the weights here are quantized with no row length
// (kiln_quant.h tiles4 = 0); qlinear4 then takes its block-order paths (not k_qgemv4p).
#include "common/kiln_types.h"
#include "cuda/quant.cuh"
#include "graph_timer.cuh"
#include "qbench.cuh"
#include <algorithm>
#include <vector>

namespace kiln {
namespace cuda {
namespace qdetail {
// The decode GEMV for M ≤ 4 rows of x fed by TMA (sm_90a; bf16/f16, K a multiple of 256, block a
// multiple of 64). What bounds k_qgemv4v at M = 1 (bench/NOTES.md): each thread loads its pieces
// into registers, waits, decodes, and only other blocks' loads overlap its arithmetic — at
// K = 4096 a thread has one piece a row, so a kernel is one wave of loads followed by one wave of
// decoding (7.7 µs where the same loads alone take 4.7). Here the loads never wait on the
// arithmetic: a producer thread streams the weight by TMA into a ring of 32 shared-memory stages
// (2 KB each: 16 rows × 256 weights, two 8-row boxes with the 128-byte swizzle), 16 consumer warps
// decode stages as they land and hand them back through mbarriers, so each SM keeps ≈ 64 KB of
// the weight in flight whatever the shape.
// - tile = 16 output rows (paired: 8 of gate and the same 8 of up): box 0 holds A rows 0…7, box 1
//   rows 8…15; stage i of a tile = k in [256 i, 256 i + 256). A persistent block walks its tiles
//   (blockIdx.x, + gridDim.x, …) and its stages in order; stage s goes to warps 2(s mod 8) and
//   2(s mod 8) + 1, which take its halves h = 0, 1 (k in 256 i + 128 h + [0, 128)).
// - lane (g, t) of a warp reads the 16 bytes (32 weights) t of its half of A rows g and g + 8;
//   mma m16n8k16 step j (of 8) takes byte 2j of each as the k pair (2t, 2t + 1) and byte 2j + 1 as
//   (2t + 8, 2t + 9) — the decode is k_qgemv4mma's: a byte → the pair of 16-bit code values from a
//   table replicated per lane (32 KB, no bank conflicts), already an A register.
// - a 64-weight absmax chunk is two lanes' pieces (t = 0, 1 or 2, 3), so the mma's 16 k mix two
//   chunks: B's column 2m + c carries row m of x only on the lanes t with t / 2 = c (zeros
//   elsewhere), and C[., 2m + c] is chunk c's sum for row m, scaled by its own absmax.
// - A row g lives in smem row π(g) of its box, π(2p) = p, π(2p + 1) = p + 4: with the swizzle
//   (16-byte unit u of smem row r at u ^ r) the 8 lanes of each quarter-warp then read 8 different
//   bank groups.
// - at a tile's end the warps' sums meet in shared memory (double-buffered by tile parity, one
//   barrier among the consumers), and bias, residual and silu·up (paired) are applied once.
// Not kept in qlinear4: slower than k_qgemv4v at every shape (bench/NOTES.md, "The 4-bit GEMV at M = 1:
// three pipelined designs"). (The producer/consumer TMA ring follows CUTLASS 3 and FlashAttention-3, the split of decoding
// from the tensor-core product Marlin, Frantar et al. 2024; the code is ours.)
namespace q4r {
constexpr int RING = 64 * 1024, CW = 16, THREADS = (CW + 1) * 32;
constexpr int TAB_BYTES = 256 * 32 * 4;
template <int MR, int BK>
struct Smem {
  static constexpr int STAGE_BYTES = 2048 * BK, STAGES = RING / STAGE_BYTES;
  static constexpr int RED = 2 * CW * MR * 16 * 4;
  // ring (1024-aligned), table, partial sums, 2·STAGES mbarriers, + alignment slack
  static constexpr int BYTES = 1024 + RING + TAB_BYTES + RED + 2 * STAGES * 8;  // + x: MR·K 16-bit values
};
__host__ __device__ constexpr int pi_row(int g) { return (g & 1) ? 4 + (g >> 1) : (g >> 1); }
}  // namespace q4r

template <typename T>
struct Q4Maps {
  CUtensorMap m[4];  // job i's codes: K/2 bytes × N rows, boxes of 128 bytes × 8 rows
};

template <typename T, int MR, bool DQ, int BK = 1, int FAKE = 0, bool FLAT = false>
__global__ void __launch_bounds__(q4r::THREADS, 1)
    k_qgemv4r(const T* __restrict__ x, const __grid_constant__ Q4Jobs<T> J, const __grid_constant__ Q4Maps<T> maps, Code16 code, int64_t K, int lb) {
#ifdef KILN_I8W
  using namespace q4r;
  static_assert(MR >= 1 && MR <= 4, "k_qgemv4r: at most 4 rows of x (2 columns of B each)");
  constexpr int STAGE_BYTES = Smem<MR, BK>::STAGE_BYTES, STAGES = Smem<MR, BK>::STAGES, G = 8 / BK;  // G: warp groups (2·BK warps a stage)
  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const uint32_t ring = (raw + 1023) & ~1023u;
  uint8_t* base = smem_raw + (ring - raw);
  uint32_t* tab = reinterpret_cast<uint32_t*>(base + STAGES * STAGE_BYTES);
  float* red = reinterpret_cast<float*>(base + STAGES * STAGE_BYTES + TAB_BYTES);  // [2][CW][MR][16]
  const uint32_t full = ring + STAGES * STAGE_BYTES + TAB_BYTES + Smem<MR, BK>::RED, empty = full + STAGES * 8;
  T* xs = reinterpret_cast<T*>(base + STAGES * STAGE_BYTES + TAB_BYTES + Smem<MR, BK>::RED + 2 * STAGES * 8);  // x, MR rows of K
  const int64_t tiles = J.first[J.n], KS = K / (256 * BK), KC = K / 64;
  const int H = J.pair ? 8 : 16;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) i8w::bar_init(full + 8 * s, 1), i8w::bar_init(empty + 8 * s, 2 * BK);  // empty: the stage's 2·BK warps
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x >= CW * 32) {  // the producer warp; one thread issues
    if (threadIdx.x == CW * 32) {
      uint32_t s = 0;
      for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int ji = job_of_chunk(J, tile);
        const int64_t row0 = (tile - J.first[ji]) * H;
        const CUtensorMap* ma = &maps.m[ji];
        const CUtensorMap* mb = &maps.m[J.pair ? 1 : ji];
        const int rb = (int)(J.pair ? row0 : row0 + 8);
        for (int64_t i = 0; i < KS; i++, s++) {
          const uint32_t st = s % STAGES, fb = full + 8 * st, dst = ring + st * STAGE_BYTES;
          i8w::bar_wait(empty + 8 * st, ((s / STAGES) & 1) ^ 1);
          i8w::bar_expect(fb, STAGE_BYTES);
#pragma unroll
          for (int b = 0; b < BK; b++) {
            if (FLAT) {  // benchmarks: the same bytes as 2 KB contiguous pieces (map: 128-byte rows of the flat weight)
              const int fr = (int)(((tile * KS + i) * BK + b) * 16);
              i8w::tma2d(dst + 2048 * b, ma, 0, fr, fb);
              i8w::tma2d(dst + 2048 * b + 1024, mb, 0, fr + 8, fb);
            } else {
              i8w::tma2d(dst + 2048 * b, ma, (int)(128 * (BK * i + b)), (int)row0, fb);
              i8w::tma2d(dst + 2048 * b + 1024, mb, (int)(128 * (BK * i + b)), rb, fb);
            }
          }
        }
      }
    }
    return;
  }
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, p = w / (2 * BK), bx = (w / 2) % BK, h = w & 1;
  for (int i = threadIdx.x; i < 256 * 8; i += CW * 32) {
    const int b = i >> 3;
    const uint32_t v = fa2::Mma<T>::pack(code.f[b & 15], code.f[b >> 4]);
    reinterpret_cast<uint4*>(tab)[i] = make_uint4(v, v, v, v);
  }
  for (int64_t i = threadIdx.x; i < MR * K / 8; i += CW * 32) reinterpret_cast<uint4*>(xs)[i] = __ldg(reinterpret_cast<const uint4*>(x) + i);
  asm volatile("bar.sync 1, %0;" ::"n"(CW * 32) : "memory");  // table and x are in place (the producer never waits on this)
  const uint32_t* tl = tab + lane;  // this lane's copy: pair b at tl[32 b]
  // this lane's two A rows in the stage: smem row π(g) of box 0 and of box 1, unit 4h + t swizzled
  const int pr = q4r::pi_row(g);
  const uint32_t off = 2048 * bx + pr * 128 + (((4 * h + t) ^ pr) << 4);
  // B: row m = g / 2 of x on the lanes whose piece is in chunk c = g % 2 of the half
  const bool xl = g < 2 * MR && (t >> 1) == (g & 1);
  const uint4* xp = reinterpret_cast<const uint4*>(xs + (int64_t)(xl ? g >> 1 : 0) * K + 256 * bx + 128 * h + 32 * t);
  const int lc = lb - 6;
  const int64_t cpb = J.j[0].q.block / 64;
  auto blk = [&](int64_t c) { return lc >= 0 ? c >> lc : c / cpb; };
  // The group's units are the block's stages p, p + G, …: unit (j, i) = stage i of the block's
  // tile j. What a unit needs besides its stage (its rows' absmax, its x) is read one unit ahead.
  struct Unit {
    int64_t j, i;     // local tile, stage in it (j ≥ the block's tiles: none)
    int64_t ra, rb;   // the lane's two weight rows (clamped to N − 1)
    int ji;
  };
  const int64_t ntile = tiles > blockIdx.x ? (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  auto place = [&](Unit& u) {  // i may be ≥ KS: carry into the next tiles
    while (u.i >= KS && u.j < ntile) u.i -= KS, u.j++;
    if (u.j >= ntile) return;
    const int64_t tile = blockIdx.x + u.j * gridDim.x;
    u.ji = job_of_chunk(J, tile);
    const int64_t N = J.j[u.ji].N, row0 = (tile - J.first[u.ji]) * H;
    const int64_t a = row0 + pr, b = J.pair ? row0 + pr : row0 + 8 + pr;
    u.ra = a < N ? a : N - 1, u.rb = b < N ? b : N - 1;
    if (u.i < G && t < MR) {  // a new tile: its rows' absmax lines on their way into L1
      const Q4& qa = J.j[u.ji].q;
      const Q4& qb = J.j[J.pair ? 1 : u.ji].q;
      if (DQ) {
        for (int64_t c = 0; c < KC; c += 128) prefetch_l1(qa.acode + blk(u.ra * KC + c)), prefetch_l1(qb.acode + blk(u.rb * KC + c));
      } else {
        for (int64_t c = 0; c < KC; c += 32) prefetch_l1(qa.absmax + blk(u.ra * KC + c)), prefetch_l1(qb.absmax + blk(u.rb * KC + c));
      }
    }
  };
  auto fetch = [&](const Unit& u, float (&am)[4], uint32_t (&xr)[16]) {
    if (u.j >= ntile || FAKE == 2) return;
    if (t < MR) {
      const Q4& qa = J.j[u.ji].q;
      const Q4& qb = J.j[J.pair ? 1 : u.ji].q;
      const float meana = DQ ? __ldg(qa.mean) : 0.f, meanb = DQ ? __ldg(qb.mean) : 0.f;
      const int64_t ca = u.ra * KC + 4 * (BK * u.i + bx) + 2 * h, cb = u.rb * KC + 4 * (BK * u.i + bx) + 2 * h;
      am[0] = absmax_as<DQ>(qa, meana, blk(ca)), am[1] = absmax_as<DQ>(qa, meana, blk(ca + 1));
      am[2] = absmax_as<DQ>(qb, meanb, blk(cb)), am[3] = absmax_as<DQ>(qb, meanb, blk(cb + 1));
    }
    if (xl) {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const uint4 v = xp[u.i * 32 * BK + j];
        xr[4 * j] = v.x, xr[4 * j + 1] = v.y, xr[4 * j + 2] = v.z, xr[4 * j + 3] = v.w;
      }
    }
  };
  float acc[2] = {0.f, 0.f};
  int64_t done = 0;  // tiles whose sums this warp has handed in
  // hand in the sums of local tile `done` (every consumer warp does, in order: one barrier each)
  auto flush = [&]() {
    const int64_t tile = blockIdx.x + done * gridDim.x;
    const int ji = job_of_chunk(J, tile);
    const int64_t N = J.j[ji].N, row0 = (tile - J.first[ji]) * H;
    float* rd = red + (done & 1) * (CW * MR * 16);
    if (t < MR) rd[(w * MR + t) * 16 + g] = acc[0], rd[(w * MR + t) * 16 + g + 8] = acc[1];
    acc[0] = acc[1] = 0.f;
    asm volatile("bar.sync 1, %0;" ::"n"(CW * 32) : "memory");
    if (threadIdx.x < H * MR) {
      const int r = threadIdx.x / MR, m = threadIdx.x % MR;  // A row r (r < 8 paired: gate's; r + 8: up's)
      const int64_t row = row0 + (r < 8 ? q4r::pi_row(r) : 8 + q4r::pi_row(r - 8));
      if (row < N) {
        auto value = [&](int ar, const Q4Job<T>& jb) {
          float v = jb.bias ? (float)Num<T>::load(jb.bias[row]) : 0.f;
#pragma unroll
          for (int ww = 0; ww < CW; ww++) v += rd[(ww * MR + m) * 16 + ar];
          if (jb.res) v += (float)Num<T>::load(jb.res[m * N + row]);  // fuse-residual's add, rounded once with the rest
          return v;
        };
        store_out(J, J.pair, ji, m * N + row, value(r, J.j[ji]), J.pair ? value(r + 8, J.j[1]) : 0.f);
      }
    }
    done++;
  };
  Unit cu = {0, p, 0, 0, 0};
  place(cu);
  float am[4] = {0.f, 0.f, 0.f, 0.f};
  uint32_t xr[16];
#pragma unroll
  for (int j = 0; j < 16; j++) xr[j] = 0u;
  fetch(cu, am, xr);
  while (cu.j < ntile) {
    Unit nx = cu;
    nx.i += G;
    place(nx);
    float amn[4] = {0.f, 0.f, 0.f, 0.f};
    uint32_t xn[16];
#pragma unroll
    for (int j = 0; j < 16; j++) xn[j] = 0u;
    fetch(nx, amn, xn);  // the next unit's absmax and x in flight while this one is decoded
    while (done < cu.j) flush();
    const uint32_t s = (uint32_t)(cu.j * KS + cu.i), st = s % STAGES;
    i8w::bar_wait(full + 8 * st, (s / STAGES) & 1);
    const uint8_t* stg = base + st * STAGE_BYTES;
    const uint4 ca = *reinterpret_cast<const uint4*>(stg + off), cb = *reinterpret_cast<const uint4*>(stg + 1024 + off);
    i8w::release(empty, (int)st);  // the codes are in registers: the stage goes back
    float p0[4] = {0.f, 0.f, 0.f, 0.f}, p1[4] = {0.f, 0.f, 0.f, 0.f};  // two chains of 4 mma
    if (FAKE) p0[0] = __uint_as_float((ca.x ^ ca.y ^ cb.z ^ cb.w) & 0x3fffffffu);  // the loads alone (benchmarks)
#pragma unroll
    for (int j = 0; j < (FAKE ? 0 : 8); j++) {
      const uint32_t va = j < 2 ? ca.x : j < 4 ? ca.y : j < 6 ? ca.z : ca.w;
      const uint32_t vb = j < 2 ? cb.x : j < 4 ? cb.y : j < 6 ? cb.z : cb.w;
      const int k = 2 * (j & 1);
      const uint32_t a[4] = {tl[__byte_perm(va, 0, 0x4440 + k) << 5], tl[__byte_perm(vb, 0, 0x4440 + k) << 5], tl[__byte_perm(va, 0, 0x4441 + k) << 5],
                             tl[__byte_perm(vb, 0, 0x4441 + k) << 5]};
      fa2::Mma<T>::run(j & 1 ? p1 : p0, a, xr[2 * j], xr[2 * j + 1]);
    }
    acc[0] = fmaf(p0[0] + p1[0], am[0], fmaf(p0[1] + p1[1], am[1], acc[0]));
    acc[1] = fmaf(p0[2] + p1[2], am[2], fmaf(p0[3] + p1[3], am[3], acc[1]));
    cu = nx;
#pragma unroll
    for (int j = 0; j < 4; j++) am[j] = amn[j];
#pragma unroll
    for (int j = 0; j < 16; j++) xr[j] = xn[j];
  }
  while (done < ntile) flush();
#else
  __trap();  // never launched: the host asks qgemv4r_ok first
#endif
}

// Whether k_qgemv4r runs here: an sm_90 device, the kernel built for sm_90a, the tensor-map encoder.
template <typename T>
static bool qgemv4r_ok() {
  static const bool ok = [] {
    cudaFuncAttributes fa;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaFuncGetAttributes(&fa, k_qgemv4r<T, 1, false>) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major == 9 && fa.binaryVersion == 90 && i8w::encoder() != nullptr;
  }();
  return ok;
}

// One launch of k_qgemv4r over J; false (nothing launched) where a map cannot be made.
template <typename T, int MR, bool DQ>
static bool qgemv4r(const T* x, Q4Jobs<T>& J, const Code16& c, int64_t K, int lb, cudaStream_t s) {
  const unsigned tiles = q4_grid(J, J.pair ? 8 : 16);
  Q4Maps<T> maps;
  memset(&maps, 0, sizeof maps);
  for (int i = 0; i < J.n; i++)
    if (!i8w::map2d(&maps.m[i], CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, J.j[i].q.codes, K / 2, J.j[i].N, K / 2, 8)) return false;
  const int bytes = q4r::Smem<MR, 1>::BYTES + (int)(MR * K * (int64_t)sizeof(T));
  static int attr = 0;  // the shared memory opted in to so far, per instantiation
  if (bytes > attr) rt::check(cudaFuncSetAttribute(k_qgemv4r<T, MR, DQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), "cudaFuncSetAttribute (qlinear4 TMA GEMV)");
  attr = bytes > attr ? bytes : attr;
  const int64_t sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  k_qgemv4r<T, MR, DQ><<<(unsigned)(tiles < sms ? tiles : sms), q4r::THREADS, bytes, s>>>(x, J, maps, c, K, lb);
  return true;
}

// k_qgemv4d (2026-11-26, measured slower than k_qgemv4v and not kept; bench/NOTES.md): the decode
// GEMV at M = 1 on the tensor cores (bf16/f16, K and block multiples of 64), the "diagonal" form. At M = 1 the kernels above spend most of their time in the SM's load/store
// pipe, not in DRAM (ncu on k_qgemv4v at 11008×4096: 5.9 instructions a weight; L1 wavefronts 66 %
// of the elapsed cycles, 65 % of them the one-weight code-table lookups and most of the rest x
// loaded 64 bytes apart). Here:
// - a lane loads 8 contiguous bytes (16 weights) of each of two rows A and B, and the warp's 32
//   lanes 256 contiguous bytes of a row: a 512-weight window, segment g = lane/4 of it (64 weights:
//   one absmax block) held by the 4 lanes (g, t = lane%4);
// - mma m16n8k16 multiplies them with A's rows g = the 8 segments of row A and rows g + 8 those
//   of row B, and B's column g = the x of segment g, so D[g][g] is segment g's dot product for row
//   A and D[g + 8][g] for row B (the off-diagonal products are computed and dropped: the tensor
//   cores have room, the load/store pipe does not). A lane's x words are then exactly the x of its
//   own weights, already mma B registers, read from shared memory where x is staged once;
// - a byte of codes (two weights) becomes its mma A register (the two 16-bit code values) by one
//   byte_perm, which also forms the shared address, and one shared load from a 256-entry table
//   replicated per lane (word b·64 + lane: the 32 lanes hit 32 banks whatever the bytes);
// - blocks are persistent (one an SM, 24 warps) so the 32 KB of table is written once an SM;
//   warps split the K windows S ways and add their sums in shared memory in a fixed order.
// A warp's unit is 4 output rows (two A/B pairs) or, paired, 2 output features (A = gate, B = up).
// (The split of decoding from tensor-core multiplication is that of Marlin, Frantar et al. 2024,
// and FLUTE's byte → code-pair table, Guo et al. 2024; the diagonal use of the mma is ours.)
namespace q4d {
constexpr int kWarps = 24, kThreads = kWarps * 32;  // ≤ 85 registers a thread (64 spill)
constexpr int kTabBytes = 256 * 64 * 4;  // 256 byte values × 64 words (lanes 0…31 used)
// shared bytes for K: the table and x padded to whole 512-weight windows
static inline int64_t smem(int64_t K) { return 0x10000 + kTabBytes + (K + 511) / 512 * 512 * 2; }  // + the table's alignment
constexpr int64_t kMaxK = 24576;  // ≤ 4 windows a warp at S = 12; 176 KB
}  // namespace q4d


// one 32-bit shared load at a shared-window address
__device__ __forceinline__ uint32_t lds32(uint32_t a) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a));
  return v;
}

// One 512-weight window of rows A and B: its four mma steps from the lane's 8 code bytes of each
// row and its x chunks c0, c0 + 1 (shared memory, swizzled); c: the mma's D fragment.
template <typename T>
__device__ __forceinline__ void diag_window(float (&c)[4], uint2 ca, uint2 cb, const uint4* xs, int c0, int g, uint32_t lanebase) {
  const uint4 x0 = xs[c0 ^ (g & 1)], x1 = xs[(c0 + 1) ^ (g & 1)];
  const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  c[0] = c[1] = c[2] = c[3] = 0.f;
#pragma unroll
  for (int s2 = 0; s2 < 4; s2++) {
    const uint32_t va = s2 < 2 ? ca.x : ca.y, vb = s2 < 2 ? cb.x : cb.y;
    // bytes 0 and 1 (steps 0, 2) or 2 and 3 (steps 1, 3) of the word: weights (4s, 4s + 1), (4s + 2, 4s + 3)
    const uint32_t s0 = s2 & 1 ? 0x7624u : 0x7604u, s1 = s2 & 1 ? 0x7634u : 0x7614u;
    const uint32_t a[4] = {lds32(__byte_perm(va, lanebase, s0)), lds32(__byte_perm(vb, lanebase, s0)), lds32(__byte_perm(va, lanebase, s1)),
                           lds32(__byte_perm(vb, lanebase, s1))};
    fa2::Mma<T>::run(c, a, xw[2 * s2], xw[2 * s2 + 1]);
  }
}

template <typename T, bool DQ>
__global__ void __launch_bounds__(q4d::kThreads, 1) k_qgemv4d(const T* __restrict__ x, const __grid_constant__ Q4Jobs<T> J, Code16 code, int64_t K, int lb, int S) {
  extern __shared__ __align__(16) uint32_t q4d_sm[];
  __shared__ float red[2][q4d::kWarps][2];
  // the table at a 64 KB-aligned shared address, so that byte_perm forms a lookup's whole address
  // (byte 1 the code byte, byte 0 the lane's word, byte 2 the table's 64 KB page); x after it
  const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(q4d_sm), taddr = (sbase + 0xffffu) & ~0xffffu;
  uint32_t* tab = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(q4d_sm) + (taddr - sbase));
  uint4* xs = reinterpret_cast<uint4*>(tab + q4d::kTabBytes / 4);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int NW = (int)((K + 511) / 512);
  for (int i = threadIdx.x; i < 256 * 32; i += q4d::kThreads) {
    const int b = i >> 5;
    tab[b * 64 + (i & 31)] = fa2::Mma<T>::pack(code.f[b & 15], code.f[b >> 4]);
  }
  // x chunk c (8 values) at c ^ bit 3 of c: a lane's two chunks, and the warp's, in distinct banks
  for (int c = threadIdx.x; c < NW * 64; c += q4d::kThreads) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (8 * (int64_t)c < K) v = __ldg(reinterpret_cast<const uint4*>(x) + c);
    xs[c ^ ((c >> 3) & 1)] = v;
  }
  __syncthreads();
  // S warps (a group) split a unit's windows: split s takes windows s, s + S, … (at most 4)
  const int GPB = q4d::kWarps / S, group = wid / S, split = wid % S, WPU = (NW + S - 1) / S;
  const int64_t units = J.first[J.n], ustride = (int64_t)gridDim.x * GPB;
  const uint32_t lanebase = taddr + (uint32_t)lane * 4u;
  const bool diag = t == (g >> 1), odd = g & 1;
  const int xc = 8 * g + 2 * t;  // the lane's first x chunk in a window
  int parity = 0;
  for (int64_t u = (int64_t)blockIdx.x * GPB + group; u < units; u += ustride) {
    // the unit's rows: paired, A = gate and B = up of feature f; else rows f and f + 1 of job ji
    // (rows past N read row N − 1: computed, never stored)
    const int ji = J.pair ? 0 : job_of_chunk(J, u);
    const int64_t N = J.j[ji].N, f = J.pair ? u - J.first[0] : (u - J.first[ji]) * 2;
    const int64_t ra = f < N ? f : N - 1, rb = J.pair ? ra : (f + 1 < N ? f + 1 : N - 1);
    const Q4& qa = J.j[ji].q;
    const Q4& qb = J.pair ? J.j[1].q : qa;
    const uint2* pa = reinterpret_cast<const uint2*>(qa.codes + ra * (K / 2)) + lane;
    const uint2* pb = reinterpret_cast<const uint2*>(qb.codes + rb * (K / 2)) + lane;
    // K is a multiple of the block, a power of 2: element row·K + k is in block (row·K >> lb) + (k >> lb)
    const int64_t ba = (ra * K) >> lb, bb = (rb * K) >> lb;
    const float ma = DQ ? __ldg(qa.mean) : 0.f, mb = DQ ? __ldg(qb.mean) : 0.f;
    uint2 ca[4], cb[4];
    float sa[4], sb[4];
#pragma unroll
    for (int m = 0; m < 4; m++) {
      const int w = split + m * S, k0 = w * 512 + 64 * g;
      ca[m] = cb[m] = make_uint2(0, 0);
      sa[m] = sb[m] = 0.f;
      if (m < WPU && k0 < K) {
        ca[m] = ld_stream8(pa + 32 * w);
        cb[m] = ld_stream8(pb + 32 * w);
        sa[m] = absmax_as<DQ>(qa, ma, ba + (k0 >> lb));
        sb[m] = absmax_as<DQ>(qb, mb, bb + (k0 >> lb));
      }
    }
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 0; m < 4; m++) {
      if (m < WPU && split + m * S < NW) {  // the same for the whole warp
        float c[4];
        diag_window<T>(c, ca[m], cb[m], xs, (split + m * S) * 64 + xc, g, lanebase);
        acc[0] = fmaf(c[0], sa[m], acc[0]);
        acc[1] = fmaf(c[1], sa[m], acc[1]);
        acc[2] = fmaf(c[2], sb[m], acc[2]);
        acc[3] = fmaf(c[3], sb[m], acc[3]);
      }
    }
    // D[g][g] sits in lane (g, g/2), element g % 2 (row A) and 2 + g % 2 (row B); summed over the
    // warp, then over the group's S warps in split order
    float va = diag ? (odd ? acc[1] : acc[0]) : 0.f, vb = diag ? (odd ? acc[3] : acc[2]) : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) va += __shfl_xor_sync(0xffffffffu, va, o), vb += __shfl_xor_sync(0xffffffffu, vb, o);
    if (S > 1) {
      if (lane == 0) red[parity][wid][0] = va, red[parity][wid][1] = vb;
      asm volatile("bar.sync %0, %1;" ::"r"(1 + group), "r"(S * 32) : "memory");
      va = vb = 0.f;
      for (int s2 = 0; s2 < S; s2++) va += red[parity][wid - split + s2][0], vb += red[parity][wid - split + s2][1];
      parity ^= 1;  // the next unit writes the other half; this one's readers are past its barrier by then
    }
    if (split == 0 && lane == 0) {
      if (J.pair) {
        if (f < N) {
          if (J.j[0].bias) va += (float)Num<T>::load(J.j[0].bias[f]);
          if (J.j[0].res) va += (float)Num<T>::load(J.j[0].res[f]);
          if (J.j[1].bias) vb += (float)Num<T>::load(J.j[1].bias[f]);
          if (J.j[1].res) vb += (float)Num<T>::load(J.j[1].res[f]);
          store_out(J, true, 0, f, va, vb);
        }
      } else {
        const T* bias = J.j[ji].bias;
        const T* res = J.j[ji].res;
        if (f < N) store_out(J, false, ji, f, va + (bias ? (float)Num<T>::load(bias[f]) : 0.f) + (res ? (float)Num<T>::load(res[f]) : 0.f), 0.f);
        if (f + 1 < N) store_out(J, false, ji, f + 1, vb + (bias ? (float)Num<T>::load(bias[f + 1]) : 0.f) + (res ? (float)Num<T>::load(res[f + 1]) : 0.f), 0.f);
      }
    }
  }
}

// k_qgemv4d over J (M = 1): units of a row pair (paired: a feature's gate and up rows), a unit's
// K windows split S ways (≤ 4 windows a warp; S warps, their sums added in order through shared
// memory), one persistent block an SM.
template <typename T>
static void qgemv4d(const T* x, Q4Jobs<T>& J, const Code16& c, int64_t K, int lb, cudaStream_t s, int force_s = 0) {
  const int64_t units = q4_grid(J, J.pair ? 1 : 2), NW = (K + 511) / 512;
  const int64_t sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  static const int divisors[] = {1, 2, 3, 4, 6, 8, 12};
  int S = 12;
  for (int d : divisors)
    if ((NW + d - 1) / d <= 4) {
      S = d;
      break;
    }
  if (force_s > 0 && (NW + force_s - 1) / force_s <= 4) S = force_s;
  const int64_t groups = (units + q4d::kWarps / S - 1) / (q4d::kWarps / S);
  const unsigned grid = (unsigned)(groups < sms ? groups : sms);
  const int64_t bytes = q4d::smem(K);
  static bool attr[2] = {false, false};
  const bool dq = J.j[0].q.dq;
  if (!attr[dq]) {
    const int maxb = (int)q4d::smem(q4d::kMaxK);
    if (dq) cudaFuncSetAttribute(k_qgemv4d<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, maxb);
    else cudaFuncSetAttribute(k_qgemv4d<T, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, maxb);
    attr[dq] = true;
  }
  if (dq) k_qgemv4d<T, true><<<grid, q4d::kThreads, bytes, s>>>(x, J, c, K, lb, S);
  else k_qgemv4d<T, false><<<grid, q4d::kThreads, bytes, s>>>(x, J, c, K, lb, S);
}

}  // namespace qdetail
}  // namespace cuda
}  // namespace kiln

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
  float part[1] = {0.f};
#pragma unroll
  for (int j = 0; j < 4; j++) Q::dot8<1>(pc, j, tb, [&](int, int i) { return xf[8 * j + i]; }, part);
  return part[0];
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
  const float mean = DQ ? __ldg(q.mean) : 0.f;
  auto am = [&](int64_t b) -> float {
    if (!DQ) return __ldg(q.absmax + b);
    return Q::absmax_dq(mean, __ldg(q.acode + b), __ldg(q.ascale + (b >> 8)));
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
  k_t<KS, U, false><<<(unsigned)((N + 15) / 16), KS * 32, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6);
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
  __device__ __forceinline__ void load_w(int p, uint4 (&pc)[R], float (&a)[R]) const {
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int rr = row0 + r < N ? r : (int)(N - 1 - row0);
      pc[r] = kiln::cuda::detail::ld_stream(cbase + rr * KV + p);
      a[r] = __ldg(abase + rr * apr + (p >> cs));
    }
  }
  __device__ __forceinline__ void load_x(const bf16* __restrict__ x, int p, float (&xf)[32]) const {
#pragma unroll
    for (int j = 0; j < 4; j++) Q::load8<bf16>(x + p * 32 + 8 * j, xf + 8 * j);
  }
  __device__ __forceinline__ void load(const bf16* __restrict__ x, int p, uint4 (&pc)[R], float (&a)[R], float (&xf)[32]) const {
    load_w(p, pc, a);
    load_x(x, p, xf);
  }
};

// k_qgemv4v specialized: M = 1, no double quant, block = 2^lb, MINB blocks an SM asked of ptxas.
// PDL (launched with programmatic stream serialization): the first weight pieces and absmax are
// loaded, then griddepcontrol.wait — x and y belong to the previous kernel until it returns.
template <int R, int MINB, int TPB, bool FAKE = false, bool PDL = false>
__global__ void __launch_bounds__(TPB, MINB) k_v2(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  const int64_t row0 = (int64_t)blockIdx.x * R;
  const char* tb = reinterpret_cast<const char*>(tab);
  const V2Rows<R> rows(q, row0, N, K, lb);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  uint4 pc[R];
  float a[R];
  int p = threadIdx.x;
  if (PDL) {
    if (p < rows.KV) rows.load_w(p, pc, a);
    asm volatile("griddepcontrol.wait;" ::: "memory");
  }
  __syncthreads();  // tab
  for (; p < rows.KV; p += TPB) {
    float xf[32];
    if (PDL && p == (int)threadIdx.x) rows.load_x(x, p, xf);
    else rows.load(x, p, pc, a, xf);  // (loading the weights apart from x when not needed was 20–25 % slower)
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
  k_v2h<R, TPB><<<(unsigned)((N + R - 1) / R), TPB, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6);
}
template <int R, int MINB, int TPB, bool FAKE = false>
static void run_v2(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  k_v2<R, MINB, TPB, FAKE><<<(unsigned)((N + R - 1) / R), TPB, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6);
}

// Word-per-lane (2026-11-26): lane L of the block's 128 threads takes code words L, L + 128, … (8
// weights) of R rows, so a warp's code loads read 128 contiguous bytes a row and its x loads 512
// contiguous bytes (k_qgemv4v's 16-byte pieces make a warp's x loads span 16 cache lines); the
// absmax is applied per word. U words a row in flight. M = 1, no double quant, K % block = 0.
__device__ __forceinline__ uint32_t ld_stream4(const uint32_t* p) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}
template <int R, int U, int MINB>
__global__ void __launch_bounds__(128, MINB) k_w(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  __syncthreads();
  const char* tb = reinterpret_cast<const char*>(tab);
  const int64_t row0 = (int64_t)blockIdx.x * R;
  const int KW = (int)(K / 8), lw = lb - 3;  // words a row; log2(words a block)
  const uint32_t* cw = reinterpret_cast<const uint32_t*>(q.codes);
  int off[R];  // the rows' first word and first absmax block, relative to row0's (rows past N read row N − 1)
  int aoff[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int rr = row0 + r < N ? r : (int)(N - 1 - row0);
    off[r] = rr * KW;
    aoff[r] = rr * (KW >> lw);
  }
  const uint32_t* c0 = cw + row0 * KW;
  const float* a0 = q.absmax + ((row0 * K) >> lb);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  for (int i0 = threadIdx.x; i0 < KW; i0 += 128 * U) {
    uint32_t c[U][R];
    float a[U][R];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int i = i0 + 128 * u;
#pragma unroll
      for (int r = 0; r < R; r++) {
        c[u][r] = i < KW ? ld_stream4(c0 + off[r] + i) : 0u;
        a[u][r] = i < KW ? __ldg(a0 + aoff[r] + (i >> lw)) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int i = i0 + 128 * u;
      if (i >= KW) break;
      float xf[8];
      Q::load8<bf16>(x + 8 * (int64_t)i, xf);
#pragma unroll
      for (int r = 0; r < R; r++) {
        const uint32_t w = c[u][r], lo = (w << 2) & 0x3c3c3c3cu, hi = (w >> 2) & 0x3c3c3c3cu;
        float part = 0.f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
          const float v0 = *reinterpret_cast<const float*>(tb + __byte_perm(lo, 0, 0x4440 + k));
          const float v1 = *reinterpret_cast<const float*>(tb + __byte_perm(hi, 0, 0x4440 + k));
          part = fmaf(v1, xf[2 * k + 1], fmaf(v0, xf[2 * k], part));
        }
        acc[r] = fmaf(part, a[u][r], acc[r]);
      }
    }
  }
  store_block_rows<R, 4>(acc, row0, N, y);
}
template <int R, int U, int MINB>
static void run_w(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  k_w<R, U, MINB><<<(unsigned)((N + R - 1) / R), 128, 0, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6);
}

// k_qgemv4d, fourth form (S = 1): a warp owns a row pair for the whole K, a ring of U windows in
// flight that runs on into the warp's next row pair, so no cross-warp sum and no barrier; one
// persistent block an SM (the table written once). M = 1, one job, no double quant, K % block = 0.
template <int U, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 1) k_d4(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  extern __shared__ __align__(16) uint32_t d4_sm[];
  const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(d4_sm), taddr = (sbase + 0xffffu) & ~0xffffu;
  uint32_t* tab = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(d4_sm) + (taddr - sbase));
  uint4* xs = reinterpret_cast<uint4*>(tab + Q::q4d::kTabBytes / 4);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int NW = (int)((K + 511) / 512);
  for (int i = threadIdx.x; i < 256 * 32; i += WARPS * 32) {
    const int b = i >> 5;
    tab[b * 64 + (i & 31)] = kiln::cuda::fa2::Mma<bf16>::pack(code.f[b & 15], code.f[b >> 4]);
  }
  for (int c = threadIdx.x; c < NW * 64; c += WARPS * 32) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (8 * (int64_t)c < K) v = __ldg(reinterpret_cast<const uint4*>(x) + c);
    xs[c ^ ((c >> 3) & 1)] = v;
  }
  __syncthreads();
  const int64_t units = (N + 1) / 2, ustride = (int64_t)gridDim.x * WARPS, u0 = (int64_t)blockIdx.x * WARPS + wid;
  if (u0 >= units) return;
  const int64_t mine = (units - u0 + ustride - 1) / ustride, NI = mine * NW;
  const uint32_t lanebase = taddr + (uint32_t)lane * 4u;
  const bool diag = t == (g >> 1), odd = g & 1;
  const int xc = 8 * g + 2 * t;
  const int KH = (int)(K / 2);
  // load cursor
  int64_t li = 0, lu = u0;
  int lw = 0;
  const uint8_t* lpa = nullptr;
  const float* lsa = nullptr;
  auto set_unit = [&]() {
    const int64_t ra = 2 * lu < N ? 2 * lu : N - 1;
    lpa = q.codes + ra * KH + 8 * lane;
    lsa = q.absmax + ((ra * K) >> lb);
  };
  set_unit();
  const int rbo = 2 * u0 + 1 < N ? KH : 0;  // row B = row A + 1 (except a last odd row: itself)
  uint2 ca[U], cb[U];
  float sa[U], sb[U];
  auto load = [&](int slot) {
    const int k0 = lw * 512 + 64 * g;
    if (li < NI && k0 < K) {
      const uint2* p = reinterpret_cast<const uint2*>(lpa + lw * 256);
      ca[slot] = Q::ld_stream8(p);
      cb[slot] = Q::ld_stream8(reinterpret_cast<const uint2*>(reinterpret_cast<const uint8_t*>(p) + rbo));
      sa[slot] = __ldg(lsa + (k0 >> lb));
      sb[slot] = __ldg(lsa + ((rbo ? K : 0) >> lb) + (k0 >> lb));
    } else {
      ca[slot] = cb[slot] = make_uint2(0, 0);
      sa[slot] = sb[slot] = 0.f;
    }
    li++;
    if (++lw == NW) {
      lw = 0;
      lu += ustride;
      if (li < NI) set_unit();
    }
  };
#pragma unroll
  for (int i = 0; i < U; i++) load(i);
  int64_t cu = u0;
  int cw = 0;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t j0 = 0; j0 < NI; j0 += U) {
#pragma unroll
    for (int i = 0; i < U; i++) {
      if (j0 + i < NI) {
        float c[4];
        Q::diag_window<bf16>(c, ca[i], cb[i], xs, cw * 64 + xc, g, lanebase);
        acc[0] = fmaf(c[0], sa[i], acc[0]);
        acc[1] = fmaf(c[1], sa[i], acc[1]);
        acc[2] = fmaf(c[2], sb[i], acc[2]);
        acc[3] = fmaf(c[3], sb[i], acc[3]);
        load(i);
        if (++cw == NW) {
          float va = diag ? (odd ? acc[1] : acc[0]) : 0.f, vb = diag ? (odd ? acc[3] : acc[2]) : 0.f;
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) va += __shfl_xor_sync(0xffffffffu, va, o), vb += __shfl_xor_sync(0xffffffffu, vb, o);
          if (lane == 0) {
            y[2 * cu] = kiln::Num<bf16>::store(va);
            if (2 * cu + 1 < N) y[2 * cu + 1] = kiln::Num<bf16>::store(vb);
          }
          acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
          cw = 0;
          cu += ustride;
        }
      }
    }
  }
}
template <int U, int WARPS>
static void run_d4(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  static bool attr = false;
  const int64_t bytes = Q::q4d::smem(K);
  if (!attr) {
    cudaFuncSetAttribute(k_d4<U, WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Q::q4d::smem(Q::q4d::kMaxK));
    attr = true;
  }
  const int64_t units = (N + 1) / 2, need = (units + WARPS - 1) / WARPS;
  k_d4<U, WARPS><<<(unsigned)(need < 132 ? need : 132), WARPS * 32, bytes, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6);
}

struct Variant {
  const char* name;
  void (*launch)(const bf16*, const uint8_t*, bf16*, int64_t, int64_t);
};
// the production path (qlinear4: the path auto picks), nf4, block 64, no double quant
static void run_old(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  kiln::cuda::qlinear4<bf16>(x, w, nullptr, nullptr, y, 1, N, K, 64, false, NF4);
}
// one decode path of qlinear4 forced (Q::Q4_VEC: k_qgemv4v, Q4_MMA: k_qgemv4mma)
template <int FS>
static void run_d(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, 0, 64, false), nullptr, nullptr, y, N};
  J.n = 1;
  Q::qgemv4d<bf16>(x, J, g_code, K, 6, kiln::cuda::stream(), FS);
}
// gate/up paired as the MLP runs them (J.pair: silu(gate)·up stored), N features of each: the
// weight w as gate and the next copy as up — timed against one linear of 2N rows
static uint8_t* g_q4[8];
static void run_pair(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  int c = 0;
  while (c < 7 && g_q4[c] != w) c++;
  const uint8_t* g_up = g_q4[(c + 1) % 8];
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, 0, 64, false), nullptr, nullptr, y, N};
  J.j[1] = {Q::q4_of(g_up, N * K, 0, 64, false), nullptr, nullptr, nullptr, N};
  J.n = 2;
  J.pair = true;
  Q::qgemv4<bf16>(x, J, g_code, 1, K, 64, Q::Q4_VEC, kiln::cuda::stream());
}
template <int PATH>
static void run_path(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, 0, 64, false), nullptr, nullptr, y, N};
  J.n = 1;
  Q::qgemv4<bf16>(x, J, g_code, 1, K, 64, (Q::Q4Path)PATH, kiln::cuda::stream());
}

// v2's access pattern (R rows a block; thread tid takes 16-byte pieces tid, tid + TPB, … of each
// row) with the loads decoupled from the arithmetic: persistent blocks walk row groups, and each
// thread keeps D units in flight by cp.async into its own shared-memory slot — a unit is its R
// code pieces, their R absmax values and the 32 x values they multiply, so nothing the arithmetic
// reads waits on memory once the unit's group has landed (M = 1, no double quant, block 2^lb).
template <int R, int D, int TPB, int MINB>
__global__ void __launch_bounds__(TPB, MINB) k_v3(const bf16* __restrict__ x, Q::Q4 q, Q::Code16 code, bf16* __restrict__ y, int64_t N, int64_t K, int lb) {
  struct __align__(16) Slot {
    uint4 c[R];
    uint4 x[4];
    float a[R];
  };
  __shared__ float tab[16];
  extern __shared__ __align__(16) uint8_t slot_raw[];
  Slot(*slot)[TPB] = reinterpret_cast<Slot(*)[TPB]>(slot_raw);  // [D][TPB]
  __shared__ float red[2][TPB / 32][R];
  if (threadIdx.x < 16) tab[threadIdx.x] = code.f[threadIdx.x];
  const int tid = threadIdx.x, KV = (int)(K / 32), apr = (int)(K >> lb), cs = lb - 5;
  const int64_t groups = (N + R - 1) / R;
  const char* tb = reinterpret_cast<const char*>(tab);
  struct Cur {
    int64_t g;
    int p;
  };
  auto adv = [&](Cur& u) {
    u.p += TPB;
    if (u.p >= KV) u.p = tid, u.g += gridDim.x;
  };
  auto issue = [&](const Cur& u, int k) {
    if (u.g < groups && u.p < KV) {
      Slot& sl = slot[k][tid];
#pragma unroll
      for (int r = 0; r < R; r++) {
        const int64_t row = u.g * R + r < N ? u.g * R + r : N - 1;
        kiln::cuda::fa2::cp_async16(kiln::cuda::fa2::smem_u32(&sl.c[r]), reinterpret_cast<const uint4*>(q.codes) + row * KV + u.p, true);
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(kiln::cuda::fa2::smem_u32(&sl.a[r])), "l"(q.absmax + row * apr + (u.p >> cs)));
      }
#pragma unroll
      for (int j = 0; j < 4; j++)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(kiln::cuda::fa2::smem_u32(&sl.x[j])), "l"(reinterpret_cast<const uint4*>(x) + u.p * 4 + j));
    }
    kiln::cuda::fa2::cp_async_commit();  // empty groups too: wait_group counts them
  };
  Cur ld = {blockIdx.x, tid}, cu = ld;
#pragma unroll
  for (int d = 0; d < D; d++) issue(ld, d), adv(ld);
  __syncthreads();  // tab
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  int k = 0, par = 0;
  while (cu.g < groups) {
    kiln::cuda::fa2::cp_async_wait<D - 1>();
    if (cu.p < KV) {
      const Slot& sl = slot[k][tid];
      float xf[32];
#pragma unroll
      for (int j = 0; j < 4; j++) kiln::cuda::detail::Vec<bf16>::unpack(sl.x[j], xf + 8 * j);
#pragma unroll
      for (int r = 0; r < R; r++) acc[r] = fmaf(dot32(sl.c[r], xf, tb), sl.a[r], acc[r]);
    }
    issue(ld, k);  // this slot's next unit (its reads above are done: their values are in acc)
    adv(ld);
    k = k + 1 == D ? 0 : k + 1;
    const int64_t g = cu.g;
    adv(cu);
    if (cu.g != g) {  // the group's last unit: its rows' sums
#pragma unroll
      for (int r = 0; r < R; r++) {
        float v = acc[r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if ((tid & 31) == 0) red[par][tid >> 5][r] = v;
        acc[r] = 0.f;
      }
      __syncthreads();
      if (tid < R && g * R + tid < N) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < TPB / 32; w++) v += red[par][w][tid];
        y[g * R + tid] = kiln::Num<bf16>::store(v);
      }
      par ^= 1;
    }
  }
  kiln::cuda::fa2::cp_async_wait<0>();
}
template <int R, int D, int TPB, int MINB>
static void run_v3(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  const int64_t groups = (N + R - 1) / R;
  constexpr int bytes = D * TPB * (int)(((R + 4) * 16 + 4 * R + 15) / 16 * 16);
  static int most = 0;
  if (!most) {
    cudaFuncSetAttribute(k_v3<R, D, TPB, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&most, k_v3<R, D, TPB, MINB>, TPB, bytes);
    most *= 132;
  }
  k_v3<R, D, TPB, MINB><<<(unsigned)(groups < most ? groups : most), TPB, bytes, kiln::cuda::stream()>>>(x, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6);
}

// k_qgemv4r with BK 128-byte boxes a stage (K % (256·BK) == 0, else BK = 1) and FAKE (the loads alone)
template <int BK, int FAKE, bool FLAT = false>
static void run_r(const bf16* x, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  if (K % (256 * BK)) return run_r<1, FAKE, FLAT>(x, w, y, N, K);
  Q::Q4Jobs<bf16> J = {};
  J.j[0] = {Q::q4_of(w, N * K, 0, 64, false), nullptr, nullptr, y, N};
  J.n = 1;
  const unsigned tiles = Q::q4_grid(J, 16);
  Q::Q4Maps<bf16> maps;
  memset(&maps, 0, sizeof maps);
  if (!(FLAT ? Q::i8w::map2d(&maps.m[0], CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, w, 128, (N + 15) / 16 * 16 * K / 256, 128, 8)
             : Q::i8w::map2d(&maps.m[0], CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, w, K / 2, N, K / 2, 8)))
    exit(2);
  const int bytes = Q::q4r::Smem<1, BK>::BYTES + (int)(2 * K);
  cudaFuncSetAttribute(Q::k_qgemv4r<bf16, 1, false, BK, FAKE, FLAT>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  Q::k_qgemv4r<bf16, 1, false, BK, FAKE, FLAT><<<tiles < 132 ? tiles : 132, Q::q4r::THREADS, bytes, kiln::cuda::stream()>>>(x, J, maps, g_code, K, 6);
}

// ---- PDL: a norm-like kernel (one block: Σx², then x·rsqrt) chained with the GEMV, as in a
// decode layer (norm → q/k/v, norm → gate/up). MODE 0: plain launches; 1: the GEMV launched with
// programmatic stream serialization loads its first weight pieces and absmax, then waits
// (griddepcontrol.wait) before reading x, and the norm triggers its dependents at its start;
// 2: as 1, and the norm is itself launched that way (waits before reading).
template <int MODE>
__global__ void __launch_bounds__(256) k_pnorm(const bf16* __restrict__ x, bf16* __restrict__ y, int K) {
  if (MODE >= 1) asm volatile("griddepcontrol.launch_dependents;");
  if (MODE == 2) asm volatile("griddepcontrol.wait;" ::: "memory");
  __shared__ float red[8];
  float ss = 0.f;
  for (int i = threadIdx.x; i < K; i += 256) {
    const float v = kiln::Num<bf16>::load(x[i]);
    ss += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < 8; w++) t += red[w];
  const float r = rsqrtf(t / K + 1e-5f);
  for (int i = threadIdx.x; i < K; i += 256) y[i] = kiln::Num<bf16>::store(kiln::Num<bf16>::load(x[i]) * r);
}
template <int MODE>
static void pdl_pair(const bf16* x, bf16* xn, const uint8_t* w, bf16* y, int64_t N, int64_t K) {
  cudaStream_t s = kiln::cuda::stream();
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t c1 = {};
  c1.gridDim = dim3(1), c1.blockDim = dim3(256), c1.stream = s, c1.attrs = at, c1.numAttrs = MODE == 2 ? 1 : 0;
  ck(cudaLaunchKernelEx(&c1, k_pnorm<MODE>, x, xn, (int)K) == cudaSuccess ? 0 : 1, "pnorm");
  cudaLaunchConfig_t c2 = {};
  c2.gridDim = dim3((unsigned)((N + 3) / 4)), c2.blockDim = dim3(128), c2.stream = s, c2.attrs = at, c2.numAttrs = MODE >= 1 ? 1 : 0;
  if (MODE >= 1) ck(cudaLaunchKernelEx(&c2, k_v2<4, 8, 128, false, true>, (const bf16*)xn, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6) == cudaSuccess ? 0 : 1, "v2p");
  else ck(cudaLaunchKernelEx(&c2, k_v2<4, 8, 128, false, false>, (const bf16*)xn, Q::q4_of(w, N * K, 0, 64, false), g_code, y, N, K, 6) == cudaSuccess ? 0 : 1, "v2p");
}

int main(int argc, char** argv) {
  ck(kiln_init(0), "init");
  const int only = argc > 1 ? atoi(argv[1]) : -1;  // one shape (for ncu)
  g_code = Q::code16(NF4);
  const Variant vs[] = {
      {"qlinear4 auto", run_old},
      {"k_qgemv4v (vec)", run_path<Q::Q4_VEC>},
      {"v2 R4 minb8 128", run_v2<4, 8, 128>},
      {"v2 R8 minb6 128", run_v2<8, 6, 128>},
      {"v2 R8 minb4 128", run_v2<8, 4, 128>},
      {"v2 R8 minb8 128", run_v2<8, 8, 128>},
      {"v2 R16 minb3 128", run_v2<16, 3, 128>},
      {"k_qgemv4d (diagonal mma), S auto", run_d<0>},
      {"d4 U4 24 warps", run_d4<4, 24>},
      {"d4 U2 32 warps", run_d4<2, 32>},
      {"d4 U3 24 warps", run_d4<3, 24>},
      {"d4 U6 16 warps", run_d4<6, 16>},
      {"loads only, v2 R4 minb8 128 (its floor)", run_v2<4, 8, 128, true>},
      {"gate/up paired (N of each: twice the bytes, TB/s column ×2)", run_pair},
  };
  const int NCHECK = 12;  // the loads-only variants compute nothing checkable
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
      ck(kiln_quantize4(q4[c], wf, n, 0, 64, 0, NF4), "quantize4");
      g_q4[c] = q4[c];
    }
    run_path<Q::Q4_VEC>(x, q4[0], y0, N, K);  // the reference: k_qgemv4v (f32 code values, f32 FMAs)
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
  // PDL: µs a (norm → GEMV) pair, a chain of 20 in a graph; the chain's last y must not depend on the mode
  printf("\n| norm → GEMV pair (µs) | plain | GEMV by PDL, weights before the wait | both by PDL |\n|---|---|---|---|\n");
  for (int si = 0; si < 4; si++) {
    if (only >= 0 && si != only) continue;
    const int64_t N = shapes[si][0], K = shapes[si][1], n = N * K;
    if (N < K) continue;  // the chain feeds y's first K values to the next norm
    float *wf, *yf;
    cudaMalloc(&wf, 4 * n);
    cudaMalloc(&yf, 4 * N);
    bf16 *yb[2], *xn;
    cudaMalloc(&yb[0], 2 * N), cudaMalloc(&yb[1], 2 * N), cudaMalloc(&xn, 2 * K);
    uint8_t* q4[COPIES];
    const int64_t b4 = kiln::quant::bytes4(n, 64, false);
    for (int c = 0; c < COPIES; c++) {
      k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(wf, n, 300 + c, 0.05f);
      cudaMalloc(&q4[c], b4);
      ck(kiln_quantize4(q4[c], wf, n, 0, 64, 0, NF4), "quantize4");
    }
    double tm[3];
    std::vector<bf16> last[3];
    for (int mode = 0; mode < 3; mode++) {
      auto pair = [&](int i) {
        bf16 *a = yb[i % 2], *b = yb[(i + 1) % 2];
        if (mode == 0) pdl_pair<0>(a, xn, q4[i % COPIES], b, N, K);
        else if (mode == 1) pdl_pair<1>(a, xn, q4[i % COPIES], b, N, K);
        else pdl_pair<2>(a, xn, q4[i % COPIES], b, N, K);
      };
      k_rand<<<1024, 256, 0, kiln::cuda::stream()>>>(yf, N, 11, 2.f);
      k_to<bf16><<<1024, 256, 0, kiln::cuda::stream()>>>(yf, yb[0], N);
      for (int i = 0; i < 6; i++) pair(i);
      ck(kiln_synchronize(), "sync");
      last[mode].resize(N);
      cudaMemcpy(last[mode].data(), yb[0], 2 * N, cudaMemcpyDeviceToHost);
      tm[mode] = median_us(pair);
    }
    for (int mode = 1; mode < 3; mode++)
      if (memcmp(last[mode].data(), last[0].data(), 2 * N)) {
        printf("WRONG: PDL mode %d changes the chain's result (%lld×%lld)\n", mode, (long long)N, (long long)K);
        ok = false;
      }
    printf("| %lld×%lld | %.1f | %.1f | %.1f |\n", (long long)N, (long long)K, tm[0], tm[1], tm[2]);
    for (int c = 0; c < COPIES; c++) cudaFree(q4[c]);
    cudaFree(wf), cudaFree(yf), cudaFree(yb[0]), cudaFree(yb[1]), cudaFree(xn);
  }
  printf("check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
