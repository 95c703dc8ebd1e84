"""Why a warm process still tunes: one JSON line per Triton kernel that autotunes or runs coordinate descent.

Diagnostic for ``cache_warm_start.py`` (``NEXFORT_BENCH_TRACE_AUTOTUNE=<file>``): wraps Inductor's
``CachingAutotuner`` (``benchmark_all_configs``, ``coordinate_descent_tuning``) and the static autotuners loaded
from the FX graph cache (``StaticAutotunerFuture.result``) and records, per kernel, where its autotune-cache file
is looked up, whether it exists, what the lookup said and how long the tuning took. Changes no result.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _best_config_path(kernel: Any) -> str:
    try:
        from torch._inductor.runtime.autotune_cache import AutotuneCache

        cache = AutotuneCache.create(kernel.inductor_meta, kernel.filename, "x")
        return cache.local_cache[1] if cache and cache.local_cache else ""
    except Exception as e:  # noqa: BLE001 - diagnostics never fail the run
        return f"<{type(e).__name__}>"


def _describe(kernel: Any) -> dict:
    path = _best_config_path(kernel)
    return {"kernel": kernel.inductor_meta.get("kernel_name"), "filename": kernel.filename,
            "best_config_file": path, "best_config_exists": bool(path) and os.path.exists(path),
            "cache_info": {k: str(v) for k, v in (getattr(kernel, "autotune_cache_info", None) or {}).items()}}


def install(path: str) -> None:
    from torch._inductor import codecache
    from torch._inductor.runtime import triton_heuristics as th

    def log(**record: Any) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    cls = th.CachingAutotuner
    coordesc, bench_all = cls.coordinate_descent_tuning, cls.benchmark_all_configs

    def coordinate_descent_tuning(self: Any, launcher: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = coordesc(self, launcher, *args, **kwargs)
        log(event="coordesc", s=round(time.perf_counter() - t, 3), start=repr(launcher.config),
            start_found_by_coordesc=getattr(launcher.config, "found_by_coordesc", None), best=repr(out.config),
            **_describe(self))
        return out

    def benchmark_all_configs(self: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = bench_all(self, *args, **kwargs)
        log(event="benchmark_all_configs", s=round(time.perf_counter() - t, 3), n=len(out), **_describe(self))
        return out

    cls.coordinate_descent_tuning, cls.benchmark_all_configs = coordinate_descent_tuning, benchmark_all_configs
    future_cls = getattr(codecache, "StaticAutotunerFuture", None)
    if future_cls is not None:
        result = future_cls.result

        def static_result(self: Any) -> Any:
            n = len(self.static_autotuner.compile_results)
            t = time.perf_counter()
            out = result(self)
            log(event="static_load", s=round(time.perf_counter() - t, 3), configs_before=n,
                configs_after=len(out.compile_results),
                found_by_coordesc=[getattr(r.config, "found_by_coordesc", None) for r in out.compile_results],
                **_describe(out))
            return out

        future_cls.result = static_result
