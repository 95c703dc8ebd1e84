"""Persistent row reductions for wider rows (a plugin: Inductor's heuristic, scoped to nexfort's compiles).

Inductor writes a reduction over a row (LayerNorm's mean and variance, a row's absolute maximum for fp8
scales) as a *persistent* kernel, the whole row in registers, only when the row has at most 1024 elements;
a wider row gets a *looped* kernel that walks the row once per dependent reduction and once more to write. The
diffusion transformers' rows are wider: PixArt's hidden size is 1152, its feed-forward 4608, SD3's 1536, FLUX's
3072. A LayerNorm + adaLN modulation over 1152 columns is looped, and with ``quant`` the fp8 activation scale
(a second reduction over the normalised row) makes it walk the row again.

``options.reductions.persistent_max`` (0: Inductor's own threshold) raises the limit for inner reductions to
that many elements with a subclass of Inductor's ``InductorChoices`` (its heuristics handler), only for nexfort's
compiles: the handler is installed around each graph's lowering (``nexfort_compile_context``) and the previous
one restored after, never process-wide. The same class is also set as ``torch._inductor.config.
inductor_choices_class`` for that compile, which is what Inductor's FX-graph cache key records (the class by its
qualified name on torch 2.11, its ``uuid()`` on later releases): each limit is its own class, named after it, so a
graph cached under another limit (or none) is never returned for this one. (The config alone would not do: Inductor
reads it once per thread and keeps that handler.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, ContextManager, Dict, Iterator, List, Mapping, Optional

from nexfort.core.api import hookimpl, options_of

NAMESPACE = "reductions"
_MAX = 1 << 16


@dataclasses.dataclass
class ReductionOptions:
    """``options.reductions.*``."""

    # inner reductions over rows of up to this many elements are persistent (the row in registers); 0 keeps
    # Inductor's threshold (1024)
    persistent_max: int = 0


def missing_pieces() -> List[str]:
    """What this torch lacks for the option (empty: it has everything): Inductor's choices handler
    (``torch._inductor.choices.InductorChoices.should_use_persistent_reduction``, ``V.set_choices_handler``),
    its reduction hints and ``config.inductor_choices_class`` (torch 2.6+)."""
    missing = []
    try:
        from torch._inductor.choices import InductorChoices
    except ImportError:
        InductorChoices = None
    if not hasattr(InductorChoices, "should_use_persistent_reduction"):
        missing.append("torch._inductor.choices.InductorChoices.should_use_persistent_reduction")
    try:
        from torch._inductor.runtime.hints import ReductionHint  # noqa: F401
    except ImportError:
        missing.append("torch._inductor.runtime.hints.ReductionHint")
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.virtualized import V
    except ImportError:  # pragma: no cover - torch without Inductor
        return missing + ["torch._inductor"]
    if not hasattr(V, "set_choices_handler"):
        missing.append("torch._inductor.virtualized.V.set_choices_handler")
    if not hasattr(inductor_config, "inductor_choices_class"):
        missing.append("torch._inductor.config.inductor_choices_class")
    return missing


def choices_class(limit: int) -> type:
    """The ``InductorChoices`` subclass whose inner reductions are persistent up to ``limit`` elements (one class per
    limit, a module attribute so that it pickles by name)."""
    name = f"PersistentReductionsUpTo{int(limit)}"
    module = sys.modules[__name__]
    cls = getattr(module, name, None)
    if cls is not None:
        return cls
    from torch._inductor import config as inductor_config
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint

    def should_use_persistent_reduction(features: Any, cooperative_reduction: bool) -> bool:
        if (inductor_config.triton.persistent_reductions and not cooperative_reduction
                and features.get_reduction_hint() == ReductionHint.INNER):
            from torch._inductor.virtualized import V

            if V.graph.sizevars.statically_known_leq(features.reduction_numel, int(limit)):
                return True
        return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    def uuid(self: Any) -> str:  # torch >= 2.12 keys its FX-graph cache by this
        return f"nexfort.passes.reductions.{name}"

    cls = type(name, (InductorChoices,), {
        "should_use_persistent_reduction": staticmethod(should_use_persistent_reduction),
        "uuid": uuid,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"Inductor's choices, with inner reductions over up to {int(limit)} elements persistent.",
    })
    setattr(module, name, cls)
    return cls


def _limit(config: Any) -> int:
    """``options.reductions.persistent_max`` of ``config`` (its default where the namespace is absent)."""
    return int(options_of(config, NAMESPACE, ReductionOptions).persistent_max)


@hookimpl
def nexfort_config_schema() -> Optional[Mapping[str, type]]:
    return {NAMESPACE: ReductionOptions}


@hookimpl
def nexfort_validate_config(config: Any) -> Optional[List[str]]:
    """``reductions.persistent_max`` is 0 (Inductor's threshold) or between 1024 and 65536."""
    from nexfort.core.api import shown

    value = _limit(config)
    if value != 0 and not 1024 <= value <= _MAX:
        return [f"Option 'reductions.persistent_max' must be 0 (Inductor's own threshold, 1024) or between 1024 and "
                f"{_MAX} (the widest row kept in registers), got {shown(value)}."]
    missing = missing_pieces() if value != 0 else []
    if missing:
        import torch

        return [f"Option 'reductions.persistent_max' ({value}) needs Inductor's choices handler (torch 2.6+); torch "
                f"{torch.__version__} lacks {', '.join(missing)}. Leave it at 0 on this torch."]
    return None


@hookimpl
def nexfort_inductor_config(config: Any) -> Optional[Dict[str, Any]]:
    value = _limit(config)
    if value <= 0:
        return None
    try:
        from torch._inductor import config as inductor_config
    except ImportError:  # pragma: no cover - torch without Inductor
        return None
    if not hasattr(inductor_config, "inductor_choices_class"):  # pragma: no cover - refused by validation
        return None
    return {"inductor_choices_class": choices_class(value)}


@hookimpl
def nexfort_compile_context(config: Any) -> Optional[ContextManager[None]]:
    value = _limit(config)
    if value <= 0:
        return None
    try:
        from torch._inductor.virtualized import V
    except ImportError:  # pragma: no cover
        return None
    if not hasattr(V, "set_choices_handler"):
        return None
    return _installed(choices_class(value))


@contextlib.contextmanager
def _installed(cls: type) -> Iterator[None]:
    from torch._inductor.virtualized import V

    with V.set_choices_handler(cls()):
        yield
