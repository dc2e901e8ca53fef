// Compile-time check (on the GPU machine, whose toolkit has cuBLAS headers) that the types, enum
// values and function signatures codegen-templates/cuda/cublaslt.cuh declares by hand match
// cublasLt.h. Building it is the test:
//   nvcc -std=c++17 -I codegen-templates -o /tmp/ltcheck test/gpu/cublaslt-abi-check.cu && /tmp/ltcheck
#include <cublasLt.h>
#include <stddef.h>
#include <type_traits>
#include "common/kiln_types.h"
#include "cuda/cublaslt.cuh"

extern "C" const char* kiln_artifact_hash(void) { return "ltcheck"; }

namespace L = kiln::lt;

static_assert(L::STATUS_SUCCESS == CUBLAS_STATUS_SUCCESS, "status");
static_assert(L::COMPUTE_32F == CUBLAS_COMPUTE_32F, "compute type");
static_assert(L::OP_N == CUBLAS_OP_N && L::OP_T == CUBLAS_OP_T, "operation");
static_assert(L::DESC_COMPUTE_TYPE == CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, "desc compute type");
static_assert(L::DESC_SCALE_TYPE == CUBLASLT_MATMUL_DESC_SCALE_TYPE, "desc scale type");
static_assert(L::DESC_TRANSA == CUBLASLT_MATMUL_DESC_TRANSA, "desc transa");
static_assert(L::DESC_TRANSB == CUBLASLT_MATMUL_DESC_TRANSB, "desc transb");
static_assert(L::DESC_EPILOGUE == CUBLASLT_MATMUL_DESC_EPILOGUE, "desc epilogue");
static_assert(L::DESC_BIAS_POINTER == CUBLASLT_MATMUL_DESC_BIAS_POINTER, "desc bias pointer");
static_assert(L::LAYOUT_BATCH_COUNT == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, "layout batch count");
static_assert(L::LAYOUT_STRIDED_BATCH_OFFSET == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, "layout batch offset");
static_assert(L::PREF_MAX_WORKSPACE_BYTES == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, "pref workspace");
static_assert(L::PREF_MIN_ALIGNMENT_A_BYTES == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, "pref align A");
static_assert(L::PREF_MIN_ALIGNMENT_B_BYTES == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, "pref align B");
static_assert(L::PREF_MIN_ALIGNMENT_C_BYTES == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, "pref align C");
static_assert(L::PREF_MIN_ALIGNMENT_D_BYTES == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, "pref align D");
static_assert(L::EPILOGUE_DEFAULT == CUBLASLT_EPILOGUE_DEFAULT && L::EPILOGUE_BIAS == CUBLASLT_EPILOGUE_BIAS, "epilogue");
static_assert(sizeof(L::Algo) == sizeof(cublasLtMatmulAlgo_t), "algo size");
static_assert(sizeof(L::HeuristicResult) == sizeof(cublasLtMatmulHeuristicResult_t), "heuristic result size");
static_assert(offsetof(L::HeuristicResult, workspaceSize) == offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize), "workspaceSize");
static_assert(offsetof(L::HeuristicResult, state) == offsetof(cublasLtMatmulHeuristicResult_t, state), "state");
static_assert(sizeof(cublasStatus_t) == sizeof(L::Status), "status size");

// Signatures: same arity and the same size for every parameter (the handles are pointers, enums ints).
template <size_t... S> struct Sizes {};
template <typename R, typename... A> Sizes<sizeof(R), sizeof(A)...> sizes(R (*)(A...));
#define SAME(real, mine) static_assert(std::is_same<decltype(sizes(&real)), decltype(sizes(std::declval<decltype(L::Api::mine)>()))>::value, #real)
SAME(cublasLtCreate, create);
SAME(cublasLtDestroy, destroy);
SAME(cublasLtMatmulDescCreate, descCreate);
SAME(cublasLtMatmulDescDestroy, descDestroy);
SAME(cublasLtMatmulDescSetAttribute, descSet);
SAME(cublasLtMatrixLayoutCreate, layoutCreate);
SAME(cublasLtMatrixLayoutDestroy, layoutDestroy);
SAME(cublasLtMatrixLayoutSetAttribute, layoutSet);
SAME(cublasLtMatmulPreferenceCreate, prefCreate);
SAME(cublasLtMatmulPreferenceDestroy, prefDestroy);
SAME(cublasLtMatmulPreferenceSetAttribute, prefSet);
SAME(cublasLtMatmulAlgoGetHeuristic, heuristic);
SAME(cublasLtMatmul, matmul);

int main() {
  printf("cuBLASLt ABI check: OK\n");
  return 0;
}
