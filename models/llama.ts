// Llama (Touvron et al., 2023) in the eager form of the paper: pre-norm RMSNorm blocks, rotary
// position embeddings, grouped-query attention as repeat-kv + matmul + scale + causal mask +
// softmax + matmul, and a SwiGLU MLP. Property names are Hugging Face's module names, so the
// parameters are the checkpoint's tensor names. Passes, not this file, decide how it runs.

import {
  applyRotary, attentionBias, cacheUpdate, concat, constant, defineModel, Embedding, HFConfig, Linear, Module, positionIds, RMSNorm, repeatKv, silu,
} from "../compiler/dsl/index.js";
import type { Tensor } from "../compiler/dsl/index.js";
import { KilnError } from "../compiler/ir/errors.js";

export interface LlamaConfig {
  vocab: number; hidden: number; intermediate: number; layers: number;
  heads: number; kvHeads: number; headDim: number; eps: number;
  tied: boolean; attentionBias: boolean; mlpBias: boolean;
  /** RoPE inverse frequencies, one per pair of head dims (rope_theta and rope_scaling applied) */
  invFreq: number[];
}

/** RoPE frequencies θ_i = base^(−2i/d) (Su et al., 2021), with the `linear` and `llama3` rescalings. */
export function ropeInvFreq(c: HFConfig, headDim: number): number[] {
  const rope = c.obj("rope_parameters") ?? c.obj("rope_scaling"); // transformers v5 ?? v4
  const theta = rope?.has("rope_theta") ? rope.num("rope_theta") : c.num("rope_theta", 10000);
  const kinds = ["default", "linear", "llama3"] as const;
  const kind = !rope ? "default" : rope.has("rope_type") ? rope.oneOf("rope_type", kinds) : rope.oneOf("type", kinds, "default");
  const base = [...Array(headDim / 2).keys()].map((i) => 1 / theta ** ((2 * i) / headDim));
  if (kind === "linear") return base.map((f) => f / rope!.num("factor"));
  if (kind !== "llama3") return base;
  // Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.
  const [factor, lo, hi, ctx] = [rope!.num("factor"), rope!.num("low_freq_factor"), rope!.num("high_freq_factor"), rope!.num("original_max_position_embeddings")];
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < ctx / hi) return f;
    if (wavelen > ctx / lo) return f / factor;
    const smooth = (ctx / wavelen - lo) / (hi - lo);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

class Attention extends Module {
  q_proj: Linear; k_proj: Linear; v_proj: Linear; o_proj: Linear;
  constructor(readonly c: LlamaConfig, readonly layer: number) {
    super();
    const bias = { bias: c.attentionBias };
    this.q_proj = new Linear(c.hidden, c.heads * c.headDim, bias);
    this.k_proj = new Linear(c.hidden, c.kvHeads * c.headDim, bias);
    this.v_proj = new Linear(c.hidden, c.kvHeads * c.headDim, bias);
    this.o_proj = new Linear(c.heads * c.headDim, c.hidden, bias);
  }
  forward(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
    const { heads, kvHeads, headDim } = this.c;
    const [B, S] = x.shape;
    const split = (t: Tensor, h: number) => t.reshape(B, S, h, headDim).transpose(1, 2); // [B, h, S, D]
    const q = applyRotary(split(this.q_proj.forward(x), heads), cos, sin);
    let k = applyRotary(split(this.k_proj.forward(x), kvHeads), cos, sin);
    let v = split(this.v_proj.forward(x), kvHeads);
    [k, v] = cacheUpdate(this.layer, k, v); // with a KV cache: past ++ new, [B, kvHeads, P+S, D]
    [k, v] = [repeatKv(k, heads / kvHeads), repeatKv(v, heads / kvHeads)];
    const scores = q.matmul(k.transpose(-2, -1)).mul(headDim ** -0.5).add(attentionBias(S, q.dtype)); // causal (+ padding)
    const probs = scores.float().softmax(-1).to(q.dtype);
    const out = probs.matmul(v).transpose(1, 2).reshape(B, S, heads * headDim);
    return this.o_proj.forward(out);
  }
}

