// Host C++ kernels of the cpu target: one function per IR op family, on contiguous row-major
// buffers (strided views only where an op reads with broadcast/permuted strides). Parallel over
// the outermost independent loop with OpenMP. Semantics are the interpreter's (ops.ts), in f32
// for floats (f64 accumulation where a sum is long: matmul, linear, reductions).
#pragma once
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <initializer_list>
#include <vector>
#include "../common/kiln_types.h"
#include "../common/kiln_norm.h"
#include "../common/kiln_quant.h"
#include "../common/rt_common.h"

namespace kiln {
namespace cpu {

// Offset in a strided tensor of the k-th element of `shape` (row-major order).
static inline int64_t strided_offset(int64_t k, const Shape& shape, const Strides& st) {
  int64_t off = 0;
  for (int i = shape.rank - 1; i >= 0; i--) {
    int64_t d = shape.d[i];
    int64_t c = k % d;
    k /= d;
    off += c * st.s[i];
  }
  return off;
}

static inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int i = 0; i < s.rank; i++) n *= s.d[i];
  return n;
}

template <typename T>
void fill(T* y, double v, int64_t n) {
  T t = Num<T>::store((typename Num<T>::C)v);
  for (int64_t i = 0; i < n; i++) y[i] = t;
}

template <typename T>
void arange(T* y, int64_t start, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = Num<T>::store((typename Num<T>::C)(start + i));
}

// y (strides sy) = x (strides sx) over `shape`: transpose, expand, slice and concat are all this.
template <typename T>
void copy_strided(const T* x, T* y, Shape shape, Strides sx, Strides sy) {
  int64_t n = numel(shape);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) y[strided_offset(i, shape, sy)] = x[strided_offset(i, shape, sx)];
}

// y[b] = a[b] · w[b] for every batch index b of `batch` (sa/sb: each operand's matrix strides over it).
template <typename T>
void matmul(const T* a, const T* w, T* y, Shape batch, Strides sa, Strides sb, int64_t M, int64_t N, int64_t K) {
  typedef Num<T> Nm;
  int64_t nb = numel(batch);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < nb; bi++)
    for (int64_t i = 0; i < M; i++) {
      const T* ar = a + strided_offset(bi, batch, sa) + i * K;
      const T* wb = w + strided_offset(bi, batch, sb);
      double acc_stack[256];
      double* acc = N <= 256 ? acc_stack : new double[N];
      for (int64_t j = 0; j < N; j++) acc[j] = 0;
      for (int64_t k = 0; k < K; k++) {
        double av = Nm::load(ar[k]);
        const T* wr = wb + k * N;
        for (int64_t j = 0; j < N; j++) acc[j] += av * (double)Nm::load(wr[j]);
      }
      T* yr = y + (bi * M + i) * N;
      for (int64_t j = 0; j < N; j++) yr[j] = Nm::store((float)acc[j]);
      if (acc != acc_stack) delete[] acc;
    }
}

// y[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]) (+ residual[m, n]): torch.nn.Linear with W [out, in],
// and fuse-residual's add inside the same sum, rounded once.
template <typename T>
void linear(const T* x, const T* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N, int64_t K) {
  typedef Num<T> Nm;
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > 65536)
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      const T* xr = x + m * K;
      const T* wr = w + n * K;
      double s = bias ? (double)Nm::load(bias[n]) : 0.0;
      for (int64_t k = 0; k < K; k++) s += (double)Nm::load(xr[k]) * (double)Nm::load(wr[k]);
      if (residual) s += (double)Nm::load(residual[m * N + n]);
      y[m * N + n] = Nm::store((float)s);
    }
}

// softmax along an axis of length n; `inner` elements separate neighbours along it.
template <typename T>
void softmax(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  typedef Num<T> Nm;
#pragma omp parallel for collapse(2) schedule(static) if (outer * inner > 64)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const T* xl = x + o * n * inner + i;
      T* yl = y + o * n * inner + i;
      double m = -INFINITY;
      for (int64_t j = 0; j < n; j++) { double v = Nm::load(xl[j * inner]); m = v > m || v != v ? v : m; }
      double s = 0;
      for (int64_t j = 0; j < n; j++) s += exp((double)Nm::load(xl[j * inner]) - m);
      for (int64_t j = 0; j < n; j++) yl[j * inner] = Nm::store((float)(exp((double)Nm::load(xl[j * inner]) - m) / s));
    }
}

