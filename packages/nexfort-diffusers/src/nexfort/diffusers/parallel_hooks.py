"""What :func:`nexfort.diffusers.parallelize_pipe` adds around the denoiser and the pipeline.

- :class:`ParallelHook`, a diffusers ``ModelHook`` on the denoiser, registered after diffusers' context-parallel
  hooks (so it runs first and returns last): it checks every call's sizes against the layout (token counts
  divisible by the sequence degree, an even CFG batch: :class:`ParallelInputError`, before the model runs, so
  before anything is traced) and, with ``cfg=2``, gives each CFG rank its half of the batch (diffusers' CFG batch is
  ``[unconditional, conditional]``) and all-gathers the output halves in that order. The all-gather is a functional
  collective, traced into the compiled graph without a graph break.
- The pipeline's ``encode_prompt`` (called before the denoising loop) refuses, with ``cfg=2``, a call without
  classifier-free guidance (``guidance_scale <= 1``): nothing would be split and the ranks would disagree.
- The pipeline's ``prepare_latents``: the initial latents are broadcast from rank 0, so that every rank denoises the
  same image even where the caller gave no seeded generator. (A scheduler that draws noise at each step needs a
  seeded generator, the same on every rank.)
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


class ParallelInputError(ValueError):
    """A call whose sizes the parallel layout cannot take (raised on every rank, before the model runs)."""


@dataclass
class Layout:
    """The parallel layout of one parallelized pipeline (``pipe._nexfort_parallel``)."""

    cfg: int
    ulysses: int
    ring: int
    rank: int
    world_size: int
    model: str  # the denoiser's class name
    kind: str  # "patches": 4-D latents cut into patches (PixArt, SD3); "tokens": the plan's inputs (Flux, ...)
    patch_size: int = 1
    vae_scale: int = 8
    split_inputs: Tuple[Tuple[str, int], ...] = ()  # (input name, dim) that diffusers' plan splits at the input
    cfg_rank: int = 0
    cfg_group: Any = None
    mesh: Any = None

    @property
    def seq(self) -> int:
        return self.ulysses * self.ring

    def describe(self) -> str:
        return f"cfg={self.cfg} x ulysses={self.ulysses} x ring={self.ring}"


def _first_tensor(args: Tuple[Any, ...], kwargs: dict, names: Tuple[str, ...]) -> Optional[torch.Tensor]:
    for n in names:
        if torch.is_tensor(kwargs.get(n)):
            return kwargs[n]
    return args[0] if args and torch.is_tensor(args[0]) else None


def _arg(index: Dict[str, int], name: str, args: Tuple[Any, ...], kwargs: dict) -> Any:
    if name in kwargs:
        return kwargs[name]
    i = index.get(name, -1)
    return args[i] if 0 <= i < len(args) else None


def positions(forward: Callable[..., Any]) -> Dict[str, int]:
    """The positional index of each parameter of a ``forward`` (read once, outside any traced code)."""
    return {p: i for i, p in enumerate(n for n in inspect.signature(forward).parameters if n != "self")}


def check_call(layout: Layout, index: Dict[str, int], args: Tuple[Any, ...], kwargs: dict) -> None:
    """Raise :class:`ParallelInputError` for a denoiser call the layout cannot take. Traced by Dynamo under
    compilation (a guard on the sizes, no graph break): the messages are built only where they are raised."""
    x = _first_tensor(args, kwargs, ("hidden_states", "sample"))
    if x is None:
        return
    if layout.cfg > 1 and x.shape[0] % 2:
        raise ParallelInputError(
            f"nexfort parallel ({layout.describe()}): cfg=2 splits the denoiser's CFG batch [unconditional, "
            f"conditional] over two ranks, but this call's batch is {x.shape[0]} (odd): call the pipeline with "
            f"guidance_scale > 1, or parallelize with cfg=1.")
    if layout.seq == 1:
        return
    if kwargs.get("block_controlnet_hidden_states") is not None:
        raise ParallelInputError(f"nexfort parallel ({layout.describe()}): ControlNet residuals are not split over "
                                 f"the sequence ranks; use cfg only (ulysses=ring=1) with a ControlNet.")
    if layout.kind == "patches" and x.dim() == 4:
        p = layout.patch_size
        if (x.shape[-2] // p) * (x.shape[-1] // p) % layout.seq:
            _raise_tokens(layout, tuple(x.shape))
        return
    for name, dim in layout.split_inputs:
        t = _arg(index, name, args, kwargs)
        if torch.is_tensor(t) and t.dim() > dim and t.shape[dim] % layout.seq:
            _raise_split(layout, name, int(t.shape[dim]))


def _degree(layout: Layout) -> str:
    return f"the sequence degree {layout.seq} (ulysses={layout.ulysses} x ring={layout.ring})"


def _raise_tokens(layout: Layout, shape: Tuple[int, ...]) -> None:
    p, s = layout.patch_size, layout.vae_scale
    lh, lw = int(shape[-2]), int(shape[-1])
    h, w = lh // p, lw // p
    px = p * s * layout.seq
    down, up = max(px, lh * s // px * px), -(-lh * s // px) * px
    raise ParallelInputError(
        f"nexfort parallel: {layout.model} at {lh * s}x{lw * s} px has {h}x{w} = {h * w} image tokens (latent "
        f"{lh}x{lw}, patch {p}), not divisible by {_degree(layout)}; a height or width that is a multiple of {px} "
        f"px works (e.g. {down}x{lw * s} or {up}x{lw * s}).")


def _raise_split(layout: Layout, name: str, size: int) -> None:
    text = "encoder" in name or "txt" in name
    hint = (" (pad the prompt to a multiple of that many tokens, e.g. max_sequence_length=512)" if text else
            f" (Flux: a height or width that is a multiple of {16 * layout.seq} px)")
    raise ParallelInputError(f"nexfort parallel: {layout.model}'s {name} has {size} "
                             f"{'text tokens' if text else 'tokens'}, not divisible by {_degree(layout)}{hint}.")


def _half(x: Any, batch: int, rank: int) -> Any:
    if torch.is_tensor(x):
        return x.narrow(0, rank * (batch // 2), batch // 2) if x.dim() >= 1 and x.shape[0] == batch else x
    if isinstance(x, dict):
        return {k: _half(v, batch, rank) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_half(v, batch, rank) for v in x)
    return x


def _gather(x: Any, group: Any) -> Any:
    import torch.distributed._functional_collectives as funcol

    if not torch.is_tensor(x) or x.dim() == 0:
        return x
    out = funcol.all_gather_tensor(x.contiguous(), gather_dim=0, group=group)
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


def make_hook(layout: Layout) -> Any:
    """The :class:`ParallelHook` (a diffusers ``ModelHook``) for ``layout``."""
    from diffusers.hooks.hooks import ModelHook

    class ParallelHook(ModelHook):
        def __init__(self) -> None:
            super().__init__()
            self.layout = layout
            self.index: Dict[str, int] = {}

        def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
            self.index = positions(type(module).forward)
            return module

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Tuple[Tuple[Any, ...], dict]:
            check_call(self.layout, self.index, args, kwargs)
            if self.layout.cfg == 1:
                return args, kwargs
            x = _first_tensor(args, kwargs, ("hidden_states", "sample"))
            batch, rank = x.shape[0], self.layout.cfg_rank
            return _half(args, batch, rank), _half(kwargs, batch, rank)

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            if self.layout.cfg == 1:
                return output
            group = self.layout.cfg_group
            if isinstance(output, (tuple, list)):
                return type(output)(_gather(o, group) for o in output)
            if hasattr(output, "items") and hasattr(output, "to_tuple"):  # diffusers' BaseOutput
                return type(output)(**{k: _gather(v, group) for k, v in output.items()})
            return _gather(output, group)

    return ParallelHook()


def batches_cfg(pipe: Any) -> Tuple[bool, str]:
    """Whether ``pipe`` runs classifier-free guidance as one batch ``[unconditional, conditional]`` through the
    denoiser (diffusers' ``torch.cat([latents] * 2)``) and tells ``encode_prompt`` whether it does."""
    name = type(pipe).__name__
    try:
        src = inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):
        return False, f"{name}'s __call__ has no Python source to read"
    if "[latents] * 2" not in src:
        return False, (f"{name} does not batch classifier-free guidance (no torch.cat([latents] * 2) in its "
                       f"__call__; FLUX.1-dev is guidance-distilled: its guidance is an input of the transformer)")
    enc = getattr(pipe, "encode_prompt", None)
    if enc is None or "do_classifier_free_guidance" not in inspect.signature(enc).parameters:
        return False, f"{name}.encode_prompt takes no do_classifier_free_guidance"
    return True, ""


