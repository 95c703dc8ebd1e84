"""Cold vs warm start of a model with nexfort's compiled-artifact cache (a small model on the CPU by default).

Each run is a new process with a fresh, empty ``TORCHINDUCTOR_CACHE_DIR`` (and Triton cache); "cold" also starts
with an empty nexfort cache, "warm" with the nexfort cache that a cold run filled. With ``--redis-url`` a third
process plays another machine: its own empty local directory, the same Redis (entries signed with the same
``NEXFORT_CACHE_SECRET``). Prints the time to the first output (compile + first call; with ``--model``, the first
image of the pipeline) and of the whole process, the warm/cold ratios, and checks that every warm output equals
the cold one. ``--trace-autotune DIR`` writes, per process, a JSON line for every Triton kernel that tunes or is
loaded (``nexfort_bench/autotune_trace.py``: why a warm process still tunes).

    python benchmarks/cache_warm_start.py [--repeats 3] [--device cpu|cuda] [--mode cache-all]
    python benchmarks/cache_warm_start.py --device cuda --model pixart-alpha --height 1024 --width 1024 \
        --mode max-optimize:max-autotune:low-precision:cache-all --redis-url redis://127.0.0.1:6379/0 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(device: str, mode: str) -> None:
    t0 = time.perf_counter()
    import torch

    from nexfort.core import counters

    class Block(torch.nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(dim)
            self.attn = torch.nn.MultiheadAttention(dim, 4, batch_first=True)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                           torch.nn.Linear(4 * dim, dim))

        def forward(self, x):
            h = self.norm(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.norm(x))

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[Block(64) for _ in range(2)]).eval().to(device)
    x = torch.randn(2, 16, 64, device=device)
    compiled = torch.compile(model, backend="nexfort", options={"mode": mode})
    with torch.no_grad():
        t1 = time.perf_counter()
        out = compiled(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        err = float((out - model(x)).abs().max())
    print(json.dumps({"first_output_s": t2 - t1, "process_s": t2 - t0, "max_abs_diff": err,
                      "cache": dict(counters["cache"])}))


def child_pipeline(args: argparse.Namespace) -> None:
    """The first image of a built-in (or local) pipeline compiled with ``compile_pipe`` (denoiser and VAE)."""
    t0 = time.perf_counter()
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nexfort_bench import inputs, models

    from nexfort.core import counters
    from nexfort.diffusers import compile_pipe

    if os.environ.get("NEXFORT_BENCH_TRACE_AUTOTUNE"):  # why a warm process still tunes (a JSON line a kernel)
        from nexfort_bench import autotune_trace

        autotune_trace.install(os.environ["NEXFORT_BENCH_TRACE_AUTOTUNE"])
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    loaded = models.load_pipeline(args.model, dtype, args.device)
    compile_pipe(loaded.pipe, mode=args.mode, dynamic=args.dynamic,
                 options=json.loads(args.options) if args.options else None)
    kw = inputs.pipeline_kwargs(loaded, batch=1, height=args.height, width=args.width, steps=args.steps,
                                seed=0, guidance_scale=4.5, dtype=dtype, device=args.device)
    kw["output_type"] = "pt"
    profiler = None
    if os.environ.get("NEXFORT_BENCH_CPROFILE"):  # where the first image's time goes, by Python function
        import cProfile

        profiler = cProfile.Profile()
    with torch.inference_mode():
        t1 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        image = loaded.pipe(**kw).images
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if profiler is not None:
            profiler.disable()
        t3 = time.perf_counter()
        loaded.pipe(**kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t4 = time.perf_counter()
    torch.save(image.float().cpu(), args.save_output)
    from torch._dynamo.utils import counters as torch_counters

    inductor = {k: v for k, v in torch_counters["inductor"].items() if "cache" in k}
    aot = {k: v for k, v in torch_counters["aot_autograd"].items() if "cache" in k}
    result = {"first_output_s": t2 - t1, "process_s": t2 - t0, "steady_image_s": t4 - t3, "setup_s": t1 - t0,
              "cache": dict(counters["cache"]), "inductor_caches": {**inductor, **aot}, "phases_s": _phases()}
    if profiler is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(60)
        result["cprofile_cumulative"] = buf.getvalue()[:12000]
    print(json.dumps(result))


def _phases() -> dict:
    """Seconds spent in torch.compile's timed phases (Dynamo tracing, AOTAutograd, Inductor, cache loads, guards),
    summed over every compilation of the process; phases under 0.05 s are left out."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # torch without the metrics
        return {}
    totals = {k: round(sum(v), 3) for k, v in compilation_time_metrics.items()}
    return dict(sorted(((k, v) for k, v in totals.items() if v >= 0.05), key=lambda kv: -kv[1]))