enum { REDUCE_SUM = 0, REDUCE_MEAN = 1, REDUCE_MAX = 2 };

template <int KIND, typename T>
void reduce(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  typedef Num<T> Nm;
#pragma omp parallel for collapse(2) schedule(static) if (outer * inner > 64)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const T* xl = x + o * n * inner + i;
      double acc = KIND == REDUCE_MAX ? -INFINITY : 0.0;
      for (int64_t j = 0; j < n; j++) {
        double v = Nm::load(xl[j * inner]);
        if (KIND == REDUCE_MAX) acc = (v != v || acc != acc) ? acc + v : (v > acc ? v : acc);
        else acc += v;
      }
      if (KIND == REDUCE_MEAN) acc /= (double)n;
      y[o * inner + i] = Nm::store((typename Nm::C)acc);
    }
}

// argmax over the last axis (ir/ops.ts): per row of n, the first index of the maximum; -1 (the op's
// ARGMAX_NONE) where the row holds a NaN or +Inf or nothing above -Inf. Compared in the compute type
// (exact for every dtype: a 16-bit value widens to f32 without rounding).
template <typename T>
void argmax(const T* x, int64_t* y, int64_t rows, int64_t n) {
  typedef Num<T> Nm;
#pragma omp parallel for schedule(static) if (rows > 8)
  for (int64_t r = 0; r < rows; r++) {
    const T* xr = x + r * n;
    typename Nm::C m = -INFINITY;
    int64_t best = -1;
    for (int64_t j = 0; j < n; j++) {
      const typename Nm::C v = Nm::load(xr[j]);
      if (v != v || v == INFINITY) {
        best = -1;
        break;
      }
      if (v > m) {
        m = v;
        best = j;
      }
    }
    y[r] = best;
  }
}

// rms_norm / layer_norm (ir/ops.ts) over `rows` rows of D, a row a thread: the eager steps, rounded
// where the interpreter rounds (common/kiln_norm.h), the sums in f64 in index order as
// reduce_mean's. LayerNorm when LAYER; no bias where b is null.
template <bool LAYER, typename T>
void norm_rows(const T* x, const T* w, const T* b, T* y, int64_t rows, int64_t D, double eps_d) {
  typedef Num<T> Nm;
  const float eps = (float)eps_d;
#pragma omp parallel for schedule(static) if (rows * D > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    float mu = 0;
    if (LAYER) {
      double s = 0;
      for (int64_t j = 0; j < D; j++) s += (double)Nm::load(xr[j]);
      mu = (float)(s / (double)D);
    }
    double s = 0;
    for (int64_t j = 0; j < D; j++) {
      const float h = LAYER ? sub_rn(Nm::load(xr[j]), mu) : Nm::load(xr[j]);
      s += (double)mul_rn(h, h);
    }
    const float inv = norm_inv(s, D, eps);
    for (int64_t j = 0; j < D; j++) {
      const float h = LAYER ? sub_rn(Nm::load(xr[j]), mu) : Nm::load(xr[j]);
      yr[j] = norm_out<T>(h, inv, w[j], b ? b + j : nullptr);
    }
  }
}

// RMSNorm (Zhang & Sennrich, 2019) of each row of D, times w
template <typename T>
void rms_norm(const T* x, const T* w, T* y, int64_t rows, int64_t D, double eps) { norm_rows<false, T>(x, w, nullptr, y, rows, D, eps); }

// LayerNorm (Ba et al., 2016) of each row of D, times w, plus b (null: none)
template <typename T>
void layer_norm(const T* x, const T* w, const T* b, T* y, int64_t rows, int64_t D, double eps) { norm_rows<true, T>(x, w, b, y, rows, D, eps); }

