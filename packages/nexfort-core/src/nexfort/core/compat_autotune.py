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

A second problem, in every torch with static autotuners (2.8+, upstream too): the autotuner pickled into the FX graph
cache keeps the compiling process's kernel path (``filename``) and its autotune cache (``save_cache_hook``). A
warm process with another ``TORCHINDUCTOR_CACHE_DIR`` (another machine, a container) looks up and stores its
tuning results in a directory that is not its own: it misses what nexfort loaded into its own cache (and tunes
again), or, where that directory exists, reads and overwrites another process's results. Measured on an H100:
7 kernels tuned again on "another machine" after a warm process had overwritten their entries (30-40 s).
:func:`local_kernel_path` maps the path into this process's cache (same layout, ``<dir>/<2 chars>/<name>.py``).
A reduction kernel kept with a config from coordinate descent also skips occupancy-driven block halving
(``dynamic_scale_rblock``), which the cold process ran before it tuned.

:func:`install_warm_autotune_fix` installs both (the patch registry applies it while a graph compiles with the FX
graph cache on): the upstream method (:func:`recheck_autotune_cache`, the same code) where the installed one lacks
the fix (read from its source), and, around whichever method is in place, the path mapping.

:func:`start_recording` keeps, while the cache holds it, the Triton cache directories (``launcher.cache_hash``) of the
kernels that run-time tuning chose (coordinate descent, benchmarking of several configs): the cache plugin ships
only those of the ones compiled after a graph's compile-time save. Measured on an H100 (PixArt-alpha, max-autotune):
coordinate descent compiled 520 candidate kernels, 141 MB, of which about 80 are used.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any, Callable, FrozenSet, Optional, Set, Tuple

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


def local_kernel_path(filename: Optional[str], root: str) -> Optional[str]:
    """``filename`` (a kernel file in some Inductor cache) in the cache ``root``; unchanged where it is there
    already or does not have the cache's layout."""
    if not filename:
        return filename
    root = os.path.abspath(root)
    path = os.path.abspath(filename)
    if path.startswith(root + os.sep):
        return filename
    sub, name = os.path.split(path)
    sub = os.path.basename(sub)
    if len(sub) != 2 or not name.endswith(".py"):
        return filename
    return os.path.join(root, sub, name)


def with_local_filename(recheck: Callable) -> Callable:
    """``recheck`` preceded by moving the autotuner's kernel path and autotune cache into this process's cache, and
    followed, where it kept one config found by coordinate descent, by turning off block halving for it."""

    @functools.wraps(recheck)
    def recheck_autotune_cache_locally(self: Any, reload_kernel_from_src: Callable[[], Any]) -> None:
        try:
            from torch._inductor.runtime.cache_dir_utils import cache_dir

            local = local_kernel_path(self.filename, cache_dir())
        except Exception:  # noqa: BLE001 - internals moved: leave the autotuner as it is
            local = self.filename
        if local != self.filename:
            self.filename = local
            hook = getattr(self, "save_cache_hook", None)
            old = getattr(hook, "__self__", None)
            if getattr(old, "local_cache", None) and hasattr(old, "configs_hash"):
                from torch._inductor.runtime.autotune_cache import AutotuneCache

                new = AutotuneCache.create(self.inductor_meta, local, old.configs_hash)
                if new is not None:
                    self.save_cache_hook = new.save
        recheck(self, reload_kernel_from_src)
        results = getattr(self, "compile_results", None) or []
        if len(results) == 1 and getattr(results[0].config, "found_by_coordesc", False):
            # final: the cold process tuned it after block halving had its turn; halving again would add a config,
            # benchmark both and, where the new one wins, run coordinate descent again (measured: 8 kernels, 0.5-2 s)
            self.inductor_meta = {**self.inductor_meta, "dynamic_scale_rblock": False}

    recheck_autotune_cache_locally.nexfort_local_filename = True  # type: ignore[attr-defined]
    return recheck_autotune_cache_locally


