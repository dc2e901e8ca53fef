// The layers a model file uses, each the plain eager math of the paper, so passes (not layers)
// decide how it runs. Parameter names follow torch.nn / Hugging Face ("weight", "bias").

import type { Dim } from "../ir/dim.js";
import { dimEq } from "../ir/dim.js";
import type { DType } from "../ir/dtype.js";
import { KilnError } from "../ir/errors.js";
import { Module, Parameter } from "./module.js";
import type { Tensor } from "./tensor.js";
import { arange, constant, emit, full, traceContext } from "./tensor.js";

/** y = x Wᵀ + b, W: [out, in] as in torch.nn.Linear */
export class Linear extends Module {
  weight: Parameter;
  bias?: Parameter;
  constructor(readonly inFeatures: Dim, readonly outFeatures: Dim, opts: { bias?: boolean } = {}) {
    super();
    this.weight = new Parameter([outFeatures, inFeatures]);
    if (opts.bias ?? true) this.bias = new Parameter([outFeatures]);
  }
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

export function linear(x: Tensor, weight: Parameter, bias?: Parameter): Tensor {
  return emit("linear", bias ? [x, weight.t, bias.t] : [x, weight.t]);
}

/** rows of `weight` picked by integer ids: [..ids] -> [..ids, dim] */
export class Embedding extends Module {
  weight: Parameter;
  constructor(readonly num: Dim, readonly dim: Dim) {
    super();
    this.weight = new Parameter([num, dim]);
  }
  forward(ids: Tensor): Tensor {
    return emit("gather", [this.weight.t, ids], { axis: 0 });
  }
}

/** RMSNorm (Zhang & Sennrich, 2019): x / sqrt(mean(x²) + eps) · w, computed in f32 as Llama does. */
export class RMSNorm extends Module {
  weight: Parameter;
  constructor(readonly dim: Dim, readonly eps: number) {
    super();
    this.weight = new Parameter([dim]);
  }
  forward(x: Tensor): Tensor {
    const h = x.float();
    const normed = h.mul(h.pow(2).mean(-1, true).add(this.eps).rsqrt());
    return this.weight.t.mul(normed.to(x.dtype));
  }
}

/** LayerNorm (Ba et al., 2016): (x − mean) / sqrt(var + eps) · w + b, over the last dim. */
export class LayerNorm extends Module {
  weight: Parameter;
  bias?: Parameter;
  constructor(readonly dim: Dim, readonly eps: number, opts: { bias?: boolean } = {}) {
    super();
    this.weight = new Parameter([dim]);
    if (opts.bias ?? true) this.bias = new Parameter([dim]);
  }
  forward(x: Tensor): Tensor {
    const h = x.float();
    const centered = h.sub(h.mean(-1, true));
    const normed = centered.mul(centered.pow(2).mean(-1, true).add(this.eps).rsqrt()).to(x.dtype);
    const y = normed.mul(this.weight.t);
    return this.bias ? y.add(this.bias.t) : y;
  }
}

// ---------------------------------------------------------------- attention biases

/**
 * ALiBi slopes (Press et al., 2022), one per head: 2^(−8h/n) for h = 1..n when n is a power of 2;
 * otherwise those of the largest power of 2 below n, then every other slope of twice that many
 * (as BLOOM and Falcon compute them).
 */
export function alibiSlopes(heads: number): number[] {
  const pow2 = 2 ** Math.floor(Math.log2(heads));
  const slopes = (n: number, count: number, step: number) => [...Array(count).keys()].map((i) => 2 ** ((-8 * (1 + i * step)) / n));
  return [...slopes(pow2, pow2, 1), ...slopes(2 * pow2, Math.min(pow2, heads - pow2), 2)];
}

/**
 * The ALiBi bias [1, H, 1, T] = slope_h · j for key j of T, in f32: added to the scores it
 * penalizes each key linearly by its distance from the query (softmax is shift-invariant, so
 * slope · j and slope · (j − i) give the same probabilities; padded keys are masked apart).
 * `bf16`: round the slopes and the products to bf16, as Falcon's checkpoints were trained
 * (exact anyway where the slopes are powers of 2 and positions below 256).
 */
export function alibiBias(heads: number, T: Dim, opts: { bf16?: boolean } = {}): Tensor {
  const keys = arange(0, T).float().reshape(1, 1, 1, T);
  const slopes = constant(alibiSlopes(heads), [1, heads, 1, 1]);
  if (!opts.bf16) return slopes.mul(keys);
  return slopes.to("bf16").float().mul(keys).to("bf16").float();
}

/** The lowest finite value of a float dtype: what Hugging Face's masks add at a hidden key. */
export function lowestFinite(dtype: DType): number {
  if (dtype === "f16") return -65504;
  const mantissa = dtype === "bf16" ? 7 : 23;
  return -(2 - 2 ** -mantissa) * 2 ** 127;
}

/**
 * An encoder's padding bias [B, 1, 1, S] (no causal part): 0 at real keys, the lowest finite value
 * at padded ones, from the `attention_mask` input of a model traced with `attentionMask: true`.
 * Undefined without one (every token real). A padded query row still sees the real keys, so it
 * stays finite, as in Hugging Face's encoders.
 */
export function paddingBias(S: Dim, dtype: DType = "f32"): Tensor | undefined {
  const mask = traceContext().padding?.mask;
  if (!mask) return undefined;
  const [B, T] = mask.shape;
  if (!dimEq(T, S)) throw new KilnError("E_USAGE", `an encoder's attention_mask covers ${T} tokens, not the ${S} of its input (trace it without a KV cache)`);
  const real = mask.ne(0).reshape(B, 1, 1, S);
  return emit("where", [real, full([], 0, dtype), full([], lowestFinite(dtype), dtype)]);
}