// y[o, j, :] = x[o, idx[j], :]; returns the position of the first out-of-range index, or -1.
// `check` is false when the indices are a constant the compiler already checked.
template <typename T, typename I>
int64_t gather(const T* x, const I* idx, T* y, int64_t outer, int64_t n, int64_t inner, int64_t m, bool check) {
  for (int64_t j = 0; check && j < m; j++) {
    int64_t i = (int64_t)Num<I>::load(idx[j]);
    if (i < 0 || i >= n) return j;
  }
#pragma omp parallel for collapse(2) schedule(static) if (outer * m * inner > 32768)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < m; j++) {
      int64_t i = (int64_t)Num<I>::load(idx[j]);
      memcpy(y + (o * m + j) * inner, x + (o * n + i) * inner, (size_t)inner * sizeof(T));
    }
  return -1;
}

// qlinear, 4-bit: y = x · deq(W)ᵀ (+ b) (+ residual), W stored as kiln_quant.h's 4-bit layout; each
// weight is code[c]·absmax rounded to f32 and then to T (the activation dtype), as the interpreter does.
template <typename T>
void qlinear4(const T* x, const uint8_t* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N, int64_t K, int64_t block, bool dq, const double* code) {
  typedef Num<T> Nm;
  const uint8_t* codes = w;
  const int64_t nb = quant::blocks4(N * K, block);
  std::vector<float> absmax((size_t)nb);
  const int64_t A = quant::tiles4(N * K, block, K);
  for (int64_t b = 0; b < nb; b++) absmax[(size_t)b] = quant::absmax4(w, N * K, block, dq, A, b);
  // each weight row is dequantized once per call into a K-long buffer, then used for every token
#pragma omp parallel
  {
    std::vector<double> wd((size_t)K);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
      for (int64_t k = 0; k < K; k++) {
        const int64_t i = n * K + k;
        const int c = (codes[i / 2] >> (i % 2 ? 4 : 0)) & 15;
        wd[(size_t)k] = (double)Nm::load(Nm::store((typename Nm::C)(float)(code[c] * (double)absmax[(size_t)(i / block)])));
      }
      for (int64_t m = 0; m < M; m++) {
        double s = bias ? (double)Nm::load(bias[n]) : 0.0;
        for (int64_t k = 0; k < K; k++) s += (double)Nm::load(x[m * K + k]) * wd[(size_t)k];
        if (residual) s += (double)Nm::load(residual[m * N + n]);
        y[m * N + n] = Nm::store((float)s);
      }
    }
  }
}

using quant::Q4Linear;

// The 4-bit linears that read one x (emit.ts's groups: q/k/v, gate/up): one call, as the cuda
// target's single GEMV launch at decode; here each is its own qlinear4, so the numbers are those of
// the ungrouped calls by construction.
template <typename T>
void qlinear4_group(const T* x, int64_t M, int64_t K, int64_t block, bool dq, const double* code, std::initializer_list<Q4Linear<T>> ls) {
  for (const Q4Linear<T>& l : ls) qlinear4<T>(x, l.w, l.bias, l.res, l.y, M, l.N, K, block, dq, code);
}

// A decode step's q/k/v with RoPE and the cache writes after them (quant::Q4Rope; emit.ts's rope
// fusion, where rope_fused said so — here as on the cuda target, so the emitted code's fused form
// runs in CI): the linears into their y, then each row RoPE'd and written where rope says, with the
// rotary op's and cache_write's own arithmetic (kiln::rope_at; a position outside the cache is
// skipped, as the cuda kernels do).
using quant::Q4Rope;
using quant::rope_fused;
template <typename T>
void rope_epilogue(std::initializer_list<Q4Linear<T>> ls, const Q4Rope<T>* rope) {
  if (!rope) return;
  if (ls.size() > 4) rt::fail(KILN_ERR_INVALID, "qlinear4_group: a RoPE epilogue over more than 4 linears");
  int i = 0;
  for (const Q4Linear<T>& l : ls) {
    for (int64_t row = 0; row < l.N; row++) rope_store<T>(*rope, i, l.y, row);
    i++;
  }
}
template <typename T>
void qlinear4_group_rope(const T* x, int64_t M, int64_t K, int64_t block, bool dq, const double* code, std::initializer_list<Q4Linear<T>> ls, const Q4Rope<T>* rope) {
  if (rope && M != 1) rt::fail(KILN_ERR_INVALID, "qlinear4_group: a RoPE epilogue needs one row of x (M = %lld)", (long long)M);
  qlinear4_group<T>(x, M, K, block, dq, code, ls);
  rope_epilogue<T>(ls, rope);
}

