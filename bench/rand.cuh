// Deterministic test data of the standalone CUDA benches (bench/*.cu): uniforms from xorshift64 and
// N(0, 1)-ish values as a scaled sum of four of them (Irwin–Hall), the same on every run.
#pragma once
#include <stdint.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uni() {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 40) & 0xffffff) / 16777216.0f;
}
static float gauss() { return (uni() + uni() + uni() + uni() - 2.f) * 1.7320508f; }
