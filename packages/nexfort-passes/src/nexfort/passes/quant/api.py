"""``quantize_``: replace a model's ``nn.Linear`` layers in place with the quantized layers a config selects."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional, Type

import torch


class QuantizationError(ValueError):
    """A quantization config or model that cannot be quantized as asked (raised before anything changes)."""


class QuantConfig:
    """Base of the quantization configs: each subclass is a dataclass with a ``name`` (``options.quant.type``)."""

    name = ""

    def check(self, model: torch.nn.Module) -> None:
        """Raise :class:`QuantizationError` where this method cannot run for ``model`` (before anything changes)."""

    def accepts(self, linear: torch.nn.Linear) -> bool:
        """Whether this method can quantize ``linear`` (a layer it cannot take is left alone)."""
        return True


# handler(model, [(fqn, linear)], config) -> number of layers replaced
Handler = Callable[[torch.nn.Module, List[Any], QuantConfig], int]
_HANDLERS: Dict[Type[QuantConfig], Handler] = {}
_BY_NAME: Dict[str, Type[QuantConfig]] = {}


def register_handler(config_cls: Type[QuantConfig]) -> Callable[[Handler], Handler]:
    """Register the handler that applies ``config_cls`` (a decorator)."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = fn
        _BY_NAME[config_cls.name] = config_cls
        return fn

    return deco


def config_for(name: str, **kwargs: Any) -> QuantConfig:
    """The config of the method called ``name`` (``options.quant.type``), with ``kwargs``."""
    cls = _BY_NAME.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise QuantizationError(f"Unknown quantization type {name!r}{hint} Valid types: {', '.join(sorted(_BY_NAME))}.")
    return cls(**kwargs)


def excluding(names: Iterable[str]) -> Callable[[torch.nn.Module, str], bool]:
    """A ``filter_fn`` for :func:`quantize_` that leaves alone the layers whose qualified name contains one of
    ``names``."""
    names = [str(s) for s in names]
    return lambda linear, fqn: not any(s in fqn for s in names)


def quantize_(model: torch.nn.Module, config: QuantConfig,
              filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> int:
    """Replace, in place, the ``nn.Linear`` layers of ``model`` that ``config`` accepts (and ``filter_fn(linear,
    fqn)`` keeps, where given) with quantized layers; return how many were replaced. ``model`` itself may not be
    a bare ``nn.Linear`` (it cannot replace itself in place: wrap it)."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise QuantizationError(f"quantize_: no handler for {type(config).__name__}; registered configs: "
                                f"{', '.join(sorted(c.__name__ for c in _HANDLERS))}.")
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.nn.Linear):
        raise QuantizationError(f"quantize_: expected a module containing nn.Linear layers, got "
                                f"{type(model).__name__}.")
    config.check(model)
    layers = [(fqn, m) for fqn, m in model.named_modules()
              if type(m) is torch.nn.Linear and config.accepts(m) and (filter_fn is None or filter_fn(m, fqn))]
    n = handler(model, layers, config) if layers else 0
    from nexfort.core import counters

    counters["quant"][config.name] += n
    return n


def set_submodule(model: torch.nn.Module, fqn: str, new: torch.nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
