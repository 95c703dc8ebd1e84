"""nexfort-core's patches of torch's internals, registered in :mod:`nexfort.core.patches` (``docs/patches.md``).

- ``torch.guard_namespace``: names missing from the namespace Dynamo's shape guards run in, held by the backend
  until the Dynamo compilation that called it ends (the guards are built then and keep their own copy).
- ``torch.inductor.recheck_autotune_cache``: torch's fix for coordinate descent re-running on a warm cache and the
  kernel path mapping (:mod:`nexfort.core.compat_autotune`), held while a graph compiles with the FX graph cache on.
- ``torch.inductor.record_tuned_kernels``: records the kernels run-time tuning chose, held by whoever ships them
  (a cache plugin), from a graph's compilation to the end of its first call.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from nexfort.core import compat_autotune
from nexfort.core.patches import Patch, register

GUARD_NAMESPACE = "torch.guard_namespace"
RECHECK_AUTOTUNE_CACHE = "torch.inductor.recheck_autotune_cache"
RECORD_TUNED_KERNELS = "torch.inductor.record_tuned_kernels"


def missing_guard_names() -> Dict[str, Callable[..., Any]]:
    """The sympy functions of torch's symbolic shapes that a guard's code may call and that the guards' namespace
    (``symbolic_shapes.SYMPY_INTERP``) lacks, with their Python meaning (feature-detected: only functions this torch
    has; empty where nothing is missing)."""
    try:
        from torch.fx.experimental import symbolic_shapes
        from torch.utils._sympy import functions
    except ImportError:  # pragma: no cover (torch without symbolic shapes)
        return {}
    interp = getattr(symbolic_shapes, "SYMPY_INTERP", None)
    if not isinstance(interp, dict):
        return {}
    import math
    import operator

    wanted: Dict[str, Callable[..., Any]] = {
        "PowByNatural": operator.pow, "FloatPow": math.pow, "ToFloat": float, "FloatTrueDiv": operator.truediv,
        "TruncToFloat": lambda x: float(math.trunc(x)), "CeilDiv": lambda a, b: -(-a // b),
        "CleanDiv": operator.floordiv, "LShift": operator.lshift, "RShift": operator.rshift,
        "Where": lambda c, p, q: p if c else q,
    }
    for fn in ("sqrt", "exp", "log", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh"):
        wanted[f"OpaqueUnaryFn_{fn}"] = getattr(math, fn)
    return {k: v for k, v in wanted.items() if hasattr(functions, k) and k not in interp}


def complete_guard_namespace() -> Optional[Callable[[], None]]:
    """Add :func:`missing_guard_names` to ``SYMPY_INTERP``; return the undo (None: nothing was missing).

    Dynamo evaluates a shape guard as Python code in a copy of ``symbolic_shapes.SYMPY_INTERP`` taken when it builds
    the guards. Where that namespace lacks a function torch's sympy layer produces (torch 2.4: ``PowByNatural``,
    from ``2 ** n`` of a symbolic int such as the SDXL UNet's ``2 ** self.num_upsamplers`` under ``dynamic=True``;
    ``ToFloat``, from diffusers' ``Upsample2D`` with an explicit output size), the guard raises ``NameError`` on
    every call, reads as failed, and the frame recompiles on every call."""
    added = missing_guard_names()
    if not added:
        return None
    from torch.fx.experimental import symbolic_shapes

    interp = symbolic_shapes.SYMPY_INTERP
    interp.update(added)

    def undo() -> None:
        for k, v in added.items():
            if interp.get(k) is v:
                del interp[k]

    return undo


register(Patch(
    name=GUARD_NAMESPACE,
    target="torch.fx.experimental.symbolic_shapes.SYMPY_INTERP",
    detects="the sympy functions of torch.utils._sympy.functions that the namespace lacks (PowByNatural, ToFloat, "
            "FloatPow, CeilDiv, OpaqueUnaryFn_*, ...)",
    needed="every graph the nexfort backend compiles: from the backend's call to the end of the Dynamo compilation "
           "(the guards built then copy the namespace); else a shape guard with 2 ** n or an explicit upsample size "
           "raises NameError and the frame recompiles on every call",
    undo="the added names are deleted from SYMPY_INTERP when the compilation ends (Dynamo's compile-end callback; "
         "on a torch without one, < 2.3, at the compiled graph's first call, its collection, or the compile's "
         "error: patches.compilation_holds)",
    versions="every torch whose sympy layer has functions the namespace lacks (2.2: CeilDiv, CleanDiv, LShift, "
             "RShift, Where; 2.4+: PowByNatural, ToFloat, ...)",
    apply=complete_guard_namespace,
))

register(Patch(
    name=RECHECK_AUTOTUNE_CACHE,
    target="torch._inductor.runtime.triton_heuristics.CachingAutotuner.recheck_autotune_cache",
    detects="the method exists (torch 2.8+) and, for the coordinate-descent fix, its source lacks "
            "'compile_result.config.found_by_coordesc' (the upstream fix)",
    needed="while a graph compiles with Inductor's FX graph cache on (cache-all, or inductor.fx_graph_cache): "
           "Triton kernels loaded from that cache call it; the fix keeps coordinate descent from running again in "
           "a warm process, the path mapping keeps a warm process on another machine in its own autotune cache",
    undo="the class's original method is put back when the compilation returns",
    versions="torch with the method (2.8+; older torch: nothing installed); the coordinate-descent fix only where "
             "the source lacks it (torch 2.11 has the bug, 2.13 the fix); the path mapping on every torch with it",
    upstream="https://github.com/pytorch/pytorch/issues/172819 (fix: pytorch/pytorch#173391)",
    apply=compat_autotune.install_warm_autotune_fix,
))

register(Patch(
    name=RECORD_TUNED_KERNELS,
    target="torch._inductor.runtime.triton_heuristics.CachingAutotuner.coordinate_descent_tuning and "
           ".autotune_to_one_config",
    detects="both methods are defined on CachingAutotuner (torch._inductor.runtime, torch 2.2+; 2.1: nothing)",
    needed="while a cache ships the Triton kernels a graph's first call tunes: from the graph's compilation to the "
           "end of its first call (the cache plugin holds it; nothing else does)",
    undo="the class's original methods are put back when the last holder lets go (after the first call, or when "
         "the compiled graph is garbage-collected)",
    versions="every torch whose CachingAutotuner defines both; not a fix: nexfort's own bookkeeping",
    apply=compat_autotune.start_recording,
))
