// LLM.int8's prefill product on Hopper's warpgroup tensor cores (sm_90a): the int8 GEMM with the
// whole epilogue in one kernel, at the rate of the int8 wgmma (twice the 16-bit one) instead of
// cuBLASLt's int32 matrix written and read back (4·M·N bytes each way) or the mma.sync kernel.
//
// y[m, n] = ((Σ_k qx[m, k]·qw[n, k])·sx[m] + Σ_j xo[m, j]·wo[n, j])·sw[n] + bias[n] (+ res[m, n])
//
// the same sum as i8::k_gemm and i8::k_epi (LLM.int8, Dettmers et al., 2022, §3.2: vector-wise
// int8 plus the 16-bit outlier columns; the outlier product's operands are the dense 16-bit
// matrices k_i8_fix_rows and k_i8_gather_w made, the weight's codes exact in bf16/f16).
//
// A tile is 128 rows of x × 256 output features; a block per SM walks the tiles (persistent: the
// next tile's loads overlap this one's epilogue). Three warpgroups: one producer thread loads
// 128-byte-deep k-slices of qx (128 × 128 B) and qw (256 × 128 B) by TMA into a 4-stage ring of
// shared memory (128-byte swizzle, the layout the descriptors name), full/empty mbarriers pass the
// stages; two consumer warpgroups each multiply 64 rows × 256 features by wgmma m64n256k32
// (s8·s8 → s32, 128 accumulators a thread). After the last k-slice a consumer scales its int32
// sums by sx into f32 in the same registers, and the outlier columns, 64 at a time, come through
// the same ring (xo 128 × 64 and wo 256 × 64 16-bit values: 128-byte rows again) into wgmma
// m64n256k16 (16-bit · 16-bit → f32, accumulating onto the scaled sums). Then sw, bias (staged in
// shared memory a block) and the residual, rounded once, stored. (The producer/consumer split and
// TMA ring follow the Hopper GEMM design of CUTLASS 3 and FlashAttention-3; the code is ours.)
#pragma once
#include <cuda.h>  // CUtensorMap and its enums only: cuTensorMapEncodeTiled is found at run time
#include <cuda_runtime.h>
#include <stdint.h>

namespace kiln {
namespace cuda {
namespace qdetail {
namespace i8w {

constexpr int BM = 128, BN = 256, BK = 128, STAGES = 4, THREADS = 384;
constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK, STAGE_BYTES = A_BYTES + B_BYTES;  // 16 + 32 KiB
// the ring (1024-byte aligned: the 128-byte swizzle repeats every 8 rows), 2·STAGES mbarriers, sw and bias of the block's features
constexpr int SMEM = 1024 + STAGES * STAGE_BYTES + 2 * STAGES * 8 + 2 * BN * 4;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_I8W 1

// d += A·B (or d = A·B when !acc) over one k32 step: m64n256k32, s8 × s8 → s32, A and B K-major in
// shared memory (descriptors da, db)
__device__ __forceinline__ void wgmma_s8(uint32_t (&d)[128], uint64_t da, uint64_t db, int acc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
      : "l"(da), "l"(db), "r"(acc));
}

// d += A·B over one k16 step: m64n256k16, TY × TY → f32 (TY: bf16 or f16), A and B K-major in
// shared memory; d: the f32 accumulators' bits
#define KILN_I8W_WGMMA16(NAME, TY)                                                                        \
  __device__ __forceinline__ void NAME(uint32_t(&d)[128], uint64_t da, uint64_t db) {                      \
    asm volatile(                                                                                         \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                    \
        "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n" \
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127]) \
        : "l"(da), "l"(db), "r"(1));                                                                      \
  }
KILN_I8W_WGMMA16(wgmma_bf16, "bf16")
KILN_I8W_WGMMA16(wgmma_f16, "f16")
#undef KILN_I8W_WGMMA16

// a shared-memory matrix descriptor: K-major rows of 128 bytes, 128-byte swizzle, 8-row groups 1024 bytes apart
__device__ __forceinline__ uint64_t desc(uint32_t addr) {
  return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}
__device__ __forceinline__ void bar_init(uint32_t b, int count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(b), "r"(count)); }
__device__ __forceinline__ void bar_wait(uint32_t b, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(b),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bar_arrive(uint32_t b) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(b) : "memory"); }
__device__ __forceinline__ void bar_expect(uint32_t b, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(bytes) : "memory");
}
// the box at (c0 = column, c1 = row) of map into shared memory at dst; its bytes complete barrier b
__device__ __forceinline__ void tma2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t b) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst), "l"(map),
               "r"(c0), "r"(c1), "r"(b)
               : "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// the accumulators as if rewritten here: the compiler cannot move their reads (or writes) across
