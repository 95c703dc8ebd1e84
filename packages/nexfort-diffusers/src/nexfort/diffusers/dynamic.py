"""Dynamic shapes for compiled diffusers models: one graph for every resolution, batch size and text length.

Four parts, used by ``compile_pipe`` with ``dynamic=True`` (and by the plugin's module transform):

- :func:`dynamic_shapes_patches` / :func:`dynamic_shapes_context`: Dynamo's shape settings that avoid the two
  classic recompilation traps, feature-detected on the running torch and scoped to each call of a compiled
  model (Dynamo reads them when it traces, i.e. inside the call): no *duck sizing* (two dimensions that happen
  to be equal at the first call, e.g. a square latent, would otherwise be assumed equal forever and the first
  non-square size recompiles) and, where torch has it, *size-oblivious* reasoning about sizes 0/1 (a batch of
  1 at the first call would otherwise be specialised to 1).
- :func:`make_patch_embeds_dynamic`: diffusers' ``PatchEmbed`` (PixArt, DiT) recomputes its sin-cos position
  embedding when the size differs from the config's (``if self.height != height or ...``), a Python branch on
  the size that Dynamo turns into a guard (recompilation at the second size). The patched instances compute
  the embedding for the traced size in the graph, always, with diffusers' own arithmetic.
- :func:`make_upsample_sizes_explicit`: where torch's Inductor gets nearest upsampling by a scale factor wrong
  (torch 2.2, detected), diffusers' ``Upsample2D`` passes the output size instead (the same computation).
- :func:`shape_check`: a size the model cannot take (not a multiple of the patch size, larger than a cropped
  position embedding) raises :class:`UnsupportedResolutionError` naming the nearest valid sizes, before Dynamo
  or Inductor see it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)


class UnsupportedResolutionError(ValueError):
    """A resolution the compiled model cannot take; the message names the nearest valid ones."""


# ------------------------------------------------------------------------------------------ Dynamo settings
@functools.lru_cache(maxsize=None)
def dynamic_shapes_patches() -> Dict[str, Any]:
    """``torch.fx.experimental._config`` settings for traps-free dynamic shapes (only those this torch has)."""
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # pragma: no cover (torch 2.1: no such settings; duck sizing stays on)
        return {}
    wanted = {"use_duck_shape": False}
    return {k: v for k, v in wanted.items() if hasattr(fx_config, k)}


def mark_inputs_dynamic(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    """No duck sizing for a torch without ``use_duck_shape`` (2.1-2.4: duck sizing is a ``ShapeEnv`` default
    there that Dynamo does not expose): ``torch._dynamo.maybe_mark_dynamic`` on every dimension but the first
    (the batch) of the call's tensor inputs (also inside dicts, lists and tuples, e.g. SDXL's
    ``added_cond_kwargs``) gives each its own symbol, so a square first latent is not assumed square forever.
    Batch dimensions stay duck-sized: the inputs' batch sizes always agree, and torch 2.1's Inductor cannot
    lower the attention mask's broadcast when the mask's batch is a symbol of its own. Sizes 0 and 1 are still
    specialized (no error, unlike ``mark_dynamic``), as they are by ``dynamic=True``. Returns how many tensors
    were marked."""
    mark = getattr(torch._dynamo, "maybe_mark_dynamic", None)
    if mark is None:  # pragma: no cover (every supported torch has it)
        return 0
    n = 0
    todo = list(args) + list(kwargs.values())
    while todo:
        v = todo.pop()
        if isinstance(v, torch.Tensor):
            for d in range(1, v.dim()):
                mark(v, d)
            n += 1
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, (list, tuple)):
            todo.extend(v)
    return n


@functools.lru_cache(maxsize=None)
def dynamo_patches() -> Dict[str, Any]:
    """``torch._dynamo.config`` settings for dynamic shapes on a torch whose Dynamo has no
    ``allow_unspec_int_on_nn_module`` (2.1-2.4): there a module compiled in place (``nn.Module.compile``) is
    traced with ``self`` as a local, so under ``dynamic=True`` every int attribute read through it
    (``self.time_proj.num_channels``, ``self.num_upsamplers``) becomes a symbol, and Dynamo guards on how
    those symbols compare with the input sizes: torch 2.4 compiled the tiny SDXL UNet again for a batch equal
    to ``2 * num_channels // 2``. ``specialize_int`` keeps Python ints constants (as the newer torch does for
    module ints); the sizes stay the only symbols. Empty on the newer torch."""
    cfg = torch._dynamo.config
    if hasattr(cfg, "allow_unspec_int_on_nn_module") or not hasattr(cfg, "specialize_int"):
        return {}
    return {"specialize_int": True}


@contextlib.contextmanager
def dynamic_shapes_context(unet: Optional[torch.nn.Module] = None) -> Iterator[None]:
    """:func:`dynamic_shapes_patches` and :func:`dynamo_patches` for the duration of a compiled call and, given a
    ``unet`` (see :func:`forwards_upsample_sizes`), :func:`always_forward_upsample_sizes` on it."""
    with contextlib.ExitStack() as stack:
        patches = dynamic_shapes_patches()
        if patches:
            from torch.fx.experimental import _config as fx_config

            stack.enter_context(fx_config.patch(**patches))
        dynamo = dynamo_patches()
        if dynamo:
            stack.enter_context(torch._dynamo.config.patch(**dynamo))
        if unet is not None:
            stack.enter_context(always_forward_upsample_sizes(unet))
        yield


# ------------------------------------------------------------------------------------------ PatchEmbed
def _from_diffusers(cls: type) -> bool:
    return cls.__module__.split(".", 1)[0] == "diffusers"


def _is_class(module: Any, name: str) -> bool:
    return any(c.__name__ == name and _from_diffusers(c) for c in type(module).__mro__)


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
    constants and the sizes stay the only symbols."""


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
    return how many. diffusers adds its stored buffer at the config's size and a freshly computed float32
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
        m._nexfort_constants = key
        m.forward = types.MethodType(_patch_embed_forward, m)
        m._nexfort_dynamic = True
        n += 1
    if left:
        logger.debug("nexfort: %s: %d PatchEmbed left alone (%s)", type(module).__name__, len(left), "; ".join(left))
    return n


