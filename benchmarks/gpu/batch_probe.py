"""Which compiled graph recompiles when a dynamic pipeline goes from batch 1 to batch 4 (issue 6), on the GPU.

Builds a built-in pipeline (random weights), ``compile_pipe(dynamic=True)``, runs a few (batch, height, width)
calls with few steps and prints, per call, the new Dynamo graphs per compiled component and the relative L2
error of the image against eager. ``--vae-oblivious`` runs the compiled VAE parts under
``torch.fx.experimental._config.backed_size_oblivious`` (no 0/1 specialisation of the batch). Run with
``TORCH_LOGS=recompiles`` to see the guard that failed.

    python benchmarks/gpu/batch_probe.py --model pixart-alpha --mode max-optimize:low-precision [--vae-oblivious]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nexfort_bench import inputs, models, report  # noqa: E402


def _count_frames(module: torch.nn.Module, name: str, log: dict) -> None:
    """Count calls of the compiled callable that compiled something (Dynamo's unique_graphs grows)."""
    fn = module._compiled_call_impl

    @functools.wraps(fn)
    def call(*a, **k):
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        out = fn(*a, **k)
        log[name] = log.get(name, 0) + counters["stats"]["unique_graphs"] - before
        return out

    module._compiled_call_impl = call  # (functools.wraps also carries the wrapper's _nexfort_* attributes)


def _oblivious(module: torch.nn.Module) -> None:
    from torch.fx.experimental import _config as fx_config

    fn = module._compiled_call_impl

    @functools.wraps(fn)
    def call(*a, **k):
        with fx_config.patch(backed_size_oblivious=True):
            return fn(*a, **k)

    module._compiled_call_impl = call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pixart-alpha")
    p.add_argument("--mode", default="max-optimize:low-precision")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--calls", default="1x512x512,4x512x512,2x768x512,1x1024x768")
    p.add_argument("--vae-oblivious", action="store_true")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    from nexfort.diffusers import compile_pipe, uncompile_pipe

    device = args.device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    loaded = models.load_pipeline(args.model, dtype, device)
    pipe = loaded.pipe
    calls = [tuple(int(v) for v in c.split("x")) for c in args.calls.split(",")]
    refs = {}
    with torch.inference_mode():
        for b, h, w in calls:
            kw = inputs.pipeline_kwargs(loaded, batch=b, height=h, width=w, steps=args.steps, seed=0,
                                        dtype=dtype, device=device)
            refs[(b, h, w)] = pipe(**kw).images.float()
    compile_pipe(pipe, mode=args.mode, dynamic=True)
    comps = {n: getattr(pipe, n) for n in ("transformer", "unet") if getattr(pipe, n, None) is not None}
    comps.update({f"vae.{n}": getattr(pipe.vae, n) for n in ("decoder", "encoder")})
    log: dict = {}
    for name, m in comps.items():
        if getattr(m, "_compiled_call_impl", None) is not None:
            if args.vae_oblivious and name.startswith("vae."):
                _oblivious(m)
            _count_frames(m, name, log)
    rows = []
    for b, h, w in calls:
        log.clear()
        with torch.inference_mode():
            kw = inputs.pipeline_kwargs(loaded, batch=b, height=h, width=w, steps=args.steps, seed=0,
                                        dtype=dtype, device=device)
            t = time.perf_counter()
            img = pipe(**kw).images.float()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        rows.append({"call": f"{b}x{h}x{w}", "s": round(dt, 2), "new_graphs": dict(log),
                     "rel_l2": report.rel_l2(img, refs[(b, h, w)])})
        print(json.dumps(rows[-1]), flush=True)
    uncompile_pipe(pipe)
    print(json.dumps({"model": args.model, "mode": args.mode, "vae_oblivious": args.vae_oblivious,
                      "env": report.environment(device), "rows": rows}))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
