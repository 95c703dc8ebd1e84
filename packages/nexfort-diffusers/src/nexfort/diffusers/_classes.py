"""diffusers classes told by name, so that nothing here imports diffusers or depends on its module layout."""

from __future__ import annotations

from typing import Any


def from_diffusers(cls: type) -> bool:
    """Whether ``cls`` is defined in diffusers."""
    return cls.__module__.split(".", 1)[0] == "diffusers"


def is_class(module: Any, name: str) -> bool:
    """Whether ``module`` is an instance of diffusers' class ``name`` (or of a subclass of it)."""
    return any(c.__name__ == name and from_diffusers(c) for c in type(module).__mro__)
