// cuBLASLt, loaded at run time. The development machine and CI have no cuBLAS headers or
// library, so the artifact declares the few types, enum values and functions it uses itself and
// finds them with dlopen/dlsym on the first large 16-bit GEMM. Without the library (or with
// KILN_NO_CUBLASLT=1) the kernels fall back to Kiln's own tiled GEMM, said once on stderr.
//
// Enum values are those of the public cuBLASLt API (cublasLt.h, CUDA 12/13; checked against the
// header on the GPU machine by test/gpu/cublaslt-abi-check.cu). A wrong value would be a silent
// bug, so every value used is listed here and nowhere else.
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mutex>
#include <map>
#include <tuple>
#include <vector>
#include "runtime.cuh"

namespace kiln {
namespace lt {

typedef int Status;  // cublasStatus_t; CUBLAS_STATUS_SUCCESS = 0
typedef struct Context* Handle;
typedef struct MatmulDescOpaque* MatmulDesc;
typedef struct LayoutOpaque* Layout;
typedef struct PrefOpaque* Pref;
struct Algo {
  uint64_t data[8];
};
struct HeuristicResult {
  Algo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};

enum : int { STATUS_SUCCESS = 0 };
enum : int { COMPUTE_32F = 68, COMPUTE_32I = 72 };  // cublasComputeType_t
enum : int { OP_N = 0, OP_T = 1 };             // cublasOperation_t
enum : int {                                   // cublasLtMatmulDescAttributes_t
  DESC_COMPUTE_TYPE = 0,
  DESC_SCALE_TYPE = 1,
  DESC_TRANSA = 3,
  DESC_TRANSB = 4,
  DESC_EPILOGUE = 7,
  DESC_BIAS_POINTER = 8,
};
enum : int {  // cublasLtMatrixLayoutAttribute_t
  LAYOUT_BATCH_COUNT = 5,
  LAYOUT_STRIDED_BATCH_OFFSET = 6,
};
enum : int {  // cublasLtMatmulPreferenceAttributes_t
  PREF_MAX_WORKSPACE_BYTES = 1,
  PREF_MIN_ALIGNMENT_A_BYTES = 5,
  PREF_MIN_ALIGNMENT_B_BYTES = 6,
  PREF_MIN_ALIGNMENT_C_BYTES = 7,
  PREF_MIN_ALIGNMENT_D_BYTES = 8,
};
enum : uint32_t { EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4 };  // cublasLtEpilogue_t

struct Api {
  Status (*create)(Handle*);
  Status (*destroy)(Handle);
  Status (*descCreate)(MatmulDesc*, int /*cublasComputeType_t*/, int /*cudaDataType_t*/);
  Status (*descDestroy)(MatmulDesc);
  Status (*descSet)(MatmulDesc, int, const void*, size_t);
  Status (*layoutCreate)(Layout*, int /*cudaDataType_t*/, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*layoutDestroy)(Layout);
  Status (*layoutSet)(Layout, int, const void*, size_t);
  Status (*prefCreate)(Pref*);
  Status (*prefDestroy)(Pref);
  Status (*prefSet)(Pref, int, const void*, size_t);
  Status (*heuristic)(Handle, MatmulDesc, Layout, Layout, Layout, Layout, Pref, int, HeuristicResult*, int*);
  Status (*matmul)(Handle, MatmulDesc, const void* alpha, const void* A, Layout, const void* B, Layout, const void* beta, const void* C, Layout, void* D,
                   Layout, const Algo*, void* workspace, size_t workspaceBytes, cudaStream_t);
};

// One cached GEMM configuration: descriptors and the algorithm the heuristic chose.
struct Plan {
  MatmulDesc desc = nullptr;
  Layout a = nullptr, b = nullptr, c = nullptr;
  Algo algo;
  bool ok = false;
};

struct State {
  std::mutex mu;
  bool tried = false;
  bool available = false;
  void* lib = nullptr;
  Api api;
  Handle handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<std::vector<int64_t>, Plan> plans;
  ~State() {
    if (workspace) cudaFree(workspace);
  }
};
static State& st() {
  static State s;
  return s;
}

static bool fallback_noted = false;
static void note_fallback(const char* why) {
  if (fallback_noted) return;
  fallback_noted = true;
  fprintf(stderr, "kiln: cuBLASLt is not used (%s); 16-bit GEMMs run on Kiln's own tiled kernel\n", why);
}

// Loads the library once; false (and one line on stderr) when it is not there.
static bool load_locked(State& s) {
  if (s.tried) return s.available;
  s.tried = true;
  const char* off = getenv("KILN_NO_CUBLASLT");
  if (off && *off && strcmp(off, "0") != 0) {
    note_fallback("KILN_NO_CUBLASLT is set");
    return false;
  }
  const char* names[8];
  int n = 0;
  if (const char* p = getenv("KILN_CUBLASLT")) names[n++] = p;
  names[n++] = "libcublasLt.so.13";
  names[n++] = "libcublasLt.so";
  names[n++] = "/usr/local/cuda/lib64/libcublasLt.so.13";
  names[n++] = "/usr/local/cuda/lib64/libcublasLt.so";
  names[n++] = "libcublasLt.so.12";
  const char* loaded = nullptr;
  for (int i = 0; i < n && !s.lib; i++)
    if ((s.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL))) loaded = names[i];
  if (!s.lib) {
    note_fallback("libcublasLt.so.13 not found by dlopen");
    return false;
  }
  bool all = true;
  auto sym = [&](const char* name) -> void* {
    void* f = dlsym(s.lib, name);
    if (!f) all = false;
    return f;
  };
  Api& a = s.api;
  a.create = (Status(*)(Handle*))sym("cublasLtCreate");
  a.destroy = (Status(*)(Handle))sym("cublasLtDestroy");
  a.descCreate = (Status(*)(MatmulDesc*, int, int))sym("cublasLtMatmulDescCreate");
  a.descDestroy = (Status(*)(MatmulDesc))sym("cublasLtMatmulDescDestroy");
  a.descSet = (Status(*)(MatmulDesc, int, const void*, size_t))sym("cublasLtMatmulDescSetAttribute");
  a.layoutCreate = (Status(*)(Layout*, int, uint64_t, uint64_t, int64_t))sym("cublasLtMatrixLayoutCreate");
  a.layoutDestroy = (Status(*)(Layout))sym("cublasLtMatrixLayoutDestroy");
  a.layoutSet = (Status(*)(Layout, int, const void*, size_t))sym("cublasLtMatrixLayoutSetAttribute");
  a.prefCreate = (Status(*)(Pref*))sym("cublasLtMatmulPreferenceCreate");
  a.prefDestroy = (Status(*)(Pref))sym("cublasLtMatmulPreferenceDestroy");
  a.prefSet = (Status(*)(Pref, int, const void*, size_t))sym("cublasLtMatmulPreferenceSetAttribute");
  a.heuristic = (Status(*)(Handle, MatmulDesc, Layout, Layout, Layout, Layout, Pref, int, HeuristicResult*, int*))sym("cublasLtMatmulAlgoGetHeuristic");
  a.matmul = (decltype(a.matmul))sym("cublasLtMatmul");
  if (!all) {
    note_fallback("a cuBLASLt function is missing from the library");
    return false;
  }
  if (a.create(&s.handle) != STATUS_SUCCESS) {
    note_fallback("cublasLtCreate failed");
    return false;
  }
  // 32 MiB: NVIDIA's recommended cuBLAS workspace for Hopper (4 MiB suffices before it)
  s.workspace_bytes = rt::state().cc_major >= 9 ? ((size_t)32 << 20) : ((size_t)4 << 20);
  rt::check(cudaMalloc(&s.workspace, s.workspace_bytes), "cudaMalloc (cuBLASLt workspace)");
  s.available = true;
  const char* verbose = getenv("KILN_VERBOSE");
  if (verbose && *verbose && strcmp(verbose, "0") != 0) fprintf(stderr, "kiln: cuBLASLt loaded (%s)\n", loaded);
  return true;
}

// Whether cuBLASLt is there (loads it on the first call).
static bool available() {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  return load_locked(s);
}

static int align_of(const void* p) {
  uintptr_t a = (uintptr_t)p;
  int al = 256;
  while (al > 1 && (a % (uintptr_t)al) != 0) al >>= 1;
  return al;
}

// The cached plan of one GEMM configuration (created on first use; p.ok false when cuBLASLt has
// no algorithm for it). ab/cd: cudaDataType_t of A, B and of C, D; compute/scale: the compute
// type and the type of alpha and beta. C (β·C, null when β = 0) has D's layout; its alignment is
// part of the plan. The caller holds the lock.
static Plan& plan_locked(State& s, int ab, int cd, int compute, int scale, bool transA, bool transB, int64_t m, int64_t n, int64_t k, const void* A,
                         int64_t lda, int64_t strideA, const void* B, int64_t ldb, int64_t strideB, void* D, int64_t ldd, int64_t strideD, int64_t batch,
                         const void* bias, const void* C) {
  std::vector<int64_t> key = {ab, cd, compute, transA, transB, m, n, k, lda, strideA, ldb, strideB, ldd, strideD, batch, bias != nullptr,
                              align_of(A), align_of(B), align_of(D), C != nullptr, C ? align_of(C) : 0};
  auto it = s.plans.find(key);
  if (it != s.plans.end()) return it->second;
  Plan p;
  Api& a = s.api;
  bool good = a.descCreate(&p.desc, compute, scale) == STATUS_SUCCESS;
  int32_t ta = transA ? OP_T : OP_N, tb = transB ? OP_T : OP_N;
  uint32_t epi = bias ? EPILOGUE_BIAS : EPILOGUE_DEFAULT;
  good = good && a.descSet(p.desc, DESC_TRANSA, &ta, sizeof ta) == STATUS_SUCCESS;
  good = good && a.descSet(p.desc, DESC_TRANSB, &tb, sizeof tb) == STATUS_SUCCESS;
  good = good && a.descSet(p.desc, DESC_EPILOGUE, &epi, sizeof epi) == STATUS_SUCCESS;
  if (bias) good = good && a.descSet(p.desc, DESC_BIAS_POINTER, &bias, sizeof bias) == STATUS_SUCCESS;
  good = good && a.layoutCreate(&p.a, ab, transA ? k : m, transA ? m : k, lda) == STATUS_SUCCESS;
  good = good && a.layoutCreate(&p.b, ab, transB ? n : k, transB ? k : n, ldb) == STATUS_SUCCESS;
  good = good && a.layoutCreate(&p.c, cd, m, n, ldd) == STATUS_SUCCESS;
  if (good && batch > 1) {
    int32_t bc = (int32_t)batch;
    Layout ls[3] = {p.a, p.b, p.c};
    int64_t strides[3] = {strideA, strideB, strideD};
    for (int i = 0; i < 3; i++) {
      good = good && a.layoutSet(ls[i], LAYOUT_BATCH_COUNT, &bc, sizeof bc) == STATUS_SUCCESS;
      good = good && a.layoutSet(ls[i], LAYOUT_STRIDED_BATCH_OFFSET, &strides[i], sizeof strides[i]) == STATUS_SUCCESS;
    }
  }
  Pref pref = nullptr;
  if (good && a.prefCreate(&pref) == STATUS_SUCCESS) {
    uint64_t ws = s.workspace_bytes;
    uint32_t alA = (uint32_t)align_of(A), alB = (uint32_t)align_of(B), alC = (uint32_t)align_of(C ? C : D), alD = (uint32_t)align_of(D);
    good = good && a.prefSet(pref, PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) == STATUS_SUCCESS;
    good = good && a.prefSet(pref, PREF_MIN_ALIGNMENT_A_BYTES, &alA, sizeof alA) == STATUS_SUCCESS;
    good = good && a.prefSet(pref, PREF_MIN_ALIGNMENT_B_BYTES, &alB, sizeof alB) == STATUS_SUCCESS;
    good = good && a.prefSet(pref, PREF_MIN_ALIGNMENT_C_BYTES, &alC, sizeof alC) == STATUS_SUCCESS;
    good = good && a.prefSet(pref, PREF_MIN_ALIGNMENT_D_BYTES, &alD, sizeof alD) == STATUS_SUCCESS;
    HeuristicResult res[4];
    memset(res, 0, sizeof res);
    int found = 0;
    good = good && a.heuristic(s.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, res, &found) == STATUS_SUCCESS && found > 0 && res[0].state == STATUS_SUCCESS;
    if (good) p.algo = res[0].algo;
    a.prefDestroy(pref);
  } else {
    good = false;
  }
  p.ok = good;
  return s.plans.emplace(key, p).first->second;
}

static void run_locked(State& s, Plan& p, const void* alpha, const void* A, const void* B, const void* beta, const void* C, void* D, const void* bias,
                       const char* what, int64_t m, int64_t n, int64_t k, int64_t batch) {
  Api& a = s.api;
  if (bias && a.descSet(p.desc, DESC_BIAS_POINTER, &bias, sizeof bias) != STATUS_SUCCESS)
    rt::fail(KILN_ERR_DEVICE, "cublasLtMatmulDescSetAttribute(bias) failed at %s", what);
  Status r = a.matmul(s.handle, p.desc, alpha, A, p.a, B, p.b, beta, C ? C : D, p.c, D, p.c, &p.algo, s.workspace, s.workspace_bytes, cuda::stream());
  if (r != STATUS_SUCCESS) rt::fail(KILN_ERR_DEVICE, "cublasLtMatmul failed with cublasStatus %d at %s (m=%lld n=%lld k=%lld batch=%lld)", r, what,
                                    (long long)m, (long long)n, (long long)k, (long long)batch);
}

// D[b] = op(A[b]) · op(B[b]) (+ bias) (+ C[b]), column-major as cuBLAS sees it, on the artifact's
// stream: m×n output with ld m, A is m×k (transA: stored k×m), B is k×n (transB: stored n×k), each
// matrix of the batch `stride*` elements after the previous; C, when given, has D's layout and is
// added with β = 1 before the single rounding to D's type (linear's fused residual). Returns false
// (nothing launched) when cuBLASLt is unavailable or has no algorithm for the case; raises on a
// failed launch.
static bool gemm(int dtype /*cudaDataType_t*/, bool transA, bool transB, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda, int64_t strideA,
                 const void* B, int64_t ldb, int64_t strideB, void* D, int64_t ldd, int64_t strideD, int64_t batch, const void* bias, const char* what,
                 const void* C = nullptr) {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (!load_locked(s)) return false;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || batch > INT32_MAX) return false;
  if (bias && align_of(bias) < 16) return false;
  Plan& p = plan_locked(s, dtype, dtype, COMPUTE_32F, (int)CUDA_R_32F, transA, transB, m, n, k, A, lda, strideA, B, ldb, strideB, D, ldd, strideD, batch, bias, C);
  if (!p.ok) return false;
  const float one = 1.0f, zero = 0.0f;
  run_locked(s, p, &one, A, B, C ? &one : &zero, C, D, bias, what, m, n, k, batch);
  return true;
}

// int8 × int8 → int32 (LLM.int8's inner product on the integer tensor cores): D (m×n, int32,
// column-major, ld m) = Aᵀ · B with A stored k×m (ld lda) and B stored k×n (ld ldb), the "TN"
// layout cuBLASLt's integer kernels want. False when cuBLASLt is unavailable or has no algorithm
// (the caller then runs Kiln's own int8 kernel).
static bool gemm_i8(int64_t m, int64_t n, int64_t k, const int8_t* A, int64_t lda, const int8_t* B, int64_t ldb, int32_t* D, int64_t ldd, const char* what) {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (!load_locked(s)) return false;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || k % 4 || lda % 4 || ldb % 4) return false;
  Plan& p = plan_locked(s, (int)CUDA_R_8I, (int)CUDA_R_32I, COMPUTE_32I, (int)CUDA_R_32I, true, false, m, n, k, A, lda, 0, B, ldb, 0, D, ldd, 0, 1, nullptr, nullptr);
  if (!p.ok) return false;
  const int32_t one = 1, zero = 0;
  run_locked(s, p, &one, A, B, &zero, nullptr, D, nullptr, what, m, n, k, 1);
  return true;
}

}  // namespace lt
}  // namespace kiln
