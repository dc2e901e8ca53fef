// BLOOM (BigScience, 2022) in the eager form of its Hugging Face code: no position embeddings but
// ALiBi (a per-head linear penalty on the key distance, added after the 1/√D scaling), a LayerNorm
// right after the word embeddings, a fused query_key_value laid out per head as [3, head_dim], and
// a tanh-GELU MLP of 4× the hidden size. Pre-norm blocks; the residual can be taken after the norm
// (apply_residual_connection_post_layernorm).

import {
  alibiBias, attentionBias, cacheUpdate, defineModel, Embedding, geluTanh, HFConfig, LayerNorm, Linear, Module,
} from "../compiler/dsl/index.js";
import type { Tensor } from "../compiler/dsl/index.js";
import { KilnError } from "../compiler/ir/errors.js";
import { splitFusedQkv } from "./falcon.js";

export interface BloomConfig {
  vocab: number; hidden: number; layers: number; heads: number; headDim: number; eps: number;
  residualPostNorm: boolean; tied: boolean;
}

class Attention extends Module {
  query_key_value: Linear; dense: Linear;
  constructor(readonly c: BloomConfig, readonly layer: number) {
    super();
    this.query_key_value = new Linear(c.hidden, 3 * c.hidden);
    this.dense = new Linear(c.hidden, c.hidden);
  }
  forward(x: Tensor): Tensor {
    const { heads, headDim } = this.c;
    const [B, S] = x.shape;
    const [q, k0, v0] = splitFusedQkv(this.query_key_value.forward(x), heads, 1, headDim); // [heads, 3, D]
    const [k, v] = cacheUpdate(this.layer, k0, v0);
    const scores = q.matmul(k.transpose(-2, -1)).mul(headDim ** -0.5)
      .add(alibiBias(heads, k.size(2)).to(q.dtype)).add(attentionBias(S, q.dtype));
    const probs = scores.float().softmax(-1).to(q.dtype);
    return this.dense.forward(probs.matmul(v).transpose(1, 2).reshape(B, S, heads * headDim));
  }
}

class MLP extends Module {
  dense_h_to_4h: Linear; dense_4h_to_h: Linear;
  constructor(c: BloomConfig) {
    super();
    this.dense_h_to_4h = new Linear(c.hidden, 4 * c.hidden);
    this.dense_4h_to_h = new Linear(4 * c.hidden, c.hidden);
  }
  forward(x: Tensor): Tensor {
    // BLOOM's gelu is the tanh form with √(2/π) written 0.79788456 (a 1e-9 relative difference)
    return this.dense_4h_to_h.forward(geluTanh(this.dense_h_to_4h.forward(x)));
  }
}

class Block extends Module {
  input_layernorm: LayerNorm; self_attention: Attention; post_attention_layernorm: LayerNorm; mlp: MLP;
  constructor(readonly c: BloomConfig, layer: number) {
    super();
    this.input_layernorm = new LayerNorm(c.hidden, c.eps);
    this.self_attention = new Attention(c, layer);
    this.post_attention_layernorm = new LayerNorm(c.hidden, c.eps);
    this.mlp = new MLP(c);
  }
  forward(h: Tensor): Tensor {
    const post = this.c.residualPostNorm;
    let x = this.input_layernorm.forward(h);
    h = (post ? x : h).add(this.self_attention.forward(x));
    x = this.post_attention_layernorm.forward(h);
    return (post ? x : h).add(this.mlp.forward(x));
  }
}

class BloomModel extends Module {
  word_embeddings: Embedding; word_embeddings_layernorm: LayerNorm; h: Block[]; ln_f: LayerNorm;
  constructor(c: BloomConfig) {
    super();
    this.word_embeddings = new Embedding(c.vocab, c.hidden);
    this.word_embeddings_layernorm = new LayerNorm(c.hidden, c.eps);
    this.h = [...Array(c.layers).keys()].map((i) => new Block(c, i));
    this.ln_f = new LayerNorm(c.hidden, c.eps);
  }
  forward(ids: Tensor): Tensor {
    let h = this.word_embeddings_layernorm.forward(this.word_embeddings.forward(ids));
    for (const block of this.h) h = block.forward(h);
    return this.ln_f.forward(h);
  }
}

class BloomForCausalLM extends Module {
  transformer: BloomModel; lm_head: Linear;
  constructor(c: BloomConfig) {
    super();
    this.transformer = new BloomModel(c);
    this.lm_head = new Linear(c.hidden, c.vocab, { bias: false });
    if (c.tied) this.lm_head.weight = this.transformer.word_embeddings.weight;
  }
  forward({ input_ids }: Record<string, Tensor>): Record<string, Tensor> {
    return { logits: this.lm_head.forward(this.transformer.forward(input_ids)) };
  }
}

export default defineModel<BloomConfig>({
  family: "bloom",
  modelTypes: ["bloom"],
  fromHF(json, source) {
    const c = new HFConfig(json, source);
    const hidden = c.int("hidden_size", c.has("n_embed") ? c.int("n_embed") : undefined);
    const heads = c.int("n_head", c.has("num_attention_heads") ? c.int("num_attention_heads") : undefined);
    if (hidden % heads) throw new KilnError("E_CONFIG", `'hidden_size' (${hidden}) must be a multiple of 'n_head' (${heads})`, { where: c.source });
    return {
      vocab: c.int("vocab_size"), hidden, layers: c.int("n_layer", c.has("num_hidden_layers") ? c.int("num_hidden_layers") : undefined),
      heads, headDim: hidden / heads, eps: c.num("layer_norm_epsilon", 1e-5),
      residualPostNorm: c.bool("apply_residual_connection_post_layernorm", false), tied: c.bool("tie_word_embeddings", true),
    };
  },
  inputs: () => ({ input_ids: { dtype: "i64", shape: ["B", "S"] } }),
  create: (c) => new BloomForCausalLM(c),
});