// this point, i.e. across the wgmma wait before it
__device__ __forceinline__ void fence_regs(uint32_t (&d)[128]) {
#pragma unroll
  for (int j = 0; j < 128; j++) asm volatile("" : "+r"(d[j])::"memory");
}
// the shared address of slice it's stage once the producer's TMA has filled it (the ring's round
// it / STAGES, mod 2, is the phase to wait for)
__device__ __forceinline__ uint32_t await_full(uint32_t ring, uint32_t full, uint32_t it) {
  bar_wait(full + 8 * (it % STAGES), (it / STAGES) & 1);
  return ring + (it % STAGES) * STAGE_BYTES;
}
// stage s back to the producer: an arrival of each consumer warp
__device__ __forceinline__ void release(uint32_t empty, int s) {
  __syncwarp();
  if ((threadIdx.x & 31) == 0) bar_arrive(empty + 8 * s);
}
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

template <typename T>
__device__ __forceinline__ void wgmma_16(uint32_t (&d)[128], uint64_t da, uint64_t db) {
  if constexpr (std::is_same<T, bf16>::value) wgmma_bf16(d, da, db);
  else wgmma_f16(d, da, db);
}
#endif

// named barrier 1 among the 256 consumer threads (the producer warpgroup never waits on it)
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

// The kernel (T: bf16 or f16). ta: qx [M, Kp] int8, tb: qw [N, K] int8 (boxes 128 B × 128 and ×
// 256 rows); to_x, to_w: xo [M, Cp], wo [N, Cp] 16-bit (64 × 128 and × 256), read only when
// *count > 0. Persistent: a block per SM walks the 128 × 256 tiles t = blockIdx.x, + gridDim.x, …
// (rows fastest: the blocks resident together share weight tiles in L2), and the ring's stage
// count runs on across tiles, so the producer loads the next tile's first slices while the
// consumers scale and store this one. (Measured on the H100 and not kept, bench/NOTES.md: 2-block
// clusters sharing the weight tile by TMA multicast, a ring of 8 stages 64 bytes deep, and
// rotating each block's k order — all slower.)
template <typename T>
__global__ void __launch_bounds__(THREADS, 1)
    k_gemm(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb, const __grid_constant__ CUtensorMap to_x,
           const __grid_constant__ CUtensorMap to_w, const float* __restrict__ sx, const double* __restrict__ sw, const int* __restrict__ count,
           const T* __restrict__ bias, const T* __restrict__ res, T* __restrict__ y, int64_t M, int64_t N, int64_t K) {
#ifdef KILN_I8W
  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const uint32_t ring = (raw + 1023) & ~1023u;  // stage s: A at ring + s·STAGE_BYTES, B after it
  uint8_t* base = smem_raw + (ring - raw);
  const uint32_t full = ring + STAGES * STAGE_BYTES, empty = full + STAGES * 8;
  float* s_sw = reinterpret_cast<float*>(base + STAGES * STAGE_BYTES + 2 * STAGES * 8);
  float* s_b = s_sw + BN;
  const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
  const int64_t MT = (M + BM - 1) / BM, tiles = MT * ((N + BN - 1) / BN);
  const int KT = (int)((K + BK - 1) / BK), cnt = *count, OT = (cnt + 63) / 64;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) bar_init(full + 8 * s, 1), bar_init(empty + 8 * s, 8);  // empty: the 8 consumer warps
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid == 0) {
      uint32_t it = 0;  // slices loaded so far (all tiles)
      for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int m0 = (int)(t % MT) * BM, n0 = (int)(t / MT) * BN;
        for (int i = 0; i < KT + OT; i++, it++) {
          const uint32_t s = it % STAGES;
          bar_wait(empty + 8 * s, ((it / STAGES) & 1) ^ 1);
          const uint32_t fb = full + 8 * s, a = ring + s * STAGE_BYTES;
          bar_expect(fb, STAGE_BYTES);
          // int8 k-slices in order (the blocks resident together read the same slices while L2
          // holds them), then 64 outlier columns a slice
          const int k = i < KT ? i * BK : (i - KT) * 64;
          tma2d(a, i < KT ? &ta : &to_x, k, m0, fb);
          tma2d(a + A_BYTES, i < KT ? &tb : &to_w, k, n0, fb);
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cw = wg - 1;  // rows 64·cw … of a tile
    const uint32_t a_off = cw * 64 * BK;
    // this thread's rows: r0 (registers 4j, 4j + 1) and r0 + 8 (4j + 2, 4j + 3); features 8j + 2t, + 1
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const bool pairs = (N & 1) == 0 && ((uintptr_t)y & 3) == 0;
    uint32_t it = 0;  // slices consumed so far (all tiles)
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
      const int64_t m0 = (t % MT) * BM, n0 = (t / MT) * BN;
      consumers_sync();  // every consumer is past the last tile's epilogue: its scales can go
      {
        const int c = threadIdx.x - 128;
        const int64_t n = n0 + c;
        s_sw[c] = n < N ? (float)sw[n] : 0.f;
        s_b[c] = bias && n < N ? (float)Num<T>::load(bias[n]) : 0.f;
      }
      uint32_t acc[128];  // int32 products, then (the same registers) their f32 values
      for (int i = 0; i < KT; i++, it++) {
        const uint32_t a = await_full(ring, full, it);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 32; kk++) wgmma_s8(acc, desc(a + a_off + 32 * kk), desc(a + A_BYTES + 32 * kk), i > 0 || kk > 0);
        wg_commit();
        wg_wait<1>();  // slice i − 1's products are done: its stage goes back to the producer
        if (i > 0) release(empty, (it - 1) % STAGES);
      }
      wg_wait<0>();
      fence_regs(acc);
      if (KT > 0) release(empty, (it - 1) % STAGES);
      const int64_t r0 = m0 + cw * 64 + warp * 16 + g, r1 = r0 + 8;
      const float sx0 = r0 < M ? sx[r0] : 0.f, sx1 = r1 < M ? sx[r1] : 0.f;
#pragma unroll
      for (int j = 0; j < 32; j++) {
        acc[4 * j] = __float_as_uint((float)(int32_t)acc[4 * j] * sx0);
        acc[4 * j + 1] = __float_as_uint((float)(int32_t)acc[4 * j + 1] * sx0);
        acc[4 * j + 2] = __float_as_uint((float)(int32_t)acc[4 * j + 2] * sx1);
        acc[4 * j + 3] = __float_as_uint((float)(int32_t)acc[4 * j + 3] * sx1);
      }
      for (int i = 0; i < OT; i++, it++) {
        const uint32_t a = await_full(ring, full, it);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wgmma_16<T>(acc, desc(a + a_off + 32 * kk), desc(a + A_BYTES + 32 * kk));
        wg_commit();
        wg_wait<0>();
        fence_regs(acc);
        release(empty, it % STAGES);
      }
      consumers_sync();  // this tile's scales and biases are in shared memory
      // y = f · sw[n] + bias[n] (+ res[m, n]), two features (4 bytes) a store
#pragma unroll
      for (int j = 0; j < 32; j++) {
        const int c = 8 * j + 2 * t4;
        const int64_t n = n0 + c;
        if (n >= N) continue;
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int64_t r = h ? r1 : r0;
          if (r >= M) continue;
          float v0 = __uint_as_float(acc[4 * j + 2 * h]) * s_sw[c] + s_b[c], v1 = __uint_as_float(acc[4 * j + 2 * h + 1]) * s_sw[c + 1] + s_b[c + 1];
          if (res) {
            v0 += (float)Num<T>::load(res[r * N + n]);
            if (n + 1 < N) v1 += (float)Num<T>::load(res[r * N + n + 1]);
          }
          T* yp = y + r * N + n;
          const T o0 = Num<T>::store((typename Num<T>::C)v0), o1 = Num<T>::store((typename Num<T>::C)v1);
          if (pairs) {
            T pr[2] = {o0, o1};
            *reinterpret_cast<uint32_t*>(yp) = *reinterpret_cast<const uint32_t*>(pr);
          } else {
            yp[0] = o0;
            if (n + 1 < N) yp[1] = o1;
          }
        }
      }
    }
  }