// y = silu(x · Wgᵀ (+ bg) (+ rg)) · (x · Wuᵀ (+ bu) (+ ru)): gate and up rounded to T, then the
// fused elementwise kernel's `(mul (silu $gate) $up)` (kiln::silu_mul). gate.y and up.y are unused.
template <typename T>
void qlinear4_silu_mul(const T* x, int64_t M, int64_t K, int64_t block, bool dq, const double* code, const Q4Linear<T>& gate, const Q4Linear<T>& up, T* y) {
  const int64_t N = gate.N;
  if (up.N != N) rt::fail(KILN_ERR_INVALID, "qlinear4_silu_mul: gate has N = %lld, up N = %lld", (long long)N, (long long)up.N);
  if (M <= 0 || N <= 0) return;
  std::vector<T> g((size_t)(M * N)), u((size_t)(M * N));
  qlinear4<T>(x, gate.w, gate.bias, gate.res, g.data(), M, N, K, block, dq, code);
  qlinear4<T>(x, up.w, up.bias, up.res, u.data(), M, N, K, block, dq, code);
#pragma omp parallel for schedule(static) if (M * N > 32768)
  for (int64_t i = 0; i < M * N; i++) y[i] = silu_mul<T>(g[(size_t)i], u[(size_t)i]);
}

// The readers of an RMSNorm that are all 4-bit linears (emit.ts's `_norm` calls; cuda/quant.cuh
// computes the norm inside the decode GEMV where norm_fused says so): here the norm always runs on
// its own (norm_fused is false, xn holds its result), so these are the plain calls on xn and the
// cpu twin's numbers are those of the unfused graph; with fused set the norm runs into xn first.
static inline bool norm_fused(int64_t) { return false; }
template <typename T>
void qlinear4_norm(const T* xp, const T* gamma, double eps, bool fused, T* xn, const uint8_t* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N,
                   int64_t K, int64_t block, bool dq, const double* code) {
  if (fused) rms_norm<T>(xp, gamma, xn, M, K, eps);
  qlinear4<T>(xn, w, bias, residual, y, M, N, K, block, dq, code);
}
template <typename T>
void qlinear4_group_norm(const T* xp, const T* gamma, double eps, bool fused, T* xn, int64_t M, int64_t K, int64_t block, bool dq, const double* code,
                         std::initializer_list<Q4Linear<T>> ls, const Q4Rope<T>* rope = nullptr) {
  if (fused) rms_norm<T>(xp, gamma, xn, M, K, eps);
  qlinear4_group_rope<T>(xn, M, K, block, dq, code, ls, rope);
}
template <typename T>
void qlinear4_silu_mul_norm(const T* xp, const T* gamma, double eps, bool fused, T* xn, int64_t M, int64_t K, int64_t block, bool dq, const double* code,
                            const Q4Linear<T>& gate, const Q4Linear<T>& up, T* y) {
  if (fused) rms_norm<T>(xp, gamma, xn, M, K, eps);
  qlinear4_silu_mul<T>(xn, M, K, block, dq, code, gate, up, y);
}

// qlinear, int8 (LLM.int8): outlier feature dims (|x| > threshold in any row) multiply in floating
// point against the dequantized int8 weights; the rest as per-token int8 × per-feature int8 with
// integer accumulation. The reference is compiler/ir/quant.ts int8Matmul (+ the residual, rounded once).
// The cuda target shares the int8 quantization of an activation between the linears reading it
// (Q8Shared); here each qlinear8 quantizes its own rows (the same numbers), so it carries nothing.
struct Q8Shared {};
static inline void qlinear8_done(Q8Shared*) {}

