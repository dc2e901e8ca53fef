// The layers a model file uses, each the plain eager math of the paper, so passes (not layers)
// decide how it runs. Parameter names follow torch.nn / Hugging Face ("weight", "bias").

import type { Dim } from "../ir/dim.js";
import { Module, Parameter } from "./module.js";
import type { Tensor } from "./tensor.js";
import { emit } from "./tensor.js";

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
