"""Where a compiled denoiser's GPU time goes (issue 4's profiling step), and SDPA backends on its shapes.

    python benchmarks/gpu/probe.py attention                      # SDPA backends on PixArt-α's attention shapes
    python benchmarks/gpu/probe.py summary RES/probe.jsonl        # one line per result (the lease scripts' table)
    python benchmarks/gpu/probe.py denoiser --model pixart-alpha --hw 1024x1024 \
        --compiler nexfort --compiler-config '{"mode": "max-optimize:low-precision"}' [--profile]

``denoiser`` compiles the built-in model's denoiser as the benchmark does (``compile_pipe``, denoiser only),
reports the cold compile time (fresh Inductor cache), the median CUDA-event time of one CFG forward, peak memory
and the relative L2 error against eager at the same inputs; ``--profile`` adds the GPU time per kernel family
(GEMM, attention, Triton pointwise / reduction, other) from ``torch.profiler``. One JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from _timing import one_call_ms

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def attention() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    dev, dt = "cuda", torch.float16
    for n, d in ((4096, 72), (4096, 64), (4096, 80), (4096, 96), (4096, 128), (1536, 72)):
        q, k, v = (torch.randn(2, 16, n, d, device=dev, dtype=dt) for _ in range(3))
        flop = 4 * 2 * 16 * n * n * d
        for name, be in names.items():
            try:
                with sdpa_kernel([be]):
                    ms = do_bench(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), warmup=50, rep=200)
                emit(probe="attention", kind="self", n=n, d=d, backend=name, us=round(ms * 1e3, 1),
                     tflops=round(flop / ms / 1e9, 1))
            except RuntimeError as e:
                emit(probe="attention", kind="self", n=n, d=d, backend=name, error=str(e)[:120])
    # head dim 72 padded to 80 / 128 around the kernel (the pad and slice included)
    q, k, v = (torch.randn(2, 16, 4096, 72, device=dev, dtype=dt) for _ in range(3))
    for pad_to in (80, 96, 128):
        def padded(pad_to=pad_to):
            p = [F.pad(t, (0, pad_to - 72)) for t in (q, k, v)]
            return F.scaled_dot_product_attention(*p, scale=72 ** -0.5)[..., :72]
        for name in ("cudnn", "flash"):
            with sdpa_kernel([names[name]]):
                ms = do_bench(padded, warmup=50, rep=200)
            emit(probe="attention", kind="self-padded", n=4096, d=72, pad_to=pad_to, backend=name,
                 us=round(ms * 1e3, 1))
    # PixArt's cross-attention: 120 padded T5 tokens, or the 32 that text trimming keeps for a 30-token prompt (two
    # still masked), or exactly the 30 valid ones without a mask; SDPA's backends and the math form
    for keys, valid in ((120, 100), (32, 30), (30, None)):
        kc, vc = (torch.randn(2, 16, keys, 72, device=dev, dtype=dt) for _ in range(2))
        mask = None
        if valid is not None:
            mask = torch.zeros(2, 1, 1, keys, device=dev, dtype=dt)
            mask[:, :, :, valid:] = -10000.0
        kind = f"cross-{keys}" + ("-masked" if mask is not None else "")
        for name, be in (*names.items(), ("math", SDPBackend.MATH)):
            try:
                with sdpa_kernel([be]):
                    ms = do_bench(lambda kc=kc, vc=vc, mask=mask: F.scaled_dot_product_attention(
                        q, kc, vc, attn_mask=mask), warmup=50, rep=200)
                emit(probe="attention", kind=kind, n=4096, d=72, backend=name, us=round(ms * 1e3, 1))
            except RuntimeError as e:
                emit(probe="attention", kind=kind, n=4096, d=72, backend=name, error=str(e)[:120])


# Inductor's generated kernels first: their names list the ops fused into them (``triton_red_fused__scaled_mm_...``,
# ``triton_poi_fused__scaled_dot_product_cudnn_attention_...``), which must not count them as GEMMs or attention
FAMILIES = (("triton reduction", ("triton_per", "triton_red")),
            ("triton pointwise", ("triton_poi",)),
            ("attention", ("fmha", "flash", "cudnn", "sdpa", "attention", "attn")),
            ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "triton_tem", "_mm_", "sm90", "matmul")),
            ("copy/cast", ("copy", "cast", "elementwise_kernel", "vectorized_elementwise", "unrolled_elementwise")),
            ("norm", ("layer_norm", "norm")))


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def profile(fn, iters: int = 5, top_n: int = 12) -> dict:
    """GPU time per kernel family and the ``top_n`` kernels (name, ms per forward, calls per forward)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    fam, kern, calls, count = defaultdict(float), defaultdict(float), defaultdict(int), 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            fam[family(e.name)] += e.device_time_total / iters
            kern[e.name[:110]] += e.device_time_total / iters
            calls[e.name[:110]] += 1
            count += 1
    top = sorted(kern.items(), key=lambda kv: -kv[1])[:top_n]
    return {"families_ms": {k: round(v / 1e3, 3) for k, v in sorted(fam.items(), key=lambda kv: -kv[1])},
            "gpu_ms": round(sum(fam.values()) / 1e3, 3), "kernels_per_forward": count // iters,
            "top_kernels_ms": [[k, round(v / 1e3, 3), calls[k] // iters] for k, v in top]}


def gaps(fn, iters: int = 5) -> dict:
    """Where a forward's wall time goes on the GPU's timeline: ``iters`` forwards queued back to back as the benchmark
    calls them (no synchronization between), profiled; the GPU span per forward (first kernel's start to last
    kernel's end, over ``iters``), the busy time (the union of the kernels' intervals), what is left (idle gaps
    between kernels), how the gaps are spread by size, and the largest with the kernels on either side. A few large
    gaps point at the host (Python, a synchronization); many small ones at launch latency inside the stream or the
    CUDA graph."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    fn()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    ks = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
          if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start]
    return timeline(ks, iters)


def timeline(ks, iters: int) -> dict:
    """:func:`gaps`' figures from the kernels' ``(start_us, end_us, name)`` over ``iters`` forwards."""
    ks = sorted(ks, key=lambda t: t[0])
    if not ks:
        return {"error": "no GPU events recorded"}
    busy, gap_list, end, prev = 0.0, [], ks[0][0], ks[0][2]
    for s0, e0, name in ks:
        if s0 > end:
            gap_list.append((s0 - end, prev, name))
        busy += max(0.0, e0 - max(s0, end))
        if e0 > end:
            end, prev = e0, name
    span = end - ks[0][0]
    buckets = {"<2us": 0.0, "2-5us": 0.0, "5-20us": 0.0, "20-100us": 0.0, ">=100us": 0.0}
    counts = dict.fromkeys(buckets, 0)
    for g, _, _ in gap_list:
        b = "<2us" if g < 2 else "2-5us" if g < 5 else "5-20us" if g < 20 else "20-100us" if g < 100 else ">=100us"
        buckets[b] += g
        counts[b] += 1
    top = sorted(gap_list, key=lambda t: -t[0])[:10]
    return {"gpu_span_ms": round(span / iters / 1e3, 3), "busy_ms": round(busy / iters / 1e3, 3),
            "idle_ms": round((span - busy) / iters / 1e3, 3), "kernels_per_forward": len(ks) // iters,
            "gaps_per_forward": len(gap_list) // iters,
            "idle_ms_by_gap_size": {k: round(v / iters / 1e3, 3) for k, v in buckets.items()},
            "gaps_by_size": {k: v // iters for k, v in counts.items()},
            "largest_gaps_us": [[round(g, 1), a[:60], b[:60]] for g, a, b in top]}


def time_ms(fn, iters: int = 30) -> float:
    return one_call_ms(fn, iters, warmups=3)


def denoiser(args: argparse.Namespace) -> None:
    from nexfort_bench import cli, inputs, models, report

    h, w = (int(x) for x in args.hw.split("x"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    loaded = models.load_pipeline(args.model, dtype, "cuda")
    kw = inputs.denoiser_kwargs(loaded, height=h, width=w, batch=1, seed=0, dtype=dtype, device="cuda")
    den = loaded.denoiser
    with torch.inference_mode():
        ref = den(**kw)[0].float()
        ref32 = None
        if args.fp32_ref:  # float32 reference: a float32 copy of the same weights on float32 inputs
            import copy

            den32 = copy.deepcopy(den).float()
            def f32(v):
                if isinstance(v, dict):
                    return {k: f32(x) for k, x in v.items()}
                return v.float() if torch.is_tensor(v) and v.is_floating_point() else v

            kw32 = f32(kw)
            ref32 = den32(**kw32)[0].float()
            del den32, kw32
            torch.cuda.empty_cache()
        eager_ms = time_ms(lambda: den(**kw)) if args.eager else None
        cfg, pipe_kw = cli.parse_compiler_config(args.compiler_config)
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.max_memory_allocated()
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
            t0 = time.perf_counter()
            cli.compile_for(loaded, args.compiler, cfg, pipe_kw, denoiser_only=True)
            out = den(**kw)[0]
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            ms = time_ms(lambda: den(**kw))
            out = den(**kw)[0].float()
            res = {"probe": "denoiser", "model": args.model, "hw": args.hw, "compiler": args.compiler,
                   "config": args.compiler_config, "cold_compile_s": round(compile_s, 1), "ms": round(ms, 3),
                   "eager_ms": None if eager_ms is None else round(eager_ms, 3),
                   "rel_l2_vs_eager": report.rel_l2(out, ref),
                   "rel_l2_vs_fp32": None if ref32 is None else report.rel_l2(out, ref32),
                   "eager_rel_l2_vs_fp32": None if ref32 is None else report.rel_l2(ref, ref32),
                   "peak_mem_mb": round((torch.cuda.max_memory_allocated() - base_mem) / 2**20, 1),
                   "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
            if args.compiler == "nexfort":
                from nexfort.core import counters

                res["nexfort_counters"] = {k: dict(v) for k, v in counters.items()}  # fallbacks must be 0
            if args.compile_times:  # where the cold compile went (Dynamo's per-phase totals, seconds)
                from torch._dynamo.utils import compile_times

                res["compile_times"] = compile_times(repr="csv", aggregate=True)
            if args.profile:
                res["profile"] = profile(lambda: den(**kw), top_n=args.top)
            if args.gaps:
                res["gaps"] = gaps(lambda: den(**kw))
            if args.profile_eager:
                from nexfort.diffusers import uncompile_pipe

                uncompile_pipe(loaded.pipe)
                res["profile_eager"] = profile(lambda: den(**kw))
    emit(**res)


def summary(path: str) -> None:
    """One line per JSON line of ``path`` (what the lease scripts print last)."""
    for line in open(path):
        r = json.loads(line)
        p = r.get("profile") or {}
        counters = r.get("nexfort_counters") or {}
        fp32 = r.get("rel_l2_vs_fp32")
        print(f"{r.get('step', ''):16s} {r['model']:12s} {r['hw']:9s} ms={r['ms']:7.3f} eager={r.get('eager_ms')} "
              f"compile={r['cold_compile_s']}s graphs={counters.get('backend', {}).get('graphs')} "
              f"l2={r['rel_l2_vs_eager']:.2e}" + (f" l2_fp32={fp32:.2e}" if fp32 is not None else "") +
              f" mem={r['peak_mem_mb']} passes={counters.get('pass')}"
              + (f" gpu_ms={p['gpu_ms']} fam={p['families_ms']}" if p else ""))
        g = r.get("gaps")
        if g and "gpu_span_ms" in g:
            print(f"   timeline: span={g['gpu_span_ms']} busy={g['busy_ms']} idle={g['idle_ms']} "
                  f"kernels={g['kernels_per_forward']} idle_by_gap={g['idle_ms_by_gap_size']}")
        if r.get("compile_times"):
            keys, vals = r["compile_times"]
            top = sorted(zip(keys, vals), key=lambda kv: -float(kv[1]))[:8]
            print("   compile phases (s):", ", ".join(f"{k}={float(v):.1f}" for k, v in top))


def main() -> None:
    if sys.argv[1:2] == ["summary"]:
        return summary(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("attention", "denoiser"))
    p.add_argument("--model", default="pixart-alpha")
    p.add_argument("--hw", default="1024x1024")
    p.add_argument("--compiler", default="nexfort", choices=("nexfort", "inductor"))
    p.add_argument("--compiler-config", default=None)
    p.add_argument("--eager", action="store_true", help="time eager too")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=12, help="with --profile: how many kernels to list by GPU time")
    p.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="the model's dtype (FLUX: bf16)")
    p.add_argument("--compile-times", action="store_true", help="Dynamo's per-phase compile times")
    p.add_argument("--fp32-ref", action="store_true", help="relative L2 against a float32 copy too")
    p.add_argument("--profile-eager", action="store_true")
    p.add_argument("--gaps", action="store_true", help="the GPU timeline of queued forwards: busy vs idle, gap sizes")
    args = p.parse_args()
    attention() if args.what == "attention" else denoiser(args)


if __name__ == "__main__":
    main()