def warm_autotune_method(method: Callable) -> Tuple[Tuple[str, ...], Callable]:
    """``(fixes, replacement)`` for the installed ``CachingAutotuner.recheck_autotune_cache`` ``method``: the
    upstream method (:func:`recheck_autotune_cache`) where ``method`` lacks the fix (read from its source) and can
    be replaced (``"coordesc"``: pytorch/pytorch#173391), wrapped in the kernel path mapping (``"local-filename"``)."""
    from torch._inductor.runtime import triton_heuristics as th

    fixes = []
    if needs_fix(method) and all(hasattr(th, n) for n in ("check_autotune_cache", "triton_config_to_hashable",
                                                           "dynamo_timed")):
        method = recheck_autotune_cache
        fixes.append("coordesc")
    fixes.append("local-filename")
    return tuple(fixes), with_local_filename(method)


def install_warm_autotune_fix() -> Optional[Callable[[], None]]:
    """Install :func:`warm_autotune_method` on ``CachingAutotuner``; return the undo (``None``: this torch has no
    such method, or it is nexfort's already: nothing installed). Applied through the patch registry
    (:mod:`nexfort.core.torch_patches`: ``torch.inductor.recheck_autotune_cache``), while a graph compiles with
    Inductor's FX graph cache on (what calls the method: kernels loaded from that cache)."""
    try:
        from torch._inductor.runtime import triton_heuristics as th
    except Exception:  # noqa: BLE001 - torch without that module (2.1) or without Triton support
        return None
    cls = getattr(th, "CachingAutotuner", None)
    original = cls.__dict__.get("recheck_autotune_cache") if cls is not None else None
    if original is None or getattr(original, "nexfort_local_filename", False):
        return None
    fixes, method = warm_autotune_method(original)
    cls.recheck_autotune_cache = method
    if "coordesc" in fixes and "coordesc" not in _announced:
        _announced.add("coordesc")
        logger.info("nexfort: applied torch's fix for coordinate descent re-running on a warm cache "
                    "(pytorch/pytorch#173391)")

    def undo() -> None:
        if cls.__dict__.get("recheck_autotune_cache") is method:
            cls.recheck_autotune_cache = original

    return undo


_announced: Set[str] = set()
_tuned_dirs: Set[str] = set()
_recording = False


def _record(launcher: Any) -> None:
    name = getattr(launcher, "cache_hash", None)
    if isinstance(name, str) and name:
        _tuned_dirs.add(name)


def recording_coordesc(method: Callable) -> Callable:
    """``CachingAutotuner.coordinate_descent_tuning`` that records the Triton directory of the launcher it returns."""

    @functools.wraps(method)
    def coordinate_descent_tuning(self: Any, launcher: Any, *args: Any, **kwargs: Any) -> Any:
        best = method(self, launcher, *args, **kwargs)
        _record(best)
        return best

    return coordinate_descent_tuning


def recording_autotune(method: Callable) -> Callable:
    """``CachingAutotuner.autotune_to_one_config`` that records the Triton directory of the launcher it keeps."""

    @functools.wraps(method)
    def autotune_to_one_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        for launcher in getattr(self, "launchers", None) or []:
            _record(launcher)
        return out

    return autotune_to_one_config


def start_recording() -> Optional[Callable[[], None]]:
    """Record the kernels run-time tuning chooses; return the undo (``None``: this torch's ``CachingAutotuner``
    lacks the methods, nothing installed). Applied through the patch registry (``torch.inductor.record_tuned_kernels``)
    while a cache needs it: from a graph's compilation to the end of its first call, where its kernels tune."""
    try:
        from torch._inductor.runtime import triton_heuristics as th
    except Exception:  # noqa: BLE001 - torch without that module (2.1) or without Triton support
        return None
    cls = getattr(th, "CachingAutotuner", None)
    names = ("coordinate_descent_tuning", "autotune_to_one_config")
    if cls is None or not all(n in cls.__dict__ for n in names):
        return None
    global _recording
    originals = {n: cls.__dict__[n] for n in names}
    installed = {"coordinate_descent_tuning": recording_coordesc(originals["coordinate_descent_tuning"]),
                 "autotune_to_one_config": recording_autotune(originals["autotune_to_one_config"])}
    for n, fn in installed.items():
        setattr(cls, n, fn)
    _recording = True

    def undo() -> None:
        global _recording
        for n, fn in installed.items():
            if cls.__dict__.get(n) is fn:
                setattr(cls, n, originals[n])
        _recording = False

    return undo


def tuned_kernel_dirs() -> Optional[FrozenSet[str]]:
    """The Triton cache directories of the kernels run-time tuning chose in this process (None: not recording now)."""
    return frozenset(_tuned_dirs) if _recording else None