def run(env: dict, device: str, mode: str, extra: tuple = ()) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", "--device", device, "--mode", mode, *extra],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="cache-all", help="nexfort mode string (must turn on cache-all)")
    p.add_argument("--output-json", default=None, help="also write the medians and the environment here")
    p.add_argument("--model", default=None, help="a benchmark model (built-in name or folder) instead of the "
                   "small model: time the pipeline's first image")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dynamic", action="store_true", help="compile with dynamic=True")
    p.add_argument("--redis-url", default=None, help="also run a process on 'another machine': its own empty "
                   "local directory, this Redis")
    p.add_argument("--options", default=None, help="nexfort options for compile_pipe, as JSON (e.g. "
                   "'{\"inductor.coordinate_descent_tuning\": false}')")
    p.add_argument("--trace-autotune", default=None, help="a folder: write there, per process, a JSON line for "
                   "each Triton kernel that autotunes or runs coordinate descent (why a warm process still tunes)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--save-output", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.options is not None:  # checked here, before any child process loads a model
        try:
            parsed = json.loads(args.options)
        except json.JSONDecodeError as e:
            p.error(f"--options {args.options!r} is not valid JSON ({e}); expected an object like "
                    '\'{"inductor.coordinate_descent_tuning": false}\'')
        if not isinstance(parsed, dict):
            p.error(f"--options {args.options!r} is a JSON {type(parsed).__name__}; expected an object of nexfort "
                    "options")
    if args.child:
        return child_pipeline(args) if args.model else child(args.device, args.mode)
    if args.model:
        return main_pipeline(args)

    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="nexfort-bench-") as tmp:
        for i in range(args.repeats):
            base = dict(os.environ, NEXFORT_CACHE_DIR=os.path.join(tmp, f"nexfort-{i}"))
            base.pop("NEXFORT_CACHE_REDIS_URL", None)
            c = run(dict(base, TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, f"ind-cold-{i}")), args.device, args.mode)
            w = run(dict(base, TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, f"ind-warm-{i}")), args.device, args.mode)
            assert c["cache"].get("saved") and w["cache"].get("loaded"), (c, w)
            assert c["max_abs_diff"] < 1e-4 and w["max_abs_diff"] < 1e-4, (c, w)
            cold.append(c)
            warm.append(w)
            print(f"run {i}: cold first output {c['first_output_s']:.2f} s (process {c['process_s']:.2f} s), "
                  f"warm {w['first_output_s']:.2f} s (process {w['process_s']:.2f} s)", flush=True)
    summary = {}
    for what in ("first_output_s", "process_s"):
        c = statistics.median(r[what] for r in cold)
        w = statistics.median(r[what] for r in warm)
        summary[what] = {"cold": round(c, 3), "warm": round(w, 3), "warm_over_cold": round(w / c, 4)}
        print(f"{what}: cold {c:.2f} s, warm {w:.2f} s, warm/cold {w / c:.1%} (median of {args.repeats})")
    if args.output_json:
        import platform

        import torch

        env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "device": args.device, "mode": args.mode, "repeats": args.repeats,
               "date": time.strftime("%Y-%m-%d")}
        with open(args.output_json, "w") as f:
            json.dump({"benchmark": "cache_warm_start", "env": env, "summary": summary, "cold": cold, "warm": warm},
                      f, indent=2)


