// Runs the host quantizer of codegen-templates/common/kiln_quant.h (what the cpu target runs on load,
// and what the cuda target's double quantization runs on the host) on raw weights, for
// test/quant.test.ts:  quant4_driver <n> <block> <dq 0|1> <in> <out> [K]
// <in> holds the 16 code values (f64) then the n weights (f32); <out> gets the stored 4-bit layout
// (bytes4(n, block, dq) bytes), then absmax4 of every block (f32, block order) read back from those
// bytes; K: the row length (the absmax layout, kiln_quant.h tiles4).
#include <stdio.h>
#include <stdlib.h>
#include <vector>
#include "common/kiln_quant.h"

int main(int argc, char** argv) {
  if (argc != 6 && argc != 7) {
    fprintf(stderr, "usage: quant4_driver <n> <block> <dq 0|1> <in> <out> [K]\n");
    return 1;
  }
  const int64_t n = atoll(argv[1]), block = atoll(argv[2]);
  const bool dq = atoi(argv[3]) != 0;
  const int64_t K = argc == 7 ? atoll(argv[6]) : 0;  // the row length (0: block order)
  double code[16];
  std::vector<float> w((size_t)n);
  FILE* f = fopen(argv[4], "rb");
  if (!f) return 2;
  const size_t got = fread(code, 8, 16, f) + fread(w.data(), 4, w.size(), f);
  fclose(f);
  if (got != 16 + w.size()) return 3;
  std::vector<uint8_t> out((size_t)kiln::quant::bytes4(n, block, dq));
  kiln::quant::quantize4(w.data(), n, block, dq, code, out.data(), K);
  const int64_t nb = kiln::quant::blocks4(n, block);
  std::vector<float> absmax((size_t)nb);
  for (int64_t b = 0; b < nb; b++) absmax[(size_t)b] = kiln::quant::absmax4(out.data(), n, block, dq, kiln::quant::tiles4(n, block, K), b);
  f = fopen(argv[5], "wb");
  if (!f || fwrite(out.data(), 1, out.size(), f) != out.size() || fwrite(absmax.data(), 4, absmax.size(), f) != absmax.size()) return 4;
  fclose(f);
  return 0;
}
