// The cuda target's side of the artifact ABI: the device, one non-blocking stream, a caching
// device allocator, constants uploaded once, and checked transfers. Everything an artifact does on
// the GPU goes through the stream returned by kiln::cuda::stream(), so work is ordered without
// host synchronization; the host waits only in rt::finish, transfers, and gather's index check.
//
// The ABI is called from several host threads (the Node binding runs each call on a worker of
// libuv's pool): the current device is per thread in CUDA, so every entry point sets it first.
// Each artifact library links its own static copy of cudart and has its own statics here; they
// share the driver's primary context, so device pointers pass freely between artifacts.
#pragma once
#include <chrono>
#include <stdlib.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <map>
#include <mutex>
#include <unordered_map>
#include "../common/kiln_types.h"
#include "../common/rt_common.h"

namespace kiln {
namespace rt {

struct CudaState {
  int device = -1;
  cudaStream_t stream = nullptr;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  unsigned long long* flag_dev = nullptr;   // gather: first out-of-range position (device)
  unsigned long long* flag_host = nullptr;  // pinned host copy of it
  int64_t* scratch_host = nullptr;          // pinned 8 bytes for read_index
  std::mutex mu;                            // init, constants
};
static inline CudaState& state() {
  static CudaState s;
  return s;
}

static inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    fail(KILN_ERR_DEVICE, "CUDA error %s (%s) at %s", cudaGetErrorName(e), cudaGetErrorString(e), what);
  }
}

static thread_local int tls_device = -1;
// Makes the artifact's device current on this thread (CUDA's current device is per thread).
static inline void ensure_device() {
  CudaState& s = state();
  if (s.device < 0) fail(KILN_ERR_DEVICE, "the CUDA target is not initialized: call kiln_init(device) first");
  if (tls_device != s.device) {
    check(cudaSetDevice(s.device), "cudaSetDevice");
    tls_device = s.device;
  }
}

// ---------------------------------------------------------------- caching allocator
// Freed blocks go back to size-keyed free lists and are handed out again to requests of about
// the same size; reuse is safe without events because every kernel runs on the one stream, in
// order. Small requests round up to powers of two (≥ 512 B), large ones to whole MiB; a cached
// block serves a request up to 25% smaller than itself. On cudaMalloc failure the cache is
// returned to the driver and the allocation tried once more.
struct Allocator {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;
  std::unordered_map<void*, size_t> live;
  size_t cached = 0, in_use = 0;
  // when the library is unloaded (the binding dlcloses it once its last buffer is freed), the
  // cache goes back to the driver; errors are moot then (at process exit CUDA may be gone)
  ~Allocator() {
    for (auto& kv : free_blocks) cudaFree(kv.second);
    for (auto& kv : live) cudaFree(kv.first);
  }
};
static inline Allocator& allocator() {
  static Allocator a;
  return a;
}

static inline size_t round_bytes(int64_t bytes) {
  size_t b = bytes < 512 ? 512 : (size_t)bytes;
  if (b <= ((size_t)1 << 20)) {
    size_t p = 512;
    while (p < b) p <<= 1;
    return p;
  }
  const size_t mib = (size_t)1 << 20;
  return (b + mib - 1) / mib * mib;
}

// Returns every cached block to the driver. The caller holds the allocator's lock.
static inline void empty_cache_locked(Allocator& a) {
  if (a.free_blocks.empty()) return;
  // blocks in the cache may still be read by queued kernels: let the stream drain first
  if (state().stream) check(cudaStreamSynchronize(state().stream), "cudaStreamSynchronize (freeing the allocator cache)");
  for (auto& kv : a.free_blocks) check(cudaFree(kv.second), "cudaFree (allocator cache)");
  a.free_blocks.clear();
  a.cached = 0;
}

