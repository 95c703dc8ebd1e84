"""The nexfort plugin of nexfort-diffusers: model-level transforms of diffusers models.

Loaded through the ``nexfort`` entry-point group (name ``diffusers``). It owns the option namespace
``diffusers`` and, when ``max-optimize`` is on, fuses the QKV projections of diffusers models that support it
(``fuse_qkv_projections()``: PixArt's transformer, UNet2DConditionModel, ...). Importing this module must stay
cheap: diffusers itself is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from nexfort.core import hookimpl

PLUGIN_NAME = "diffusers"
NAMESPACE = "diffusers"


@dataclass
class DiffusersOptions:
    """``options.diffusers.*``."""

    # fuse the QKV (self-attention) / KV (cross-attention) projections of the denoiser when max-optimize is on.
    # The fused weights are copies: in-place weight updates after compiling (LoRA fusing) do not reach them.
    fuse_qkv_projections: bool = True


def is_diffusers_model(module: Any) -> bool:
    """A diffusers ``ModelMixin`` (checked by its class's module, so diffusers need not be imported)."""
    return any(c.__module__.split(".", 1)[0] == "diffusers" and c.__name__ == "ModelMixin"
               for c in type(module).__mro__)


def qkv_fused(module: Any) -> bool:
    """Whether ``fuse_qkv_projections()`` has already run on ``module``."""
    return getattr(module, "original_attn_processors", None) is not None


@hookimpl
def nexfort_config_schema() -> Optional[Mapping[str, type]]:
    return {NAMESPACE: DiffusersOptions}


@hookimpl
def nexfort_transform_module(module: Any, config: Any) -> Optional[str]:
    if not bool(config.flags.max_optimize):
        return None
    opts = config.options.get(NAMESPACE) if hasattr(config.options, "get") else None
    if opts is None or not bool(opts.fuse_qkv_projections):
        return None
    fuse = getattr(module, "fuse_qkv_projections", None)
    if not callable(fuse) or not is_diffusers_model(module) or qkv_fused(module):
        return None
    try:
        fuse()
    except ValueError as e:  # e.g. models with added KV projections
        return f"QKV projections left unfused ({e})"
    return "fused QKV projections (fuse_qkv_projections())"
