"""The rank side of tests/diffusers/test_parallel.py: each gloo process runs a list of cases and writes what it saw
(``rank<N>.json``) for the test process to check. A case never raises: its error is recorded (type and message)."""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from typing import Any, Dict, List

import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

SIZE = 64


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def load(model: str) -> Any:
    """A built-in tiny pipeline of the benchmark (random weights, seeded: the same on every rank), or
    ``tiny-pixart-3heads`` (3 attention heads, which Ulysses-2 cannot split)."""
    from nexfort_bench import models

    if model == "tiny-pixart-3heads":
        from diffusers import PixArtTransformer2DModel

        loaded = models.load_pipeline("tiny-pixart", torch.float32, "cpu")
        torch.manual_seed(0)
        loaded.pipe.transformer = PixArtTransformer2DModel(
            **{**models.PIXART_TINY, "num_attention_heads": 3, "cross_attention_dim": 24})
        return loaded
    return models.load_pipeline(model, torch.float32, "cpu")


def pipe_kwargs(loaded: Any, height: int = SIZE, width: int = SIZE, text_tokens: int = 0,
                **extra: Any) -> Dict[str, Any]:
    """The benchmark's pipeline inputs (2 steps, latents out); ``text_tokens``: the prompt cut to that many."""
    from nexfort_bench import inputs

    kw = inputs.pipeline_kwargs(loaded, batch=1, height=height, width=width, steps=2, seed=0, dtype=torch.float32,
                                device="cpu")
    kw["output_type"] = "latent"
    if text_tokens:
        kw["prompt_embeds"] = kw["prompt_embeds"][:, :text_tokens]
    kw.update(extra)
    return kw


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def case_match(model: str, layout: Dict[str, int], compile: Any = None, order: str = "parallel-first",
               sizes: List[List[int]] = ((SIZE, SIZE),), **_: Any) -> Dict[str, Any]:
    """The parallel pipeline's latents at each size against one process's eager latents (same weights, same
    inputs); with ``compile`` (compile_pipe's keyword arguments), the graphs compiled after the first size."""
    from nexfort.diffusers import compile_pipe, parallelize_pipe

    ref_loaded, loaded = load(model), load(model)
    out: Dict[str, Any] = {"rel_l2": [], "graphs_after_first": None}
    with torch.inference_mode():
        refs = [ref_loaded.pipe(**pipe_kwargs(ref_loaded, h, w)).images for h, w in sizes]
    if compile is not None and order == "compile-first":
        compile_pipe(loaded.pipe, **compile)
    parallelize_pipe(loaded.pipe, **layout)
    if compile is not None and order == "parallel-first":
        compile_pipe(loaded.pipe, **compile)
    g0 = None
    b0 = _breaks()
    with torch.inference_mode():
        for i, ((h, w), ref) in enumerate(zip(sizes, refs)):
            got = loaded.pipe(**pipe_kwargs(loaded, h, w)).images
            out["rel_l2"].append(rel_l2(got, ref))
            if i == 0:
                g0 = _graphs()
    den = loaded.denoiser
    out["processors"] = sorted({type(m.processor).__name__ for m in den.modules()
                                if getattr(m, "processor", None) is not None})
    out["fused"] = sum(bool(getattr(m, "fused_projections", False)) for m in den.modules())
    if compile is not None:
        from nexfort.core import counters

        out["graphs_after_first"] = _graphs() - g0
        out["breaks_total"] = _breaks() - b0
        out["nexfort_graphs"] = int(counters["backend"]["graphs"])
        out["fallbacks"] = int(counters["backend"]["fallbacks"])
    return out


def case_error(model: str, layout: Dict[str, int], call: Dict[str, Any] = None, **_: Any) -> Dict[str, Any]:
    """parallelize_pipe with ``layout`` (and, if it succeeds, a pipeline call with ``call`` changed): the error."""
    from nexfort.diffusers import parallelize_pipe

    loaded = load(model)
    parallelize_pipe(loaded.pipe, **layout)
    if call is None:
        return {"raised": None}
    size = call.pop("size", None)
    kw = pipe_kwargs(loaded, *(size or (SIZE, SIZE)), **call)
    with torch.inference_mode():
        loaded.pipe(**kw)
    return {"raised": None}


def case_denoiser_error(model: str, layout: Dict[str, int], batch: int = 1, **_: Any) -> Dict[str, Any]:
    """The parallelized denoiser called directly with a batch of ``batch`` (the pipeline's CFG batch is even)."""
    from nexfort_bench import inputs

    from nexfort.diffusers import parallelize_pipe

    loaded = load(model)
    parallelize_pipe(loaded.pipe, **layout)
    kw = inputs.denoiser_kwargs(loaded, batch=1, height=SIZE, width=SIZE, seed=0, dtype=torch.float32, device="cpu")
    kw = {k: (v[:batch] if torch.is_tensor(v) and v.dim() and v.shape[0] == 2 else v) for k, v in kw.items()}
    with torch.inference_mode():
        loaded.denoiser(**kw)
    return {"raised": None}


CASES = {"match": case_match, "error": case_error, "denoiser_error": case_denoiser_error}


def run(rank: int, world: int, port: int, outdir: str, cases: List[Dict[str, Any]]) -> None:
    """``torch.multiprocessing`` entry point: one gloo rank running ``cases``."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    results: Dict[str, Any] = {}
    try:
        for case in cases:
            torch._dynamo.reset()
            from nexfort.core.counters import reset

            reset()
            try:
                results[case["name"]] = CASES[case["kind"]](**json.loads(json.dumps(case)))
            except Exception as e:  # noqa: BLE001 - recorded for the test to check
                results[case["name"]] = {"raised": type(e).__name__, "message": str(e),
                                         "traceback": traceback.format_exc()[-3000:]}
            with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
                json.dump(results, f, indent=1)
    finally:
        dist.destroy_process_group()


def launch(world: int, port: int, outdir: str, cases_file: str) -> None:
    """Fork ``world`` ranks from this fresh interpreter. The test process must not fork them itself: after an
    earlier test compiled, it holds Inductor's compile thread pool, whose threads a forked child lacks, and the
    child's first compile then waits forever on a future no thread will run (the hang of CI's stop 25)."""
    import diffusers  # noqa: F401 - imported once here, before the fork, not once per rank
    import torch.multiprocessing as mp

    with open(cases_file) as f:
        cases = json.load(f)
    mp.start_processes(run, args=(world, port, outdir, cases), nprocs=world, start_method="fork")


if __name__ == "__main__":
    launch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
