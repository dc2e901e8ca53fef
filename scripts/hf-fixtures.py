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

Usage: python3 scripts/hf-fixtures.py [--out test/fixtures] [--only NAME]
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
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    save_model(model, path)

    # Reference numbers come from the model as a consumer of config.json would build it.
    try:
        loaded = LlamaForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        loaded = LlamaForCausalLM.from_pretrained(path, attn_implementation="eager", torch_dtype=torch.float32)
    loaded = loaded.to(torch.float32).eval()
    set_eager(loaded)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs), f"{name}: reloaded keys differ: {set(ours) ^ set(theirs)}"
    for n, p in ours.items():
        assert torch.equal(p, theirs[n]), f"{name}: reloaded {n} differs"

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="test/fixtures", help="output directory (default test/fixtures)")
    ap.add_argument("--only", default=None, help="generate only the fixture with this name")
    args = ap.parse_args()

    torch.set_num_threads(1)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")

    chosen = [f for f in FIXTURES if args.only in (None, f[0])]
    if not chosen:
        sys.exit(f"no fixture named {args.only!r}; have {[f[0] for f in FIXTURES]}")
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

    order = [f[0] for f in FIXTURES]
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


if __name__ == "__main__":
    main()