template <typename T>
void qlinear8(const T* x, const uint8_t* w, const T* bias, const T* residual, T* y, int64_t M, int64_t N, int64_t K, double threshold, Q8Shared* = nullptr) {
  typedef Num<T> Nm;
  const int8_t* qw = (const int8_t*)w;
  const double* sw = (const double*)(w + quant::pad16(N * K));
  std::vector<uint8_t> outlier((size_t)K, 0);
  if (threshold > 0 && isfinite(threshold))
    for (int64_t m = 0; m < M; m++)
      for (int64_t k = 0; k < K; k++)
        if (fabs((double)Nm::load(x[m * K + k])) > threshold) outlier[(size_t)k] = 1;
  std::vector<int8_t> qx((size_t)(M * K));
  std::vector<double> sx((size_t)M);
  for (int64_t m = 0; m < M; m++) {
    double mx = 0;
    for (int64_t k = 0; k < K; k++) mx = fmax(mx, outlier[(size_t)k] ? 0.0 : fabs((double)Nm::load(x[m * K + k])));
    sx[(size_t)m] = mx / 127;
    for (int64_t k = 0; k < K; k++)
      qx[(size_t)(m * K + k)] = (int8_t)(outlier[(size_t)k] || mx == 0 ? 0 : quant::js_round(((double)Nm::load(x[m * K + k]) / mx) * 127));
  }
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > 65536)
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; k++) acc += (int64_t)qx[(size_t)(m * K + k)] * qw[n * K + k];
      double s = (double)acc * sx[(size_t)m] * sw[n];
      for (int64_t k = 0; k < K; k++)
        if (outlier[(size_t)k]) s += (double)Nm::load(x[m * K + k]) * ((double)qw[n * K + k] * sw[n]);
      y[m * N + n] = Nm::store((float)(s + (bias ? (double)Nm::load(bias[n]) : 0.0) + (residual ? (double)Nm::load(residual[m * N + n]) : 0.0)));
    }
}

