"""diffusers' ``PatchEmbed`` (PixArt, DiT) made branch-free in the size.

diffusers recomputes the sin-cos position embedding when the size differs from the config's (``if self.height !=
height or ...``), a Python branch on the size that Dynamo turns into a guard (recompilation at the second size).
The patched instances compute the embedding for the traced size in the graph, always, with diffusers' own
arithmetic.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import types
from typing import Any, Callable, Optional

import torch

from nexfort.core.api import patches
from nexfort.diffusers._classes import from_diffusers as _from_diffusers
from nexfort.diffusers._classes import is_class as _is_class
from nexfort.diffusers.patches import PATCH_EMBED

logger = logging.getLogger(__name__)


def _sincos_from_grid_pt(embed_dim: int, grid: torch.Tensor) -> torch.Tensor:
    """diffusers' torch ``get_2d_sincos_pos_embed_from_grid(embed_dim, grid, output_type="pt")`` (0.32+), for the
    diffusers that only have the numpy one (< 0.32): the same arithmetic (float64 frequencies, outer product,
    sin then cos, the grid's rows for the first half of the channels), on tensors that Dynamo can trace."""

    def one_d(dim: int, pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(dim // 2, device=pos.device, dtype=torch.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = torch.outer(pos.reshape(-1), omega)
        return torch.concat([torch.sin(out), torch.cos(out)], dim=1)

    if embed_dim % 2 != 0:
        raise ValueError("embed_dim must be divisible by 2")
    return torch.concat([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], dim=1)


def sincos_from_grid_fn() -> Callable[[int, torch.Tensor], torch.Tensor]:
    """``fn(embed_dim, grid)``: diffusers' own torch ``get_2d_sincos_pos_embed_from_grid`` where it takes
    ``output_type="pt"`` (diffusers 0.32+; detected from its signature), else :func:`_sincos_from_grid_pt`."""
    from diffusers.models import embeddings

    fn = getattr(embeddings, "get_2d_sincos_pos_embed_from_grid", None)
    try:
        takes_pt = fn is not None and "output_type" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover (not introspectable)
        takes_pt = False
    return _diffusers_sincos_from_grid if takes_pt else _sincos_from_grid_pt


def _diffusers_sincos_from_grid(embed_dim: int, grid: torch.Tensor) -> torch.Tensor:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    return get_2d_sincos_pos_embed_from_grid(embed_dim, grid, output_type="pt")


def sincos_pos_embed(
    embed_dim: int,
    height: Any,
    width: Any,
    base_size: Any,
    interpolation_scale: Any,
    device: Any,
    from_grid: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """diffusers' ``get_2d_sincos_pos_embed(embed_dim, (height, width), base_size=..., interpolation_scale=...)``
    (float32 grid, float64 frequencies, ``.float().unsqueeze(0)``) without its ``reshape([2, 1, w, h])``, which
    guards on ``h == w`` under symbolic sizes: flattening gives the same element order."""
    if from_grid is None:  # (not ``from_grid or ...``: torch 2.1's Dynamo cannot take a function's truth value)
        from_grid = sincos_from_grid_fn()
    grid_h = torch.arange(height, device=device, dtype=torch.float32) / (height / base_size) / interpolation_scale
    grid_w = torch.arange(width, device=device, dtype=torch.float32) / (width / base_size) / interpolation_scale
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0).reshape(2, -1)
    return from_grid(embed_dim, grid).float().unsqueeze(0)


class _Constants:
    """Per patched ``PatchEmbed``: ``(patch_size, embed_dim, base_size, interpolation_scale, from_grid)``, read
    by the traced forward through the module-level :data:`_CONSTANTS` (an attribute per instance, named by the
    instance's ``_nexfort_constants`` string).

    Why not the module's own attributes: a model compiled in place (``nn.Module.compile``) is traced with
    ``self`` as a local, and torch 2.1-2.4's Dynamo turns an int read from a local (``self.patch_size``) into a
    symbol under ``dynamic=True`` (``s5``): the patch size then enters every size expression (torch 2.4:
    ``torch.arange(s3 // s5)`` cannot be bounded, "Cannot convert -oo to int"; torch 2.1: a guard on a symbol
    that is not an input size). The buffer's ``shape[-1]`` is a symbol there too. Ints read through a global
    are specialized by every torch, as nn-module ints are by the newer ones: the model's constants stay
    constants and the sizes stay the only symbols.

    An entry lives as long as its module's patch: restoring the module, or collecting it, deletes it."""


_CONSTANTS = _Constants()
_constants_ids = itertools.count()


#: what _patch_embed_forward reads of a PatchEmbed
_PATCH_EMBED_ATTRS = ("patch_size", "base_size", "interpolation_scale", "flatten", "proj", "layer_norm", "norm",
                      "pos_embed")


def _patch_embed_unknown(m: Any) -> Optional[str]:
    """Why :func:`_patch_embed_forward` may not compute what ``m``'s forward does (None: it does): an attribute
    it reads missing, a forward other than diffusers' ``PatchEmbed.forward`` (a subclass's own), an embedding
    that is not a (1, N, dim) sin-cos buffer, or a non-integer patch size."""
    missing = [a for a in _PATCH_EMBED_ATTRS if not hasattr(m, a)]
    if missing:
        return f"no {', '.join(missing)}"
    fwd = getattr(type(m), "forward", None)
    if getattr(fwd, "__qualname__", "") != "PatchEmbed.forward" or not _from_diffusers(type(m)):
        return f"its forward is {getattr(fwd, '__qualname__', fwd)}, not diffusers' PatchEmbed.forward"
    names = _code_names(fwd)
    if names is not None and "get_2d_sincos_pos_embed" not in names:
        return "its forward does not recompute a sin-cos embedding per size"
    pe = m.pos_embed
    if not isinstance(pe, torch.Tensor) or pe.dim() != 3 or pe.shape[0] != 1:
        return "its pos_embed is not a (1, N, dim) tensor"
    if type(m.patch_size) is not int or not isinstance(m.proj, torch.nn.Conv2d):
        return "its patch size is not an int or its projection not a Conv2d"
    return None


def _code_names(fn: Any) -> Optional[frozenset]:
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return frozenset(code.co_names) | frozenset(c for c in code.co_consts if isinstance(c, str))


def _patch_embed_forward(self: Any, latent: torch.Tensor) -> torch.Tensor:
    """``PatchEmbed.forward`` for sin-cos embeddings without a crop (PixArt, DiT), branch-free in the size."""
    patch, embed_dim, base_size, interpolation_scale, from_grid = getattr(_CONSTANTS, self._nexfort_constants)
    height, width = latent.shape[-2] // patch, latent.shape[-1] // patch
    latent = self.proj(latent)
    if self.flatten:
        latent = latent.flatten(2).transpose(1, 2)  # BCHW -> BNC
    if self.layer_norm:
        latent = self.norm(latent)
    pos_embed = sincos_pos_embed(embed_dim, height, width, base_size, interpolation_scale, latent.device, from_grid)
    return (latent + pos_embed).to(latent.dtype)


def make_patch_embeds_dynamic(module: torch.nn.Module) -> int:
    """Patch the ``PatchEmbed`` instances of ``module`` that recompute their position embedding per size;
    return how many (recorded as the patch ``diffusers.PatchEmbed.forward``: ``nexfort.core.patches.restore``
    undoes it). diffusers adds its stored buffer at the config's size and a freshly computed float32
    embedding at every other size; the patched forward computes it at every size (identical in float32; with
    an fp16/bf16 model the config's size then adds the float32 embedding, like every other size)."""
    n, left = 0, []
    for name, m in module.named_modules():
        if not _is_class(m, "PatchEmbed") or getattr(m, "_nexfort_dynamic", False):
            continue
        if getattr(m, "pos_embed", None) is None or getattr(m, "pos_embed_max_size", None):
            continue  # no embedding, or SD3's crop (already branch-free in the size)
        why = _patch_embed_unknown(m)
        if why:  # a diffusers version (or a subclass) whose PatchEmbed we do not know: left alone
            left.append(f"{name or type(m).__name__}: {why}")
            continue
        key = f"patch_embed_{next(_constants_ids)}"
        setattr(
            _CONSTANTS,
            key,
            (int(m.patch_size), int(m.pos_embed.shape[-1]), m.base_size, m.interpolation_scale, sincos_from_grid_fn()),
        )
        drop = functools.partial(_CONSTANTS.__dict__.pop, key, None)
        patches.on_restore(m, PATCH_EMBED, drop, when_collected=drop)  # _CONSTANTS never outgrows its modules
        patches.set_attr(m, "_nexfort_constants", key, PATCH_EMBED)
        patches.set_attr(m, "forward", types.MethodType(_patch_embed_forward, m), PATCH_EMBED)
        patches.set_attr(m, "_nexfort_dynamic", True, PATCH_EMBED)
        n += 1
    if left:
        logger.debug("nexfort: %s: %d PatchEmbed left alone (%s)", type(module).__name__, len(left), "; ".join(left))
    return n
