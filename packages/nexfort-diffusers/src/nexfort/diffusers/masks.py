"""Attention masks repeated per head without fixing the batch size of a dynamic graph.

diffusers' ``Attention.prepare_attention_mask`` repeats the mask once per head with
``repeat_interleave(heads, dim=0, output_size=...)``. Under ``dynamic=True``, torch 2.11's Dynamo turns that call
into the guard ``Eq(heads * batch, <first batch x heads>)`` and the mask's batch size (and with it the batch of
every input: the latents, the timestep) becomes a constant: every new batch size recompiles the denoiser
(measured: PixArt-α, batch 1 -> 4, H200 and CPU, torch 2.11; torch 2.13 keeps it symbolic). Repeating a tensor
per head along a dimension is ``unsqueeze + expand + reshape``: the same values, and no guard.
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any, Callable, Optional

import torch

from nexfort.core.api import patches
from nexfort.diffusers._classes import is_class as _is_class
from nexfort.diffusers.patches import ATTENTION_MASK

logger = logging.getLogger(__name__)
#: the parameters of diffusers' ``Attention.prepare_attention_mask`` that the guard-free version passes on
_MASK_PARAMS = ("self", "attention_mask", "target_length", "batch_size", "out_dim")
#: diffusers' own methods (attention_processor.Attention's; attention.AttentionModuleMixin's in newer versions)
_KNOWN_MASK_METHODS = ("Attention.prepare_attention_mask", "AttentionModuleMixin.prepare_attention_mask")


def _repeat_per_head(mask: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """``mask.repeat_interleave(heads, dim=dim)`` for an integer ``heads``, as a view-and-copy (no guard)."""
    shape = list(mask.shape)
    expanded = mask.unsqueeze(dim + 1).expand(*shape[: dim + 1], heads, *shape[dim + 1:])
    return expanded.reshape(*shape[:dim], shape[dim] * heads, *shape[dim + 1:])


def _guard_free_prepare_attention_mask(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Attention.prepare_attention_mask`` with the per-head repeat of :func:`_repeat_per_head`; diffusers' own
    method (``original``) still pads the mask (called with ``batch_size=0``: nothing to repeat). ``original``
    is held by the closure: Dynamo cannot look a method up on diffusers' ``Attention`` class itself (an
    ``allow_in_graph`` class there), so no ``type(self)`` in here."""

    def prepare_attention_mask(
        self: Any, attention_mask: Optional[torch.Tensor], target_length: int, batch_size: int, out_dim: int = 3
    ) -> Optional[torch.Tensor]:
        if attention_mask is None or out_dim not in (3, 4):
            return original(self, attention_mask, target_length, batch_size, out_dim)
        mask = original(self, attention_mask, target_length, 0, 3)  # padding only
        heads = int(self.heads)
        if out_dim == 3:
            if mask.shape[0] < batch_size * heads:
                mask = _repeat_per_head(mask, heads, 0)
            return mask
        return _repeat_per_head(mask.unsqueeze(1), heads, 1)

    return prepare_attention_mask


def make_attention_masks_dynamic(module: torch.nn.Module) -> int:
    """Give diffusers' ``Attention`` instances in ``module`` the guard-free ``prepare_attention_mask``; returns
    how many were patched (0 for a diffusers version whose ``Attention`` has no such method). Recorded as the patch
    ``diffusers.Attention.prepare_attention_mask``: ``nexfort.core.patches.restore`` undoes it."""
    n, left = 0, []
    for name, m in module.named_modules():
        if getattr(m, "_nexfort_mask", False) or not callable(getattr(type(m), "prepare_attention_mask", None)):
            continue
        if not _is_class(m, "Attention"):
            continue
        why = _mask_unknown(m)
        if why:  # an Attention (of another diffusers version, or a subclass) we do not know: left alone
            left.append(f"{name or type(m).__name__}: {why}")
            continue
        patched = _guard_free_prepare_attention_mask(type(m).prepare_attention_mask)
        patches.set_attr(m, "prepare_attention_mask", types.MethodType(patched, m), ATTENTION_MASK)
        patches.set_attr(m, "_nexfort_mask", True, ATTENTION_MASK)
        n += 1
    if left:
        logger.debug("nexfort: %s: attention masks of %d Attention left alone (%s)", type(module).__name__,
                     len(left), "; ".join(left[:3]) + (" ..." if len(left) > 3 else ""))
    return n


def _mask_unknown(m: Any) -> Optional[str]:
    """Why the guard-free ``prepare_attention_mask`` may not compute what ``m``'s does (None: it does): no
    integer ``heads``, or a method other than diffusers' ``Attention.prepare_attention_mask`` with its
    parameters (``attention_mask, target_length, batch_size, out_dim``)."""
    if type(getattr(m, "heads", None)) is not int:
        return "no integer heads"
    fn = type(m).prepare_attention_mask
    if getattr(fn, "__qualname__", "") not in _KNOWN_MASK_METHODS:
        return f"its prepare_attention_mask is {getattr(fn, '__qualname__', fn)}"
    try:
        params = tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return "its prepare_attention_mask has no signature"
    if params != _MASK_PARAMS:
        return f"its prepare_attention_mask takes ({', '.join(params)})"
    return None
