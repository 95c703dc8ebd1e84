"""Sizes a compiled denoiser cannot take: :class:`UnsupportedResolutionError`, naming the nearest valid sizes,
raised before Dynamo or Inductor see them (not a multiple of the patch size, larger than a cropped position
embedding)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from nexfort.diffusers._classes import is_class as _is_class


class UnsupportedResolutionError(ValueError):
    """A resolution the compiled model cannot take; the message names the nearest valid ones."""


def _first_4d(args: Sequence[Any], kwargs: Dict[str, Any], names: Sequence[str]) -> Optional[torch.Tensor]:
    for n in names:
        t = kwargs.get(n)
        if torch.is_tensor(t) and t.dim() == 4:
            return t
    if args and torch.is_tensor(args[0]) and args[0].dim() == 4:
        return args[0]
    return None


def _nearest(value: int, step: int, limit: Optional[int]) -> List[int]:
    if value % step == 0 and (limit is None or value <= limit):
        return [value]
    lo, hi = value // step * step, (value // step + 1) * step
    out = [v for v in (lo, hi) if v >= step and (limit is None or v <= limit)]
    if not out and limit is not None:
        out = [limit // step * step]
    return sorted(set(out), key=lambda v: (abs(v - value), v))


def shape_check(module: torch.nn.Module, vae_scale_factor: int = 8) -> Optional[Callable[..., None]]:
    """A function ``check(*args, **kwargs)`` that raises :class:`UnsupportedResolutionError` for latents the
    denoiser ``module`` cannot take, or ``None`` when it takes every size (UNets). Messages are in pixels
    (``vae_scale_factor`` per latent) and in latents."""
    embeds = [m for m in module.modules() if _is_class(m, "PatchEmbed")]
    patch = getattr(getattr(module, "config", None), "patch_size", None)
    if not embeds and not isinstance(patch, int):
        return None
    patch = int(patch or embeds[0].patch_size)
    max_tokens = None
    for m in embeds:
        if getattr(m, "pos_embed_max_size", None):
            max_tokens = int(m.pos_embed_max_size)
    limit = None if max_tokens is None else max_tokens * patch
    name = type(module).__name__
    vsf = int(vae_scale_factor)

    def check(*args: Any, **kwargs: Any) -> None:
        x = _first_4d(args, kwargs, ("hidden_states", "sample"))
        if x is None:
            return
        h, w = int(x.shape[-2]), int(x.shape[-1])
        bad_mult = h % patch or w % patch
        too_big = limit is not None and (h > limit or w > limit)
        if not bad_mult and not too_big:
            return
        why = []
        if bad_mult:
            why.append(
                f"height and width must be multiples of {patch * vsf} pixels ({patch} latents: the "
                f"patch size {patch} x the VAE factor {vsf})"
            )
        if too_big:
            why.append(f"at most {limit * vsf} pixels per side (its position embedding covers {max_tokens} patches)")
        hs, ws = _nearest(h, patch, limit), _nearest(w, patch, limit)
        pairs = [f"{a * vsf}x{b * vsf}" for a in hs for b in ws]
        raise UnsupportedResolutionError(
            f"{name} cannot take a {h * vsf}x{w * vsf} image (latents {h}x{w}): {'; '.join(why)}. "
            f"Nearest valid sizes: {', '.join(pairs)}."
        )

    return check


def valid_sizes_hint(module: torch.nn.Module, vae_scale_factor: int = 8) -> Tuple[int, Optional[int]]:
    """``(multiple, max)`` in pixels of what ``module`` takes (``max`` None when unbounded)."""
    embeds = [m for m in module.modules() if _is_class(m, "PatchEmbed")]
    patch = int(getattr(getattr(module, "config", None), "patch_size", None) or (embeds[0].patch_size if embeds else 1))
    mx = next((int(m.pos_embed_max_size) for m in embeds if getattr(m, "pos_embed_max_size", None)), None)
    return patch * vae_scale_factor, (None if mx is None else mx * patch * vae_scale_factor)
