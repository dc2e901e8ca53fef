// The C ABI of a Kiln artifact (libkiln_model.so), shared by the cpu and cuda targets. The
// runtime (runtime/native) dlopens an artifact and talks to it only through these functions,
// so it links neither CUDA nor the model. Memory handed across is the target's memory: host
// memory for cpu, device memory for cuda; kiln_upload / kiln_download move bytes across.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
/* Artifacts are compiled with -fvisibility=hidden: these functions are all a library exports. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define KILN_ABI_VERSION 3
#define KILN_MAX_RANK 8

enum kiln_dtype { KILN_F32 = 0, KILN_F16 = 1, KILN_BF16 = 2, KILN_I64 = 3, KILN_I32 = 4, KILN_I8 = 5, KILN_U8 = 6, KILN_BOOL = 7 };

/* bytes of one element of a kiln_dtype (0 for an unknown one) */
static inline int64_t kiln_dtype_bytes(int32_t dtype) {
  static const int64_t size[8] = {4, 2, 2, 8, 4, 1, 1, 1};
  return dtype >= 0 && dtype < 8 ? size[dtype] : 0;
}

typedef struct kiln_tensor {
  int32_t dtype; /* enum kiln_dtype */
  int32_t rank;
  int64_t shape[KILN_MAX_RANK];
  void* data; /* target memory, contiguous row-major */
} kiln_tensor;

/* Every function returning int returns 0 on success, else an error whose message kiln_last_error gives. */
#define KILN_OK 0
#define KILN_ERR_INVALID 1 /* bad arguments: shapes, dtypes, counts */
#define KILN_ERR_OOM 2     /* out of memory on the target */
#define KILN_ERR_DEVICE 3  /* a CUDA error */
#define KILN_ERR_NUMERIC 4 /* reserved */

int kiln_abi_version(void);
/* "cpu" or "cuda" */
const char* kiln_target(void);
/* the content hash the artifact was built with (also in manifest.json) */
const char* kiln_artifact_hash(void);
/* the message of the last failed call on this thread */
const char* kiln_last_error(void);

/* Selects and initializes the device (cuda: cudaSetDevice + streams + libraries; cpu: no-op). */
int kiln_init(int device);
int kiln_memory_info(int64_t* free_bytes, int64_t* total_bytes);
int kiln_malloc(void** ptr, int64_t bytes);
int kiln_free(void* ptr);
int kiln_upload(void* dst, const void* src, int64_t bytes);
int kiln_download(void* dst, const void* src, int64_t bytes);
int kiln_synchronize(void);

/*
 * Pipelining (greedy decode issues step t + 1 before step t's token is on the host):
 *   kiln_set_wait(0): until kiln_set_wait(1), kiln_forward and kiln_upload called on this thread
 *     return once their work is queued on the target instead of when it is done (cpu: always
 *     done; a no-op). Errors of the queued work surface at the next call that waits.
 *   kiln_download_start: queues a copy of `bytes` of target memory (after everything queued so
 *     far) and returns a ticket for it; kiln_download_wait waits for that copy alone (not for work
 *     queued after it), writes the bytes to host memory `dst` and releases the ticket. Every ticket
 *     must be waited for exactly once (dst may be null to just release it).
 */
int kiln_set_wait(int wait);
int kiln_download_start(const void* src, int64_t bytes, void** ticket);
int kiln_download_wait(void* ticket, void* dst);

/* The graph's inputs, weights and outputs, in manifest order. */
int kiln_num_inputs(void);
int kiln_num_weights(void);
int kiln_num_outputs(void);

/*
 * Runs the graph. `weights` holds kiln_num_weights() pointers to target memory (in the dtypes and
 * shapes of the manifest); `inputs` kiln_num_inputs() tensors. On success each outputs[i] is filled
 * with its dtype, shape and a buffer from kiln_malloc that the caller owns (kiln_free it).
 */
int kiln_forward(void* const* weights, const kiln_tensor* inputs, kiln_tensor* outputs);

/*
 * Optional (the runtime looks them up with dlsym and quantizes on the host without them):
 * quantize-on-load on the target. `src` is target memory holding the weight as f32 (already
 * rounded to the model dtype), `dst` target memory of the packed size (kiln_quant.h: bytes4 /
 * bytes8), written in the layouts of kiln_quant.h, bit for bit what its host functions write.
 *   kiln_quantize4: n weights in rows of K (the absmax layout depends on it: kiln_quant.h tiles4),
 *     blockwise absmax (`block`), dq: double quantization, code16: the 16 code values (host memory).
 *   kiln_quantize8: an [N, K] weight, int8 with absmax per row (LLM.int8).
 */
int kiln_quantize4(void* dst, const float* src, int64_t n, int64_t K, int64_t block, int dq, const double* code16);
int kiln_quantize8(void* dst, const float* src, int64_t N, int64_t K);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif
#ifdef __cplusplus
}
#endif
