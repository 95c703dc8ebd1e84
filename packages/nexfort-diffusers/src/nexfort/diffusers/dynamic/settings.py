"""Dynamo's shape settings for one graph over every size, feature-detected and scoped to each compiled call.

No *duck sizing* (two dimensions that happen to be equal at the first call, e.g. a square latent, would otherwise
be assumed equal forever and the first non-square size recompiles), through ``torch.fx.experimental._config``
where torch has it, else through marks on the inputs (torch 2.1-2.4); Python ints of modules kept constants
where Dynamo would make them symbols (torch 2.1-2.4).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, Optional, Sequence

import torch

from nexfort.diffusers.dynamic.upsample import always_forward_upsample_sizes


@functools.lru_cache(maxsize=None)
def dynamic_shapes_patches() -> Dict[str, Any]:
    """``torch.fx.experimental._config`` settings for traps-free dynamic shapes (only those this torch has)."""
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # pragma: no cover (torch 2.1: no such settings; duck sizing stays on)
        return {}
    wanted = {"use_duck_shape": False}
    return {k: v for k, v in wanted.items() if hasattr(fx_config, k)}


def mark_inputs_dynamic(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    """No duck sizing for a torch without ``use_duck_shape`` (2.1-2.4: duck sizing is a ``ShapeEnv`` default
    there that Dynamo does not expose): ``torch._dynamo.maybe_mark_dynamic`` on every dimension but the first
    (the batch) of the call's tensor inputs (also inside dicts, lists and tuples, e.g. SDXL's
    ``added_cond_kwargs``) gives each its own symbol, so a square first latent is not assumed square forever.
    Batch dimensions stay duck-sized: the inputs' batch sizes always agree, and torch 2.1's Inductor cannot
    lower the attention mask's broadcast when the mask's batch is a symbol of its own. Sizes 0 and 1 are still
    specialized (no error, unlike ``mark_dynamic``), as they are by ``dynamic=True``. Returns how many tensors
    were marked."""
    mark = getattr(torch._dynamo, "maybe_mark_dynamic", None)
    if mark is None:  # pragma: no cover (every supported torch has it)
        return 0
    n = 0
    todo = list(args) + list(kwargs.values())
    while todo:
        v = todo.pop()
        if isinstance(v, torch.Tensor):
            for d in range(1, v.dim()):
                mark(v, d)
            n += 1
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, (list, tuple)):
            todo.extend(v)
    return n


@functools.lru_cache(maxsize=None)
def dynamo_patches() -> Dict[str, Any]:
    """``torch._dynamo.config`` settings for dynamic shapes on a torch whose Dynamo has no
    ``allow_unspec_int_on_nn_module`` (2.1-2.4): there a module compiled in place (``nn.Module.compile``) is
    traced with ``self`` as a local, so under ``dynamic=True`` every int attribute read through it
    (``self.time_proj.num_channels``, ``self.num_upsamplers``) becomes a symbol, and Dynamo guards on how
    those symbols compare with the input sizes: torch 2.4 compiled the tiny SDXL UNet again for a batch equal
    to ``2 * num_channels // 2``. ``specialize_int`` keeps Python ints constants (as the newer torch does for
    module ints); the sizes stay the only symbols. Empty on the newer torch."""
    cfg = torch._dynamo.config
    if hasattr(cfg, "allow_unspec_int_on_nn_module") or not hasattr(cfg, "specialize_int"):
        return {}
    return {"specialize_int": True}


@contextlib.contextmanager
def dynamic_shapes_context(unet: Optional[torch.nn.Module] = None) -> Iterator[None]:
    """:func:`dynamic_shapes_patches` and :func:`dynamo_patches` for the duration of a compiled call and, given a
    ``unet`` (see :func:`forwards_upsample_sizes`), :func:`always_forward_upsample_sizes` on it."""
    with contextlib.ExitStack() as stack:
        patches = dynamic_shapes_patches()
        if patches:
            from torch.fx.experimental import _config as fx_config

            stack.enter_context(fx_config.patch(**patches))
        dynamo = dynamo_patches()
        if dynamo:
            stack.enter_context(torch._dynamo.config.patch(**dynamo))
        if unet is not None:
            stack.enter_context(always_forward_upsample_sizes(unet))
        yield
