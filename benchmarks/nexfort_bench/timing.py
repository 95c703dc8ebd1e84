"""Clocks (CUDA events on a GPU, perf_counter on the CPU), per-step timing, peak memory, compile counters."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch


@contextlib.contextmanager
def inductor_cache(fresh: bool, made: List[str]) -> Iterator[None]:
    """With ``fresh``: compile into a new, empty Inductor (and Triton) cache directory, appended to ``made``."""
    if not fresh:
        yield
        return
    directory = tempfile.mkdtemp(prefix="nexfort-bench-inductor-")
    made.append(directory)
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:  # older torch: the environment variable, and Inductor's in-memory caches cleared
        temporary_cache_dir = _temporary_cache_dir
    with temporary_cache_dir(directory):
        yield


@contextlib.contextmanager
def _temporary_cache_dir(directory: str) -> Iterator[None]:
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
    try:
        from torch._inductor.utils import clear_caches as clear
    except ImportError:  # torch < 2.2: its memoized paths (below)
        clear = _clear_memoized_paths
        if clear:
            clear()
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        if clear:
            clear()


def _clear_memoized_paths() -> None:
    """torch 2.1 memoizes Inductor's cache directory and the path of the C++ prefix header it writes there
    (``codecache.cache_dir``, ``cpp_prefix_path``: ``functools.lru_cache``): without clearing them a new cache
    directory is ignored, and a removed one's header is still #included (a C++ compile error)."""
    try:
        from torch._inductor import codecache
    except ImportError:  # pragma: no cover
        return
    for name in ("cache_dir", "cpp_prefix_path"):
        fn = getattr(codecache, name, None)
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()


def progress(iterable: Any = None, total: Optional[int] = None, desc: str = "") -> Any:
    """tqdm when installed, else a plain print per item."""
    try:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)
    except ImportError:  # pragma: no cover
        items = list(iterable)

        def gen():
            for i, x in enumerate(items):
                print(f"{desc}: {i + 1}/{len(items)}", file=sys.stderr, flush=True)
                yield x

        return gen()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Clock:
    """Marks on the device's timeline: CUDA events on a GPU, host perf_counter otherwise."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.marks: List[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> List[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def step_end_kwargs(pipe: Any, on_step: Callable[[Any], None]) -> Optional[Dict[str, Any]]:
    """Pipeline arguments that call ``on_step(latents)`` at the end of each denoising step, through whichever of
    diffusers' two callback APIs the pipeline has (``None``: it has neither)."""
    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in params:
        def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: Dict[str, Any]) -> Dict[str, Any]:
            on_step(kwargs.get("latents"))
            return kwargs

        return {"callback_on_step_end": on_step_end}
    if "callback" in params and "callback_steps" in params:
        return {"callback": lambda _i, _t, latents: on_step(latents), "callback_steps": 1}
    return None


def step_callback_kwargs(pipe: Any, clock: Clock) -> Dict[str, Any]:
    """Pipeline arguments that mark the clock at the end of each denoising step (both callback APIs)."""
    return step_end_kwargs(pipe, lambda _latents: clock.mark()) or {}


def median(xs: List[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> Dict[str, Any]:
    if device.startswith("cuda"):
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_memory_kind": "torch.cuda.max_memory_allocated"}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"peak_memory_mb": round(rss / 1024, 1), "peak_memory_kind": "process peak RSS"}
    except ImportError:  # pragma: no cover
        return {"peak_memory_mb": None, "peak_memory_kind": "unavailable"}


def compile_counts() -> Dict[str, int]:
    """Graphs compiled so far: nexfort's backend counter and Dynamo's own statistics."""
    from torch._dynamo.utils import counters as dynamo_counters

    from nexfort.core import counters

    return {"nexfort_graphs": int(counters["backend"]["graphs"]),
            "nexfort_fallbacks": int(counters["backend"]["fallbacks"]),
            "dynamo_graphs": int(dynamo_counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(dynamo_counters["graph_break"].values()))}


def counts_delta(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def timed_call(fn: Callable[[], Any], device: str) -> tuple:
    """``(result, seconds)`` of one call, synchronized."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def time_pipeline(pipe: Any, kwargs: Dict[str, Any], *, warmups: int, iters: int, device: str, steps: int,
                  batch: int, label: str) -> Dict[str, Any]:
    """Warm-up calls (the first compiles), then timed calls: end-to-end and per-step denoiser time."""
    res: Dict[str, Any] = {}
    c0 = compile_counts()
    warm = []
    set_bar = getattr(pipe, "set_progress_bar_config", None)
    if set_bar is not None:  # the pipeline's own bar over the steps while compiling and warming up
        set_bar(disable=False, leave=False, desc=f"{label}: steps")
    try:
        for _ in progress(range(max(warmups, 1)), desc=f"{label}: compile/warm-up"):
            _, dt = timed_call(lambda: pipe(**kwargs), device)
            warm.append(dt)
    finally:
        if set_bar is not None:
            set_bar(disable=True)
    c1 = compile_counts()
    reset_peak_memory(device)
    e2e, steps_ms, out = [], [], None
    for _ in progress(range(iters), desc=f"{label}: timed runs ({steps} steps)"):
        clock = Clock(device)
        call_kw = {**kwargs, **step_callback_kwargs(pipe, clock)}
        out, dt = timed_call(functools.partial(pipe, **call_kw), device)
        e2e.append(dt)
        steps_ms += clock.intervals_ms()
    c2 = compile_counts()
    e2e_med = median(e2e)
    res.update(warmup_s=round(warm[0], 3), warmup_all_s=[round(x, 3) for x in warm],
               step_ms_median=_r(median(steps_ms)), step_ms_min=_r(min(steps_ms) if steps_ms else None),
               e2e_s_median=_r(e2e_med, 4), e2e_s_per_image=_r(e2e_med / batch if e2e_med else None, 4),
               it_per_s=_r(steps / e2e_med if e2e_med else None), denoiser_it_per_s=_r(
                   1e3 / median(steps_ms) if steps_ms else None),
               compiled_in_warmup=counts_delta(c0, c1), recompiles_in_timed_runs=counts_delta(c1, c2))
    res.update(peak_memory_mb(device))
    return {"result": res, "output": getattr(out, "images", out)}


def time_callable(fn: Callable[[], Any], *, warmups: int, iters: int, device: str, label: str) -> Dict[str, Any]:
    """``--denoiser-only``: one forward per call, CUDA-event timed, median."""
    c0 = compile_counts()
    warm = []
    for _ in progress(range(max(warmups, 1)), desc=f"{label}: compile/warm-up"):
        _, dt = timed_call(fn, device)
        warm.append(dt)
    c1 = compile_counts()
    reset_peak_memory(device)
    clock, out = Clock(device), None
    sync(device)
    clock.mark()
    for _ in progress(range(iters), desc=f"{label}: timed forwards"):
        out = fn()
        clock.mark()
    times = clock.intervals_ms()
    c2 = compile_counts()
    res = {"warmup_s": round(warm[0], 3), "warmup_all_s": [round(x, 3) for x in warm],
           "step_ms_median": _r(median(times)), "step_ms_min": _r(min(times) if times else None),
           "denoiser_it_per_s": _r(1e3 / median(times) if times else None),
           "compiled_in_warmup": counts_delta(c0, c1), "recompiles_in_timed_runs": counts_delta(c1, c2)}
    res.update(peak_memory_mb(device))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return {"result": res, "output": out}


def _r(x: Optional[float], nd: int = 3) -> Optional[float]:
    return None if x is None else round(float(x), nd)
