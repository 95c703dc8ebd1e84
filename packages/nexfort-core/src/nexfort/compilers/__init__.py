"""``nexfort_compile``: the same as ``torch.compile(model, backend="nexfort", options=...)``, plus what needs
the module itself (memory format, module transforms of the plugins) and Dynamo's own ``dynamic``/``fullgraph``."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Union

import torch

from nexfort.core.backend import NexfortBackend, check_features
from nexfort.core.config import resolve_config
from nexfort.core.plugins import get_plugin_manager

logger = logging.getLogger("nexfort")

__all__ = ["nexfort_compile", "prepare_module"]


def prepare_module(module: torch.nn.Module, cfg: Any) -> list:
    """Apply the memory format and the plugins' module transforms in place; return what was done."""
    done = []
    if cfg.memory_format == "channels_last" and any(
            isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in module.modules()):
        module.to(memory_format=torch.channels_last)
        done.append("channels_last")
    elif cfg.memory_format == "contiguous":
        module.to(memory_format=torch.contiguous_format)
    for desc in get_plugin_manager().hook.nexfort_transform_module(module=module, config=cfg):
        if desc:
            done.append(desc)
    if done:
        logger.info("nexfort: prepared %s: %s", type(module).__name__, "; ".join(done))
    return done


def nexfort_compile(model: Union[torch.nn.Module, Callable], mode: Optional[str] = None,
                    options: Optional[Mapping[str, Any]] = None, *, dynamic: Optional[bool] = None,
                    fullgraph: Optional[bool] = None, memory_format: Any = None, **kwargs: Any) -> Any:
    """Compile ``model`` (a module or a function) with nexfort.

    Takes the same keys as ``torch.compile(..., backend="nexfort", options={...})``: ``mode``, ``dynamic``,
    ``fullgraph``, ``memory_format`` and ``options`` (a mapping or JSON string of namespaced knobs). Namespaced
    knobs may also be given as keyword arguments (``nexfort_compile(m, **{"inductor.max_autotune": True})``).
    The whole configuration is validated before anything is compiled.
    """
    spec = {"mode": mode, "options": options, "dynamic": dynamic, "fullgraph": fullgraph,
            "memory_format": memory_format, **kwargs}
    cfg = resolve_config({k: v for k, v in spec.items() if v is not None})
    check_features(cfg)
    if isinstance(model, torch.nn.Module):
        prepare_module(model, cfg)
    return torch.compile(model, backend=NexfortBackend(cfg), dynamic=cfg.dynamic, fullgraph=bool(cfg.fullgraph))
