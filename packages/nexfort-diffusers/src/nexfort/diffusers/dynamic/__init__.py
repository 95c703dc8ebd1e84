"""Dynamic shapes for compiled diffusers models: one graph for every resolution, batch size and text length.

Used by ``compile_pipe`` with ``dynamic=True`` (and by the plugin's module transform), one module per concern:

- :mod:`.settings` (:func:`dynamic_shapes_patches` / :func:`dynamic_shapes_context`): Dynamo's shape settings that
  avoid the two classic recompilation traps, feature-detected on the running torch and scoped to each call of a
  compiled model (Dynamo reads them when it traces, i.e. inside the call): no *duck sizing* (two dimensions that
  happen to be equal at the first call, e.g. a square latent, would otherwise be assumed equal forever and the
  first non-square size recompiles) and module ints kept constants on torch 2.1-2.4.
- :mod:`.patch_embed` (:func:`make_patch_embeds_dynamic`): diffusers' ``PatchEmbed`` (PixArt, DiT) recomputes its
  sin-cos position embedding when the size differs from the config's (``if self.height != height or ...``), a
  Python branch on the size that Dynamo turns into a guard (recompilation at the second size). The patched
  instances compute the embedding for the traced size in the graph, always, with diffusers' own arithmetic.
- :mod:`.upsample` (:func:`make_upsample_sizes_explicit`, :func:`always_forward_upsample_sizes`): where torch's
  Inductor gets nearest upsampling by a scale factor wrong (torch 2.2, detected), diffusers' ``Upsample2D`` passes
  the output size instead (the same computation); a UNet forwards explicit upsample sizes at every resolution.
- :mod:`.resolution` (:func:`shape_check`): a size the model cannot take (not a multiple of the patch size, larger
  than a cropped position embedding) raises :class:`UnsupportedResolutionError` naming the nearest valid sizes,
  before Dynamo or Inductor see it.
- :mod:`.call` (:func:`wrap_compiled_call`): the compiled call that applies all of the above.
"""

from __future__ import annotations

from nexfort.diffusers._classes import from_diffusers as _from_diffusers  # noqa: F401 - kept importable
from nexfort.diffusers._classes import is_class as _is_class  # noqa: F401 - kept importable
from nexfort.diffusers.dynamic.call import _per_sample, float_timestep, wrap_compiled_call
from nexfort.diffusers.dynamic.patch_embed import (
    make_patch_embeds_dynamic,
    sincos_from_grid_fn,
    sincos_pos_embed,
)
from nexfort.diffusers.dynamic.resolution import UnsupportedResolutionError, shape_check, valid_sizes_hint
from nexfort.diffusers.dynamic.settings import (
    dynamic_shapes_context,
    dynamic_shapes_patches,
    dynamo_patches,
    mark_inputs_dynamic,
)
from nexfort.diffusers.dynamic.upsample import (
    always_forward_upsample_sizes,
    forwards_upsample_sizes,
    make_upsample_sizes_explicit,
)

__all__ = [
    "UnsupportedResolutionError", "always_forward_upsample_sizes", "dynamic_shapes_context", "dynamic_shapes_patches",
    "dynamo_patches", "float_timestep", "forwards_upsample_sizes", "make_patch_embeds_dynamic",
    "make_upsample_sizes_explicit", "mark_inputs_dynamic", "shape_check", "sincos_from_grid_fn", "sincos_pos_embed",
    "valid_sizes_hint", "wrap_compiled_call", "_per_sample",
]
