// Quantization math of the bitsandbytes schemes, written from the papers: the reference the
// interpreter, the passes' tests and (later) the kernels' twins are checked against.
//
// - 4-bit (QLoRA, Dettmers et al., 2023): blockwise absmax over blocks of 64 weights; each weight
//   becomes the index of the nearest value of a 16-entry code in [-1, 1], scaled by its block's
//   absmax. NF4 is the code whose values are quantiles of N(0, 1) (equal mass per bin, with an
//   exact zero); FP4 is a sign + 2-bit exponent + 1-bit mantissa float. Double quantization stores
//   the absmax values themselves in 8 bits, per blocks of 256, after removing their mean.
// - 8-bit (LLM.int8, Dettmers et al., 2022): vector-wise absmax int8, per row (token) of the
//   activations and per output feature of the weights, int8·int8 products accumulated in int32,
//   and the feature dimensions holding an outlier (|x| above a threshold, 6.0 by default)
//   multiplied in 16-bit instead and added.

/** Φ⁻¹, the standard normal quantile: Acklam's rational approximation, refined by one Halley step on erfc. */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) return p === 0 ? -Infinity : p === 1 ? Infinity : NaN;
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  let x: number;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - lo) {
    const q = p - 0.5, r = q * q;
    x = ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const q = Math.sqrt(-2 * Math.log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  // one Halley step: e = Φ(x) − p
  const e = 0.5 * erfc(-x / Math.SQRT2) - p;
  const u = e * Math.sqrt(2 * Math.PI) * Math.exp((x * x) / 2);
  return x - u / (1 + (x * u) / 2);
}

/** erfc to ~1e-15 relative (continued fraction for large |x|, series below). */
export function erfc(x: number): number {
  if (x < 0) return 2 - erfc(-x);
  if (x < 2.5) {
    // erf by its Maclaurin series
    let term = x, sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17) break;
    }
    return 1 - (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Lentz's continued fraction for erfc
  let f = x, C = x, D = 0;
  for (let n = 1; n < 300; n++) {
    const an = n / 2;
    D = x + an * D;
    D = D === 0 ? 1e-300 : 1 / D;
    C = x + an / C;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-x * x) / (f * Math.sqrt(Math.PI));
}

/**
 * The NF4 code (QLoRA §3): 8 positive values from the quantiles of N(0, 1) at 9 evenly spaced
 * probabilities from δ to ½ (the last, Φ⁻¹(½) = 0, dropped), 7 negative ones from 8 probabilities
 * likewise, and an exact 0; normalized to [-1, 1]. δ = 1 − ½(1/30 + 1/32) puts the outermost
 * quantile between those of a 15- and a 16-bin code, so ±1 are attained.
 */
export function nf4Code(): number[] {
  const delta = 1 - 0.5 * (1 / 30 + 1 / 32);
  const lin = (from: number, to: number, n: number): number[] => [...Array(n).keys()].map((i) => from + ((to - from) * i) / (n - 1));
  const pos = lin(delta, 0.5, 9).slice(0, -1).map(normalQuantile);
  const neg = lin(delta, 0.5, 8).slice(0, -1).map((p) => -normalQuantile(p));
  const v = [...pos, 0, ...neg].sort((x, y) => x - y);
  const max = Math.max(...v.map(Math.abs));
  return v.map((x) => x / max);
}

/**
 * The FP4 code: sign, 2 exponent bits e, 1 mantissa bit m; magnitude 2^e·(1 + m/2) for e > 0 and
 * m/16 for e = 0 (a subnormal step below 1, as bitsandbytes' FP4 has), normalized by the largest
 * magnitude (12) to [-1, 1]. Codes 0–7 are positive, 8–15 their negatives.
 */
export function fp4Code(): number[] {
  const mag = [...Array(8).keys()].map((c) => {
    const e = c >> 1, m = c & 1;
    return e === 0 ? m / 16 : 2 ** e * (1 + m / 2);
  });
  const max = Math.max(...mag);
  return [...mag.map((x) => x / max), ...mag.map((x) => -x / max)];
}

export type FourBit = "nf4" | "fp4";
const CODES: Record<FourBit, number[]> = { nf4: nf4Code(), fp4: fp4Code() };
export const codeOf = (scheme: FourBit): readonly number[] => CODES[scheme];

/** Index of the code value nearest to x (ties to the smaller index). */
export function nearestCode(code: readonly number[], x: number): number {
  let best = 0;
  for (let i = 1; i < code.length; i++) if (Math.abs(code[i] - x) < Math.abs(code[best] - x)) best = i;
  return best;
}

export interface FourBitWeights {
  scheme: FourBit;
  block: number;
  /** one 4-bit code index per weight (unpacked; two per byte when stored) */
  codes: Uint8Array;
  /** absmax of each block (after double quantization: its dequantized value) */
  absmax: Float32Array;
  /** double quantization: 8-bit absmax codes per 256 slots, their scale and the removed mean (in slot order: absmaxSlot) */
  double?: { codes: Int8Array; scales: Float32Array; mean: number; block: number };
  /** the absmax storage layout: blocks a row, tiled by 8 rows (absmaxTiles); 0: block order */
  tiles: number;
}

/**
 * The storage layout of the absmax values (kiln_quant.h tiles4 / slot4): for a weight of rows of K
 * weights with K a multiple of the block and a multiple of 8 rows, block j of row r is stored in
 * slot ((r / 8)·A + j)·8 + r mod 8 (A = K / block): the 8 rows' absmax of a block column side by
 * side, as the decode GEMV reads them 8 rows at a time, and double quantization's groups of 256 are
 * 256 neighbouring slots. Otherwise (A = 0) block order. A layout, not a change of the math: only
 * which absmax values share a double-quantization group depends on it.
 */
export function absmaxTiles(n: number, block: number, rowLength: number): number {
  if (!(rowLength > 0) || n <= 0 || n % rowLength !== 0 || rowLength % block !== 0 || (n / rowLength) % 8 !== 0) return 0;
  return rowLength / block;
}
export function absmaxSlot(b: number, tiles: number): number {
  if (tiles === 0) return b;
  const r = Math.floor(b / tiles), j = b - r * tiles;
  return (Math.floor(r / 8) * tiles + j) * 8 + (r % 8);
}

/** Blockwise absmax 4-bit quantization of a weight array (QLoRA), in rows of `rowLength` when given (the absmax layout: absmaxTiles). */
export function quantize4(w: ArrayLike<number>, scheme: FourBit, opts: { block?: number; doubleQuant?: boolean; rowLength?: number } = {}): FourBitWeights {
  const block = opts.block ?? 64;
  const code = CODES[scheme];
  const nb = Math.ceil(w.length / block);
  let absmax: Float32Array = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    let m = 0;
    for (let i = b * block; i < Math.min(w.length, (b + 1) * block); i++) m = Math.max(m, Math.abs(w[i]));
    absmax[b] = m;
  }
  let double: FourBitWeights["double"];
  const tiles = absmaxTiles(w.length, block, opts.rowLength ?? 0);
  if (opts.doubleQuant) {
    // the groups of 256 (and the mean's sum) in slot order
    const slots = new Float32Array(nb);
    for (let b = 0; b < nb; b++) slots[absmaxSlot(b, tiles)] = absmax[b];
    double = quantizeAbsmax(slots, 256);
    const decoded = dequantizeAbsmax(double, nb);
    absmax = Float32Array.from({ length: nb }, (_, b) => decoded[absmaxSlot(b, tiles)]);
  }
  const codes = new Uint8Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const m = absmax[Math.floor(i / block)];
    codes[i] = nearestCode(code, m > 0 ? w[i] / m : 0);
  }
  return { scheme, block, codes, absmax, double, tiles };
}

