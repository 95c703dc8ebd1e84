"""The nexfort plugin of nexfort-diffusers: model-level transforms of diffusers models.

Loaded through the ``nexfort`` entry-point group (name ``diffusers``). It owns the option namespace
``diffusers`` and
- with ``dynamic=True``, makes the models' shape-dependent Python branches branch-free (diffusers'
  ``PatchEmbed`` position embedding: :mod:`nexfort.diffusers.dynamic`) and repeats attention masks per head
  without a batch-size guard (:mod:`nexfort.diffusers.masks`), so that one graph serves every resolution and
  batch size;
- when ``max-optimize`` is on, fuses the QKV projections of diffusers models that support it (PixArt's and
  SD3's transformers, UNet2DConditionModel, Flux, ...), in the attention modules where the fused attention
  provably computes eager's output (the others are left alone), without keeping a second copy of their weights
  (:mod:`nexfort.diffusers.fused`).
Importing this module must stay cheap: diffusers itself is never imported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional

from nexfort.core.api import flag_on, hookimpl
from nexfort.diffusers.fused import fuse_projections, qkv_fused  # noqa: F401 - qkv_fused: part of this module's API

logger = logging.getLogger(__name__)
PLUGIN_NAME = "diffusers"
NAMESPACE = "diffusers"


@dataclass
class DiffusersOptions:
    """``options.diffusers.*``."""

    # fuse the QKV (self-attention) / KV (cross-attention) projections of the denoiser when max-optimize is on.
    # The unfused layers' weights become views of the fused ones (no second copy): in-place weight updates of
    # either reach both (nexfort.diffusers.fused).
    fuse_qkv_projections: bool = True
    # with dynamic=True: rewrite shape-dependent branches of diffusers modules (PatchEmbed) so that one graph
    # serves every resolution
    dynamic_transforms: bool = True
    # compile_pipe compiles the denoisers' repeated blocks (their copies share the compiled graphs) instead of the
    # whole denoiser: a much shorter cold compile, no fusion across blocks (nexfort.diffusers.regional).
    # None: on with the jit flag (H100, PixArt-alpha 1024: 12.7 s instead of 35.5 s, a 2 % slower step); True/False
    regional: Optional[bool] = None
    # with max-optimize, compile_pipe runs a PixArt denoiser's cross-attention over the valid text tokens only
    # (the same output: nexfort.diffusers.text_padding)
    trim_text_padding: bool = True


def is_diffusers_model(module: Any) -> bool:
    """A diffusers ``ModelMixin`` (checked by its class's module, so diffusers need not be imported)."""
    return any(c.__module__.split(".", 1)[0] == "diffusers" and c.__name__ == "ModelMixin"
               for c in type(module).__mro__)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    try:
        return getattr(obj, key, default)
    except Exception:  # noqa: BLE001 - a strict OmegaConf node without the key
        return default


@hookimpl
def nexfort_config_schema() -> Optional[Mapping[str, type]]:
    return {NAMESPACE: DiffusersOptions}


def _guarded(what: str, transform: Callable[[Any], Any], module: Any) -> Any:
    """``transform(module)``; a transform that raises (a model it does not know) leaves the model to be compiled
    as it is, with one debug log line: a module transform never fails a compile. Each transform checks the
    structure it relies on before changing a module, and restores a module it could not finish."""
    try:
        return transform(module)
    except Exception as e:  # noqa: BLE001 - whatever a model we do not know raises
        logger.debug("nexfort: %s: %s left the model alone: %s: %s", type(module).__name__, what,
                     type(e).__name__, e)
        return None


@hookimpl
def nexfort_transform_module(module: Any, config: Any) -> Optional[str]:
    if not is_diffusers_model(module):
        return None
    opts = config.options.get(NAMESPACE) if hasattr(config.options, "get") else None
    done: List[str] = []
    if _get(config, "dynamic") is True and (opts is None or bool(_get(opts, "dynamic_transforms", True))):
        from nexfort.diffusers.dynamic import make_patch_embeds_dynamic
        from nexfort.diffusers.masks import make_attention_masks_dynamic
        from nexfort.diffusers.video import make_video_embeds_dynamic

        n = _guarded("make_patch_embeds_dynamic", make_patch_embeds_dynamic, module)
        if n:
            done.append(f"position embedding of {n} PatchEmbed computed for any size (dynamic shapes)")
        n = _guarded("make_video_embeds_dynamic", make_video_embeds_dynamic, module)
        if n:
            done.append(f"position embedding of {n} CogVideoXPatchEmbed computed for any size (dynamic shapes)")
        n = _guarded("make_attention_masks_dynamic", make_attention_masks_dynamic, module)
        if n:
            done.append(f"attention masks of {n} Attention repeated per head without a batch-size guard")
    if flag_on(config, "max_optimize") and opts is not None and bool(opts.fuse_qkv_projections):
        fused = _guarded("fuse_projections", fuse_projections, module)
        if fused:
            done.append(fused)
    return "; ".join(done) or None
