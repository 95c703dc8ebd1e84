"""The options of a pass plugin (``options.<namespace>.*``) and the rule that turns its pass on, shared by the
passes that ``max-optimize`` turns on (``attention``, ``linear_gelu``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple, Type, TypeVar

T = TypeVar("T")


def pass_options(config: Any, namespace: str, cls: Type[T]) -> Tuple[T, bool]:
    """``(options, on)``: the dataclass ``cls`` filled from ``options.<namespace>`` (its defaults where absent), and
    whether the pass runs: its ``enabled`` field when set, else the ``max-optimize`` flag."""
    opts = config.options.get(namespace) if hasattr(config.options, "get") else None
    options = cls(**{f.name: opts.get(f.name, f.default) for f in dataclasses.fields(cls)} if opts is not None else {})
    enabled = getattr(options, "enabled", None)
    return options, bool(config.flags.max_optimize) if enabled is None else bool(enabled)