def main_pipeline(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nexfort_bench import report

    extra = ("--model", args.model, "--height", str(args.height), "--width", str(args.width), "--steps",
             str(args.steps)) + (("--dynamic",) if args.dynamic else ()) + (
                 ("--options", args.options) if args.options else ())
    rows = []
    if args.trace_autotune:
        os.makedirs(args.trace_autotune, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nexfort-bench-") as tmp:
        for i in range(args.repeats):
            base = dict(os.environ, NEXFORT_CACHE_DIR=os.path.join(tmp, f"nexfort-{i}"))
            base.setdefault("NEXFORT_CACHE_SECRET", "nexfort-benchmark-shared-secret")
            if args.redis_url:
                import redis

                redis.Redis.from_url(args.redis_url).flushdb()  # each repeat starts cold, also in Redis
                base["NEXFORT_CACHE_REDIS_URL"] = args.redis_url
            else:
                base.pop("NEXFORT_CACHE_REDIS_URL", None)
            plan = [("cold", base), ("warm", base)]
            if args.redis_url:
                plan.append(("warm_other_machine", dict(base, NEXFORT_CACHE_DIR=os.path.join(tmp, f"other-{i}"))))
            row = {}
            for what, env in plan:
                env = dict(env, TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, f"ind-{what}-{i}"),
                           TRITON_CACHE_DIR=os.path.join(tmp, f"triton-{what}-{i}"))
                if args.trace_autotune:
                    env["NEXFORT_BENCH_TRACE_AUTOTUNE"] = os.path.join(args.trace_autotune, f"{what}-{i}.jsonl")
                out = os.path.join(tmp, f"{what}-{i}.pt")
                r = run(env, args.device, args.mode, extra + ("--save-output", out))
                r["output"] = out
                row[what] = r
                print(f"run {i} {what}: first image {r['first_output_s']:.2f} s (process {r['process_s']:.2f} s, "
                      f"steady image {r['steady_image_s']:.3f} s), cache {r['cache']}, Inductor/AOT caches "
                      f"{r.get('inductor_caches')}\n  phases (s): {r.get('phases_s')}", flush=True)
            ref = torch.load(row["cold"].pop("output"))
            for what in row:
                if what != "cold":
                    o = torch.load(row[what].pop("output"))
                    row[what]["rel_l2_vs_cold"] = report.rel_l2(o, ref)
                    assert row[what]["cache"].get("loaded"), (what, row[what])
                    assert row[what]["rel_l2_vs_cold"] < 1e-3, (what, row[what])
            assert row["cold"]["cache"].get("saved"), row["cold"]
            rows.append(row)
    summary = {}
    for what in rows[0]:
        med = {k: statistics.median(r[what][k] for r in rows) for k in ("first_output_s", "process_s")}
        summary[what] = {k: round(v, 3) for k, v in med.items()}
        if what != "cold":
            for k in ("first_output_s", "process_s"):
                summary[what][k.replace("_s", "_over_cold")] = round(med[k] / summary["cold"][k], 4)
        print(f"{what}: first image {med['first_output_s']:.2f} s, process {med['process_s']:.2f} s"
              + ("" if what == "cold" else f" ({med['first_output_s'] / summary['cold']['first_output_s']:.1%} "
                 "of cold)"))
    if args.output_json:
        env = {**report.environment(args.device), "mode": args.mode, "options": args.options, "model": args.model,
               "height": args.height, "width": args.width, "steps": args.steps, "dynamic": args.dynamic,
               "redis": bool(args.redis_url), "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")}
        with open(args.output_json, "w") as f:
            json.dump({"benchmark": "cache_warm_start_pipeline", "env": env, "summary": summary, "runs": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