def wrap_pipeline(pipe: Any, layout: Layout) -> List[str]:
    """Wrap ``pipe.encode_prompt`` (the CFG check) and ``pipe.prepare_latents`` (rank 0's latents everywhere) as
    instance attributes; returns the names wrapped (``unwrap_pipeline`` removes them)."""
    import torch.distributed as dist

    done = []
    enc = getattr(pipe, "encode_prompt", None)
    if layout.cfg > 1 and callable(enc):
        sig = inspect.signature(enc)

        @functools.wraps(enc)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind_partial(*args, **kwargs)
            param = sig.parameters["do_classifier_free_guidance"]
            do_cfg = bound.arguments.get("do_classifier_free_guidance", param.default)
            if not do_cfg:
                gs = getattr(pipe, "_guidance_scale", None)
                raise ParallelInputError(
                    f"nexfort parallel ({layout.describe()}): {type(pipe).__name__} called without classifier-free "
                    f"guidance (guidance_scale{f'={gs}' if gs is not None else ''} <= 1): cfg=2 needs it. Call it "
                    f"with guidance_scale > 1, or parallelize with cfg=1.")
            return enc(*args, **kwargs)

        pipe.encode_prompt = encode_prompt
        done.append("encode_prompt")
    prep = getattr(pipe, "prepare_latents", None)
    if callable(prep):
        @functools.wraps(prep)
        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            out = prep(*args, **kwargs)
            lat = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(lat):
                buf = lat.contiguous()
                dist.broadcast(buf, src=0)
                if buf is not lat:
                    lat.copy_(buf)
            return out

        pipe.prepare_latents = prepare_latents
        done.append("prepare_latents")
    return done


def unwrap_pipeline(pipe: Any, names: List[str]) -> None:
    for name in names:
        pipe.__dict__.pop(name, None)
