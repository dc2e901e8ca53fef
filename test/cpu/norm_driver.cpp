// Runs the cpu target's rms_norm / layer_norm (codegen-templates/cpu/kernels.h) on raw tensors, for
// test/norm-kernels.test.ts:  norm_driver <rms|layer> <f32|bf16|f16> <rows> <D> <eps> <bias 0|1> <in> <out>
// <in> holds x (rows·D), w (D) and, with bias, b (D) in storage format; <out> gets y.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include "cpu/kernels.h"

template <typename T>
static int go(bool layer, int64_t rows, int64_t D, double eps, bool bias, const char* in, const char* out) {
  std::vector<T> x((size_t)(rows * D)), w((size_t)D), b((size_t)D), y((size_t)(rows * D));
  FILE* f = fopen(in, "rb");
  if (!f) return 2;
  size_t got = fread(x.data(), sizeof(T), x.size(), f) + fread(w.data(), sizeof(T), w.size(), f) + (bias ? fread(b.data(), sizeof(T), b.size(), f) : 0);
  fclose(f);
  if (got != x.size() + w.size() + (bias ? b.size() : 0)) return 3;
  if (layer) kiln::cpu::layer_norm<T>(x.data(), w.data(), bias ? b.data() : nullptr, y.data(), rows, D, eps);
  else kiln::cpu::rms_norm<T>(x.data(), w.data(), y.data(), rows, D, eps);
  f = fopen(out, "wb");
  if (!f || fwrite(y.data(), sizeof(T), y.size(), f) != y.size()) return 4;
  fclose(f);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: norm_driver <rms|layer> <f32|bf16|f16> <rows> <D> <eps> <bias 0|1> <in> <out>\n");
    return 1;
  }
  const bool layer = !strcmp(argv[1], "layer");
  const int64_t rows = atoll(argv[3]), D = atoll(argv[4]);
  const double eps = atof(argv[5]);
  const bool bias = argv[6][0] == '1';
  if (!strcmp(argv[2], "f32")) return go<float>(layer, rows, D, eps, bias, argv[7], argv[8]);
  if (!strcmp(argv[2], "bf16")) return go<kiln::bf16>(layer, rows, D, eps, bias, argv[7], argv[8]);
  return go<kiln::f16>(layer, rows, D, eps, bias, argv[7], argv[8]);
}
