// The cpu target's flash_attention (codegen-templates/cpu/kernels.h) through strides, for
// test/attention-layout.test.ts: each case runs the host twin on row-major [B, H, S, D] operands and
// again on the same numbers laid out [B, S, H, D] (q, k, v read and y written through
// kiln::AttnLayout, as the emitted code does around a layer's head transposes), and prints
//   <case> <elements> <differing> <nan> <sum |y|>
// one line a case (the test wants 0 differing bits, no NaN and a nonzero sum).
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string>
#include <vector>
#include "cpu/kernels.h"

using kiln::bf16;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uni() {  // [-1, 1)
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.f;
}
static kiln::HeadStrides seq_first(int64_t S, int64_t H, int64_t D) { return kiln::HeadStrides{S * H * D, D, H * D}; }

struct Case {
  const char* name;
  int64_t B, Hq, Hkv, S, Tk, D;
  bool causal;
  std::vector<int32_t> seqs;  // varlen: sequence lengths (B = 1, S = Tk = their sum)
  bool alibi, mask;
  int64_t offset;  // the static cache's position, or -1
  int64_t window;
};

template <typename T>
static bool same_bits(const T& a, const T& b) {
  return memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T>
static void run(Case c) {
  if (!c.seqs.empty()) {
    c.S = c.Tk = 0;
    for (int32_t n : c.seqs) c.S += n, c.Tk += n;
  }
  const int64_t B = c.B, Hq = c.Hq, Hkv = c.Hkv, S = c.S, Tk = c.Tk, D = c.D;
  // the [B, S, H, D] tensors, and their row-major [B, H, S, D] copies
  std::vector<T> q((size_t)(B * S * Hq * D)), k((size_t)(B * Tk * Hkv * D)), v(k.size());
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = kiln::Num<T>::store(uni());
  auto heads_first = [](const std::vector<T>& x, int64_t B, int64_t S, int64_t H, int64_t D) {
    std::vector<T> y(x.size());
    for (int64_t b = 0; b < B; b++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t d = 0; d < D; d++) y[(size_t)(((b * H + h) * S + s) * D + d)] = x[(size_t)(((b * S + s) * H + h) * D + d)];
    return y;
  };
  const std::vector<T> cq = heads_first(q, B, S, Hq, D), ck = heads_first(k, B, Tk, Hkv, D), cv = heads_first(v, B, Tk, Hkv, D);
  std::vector<int32_t> cu{0};
  for (int32_t n : c.seqs) cu.push_back(cu.back() + n);
  std::vector<float> slopes((size_t)Hq);
  for (int64_t h = 0; h < Hq; h++) slopes[(size_t)h] = -0.5f / (float)(h + 1);
  std::vector<int64_t> km((size_t)(B * Tk));
  for (int64_t i = 0; i < B * Tk; i++) km[(size_t)i] = (i % Tk) < 2 && (i / Tk) % 2 == 1 ? 0 : 1;  // odd rows: 2 padded keys
  const int64_t off = c.offset;
  const int64_t* offp = c.offset >= 0 ? &off : nullptr;
  const float* al = c.alibi ? slopes.data() : nullptr;
  const int64_t* kmp = c.mask ? km.data() : nullptr;
  const int32_t* cup = c.seqs.empty() ? nullptr : cu.data();
  const int64_t n_cu = c.seqs.empty() ? 0 : (int64_t)cu.size();
  const double scale = 1.0 / sqrt((double)D);
  std::vector<T> yc((size_t)(B * Hq * S * D)), yt(yc.size()), yv(yc.size());
  kiln::cpu::flash_attention<T>(cq.data(), ck.data(), cv.data(), yc.data(), B, Hq, Hkv, S, Tk, D, D, scale, c.causal, offp, al, kmp, cup, n_cu, c.window);
  const kiln::AttnLayout all{seq_first(S, Hq, D), seq_first(Tk, Hkv, D), seq_first(Tk, Hkv, D), seq_first(S, Hq, D)};
  kiln::cpu::flash_attention<T>(q.data(), k.data(), v.data(), yt.data(), B, Hq, Hkv, S, Tk, D, D, scale, c.causal, offp, al, kmp, cup, n_cu, c.window, all);
  // the packed prefill's form: q and k row-major (RoPE wrote them), v read and y written transposed
  const kiln::AttnLayout vy{kiln::row_major_heads(Hq, S, D), kiln::row_major_heads(Hkv, Tk, D), seq_first(Tk, Hkv, D), seq_first(S, Hq, D)};
  kiln::cpu::flash_attention<T>(cq.data(), ck.data(), v.data(), yv.data(), B, Hq, Hkv, S, Tk, D, D, scale, c.causal, offp, al, kmp, cup, n_cu, c.window, vy);
  int64_t differ = 0, nan = 0;
  double sum = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t d = 0; d < D; d++) {
          const size_t ic = (size_t)(((b * Hq + h) * S + s) * D + d), it = (size_t)(((b * S + s) * Hq + h) * D + d);
          const double x = kiln::Num<T>::load(yc[ic]);
          if (x != x) nan++;
          sum += fabs(x);
          if (!same_bits(yt[it], yc[ic]) || !same_bits(yv[it], yc[ic])) differ++;
        }
  printf("%s %lld %lld %lld %.6g\n", c.name, (long long)yc.size(), (long long)differ, (long long)nan, sum);
}

int main() {
  const std::vector<Case> cases = {
      {"dense-causal-bf16", 2, 4, 4, 9, 9, 16, true, {}, false, false, -1, 0},
      {"dense-noncausal-bf16", 2, 4, 4, 7, 7, 8, false, {}, false, false, -1, 0},
      {"gqa-4:2-bf16", 1, 4, 2, 11, 11, 8, true, {}, false, false, -1, 0},
      {"mqa-4:1-bf16", 3, 4, 1, 5, 5, 8, true, {}, false, false, -1, 0},
      {"varlen-3-sequences-bf16", 1, 4, 2, 0, 0, 8, true, {1, 6, 4}, false, false, -1, 0},
      {"alibi-bf16", 2, 4, 4, 6, 6, 8, true, {}, true, false, -1, 0},
      {"key-mask-bf16", 2, 2, 2, 6, 6, 8, true, {}, false, true, -1, 0},
      {"static-cache-offset-bf16", 1, 4, 2, 3, 10, 8, true, {}, false, false, 4, 0},
      {"decode-S1-bf16", 2, 4, 2, 1, 12, 8, true, {}, false, false, -1, 0},
      {"sliding-window-bf16", 1, 2, 2, 9, 9, 8, true, {}, false, false, -1, 3},
  };
  for (const Case& c : cases) run<bf16>(c);
  for (Case c : {cases[2], cases[4]}) {
    std::string n = std::string(c.name);
    n.replace(n.size() - 4, 4, "f32");
    c.name = n.c_str();
    run<float>(c);
  }
  return 0;
}
