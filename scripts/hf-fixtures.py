#!/usr/bin/env python3
"""Generate tiny Hugging Face reference fixtures for Kiln's model tests.

For each fixture this builds a small random Llama-family model with
``transformers.LlamaConfig`` + ``LlamaForCausalLM``, re-initializes its weights
deterministically so logits are far from uniform (Linear N(0, 1/fan_in), biases
N(0, 0.02^2), embeddings N(0, 1) or N(0, 0.15^2) when tied, RMSNorm 1 + 0.2 N(0, 1)),
and writes into
``<out>/<name>/``:

  config.json          the config exactly as ``save_pretrained`` writes it (the truth)
  model.safetensors    float32 weights as ``save_pretrained`` writes them
  reference.safetensors
      input_ids   I64 [2, 7]    seeded token ids in [0, vocab)
      logits      F32 [2, 7, V] ``model(input_ids).logits`` (eager attention, float32, CPU)
      greedy_ids  I64 [1, 15]   ``model.generate(input_ids[0:1], max_new_tokens=8, do_sample=False)``

plus ``<out>/manifest.json`` listing the fixtures and the library versions.

The reference numbers are computed by a model reloaded from the saved directory
(``from_pretrained``), so config.json round-trips; they are cross-checked against the
in-memory model and the greedy ids against a cache-free argmax loop.

Everything runs on the CPU in float32 with fixed seeds (one ``torch.Generator`` per
fixture), so reruns give the same files up to float rounding of the libraries. It is run
on the GPU machine (through the device tool) only because that is where torch and
transformers are installed; no GPU is needed. The fixtures are committed; CI never runs
this script.

The other families (Falcon, OPT, BLOOM, a BERT encoder; FAMILY_FIXTURES) are built the
same way from their own config and model classes (eager attention, but for falcon-alibi: see
there), with LayerNorm weights 1 + 0.2 N(0, 1) and biases 0.1 N(0, 1). The decoders'
reference.safetensors holds input_ids, logits and greedy_ids as above; the encoder's holds

      input_ids         I64 [2, 7]
      token_type_ids    I64 [2, 7]    0 then 1 (two segments)
      attention_mask    I64 [2, 7]    row 0 all ones, row 1 right-padded after 4 tokens
      last_hidden_state F32 [2, 7, H] ``BertModel(...).last_hidden_state`` (padded rows included)
      pooler_output     F32 [2, H]    tanh(dense(hidden state of the first token))

Usage: python3 scripts/hf-fixtures.py [--out test/fixtures] [--only NAME[,NAME...]]
"""

import argparse
import datetime
import inspect
import json
import math
import os
import shutil
import struct
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 256
BATCH, SEQ = 2, 7
NEW_TOKENS = 8

# (name, seed, description, config fields, rope parameters, embedding std)
# The tied fixture uses smaller embeddings: with N(0, 1) embeddings tied to the lm_head the
# residual stream is dominated by the input token's own embedding, logits are ~7 std and
# greedy decoding just repeats one token, which makes a weak test (0.15 keeps logits ~1 std
# and the greedy continuation mostly varied).
FIXTURES = [
    (
        "llama-mha",
        101,
        "Llama, multi-head attention: 4 heads, 4 kv heads, head_dim 16, untied, rope_theta 1e4",
        dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
             head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False),
        {"rope_type": "default", "rope_theta": 10000.0},
        1.0,
    ),
    (
        "llama-gqa",
        202,
        "Llama, grouped-query attention: 8 heads, 2 kv heads, head_dim 8, untied, rms_norm_eps 1e-6",
        dict(hidden_size=64, intermediate_size=128, num_attention_heads=8, num_key_value_heads=2,
             head_dim=8, rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False),
        {"rope_type": "default", "rope_theta": 10000.0},
        1.0,
    ),
    (
        "llama-mqa-tied",
        303,
        "Llama, multi-query attention: 2 heads, 1 kv head, head_dim 32 with hidden 48 "
        "(heads*head_dim != hidden), tied embeddings (init N(0, 0.15^2)), attention_bias on q/k/v/o, "
        "intermediate 176",
        dict(hidden_size=48, intermediate_size=176, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=True),
        {"rope_type": "default", "rope_theta": 10000.0},
        0.15,
    ),
    (
        "llama3-rope",
        404,
        "Llama 3 rope scaling: 4 heads, 2 kv heads, head_dim 16, rope_theta 5e5, llama3 "
        "factor 8, low 1, high 4, original_max_position_embeddings 64",
        dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False),
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        1.0,
    ),
]