static inline void* alloc(int64_t bytes, const char* what) {
  ensure_device();
  if (bytes < 0) fail(KILN_ERR_INVALID, "negative allocation of %lld bytes for %s", (long long)bytes, what);
  size_t want = round_bytes(bytes);
  Allocator& a = allocator();
  std::lock_guard<std::mutex> g(a.mu);
  auto it = a.free_blocks.lower_bound(want);
  if (it != a.free_blocks.end() && it->first <= want + want / 4) {
    void* p = it->second;
    size_t sz = it->first;
    a.free_blocks.erase(it);
    a.cached -= sz;
    a.in_use += sz;
    a.live[p] = sz;
    return p;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, want);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    empty_cache_locked(a);
    e = cudaMalloc(&p, want);
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    cudaGetLastError();
    fail(KILN_ERR_OOM, "out of device memory: %lld bytes for %s (device %d: %zu MiB free of %zu MiB; this artifact holds %zu MiB)", (long long)bytes, what,
         state().device, f >> 20, t >> 20, a.in_use >> 20);
  }
  check(e, "cudaMalloc");
  a.in_use += want;
  a.live[p] = want;
  return p;
}

// Returns a block to the cache; false when the pointer did not come from alloc.
static inline bool release_block(void* p) {
  if (!p) return true;
  Allocator& a = allocator();
  std::lock_guard<std::mutex> g(a.mu);
  auto it = a.live.find(p);
  if (it == a.live.end()) return false;
  a.free_blocks.emplace(it->second, p);
  a.cached += it->second;
  a.in_use -= it->second;
  a.live.erase(it);
  return true;
}
static inline void release(void* p) {
  if (!release_block(p)) fail(KILN_ERR_INVALID, "release of a pointer %p that the allocator did not hand out", p);
}

// ---------------------------------------------------------------- constants, copies, finish

// Constants baked into the library are uploaded once (per device) and kept for the process.
static inline void* constant(int id, const void* data, int64_t bytes) {
  ensure_device();
  CudaState& s = state();
  static std::map<std::pair<int, int>, void*> table;
  std::lock_guard<std::mutex> g(s.mu);
  auto key = std::make_pair(s.device, id);
  auto it = table.find(key);
  if (it != table.end()) return it->second;
  void* p = nullptr;
  check(cudaMalloc(&p, bytes > 0 ? (size_t)bytes : 256), "cudaMalloc (constant)");
  if (bytes > 0) {
    // the host data is static: an asynchronous copy on the stream orders it before every use
    check(cudaMemcpyAsync(p, data, (size_t)bytes, cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync (constant upload)");
  }
  table[key] = p;
  return p;
}

// Waits for the stream; any error of the work queued so far surfaces here.
// KILN_PROFILE=1: per forward, the host time spent issuing work and the time then waited for
// the GPU, printed to stderr every 32 forwards (is a step bound by launches or by the GPU?).
struct Profile {
  bool on = getenv("KILN_PROFILE") != nullptr;
  std::chrono::steady_clock::time_point start;
  double issue_us = 0, wait_us = 0;
  int n = 0;
};
static inline Profile& profile() {
  static Profile p;
  return p;
}
static inline void begin(const char* what) {
  (void)what;
  if (profile().on) profile().start = std::chrono::steady_clock::now();
}
static inline void finish(const char* what) {
  ensure_device();
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail(KILN_ERR_DEVICE, "CUDA error %s (%s) before the end of %s", cudaGetErrorName(e), cudaGetErrorString(e), what);
  Profile& pr = profile();
  std::chrono::steady_clock::time_point issued = std::chrono::steady_clock::now();
  e = cudaStreamSynchronize(state().stream);
  if (pr.on) {
    std::chrono::steady_clock::time_point done = std::chrono::steady_clock::now();
    pr.issue_us += std::chrono::duration<double, std::micro>(issued - pr.start).count();
    pr.wait_us += std::chrono::duration<double, std::micro>(done - issued).count();
    if (++pr.n % 32 == 0) {
      fprintf(stderr, "kiln profile: %d forwards, mean host issue %.0f us, mean GPU wait after issue %.0f us\n", pr.n, pr.issue_us / 32, pr.wait_us / 32);
      pr.issue_us = pr.wait_us = 0;
    }
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail(KILN_ERR_DEVICE, "CUDA error %s (%s) at the end of %s", cudaGetErrorName(e), cudaGetErrorString(e), what);
  }
}

static inline void copy(void* dst, const void* src, int64_t bytes) {
  ensure_device();
  if (bytes <= 0) return;
  check(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, state().stream), "cudaMemcpyAsync (device to device)");
}

template <typename I>
static inline int64_t read_index(const I* p, int64_t j) {
  ensure_device();
  CudaState& s = state();
  check(cudaMemcpyAsync(s.scratch_host, p + j, sizeof(I), cudaMemcpyDeviceToHost, s.stream), "cudaMemcpyAsync (read_index)");
  check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize (read_index)");
  I v;
  memcpy(&v, s.scratch_host, sizeof(I));
  return (int64_t)Num<I>::load(v);
}

static inline void init_device(int device) {
  CudaState& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  if (s.device >= 0) {
    if (s.device != device)
      fail(KILN_ERR_INVALID, "this artifact is already initialized on device %d; one process can use it on one device only (asked for %d)", s.device, device);
    tls_device = -1;
    ensure_device();
    return;
  }
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count) fail(KILN_ERR_INVALID, "no CUDA device %d (this machine has %d)", device, count);
  check(cudaSetDevice(device), "cudaSetDevice");
  tls_device = device;
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  if (prop.major * 10 + prop.minor < 80)
    fail(KILN_ERR_DEVICE, "device %d (%s) has compute capability %d.%d; Kiln's CUDA target needs 8.0 or newer", device, prop.name, prop.major, prop.minor);
  check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  check(cudaMalloc((void**)&s.flag_dev, sizeof(unsigned long long)), "cudaMalloc (gather flag)");
  check(cudaHostAlloc((void**)&s.flag_host, sizeof(unsigned long long), cudaHostAllocDefault), "cudaHostAlloc (gather flag)");
  check(cudaHostAlloc((void**)&s.scratch_host, sizeof(int64_t), cudaHostAllocDefault), "cudaHostAlloc (scratch)");
  s.sm_count = prop.multiProcessorCount;
  s.cc_major = prop.major;
  s.cc_minor = prop.minor;
  s.device = device;  // last: ensure_device() treats device >= 0 as "ready"
}

}  // namespace rt

