// BERT (Devlin et al., 2019), the encoder, in the eager form of Hugging Face's BertModel: word +
// token-type + absolute position embeddings and a LayerNorm; post-LN blocks of bidirectional
// multi-head attention (only padded keys are masked: no causal mask) and an erf-GELU MLP; the
// pooler, tanh(dense(·)) of the first ([CLS]) token. Returns last_hidden_state and pooler_output.
// An encoder (`kind: "encoder"`): traced without a KV cache, run by Model.encode(); a padded batch
// comes from tracing with `attentionMask: true` (the input attention_mask [B, S]).

import {
  arange, defineModel, Embedding, gelu, geluTanh, HFConfig, LayerNorm, Linear, Module, paddingBias, relu,
} from "../compiler/dsl/index.js";
import type { Tensor } from "../compiler/dsl/index.js";
import { KilnError } from "../compiler/ir/errors.js";

export interface BertConfig {
  vocab: number; hidden: number; intermediate: number; layers: number; heads: number; headDim: number;
  maxPositions: number; typeVocab: number; eps: number; act: "gelu" | "gelu_new" | "relu";
  /** tensor names start with "bert." (checkpoints of BertFor… heads) rather than at the encoder (BertModel) */
  prefixed: boolean;
}

class Embeddings extends Module {
  word_embeddings: Embedding; position_embeddings: Embedding; token_type_embeddings: Embedding; LayerNorm: LayerNorm;
  constructor(c: BertConfig) {
    super();
    this.word_embeddings = new Embedding(c.vocab, c.hidden);
    this.position_embeddings = new Embedding(c.maxPositions, c.hidden);
    this.token_type_embeddings = new Embedding(c.typeVocab, c.hidden);
    this.LayerNorm = new LayerNorm(c.hidden, c.eps);
  }
  forward(ids: Tensor, types: Tensor): Tensor {
    const S = ids.size(1);
    const h = this.word_embeddings.forward(ids).add(this.token_type_embeddings.forward(types));
    return this.LayerNorm.forward(h.add(this.position_embeddings.forward(arange(0, S).reshape(1, S)))); // positions 0..S-1, padding or not
  }
}

class SelfAttention extends Module {
  query: Linear; key: Linear; value: Linear;
  constructor(readonly c: BertConfig) {
    super();
    [this.query, this.key, this.value] = [0, 1, 2].map(() => new Linear(c.hidden, c.hidden));
  }
  forward(x: Tensor): Tensor {
    const { heads, headDim } = this.c;
    const [B, S] = x.shape;
    const split = (t: Tensor) => t.reshape(B, S, heads, headDim).transpose(1, 2);
    const [q, k, v] = [split(this.query.forward(x)), split(this.key.forward(x)), split(this.value.forward(x))];
    let scores = q.matmul(k.transpose(-2, -1)).mul(headDim ** -0.5);
    const bias = paddingBias(S, q.dtype); // [B, 1, 1, S]: padded keys only
    if (bias) scores = scores.add(bias);
    const probs = scores.float().softmax(-1).to(q.dtype);
    return probs.matmul(v).transpose(1, 2).reshape(B, S, heads * headDim);
  }
}

/** dense, then LayerNorm(· + the block's input): BertSelfOutput and BertOutput */
class Output extends Module {
  dense: Linear; LayerNorm: LayerNorm;
  constructor(from: number, c: BertConfig) {
    super();
    this.dense = new Linear(from, c.hidden);
    this.LayerNorm = new LayerNorm(c.hidden, c.eps);
  }
  forward(x: Tensor, input: Tensor): Tensor {
    return this.LayerNorm.forward(this.dense.forward(x).add(input));
  }
}

class Attention extends Module {
  self: SelfAttention; output: Output;
  constructor(c: BertConfig) {
    super();
    this.self = new SelfAttention(c);
    this.output = new Output(c.hidden, c);
  }
}

