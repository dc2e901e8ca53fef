// Runs the host quantizer of codegen-templates/common/kiln_quant.h (what the cpu target runs on load,
// and what the cuda target's double quantization runs on the host) on raw weights, for
// test/quant.test.ts:  quant4_driver <n> <block> <dq 0|1> <in> <out>
// <in> holds the 16 code values (f64) then the n weights (f32); <out> gets the stored 4-bit layout
// (bytes4(n, block, dq) bytes), then absmax4 of every block (f32) read back from those bytes.
#include <stdio.h>
#include <stdlib.h>
#include <vector>
#include "common/kiln_quant.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: quant4_driver <n> <block> <dq 0|1> <in> <out>\n");
    return 1;
  }
  const int64_t n = atoll(argv[1]), block = atoll(argv[2]);
  const bool dq = atoi(argv[3]) != 0;
  double code[16];
  std::vector<float> w((size_t)n);
  FILE* f = fopen(argv[4], "rb");
  if (!f) return 2;
  const size_t got = fread(code, 8, 16, f) + fread(w.data(), 4, w.size(), f);
  fclose(f);
  if (got != 16 + w.size()) return 3;
  std::vector<uint8_t> out((size_t)kiln::quant::bytes4(n, block, dq));
  kiln::quant::quantize4(w.data(), n, block, dq, code, out.data());
  const int64_t nb = kiln::quant::blocks4(n, block);
  std::vector<float> absmax((size_t)nb);
  for (int64_t b = 0; b < nb; b++) absmax[(size_t)b] = kiln::quant::absmax4(out.data(), n, block, dq, b);
  f = fopen(argv[5], "wb");
  if (!f || fwrite(out.data(), 1, out.size(), f) != out.size() || fwrite(absmax.data(), 4, absmax.size(), f) != absmax.size()) return 4;
  fclose(f);
  return 0;
}
