#!/usr/bin/env python3
"""Attention benchmark of the cuda target's tiled FlashAttention-2 kernel (`npm run bench:attention`).

Builds bench/attention.cu (a C ABI over codegen-templates/cuda/flash_attn2.cuh) into a shared
library with nvcc, loads it with ctypes and calls it on torch tensors' device pointers:
  1. correctness against PyTorch SDPA's math backend in f32 on the same bf16 inputs (fresh random
     inputs each case, output poisoned with NaN first): ||out - ref|| / ||ref|| <= 1e-2 over
     S in {1, 7, 127, 1000, 4097} x head dims {64, 80, 96, 128, 256} x causal x GQA 1/4/8/MQA,
     plus f16, Tk != S, a device-memory causal offset, and every alternative hd128 tile config;
     varlen batches (packed sequences with cu_seqlens, against SDPA math on each sequence alone),
     ALiBi (against SDPA math with an explicit f32 bias slope[h] * j) and key masks (against SDPA
     math with a boolean mask; rows with no visible key against the mean of V, as the op defines);
  2. timing, head dim 128, H = 32, (B, S) = (16,512) ... (1,16384), causal and not: TFLOP/s of
     Kiln beside SDPA's flash (FlashAttention-2) and cuDNN backends in the same run (CUDA events,
     warm-up, median), and the extra memory each call allocates beyond its output; and one varlen
     row: 8 sequences of 256, 512, ..., 2048 tokens (9216 in all), H = 32, hd128, causal — Kiln on
     the packed tokens beside SDPA flash (and Kiln) on the batch padded to [8, 2048], TFLOP/s on
     the real work (the causal FLOPs of the 8 sequences).
Writes bench/results/attention-<date>-<commit>.json (and a copy under $OUT when set).
  python3 bench/attention.py               # everything
  python3 bench/attention.py --build-only  # just the .so (bench/tmp/attention-<hash>-<arch>.so)
Env: KILN_COMMIT (the commit to record), KILN_FA_ARCH (sm_90a / sm_80; default from the device),
KILN_FA_VARIANTS=default (time only the default tile config), KILN_FA_ROWS=4x2048,2x4096 (time only
these (B, S) rows; the varlen row always runs).
"""
import ctypes
import datetime
import hashlib
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["bench/attention.cu", "codegen-templates/cuda/flash_attn2.cuh", "codegen-templates/common/kiln_types.h"]


