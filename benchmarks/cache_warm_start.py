"""Cold vs warm start of a small model with nexfort's compiled-artifact cache (CPU by default).

Each run is a new process with a fresh, empty ``TORCHINDUCTOR_CACHE_DIR``; "cold" also starts with an empty
nexfort cache, "warm" with the nexfort cache that a cold run filled. Prints the time to the first output
(compile + first call) and the whole process, and the warm/cold ratio (the issue's CPU target: <= 30 %).

    python benchmarks/cache_warm_start.py [--repeats 3] [--device cpu|cuda] [--mode cache-all]
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


def run(env: dict, device: str, mode: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", "--device", device, "--mode", mode], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="cache-all", help="nexfort mode string (must turn on cache-all)")
    p.add_argument("--output-json", default=None, help="also write the medians and the environment here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.device, args.mode)

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


if __name__ == "__main__":
    main()
