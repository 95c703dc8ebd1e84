"""``torch.ops.nexfort.rms_norm_rope`` against what Inductor makes of the same q/k RMSNorm + rotary embedding (the
torch functions diffusers' Flux attention calls, compiled with ``torch.compile``), at Flux's sizes: the joint blocks'
text + image concatenation and the single blocks' one part, q a view of a fused QKV projection's output. Prints the
GPU time per call (queued back to back: ``_timing.queued_ms``), the bandwidth reached (bytes read + written once) and
the op's error against eager's functions. The whole-model effect: ``bash benchmarks/gpu/run.sh bench ...
--also-nexfort 'rope={"mode": "...", "options": {"qk_norm_rope.enabled": true}}'``.

    python benchmarks/gpu/qk_norm_rope.py [--dtype bf16] [--tokens 4096] [--text 512] [--heads 24] [--head-dim 128]
    (--device cpu: a smoke run of the script itself, tests/benchmarks/test_gpu_runner.py)
"""
import argparse
import json

import torch
from _timing import queued_ms, rel_l2

from nexfort.passes.qk_norm_rope import kernels

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def eager(a, b, wa, wb, cos, sin):
    """diffusers' FluxAttnProcessor from the QKV output to the rotated q (torch.rms_norm, cat, apply_rotary_emb)."""
    d = b.shape[-1]
    x = torch.rms_norm(b, (d,), wb, 1e-6)
    if a is not None:
        x = torch.cat([torch.rms_norm(a, (d,), wa, 1e-6), x], dim=1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def measure(form, args):
    """One row: the op and Inductor's kernel(s) on ``form`` ("joint": text + image parts; "single": one part)."""
    dtype, h, d, dev = DTYPES[args.dtype], args.heads, args.head_dim, args.device
    g = torch.Generator(device=dev).manual_seed(0)
    s_img = args.tokens if form == "joint" else args.tokens + args.text
    qkv = torch.randn(args.batch, s_img, 3 * h * d, device=dev, generator=g).to(dtype)
    b = qkv[..., : h * d].unflatten(-1, (h, d))
    a = torch.randn(args.batch, args.text, h, d, device=dev, generator=g).to(dtype) if form == "joint" else None
    wa, wb = (torch.rand(d, device=dev, generator=g).to(dtype) + 0.5 for _ in range(2))
    cos, sin = (torch.randn(args.tokens + args.text, d, device=dev, generator=g) for _ in range(2))
    compiled = torch.compile(eager, dynamic=False)
    parts = (a, b, wa, wb) if a is not None else (b, None, wb, None)
    with torch.no_grad():
        ref = eager(a, b, wa, wb, cos, sin)
        ind = compiled(a, b, wa, wb, cos, sin)
        out = kernels.rms_norm_rope(*parts, cos, sin, 1e-6, 1)
        t_ind = queued_ms(lambda: compiled(a, b, wa, wb, cos, sin), device=dev)
        t_op = queued_ms(lambda: kernels.rms_norm_rope(*parts, cos, sin, 1e-6, 1), device=dev)
    moved = 2 * ref.numel() * ref.element_size() + 2 * cos.numel() * 4
    return {"form": form, "inductor_us": round(t_ind * 1e3, 1), "op_us": round(t_op * 1e3, 1),
            "speedup": round(t_ind / t_op, 3), "op_TBps": round(moved / (t_op * 1e-3) / 1e12, 2),
            "inductor_TBps": round(moved / (t_ind * 1e-3) / 1e12, 2),
            "op_rel_l2": rel_l2(out, ref), "inductor_rel_l2": rel_l2(ind, ref),
            "gpu": torch.cuda.get_device_name() if dev == "cuda" else "none (CPU smoke run)",
            "torch": torch.__version__, "dtype": args.dtype}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tokens", type=int, default=4096, help="image tokens (4096: 1024x1024)")
    p.add_argument("--text", type=int, default=512, help="text tokens of the joint blocks")
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda", help="cuda (the measurement); cpu: a smoke run of the script")
    args = p.parse_args(argv)
    print(torch.cuda.get_device_name() if args.device == "cuda" else "CPU", torch.__version__)
    rows = [measure(form, args) for form in ("joint", "single")]
    for r in rows:
        print(json.dumps(r))
    print(f"{'form':8} {'inductor us':>12} {'op us':>8} {'speedup':>8} {'op TB/s':>8} {'op rel L2':>10}")
    for r in rows:
        print(f"{r['form']:8} {r['inductor_us']:12.1f} {r['op_us']:8.1f} {r['speedup']:8.3f} {r['op_TBps']:8.2f} "
              f"{r['op_rel_l2']:10.2e}")
    return rows


if __name__ == "__main__":
    main()
