// Check and timing of flash_attention reading q, k, v and writing y through (batch, head, row)
// strides (kiln::AttnLayout, codegen-templates/common/kiln_types.h), which is how the emitted code
// skips the head transposes around a layer's attention (compiler/codegen/emit.ts, attentionOutputs).
// Correctness: every case runs kiln::cuda::flash_attention twice on the same numbers, once on
// row-major [B, H, S, D] copies and once on the [B, S, H, D] tensors through strides (all four
// operands, and the packed-prefill case: v read through its transpose, y written transposed), and
// the two outputs must be equal bit for bit (same kernel, same tile order: any difference is an
// addressing bug, or the strided launch falling back to another kernel). The cases cover the tiled
// FlashAttention-2 kernel (hd 64 / 128, GQA, MQA, varlen, ALiBi, key mask), the simple kernel
// (S < 16) and the split-KV decode path with its combine.
// Timing: Llama-2-7B's packed prefill (8 sequences of 256 … 2048 tokens, T = 9216, 32 heads of 128,
// causal, varlen): the row-major launch plus the two transposes it needed (copy_strided), against
// the strided launch alone.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I codegen-templates -ldl -o bench/tmp/attn_layout bench/attn_layout.cu
//   bench/tmp/attn_layout      (prints each case and the timing table, then PASS or FAIL; exit status 1 on FAIL)
#include "common/kiln_types.h"
#include "cuda/kernels.cuh"
#include "cuda/runtime.cuh"
#include "timing.cuh"
#include <string>
#include <vector>

extern "C" const char* kiln_artifact_hash(void) { return "bench-attn-layout"; }
using kiln::bf16;
namespace K = kiln::cuda;

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float uni() {  // [-1, 1)
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.f;
}

template <typename T>
static T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  ck(cudaMalloc(&d, sizeof(T) * (h.empty() ? 1 : h.size())), "malloc");
  if (!h.empty()) ck(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice), "upload");
  return d;
}
template <typename T>
static std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  ck(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost), "download");
  return h;
}

// [B, S, H, D] → [B, H, S, D] (host)
static std::vector<bf16> heads_first(const std::vector<bf16>& x, int64_t B, int64_t S, int64_t H, int64_t D) {
  std::vector<bf16> y(x.size());
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++) y[((b * H + h) * S + s) * D + d] = x[((b * S + s) * H + h) * D + d];
  return y;
}
static kiln::HeadStrides seq_first(int64_t S, int64_t H, int64_t D) { return kiln::HeadStrides{S * H * D, D, H * D}; }

struct Case {
  std::string name;
  int64_t B, Hq, Hkv, S, Tk, D;
  bool causal;
  std::vector<int32_t> seqs;  // varlen: sequence lengths (B = 1, S = Tk = their sum)
  bool alibi, mask;
};

static int failures = 0;

