// C ABI over the tiled FlashAttention-2 kernel (codegen-templates/cuda/flash_attn2.cuh) for
// bench/attention.py, which builds this into a shared library with nvcc and calls it through ctypes
// on torch tensors' device pointers.
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -shared -Xcompiler -fPIC -I codegen-templates \
//        -o bench/tmp/attention.so bench/attention.cu
#include <cuda_runtime.h>
#include <stdint.h>
#include "cuda/flash_attn2.cuh"

// dtype: 0 bf16, 1 f16. variant: -1 the default tile configuration for the head dim, else one of
// fa2_launch's alternatives; force: 0 goes through flash_attention_tiled (which declines
// decode-sized S), 1 runs the tiled kernel on any S.
// alibi (f32 [Hq]), key_mask (i64 [B, Tk]) and cu_seqlens (i32 [n_cu], B = 1, S = Tk packed tokens)
// are device pointers or null, as the flash_attention op passes them.
// Returns 1 launched, 0 declined (the caller would fall back), -1 a CUDA error (message in err).
extern "C" int kiln_fa(int dtype, const void* q, const void* k, const void* v, void* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S,
                       int64_t Tk, int64_t D, int64_t Dv, double scale, int causal, const int64_t* offset, const float* alibi,
                       const int64_t* key_mask, const int32_t* cu_seqlens, int64_t n_cu, int variant, int force, void* stream, char* err,
                       int err_len) {
  cudaStream_t st = (cudaStream_t)stream;
  bool ok;
  if (dtype == 0) {
    typedef kiln::bf16 T;
    ok = force ? kiln::cuda::detail::fa2_launch<T>((const T*)q, (const T*)k, (const T*)v, (T*)y, B, Hq, Hkv, S, Tk, D, Dv, scale,
                                                   causal != 0, offset, alibi, key_mask, cu_seqlens, n_cu, st, variant)
               : kiln::cuda::flash_attention_tiled<T>((const T*)q, (const T*)k, (const T*)v, (T*)y, B, Hq, Hkv, S, Tk, D, Dv, scale,
                                                      causal != 0, offset, alibi, key_mask, cu_seqlens, n_cu, st);
  } else if (dtype == 1) {
    typedef kiln::f16 T;
    ok = force ? kiln::cuda::detail::fa2_launch<T>((const T*)q, (const T*)k, (const T*)v, (T*)y, B, Hq, Hkv, S, Tk, D, Dv, scale,
                                                   causal != 0, offset, alibi, key_mask, cu_seqlens, n_cu, st, variant)
               : kiln::cuda::flash_attention_tiled<T>((const T*)q, (const T*)k, (const T*)v, (T*)y, B, Hq, Hkv, S, Tk, D, Dv, scale,
                                                      causal != 0, offset, alibi, key_mask, cu_seqlens, n_cu, st);
  } else {
    ok = kiln::cuda::flash_attention_tiled<float>((const float*)q, (const float*)k, (const float*)v, (float*)y, B, Hq, Hkv, S, Tk, D,
                                                  Dv, scale, causal != 0, offset, alibi, key_mask, cu_seqlens, n_cu, st);
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    if (err && err_len > 0) {
      const char* m = cudaGetErrorString(e);
      int i = 0;
      for (; m[i] && i < err_len - 1; i++) err[i] = m[i];
      err[i] = 0;
    }
    return -1;
  }
  return ok ? 1 : 0;
}
