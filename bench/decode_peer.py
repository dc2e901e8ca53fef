#!/usr/bin/env python3
"""Peer side of `npm run bench:decode` (run on the GPU machine, where torch and transformers are).

Makes a Llama-2-7B-shaped checkpoint with random bf16 weights (sharded safetensors, as Hugging
Face saves it) if it is not there yet, then times Hugging Face transformers' greedy decoding
(sdpa attention, batch 1, a 128-token prompt, 128 new tokens) and writes what it measured, the
prompt ids and its tokens to a JSON file that bench/decode.ts reads and compares against.
"""
import argparse, json, os, statistics, time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--ckpt", default="/tmp/kiln-bench/llama2-7b-random")
p.add_argument("--out", default="/tmp/kiln-bench/peer.json")
p.add_argument("--prompt-len", type=int, default=128)
p.add_argument("--new", type=int, default=128)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--make-only", action="store_true", help="only make the checkpoint (bench:padded, bench:quant)")
a = p.parse_args()

cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
if not os.path.exists(os.path.join(a.ckpt, "config.json")):
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # random, never zeros: linears N(0, 1/fan_in), embeddings N(0, 1), norms 1 + 0.1 N(0, 1)
        for name, t in model.named_parameters():
            if "norm" in name:
                t.copy_(1 + 0.1 * torch.randn_like(t))
            elif "embed" in name:
                t.normal_(0, 1)
            else:
                t.normal_(0, t.shape[1] ** -0.5)
    model.save_pretrained(a.ckpt, safe_serialization=True, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    print(f"made {a.ckpt} in {time.time() - t0:.1f} s", flush=True)
if a.make_only:
    raise SystemExit(0)

model = LlamaForCausalLM.from_pretrained(a.ckpt, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
g = torch.Generator().manual_seed(1)
prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), generator=g)
ids = prompt.cuda()

def timed(fn):
    torch.cuda.synchronize(); t0 = time.perf_counter(); r = fn(); torch.cuda.synchronize(); return time.perf_counter() - t0, r

with torch.no_grad():
    gen = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    gen(8)  # warm-up
    prefill = statistics.median(timed(lambda: model(ids))[0] for _ in range(a.runs))
    runs = [timed(lambda: gen(a.new)) for _ in range(a.runs)]
    total = statistics.median(t for t, _ in runs)
    tokens = runs[0][1][0, a.prompt_len:].tolist()

res = {
    "peer": f"transformers {transformers.__version__} (sdpa), torch {torch.__version__}",
    "device": torch.cuda.get_device_name(),
    "prompt_len": a.prompt_len, "new_tokens": a.new, "runs": a.runs,
    "prefill_s": prefill, "total_s": total,
    "tokens_per_s": a.new / total,
    "decode_tokens_per_s": (a.new - 1) / (total - prefill),
    "prompt": prompt[0].tolist(), "tokens": tokens,
}
os.makedirs(os.path.dirname(a.out), exist_ok=True)
json.dump(res, open(a.out, "w"))
print(f"transformers: {res['tokens_per_s']:.1f} tokens/s ({a.new} new after {a.prompt_len}), prefill {prefill*1e3:.1f} ms", flush=True)
