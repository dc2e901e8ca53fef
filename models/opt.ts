// OPT (Zhang et al., 2022) in the eager form of its Hugging Face code: learned absolute positions
// (the table starts 2 rows in: OPT's offset), multi-head attention with biases and the query
// scaled before Q·Kᵀ, a ReLU MLP (fc1, fc2), LayerNorm before each block (do_layer_norm_before,
// all sizes but 350m) or after it (350m, which also embeds in word_embed_proj_dim and projects in
// and out of the hidden size).

import {
  attentionBias, cacheUpdate, defineModel, Embedding, gelu, HFConfig, LayerNorm, Linear, Module, positionIds, relu,
} from "../compiler/dsl/index.js";
import type { Tensor } from "../compiler/dsl/index.js";
import { KilnError } from "../compiler/ir/errors.js";

export interface OPTConfig {
  vocab: number; hidden: number; ffn: number; layers: number; heads: number; headDim: number;
  /** the embeddings' width (project_in/project_out when it differs from hidden) */
  embedDim: number; maxPositions: number;
  preNorm: boolean; finalNorm: boolean; bias: boolean; tied: boolean; act: "relu" | "gelu";
}

/** OPT's position table is indexed by position + 2 (rows 0 and 1 were padding in fairseq). */
const POSITION_OFFSET = 2;

class Attention extends Module {
  q_proj: Linear; k_proj: Linear; v_proj: Linear; out_proj: Linear;
  constructor(readonly c: OPTConfig, readonly layer: number) {
    super();
    const lin = () => new Linear(c.hidden, c.hidden, { bias: c.bias });
    [this.q_proj, this.k_proj, this.v_proj, this.out_proj] = [lin(), lin(), lin(), lin()];
  }
  forward(x: Tensor): Tensor {
    const { heads, headDim } = this.c;
    const [B, S] = x.shape;
    const split = (t: Tensor) => t.reshape(B, S, heads, headDim).transpose(1, 2);
    const q = split(this.q_proj.forward(x).mul(headDim ** -0.5)); // scaled before Q·Kᵀ, as OPT does
    const [k, v] = cacheUpdate(this.layer, split(this.k_proj.forward(x)), split(this.v_proj.forward(x)));
    const scores = q.matmul(k.transpose(-2, -1)).add(attentionBias(S, q.dtype));
    const probs = scores.float().softmax(-1).to(q.dtype);
    return this.out_proj.forward(probs.matmul(v).transpose(1, 2).reshape(B, S, heads * headDim));
  }
}

class DecoderLayer extends Module {
  self_attn: Attention; self_attn_layer_norm: LayerNorm; fc1: Linear; fc2: Linear; final_layer_norm: LayerNorm;
  constructor(readonly c: OPTConfig, layer: number) {
    super();
    this.self_attn = new Attention(c, layer);
    this.self_attn_layer_norm = new LayerNorm(c.hidden, 1e-5);
    this.fc1 = new Linear(c.hidden, c.ffn, { bias: c.bias });
    this.fc2 = new Linear(c.ffn, c.hidden, { bias: c.bias });
    this.final_layer_norm = new LayerNorm(c.hidden, 1e-5);
  }
  forward(h: Tensor): Tensor {
    const pre = this.c.preNorm;
    h = h.add(this.self_attn.forward(pre ? this.self_attn_layer_norm.forward(h) : h));
    if (!pre) h = this.self_attn_layer_norm.forward(h);
    const act = this.c.act === "relu" ? relu : gelu;
    h = h.add(this.fc2.forward(act(this.fc1.forward(pre ? this.final_layer_norm.forward(h) : h))));
    return pre ? h : this.final_layer_norm.forward(h);
  }
}

class OPTDecoder extends Module {
  embed_tokens: Embedding; embed_positions: Embedding; project_in?: Linear; project_out?: Linear;
  layers: DecoderLayer[]; final_layer_norm?: LayerNorm;
  constructor(readonly c: OPTConfig) {
    super();
    this.embed_tokens = new Embedding(c.vocab, c.embedDim);
    this.embed_positions = new Embedding(c.maxPositions + POSITION_OFFSET, c.hidden);
    if (c.embedDim !== c.hidden) {
      this.project_in = new Linear(c.embedDim, c.hidden, { bias: false });
      this.project_out = new Linear(c.hidden, c.embedDim, { bias: false });
    }
    this.layers = [...Array(c.layers).keys()].map((i) => new DecoderLayer(c, i));
    if (c.finalNorm) this.final_layer_norm = new LayerNorm(c.hidden, 1e-5);
  }
  forward(ids: Tensor): Tensor {
    let h = this.embed_tokens.forward(ids);
    if (this.project_in) h = this.project_in.forward(h);
    // positions count real tokens in padded batches (Hugging Face: cumsum(attention_mask) − 1)
    const pos = positionIds(ids.size(1)).to("i64").add(POSITION_OFFSET);
    h = h.add(this.embed_positions.forward(pos));
    for (const layer of this.layers) h = layer.forward(h);
    if (this.final_layer_norm) h = this.final_layer_norm.forward(h);
    return this.project_out ? this.project_out.forward(h) : h;
  }
}

class OPTModel extends Module {
  decoder: OPTDecoder;
  constructor(c: OPTConfig) {
    super();
    this.decoder = new OPTDecoder(c);
  }
}

class OPTForCausalLM extends Module {
  model: OPTModel; lm_head: Linear;
  constructor(c: OPTConfig) {
    super();
    this.model = new OPTModel(c);
    this.lm_head = new Linear(c.embedDim, c.vocab, { bias: false });
    if (c.tied) this.lm_head.weight = this.model.decoder.embed_tokens.weight;
  }
  forward({ input_ids }: Record<string, Tensor>): Record<string, Tensor> {
    return { logits: this.lm_head.forward(this.model.decoder.forward(input_ids)) };
  }
}

export default defineModel<OPTConfig>({
  family: "opt",
  modelTypes: ["opt"],
  fromHF(json, source) {
    const c = new HFConfig(json, source);
    const hidden = c.int("hidden_size"), heads = c.int("num_attention_heads");
    if (hidden % heads) throw new KilnError("E_CONFIG", `'hidden_size' (${hidden}) must be a multiple of 'num_attention_heads' (${heads})`, { where: c.source });
    if (!c.bool("layer_norm_elementwise_affine", true)) throw new KilnError("E_CONFIG", "'layer_norm_elementwise_affine' false is not supported (Kiln's LayerNorm has a weight and a bias)", { where: c.source });
    const preNorm = c.bool("do_layer_norm_before", true);
    return {
      vocab: c.int("vocab_size"), hidden, ffn: c.int("ffn_dim"), layers: c.int("num_hidden_layers"), heads, headDim: hidden / heads,
      embedDim: c.int("word_embed_proj_dim", hidden), maxPositions: c.int("max_position_embeddings"),
      preNorm, finalNorm: preNorm && !c.bool("_remove_final_layer_norm", false),
      bias: c.bool("enable_bias", true), tied: c.bool("tie_word_embeddings", true), act: c.oneOf("activation_function", ["relu", "gelu"], "relu"),
    };
  },
  inputs: () => ({ input_ids: { dtype: "i64", shape: ["B", "S"] } }),
  create: (c) => new OPTForCausalLM(c),
});