def log(*args):
    print(*args, flush=True)


def config_fields():
    names = set(inspect.signature(LlamaConfig.__init__).parameters)
    for klass in LlamaConfig.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
    return names


def make_config(fields, rope):
    kw = dict(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        max_position_embeddings=128,
        hidden_act="silu",
        # No eos: greedy generation must run all NEW_TOKENS steps.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **fields,
    )
    if "rope_parameters" in config_fields():
        kw["rope_parameters"] = dict(rope)
    else:  # transformers 4.x
        kw["rope_theta"] = rope["rope_theta"]
        if rope["rope_type"] != "default":
            kw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config = LlamaConfig(**kw)
    try:
        config._attn_implementation = "eager"
    except Exception as e:  # set on the model instead (set_eager)
        log(f"note: config._attn_implementation not settable: {e}")
    return config


def set_eager(model):
    if getattr(model.config, "_attn_implementation", None) != "eager":
        model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager", model.config._attn_implementation


@torch.no_grad()
def reinit(model, gen, embed_std):
    """Deterministic, non-degenerate weights (HF's std-0.02 init gives near-uniform logits).

    Linear weights N(0, 1/fan_in), biases N(0, 0.02^2), embeddings N(0, embed_std^2),
    RMSNorm weights 1 + 0.2 N(0, 1).
    """
    done = set()

    def fill(param, values):
        if id(param) in done:  # tied lm_head: keep the embedding's N(0, 1)
            return
        param.copy_(values.to(param.dtype).reshape(param.shape))
        done.add(id(param))

    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Embedding):
            fill(module.weight, embed_std * torch.randn(module.weight.shape, generator=gen))
        elif isinstance(module, torch.nn.Linear):
            fan_in = module.weight.shape[1]
            fill(module.weight, torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
            if module.bias is not None:
                fill(module.bias, 0.02 * torch.randn(module.bias.shape, generator=gen))
        elif kind.endswith("RMSNorm"):
            fill(module.weight, 1.0 + 0.2 * torch.randn(module.weight.shape, generator=gen))
        elif isinstance(module, torch.nn.LayerNorm):
            fill(module.weight, 1.0 + 0.2 * torch.randn(module.weight.shape, generator=gen))
            if module.bias is not None:
                fill(module.bias, 0.1 * torch.randn(module.bias.shape, generator=gen))
    missing = [n for n, p in model.named_parameters() if id(p) not in done]
    if missing:
        raise RuntimeError(f"parameters not re-initialized: {missing}")


def save_model(model, path):
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(path, **kwargs)
    gen_cfg = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)


def load_pretrained(model_cls, path, impl):
    try:
        loaded = model_cls.from_pretrained(path, attn_implementation=impl, dtype=torch.float32)
    except TypeError:
        loaded = model_cls.from_pretrained(path, attn_implementation=impl, torch_dtype=torch.float32)
    loaded = loaded.to(torch.float32).eval()
    if getattr(loaded.config, "_attn_implementation", None) != impl:
        loaded.set_attn_implementation(impl)
    assert loaded.config._attn_implementation == impl, loaded.config._attn_implementation
    return loaded