// flash_attention (the fused eager attention): y[b, h, i] = softmax_j(scale · q[b, h, i] · k[b, h/g, j]) · v[b, h/g, j]
// over keys j ≤ i + T − S when causal (j ≤ i + *offset with the static cache's position; within
// the last `window` of them with a sliding window), keys
// with key_mask[b, j] ≠ 0 when there is a mask, plus alibi[h] · j when there are slopes; a row
// that sees no key is the mean of V with a mask, NaN without (the interpreter's rules). f64
// accumulation, one rounding at the end. The operands' rows lie where `L` says (kiln_types.h's
// AttnLayout: a transposed [B, S, H, D] tensor is read or written in place); the overload without
// it takes them row-major.
template <typename T>
void flash_attention(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D, int64_t Dv,
                     double scale, bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask, const int32_t* cu_seqlens,
                     int64_t n_cu, int64_t window, const AttnLayout& L) {
  typedef Num<T> Nm;
  const int64_t g = Hkv > 0 ? Hq / Hkv : 1;
  const int64_t shift = offset ? *offset : Tk - S;
#pragma omp parallel
  {
    double* p = new double[Tk > 0 ? Tk : 1];
    double* acc = new double[Dv > 0 ? Dv : 1];
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < S; i++) {
          const T* qr = q + b * L.q.b + h * L.q.h + i * L.q.s;
          const T* kb = k + b * L.k.b + (h / g) * L.k.h;
          const T* vb = v + b * L.v.b + (h / g) * L.v.h;
          // packed sequences (cu_seqlens): only the keys of query i's own sequence
          int64_t first = 0, last = causal ? i + shift : Tk - 1;
          if (cu_seqlens) {
            int64_t sq = 0;
            while (sq + 2 < n_cu && cu_seqlens[sq + 1] <= i) sq++;
            first = cu_seqlens[sq];
            const int64_t end = cu_seqlens[sq + 1];
            last = causal ? i : end - 1;
            if (last > end - 1) last = end - 1;
          }
          if (window > 0) {  // a sliding window: only the last `window` keys up to the query
            const int64_t pos = cu_seqlens ? i : i + shift;
            if (pos - window + 1 > first) first = pos - window + 1;
          }
          double m = -INFINITY, sum = 0;
          int64_t seen = 0;
          const int64_t* km = key_mask ? key_mask + b * Tk : nullptr;
          for (int64_t j = first; j <= last && j < Tk; j++) {
            if (km && km[j] == 0) continue;
            double s = 0;
            for (int64_t d = 0; d < D; d++) s += (double)Nm::load(qr[d]) * (double)Nm::load(kb[j * L.k.s + d]);
            p[j] = s * scale + (alibi ? (double)alibi[h] * (double)j : 0.0);
            seen++;
            if (p[j] > m || p[j] != p[j]) m = p[j];
          }
          for (int64_t d = 0; d < Dv; d++) acc[d] = 0;
          T* yr = y + b * L.y.b + h * L.y.h + i * L.y.s;
          if (seen == 0) {
            // no visible key: the mean of V under a mask (every eager score equal), else NaN
            for (int64_t j = 0; j < Tk; j++)
              for (int64_t d = 0; d < Dv; d++) acc[d] += (double)Nm::load(vb[j * L.v.s + d]);
            for (int64_t d = 0; d < Dv; d++) yr[d] = Nm::store((float)(km && Tk > 0 ? acc[d] / (double)Tk : NAN));
            continue;
          }
          for (int64_t j = first; j <= last && j < Tk; j++) {
            if (km && km[j] == 0) continue;
            const double e = exp(p[j] - m);
            sum += e;
            for (int64_t d = 0; d < Dv; d++) acc[d] += e * (double)Nm::load(vb[j * L.v.s + d]);
          }
          for (int64_t d = 0; d < Dv; d++) yr[d] = Nm::store((float)(acc[d] / sum));
        }
    delete[] p;
    delete[] acc;
  }
}
template <typename T>
void flash_attention(const T* q, const T* k, const T* v, T* y, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t Tk, int64_t D, int64_t Dv,
                     double scale, bool causal, const int64_t* offset, const float* alibi, const int64_t* key_mask, const int32_t* cu_seqlens,
                     int64_t n_cu, int64_t window) {
  flash_attention<T>(q, k, v, y, B, Hq, Hkv, S, Tk, D, Dv, scale, causal, offset, alibi, key_mask, cu_seqlens, n_cu, window, row_major_attention(Hq, Hkv, S, Tk, D, Dv));
}

// The static KV cache's write: rows [*pos, *pos + S) of each of the BH [C, D] slabs of `cache`
// become the rows of `update` ([BH, S, D]). The runtime checks *pos + S ≤ C before the call.
template <typename T>
void cache_write(T* cache, const T* update, const int64_t* pos, int64_t B, int64_t H, int64_t C, int64_t S, int64_t D, int64_t ub, int64_t uh, int64_t us) {
  const int64_t p = *pos;
  if (p < 0 || p + S > C) rt::fail(KILN_ERR_INVALID, "cache_write: %lld new tokens at position %lld do not fit the cache's capacity %lld", (long long)S, (long long)p, (long long)C);
  const int64_t BH = B * H;
#pragma omp parallel for schedule(static) if (BH * S * D > 32768)
  for (int64_t bh = 0; bh < BH; bh++)
    for (int64_t s = 0; s < S; s++) memcpy(cache + (bh * C + p + s) * D, update + (bh / H) * ub + (bh % H) * uh + s * us, sizeof(T) * (size_t)D);
}
// the update in [B·H, S, D] row-major
template <typename T>
void cache_write(T* cache, const T* update, const int64_t* pos, int64_t BH, int64_t C, int64_t S, int64_t D) {
  cache_write<T>(cache, update, pos, 1, BH, C, S, D, BH * S * D, S * D, D);
}
// a cache_write as one part of a batched launch (for_each_n): here, the call itself, run in turn
template <typename T>
struct CacheWriteCall {
  T* cache;
  const T* update;
  const int64_t* pos;
  int64_t B, H, C, S, D, ub, uh, us;
};
template <typename T>
CacheWriteCall<T> cache_write_each(T* cache, const T* update, const int64_t* pos, int64_t B, int64_t H, int64_t C, int64_t S, int64_t D, int64_t ub, int64_t uh, int64_t us) {
  return CacheWriteCall<T>{cache, update, pos, B, H, C, S, D, ub, uh, us};
}
template <typename T>
CacheWriteCall<T> cache_write_each(T* cache, const T* update, const int64_t* pos, int64_t BH, int64_t C, int64_t S, int64_t D) {
  return cache_write_each<T>(cache, update, pos, 1, BH, C, S, D, BH * S * D, S * D, D);
}