def build(arch):
    h = hashlib.sha256(arch.encode())
    for s in SOURCES:
        with open(os.path.join(ROOT, s), "rb") as f:
            h.update(f.read())
    so = os.path.join(ROOT, "bench", "tmp", f"attention-{h.hexdigest()[:12]}-{arch}.so")
    if os.path.exists(so):
        return so
    os.makedirs(os.path.dirname(so), exist_ok=True)
    compute = arch.replace("sm_", "compute_")
    cmd = ["nvcc", "-O3", "-std=c++17", f"-gencode=arch={compute},code={arch}", "-shared", "-Xcompiler", "-fPIC",
           "-I", os.path.join(ROOT, "codegen-templates"), "-o", so + ".tmp", os.path.join(ROOT, "bench", "attention.cu")]
    print("building:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    os.replace(so + ".tmp", so)
    return so


if "--build-only" in sys.argv:
    print(build(os.environ.get("KILN_FA_ARCH", "sm_90a")))
    sys.exit(0)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

cap = torch.cuda.get_device_capability()
ARCH = os.environ.get("KILN_FA_ARCH", "sm_90a" if cap == (9, 0) else f"sm_{cap[0]}{cap[1]}")
lib = ctypes.CDLL(build(ARCH))
lib.kiln_fa.restype = ctypes.c_int
lib.kiln_fa.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 7 + [
    ctypes.c_double, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
    ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
DT = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
VARIANTS_128 = {0: "128x64 4w", 1: "128x32 4w"}  # BMxBN warps, fa2_launch's hd128 set


def kiln(q, k, v, causal, scale=None, variant=-1, force=1, offset=None, out=None, alibi=None, key_mask=None, cu=None):
    """Returns the output, or None when the kernel declined the case. alibi: f32 [Hq]; key_mask: i64 [B, Tk];
    cu: i32 [N + 1] cu_seqlens (q, k, v packed as [1, H, T, D])."""
    B, Hq, S, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    y = out if out is not None else torch.empty(B, Hq, S, Dv, dtype=q.dtype, device=q.device)
    err = ctypes.create_string_buffer(256)
    ptr = lambda t: t.data_ptr() if t is not None else None
    rc = lib.kiln_fa(DT[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), B, Hq, Hkv, S, Tk, D, Dv,
                     scale if scale is not None else D ** -0.5, int(causal), ptr(offset), ptr(alibi), ptr(key_mask), ptr(cu),
                     cu.numel() if cu is not None else 0, variant, force, torch.cuda.current_stream().cuda_stream, err, 256)
    if rc < 0:
        raise RuntimeError("kiln_fa: " + err.value.decode())
    return y if rc == 1 else None


def reference(q, k, v, causal, scale=None, off=None, alibi=None, key_mask=None, j0=0):
    """SDPA math in f32. alibi: an explicit f32 bias alibi[h] * (j0 + j) (j0: the sequence's first
    packed index under varlen); key_mask: a boolean mask, and rows with no visible key get the mean
    of V over all keys (the op's definition; SDPA would give NaN)."""
    r = q.shape[1] // k.shape[1]
    qf, kf, vf = q.float(), k.float().repeat_interleave(r, 1), v.float().repeat_interleave(r, 1)
    S, Tk = q.shape[2], k.shape[2]
    mask = None
    if causal:
        o = Tk - S if off is None else off
        mask = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(S, device=q.device)[:, None] + o
    if key_mask is not None:
        km = (key_mask != 0)[:, None, None, :]
        mask = km if mask is None else (mask[None, None] & km)
    if alibi is not None:
        j = torch.arange(Tk, device=q.device, dtype=torch.float32) + j0
        bias = (alibi.float()[:, None, None] * j[None, None, :]).expand(q.shape[1], S, Tk)[None]
        if mask is not None:
            bias = torch.where(mask if mask.dim() == 4 else mask[None, None], bias, float("-inf"))
        mask = bias
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale if scale is not None else q.shape[3] ** -0.5)
    if key_mask is not None:
        vis = mask if mask.dtype == torch.bool else mask > float("-inf")
        vis = vis.expand(q.shape[0], q.shape[1], S, Tk)
        empty = ~vis.any(-1)  # [B, H, S]
        if empty.any():
            mean = vf.mean(2, keepdim=True).expand_as(out)
            out = torch.where(empty[..., None], mean, out)
    return out


def rel_err(out, ref):
    if out is None:
        return float("nan")
    o = out.float()
    if not torch.isfinite(o).all():
        return float("inf")
    return ((o - ref).norm() / ref.norm()).item()


def alibi_slopes(H):
    """BLOOM's slopes (Press et al., 2022): 2^(-8 (h + 1) / H) for H a power of two."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=torch.float32, device="cuda")


def key_mask_of(kind, B, Tk):
    """i64 [B, Tk]: 'right' / 'left' padding (batch row b has Tk - 100 b real keys), 'random' (half hidden),
    'empty' (batch row 1 hides every key)."""
    m = torch.ones(B, Tk, dtype=torch.int64, device="cuda")
    for b in range(B):
        n = max(Tk - 100 * b, 1)
        if kind == "right":
            m[b, n:] = 0
        elif kind == "left":
            m[b, :Tk - n] = 0
        elif kind == "random":
            m[b] = (torch.rand(Tk, device="cuda") < 0.5).long()
        elif kind == "empty" and b == 1:
            m[b] = 0
    return m


def case(B, Hq, Hkv, S, Tk, D, causal, dtype=torch.bfloat16, variant=-1, force=1, off=None, alibi=False, mask=None):
    q = torch.randn(B, Hq, S, D, device="cuda", dtype=dtype)
    k = torch.randn(B, Hkv, Tk, D, device="cuda", dtype=dtype)
    v = torch.randn(B, Hkv, Tk, D, device="cuda", dtype=dtype)
    offt = torch.tensor([off], dtype=torch.int64, device="cuda") if off is not None else None
    sl = alibi_slopes(Hq) if alibi else None
    km = key_mask_of(mask, B, Tk) if mask else None
    y = torch.full((B, Hq, S, D), float("nan"), device="cuda", dtype=dtype)
    out = kiln(q, k, v, causal, variant=variant, force=force, offset=offt, out=y, alibi=sl, key_mask=km)
    torch.cuda.synchronize()
    return rel_err(out, reference(q, k, v, causal, off=off, alibi=sl, key_mask=km))


def varlen_case(lens, Hq, Hkv, D, causal, dtype=torch.bfloat16, force=1, alibi=False):
    """Packed sequences [1, H, T, D] with cu_seqlens, against SDPA math on each sequence alone."""
    T = sum(lens)
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device="cuda")
    q = torch.randn(1, Hq, T, D, device="cuda", dtype=dtype)
    k = torch.randn(1, Hkv, T, D, device="cuda", dtype=dtype)
    v = torch.randn(1, Hkv, T, D, device="cuda", dtype=dtype)
    sl = alibi_slopes(Hq) if alibi else None
    y = torch.full((1, Hq, T, D), float("nan"), device="cuda", dtype=dtype)
    out = kiln(q, k, v, causal, force=force, out=y, alibi=sl, cu=cu)
    ref = torch.empty(1, Hq, T, D, device="cuda", dtype=torch.float32)
    for a, b in zip(cu.tolist()[:-1], cu.tolist()[1:]):
        if b > a:
            ref[:, :, a:b] = reference(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], causal, alibi=sl, j0=a)
    torch.cuda.synchronize()
    return rel_err(out, ref)


TOL = 1e-2
results = {"correctness": [], "timing": []}
fails = 0
torch.manual_seed(0)

# ---- 1. correctness grid
GROUPS = [("g1", 16, 16), ("g4", 16, 4), ("g8", 16, 2), ("mqa", 16, 1)]
print("correctness vs SDPA math (f32), bf16, rel err x1e3 (max over the 4 GQA settings; FAIL marks > 1e-2)")
print(f"{'S':>5} {'D':>4} | {'non-causal':>10} {'causal':>8}")
for S in [1, 7, 127, 1000, 4097]:
    for D in [64, 80, 96, 128, 256]:
        cells = []
        for causal in [False, True]:
            worst = 0.0
            for name, hq, hkv in GROUPS:
                e = case(2 if S <= 1000 else 1, hq, hkv, S, S, D, causal)
                ok = e <= TOL
                fails += not ok
                worst = max(worst, e) if e == e else float("nan")
                results["correctness"].append(dict(S=S, Tk=S, D=D, causal=causal, groups=name, dtype="bf16", rel_err=e, ok=ok))
            cells.append(("%.2f" % (worst * 1e3)) + ("" if worst <= TOL else " FAIL"))
        print(f"{S:>5} {D:>4} | {cells[0]:>10} {cells[1]:>8}")

extra = []
for S in [127, 1000, 4097]:  # every hd128 tile configuration
    for var in VARIANTS_128:
        for causal in [False, True]:
            for name, hq, hkv in GROUPS[:2]:
                extra.append((f"hd128 var{var} S={S} {'c' if causal else 'nc'} {name}", dict(B=1, Hq=hq, Hkv=hkv, S=S, Tk=S, D=128, causal=causal, variant=var)))
extra += [
    ("f16 hd128 S=1000 nc", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=False, dtype=torch.float16)),
    ("f16 hd128 S=1000 c", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=True, dtype=torch.float16)),
    ("f16 hd64 S=4097 c mqa", dict(B=1, Hq=16, Hkv=1, S=4097, Tk=4097, D=64, causal=True, dtype=torch.float16)),
    ("f16 hd80 S=127 c", dict(B=2, Hq=8, Hkv=8, S=127, Tk=127, D=80, causal=True, dtype=torch.float16)),
    ("S=127 Tk=1000 c (off=Tk-S)", dict(B=2, Hq=16, Hkv=2, S=127, Tk=1000, D=128, causal=True)),
    ("S=1000 Tk=127 nc", dict(B=2, Hq=16, Hkv=2, S=1000, Tk=127, D=96, causal=False)),
    ("S=300 Tk=1000 c off=500 (device)", dict(B=2, Hq=8, Hkv=8, S=300, Tk=1000, D=128, causal=True, off=500)),
    ("S=1 Tk=4097 nc hd128", dict(B=4, Hq=32, Hkv=8, S=1, Tk=4097, D=128, causal=False)),
    ("public entry S=16 c hd256", dict(B=2, Hq=8, Hkv=2, S=16, Tk=16, D=256, causal=True, force=0)),
    ("public entry S=2048 c hd128", dict(B=1, Hq=16, Hkv=16, S=2048, Tk=2048, D=128, causal=True, force=0)),
    # ALiBi: SDPA math with an explicit f32 bias slope[h] * j
    ("alibi hd128 S=1000 c g1", dict(B=2, Hq=16, Hkv=16, S=1000, Tk=1000, D=128, causal=True, alibi=True)),
    ("alibi hd128 S=1000 nc g4", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=False, alibi=True)),
    ("alibi hd64 S=4097 c mqa", dict(B=1, Hq=16, Hkv=1, S=4097, Tk=4097, D=64, causal=True, alibi=True)),
    ("alibi hd80 S=127 nc g1", dict(B=2, Hq=8, Hkv=8, S=127, Tk=127, D=80, causal=False, alibi=True)),
    ("alibi hd96 S=127 c g4", dict(B=2, Hq=16, Hkv=4, S=127, Tk=127, D=96, causal=True, alibi=True)),
    ("alibi hd256 S=1000 c g4", dict(B=1, Hq=16, Hkv=4, S=1000, Tk=1000, D=256, causal=True, alibi=True)),
    ("alibi f16 hd128 S=1000 c g4", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=True, alibi=True, dtype=torch.float16)),
    ("alibi S=127 Tk=1000 c (off=Tk-S)", dict(B=2, Hq=16, Hkv=2, S=127, Tk=1000, D=128, causal=True, alibi=True)),
    ("alibi S=300 Tk=1000 c off=500 (device)", dict(B=2, Hq=8, Hkv=8, S=300, Tk=1000, D=128, causal=True, off=500, alibi=True)),
    ("alibi hd128 var1 S=1000 c g4", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=True, alibi=True, variant=1)),
    ("alibi public entry S=2048 c hd128", dict(B=1, Hq=16, Hkv=16, S=2048, Tk=2048, D=128, causal=True, alibi=True, force=0)),
    # key masks: SDPA math with a boolean mask (rows with no visible key: the mean of V)
    ("key mask right nc hd128 S=1000", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=False, mask="right")),
    ("key mask right c hd128 S=1000", dict(B=2, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=True, mask="right")),
    ("key mask left c hd128 S=1000 (empty rows)", dict(B=3, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=True, mask="left")),
    ("key mask left c hd64 S=4097 mqa (empty rows)", dict(B=2, Hq=16, Hkv=1, S=4097, Tk=4097, D=64, causal=True, mask="left")),
    ("key mask random nc hd64 S=127", dict(B=2, Hq=8, Hkv=8, S=127, Tk=127, D=64, causal=False, mask="random")),
    ("key mask random c hd256 S=300", dict(B=2, Hq=8, Hkv=2, S=300, Tk=300, D=256, causal=True, mask="random")),
    ("key mask empty row nc hd80 S=127", dict(B=2, Hq=8, Hkv=8, S=127, Tk=127, D=80, causal=False, mask="empty")),
    ("key mask left + alibi c hd128 S=1000", dict(B=3, Hq=16, Hkv=4, S=1000, Tk=1000, D=128, causal=True, mask="left", alibi=True)),
    ("key mask S=300 Tk=1000 c off=500 hd96", dict(B=2, Hq=8, Hkv=8, S=300, Tk=1000, D=96, causal=True, off=500, mask="right")),
    ("key mask public entry left c hd128 S=2048", dict(B=2, Hq=16, Hkv=16, S=2048, Tk=2048, D=128, causal=True, mask="left", force=0)),
]
bad = []
for label, kw in extra:
    e = case(**kw)
    ok = e <= TOL
    fails += not ok
    results["correctness"].append(dict(label=label, **{k: (str(v) if k == "dtype" else v) for k, v in kw.items()}, rel_err=e, ok=ok))
    if not ok:
        bad.append(f"  FAIL {label}: {e:.3g}")
worst_extra = max(r["rel_err"] for r in results["correctness"] if "label" in r)
print(f"extra cases: {len(extra)} (hd128 tile variants, f16, Tk != S, device offset, S=1 vs long KV, public entry, ALiBi, key masks); worst rel err {worst_extra:.2e}")
for tag in ["alibi", "key mask"]:
    rs = [r for r in results["correctness"] if r.get("label", "").startswith(tag)]
    print(f"  {tag}: {sum(r['ok'] for r in rs)}/{len(rs)} within {TOL}, worst {max(r['rel_err'] for r in rs):.2e}")
print("\n".join(bad))

# varlen: packed sequences against SDPA math on each sequence alone
LENS = [1, 7, 127, 1000, 300]
VGROUPS = [("g1", 16, 16), ("g4", 16, 4), ("mqa", 16, 1)]
print(f"varlen (lengths {LENS}, packed) vs SDPA math per sequence, rel err x1e3 (max over g1/g4/mqa)")
print(f"{'D':>4} | {'non-causal':>10} {'causal':>8}")
for D in [64, 128]:
    cells = []
    for causal in [False, True]:
        worst = 0.0
        for name, hq, hkv in VGROUPS:
            e = varlen_case(LENS, hq, hkv, D, causal)
            ok = e <= TOL
            fails += not ok
            worst = max(worst, e) if e == e else float("nan")
            results["correctness"].append(dict(label=f"varlen {LENS} hd{D} {'c' if causal else 'nc'} {name}", varlen=LENS, D=D,
                                               causal=causal, groups=name, dtype="bf16", rel_err=e, ok=ok))
        cells.append(("%.2f" % (worst * 1e3)) + ("" if worst <= TOL else " FAIL"))
    print(f"{D:>4} | {cells[0]:>10} {cells[1]:>8}")
g = torch.Generator().manual_seed(1)
many = [int(x) for x in torch.randint(1, 70, (40,), generator=g)]  # > 32 sequences: the scan's second chunk
vextra = [
    ("varlen hd80 c g4", dict(lens=LENS, Hq=16, Hkv=4, D=80, causal=True)),
    ("varlen hd96 nc g4", dict(lens=LENS, Hq=16, Hkv=4, D=96, causal=False)),
    ("varlen hd256 c g4", dict(lens=LENS, Hq=16, Hkv=4, D=256, causal=True)),
    ("varlen f16 hd128 c g4", dict(lens=LENS, Hq=16, Hkv=4, D=128, causal=True, dtype=torch.float16)),
    ("varlen alibi hd128 c g4", dict(lens=LENS, Hq=16, Hkv=4, D=128, causal=True, alibi=True)),
    ("varlen alibi hd64 nc g1", dict(lens=LENS, Hq=16, Hkv=16, D=64, causal=False, alibi=True)),
    ("varlen 40 short sequences c hd64", dict(lens=many, Hq=8, Hkv=2, D=64, causal=True)),
    ("varlen 40 short sequences nc hd128 alibi", dict(lens=many, Hq=8, Hkv=8, D=128, causal=False, alibi=True)),
    ("varlen empty sequences [5,0,200,0,33] c hd128", dict(lens=[5, 0, 200, 0, 33], Hq=8, Hkv=2, D=128, causal=True)),
    ("varlen lengths 128-aligned [128,256,128] c hd128", dict(lens=[128, 256, 128], Hq=8, Hkv=2, D=128, causal=True)),
    ("varlen public entry hd128 c g4", dict(lens=LENS, Hq=16, Hkv=4, D=128, causal=True, force=0)),
    ("varlen public entry alibi hd128 c g4", dict(lens=LENS, Hq=16, Hkv=4, D=128, causal=True, alibi=True, force=0)),
]
vworst = 0.0
for label, kw in vextra:
    e = varlen_case(**kw)
    ok = e <= TOL
    fails += not ok
    vworst = max(vworst, e) if e == e else float("nan")
    results["correctness"].append(dict(label=label, **{k: (str(v) if k == "dtype" else v) for k, v in kw.items()}, rel_err=e, ok=ok))
    if not ok:
        print(f"  FAIL {label}: {e:.3g}")
print(f"varlen extra cases: {len(vextra)} (hd80/96/256, f16, ALiBi, 40 sequences, empty sequences, public entry); worst rel err {vworst:.2e}")
q = torch.randn(1, 8, 7, 128, device="cuda", dtype=torch.bfloat16)
declined = kiln(q, q, q, True, force=0) is None and kiln(q.float(), q.float(), q.float(), False, force=0) is None
print("public entry declines S=7 and f32 (caller falls back):", declined)
fails += not declined
n_cases = len(results["correctness"])
print(f"correctness: {n_cases - fails}/{n_cases} within {TOL}" + ("" if fails == 0 else f"  ({fails} FAILED)"))


# ---- 2. timing
def bench(fn, reps):
    for _ in range(3):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    ts = sorted(a.elapsed_time(b) for a, b in ev)
    return ts[len(ts) // 2]


def extra_mem(fn, out_bytes):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del r
    return peak - base - out_bytes


def sdpa(backend, q, k, v, causal):
    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


H, D = 32, 128
ROWS = [(16, 512), (8, 1024), (4, 2048), (2, 4096), (1, 8192), (1, 16384)]
if os.environ.get("KILN_FA_ROWS"):
    ROWS = [tuple(int(x) for x in r.split("x")) for r in os.environ["KILN_FA_ROWS"].split(",")]
only_default = os.environ.get("KILN_FA_VARIANTS", "all") == "default"
print(f"\ntiming: bf16, H={H}, D={D}, TFLOP/s (4*B*H*S^2*D, /2 causal), median of 30; extra MiB beyond the output")
hdr = f"{'B':>2} {'S':>5} {'c':>1} | " + ("" if only_default else " ".join(f"v{i:<5}" for i in VARIANTS_128) + " | ")
print(hdr + f"{'kiln':>6} {'FA2':>6} {'cuDNN':>6} | {'k/FA2':>5} {'k/cuDNN':>7} | {'MiB k/FA2/cuDNN':>16} | err")
for B, S in ROWS:
    for causal in [False, True]:
        q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
        flops = 4 * B * H * S * S * D / (2 if causal else 1)
        y = torch.empty_like(q)
        tf = lambda ms: flops / ms / 1e9
        var_tf = {}
        for var in ([] if only_default else list(VARIANTS_128)):
            var_tf[var] = tf(bench(lambda: kiln(q, k, v, causal, variant=var, force=1, out=y), 30))
        t_kiln = bench(lambda: kiln(q, k, v, causal, force=0, out=y), 30)
        fa = sdpa(SDPBackend.FLASH_ATTENTION, q, k, v, causal)
        cu = sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v, causal)
        t_fa, t_cu = bench(fa, 30), bench(cu, 30)
        ob = q.numel() * 2
        mem = [extra_mem(lambda: kiln(q, k, v, causal, force=0), ob), extra_mem(fa, ob), extra_mem(cu, ob)]
        err = rel_err(kiln(q, k, v, causal, force=0), fa().float())
        row = dict(B=B, S=S, H=H, D=D, causal=causal, kiln_tflops=tf(t_kiln), fa2_tflops=tf(t_fa), cudnn_tflops=tf(t_cu),
                   kiln_ms=t_kiln, fa2_ms=t_fa, cudnn_ms=t_cu, kiln_variant_tflops={VARIANTS_128[i]: x for i, x in var_tf.items()},
                   extra_bytes=dict(kiln=mem[0], fa2=mem[1], cudnn=mem[2]), rel_err_vs_fa2=err)
        results["timing"].append(row)
        vs = "" if only_default else " ".join(f"{var_tf[i]:6.1f}" for i in VARIANTS_128) + " | "
        mib = "/".join(f"{m / 2**20:.0f}" for m in mem)
        print(f"{B:>2} {S:>5} {'y' if causal else 'n'} | {vs}{tf(t_kiln):6.1f} {tf(t_fa):6.1f} {tf(t_cu):6.1f} | "
              f"{t_fa / t_kiln:5.2f} {t_cu / t_kiln:7.2f} | {mib:>16} | {err:.1e}", flush=True)
        del q, k, v, y
        torch.cuda.empty_cache()

# varlen: 8 sequences of 256, 512, ..., 2048 tokens, causal — Kiln on the 9216 packed tokens, beside
# SDPA flash and Kiln on the batch padded to [8, 2048] (right padding: real rows are unaffected)
LENS_T = [256 * (i + 1) for i in range(8)]
T, SMAX, B = sum(LENS_T), max(LENS_T), len(LENS_T)
real_flops = sum(4 * H * L * L * D / 2 for L in LENS_T)
cu_t = torch.tensor([0] + list(itertools.accumulate(LENS_T)), dtype=torch.int32, device="cuda")
qp = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
kp = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
vp = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
pad = lambda x: torch.stack([torch.nn.functional.pad(x[0, :, a:b], (0, 0, 0, SMAX - (b - a))) for a, b in zip(cu_t.tolist()[:-1], cu_t.tolist()[1:])])
qd, kd, vd = pad(qp), pad(kp), pad(vp)  # [8, H, 2048, D]
yp, yd = torch.empty_like(qp), torch.empty_like(qd)
t_var = bench(lambda: kiln(qp, kp, vp, True, force=0, out=yp, cu=cu_t), 30)
t_fa_pad = bench(sdpa(SDPBackend.FLASH_ATTENTION, qd, kd, vd, True), 30)
t_kiln_pad = bench(lambda: kiln(qd, kd, vd, True, force=0, out=yd), 30)
ref_pad = sdpa(SDPBackend.FLASH_ATTENTION, qd, kd, vd, True)()
kiln(qp, kp, vp, True, force=0, out=yp, cu=cu_t)
unpad = torch.cat([ref_pad[i, :, :L] for i, L in enumerate(LENS_T)], 1)[None]
err_var = rel_err(yp, unpad.float())
rtf = lambda ms: real_flops / ms / 1e9
vrow = dict(lens=LENS_T, H=H, D=D, causal=True, kiln_varlen_ms=t_var, fa2_padded_ms=t_fa_pad, kiln_padded_ms=t_kiln_pad,
            kiln_varlen_tflops_real=rtf(t_var), fa2_padded_tflops_real=rtf(t_fa_pad), kiln_padded_tflops_real=rtf(t_kiln_pad),
            rel_err_vs_fa2_padded=err_var)
results["varlen_timing"] = vrow
print(f"\nvarlen: {B} sequences {LENS_T[0]}..{LENS_T[-1]} ({T} tokens), H={H}, D={D}, causal; TFLOP/s on the real work ({real_flops / 1e12:.2f} TFLOP)")
print(f"  kiln varlen    {t_var:7.3f} ms  {rtf(t_var):6.1f} TFLOP/s")
print(f"  SDPA FA2 padded {t_fa_pad:6.3f} ms  {rtf(t_fa_pad):6.1f} TFLOP/s   (varlen speedup {t_fa_pad / t_var:.2f}x)")
print(f"  kiln padded    {t_kiln_pad:7.3f} ms  {rtf(t_kiln_pad):6.1f} TFLOP/s")
print(f"  rel err varlen vs FA2 padded on real rows: {err_var:.1e}")
del qp, kp, vp, qd, kd, vd, yp, yd, ref_pad, unpad
torch.cuda.empty_cache()

commit = os.environ.get("KILN_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "unknown"
date = datetime.date.today().isoformat()
results.update(device=torch.cuda.get_device_name(), date=date, commit=commit, torch=torch.__version__, arch=ARCH,
               cuda=torch.version.cuda, correctness_failures=fails, tolerance=TOL)
os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
path = os.path.join(ROOT, "bench", "results", f"attention-{date}-{commit}.json")
text = json.dumps(results, indent=1)
with open(path, "w") as f:
    f.write(text)
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], os.path.basename(path)), "w") as f:
        f.write(text)
print(f"{torch.cuda.get_device_name()} {date} {commit}: wrote {os.path.relpath(path, ROOT)}")
sys.exit(1 if fails else 0)