export function dequantize4(q: FourBitWeights): Float32Array {
  const code = CODES[q.scheme];
  const out = new Float32Array(q.codes.length);
  for (let i = 0; i < out.length; i++) out[i] = code[q.codes[i]] * q.absmax[Math.floor(i / q.block)];
  return out;
}

/** Double quantization (QLoRA §3): absmax values minus their mean, int8 absmax-scaled per block. */
export function quantizeAbsmax(a: Float32Array, block: number): NonNullable<FourBitWeights["double"]> {
  // the mean is kept as an f32 (bitsandbytes' offset is an f32 tensor too)
  const mean = Math.fround(a.length ? a.reduce((s, x) => s + x, 0) / a.length : 0);
  const nb = Math.ceil(a.length / block);
  const scales = new Float32Array(nb);
  const codes = new Int8Array(a.length);
  for (let b = 0; b < nb; b++) {
    let m = 0;
    for (let i = b * block; i < Math.min(a.length, (b + 1) * block); i++) m = Math.max(m, Math.abs(a[i] - mean));
    scales[b] = m / 127;
    for (let i = b * block; i < Math.min(a.length, (b + 1) * block); i++) codes[i] = m > 0 ? Math.round(((a[i] - mean) / m) * 127) : 0;
  }
  return { codes, scales, mean, block };
}