class MLP extends Module {
  gate_proj: Linear; up_proj: Linear; down_proj: Linear;
  constructor(c: LlamaConfig) {
    super();
    const bias = { bias: c.mlpBias };
    this.gate_proj = new Linear(c.hidden, c.intermediate, bias);
    this.up_proj = new Linear(c.hidden, c.intermediate, bias);
    this.down_proj = new Linear(c.intermediate, c.hidden, bias);
  }
  forward(x: Tensor): Tensor {
    return this.down_proj.forward(silu(this.gate_proj.forward(x)).mul(this.up_proj.forward(x))); // SwiGLU
  }
}

class DecoderLayer extends Module {
  input_layernorm: RMSNorm; self_attn: Attention; post_attention_layernorm: RMSNorm; mlp: MLP;
  constructor(c: LlamaConfig, layer: number) {
    super();
    this.input_layernorm = new RMSNorm(c.hidden, c.eps);
    this.self_attn = new Attention(c, layer);
    this.post_attention_layernorm = new RMSNorm(c.hidden, c.eps);
    this.mlp = new MLP(c);
  }
  forward(h: Tensor, cos: Tensor, sin: Tensor): Tensor {
    h = h.add(this.self_attn.forward(this.input_layernorm.forward(h), cos, sin));
    return h.add(this.mlp.forward(this.post_attention_layernorm.forward(h)));
  }
}

class LlamaModel extends Module {
  embed_tokens: Embedding; layers: DecoderLayer[]; norm: RMSNorm;
  constructor(readonly c: LlamaConfig) {
    super();
    this.embed_tokens = new Embedding(c.vocab, c.hidden);
    this.layers = [...Array(c.layers).keys()].map((i) => new DecoderLayer(c, i));
    this.norm = new RMSNorm(c.hidden, c.eps);
  }
  forward(ids: Tensor): Tensor {
    let h = this.embed_tokens.forward(ids);
    // angles[b, s, i] = position(b, s) · θ_i, in f32; each head dim pair (i, i + D/2) shares an angle
    const pos = positionIds(ids.size(1)); // [1 or B, S]: counts real tokens in padded batches
    const angles = pos.unsqueeze(-1).mul(constant(this.c.invFreq, [1, 1, this.c.headDim / 2]));
    const freqs = concat([angles, angles], -1).unsqueeze(1); // [1 or B, 1, S, D], broadcasts over [B, H, S, D]
    const [cos, sin] = [freqs.cos().to(h.dtype), freqs.sin().to(h.dtype)];
    for (const layer of this.layers) h = layer.forward(h, cos, sin);
    return this.norm.forward(h);
  }
}

class LlamaForCausalLM extends Module {
  model: LlamaModel; lm_head: Linear;
  constructor(c: LlamaConfig) {
    super();
    this.model = new LlamaModel(c);
    this.lm_head = new Linear(c.hidden, c.vocab, { bias: false });
    if (c.tied) this.lm_head.weight = this.model.embed_tokens.weight; // one tensor, named model.embed_tokens.weight
  }
  forward({ input_ids }: Record<string, Tensor>): Record<string, Tensor> {
    return { logits: this.lm_head.forward(this.model.forward(input_ids)) };
  }
}

export default defineModel<LlamaConfig>({
  family: "llama",
  modelTypes: ["llama"],
  fromHF(json, source) {
    const c = new HFConfig(json, source);
    c.oneOf("hidden_act", ["silu"], "silu");
    const hidden = c.int("hidden_size"), heads = c.int("num_attention_heads");
    const kvHeads = c.int("num_key_value_heads", heads), headDim = c.int("head_dim", hidden / heads);
    if (!Number.isInteger(headDim) || headDim % 2) throw new KilnError("E_CONFIG", `'head_dim' must be an even integer, got ${headDim}`, { where: c.source });
    if (heads % kvHeads) throw new KilnError("E_CONFIG", `'num_attention_heads' (${heads}) must be a multiple of 'num_key_value_heads' (${kvHeads})`, { where: c.source });
    return {
      vocab: c.int("vocab_size"), hidden, intermediate: c.int("intermediate_size"), layers: c.int("num_hidden_layers"),
      heads, kvHeads, headDim, eps: c.num("rms_norm_eps", 1e-6),
      tied: c.bool("tie_word_embeddings", false), attentionBias: c.bool("attention_bias", false), mlpBias: c.bool("mlp_bias", false),
      invFreq: ropeInvFreq(c, headDim),
    };
  },
  inputs: () => ({ input_ids: { dtype: "i64", shape: ["B", "S"] } }),
  create: (c) => new LlamaForCausalLM(c),
});
