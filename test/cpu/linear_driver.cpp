// Runs the cpu target's linear (codegen-templates/cpu/kernels.h) on raw tensors, for
// test/fuse-residual.test.ts:  linear_driver <f32|bf16|f16> <M> <N> <K> <bias 0|1> <residual 0|1> <in> <out>
// <in> holds x (M·K), w (N·K), then b (N) and r (M·N) where given, in storage format; <out> gets y.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include "cpu/kernels.h"

template <typename T>
static int go(int64_t M, int64_t N, int64_t K, bool bias, bool res, const char* in, const char* out) {
  std::vector<T> x((size_t)(M * K)), w((size_t)(N * K)), b(bias ? (size_t)N : 0), r(res ? (size_t)(M * N) : 0), y((size_t)(M * N));
  FILE* f = fopen(in, "rb");
  if (!f) return 2;
  size_t got = fread(x.data(), sizeof(T), x.size(), f) + fread(w.data(), sizeof(T), w.size(), f) + fread(b.data(), sizeof(T), b.size(), f) +
               fread(r.data(), sizeof(T), r.size(), f);
  fclose(f);
  if (got != x.size() + w.size() + b.size() + r.size()) return 3;
  kiln::cpu::linear<T>(x.data(), w.data(), bias ? b.data() : nullptr, res ? r.data() : nullptr, y.data(), M, N, K);
  f = fopen(out, "wb");
  if (!f || fwrite(y.data(), sizeof(T), y.size(), f) != y.size()) return 4;
  fclose(f);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: linear_driver <f32|bf16|f16> <M> <N> <K> <bias 0|1> <residual 0|1> <in> <out>\n");
    return 1;
  }
  const int64_t M = atoll(argv[2]), N = atoll(argv[3]), K = atoll(argv[4]);
  const bool bias = argv[5][0] == '1', res = argv[6][0] == '1';
  if (!strcmp(argv[1], "f32")) return go<float>(M, N, K, bias, res, argv[7], argv[8]);
  if (!strcmp(argv[1], "bf16")) return go<kiln::bf16>(M, N, K, bias, res, argv[7], argv[8]);
  return go<kiln::f16>(M, N, K, bias, res, argv[7], argv[8]);
}
