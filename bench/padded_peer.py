#!/usr/bin/env python3
"""Peer side of `npm run bench:padded` (GPU machine): Hugging Face transformers on a padded batch.

The Llama-2-7B-shaped random bf16 checkpoint of bench/decode_peer.py (made there if missing: run it
first), 8 sequences of lengths 256, 512, ..., 2048 left-padded to 2048 with an attention_mask, one
forward pass to the last token's logits, with sdpa attention and with eager attention. Writes the
times (median of --runs after a warm-up), the prompts and each sequence's last-token argmax to a
JSON file that bench/padded.ts reads.
"""
import argparse, json, statistics, time

import torch
import transformers
from transformers import LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--ckpt", default="/tmp/kiln-bench/llama2-7b-random")
p.add_argument("--out", default="/tmp/kiln-bench/padded-peer.json")
p.add_argument("--runs", type=int, default=5)
a = p.parse_args()

lengths = [256 * (i + 1) for i in range(8)]
S = max(lengths)
g = torch.Generator().manual_seed(2)
prompts = [torch.randint(0, 32000, (n,), generator=g) for n in lengths]
ids = torch.zeros(len(lengths), S, dtype=torch.long)
mask = torch.zeros(len(lengths), S, dtype=torch.long)
for b, pr in enumerate(prompts):
    ids[b, S - len(pr):] = pr
    mask[b, S - len(pr):] = 1
ids, mask = ids.cuda(), mask.cuda()

result = {"device": torch.cuda.get_device_name(0), "lengths": lengths, "prompts": [pr.tolist() for pr in prompts],
          "peer": f"transformers {transformers.__version__}, torch {torch.__version__}"}
for impl in ["sdpa", "eager"]:
    model = LlamaForCausalLM.from_pretrained(a.ckpt, dtype=torch.bfloat16, attn_implementation=impl).cuda().eval()
    times = []
    with torch.no_grad():
        for r in range(a.runs + 1):
            torch.cuda.synchronize(); t0 = time.perf_counter()
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
            torch.cuda.synchronize(); t = time.perf_counter() - t0
            if r > 0: times.append(t)
    result[impl] = {"forward_s": statistics.median(times), "argmax": out.logits[:, -1].argmax(-1).tolist(),
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(f"transformers {impl}: {result[impl]['forward_s'] * 1000:.1f} ms", flush=True)
    del model, out
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
json.dump(result, open(a.out, "w"))