# ------------------------------------------------------------------------------------------ Upsample2D
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
    how many were patched."""
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
        m.forward = types.MethodType(_upsample_explicit_size_forward, m)
        m._nexfort_explicit = True
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
    (measured on an H200: 340 s for the second SDXL graph). The attribute is restored after the call."""
    saved = module.num_upsamplers
    module.num_upsamplers = _ALWAYS_FORWARD
    try:
        yield
    finally:
        module.num_upsamplers = saved


# ------------------------------------------------------------------------------------------ shape checks
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


# ------------------------------------------------------------------------------------------ the compiled call
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
) -> bool:
    """Run ``module``'s compiled call (``nn.Module.compile``) under :func:`dynamic_shapes_context` (when
    ``dynamic``; for a UNet also :func:`always_forward_upsample_sizes`) after ``check``; for a ``denoiser``, with
    integer timesteps as float32 (:func:`float_timestep`); with ``per_sample`` (and ``dynamic``), one sample at
    a time (:func:`_per_sample`: for the VAE, whose batch then never recompiles it); ``prepare`` maps the keyword
    arguments first (an exact input rewrite, e.g. :mod:`nexfort.diffusers.text_padding`). Returns False when the
    module is not compiled in place or nothing is to be done."""
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
        if split and args and torch.is_tensor(args[0]) and args[0].dim() > 0 and args[0].shape[0] > 1:
            return _per_sample(run, args, kwargs)
        return run(*args, **kwargs)

    call._nexfort_wrapped = True  # type: ignore[attr-defined]
    call._nexfort_check = check  # type: ignore[attr-defined]
    call._nexfort_prepare = prepare  # type: ignore[attr-defined]
    module._compiled_call_impl = call
    return True


def valid_sizes_hint(module: torch.nn.Module, vae_scale_factor: int = 8) -> Tuple[int, Optional[int]]:
    """``(multiple, max)`` in pixels of what ``module`` takes (``max`` None when unbounded)."""
    embeds = [m for m in module.modules() if _is_class(m, "PatchEmbed")]
    patch = int(getattr(getattr(module, "config", None), "patch_size", None) or (embeds[0].patch_size if embeds else 1))
    mx = next((int(m.pos_embed_max_size) for m in embeds if getattr(m, "pos_embed_max_size", None)), None)
    return patch * vae_scale_factor, (None if mx is None else mx * patch * vae_scale_factor)
