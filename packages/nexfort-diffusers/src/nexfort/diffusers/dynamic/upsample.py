"""Upsampling that one graph serves at every size: diffusers' ``Upsample2D`` with explicit output sizes where
torch's Inductor gets nearest upsampling by a scale factor wrong (torch 2.2, detected), and a UNet that forwards
explicit upsample sizes at every resolution (one graph for latents that are multiples of its upsampling factor and
for the others)."""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator

import torch

from nexfort.core.api import patches
from nexfort.diffusers._classes import from_diffusers as _from_diffusers
from nexfort.diffusers._classes import is_class as _is_class
from nexfort.diffusers.patches import UPSAMPLE_SIZE


def _upsample_explicit_size_forward(
    self: Any, hidden_states: torch.Tensor, output_size: Any = None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """``Upsample2D.forward`` with the output size made explicit (2x the input's): diffusers then calls
    ``F.interpolate(size=...)`` instead of ``F.interpolate(scale_factor=2.0)``. Nearest upsampling by exactly 2x
    reads input index ``i // 2`` either way (eager, CPU and CUDA), so the result is identical."""
    if output_size is None:
        output_size = (hidden_states.shape[-2] * 2, hidden_states.shape[-1] * 2)
    return type(self).forward(self, hidden_states, output_size, *args, **kwargs)


def make_upsample_sizes_explicit(module: torch.nn.Module, force: bool = False, config: Any = None) -> int:
    """Where Inductor gets ``F.interpolate(scale_factor=2.0, mode="nearest")`` wrong under inference mode (torch
    2.2, see :func:`nexfort.core.api.inductor_upsample_nearest_ok`; checked only when ``module``
    has such upsamplers, and presumed wrong where it cannot be checked), make diffusers' ``Upsample2D``
    instances in ``module`` pass an explicit output size (:func:`_upsample_explicit_size_forward`); ``force``
    skips the check; ``config`` (nexfort's) lets the check's outcome be remembered between processes. Returns
    how many were patched (the patch ``diffusers.Upsample2D.forward``: ``nexfort.core.patches.restore`` undoes it)."""
    ups = [
        m
        for m in module.modules()
        if _is_class(m, "Upsample2D")
        and not getattr(m, "_nexfort_explicit", False)
        and getattr(m, "interpolate", False)
        and not getattr(m, "use_conv_transpose", False)
    ]
    if not ups:
        return 0
    if not force:
        from nexfort.core.api import inductor_upsample_nearest_ok

        if inductor_upsample_nearest_ok(config=config) is True:
            return 0
    for m in ups:
        patches.set_attr(m, "forward", types.MethodType(_upsample_explicit_size_forward, m), UPSAMPLE_SIZE)
        patches.set_attr(m, "_nexfort_explicit", True, UPSAMPLE_SIZE)
    return len(ups)


#: ``num_upsamplers`` seen by a compiled UNet under dynamic=True: ``2 ** 40`` divides no latent size
_ALWAYS_FORWARD = 40


def forwards_upsample_sizes(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a diffusers UNet that decides per call between upsampling by 2x and upsampling to
    the skip connection's size (``UNet2DConditionModel``: a latent height or width that is not a multiple of
    ``2 ** num_upsamplers`` takes the second path): two graphs under dynamic shapes."""
    n = getattr(module, "num_upsamplers", None)
    return type(n) is int and n > 0 and _from_diffusers(type(module))


@contextlib.contextmanager
def always_forward_upsample_sizes(module: torch.nn.Module) -> Iterator[None]:
    """For the duration of a compiled call, make ``module`` (see :func:`forwards_upsample_sizes`) take its
    explicit-size path at every size: ``num_upsamplers`` reads :data:`_ALWAYS_FORWARD`, so diffusers' test
    ``dim % 2 ** num_upsamplers != 0`` holds for every latent and each upsampler gets the size of the skip
    connection it is concatenated with. That size is exactly 2x the input where the latent is a multiple of the
    factor, and nearest upsampling to 2x the size reads the same input pixels as ``scale_factor=2``: the same
    result, and one graph for every resolution instead of one for the multiples of 8 and one for the others
    (measured on an H200: 340 s for the second SDXL graph). The attribute is restored after the call (the patch
    ``diffusers.UNet2DConditionModel.num_upsamplers`` of :mod:`nexfort.diffusers.patches`: scoped to the call)."""
    saved = module.num_upsamplers
    module.num_upsamplers = _ALWAYS_FORWARD
    try:
        yield
    finally:
        module.num_upsamplers = saved
