"""A torch fix nexfort applies where the installed torch lacks it: coordinate descent re-running on a warm cache.

torch's issue pytorch/pytorch#172819, fixed upstream by pytorch/pytorch#173391 (torch 2.11 has the bug, 2.13 has
the fix): a Triton kernel loaded from Inductor's FX graph cache with the static CUDA launcher rechecks the autotune
cache (``CachingAutotuner.recheck_autotune_cache``), but

1. a kernel compiled with one config never takes the cache-hit branch (``len(configs) > 1``), and
2. where the cached best config matches a compiled one, its ``found_by_coordesc`` mark is not copied to that
   compiled config, which is the one ``CachingAutotuner.run`` checks,

so coordinate-descent tuning runs again in every warm process although its result is in the cache. Measured on an
H100 (torch 2.11, PixArt-alpha 1024x1024, ``max-optimize:max-autotune:low-precision:cache-all``): 67-112 s of the
warm process's first image, about as long as in the cold one.

:func:`fix_coordesc_warm_cache` installs the upstream method (:func:`recheck_autotune_cache`, the same code) where
the installed one lacks the fix (read from its source), once per process; the backend calls it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

logger = logging.getLogger("nexfort")
FIX_MARK = "compile_result.config.found_by_coordesc"


def needs_fix(method: Callable) -> bool:
    """Whether ``recheck_autotune_cache`` is the version with the bug (its source lacks the upstream fix)."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):  # no source to read: leave torch alone
        return False
    return FIX_MARK not in source and "found_by_coordesc" in source


def recheck_autotune_cache(self: Any, reload_kernel_from_src: Callable[[], Any]) -> None:
    """``CachingAutotuner.recheck_autotune_cache`` as fixed upstream (pytorch/pytorch#173391)."""
    from torch._inductor.runtime import triton_heuristics as th

    assert self.is_statically_launchable()
    configs = [result.config for result in self.compile_results]
    cached_configs, _, autotune_cache_info = th.check_autotune_cache(configs, self.filename, self.inductor_meta)
    self.autotune_cache_info = autotune_cache_info
    if len(cached_configs) != 1:  # no autotune cache hit
        return
    best_config = cached_configs[0]
    found_by_coordesc = getattr(best_config, "found_by_coordesc", False)
    best_config_hash = th.triton_config_to_hashable(best_config)
    for compile_result in self.compile_results:
        if th.triton_config_to_hashable(compile_result.config) == best_config_hash:
            compile_result.config.found_by_coordesc = found_by_coordesc
            self.compile_results = [compile_result]
            return
    # found at run time (coordinate descent) after the static autotuner was saved: compile it now
    with th.dynamo_timed("CachingAutotuner.slow_precompile_config"):
        if self.fn.fn is None:
            self.fn = reload_kernel_from_src().fn
        self.compile_results = [self._precompile_config(best_config)]


@functools.lru_cache(maxsize=None)
def fix_coordesc_warm_cache() -> bool:
    """Install :func:`recheck_autotune_cache` where the installed torch has the bug; whether it did."""
    try:
        from torch._inductor.runtime import triton_heuristics as th
    except Exception:  # noqa: BLE001 - torch without that module (2.1) or without Triton support
        return False
    cls = getattr(th, "CachingAutotuner", None)
    method = getattr(cls, "recheck_autotune_cache", None)
    if method is None or not all(hasattr(th, n) for n in ("check_autotune_cache", "triton_config_to_hashable",
                                                           "dynamo_timed")):
        return False
    if not needs_fix(method):
        return False
    cls.recheck_autotune_cache = recheck_autotune_cache
    logger.info("nexfort: applied torch's fix for coordinate descent re-running on a warm cache "
                "(pytorch/pytorch#173391)")
    return True