def save_and_reload(model, path, load):
    """Writes `model` to a fresh `path`, loads it back with `load()`, checks every tensor round-tripped."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    save_model(model, path)
    loaded = load()
    ours, theirs = model.state_dict(), loaded.state_dict()
    name = os.path.basename(path)
    assert set(ours) == set(theirs), f"{name}: reloaded keys differ: {set(ours) ^ set(theirs)}"
    for n, p in ours.items():
        assert torch.equal(p, theirs[n]), f"{name}: reloaded {n} differs"
    return loaded


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


@torch.no_grad()
def greedy_generate(model, prompt):
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        num_beams=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out


@torch.no_grad()
def greedy_loop(model, prompt):
    ids = prompt
    for _ in range(NEW_TOKENS):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@torch.no_grad()
def build_fixture(out_dir, name, seed, fields, rope, embed_std):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = make_config(fields, rope)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    set_eager(model)
    reinit(model, gen, embed_std)
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen, dtype=torch.int64)

    path = os.path.join(out_dir, name)

    # Reference numbers come from the model as a consumer of config.json would build it.
    loaded = save_and_reload(model, path, lambda: load_pretrained(LlamaForCausalLM, path, "eager"))

    logits = loaded(input_ids).logits.float().contiguous()
    logits_mem = model(input_ids).logits.float()
    diff = (logits - logits_mem).abs().max().item()
    assert diff < 1e-5, f"{name}: reloaded model disagrees by {diff}"
    assert logits.shape == (BATCH, SEQ, VOCAB), logits.shape

    prompt = input_ids[0:1].clone()
    greedy = greedy_generate(loaded, prompt).to(torch.int64).contiguous()
    assert greedy.shape == (1, SEQ + NEW_TOKENS), greedy.shape
    assert torch.equal(greedy[:, :SEQ], prompt)
    loop = greedy_loop(loaded, prompt)
    if not torch.equal(loop, greedy):
        log(f"WARNING {name}: generate() {greedy.tolist()} != cache-free loop {loop.tolist()}")
    # The first generated token must be the argmax of the batch logits at the last position.
    assert greedy[0, SEQ].item() == logits[0, -1].argmax().item()

    save_file(
        {"input_ids": input_ids.contiguous(), "logits": logits, "greedy_ids": greedy},
        os.path.join(path, "reference.safetensors"),
        metadata={"generated_by": "scripts/hf-fixtures.py", "seed": str(seed)},
    )

    # Report.
    nparams = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    probs = torch.softmax(logits, -1)
    log(f"== {name}: {nparams} params, logits std {logits.std().item():.3f}, "
        f"mean max prob {probs.max(-1).values.mean().item():.3f}, generate==loop {torch.equal(loop, greedy)}")
    log(f"   input_ids {input_ids.tolist()}")
    log(f"   greedy_ids {greedy.tolist()}")
    header = safetensors_header(os.path.join(path, "model.safetensors"))
    log("   model.safetensors: " + ", ".join(
        f"{k}{v['shape']}{'' if v['dtype'] == 'F32' else ' ' + v['dtype']}"
        for k, v in sorted(header.items()) if k != "__metadata__"))
    log("   files: " + ", ".join(f"{f} {os.path.getsize(os.path.join(path, f))}" for f in sorted(os.listdir(path))))
    with open(os.path.join(path, "config.json")) as f:
        log("   config.json: " + json.dumps(json.load(f), sort_keys=True))
    return nparams

# ---------------------------------------------------------------- other families
# Each: name, seed, family, description, the config class and its fields, the model class,
# the embedding std (0.15 where the lm_head is tied to the embeddings: see FIXTURES above).
# Every config sets no bos/eos/pad (greedy generation must run all NEW_TOKENS steps) and 2 layers.
OPT_FIELDS = dict(hidden_size=64, num_attention_heads=4, ffn_dim=128, activation_function="relu",
                  enable_bias=True, max_position_embeddings=64, tie_word_embeddings=True)
FAMILY_FIXTURES = [
    dict(
        name="falcon-mqa", seed=505, family="falcon", embed_std=0.15,
        description="Falcon-7B form: multi-query attention (4 heads, 1 kv head, head_dim 16), parallel "
                    "attention + MLP with one input_layernorm, rotary, no biases, tied embeddings",
        config="FalconConfig", model="FalconForCausalLM",
        fields=dict(hidden_size=64, num_attention_heads=4, multi_query=True, parallel_attn=True,
                    new_decoder_architecture=False, alibi=False, bias=False, ffn_hidden_size=128,
                    tie_word_embeddings=True),
    ),
    dict(
        name="falcon-new-arch", seed=606, family="falcon", embed_std=1.0,
        description="Falcon-40B/180B form: new_decoder_architecture, 8 heads in 2 kv groups (head_dim 8), "
                    "ln_attn and ln_mlp, parallel attention + MLP, rotary, untied",
        config="FalconConfig", model="FalconForCausalLM",
        fields=dict(hidden_size=64, num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
                    multi_query=False, parallel_attn=True, alibi=False, bias=False, ffn_hidden_size=96,
                    tie_word_embeddings=False),
    ),
    dict(
        name="falcon-alibi", seed=707, family="falcon", embed_std=0.15,
        description="Falcon-RW form: ALiBi with 6 heads (not a power of 2: the extra slopes), full "
                    "multi-head fused qkv as [heads, 3, head_dim], sequential attention then MLP with "
                    "input_layernorm and post_attention_layernorm, biases, tied embeddings",
        config="FalconConfig", model="FalconForCausalLM",
        fields=dict(hidden_size=48, num_attention_heads=6, multi_query=False, parallel_attn=False,
                    new_decoder_architecture=False, alibi=True, bias=True, ffn_hidden_size=96,
                    tie_word_embeddings=True),
        # transformers 5.17's eager Falcon adds the ALiBi bias twice (once to the scores, once
        # folded into the causal mask: 2·alibi/sqrt(D)); its sdpa path, like the original Falcon-RW
        # code, adds it once. The reference is the sdpa path (math backend on the CPU, float32).
        attn="sdpa",
    ),
    dict(
        name="opt", seed=808, family="opt", embed_std=0.15,
        description="OPT-125m form: pre-LN (do_layer_norm_before), learned positions (offset 2), ReLU, "
                    "4 heads, biases, final_layer_norm, tied embeddings",
        config="OPTConfig", model="OPTForCausalLM",
        fields=dict(OPT_FIELDS, word_embed_proj_dim=64, do_layer_norm_before=True),
    ),
    dict(
        name="opt-350m", seed=909, family="opt", embed_std=0.15,
        description="OPT-350m form: post-LN (do_layer_norm_before false, no final_layer_norm), "
                    "word_embed_proj_dim 32 with project_in/project_out, ReLU, 4 heads, tied embeddings",
        config="OPTConfig", model="OPTForCausalLM",
        fields=dict(OPT_FIELDS, word_embed_proj_dim=32, do_layer_norm_before=False),
    ),
    dict(
        name="bloom", seed=1010, family="bloom", embed_std=0.15,
        description="BLOOM: ALiBi (8 heads, head_dim 8), word_embeddings_layernorm, fused query_key_value "
                    "as [heads, 3, head_dim], tanh GELU, tied embeddings",
        config="BloomConfig", model="BloomForCausalLM",
        fields=dict(hidden_size=64, n_head=8, apply_residual_connection_post_layernorm=False,
                    tie_word_embeddings=True),
    ),
    dict(
        name="bert", seed=1111, family="bert", embed_std=1.0,
        description="BERT encoder (BertModel): absolute positions, token types, post-LN, erf GELU, "
                    "padding mask (no causal mask), pooler; a padded batch",
        config="BertConfig", model="BertModel",
        fields=dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                    type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12),
    ),
]


def family_classes(fx):
    return getattr(transformers, fx["config"]), getattr(transformers, fx["model"])


def make_family_config(fx):
    config_cls, _ = family_classes(fx)
    kw = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None, **fx["fields"])
    kw["n_layer" if fx["family"] == "bloom" else "num_hidden_layers"] = 2
    config = config_cls(**kw)
    try:
        config._attn_implementation = fx.get("attn", "eager")
    except Exception as e:
        log(f"note: config._attn_implementation not settable: {e}")
    return config


def set_attn(model, impl):
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.set_attn_implementation(impl)
    assert model.config._attn_implementation == impl, model.config._attn_implementation


def load_family(fx, path, impl=None):
    return load_pretrained(family_classes(fx)[1], path, impl or fx.get("attn", "eager"))


@torch.no_grad()
def build_family_fixture(out_dir, fx):
    name, seed = fx["name"], fx["seed"]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = make_family_config(fx)
    _, model_cls = family_classes(fx)
    model = model_cls(config).to(torch.float32).eval()
    set_attn(model, fx.get("attn", "eager"))
    reinit(model, gen, fx["embed_std"])

    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen, dtype=torch.int64)
    path = os.path.join(out_dir, name)
    loaded = save_and_reload(model, path, lambda: load_family(fx, path))

    if fx["family"] == "bert":
        token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0]], dtype=torch.int64)
        attention_mask = torch.tensor([[1] * SEQ, [1] * 4 + [0] * (SEQ - 4)], dtype=torch.int64)
        out = loaded(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        mem = model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        hidden, pooled = out.last_hidden_state.float().contiguous(), out.pooler_output.float().contiguous()
        diff = max((hidden - mem.last_hidden_state).abs().max().item(), (pooled - mem.pooler_output).abs().max().item())
        assert diff < 1e-5, f"{name}: reloaded model disagrees by {diff}"
        # the padded row's real tokens equal that row alone (the mask hides the padding)
        alone = loaded(input_ids=input_ids[1:, :4], token_type_ids=token_type_ids[1:, :4]).last_hidden_state
        pad_diff = (alone - hidden[1:, :4]).abs().max().item()
        assert pad_diff < 1e-4, f"{name}: padding leaks into real tokens by {pad_diff}"
        tensors = {"input_ids": input_ids.contiguous(), "token_type_ids": token_type_ids,
                   "attention_mask": attention_mask, "last_hidden_state": hidden, "pooler_output": pooled}
        log(f"== {name}: hidden std {hidden.std().item():.3f}, pooled std {pooled.std().item():.3f}, "
            f"padded row alone vs batched {pad_diff:.2e}")
    else:
        logits = loaded(input_ids).logits.float().contiguous()
        diff = (logits - model(input_ids).logits.float()).abs().max().item()
        assert diff < 1e-5, f"{name}: reloaded model disagrees by {diff}"
        assert logits.shape == (BATCH, SEQ, VOCAB), logits.shape
        prompt = input_ids[0:1].clone()
        greedy = greedy_generate(loaded, prompt).to(torch.int64).contiguous()
        assert greedy.shape == (1, SEQ + NEW_TOKENS), greedy.shape
        loop = greedy_loop(loaded, prompt)
        if not torch.equal(loop, greedy):
            log(f"WARNING {name}: generate() {greedy.tolist()} != cache-free loop {loop.tolist()}")
        assert greedy[0, SEQ].item() == logits[0, -1].argmax().item()
        tensors = {"input_ids": input_ids.contiguous(), "logits": logits, "greedy_ids": greedy}
        if fx.get("attn", "eager") != "eager":
            eager = load_family(fx, path, "eager")(input_ids).logits.float()
            log(f"   note {name}: reference from {fx['attn']}; the eager path differs by "
                f"{(eager - logits).abs().max().item():.3e}")
        probs = torch.softmax(logits, -1)
        log(f"== {name}: logits std {logits.std().item():.3f}, mean max prob "
            f"{probs.max(-1).values.mean().item():.3f}, generate==loop {torch.equal(loop, greedy)}")
        log(f"   greedy_ids {greedy.tolist()}")
    save_file(tensors, os.path.join(path, "reference.safetensors"),
              metadata={"generated_by": "scripts/hf-fixtures.py", "seed": str(seed)})

    nparams = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    header = safetensors_header(os.path.join(path, "model.safetensors"))
    log("   model.safetensors: " + ", ".join(
        f"{k}{v['shape']}{'' if v['dtype'] == 'F32' else ' ' + v['dtype']}"
        for k, v in sorted(header.items()) if k != "__metadata__"))
    with open(os.path.join(path, "config.json")) as f:
        log("   config.json: " + json.dumps(json.load(f), sort_keys=True))
    return nparams


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="test/fixtures", help="output directory (default test/fixtures)")
    ap.add_argument("--only", default=None, help="generate only the fixtures with these names (comma-separated)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")

    only = None if args.only is None else set(args.only.split(","))
    known = [f[0] for f in FIXTURES] + [f["name"] for f in FAMILY_FIXTURES]
    if only is not None and only - set(known):
        sys.exit(f"no fixture named {sorted(only - set(known))}; have {known}")
    chosen = [f for f in FIXTURES if only is None or f[0] in only]
    chosen_families = [f for f in FAMILY_FIXTURES if only is None or f["name"] in only]
    os.makedirs(args.out, exist_ok=True)

    manifest_path = os.path.join(args.out, "manifest.json")
    entries = {}
    if args.only and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            entries = {e["name"]: e for e in json.load(f).get("fixtures", [])}
    for name, seed, description, fields, rope, embed_std in chosen:
        nparams = build_fixture(args.out, name, seed, fields, rope, embed_std)
        entries[name] = {"name": name, "family": "llama", "dir": name, "description": description,
                         "seed": seed, "params": nparams}
    failed = []
    for fx in chosen_families:
        try:
            nparams = build_family_fixture(args.out, fx)
        except Exception:  # report it, build the others, fail at the end
            import traceback
            traceback.print_exc()
            failed.append(fx["name"])
            continue
        entries[fx["name"]] = {"name": fx["name"], "family": fx["family"], "dir": fx["name"],
                               "description": fx["description"], "seed": fx["seed"], "params": nparams}

    order = known
    manifest = {
        "generated_by": "scripts/hf-fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "fixtures": sorted(entries.values(), key=lambda e: order.index(e["name"]) if e["name"] in order else 99),
    }
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    log(f"wrote {manifest_path}")
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
