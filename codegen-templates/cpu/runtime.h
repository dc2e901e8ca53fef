// The cpu target's side of the artifact ABI: host memory (64-byte aligned) and plain copies.
#pragma once
#include <stdlib.h>
#include <new>
#include "../common/rt_common.h"
#include "../common/kiln_quant.h"

namespace kiln {
namespace rt {

// Buffers of at least 64 bytes, so a 0-element tensor still gets a distinct pointer.
static void* alloc(int64_t bytes, const char* what) {
  size_t n = (size_t)(bytes < 64 ? 64 : (bytes + 63) / 64 * 64);
  void* p = aligned_alloc(64, n);
  if (!p) fail(KILN_ERR_OOM, "out of memory: %lld bytes for %s", (long long)bytes, what);
  return p;
}
static void release(void* p) { free(p); }
// Constants live in the artifact's own data section on the host.
static void* constant(int id, const void* data, int64_t bytes) {
  (void)id; (void)bytes;
  return const_cast<void*>(data);
}
static void begin(const char* what) { (void)what; }
static void finish(const char* what) { (void)what; }
static inline void op_mark(const char* kind) { (void)kind; }  // KILN_PROFILE=ops is the cuda target's
// A forward on the cpu target is the generated body, called as it is.
template <typename F>
static void forward(F body, void* const* w, int n_w, const kiln_tensor* in, int n_in, kiln_tensor* out, int n_out) {
  (void)n_w;
  (void)n_in;
  (void)n_out;
  body(w, in, out);
}
static void copy(void* dst, const void* src, int64_t bytes) { memcpy(dst, src, (size_t)bytes); }
template <typename I>
static int64_t read_index(const I* p, int64_t j) { return (int64_t)Num<I>::load(p[j]); }

}  // namespace rt
}  // namespace kiln

extern "C" const char* kiln_target(void) { return "cpu"; }
extern "C" int kiln_init(int device) { (void)device; return KILN_OK; }
extern "C" int kiln_memory_info(int64_t* free_bytes, int64_t* total_bytes) {
  *free_bytes = -1;
  *total_bytes = -1;
  return KILN_OK;
}
extern "C" int kiln_malloc(void** ptr, int64_t bytes) {
  return kiln::rt::guard([&] { *ptr = kiln::rt::alloc(bytes, "kiln_malloc"); });
}
extern "C" int kiln_free(void* ptr) { free(ptr); return KILN_OK; }
extern "C" int kiln_upload(void* dst, const void* src, int64_t bytes) { memcpy(dst, src, (size_t)bytes); return KILN_OK; }
extern "C" int kiln_download(void* dst, const void* src, int64_t bytes) { memcpy(dst, src, (size_t)bytes); return KILN_OK; }
extern "C" int kiln_synchronize(void) { return KILN_OK; }
// The cpu target's work is done when a call returns: a download ticket holds its bytes already.
extern "C" int kiln_set_wait(int wait) { (void)wait; return KILN_OK; }
extern "C" int kiln_download_start(const void* src, int64_t bytes, void** ticket) {
  return kiln::rt::guard([&] {
    if (bytes < 0 || (bytes > 0 && !src)) kiln::rt::fail(KILN_ERR_INVALID, "kiln_download_start: %lld bytes at %p", (long long)bytes, src);
    int64_t* t = (int64_t*)malloc(sizeof(int64_t) + (size_t)bytes);
    if (!t) kiln::rt::fail(KILN_ERR_OOM, "kiln_download_start: %lld bytes of host memory", (long long)bytes);
    t[0] = bytes;
    if (bytes > 0) memcpy(t + 1, src, (size_t)bytes);
    *ticket = t;
  });
}
extern "C" int kiln_download_wait(void* ticket, void* dst) {
  return kiln::rt::guard([&] {
    if (!ticket) kiln::rt::fail(KILN_ERR_INVALID, "kiln_download_wait: no ticket");
    int64_t* t = (int64_t*)ticket;
    if (dst && t[0] > 0) memcpy(dst, t + 1, (size_t)t[0]);
    free(t);
  });
}

// Quantize-on-load (kiln_abi.h): the host functions of kiln_quant.h on host memory.
extern "C" int kiln_quantize4(void* dst, const float* src, int64_t n, int64_t K, int64_t block, int dq, const double* code16) {
  return kiln::rt::guard([&] {
    if (n < 0 || block <= 0) kiln::rt::fail(KILN_ERR_INVALID, "kiln_quantize4: n = %lld, block = %lld", (long long)n, (long long)block);
    kiln::quant::quantize4(src, n, block, dq != 0, code16, (uint8_t*)dst, K);
  });
}
extern "C" int kiln_quantize8(void* dst, const float* src, int64_t N, int64_t K) {
  return kiln::rt::guard([&] {
    if (N < 0 || K < 0) kiln::rt::fail(KILN_ERR_INVALID, "kiln_quantize8: N = %lld, K = %lld", (long long)N, (long long)K);
    kiln::quant::quantize8(src, N, K, (uint8_t*)dst);
  });
}
