"""Attention kernels on the denoisers' own shapes (issue 4): SDPA's backends against FlashAttention-4's Hopper
forward (``flash_attn.cute``, CuTe DSL), one process, same inputs.

    python benchmarks/gpu/attention_kernels.py [--out FILE.jsonl] [--iters 50]

Inputs are fresh ``randn`` in the (batch, seq, heads, head_dim) layout diffusers produces before its
``transpose(1, 2)``; SDPA gets the transposed views (what diffusers passes), FA4 the untransposed tensors. Each
output is compared with a float32 math-SDPA reference (relative L2). Timings: CUDA events around each call, after
warm-up, median over ``--iters``. One JSON line per (shape, kernel); a short table last.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from _timing import one_call_ms, rel_l2
from torch.nn.attention import SDPBackend, sdpa_kernel

# (name, batch, q tokens, kv tokens, heads, head_dim)
SHAPES = [
    ("pixart-1024-self", 2, 4096, 4096, 16, 72),
    ("pixart-512x768-self", 2, 1536, 1536, 16, 72),
    ("sd3-1024-joint", 2, 4429, 4429, 24, 64),
    ("sdxl-1024-self-64x64", 2, 4096, 4096, 10, 64),
    # PixArt's cross-attention over the valid text tokens of a 30-token prompt, unmasked (the masked 32-key form,
    # which SDPA alone takes: benchmarks/gpu/probe.py attention)
    ("pixart-1024-cross-30", 2, 4096, 30, 16, 72),
    ("flux-1024-joint", 1, 4608, 4608, 24, 128),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    try:
        from flash_attn.cute.interface import flash_attn_func
    except ImportError as exc:  # the table still gets SDPA's rows
        print(f"flash_attn.cute unavailable: {exc!r}")
        flash_attn_func = None

    def fa4(q, k, v):
        with torch.no_grad():
            out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    rows = []
    for name, b, sq, skv, h, d in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=dtype, generator=gen) for s in (sq, skv, skv))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float()).transpose(1, 2)
        flops = 4 * b * h * sq * skv * d
        kernels = {}
        for label, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                               ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                               ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
            def call(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)  # noqa: B023 - called in this iteration
            kernels[label] = call
        if flash_attn_func is not None:
            kernels["fa4"] = lambda: fa4(q, k, v)  # noqa: B023
        for label, fn in kernels.items():
            row = {"shape": name, "kernel": label, "b": b, "sq": sq, "skv": skv, "h": h, "d": d,
                   "dtype": args.dtype, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
            try:
                t0 = time.perf_counter()
                out = fn()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - t0, 3)
                row["rel_l2_vs_fp32"] = rel_l2(out, ref)
                row["ms"] = one_call_ms(fn, args.iters)
                row["tflops"] = round(flops / row["ms"] / 1e9, 1)
            except Exception as exc:  # a backend that does not take this shape is a row, not a crash
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(f"\n{'shape':24} {'kernel':15} {'ms':>8} {'TFLOP/s':>8} {'rel L2':>9} {'1st call s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:24} {r['kernel']:15} {r['error'][:60]}")
        else:
            print(f"{r['shape']:24} {r['kernel']:15} {r['ms']:8.3f} {r['tflops']:8.1f} {r['rel_l2_vs_fp32']:9.2e}"
                  f" {r['first_call_s']:10.2f}")


if __name__ == "__main__":
    main()