// Position ids from an attention_mask [B, T]: cumsum − 1 at real tokens, 1 at padding (f32).
inline void mask_positions(const int64_t* m, float* y, int64_t B, int64_t T) {
  for (int64_t b = 0; b < B; b++) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++) y[b * T + t] = m[b * T + t] != 0 ? (float)n++ : 1.f;
  }
}

// Position ids of packed sequences: t − cu_seqlens[s] for token t of sequence s (f32 [T]).
inline void varlen_positions(const int32_t* cu, float* y, int64_t n_cu, int64_t T) {
  int64_t s = 0;
  for (int64_t t = 0; t < T; t++) {
    while (s + 2 < n_cu && cu[s + 1] <= t) s++;
    y[t] = (float)(t - cu[s]);
  }
}

// ---------------------------------------------------------------- the varlen KV cache
// N sequences packed end to end (cu_seqlens), each with its own cache row (slot[n]) and past length
// (pos[n]): token t of sequence n sits at pos[n] + t − cu[n] of row slot[n] (vLLM's per-sequence
// cache slots, Kwon et al., 2023; contiguous rows, no paging). The checks the interpreter makes.
inline void check_varlen_cache(const char* what, const int32_t* cu, const int32_t* slot, const int64_t* pos, int64_t N, int64_t B, int64_t C, int64_t T) {
  if (cu[0] != 0 || cu[N] != T) rt::fail(KILN_ERR_INVALID, "%s: cu_seqlens must run from 0 to the %lld packed tokens, got %d .. %d", what, (long long)T, cu[0], cu[N]);
  for (int64_t n = 0; n < N; n++) {
    const int64_t len = (int64_t)cu[n + 1] - cu[n];
    if (len < 0) rt::fail(KILN_ERR_INVALID, "%s: cu_seqlens must not decrease (sequence %lld)", what, (long long)n);
    if (pos[n] < 0 || pos[n] + len > C) rt::fail(KILN_ERR_INVALID, "%s: sequence %lld: %lld tokens at position %lld do not fit the cache's capacity %lld", what, (long long)n, (long long)len, (long long)pos[n], (long long)C);
    if (!slot) continue;
    if (slot[n] < 0 || slot[n] >= B) rt::fail(KILN_ERR_INVALID, "%s: sequence %lld: cache slot %d is not in [0, %lld)", what, (long long)n, slot[n], (long long)B);
    for (int64_t m = 0; m < n; m++)
      if (slot[m] == slot[n]) rt::fail(KILN_ERR_INVALID, "%s: cache slot %d is given to two sequences", what, slot[n]);
  }
}

// Absolute positions of the packed tokens (i64 [T]): pos[n] + t − cu[n].
inline void varlen_cache_positions(const int32_t* cu, const int64_t* pos, int64_t* y, int64_t N, int64_t T) {
  check_varlen_cache("varlen_cache_positions", cu, nullptr, pos, N, 0, INT64_MAX, T);
  for (int64_t n = 0; n < N; n++)
    for (int64_t t = cu[n]; t < cu[n + 1]; t++) y[t] = pos[n] + t - cu[n];
}

// Each packed token's keys or values (update [H, T, D]) into cache [B, H, C, D] at [slot, :, position, :].
template <typename T>
void varlen_cache_write(T* cache, const T* update, const int32_t* cu, const int32_t* slot, const int64_t* pos, int64_t N, int64_t B, int64_t H, int64_t C, int64_t Tq, int64_t D) {
  check_varlen_cache("varlen_cache_write", cu, slot, pos, N, B, C, Tq);
#pragma omp parallel for collapse(2) schedule(static) if (H * Tq * D > 32768)
  for (int64_t n = 0; n < N; n++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = cu[n]; t < cu[n + 1]; t++)
        memcpy(cache + (((int64_t)slot[n] * H + h) * C + pos[n] + t - cu[n]) * D, update + (h * Tq + t) * D, sizeof(T) * (size_t)D);
}