namespace cuda {
// The stream every kernel of the artifact runs on (the device made current on this thread).
static inline cudaStream_t stream() {
  rt::ensure_device();
  return rt::state().stream;
}
}  // namespace cuda
}  // namespace kiln

extern "C" const char* kiln_target(void) { return "cuda"; }
extern "C" int kiln_init(int device) {
  return kiln::rt::guard([&] { kiln::rt::init_device(device); });
}
extern "C" int kiln_memory_info(int64_t* free_bytes, int64_t* total_bytes) {
  return kiln::rt::guard([&] {
    kiln::rt::ensure_device();
    size_t f = 0, t = 0;
    kiln::rt::check(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    *free_bytes = (int64_t)f;
    *total_bytes = (int64_t)t;
  });
}
extern "C" int kiln_malloc(void** ptr, int64_t bytes) {
  return kiln::rt::guard([&] { *ptr = kiln::rt::alloc(bytes, "kiln_malloc"); });
}
extern "C" int kiln_free(void* ptr) {
  return kiln::rt::guard([&] {
    if (!ptr) return;
    kiln::rt::ensure_device();
    if (!kiln::rt::release_block(ptr)) kiln::rt::fail(KILN_ERR_INVALID, "kiln_free of %p, which kiln_malloc did not return (or was freed already)", ptr);
  });
}
extern "C" int kiln_upload(void* dst, const void* src, int64_t bytes) {
  return kiln::rt::guard([&] {
    kiln::rt::ensure_device();
    if (bytes <= 0) return;
    cudaStream_t s = kiln::rt::state().stream;
    kiln::rt::check(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (kiln_upload)");
    kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_upload)");
  });
}
extern "C" int kiln_download(void* dst, const void* src, int64_t bytes) {
  return kiln::rt::guard([&] {
    kiln::rt::ensure_device();
    if (bytes <= 0) return;
    cudaStream_t s = kiln::rt::state().stream;
    kiln::rt::check(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (kiln_download)");
    kiln::rt::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (kiln_download)");
  });
}
extern "C" int kiln_synchronize(void) {
  return kiln::rt::guard([&] { kiln::rt::finish("kiln_synchronize"); });
}