export function dequantizeAbsmax(d: NonNullable<FourBitWeights["double"]>, n: number): Float32Array {
  const out = new Float32Array(n);
  // max(0, f32(f32(code·scale) + mean)): f32 arithmetic as bitsandbytes dequantizes its nested absmax;
  // each operation in f64 rounded to f32 is the correctly rounded f32 result (kiln_quant.h absmax_dq)
  for (let i = 0; i < n; i++) out[i] = Math.max(0, Math.fround(Math.fround(d.codes[i] * d.scales[Math.floor(i / d.block)]) + d.mean));
  return out;
}

/** Vector-wise absmax int8 of a [rows, cols] matrix: codes and one scale (absmax/127) per row. */
export function quantizeRows8(x: ArrayLike<number>, rows: number, cols: number): { q: Int8Array; scale: Float64Array } {
  const q = new Int8Array(rows * cols);
  const scale = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < cols; c++) m = Math.max(m, Math.abs(x[r * cols + c]));
    scale[r] = m / 127;
    for (let c = 0; c < cols; c++) q[r * cols + c] = m > 0 ? Math.round((x[r * cols + c] / m) * 127) : 0;
  }
  return { q, scale };
}

/**
 * y = x Wᵀ (+ b) the LLM.int8 way. x: [M, K] activations, w: [N, K] weights. The weights are stored
 * int8 only: absmax per output feature over all K (quantized once, on load). Feature dims k where
 * some |x[m, k]| > threshold are outliers: their products use x in floating point against the
 * dequantized int8 weights (as bitsandbytes does when it keeps no 16-bit weights); the other dims
 * go through per-token absmax int8 (over the non-outlier dims) × the int8 weights, accumulated in
 * int32. threshold ≤ 0 or Infinity: no decomposition (plain vector-wise int8).
 */
export function int8Matmul(x: ArrayLike<number>, w: ArrayLike<number>, bias: ArrayLike<number> | undefined, M: number, N: number, K: number, threshold: number): Float64Array {
  const outlier = new Uint8Array(K);
  if (threshold > 0 && Number.isFinite(threshold))
    for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) if (Math.abs(x[m * K + k]) > threshold) outlier[k] = 1;
  const xr = new Float64Array(M * K);
  for (let i = 0; i < M * K; i++) xr[i] = outlier[i % K] ? 0 : x[i];
  const qx = quantizeRows8(xr, M, K), qw = quantizeRows8(w, N, K);
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0; // int32 in the kernels: |acc| ≤ K·127² fits for K < 133k
      for (let k = 0; k < K; k++) acc += qx.q[m * K + k] * qw.q[n * K + k];
      let s = acc * qx.scale[m] * qw.scale[n];
      for (let k = 0; k < K; k++) if (outlier[k]) s += x[m * K + k] * (qw.q[n * K + k] * qw.scale[n]);
      y[m * N + n] = s + (bias ? bias[n] : 0);
    }
  return y;
}

// Stored sizes of quantized weights: the twins of bytes4 / bytes8 in
// codegen-templates/common/kiln_quant.h (the layouts the runtime quantizes into on load).
const pad16 = (n: number): number => Math.ceil(n / 16) * 16;

/** Bytes of n weights stored 4-bit (nf4/fp4): packed codes, then f32 absmax per block or the double-quantized tail. */
export function bytes4(n: number, block: number, doubleQuant: boolean): number {
  const blocks = Math.ceil(n / block);
  const groups = Math.ceil(blocks / 256);
  return pad16(Math.ceil(n / 2)) + (doubleQuant ? pad16(blocks) + pad16(4 * groups) + 8 : 4 * blocks);
}

/** Bytes of an [N, K] weight stored LLM.int8: the int8 codes padded to 16, then one f64 scale per row. */
export const bytes8 = (N: number, K: number): number => pad16(N * K) + 8 * N;
