"""Video pipelines (Wan, HunyuanVideo, LTX, CogVideoX, ...) in ``compile_pipe``: what differs from the image ones.

``compile_pipe`` compiles the same components for a video pipeline as for an image one: the denoiser(s)
(``transformer``, Wan 2.2's ``transformer_2``) and the VAE's ``decoder``/``encoder``. With ``dynamic=True`` one
graph per component serves every frame count and resolution, as for images. Three things are video-specific:

- :func:`vae_part_splits`: an image VAE's compiled decoder/encoder runs one sample at a time (so a batch change
  never recompiles it: :func:`nexfort.diffusers.dynamic.wrap_compiled_call`'s ``per_sample``). Several video VAEs
  call their decoder chunk by chunk with a cache of the previous chunk's features (Wan's ``feat_cache``,
  CogVideoX's and Mochi's ``conv_cache``, ...), or fold the frames into the batch (SVD's ``num_frames``): split
  per sample, the second sample would read the first one's cache (a silently wrong video) or the frames would be
  cut apart. Such parts are not split; with ``dynamic=True`` their VAE decodes one sample at a time through
  diffusers' own slicing instead (``use_slicing``, the same result), restored by ``uncompile_pipe``
  (:func:`prepare_vae` / :func:`restore_vae`).
- Chunked decoders with a cache compile a fixed number of graphs whatever the frame count: the first chunk (no
  cache yet) and the following ones (Wan: 3, for a cache of 0, 1 and 2 frames; CogVideoX: 2), each at every
  resolution under ``dynamic=True``, all at the first call.
- :func:`make_video_embeds_dynamic` (the plugin's dynamic transform): CogVideoX's patch embedding takes its stored
  sin-cos position embedding at the config's size and computes one at every other size
  (``if self.sample_height != height or ...``), a branch on the size that Dynamo turns into a guard (a second
  graph at the config's size). The patched instances compute it at every size (the same values).

- :func:`make_video_upsamplers_dynamic`: HunyuanVideo's causal upsampler upsamples the first latent frame in space
  and the others (``split``, then ``F.interpolate``) in time and space; Dynamo guards whether those others are one
  frame (``3 <= frames``, from the interpolation's contiguity check of a size that may be 1), so 2 latent frames
  (5-8 video frames) compiled a graph of their own. The patched instances upsample every frame in space and pick
  the frames in time with one index (nearest upsampling by integer factors is a copy of source pixels: the same
  values), with no size that may be 1.
- Chunked decoders get their tensor inputs contiguous (:func:`contiguous_inputs`, through ``compile_pipe``): the
  latent chunk they are given is a slice of the whole video's latent, whose strides (a guard) depend on the whole
  frame count, and the cache tensors come back from the previous chunk's graph with the strides Inductor chose.

Sizes of 1 stay specialised by Dynamo (as for images): a single latent frame, or a latent of one patch per side,
is its own graph.

- :func:`make_video_norms_dynamic`: CogVideoX's decoder branches on an odd frame count in its spatial norms and
  temporal upsamplers (``f.shape[2] % 2 == 1``: the first frame handled apart; the first chunk takes the odd
  latent frame), so an odd count after an even one compiled another graph. The patched instances resize space for
  every frame and pick the frames with one index, the odd case chosen by a tensor (the same values).

Graphs per pipeline, whatever the frame count and resolution after the first call (tests/diffusers/test_video.py;
``NEXFORT_SLOW=1`` runs each with Inductor): LTX and HunyuanVideo one per component; Wan's decoder three (its cache
of 0, 1 and 2 frames), CogVideoX's two (the first chunk, without a cache, and the others).
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any, Dict, List, Optional

import torch

from nexfort.core.api import patches
from nexfort.diffusers.patches import COG_PATCH_EMBED, COG_SPATIAL_NORM, HUNYUAN_UPSAMPLE, VIDEO_VAE_SLICING

logger = logging.getLogger(__name__)

#: a forward parameter whose name is one of these (or ends in ``_cache``) carries state from one call to the next
_STATE_PARAMS = ("cache", "cache_dict", "num_frames")


def _forward_params(module: Any) -> List[str]:
    try:
        return list(inspect.signature(type(module).forward).parameters)[1:]
    except (TypeError, ValueError):  # pragma: no cover (not introspectable)
        return []


def _forward_names(module: Any) -> set:
    """The global and attribute names the code of ``module``'s class forward uses (what a patch reads it by)."""
    return set(getattr(getattr(type(module).forward, "__code__", None), "co_names", ()))