static void run_case(const Case& c) {
  const int64_t B = c.B, Hq = c.Hq, Hkv = c.Hkv, S = c.S, Tk = c.Tk, D = c.D;
  std::vector<bf16> q(B * S * Hq * D), k(B * Tk * Hkv * D), v(B * Tk * Hkv * D);
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = kiln::Num<bf16>::store(uni());
  std::vector<int32_t> cu{0};
  for (int32_t n : c.seqs) cu.push_back(cu.back() + n);
  std::vector<float> slopes(Hq);
  for (int64_t h = 0; h < Hq; h++) slopes[h] = -0.5f / (float)(h + 1);
  std::vector<int64_t> km(B * Tk);
  for (int64_t i = 0; i < B * Tk; i++) km[i] = (i % Tk) < 3 && (i / Tk) % 2 == 1 ? 0 : 1;  // odd rows: 3 padded keys (left padding)
  bf16 *dq = upload(q), *dk = upload(k), *dv = upload(v);
  bf16 *cq = upload(heads_first(q, B, S, Hq, D)), *ck_ = upload(heads_first(k, B, Tk, Hkv, D)), *cv = upload(heads_first(v, B, Tk, Hkv, D));
  int32_t* dcu = c.seqs.empty() ? nullptr : upload(cu);
  float* dal = c.alibi ? upload(slopes) : nullptr;
  int64_t* dkm = c.mask ? upload(km) : nullptr;
  const int64_t n = B * Hq * S * D;
  bf16 *yc = nullptr, *yt = nullptr, *yv = nullptr;
  ck(cudaMalloc(&yc, sizeof(bf16) * n), "malloc"), ck(cudaMalloc(&yt, sizeof(bf16) * n), "malloc"), ck(cudaMalloc(&yv, sizeof(bf16) * n), "malloc");
  const double scale = 1.0 / std::sqrt((double)D);
  const int64_t n_cu = (int64_t)cu.size();
  // row-major
  K::flash_attention<bf16>(cq, ck_, cv, yc, B, Hq, Hkv, S, Tk, D, D, scale, c.causal, nullptr, dal, dkm, dcu, dcu ? n_cu : 0, 0);
  // all four through their [B, S, H, D] layouts
  const kiln::AttnLayout all{seq_first(S, Hq, D), seq_first(Tk, Hkv, D), seq_first(Tk, Hkv, D), seq_first(S, Hq, D)};
  K::flash_attention<bf16>(dq, dk, dv, yt, B, Hq, Hkv, S, Tk, D, D, scale, c.causal, nullptr, dal, dkm, dcu, dcu ? n_cu : 0, 0, all);
  // the packed prefill's form: q, k row-major (RoPE wrote them), v read and y written transposed
  const kiln::AttnLayout vy{kiln::row_major_heads(Hq, S, D), kiln::row_major_heads(Hkv, Tk, D), seq_first(Tk, Hkv, D), seq_first(S, Hq, D)};
  K::flash_attention<bf16>(cq, ck_, dv, yv, B, Hq, Hkv, S, Tk, D, D, scale, c.causal, nullptr, dal, dkm, dcu, dcu ? n_cu : 0, 0, vy);
  ck(cudaStreamSynchronize(K::stream()), "sync");
  const auto hc = download(yc, n), ht = download(yt, n), hv = download(yv, n);
  int64_t bad_all = 0, bad_vy = 0, nan = 0, first = -1;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t d = 0; d < D; d++) {
          const int64_t ic = ((b * Hq + h) * S + s) * D + d, it = ((b * S + s) * Hq + h) * D + d;
          nan += (hc[ic].bits & 0x7f80) == 0x7f80 && (hc[ic].bits & 0x7f) != 0;
          if (ht[it].bits != hc[ic].bits) bad_all++, first = first < 0 ? ic : first;
          if (hv[it].bits != hc[ic].bits) bad_vy++, first = first < 0 ? ic : first;
        }
  const bool ok = bad_all == 0 && bad_vy == 0 && nan == 0;
  if (!ok) failures++;
  printf("%-58s %s", c.name.c_str(), ok ? "ok" : "FAIL");
  if (!ok) {
    printf(" (all strided: %lld differ; v/y strided: %lld differ; %lld NaN in the row-major output", (long long)bad_all, (long long)bad_vy, (long long)nan);
    if (first >= 0) {
      const int64_t d = first % D, s = first / D % S, h = first / D / S % Hq, b = first / D / S / Hq, it = ((b * S + s) * Hq + h) * D + d;
      printf("; first at b %lld h %lld s %lld d %lld: %g vs %g / %g", (long long)b, (long long)h, (long long)s, (long long)d, kiln::Num<bf16>::load(hc[first]),
             kiln::Num<bf16>::load(ht[it]), kiln::Num<bf16>::load(hv[it]));
    }
    printf(")");
  }
  printf("\n");
  for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)cq, (void*)ck_, (void*)cv, (void*)dcu, (void*)dal, (void*)dkm, (void*)yc, (void*)yt, (void*)yv})
    if (p) cudaFree(p);
}

