"""The compiled call of a diffusers model: shape checks, exact input rewrites, the shape settings, one sample at
a time for the VAE."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from nexfort.diffusers.dynamic.settings import dynamic_shapes_context, dynamic_shapes_patches, mark_inputs_dynamic
from nexfort.diffusers.dynamic.upsample import forwards_upsample_sizes


def float_timestep(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """An integer ``timestep`` tensor as float32. Schedulers differ in the dtype of their timesteps (DPM-Solver:
    int64, Euler: float32); a compiled denoiser guards on input dtypes, so switching schedulers would
    recompile. diffusers' timestep embeddings (``get_timestep_embedding``) cast timesteps to float32 first, and
    integer timesteps (< 2**24) are exact in float32: the result is identical. The tensor is also made
    contiguous (an expanded timestep has stride 0, another guard)."""
    t = kwargs.get("timestep")
    if not torch.is_tensor(t) or t.is_complex() or t.dtype == torch.bool:
        return kwargs
    if not t.is_floating_point():
        t = t.to(torch.float32)
    kwargs = dict(kwargs)
    # pipelines expand one timestep over the batch (stride 0) or not: a guard on strides, too
    kwargs["timestep"] = t.contiguous()
    return kwargs


def _per_sample(fn: Callable[..., Any], args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    """``fn`` on one sample at a time (every tensor argument with the first argument's batch size is split),
    the outputs concatenated along the batch: the compiled VAE sees batch 1 only (Dynamo specialises sizes 0
    and 1, so a VAE first called with batch 1 would compile again for the next batch size; the fake
    convolution and group norm of torch 2.11 also guard ``batch <= 1`` under ``backed_size_oblivious``)."""
    n = args[0].shape[0]

    def take(v: Any, i: int) -> Any:
        return v[i:i + 1] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v

    outs = [fn(*(take(a, i) for a in args), **{k: take(v, i) for k, v in kwargs.items()}) for i in range(n)]
    if torch.is_tensor(outs[0]):
        return torch.cat(outs)
    if isinstance(outs[0], (tuple, list)) and all(torch.is_tensor(o) for o in outs[0]):
        return type(outs[0])(torch.cat(parts) for parts in zip(*outs))
    raise TypeError(f"nexfort: cannot concatenate per-sample outputs of type {type(outs[0]).__name__}")


def wrap_compiled_call(
    module: torch.nn.Module, dynamic: bool, check: Optional[Callable[..., None]] = None, denoiser: bool = False,
    per_sample: bool = False, prepare: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
    contiguous: bool = False,
) -> bool:
    """Run ``module``'s compiled call (``nn.Module.compile``) under :func:`dynamic_shapes_context` (when
    ``dynamic``; for a UNet also :func:`always_forward_upsample_sizes`) after ``check``; for a ``denoiser``, with
    integer timesteps as float32 (:func:`float_timestep`); with ``per_sample`` (and ``dynamic``), one sample at
    a time (:func:`_per_sample`: for the VAE, whose batch then never recompiles it); ``prepare`` maps the keyword
    arguments first (an exact input rewrite, e.g. :mod:`nexfort.diffusers.text_padding`); with ``contiguous`` (and
    ``dynamic``), tensor inputs are made contiguous (:func:`nexfort.diffusers.video.contiguous_inputs`: a chunked
    video decoder). Returns False when the module is not compiled in place or nothing is to be done."""
    compiled = getattr(module, "_compiled_call_impl", None)
    if compiled is None or getattr(compiled, "_nexfort_wrapped", False):
        return False
    if not dynamic and check is None and not denoiser and prepare is None:
        return False
    # a UNet: one graph for latents that are multiples of its upsampling factor and the others
    unet = module if forwards_upsample_sizes(module) else None
    ctx = functools.partial(dynamic_shapes_context, unet) if dynamic else contextlib.nullcontext
    # no use_duck_shape setting in this torch: the same through the inputs' marks
    mark = dynamic and "use_duck_shape" not in dynamic_shapes_patches()
    split = dynamic and per_sample

    def run(*args: Any, **kwargs: Any) -> Any:
        if mark:
            mark_inputs_dynamic(args, kwargs)
        with ctx():
            return compiled(*args, **kwargs)

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(*args, **kwargs)
        if denoiser:
            kwargs = float_timestep(kwargs)
        if prepare is not None:
            kwargs = prepare(kwargs)
        if contiguous and dynamic:
            from nexfort.diffusers.video import contiguous_inputs

            args, kwargs = contiguous_inputs(args, kwargs)
        if split and args and torch.is_tensor(args[0]) and args[0].dim() > 0 and args[0].shape[0] > 1:
            return _per_sample(run, args, kwargs)
        return run(*args, **kwargs)

    call._nexfort_wrapped = True  # type: ignore[attr-defined]
    call._nexfort_check = check  # type: ignore[attr-defined]
    call._nexfort_prepare = prepare  # type: ignore[attr-defined]
    module._compiled_call_impl = call
    return True