// Causal attention of packed queries q [Hq, T, D] against their sequences' cache rows k [B, Hkv, C, D],
// v [B, Hkv, C, Dv]: the query at position p sees keys 0..p of its row (the last `window` of them with
// a sliding window), score scale · q·k + alibi[h] · j. f64 accumulation, one rounding at the end.
template <typename T>
void varlen_cache_attention(const T* q, const T* k, const T* v, const int32_t* cu, const int32_t* slot, const int64_t* pos, T* y, int64_t N, int64_t B,
                            int64_t Hq, int64_t Hkv, int64_t Tq, int64_t C, int64_t D, int64_t Dv, double scale, const float* alibi, int64_t window) {
  typedef Num<T> Nm;
  check_varlen_cache("varlen_cache_attention", cu, slot, pos, N, B, C, Tq);
  const int64_t g = Hkv > 0 ? Hq / Hkv : 1;
#pragma omp parallel
  {
    double* p = new double[C > 0 ? C : 1];
    double* acc = new double[Dv > 0 ? Dv : 1];
#pragma omp for collapse(2) schedule(static)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < Tq; t++) {
        int64_t n = 0;
        while (n + 1 < N && cu[n + 1] <= t) n++;
        const int64_t last = pos[n] + t - cu[n];
        const int64_t first = window > 0 && last - window + 1 > 0 ? last - window + 1 : 0;
        const T* qr = q + (h * Tq + t) * D;
        const T* kb = k + ((int64_t)slot[n] * Hkv + h / g) * C * D;
        const T* vb = v + ((int64_t)slot[n] * Hkv + h / g) * C * Dv;
        double m = -INFINITY, sum = 0;
        for (int64_t j = first; j <= last; j++) {
          double s = 0;
          for (int64_t d = 0; d < D; d++) s += (double)Nm::load(qr[d]) * (double)Nm::load(kb[j * D + d]);
          p[j] = s * scale + (alibi ? (double)alibi[h] * (double)j : 0.0);
          if (p[j] > m || p[j] != p[j]) m = p[j];
        }
        for (int64_t d = 0; d < Dv; d++) acc[d] = 0;
        for (int64_t j = first; j <= last; j++) {
          const double e = exp(p[j] - m);
          sum += e;
          for (int64_t d = 0; d < Dv; d++) acc[d] += e * (double)Nm::load(vb[j * Dv + d]);
        }
        T* yr = y + (h * Tq + t) * Dv;
        for (int64_t d = 0; d < Dv; d++) yr[d] = Nm::store((float)(acc[d] / sum));
      }
    delete[] p;
    delete[] acc;
  }
}

// Runs f(i) for i in [0, n): the loop of a fused elementwise kernel (the codegen writes f).
// Where the functor allows it, in the chunks of the cuda target (W elements of one row, 16-byte
// runs), which also lets the host compiler vectorize; the same values either way.
template <typename F>
void for_each(const F& f, int64_t n) {
  if (f.chunkable()) {
    const int64_t chunks = n / F::W;
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t c = 0; c < chunks; c++) f.chunk(c * F::W);
    for (int64_t i = chunks * F::W; i < n; i++) f(i);
    return;
  }
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) f(i);
}

// Independent elementwise loops and cache writes batched by the codegen into one launch on the
// cuda target (for_each_n); here they run one after another, as they would unbatched.
template <typename F>
void run_each(const Each<F>& e) {
  for_each(e.f, e.n);
}
template <typename T>
void run_each(const CacheWriteCall<T>& c) {
  cache_write<T>(c.cache, c.update, c.pos, c.B, c.H, c.C, c.S, c.D, c.ub, c.uh, c.us);
}
template <typename... Es>
void for_each_n(const Es&... es) {
  (run_each(es), ...);
}

}  // namespace cpu
}  // namespace kiln