static void timing() {
  const std::vector<int32_t> seqs{256, 512, 768, 1024, 1280, 1536, 1792, 2048};
  std::vector<int32_t> cu{0};
  for (int32_t n : seqs) cu.push_back(cu.back() + n);
  const int64_t T = cu.back(), H = 32, D = 128;
  std::vector<bf16> h(T * H * D);
  for (auto& x : h) x = kiln::Num<bf16>::store(uni());
  bf16 *q = upload(h), *k = upload(h), *v = upload(h), *vt = upload(h), *y = upload(h), *yt = upload(h);
  int32_t* dcu = upload(cu);
  const double scale = 1.0 / std::sqrt((double)D);
  const kiln::Shape sh{4, {1, H, T, D}}, shT{4, {1, T, H, D}};
  const kiln::Strides tr{{T * H * D, D, H * D, 1}}, rm{{H * T * D, T * D, D, 1}}, trOut{{T * H * D, D, T * D, 1}}, rmT{{T * H * D, H * D, D, 1}};
  const kiln::AttnLayout vy{kiln::row_major_heads(H, T, D), kiln::row_major_heads(H, T, D), seq_first(T, H, D), seq_first(T, H, D)};
  const double copy_v = median_us([&](int) { K::copy_strided<bf16>(v, vt, sh, tr, rm); }, 5, 20);
  const double fa_rm = median_us([&](int) { K::flash_attention<bf16>(q, k, vt, y, 1, H, H, T, T, D, D, scale, true, nullptr, nullptr, nullptr, dcu, (int64_t)cu.size(), 0); }, 5, 20);
  const double copy_y = median_us([&](int) { K::copy_strided<bf16>(y, yt, shT, trOut, rmT); }, 5, 20);
  const double fa_st = median_us([&](int) { K::flash_attention<bf16>(q, k, v, yt, 1, H, H, T, T, D, D, scale, true, nullptr, nullptr, nullptr, dcu, (int64_t)cu.size(), 0, vy); }, 5, 20);
  printf("\npacked prefill, 8 sequences (T = %lld), 32 heads x 128, causal, bf16 (median us a call)\n", (long long)T);
  printf("  transpose v (copy)        %9.1f\n", copy_v);
  printf("  flash_attention row-major %9.1f\n", fa_rm);
  printf("  transpose y (copy)        %9.1f\n", copy_y);
  printf("  = before                  %9.1f\n", copy_v + fa_rm + copy_y);
  printf("  flash_attention strided   %9.1f   (v read, y written through strides)\n", fa_st);
  printf("  saved a layer             %9.1f   (x 32 layers = %.2f ms)\n", copy_v + fa_rm + copy_y - fa_st, (copy_v + fa_rm + copy_y - fa_st) * 32 / 1000);
  for (void* p : {(void*)q, (void*)k, (void*)v, (void*)vt, (void*)y, (void*)yt, (void*)dcu}) cudaFree(p);
}

int main() {
  if (kiln_init(0) != 0) {
    fprintf(stderr, "kiln_init: %s\n", kiln_last_error());
    return 1;
  }
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, 0), "props");
  printf("%s: flash_attention through strides vs row-major, bit for bit\n", prop.name);
  const std::vector<Case> cases = {
      {"tiled hd128, B 2, S 300, causal", 2, 8, 8, 300, 300, 128, true, {}, false, false},
      {"tiled hd128, B 2, S 300, non-causal", 2, 8, 8, 300, 300, 128, false, {}, false, false},
      {"tiled hd64, GQA 8:2, B 1, S 257, causal", 1, 8, 2, 257, 257, 64, true, {}, false, false},
      {"tiled hd128, MQA 8:1, B 3, S 64, causal", 3, 8, 1, 64, 64, 128, true, {}, false, false},
      {"tiled hd128 varlen 5 sequences (1..300), causal", 1, 8, 8, 0, 0, 128, true, {1, 17, 300, 128, 64}, false, false},
      {"tiled hd64 varlen GQA 8:4, 3 sequences, non-causal", 1, 8, 4, 0, 0, 64, false, {200, 33, 129}, false, false},
      {"tiled hd128 ALiBi, B 2, S 200, causal", 2, 8, 8, 200, 200, 128, true, {}, true, false},
      {"tiled hd64 key mask (left padding), B 2, S 100, causal", 2, 4, 4, 100, 100, 64, true, {}, false, true},
      {"simple kernel (S 8 of Tk 8), hd128", 2, 8, 8, 8, 8, 128, true, {}, false, false},
      {"split-KV decode (S 1, Tk 1000), GQA 8:2, hd128", 2, 8, 2, 1, 1000, 128, true, {}, false, false},
      {"split-KV decode (S 1, Tk 700), hd64, ALiBi", 1, 8, 8, 1, 700, 64, true, {}, true, false},
  };
  for (Case c : cases) {
    if (!c.seqs.empty()) {
      int64_t t = 0;
      for (int32_t n : c.seqs) t += n;
      c.S = c.Tk = t;
    }
    run_case(c);
  }
  timing();
  if (failures) {
    printf("FAIL: %d case(s) differ\n", failures);
    return 1;
  }
  printf("PASS\n");
  return 0;
}