/** dense, then an activation: BertIntermediate (the MLP's first half) and BertPooler (tanh) */
class DenseAct extends Module {
  dense: Linear;
  constructor(from: number, to: number, readonly act: (x: Tensor) => Tensor) {
    super();
    this.dense = new Linear(from, to);
  }
  forward(x: Tensor): Tensor {
    return this.act(this.dense.forward(x));
  }
}

class Layer extends Module {
  attention: Attention; intermediate: DenseAct; output: Output;
  constructor(c: BertConfig) {
    super();
    this.attention = new Attention(c);
    this.intermediate = new DenseAct(c.hidden, c.intermediate, { gelu, gelu_new: geluTanh, relu }[c.act]);
    this.output = new Output(c.intermediate, c);
  }
  forward(h: Tensor): Tensor {
    h = this.attention.output.forward(this.attention.self.forward(h), h);
    return this.output.forward(this.intermediate.forward(h), h);
  }
}

class Encoder extends Module {
  layer: Layer[];
  constructor(c: BertConfig) {
    super();
    this.layer = [...Array(c.layers).keys()].map(() => new Layer(c));
  }
}

class BertModel extends Module {
  embeddings: Embeddings; encoder: Encoder; pooler: DenseAct;
  constructor(c: BertConfig) {
    super();
    this.embeddings = new Embeddings(c);
    this.encoder = new Encoder(c);
    this.pooler = new DenseAct(c.hidden, c.hidden, (x) => x.tanh());
  }
  forward({ input_ids, token_type_ids }: Record<string, Tensor>): Record<string, Tensor> {
    let h = this.embeddings.forward(input_ids, token_type_ids);
    for (const layer of this.encoder.layer) h = layer.forward(h);
    const [B, , H] = h.shape;
    return { last_hidden_state: h, pooler_output: this.pooler.forward(h.slice(1, 0, 1).reshape(B, H)) }; // the first ([CLS]) token
  }
}

/** The same encoder under "bert." (BertForMaskedLM, BertForSequenceClassification, … checkpoints; their heads are not read) */
class Prefixed extends Module {
  constructor(readonly bert: BertModel) {
    super();
  }
  forward(inputs: Record<string, Tensor>): Record<string, Tensor> {
    return this.bert.forward(inputs);
  }
}

export default defineModel<BertConfig>({
  family: "bert",
  modelTypes: ["bert"],
  kind: "encoder",
  fromHF(json, source) {
    const c = new HFConfig(json, source);
    const bad = (msg: string) => new KilnError("E_CONFIG", msg, { where: c.source });
    const hidden = c.int("hidden_size"), heads = c.int("num_attention_heads");
    if (hidden % heads) throw bad(`'hidden_size' (${hidden}) must be a multiple of 'num_attention_heads' (${heads})`);
    c.oneOf("position_embedding_type", ["absolute"], "absolute");
    if (c.bool("is_decoder", false)) throw bad("'is_decoder' true is not supported (Kiln's BERT is the encoder)");
    if (c.bool("add_cross_attention", false)) throw bad("'add_cross_attention' true is not supported (Kiln's BERT is the encoder)");
    const arch = Array.isArray(json.architectures) ? String(json.architectures[0]) : "BertModel";
    return {
      vocab: c.int("vocab_size"), hidden, intermediate: c.int("intermediate_size"), layers: c.int("num_hidden_layers"),
      heads, headDim: hidden / heads, maxPositions: c.int("max_position_embeddings"), typeVocab: c.int("type_vocab_size", 2),
      eps: c.num("layer_norm_eps", 1e-12), act: c.oneOf("hidden_act", ["gelu", "gelu_new", "relu"], "gelu"),
      prefixed: arch !== "BertModel",
    };
  },
  inputs: () => ({ input_ids: { dtype: "i64", shape: ["B", "S"] }, token_type_ids: { dtype: "i64", shape: ["B", "S"] } }),
  create: (c) => (c.prefixed ? new Prefixed(new BertModel(c)) : new BertModel(c)),
});