def _from_diffusers(cls: type) -> bool:
    return cls.__module__.split(".", 1)[0] == "diffusers"


def _not_diffusers_forward(m: Any, cls_name: str) -> Optional[str]:
    """Why ``m``'s forward is not diffusers' own ``cls_name.forward`` (None: it is)."""
    fwd = getattr(type(m), "forward", None)
    if getattr(fwd, "__qualname__", "") != f"{cls_name}.forward" or not _from_diffusers(type(m)):
        return f"its forward is {getattr(fwd, '__qualname__', fwd)}, not diffusers' {cls_name}.forward"
    return None


def vae_part_splits(part: Any) -> Optional[str]:
    """Why the VAE part ``part`` (a decoder or encoder) may not run one sample at a time (None: it may): a
    forward parameter that carries a cache from chunk to chunk or the frame count of a batch of frames."""
    names = [p for p in _forward_params(part) if p in _STATE_PARAMS or p.endswith("_cache")]
    if names:
        return f"{type(part).__name__}.forward takes {', '.join(names)}"
    return None


def prepare_vae(vae: Any, parts: List[str], dynamic: bool) -> Dict[str, bool]:
    """Per VAE part name (``"decoder"``...): whether ``compile_pipe`` may split its calls per sample. For parts it
    may not split, with ``dynamic``, turn on the VAE's own slicing (one sample per decode/encode, diffusers' code:
    the same result) where the VAE has it, remembering the previous setting for :func:`restore_vae`."""
    out: Dict[str, bool] = {}
    if dynamic:
        mods = [getattr(vae, name) for name in parts if isinstance(getattr(vae, name, None), torch.nn.Module)]
        n = sum(make_video_upsamplers_dynamic(m) + make_video_norms_dynamic(m) for m in mods)
        if n:
            logger.info("nexfort: %s: %d upsamplers / spatial norms pick their frames with one index (dynamic "
                        "frame count)", type(vae).__name__, n)
    unsplit = []
    for name in parts:
        why = vae_part_splits(getattr(vae, name, None))
        out[name] = why is None
        if why:
            unsplit.append(why)
    if unsplit and dynamic:
        if isinstance(getattr(vae, "use_slicing", None), bool):
            patches.set_attr(vae, "use_slicing", True, VIDEO_VAE_SLICING)
            logger.info("nexfort: %s: not split per sample (%s); its own slicing decodes one sample at a time",
                        type(vae).__name__, "; ".join(unsplit))
        else:
            logger.info("nexfort: %s: not split per sample (%s) and has no use_slicing: a batch size change may "
                        "compile its parts once more", type(vae).__name__, "; ".join(unsplit))
    return out


def restore_vae(vae: Any) -> None:
    """Undo :func:`prepare_vae`'s slicing setting and upsampler patches (``uncompile_pipe`` restores every recorded
    patch anyway)."""
    if isinstance(vae, torch.nn.Module):
        patches.restore(vae, recurse=False)
        for m in vae.modules():
            if {HUNYUAN_UPSAMPLE, COG_SPATIAL_NORM} & set(patches.patches_of(m)):
                patches.restore(m, recurse=False)


def contiguous_inputs(args: tuple, kwargs: Dict[str, Any]) -> tuple:
    """``(args, kwargs)`` with each tensor contiguous (a copy where it is not: the same values), also inside the
    lists and dicts given (the caches a chunked decoder reads and fills: updated in place, which the caller reads
    back)."""

    def fix(v: Any) -> Any:
        if torch.is_tensor(v):
            return v if v.is_contiguous() else v.contiguous()
        if isinstance(v, list):
            for i, x in enumerate(v):
                if torch.is_tensor(x) and not x.is_contiguous():
                    v[i] = x.contiguous()
        elif isinstance(v, dict):
            for k, x in v.items():
                if torch.is_tensor(x) and not x.is_contiguous():
                    v[k] = x.contiguous()
        return v

    return tuple(fix(a) for a in args), {k: fix(v) for k, v in kwargs.items()}


