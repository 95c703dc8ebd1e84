"""The options of a pass plugin (``options.<namespace>.*``) and the rule that turns its pass on, shared by the
passes that ``max-optimize`` turns on (``attention``, ``linear_gelu``, ``attention_kernel``)."""

from __future__ import annotations

from typing import Any, Tuple, Type, TypeVar

from nexfort.core.api import flag_on, options_of

T = TypeVar("T")


def pass_options(config: Any, namespace: str, cls: Type[T]) -> Tuple[T, bool]:
    """``(options, on)``: ``options.<namespace>`` as a frozen ``cls`` (:func:`nexfort.core.api.options_of`: its
    defaults where the configuration lacks the namespace), and whether the pass runs: its ``enabled`` field when
    set, else the ``max-optimize`` flag."""
    options = options_of(config, namespace, cls)
    enabled = getattr(options, "enabled", None)
    return options, flag_on(config, "max_optimize") if enabled is None else bool(enabled)
