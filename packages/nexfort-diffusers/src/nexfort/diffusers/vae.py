"""An fp16 VAE that needs ``force_upcast``: moved to fp32 once instead of at every call of the pipeline."""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from typing import Any

import torch

from nexfort.core.api import patches
from nexfort.diffusers.patches import VAE_UPCAST

logger = logging.getLogger("nexfort")


def _pipe_upcasts_vae(pipe: Any) -> bool:
    """Whether the pipeline itself moves an fp16 VAE to fp32 around every decode (SDXL-style)."""
    if callable(getattr(pipe, "upcast_vae", None)):
        return True
    try:
        return "force_upcast" in inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):  # pragma: no cover
        return False


def _cast_inputs(fn: Any, dtype: torch.dtype) -> Any:
    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return fn(x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x, *args, **kwargs)

    wrapper.__nexfort_cast__ = dtype  # type: ignore[attr-defined]
    return wrapper


def upcast_vae_once(pipe: Any) -> bool:
    """An fp16 VAE with ``force_upcast`` that the pipeline would move to fp32 and back at every call: move it to
    fp32 once (the compiled VAE then sees one dtype, no recompilation, no per-call casts) and cast the latents
    that ``vae.decode``/``vae.encode`` receive. Returns True when done. Recorded as the patch
    ``diffusers.AutoencoderKL.upcast_once``: :func:`uncompile_pipe` moves the VAE back to fp16 and removes the casts."""
    vae = getattr(pipe, "vae", None)
    if not isinstance(vae, torch.nn.Module) or getattr(vae, "dtype", None) != torch.float16:
        return False
    if not bool(getattr(getattr(vae, "config", None), "force_upcast", False)) or not _pipe_upcasts_vae(pipe):
        return False
    vae.to(dtype=torch.float32)
    vae_ref = weakref.ref(vae)
    patches.on_restore(vae, VAE_UPCAST, lambda: vae_ref().to(dtype=torch.float16))  # exact: fp16 round-trips
    for name in ("decode", "encode", "tiled_decode", "tiled_encode"):
        fn = getattr(vae, name, None)
        if callable(fn) and not hasattr(fn, "__nexfort_cast__"):
            patches.set_attr(vae, name, _cast_inputs(fn, torch.float32), VAE_UPCAST)
    logger.info("nexfort: the fp16 VAE needs force_upcast: moved it to fp32 once (inputs cast at decode/encode)")
    return True