#else
  __trap();  // never launched: the host asks available() first
#endif
}

// ---------------------------------------------------------------- host side

typedef CUresult (*EncodeTiled)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// the driver's cuTensorMapEncodeTiled (CUDA 12.0's ABI), or null
static EncodeTiled encoder() {
  static const EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      p = nullptr;
    }
    return (EncodeTiled)p;
  }();
  return fn;
}

// Whether k_gemm<T> runs here: a 16-bit T, an sm_90 device, the kernel built for sm_90a (an sm_80
// artifact carries an empty one), and the driver's tensor-map encoder.
template <typename T>
static bool available() {
  if constexpr (!std::is_same<T, bf16>::value && !std::is_same<T, f16>::value) {
    return false;
  } else {
    static const bool ok = [] {
    cudaFuncAttributes fa;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaFuncGetAttributes(&fa, k_gemm<T>) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major == 9 && fa.binaryVersion == 90 && encoder() != nullptr;
    }();
    return ok;
  }
}

// a 2-D map of `rows` rows of `cols` elements (esize bytes, rows `stride` bytes apart), boxes of
// 128 bytes × box_rows, 128-byte swizzle; rows and columns past the end read as zero
static bool map2d(CUtensorMap* m, CUtensorMapDataType dt, int esize, const void* p, int64_t cols, int64_t rows, int64_t stride, int box_rows) {
  const cuuint64_t dim[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, str[1] = {(cuuint64_t)stride};
  const cuuint32_t box[2] = {(cuuint32_t)(128 / esize), (cuuint32_t)box_rows}, es[2] = {1, 1};
  return encoder()(m, dt, 2, const_cast<void*>(p), dim, str, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// y of one large-M qlinear8 by k_gemm; false (nothing launched) where it cannot run: no
// available(), codes or operands the maps cannot address (K not a multiple of 16, unaligned), or
// M, N past int coordinates.
template <typename T>
static bool run(const int8_t* qx, int64_t Kp, const int8_t* qw, const float* sx, const double* sw, const int* count, const uint16_t* xo,
                const uint16_t* wo, int64_t Cp, const T* bias, const T* res, T* y, int64_t M, int64_t N, int64_t K, cudaStream_t s) {
  if (!available<T>() || K <= 0 || K % 16 || Kp % 16 || Cp % 64 || M > 0x7fffffffLL - BM || N > 0x7fffffffLL - BN) return false;
  if (((uintptr_t)qx & 15) || ((uintptr_t)qw & 15) || ((uintptr_t)xo & 15) || ((uintptr_t)wo & 15)) return false;
  const CUtensorMapDataType t16 = std::is_same<T, bf16>::value ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  CUtensorMap ta, tb, tx, tw;
  if (!map2d(&ta, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, qx, K, M, Kp, BM) || !map2d(&tb, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, qw, K, N, K, BN)) return false;
  if (xo && wo) {
    if (!map2d(&tx, t16, 2, xo, Cp, M, 2 * Cp, BM) || !map2d(&tw, t16, 2, wo, Cp, N, 2 * Cp, BN)) return false;
  } else {
    tx = ta, tw = tb;  // no decomposition: *count is 0, never read
  }
  static bool attr = false;  // opting in to the shared memory, once per instantiation
  if (!attr) rt::check(cudaFuncSetAttribute(k_gemm<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM), "cudaFuncSetAttribute (qlinear8 wgmma)");
  attr = true;
  const int64_t tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN), sms = rt::state().sm_count > 0 ? rt::state().sm_count : 132;
  k_gemm<T><<<(unsigned)(tiles < sms ? tiles : sms), THREADS, SMEM, s>>>(ta, tb, tx, tw, sx, sw, count, bias, res, y, M, N, K);
  detail::launched("qlinear8 (int8 wgmma GEMM, outliers)");
  return true;
}

}  // namespace i8w
}  // namespace qdetail
}  // namespace cuda
}  // namespace kiln
