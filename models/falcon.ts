// Falcon (Almazrouei et al., 2023) in the eager form of its Hugging Face code: one fused
// query_key_value projection, multi-query or grouped attention, rotary or ALiBi positions, and
// attention and MLP side by side on the same normed input (parallel_attn), or one after the other.
// The three checkpoint layouts of query_key_value are one: per kv head, its query heads then one
// key and one value head ([kvHeads, groups + 2, D]); multi_query has one kv head, the classic
// layout one query head per kv head ([heads, 3, D]), new_decoder_architecture num_kv_heads.

import {
  alibiBias, applyRotary, attentionBias, cacheUpdate, concat, constant, defineModel, Embedding, gelu, HFConfig, LayerNorm, Linear, Module, positionIds, repeatKv,
} from "../compiler/dsl/index.js";
import type { Tensor } from "../compiler/dsl/index.js";
import { KilnError } from "../compiler/ir/errors.js";
import { ropeInvFreq } from "./llama.js";

export interface FalconConfig {
  vocab: number; hidden: number; ffn: number; layers: number;
  heads: number; kvHeads: number; headDim: number; eps: number;
  bias: boolean; tied: boolean; alibi: boolean; parallel: boolean;
  /** layer norms of a parallel block: 2 = ln_attn and ln_mlp, 1 = one input_layernorm */
  parallelNorms: 1 | 2;
  invFreq: number[];
}

/** [B, S, kvHeads·(groups+2)·D] → q [B, kvHeads·groups, S, D], k and v [B, kvHeads, S, D]. */
export function splitFusedQkv(fused: Tensor, kvHeads: number, groups: number, headDim: number): [Tensor, Tensor, Tensor] {
  const [B, S] = fused.shape;
  const x = fused.reshape(B, S, kvHeads, groups + 2, headDim);
  const heads = (from: number, to: number) => x.slice(3, from, to).reshape(B, S, kvHeads * (to - from), headDim).transpose(1, 2);
  return [heads(0, groups), heads(groups, groups + 1), heads(groups + 1, groups + 2)];
}

class Attention extends Module {
  query_key_value: Linear; dense: Linear;
  constructor(readonly c: FalconConfig, readonly layer: number) {
    super();
    this.query_key_value = new Linear(c.hidden, (c.heads + 2 * c.kvHeads) * c.headDim, { bias: c.bias });
    this.dense = new Linear(c.heads * c.headDim, c.hidden, { bias: c.bias });
  }
  forward(x: Tensor, cos?: Tensor, sin?: Tensor): Tensor {
    const { heads, kvHeads, headDim } = this.c;
    const [B, S] = x.shape;
    let [q, k, v] = splitFusedQkv(this.query_key_value.forward(x), kvHeads, heads / kvHeads, headDim);
    if (cos && sin) [q, k] = [applyRotary(q, cos, sin), applyRotary(k, cos, sin)];
    [k, v] = cacheUpdate(this.layer, k, v);
    [k, v] = [repeatKv(k, heads / kvHeads), repeatKv(v, heads / kvHeads)];
    let scores = q.matmul(k.transpose(-2, -1));
    // ALiBi is added before the 1/√D scaling in Falcon (after it in BLOOM)
    if (this.c.alibi) scores = scores.add(alibiBias(heads, k.size(2), { bf16: true }).to(scores.dtype));
    scores = scores.mul(headDim ** -0.5).add(attentionBias(S, q.dtype));
    const probs = scores.float().softmax(-1).to(q.dtype);
    return this.dense.forward(probs.matmul(v).transpose(1, 2).reshape(B, S, heads * headDim));
  }
}

class MLP extends Module {
  dense_h_to_4h: Linear; dense_4h_to_h: Linear;
  constructor(c: FalconConfig) {
    super();
    this.dense_h_to_4h = new Linear(c.hidden, c.ffn, { bias: c.bias });
    this.dense_4h_to_h = new Linear(c.ffn, c.hidden, { bias: c.bias });
  }
  forward(x: Tensor): Tensor {
    return this.dense_4h_to_h.forward(gelu(this.dense_h_to_4h.forward(x)));
  }
}

class DecoderLayer extends Module {
  input_layernorm?: LayerNorm; ln_attn?: LayerNorm; ln_mlp?: LayerNorm; post_attention_layernorm?: LayerNorm;
  self_attention: Attention; mlp: MLP;
  constructor(c: FalconConfig, layer: number) {
    super();
    const norm = () => new LayerNorm(c.hidden, c.eps);
    if (c.parallel && c.parallelNorms === 2) [this.ln_attn, this.ln_mlp] = [norm(), norm()];
    else this.input_layernorm = norm();
    if (!c.parallel) this.post_attention_layernorm = norm();
    this.self_attention = new Attention(c, layer);
    this.mlp = new MLP(c);
  }
  forward(h: Tensor, cos?: Tensor, sin?: Tensor): Tensor {
    const x = (this.ln_attn ?? this.input_layernorm!).forward(h);
    const attn = this.self_attention.forward(x, cos, sin);
    if (this.post_attention_layernorm) { // sequential: attention, then the MLP on its result
      h = h.add(attn);
      return h.add(this.mlp.forward(this.post_attention_layernorm.forward(h)));
    }
    return h.add(this.mlp.forward(this.ln_mlp ? this.ln_mlp.forward(h) : x).add(attn)); // parallel
  }
}

