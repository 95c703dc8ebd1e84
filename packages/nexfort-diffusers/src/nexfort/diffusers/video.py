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
  resolution under ``dynamic=True``.
- :func:`make_video_embeds_dynamic` (the plugin's dynamic transform): CogVideoX's patch embedding takes its stored
  sin-cos position embedding at the config's size and computes one at every other size
  (``if self.sample_height != height or ...``), a branch on the size that Dynamo turns into a guard (a second
  graph at the config's size). The patched instances compute it at every size (the same values).

Sizes of 1 stay specialised by Dynamo (as for images): a single latent frame, or a latent of one patch per side,
is its own graph.

Not yet one graph per component (tests/diffusers/test_video.py with ``NEXFORT_SLOW=1``, Inductor, torch 2.13 on the
CPU, 2026-12-03): the LTX pipeline is; three VAE decoders compile one more graph when a size crosses a branch or
guard of their own code: HunyuanVideo's upsampler branches on three or more latent frames (``3 <=
hidden_states.size(2)``), CogVideoX's on an odd frame count (``f.shape[2] % 2 == 1``), and Wan's decoder guards a
cache entry's stride on the input's spatial size (``feat_cache[14].stride()[0] == 12 * T * H * W``, failing at the
third size of the test). Each branch side compiles its own graph; whether Wan's guard settles after one more graph
was not checked. Not yet patched.
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any, Dict, List, Optional

import torch

from nexfort.core.api import patches
from nexfort.diffusers.patches import COG_PATCH_EMBED, VIDEO_VAE_SLICING

logger = logging.getLogger(__name__)

#: a forward parameter whose name is one of these (or ends in ``_cache``) carries state from one call to the next
_STATE_PARAMS = ("cache", "cache_dict", "num_frames")


def _forward_params(module: Any) -> List[str]:
    try:
        return list(inspect.signature(type(module).forward).parameters)[1:]
    except (TypeError, ValueError):  # pragma: no cover (not introspectable)
        return []


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
    """Undo :func:`prepare_vae`'s slicing setting (``uncompile_pipe`` restores every recorded patch anyway)."""
    if isinstance(vae, torch.nn.Module):
        patches.restore(vae, recurse=False)


# ------------------------------------------------------------------------------------------ CogVideoXPatchEmbed
#: what the patched forward sets the config's sizes to for the duration of a call: no latent size equals it, and
#: Dynamo knows that from the sizes' ranges (``s != -1`` holds for every size: no guard)
_NEVER = -1
_COG_ATTRS = ("sample_height", "sample_width", "sample_frames")


def _from_diffusers(cls: type) -> bool:
    return cls.__module__.split(".", 1)[0] == "diffusers"


def _cog_embed_unknown(m: Any) -> Optional[str]:
    """Why :func:`_cog_embed_forward` may not compute what ``m``'s forward does (None: it does)."""
    fwd = getattr(type(m), "forward", None)
    if getattr(fwd, "__qualname__", "") != "CogVideoXPatchEmbed.forward" or not _from_diffusers(type(m)):
        return f"its forward is {getattr(fwd, '__qualname__', fwd)}, not diffusers' CogVideoXPatchEmbed.forward"
    code = getattr(fwd, "__code__", None)
    names = set(getattr(code, "co_names", ()))
    if not {"_get_positional_embeddings", *_COG_ATTRS} <= names:
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
    n, left = 0, []
    for name, m in module.named_modules():
        is_cog = any(c.__name__ == "CogVideoXPatchEmbed" and _from_diffusers(c) for c in type(m).__mro__)
        if not is_cog or getattr(m, "_nexfort_dynamic", False):
            continue
        why = _cog_embed_unknown(m)
        if why:
            left.append(f"{name or type(m).__name__}: {why}")
            continue
        patches.set_attr(m, "forward", types.MethodType(_cog_embed_forward, m), COG_PATCH_EMBED)
        patches.set_attr(m, "_nexfort_dynamic", True, COG_PATCH_EMBED)
        n += 1
    if left:
        logger.debug("nexfort: %s: %d CogVideoXPatchEmbed left alone (%s)", type(module).__name__, len(left),
                     "; ".join(left))
    return n