# ------------------------------------------------------------------------------------------ HunyuanVideo upsampler
def _hunyuan_upsample_unknown(m: Any) -> Optional[str]:
    """Why :func:`_hunyuan_upsample_forward` may not compute what ``m``'s forward does (None: it does)."""
    if not {"split", "interpolate", "cat", "conv", "upsample_factor"} <= _forward_names(m):
        return "its forward does not split off the first frame and interpolate the rest"
    factor = getattr(m, "upsample_factor", None)
    if not isinstance(factor, (tuple, list)) or len(factor) != 3 or \
            not all(isinstance(f, (int, float)) and f >= 1 and float(f).is_integer() for f in factor):
        return f"upsample_factor {factor!r} is not three integer factors"
    if not isinstance(getattr(m, "conv", None), torch.nn.Module):
        return "no conv"
    return None


def _hunyuan_upsample_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """``HunyuanVideoUpsampleCausal3D.forward`` without a size that may be 1: every frame upsampled in space, then
    frame 0 once and frames 1.. ``ft`` times each, picked with one index (nearest upsampling by integer factors
    copies source pixels: output frame ``j >= 1`` is source frame ``1 + (j - 1) // ft``, as diffusers' ``split``,
    ``interpolate`` and ``cat`` give)."""
    ft, fh, fw = (int(f) for f in self.upsample_factor)
    x = torch.nn.functional.interpolate(hidden_states, scale_factor=(1, fh, fw), mode="nearest")
    j = torch.arange(1 + ft * (hidden_states.size(2) - 1), device=x.device)
    x = x.index_select(2, torch.where(j == 0, j, (j - 1) // ft + 1))
    return self.conv(x)


def _patch_instances(module: torch.nn.Module, cls_name: str, unknown: Any, forward: Any, patch: str,
                     pick: Any = None) -> int:
    """Give the instances of diffusers' class ``cls_name`` in ``module`` the instance forward ``forward`` (recorded
    as ``patch``; ``pick(instance)``, where given, chooses it per instance, outside any traced code) where their
    forward is diffusers' own and ``unknown(instance)`` finds nothing against it; return how many. The others are
    left alone with one debug line that says why."""
    n, left = 0, []
    for name, m in module.named_modules():
        is_it = any(c.__name__ == cls_name and _from_diffusers(c) for c in type(m).__mro__)
        if not is_it or getattr(m, "_nexfort_dynamic", False):
            continue
        why = _not_diffusers_forward(m, cls_name) or unknown(m)
        if why:
            left.append(f"{name or type(m).__name__}: {why}")
            continue
        patches.set_attr(m, "forward", types.MethodType(pick(m) if pick is not None else forward, m), patch)
        patches.set_attr(m, "_nexfort_dynamic", True, patch)
        n += 1
    if left:
        logger.debug("nexfort: %s: %d %s left alone (%s)", type(module).__name__, len(left), cls_name,
                     "; ".join(left))
    return n


def make_video_upsamplers_dynamic(module: torch.nn.Module) -> int:
    """Patch the ``HunyuanVideoUpsampleCausal3D`` instances of ``module`` (see the module docstring); return how
    many. Others are left alone with one debug line."""
    return _patch_instances(module, "HunyuanVideoUpsampleCausal3D", _hunyuan_upsample_unknown,
                            _hunyuan_upsample_forward, HUNYUAN_UPSAMPLE)


# ------------------------------------------------------------------------------------------ CogVideoX spatial norm
#: the names diffusers' CogVideoXSpatialNorm3D.forward uses (with its conv cache: 0.31+; without: 0.30), and its
#: parameters: the patched forward is that body with the odd-frame branch as one index
_COG_NORM_FORMS = {
    ("f", "zq", "conv_cache"): {"F", "cat", "conv_b", "conv_y", "get", "interpolate", "norm_layer", "shape", "torch"},
    ("f", "zq"): {"F", "cat", "conv_b", "conv_y", "interpolate", "norm_layer", "shape", "torch"},
}


def _cog_norm_unknown(m: Any) -> Optional[str]:
    """Why :func:`_cog_norm_forward` may not compute what ``m``'s forward does (None: it does)."""
    params, names = tuple(_forward_params(m)), _forward_names(m)
    if _COG_NORM_FORMS.get(params) != names:
        return f"its forward ({', '.join(params)}; names {sorted(names)}) is not a form this patch knows"
    if not all(isinstance(getattr(m, a, None), torch.nn.Module) for a in ("norm_layer", "conv_y", "conv_b")):
        return "no norm_layer, conv_y and conv_b"
    return None


def nearest_frames(f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    """``zq`` resized to ``f``'s frames and size as diffusers' CogVideoXSpatialNorm3D does (nearest; for an odd
    frame count above 1, the first frame from ``zq``'s first and the others from the rest), with no branch on the
    frame count: space resized for every frame, then the frames picked with one index, ``min(floor(j * in / out),
    in - 1)`` in float32 as aten's nearest computes it, the odd case chosen by a tensor (no guard)."""
    tf, tz = f.shape[2], zq.shape[2]
    z = torch.nn.functional.interpolate(zq, size=(tz, f.shape[3], f.shape[4]))  # the frames: the identity
    j = torch.arange(tf, device=zq.device)
    jf, one = j.to(torch.float32), torch.ones((), dtype=torch.float32, device=zq.device)
    even = torch.minimum((jf * ((one * tz) / tf)).floor().long(), j * 0 + (tz - 1))
    rest = 1 + torch.minimum(((jf - 1) * ((one * (tz - 1)) / (tf - 1))).floor().long(), j * 0 + (tz - 2))
    rest = torch.where(j == 0, j * 0, rest)
    odd = (j[-1:] % 2 == 0) & (j[-1:] > 0)  # tf odd and above 1, as a tensor
    return z.index_select(2, torch.where(odd, rest, even))


def _cog_norm_forward(self: Any, f: torch.Tensor, zq: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """diffusers' ``CogVideoXSpatialNorm3D.forward`` (0.31+: with its conv cache) with :func:`nearest_frames` for the
    branch."""
    zq = nearest_frames(f, zq)
    conv_cache = (args[0] if args else kwargs.get("conv_cache")) or {}
    new_conv_cache = {}
    conv_y, new_conv_cache["conv_y"] = self.conv_y(zq, conv_cache=conv_cache.get("conv_y"))
    conv_b, new_conv_cache["conv_b"] = self.conv_b(zq, conv_cache=conv_cache.get("conv_b"))
    return self.norm_layer(f) * conv_y + conv_b, new_conv_cache


def _cog_norm_forward_uncached(self: Any, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    """The same for diffusers 0.30's form (no conv cache)."""
    zq = nearest_frames(f, zq)
    return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


def _cog_norm_form(m: Any) -> Any:
    """The patched forward for ``m``'s diffusers form, chosen when patching (reading the signature inside a traced
    call fails on torch 2.4's Dynamo)."""
    return _cog_norm_forward if "conv_cache" in _forward_params(m) else _cog_norm_forward_uncached


_COG_UPSAMPLE_NAMES = {"F", "cat", "compress_time", "conv", "interpolate", "permute", "reshape", "shape", "squeeze",
                       "torch"}


def _cog_upsample_unknown(m: Any) -> Optional[str]:
    """Why :func:`_cog_upsample_forward` may not compute what ``m``'s forward does (None: it does)."""
    if tuple(_forward_params(m)) != ("inputs",) or _forward_names(m) != _COG_UPSAMPLE_NAMES:
        return "its forward is not the form this patch knows"
    if not isinstance(getattr(m, "conv", None), torch.nn.Conv2d) or not isinstance(getattr(m, "compress_time", None),
                                                                                   bool):
        return "no Conv2d conv or bool compress_time"
    return None


def _cog_upsample_forward(self: Any, inputs: torch.Tensor) -> torch.Tensor:
    """diffusers' ``CogVideoXUpsample3D.forward`` where ``compress_time``: space doubled for every frame, then the
    frames picked with one index: ``j // 2`` of ``2t`` for an even count ``t``, ``(j + 1) // 2`` of ``2t - 1`` for an
    odd one (the first frame kept once: diffusers' branch, and its single-frame case), the parity a tensor (no
    guard). Nearest upsampling by 2 copies source pixels: the same values."""
    if not self.compress_time:
        return type(self).forward(self, inputs)
    t = inputs.shape[2]
    x = torch.nn.functional.interpolate(inputs, scale_factor=(1.0, 2.0, 2.0))
    j = torch.arange(2 * t - t % 2, device=inputs.device)
    odd = torch.arange(t, device=inputs.device)[-1:] % 2 == 0
    x = x.index_select(2, torch.where(odd, (j + 1) // 2, j // 2))
    b, c, t2, h, w = x.shape
    x = self.conv(x.permute(0, 2, 1, 3, 4).reshape(b * t2, c, h, w))
    return x.reshape(b, t2, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def make_video_norms_dynamic(module: torch.nn.Module) -> int:
    """Patch the ``CogVideoXSpatialNorm3D`` and ``CogVideoXUpsample3D`` instances of ``module`` (see the module
    docstring); return how many. Others are left alone with one debug line."""
    return (_patch_instances(module, "CogVideoXSpatialNorm3D", _cog_norm_unknown, _cog_norm_forward,
                             COG_SPATIAL_NORM, pick=_cog_norm_form) +
            _patch_instances(module, "CogVideoXUpsample3D", _cog_upsample_unknown, _cog_upsample_forward,
                             COG_SPATIAL_NORM))


# ------------------------------------------------------------------------------------------ CogVideoXPatchEmbed
#: what the patched forward sets the config's sizes to for the duration of a call: no latent size equals it, and
#: Dynamo knows that from the sizes' ranges (``s != -1`` holds for every size: no guard)
_NEVER = -1
_COG_ATTRS = ("sample_height", "sample_width", "sample_frames")


def _cog_embed_unknown(m: Any) -> Optional[str]:
    """Why :func:`_cog_embed_forward` may not compute what ``m``'s forward does (None: it does)."""
    if not {"_get_positional_embeddings", *_COG_ATTRS} <= _forward_names(m):
        return "its forward does not compare the config's sizes and recompute the embedding"
    if any(type(getattr(m, a, None)) is not int for a in _COG_ATTRS):
        return f"{', '.join(_COG_ATTRS)} are not all ints"
    if getattr(m, "use_learned_positional_embeddings", None) is not False:
        return "learned position embeddings (diffusers raises at any other size: nothing to make dynamic)"
    if getattr(m, "use_positional_embeddings", None) is not True:
        return "no position embedding"
    if not callable(getattr(m, "_get_positional_embeddings", None)):
        return "no _get_positional_embeddings"
    return None


def _cog_embed_forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``CogVideoXPatchEmbed.forward`` with the embedding computed at every size, the config's too: the config's
    sizes read :data:`_NEVER` during the call (diffusers' own code then takes its ``_get_positional_embeddings``
    path, the function that made the stored buffer: the same values) and are restored after it."""
    saved = (self.sample_height, self.sample_width, self.sample_frames)
    self.sample_height = self.sample_width = self.sample_frames = _NEVER
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        self.sample_height, self.sample_width, self.sample_frames = saved


def make_video_embeds_dynamic(module: torch.nn.Module) -> int:
    """Patch the ``CogVideoXPatchEmbed`` instances of ``module`` whose position embedding depends on a branch on
    the size (see the module docstring); return how many. Others are left alone with one debug line."""
    return _patch_instances(module, "CogVideoXPatchEmbed", _cog_embed_unknown, _cog_embed_forward, COG_PATCH_EMBED)
