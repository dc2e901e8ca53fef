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
#include <algorithm>
#include <map>
#include <string>
#include <vector>
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
  bool captured_gather = false;             // a gather with a range check was captured into a graph
  std::mutex mu;                            // init, constants
};
static inline CudaState& state() {
  static CudaState s;
  return s;
}
// kiln_set_wait, per thread (the binding sets it around a forward on the thread that runs it, so
// another model's call on another thread is not affected): forwards and uploads wait for the GPU
static thread_local bool tls_wait = true;

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
  // while a forward is captured as a CUDA graph: every block handed out (the graph keeps them)
  bool recording = false;
  std::unordered_map<void*, size_t> recorded;
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
    if (a.recording) a.recorded[p] = sz;
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
  if (a.recording) a.recorded[p] = want;
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
// KILN_PROFILE=ops: GPU time of each op kind (CUDA events between ops; CUDA graphs off), printed
// every 32 forwards as a table of the kinds taking the most time a forward. So that the events
// time the GPU and not the host's launches (4–5 µs each, longer than most decode kernels), a
// kernel holds the stream for KILN_PROFILE_HOLD_MS (default 30 ms) whenever the host finds it
// drained, while the host issues the ops behind it: they then run back to back, as a replayed graph
// runs them (each kind's time includes its kernels' launch gaps on the GPU; the hold is its own row,
// out of the total).
struct Profile {
  bool on = getenv("KILN_PROFILE") != nullptr;
  bool ops = on && strcmp(getenv("KILN_PROFILE"), "ops") == 0;
  std::chrono::steady_clock::time_point start;
  double issue_us = 0, wait_us = 0;
  int n = 0;
  std::vector<cudaEvent_t> events;     // one per op of the current forward, recorded before it
  std::vector<const char*> kinds;      // the op kind after each event
  std::vector<std::chrono::steady_clock::time_point> host;  // host clock at each event
  int used = 0;
  // KILN_PROFILE_EVERY=n: print every n forwards (default 32)
  int every = getenv("KILN_PROFILE_EVERY") && atoi(getenv("KILN_PROFILE_EVERY")) > 0 ? atoi(getenv("KILN_PROFILE_EVERY")) : 32;
  std::map<std::string, std::pair<double, long>> by_kind;  // kind -> (ms, launches) since the last print
  std::map<std::string, double> host_by_kind;               // kind -> host ms spent issuing it
  double entry_ms = 0;                                      // host ms from begin() to the first op
  bool begun = false;                                       // a forward began (finish also ends kiln_synchronize)
};
static inline Profile& profile() {
  static Profile p;
  return p;
}
// spins one thread until `ns` nanoseconds have passed on the GPU's global timer
__global__ void k_profile_hold(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}
static inline void begin(const char* what) {
  (void)what;
  if (profile().on) profile().start = std::chrono::steady_clock::now();

  profile().used = 0;
  profile().begun = true;
}
static inline void op_event(const char* kind);
// Marks the start of an op (KILN_PROFILE=ops); the next mark or the end of the forward ends it.
// When the stream has drained (the forward's start, or after an op that waited for the GPU, like
// the embedding's range check) the hold kernel goes first, timed as its own "(hold)" row.
static inline void op_mark(const char* kind) {
  Profile& pr = profile();
  if (!pr.ops) return;
  static const double hold = getenv("KILN_PROFILE_HOLD_MS") ? atof(getenv("KILN_PROFILE_HOLD_MS")) : 30.0;
  if (hold > 0 && strcmp(kind, "end") != 0 && cudaStreamQuery(state().stream) == cudaSuccess) {
    op_event("(hold)");
    k_profile_hold<<<1, 1, 0, state().stream>>>((unsigned long long)(hold * 1e6));
  }
  op_event(kind);
}
static inline void op_event(const char* kind) {
  Profile& pr = profile();
  if (pr.used == (int)pr.events.size()) {
    cudaEvent_t e;
    check(cudaEventCreate(&e), "cudaEventCreate (profile)");
    pr.events.push_back(e);
    pr.kinds.push_back(kind);
    pr.host.push_back({});
  }
  pr.kinds[pr.used] = kind;
  pr.host[pr.used] = std::chrono::steady_clock::now();
  check(cudaEventRecord(pr.events[pr.used++], state().stream), "cudaEventRecord (profile)");
}
static inline void op_report() {
  Profile& pr = profile();
  op_mark("end");
  check(cudaEventSynchronize(pr.events[pr.used - 1]), "cudaEventSynchronize (profile)");
  for (int i = 0; i + 1 < pr.used; i++) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, pr.events[i], pr.events[i + 1]), "cudaEventElapsedTime (profile)");
    auto& k = pr.by_kind[pr.kinds[i]];
    k.first += ms;
    k.second += 1;
    pr.host_by_kind[pr.kinds[i]] += std::chrono::duration<double, std::milli>(pr.host[i + 1] - pr.host[i]).count();
  }
  if (pr.used > 0) pr.entry_ms += std::chrono::duration<double, std::milli>(pr.host[0] - pr.start).count();
  if (pr.n % pr.every == pr.every - 1) {
    std::vector<std::pair<double, std::string>> rows;
    double total = 0;
    for (auto& kv : pr.by_kind) {
      rows.push_back({kv.second.first, kv.first});
      if (kv.first[0] != '(') total += kv.second.first;  // not the hold
    }
    std::sort(rows.rbegin(), rows.rend());
    double host = 0;
    for (auto& kv : pr.host_by_kind) host += kv.second;
    fprintf(stderr, "kiln profile (a forward, mean of %d): GPU %.3f ms; host issuing %.3f ms, host before the first op %.3f ms\n", pr.every, total / pr.every, host / pr.every, pr.entry_ms / pr.every);
    for (auto& r : rows)
      fprintf(stderr, "  %-20s GPU %8.3f ms  host %8.3f ms  %6ld launches\n", r.second.c_str(), r.first / pr.every, pr.host_by_kind[r.second] / pr.every, pr.by_kind[r.second].second / pr.every);
    pr.by_kind.clear();
    pr.host_by_kind.clear();
    pr.entry_ms = 0;
  }
}
static inline bool capturing();
static inline void check_replayed_gathers();
static inline void graphs_replayed_gather_clear();
static inline void finish(const char* what, bool force_wait = false) {
  ensure_device();
  if (capturing()) return;  // the host waits after the captured graph runs, not inside the capture
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail(KILN_ERR_DEVICE, "CUDA error %s (%s) before the end of %s", cudaGetErrorName(e), cudaGetErrorString(e), what);
  if (!tls_wait && !force_wait) {
    // kiln_set_wait(0): the work stays queued (a pipelined decode step). The replay's range check
    // of its token ids is skipped: they are the model's own picks or were checked on the host.
    graphs_replayed_gather_clear();
    profile().begun = false;
    return;
  }
  Profile& pr = profile();
  const bool timed = pr.begun;
  pr.begun = false;
  if (pr.ops && timed) op_report();
  std::chrono::steady_clock::time_point issued = std::chrono::steady_clock::now();
  e = cudaStreamSynchronize(state().stream);
  if (pr.on && timed) {
    std::chrono::steady_clock::time_point done = std::chrono::steady_clock::now();
    pr.issue_us += std::chrono::duration<double, std::micro>(issued - pr.start).count();
    pr.wait_us += std::chrono::duration<double, std::micro>(done - issued).count();
    if (++pr.n % pr.every == 0) {
      fprintf(stderr, "kiln profile: %d forwards, mean host issue %.0f us, mean GPU wait after issue %.0f us\n", pr.n, pr.issue_us / pr.every, pr.wait_us / pr.every);
      pr.issue_us = pr.wait_us = 0;
    }
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail(KILN_ERR_DEVICE, "CUDA error %s (%s) at the end of %s", cudaGetErrorName(e), cudaGetErrorString(e), what);
  }
  check_replayed_gathers();
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


// ---------------------------------------------------------------- CUDA graphs
// A forward whose input shapes (and large input buffers) repeat is captured once as a CUDA graph and
// then replayed: one launch instead of ~1000, and the GPU runs the kernels back to back. This is
// what the static KV cache is for: every decode step of a generation has the same shapes and the
// same cache buffers (written in place), only the token and the position change, and those small
// inputs are copied into the graph's own buffers before each replay.
//
// Policy: a shape is captured the second time it is seen (the first run is eager, which also
// uploads the library's constants); up to kMaxGraphs graphs are kept, least recently used first
// out. Inputs of more than kStagedBytes are part of the key by address (the KV cache, written in
// place: an output that is such an input is handed back as it); smaller ones are staged. Outputs
// the graph allocates are copied into fresh buffers for the caller, who owns those as after an
// eager forward. KILN_CUDA_GRAPHS=0 turns replay off (for A/B measurements).
struct Graph {
  cudaGraphExec_t exec = nullptr;
  std::vector<void*> staging;         // per input: the graph's copy (small inputs), or nullptr (keyed by address)
  std::vector<int64_t> staged_bytes;  // per input: bytes copied into staging before a replay
  std::vector<kiln_tensor> outs;      // outputs as the graph leaves them
  std::vector<bool> aliased;          // output j is an input's buffer (keyed by address)
  std::vector<void*> blocks;          // allocator blocks the graph owns (its intermediates and outputs)
  bool checks_gather = false;         // the graph copies gather's range flag to the host
  uint64_t used = 0;
};
static const int kMaxGraphs = 4;
static const int64_t kStagedBytes = 4096;
struct Graphs {
  bool enabled = !(getenv("KILN_CUDA_GRAPHS") && getenv("KILN_CUDA_GRAPHS")[0] == '0') && !profile().ops;
  std::map<std::vector<int64_t>, Graph> table;
  std::map<std::vector<int64_t>, int> seen;
  uint64_t clock = 0;
  bool capturing = false;
  bool replayed_gather = false;  // the forward now finishing replayed a graph with a gather check
  ~Graphs() {
    for (auto& kv : table) {
      if (kv.second.exec) cudaGraphExecDestroy(kv.second.exec);
      for (void* p : kv.second.staging) if (p) cudaFree(p);
      for (void* p : kv.second.blocks) cudaFree(p);
    }
  }
};
static inline Graphs& graphs() {
  static Graphs g;
  return g;
}
static inline bool capturing() { return graphs().capturing; }
static inline void graphs_replayed_gather_clear() { graphs().replayed_gather = false; }
// A captured gather cannot wait for its range flag; the graph copies it to pinned host memory and
// the host reads it here, after the replay (one checked gather a graph: the embedding lookup).
static inline void check_replayed_gathers() {
  Graphs& gs = graphs();
  if (!gs.replayed_gather) return;
  gs.replayed_gather = false;
  const unsigned long long bad = *state().flag_host;
  if (bad != ~0ULL) fail(KILN_ERR_INVALID, "gather: an index at position %llu is out of range (a token id outside the vocabulary?)", bad);
}
static inline int64_t tensor_bytes(const kiln_tensor& t) {
  int64_t n = kiln_dtype_bytes(t.dtype);
  for (int k = 0; k < t.rank; k++) n *= t.shape[k];
  return n;
}
static inline void release_graph(Graph& g) {
  // called between forwards (each one ends with the stream drained): nothing of g is in flight
  if (g.exec) cudaGraphExecDestroy(g.exec);
  for (void* p : g.staging) if (p) cudaFree(p);
  for (void* p : g.blocks) cudaFree(p);
}

template <typename F>
static void forward(F body, void* const* w, int n_w, const kiln_tensor* in, int n_in, kiln_tensor* out, int n_out) {
  Graphs& gs = graphs();
  if (!gs.enabled) return body(w, in, out);
  ensure_device();
  CudaState& s = state();
  // the key: every input's dtype and shape, the address of the large ones, and the weights
  std::vector<int64_t> key;
  for (int i = 0; i < n_in; i++) {
    key.push_back(in[i].dtype);
    key.push_back(in[i].rank);
    for (int k = 0; k < in[i].rank; k++) key.push_back(in[i].shape[k]);
    key.push_back(tensor_bytes(in[i]) > kStagedBytes ? (int64_t)(uintptr_t)in[i].data : 0);
  }
  uint64_t wh = 1469598103934665603ULL;  // FNV-1a over the weight addresses
  for (int i = 0; i < n_w; i++) wh = (wh ^ (uint64_t)(uintptr_t)w[i]) * 1099511628211ULL;
  key.push_back((int64_t)wh);

  auto found = gs.table.find(key);
  if (found == gs.table.end()) {
    if (gs.seen.size() > 256) gs.seen.clear();
    if (++gs.seen[key] < 2) return body(w, in, out);
    // capture: small inputs go through the graph's own buffers
    if ((int)gs.table.size() >= kMaxGraphs) {
      auto lru = gs.table.begin();
      for (auto it = gs.table.begin(); it != gs.table.end(); ++it)
        if (it->second.used < lru->second.used) lru = it;
      Graph old = lru->second;
      gs.table.erase(lru);
      release_graph(old);
    }
    Graph g;
    std::vector<kiln_tensor> cin(in, in + n_in);
    g.staging.assign(n_in, nullptr);
    g.staged_bytes.assign(n_in, 0);
    for (int i = 0; i < n_in; i++) {
      const int64_t b = tensor_bytes(in[i]);
      if (b > kStagedBytes) continue;
      check(cudaMalloc(&g.staging[i], b > 0 ? (size_t)b : 16), "cudaMalloc (graph input)");
      g.staged_bytes[i] = b;
      cin[i].data = g.staging[i];
    }
    std::vector<kiln_tensor> cout(n_out);
    Allocator& a = allocator();
    {
      std::lock_guard<std::mutex> lk(a.mu);
      a.recording = true;
      a.recorded.clear();
    }
    cudaGraph_t graph = nullptr;
    check(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
    gs.capturing = true;
    try {
      body(w, cin.data(), cout.data());
    } catch (...) {
      gs.capturing = false;
      cudaStreamEndCapture(s.stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      std::lock_guard<std::mutex> lk(a.mu);
      a.recording = false;
      for (void* p : g.staging) if (p) cudaFree(p);
      throw;
    }
    gs.capturing = false;
    g.checks_gather = s.captured_gather;
    s.captured_gather = false;
    cudaError_t e = cudaStreamEndCapture(s.stream, &graph);
    {
      // the graph owns every block handed out during the capture: take them out of the cache
      std::lock_guard<std::mutex> lk(a.mu);
      a.recording = false;
      for (auto& kv : a.recorded) {
        g.blocks.push_back(kv.first);
        auto lv = a.live.find(kv.first);
        if (lv != a.live.end()) {
          a.in_use -= lv->second;
          a.live.erase(lv);
        }
        for (auto it = a.free_blocks.begin(); it != a.free_blocks.end(); ++it)
          if (it->second == kv.first) {
            a.cached -= it->first;
            a.free_blocks.erase(it);
            break;
          }
      }
      a.recorded.clear();
    }
    if (e == cudaSuccess) e = cudaGraphInstantiate(&g.exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
      cudaGetLastError();
      release_graph(g);
      gs.enabled = false;  // this artifact's forward cannot be captured here: run eagerly from now on
      return body(w, in, out);
    }
    g.outs = cout;
    g.aliased.assign(n_out, false);
    for (int j = 0; j < n_out; j++)
      for (int i = 0; i < n_in; i++)
        if (!g.staging[i] && cout[j].data == in[i].data) g.aliased[j] = true;
    found = gs.table.emplace(key, g).first;
  }
  // replay
  begin("a replayed forward");
  Graph& g = found->second;
  g.used = ++gs.clock;
  for (int i = 0; i < n_in; i++)
    if (g.staging[i] && g.staged_bytes[i] > 0)
      check(cudaMemcpyAsync(g.staging[i], in[i].data, (size_t)g.staged_bytes[i], cudaMemcpyDeviceToDevice, s.stream), "cudaMemcpyAsync (graph input)");
  check(cudaGraphLaunch(g.exec, s.stream), "cudaGraphLaunch");
  for (int j = 0; j < n_out; j++) {
    out[j] = g.outs[j];
    if (g.aliased[j]) continue;
    const int64_t b = tensor_bytes(g.outs[j]);
    out[j].data = alloc(b, "a replayed forward's output");
    if (b > 0) check(cudaMemcpyAsync(out[j].data, g.outs[j].data, (size_t)b, cudaMemcpyDeviceToDevice, s.stream), "cudaMemcpyAsync (graph output)");
  }
  gs.replayed_gather = g.checks_gather;
  finish("a replayed forward");
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
static inline void upload_queued(void* dst, const void* src, int64_t bytes);
extern "C" int kiln_upload(void* dst, const void* src, int64_t bytes) {
  return kiln::rt::guard([&] {
    kiln::rt::ensure_device();
    if (bytes <= 0) return;
    cudaStream_t s = kiln::rt::state().stream;
    if (!kiln::rt::tls_wait) return upload_queued(dst, src, bytes);
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
  return kiln::rt::guard([&] { kiln::rt::finish("kiln_synchronize", true); });
}
extern "C" int kiln_set_wait(int wait) {
  return kiln::rt::guard([&] { kiln::rt::tls_wait = wait != 0; });
}

namespace kiln {
namespace rt {
// A download ticket: pinned host memory the copy lands in, and the event recorded after it
// (reused: a pool, so a decode step allocates neither).
struct Ticket {
  void* host = nullptr;
  int64_t cap = 0, bytes = 0;
  cudaEvent_t ev = nullptr;
};
struct TicketPool {
  std::mutex mu;
  std::vector<Ticket*> free;     // download tickets not in use
  std::vector<Ticket*> uploads;  // upload_queued's slots (reused once their event completes)
  ~TicketPool() {
    for (auto* v : {&free, &uploads})
      for (Ticket* t : *v) {
        if (t->host) cudaFreeHost(t->host);
        if (t->ev) cudaEventDestroy(t->ev);
        delete t;
      }
  }
};
static inline TicketPool& tickets() {
  static TicketPool p;
  return p;
}
// a ticket that is free or whose copy is done (cap ≥ bytes), else a new one
static inline Ticket* take_ticket(std::vector<Ticket*>& pool, int64_t bytes, bool only_done) {
  for (size_t i = 0; i < pool.size(); i++)
    if (pool[i]->cap >= bytes && (!only_done || cudaEventQuery(pool[i]->ev) == cudaSuccess)) {
      Ticket* t = pool[i];
      pool.erase(pool.begin() + (long)i);
      return t;
    }
  Ticket* t = new Ticket();
  t->cap = bytes > 256 ? bytes : 256;
  cudaError_t e = cudaHostAlloc(&t->host, (size_t)t->cap, cudaHostAllocDefault);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&t->ev, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    if (t->host) cudaFreeHost(t->host);
    delete t;
    check(e, "pinned memory and an event for a queued copy");
  }
  return t;
}
}  // namespace rt
}  // namespace kiln

// kiln_upload that does not wait (kiln_set_wait(0)): the bytes go through pinned memory, so the
// copy is queued behind the work before it (a pageable source may be copied at once, ahead of
// queued kernels still reading the reused destination block), and the slot is reused only once
// its event says the copy is done.
static inline void upload_queued(void* dst, const void* src, int64_t bytes) {
  using namespace kiln::rt;
  Ticket* t;
  {
    std::lock_guard<std::mutex> lk(tickets().mu);
    t = take_ticket(tickets().uploads, bytes, true);
  }
  memcpy(t->host, src, (size_t)bytes);
  cudaStream_t s = state().stream;
  cudaError_t e = cudaMemcpyAsync(dst, t->host, (size_t)bytes, cudaMemcpyHostToDevice, s);
  if (e == cudaSuccess) e = cudaEventRecord(t->ev, s);
  {
    std::lock_guard<std::mutex> lk(tickets().mu);
    tickets().uploads.push_back(t);
  }
  check(e, "cudaMemcpyAsync (kiln_upload, queued)");
}

extern "C" int kiln_download_start(const void* src, int64_t bytes, void** ticket) {
  return kiln::rt::guard([&] {
    using namespace kiln::rt;
    ensure_device();
    if (bytes < 0 || (bytes > 0 && !src)) fail(KILN_ERR_INVALID, "kiln_download_start: %lld bytes at %p", (long long)bytes, src);
    Ticket* t;
    {
      std::lock_guard<std::mutex> lk(tickets().mu);
      t = take_ticket(tickets().free, bytes, false);
    }
    t->bytes = bytes;
    cudaStream_t s = state().stream;
    cudaError_t e = bytes > 0 ? cudaMemcpyAsync(t->host, src, (size_t)bytes, cudaMemcpyDeviceToHost, s) : cudaSuccess;
    if (e == cudaSuccess) e = cudaEventRecord(t->ev, s);
    if (e != cudaSuccess) {
      std::lock_guard<std::mutex> lk(tickets().mu);
      tickets().free.push_back(t);
      check(e, "kiln_download_start (copy)");
    }
    *ticket = t;
  });
}
extern "C" int kiln_download_wait(void* ticket, void* dst) {
  return kiln::rt::guard([&] {
    using namespace kiln::rt;
    ensure_device();
    if (!ticket) fail(KILN_ERR_INVALID, "kiln_download_wait: no ticket");
    Ticket* t = (Ticket*)ticket;
    const cudaError_t e = cudaEventSynchronize(t->ev);
    if (e == cudaSuccess && dst && t->bytes > 0) memcpy(dst, t->host, (size_t)t->bytes);
    {
      std::lock_guard<std::mutex> lk(tickets().mu);
      tickets().free.push_back(t);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail(KILN_ERR_DEVICE, "CUDA error %s (%s) in the work before a download (a pipelined forward)", cudaGetErrorName(e), cudaGetErrorString(e));
    }
  });
}