class FalconModel extends Module {
  word_embeddings: Embedding; h: DecoderLayer[]; ln_f: LayerNorm;
  constructor(readonly c: FalconConfig) {
    super();
    this.word_embeddings = new Embedding(c.vocab, c.hidden);
    this.h = [...Array(c.layers).keys()].map((i) => new DecoderLayer(c, i));
    this.ln_f = new LayerNorm(c.hidden, c.eps);
  }
  forward(ids: Tensor): Tensor {
    let h = this.word_embeddings.forward(ids);
    let cos: Tensor | undefined, sin: Tensor | undefined;
    if (!this.c.alibi) { // rotary, as in Llama: angles position · θ_i in f32, one per head-dim pair
      const angles = positionIds(ids.size(1)).unsqueeze(-1).mul(constant(this.c.invFreq, [1, 1, this.c.headDim / 2]));
      const freqs = concat([angles, angles], -1).unsqueeze(1);
      [cos, sin] = [freqs.cos().to(h.dtype), freqs.sin().to(h.dtype)];
    }
    for (const layer of this.h) h = layer.forward(h, cos, sin);
    return this.ln_f.forward(h);
  }
}

class FalconForCausalLM extends Module {
  transformer: FalconModel; lm_head: Linear;
  constructor(c: FalconConfig) {
    super();
    this.transformer = new FalconModel(c);
    this.lm_head = new Linear(c.hidden, c.vocab, { bias: false });
    if (c.tied) this.lm_head.weight = this.transformer.word_embeddings.weight;
  }
  forward({ input_ids }: Record<string, Tensor>): Record<string, Tensor> {
    return { logits: this.lm_head.forward(this.transformer.forward(input_ids)) };
  }
}

export default defineModel<FalconConfig>({
  family: "falcon",
  modelTypes: ["falcon"],
  fromHF(json, source) {
    const c = new HFConfig(json, source);
    c.oneOf("activation", ["gelu"], "gelu");
    const hidden = c.int("hidden_size", c.has("n_embed") ? c.int("n_embed") : undefined);
    const heads = c.int("num_attention_heads", c.has("n_head") ? c.int("n_head") : undefined);
    const newArch = c.bool("new_decoder_architecture", false), parallel = c.bool("parallel_attn", true);
    const nKv = c.int("num_kv_heads", c.has("n_head_kv") ? c.int("n_head_kv") : heads);
    const kvHeads = newArch ? nKv : c.bool("multi_query", true) ? 1 : heads;
    const headDim = hidden / heads;
    const norms = c.has("num_ln_in_parallel_attn") ? c.int("num_ln_in_parallel_attn") : newArch ? 2 : 1;
    const bad = (msg: string) => new KilnError("E_CONFIG", msg, { where: c.source });
    if (!Number.isInteger(headDim) || headDim % 2) throw bad(`'hidden_size' (${hidden}) must be 'num_attention_heads' (${heads}) times an even head_dim`);
    if (heads % kvHeads) throw bad(`'num_attention_heads' (${heads}) must be a multiple of 'num_kv_heads' (${kvHeads})`);
    if (newArch && !parallel) throw bad("'new_decoder_architecture' with 'parallel_attn' false is not supported (Hugging Face's Falcon has no such block)");
    if (norms !== 1 && norms !== 2) throw bad(`'num_ln_in_parallel_attn' is ${norms}, which Kiln does not support (supported: 1, 2)`);
    if (!newArch && parallel && norms === 2) throw bad("'num_ln_in_parallel_attn' 2 needs 'new_decoder_architecture' (Hugging Face's Falcon reads ln_attn/ln_mlp only there)");
    const alibi = c.bool("alibi", false);
    return {
      vocab: c.int("vocab_size"), hidden, ffn: c.int("ffn_hidden_size", 4 * hidden), layers: c.int("num_hidden_layers", c.has("n_layer") ? c.int("n_layer") : undefined),
      heads, kvHeads, headDim, eps: c.num("layer_norm_epsilon", 1e-5),
      bias: c.bool("bias", false), tied: c.bool("tie_word_embeddings", true), alibi, parallel, parallelNorms: norms,
      invFreq: alibi ? [] : ropeInvFreq(c, headDim),
    };
  },
  inputs: () => ({ input_ids: { dtype: "i64", shape: ["B", "S"] } }),
  create: (c) => new FalconForCausalLM(c),
});
