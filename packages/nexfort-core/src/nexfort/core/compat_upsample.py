"""Inductor's nearest upsampling by a scale factor, probed once per process: right or wrong under inference mode
(torch 2.2), symbolic sizes or not (2.2-2.3), and the decomposition table that routes around it
(:func:`inductor_decompositions`, which :func:`nexfort.core.compat.compile_fx` uses). Part of
:mod:`nexfort.core.compat`, which re-exports every name."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

_UPSAMPLE_NEAREST_OK: Dict[str, Optional[bool]] = {}


def inductor_upsample_nearest_scale_factor_ok(probe: bool = True, config: Any = None) -> Optional[bool]:
    """Whether Inductor computes ``F.interpolate(x, scale_factor=2.0, mode="nearest")`` right under
    ``torch.inference_mode()``; ``None`` when it cannot be told here (no working C++ compiler, ...), or when
    ``probe`` is False and it has not been told yet in this process.

    torch 2.2's Inductor lowering of ``aten.upsample_nearest2d.default`` takes the op's ``scales_h``/``scales_w``
    (the scale factor, 2.0) for the input/output ratio (0.5): each output reads input index ``2 * i``, out of
    bounds with no check (pytorch/pytorch#116848: NaN/garbage in diffusers' VAE decoder and UNet upsamplers,
    fixed in torch 2.3, which inverts the scale). Only inference mode reaches that lowering with scales (the
    op's ``.vec`` overload keeps them); ``no_grad`` decomposes the op in Python first. The same lowering cannot
    take symbolic sizes there either ("Cannot convert expression to float" under ``dynamic=True``). Told by
    compiling and running the op once on a small CPU tensor (a view into a larger buffer, so a wrong index reads
    the buffer, not beyond it) and comparing with eager, once per process (never from inside a compilation:
    ``compile_pipe`` asks first). With a ``config``, the outcome is remembered through the plugins
    (:mod:`nexfort.core.facts`: the cache plugin's store when its cache is on), so that a warm process skips the
    probe's two compilations (9 s of C++ compile on a GPU machine with a fresh Inductor directory)."""
    if "ok" in _UPSAMPLE_NEAREST_OK or not probe:
        return _UPSAMPLE_NEAREST_OK.get("ok")
    from nexfort.core import facts

    told = facts.remembered("inductor_upsample_nearest2d", {"ok": bool, "dynamic_ok": bool},
                            _probe_upsample_nearest, config)
    _UPSAMPLE_NEAREST_OK.update(told if told is not None else {"ok": None})
    return _UPSAMPLE_NEAREST_OK["ok"]


def _probe_upsample_nearest() -> Optional[Dict[str, bool]]:
    """``{"ok": ..., "dynamic_ok": ...}`` told by compiling (see :func:`inductor_upsample_nearest_scale_factor_ok`),
    ``None`` when it cannot be told here."""
    import torch.nn.functional as F

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2.0, mode="nearest")

    def up_dynamic(t: torch.Tensor) -> torch.Tensor:  # (another code object: its own Dynamo cache entry)
        return F.interpolate(t, scale_factor=2.0, mode="nearest")

    big = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    try:
        with torch.inference_mode():
            x = big[:, :, :3, :3]
            out = torch.compile(up, backend="inductor", dynamic=False)(x)
            ok: Optional[bool] = bool(torch.equal(out, up(x)))
    except Exception:  # pragma: no cover (no C++ compiler, ...)
        ok = None
    if ok is None:
        return None
    return {"ok": ok, "dynamic_ok": _upsample_nearest_dynamic_ok(up_dynamic, big)}


def _upsample_nearest_dynamic_ok(up: Callable[[torch.Tensor], torch.Tensor], big: torch.Tensor) -> bool:
    """Whether Inductor compiles nearest upsampling with symbolic sizes into one graph that is right at two
    sizes. torch 2.2-2.3's lowering of ``aten.upsample_nearest2d`` reads the input size as a number
    (``evaluate_static_shape``): a guard on every upsampled size (the SDXL UNet recompiled at every resolution
    under ``dynamic=True``), or on torch 2.2 an error; inference mode reaches that lowering (see
    :func:`inductor_upsample_nearest_scale_factor_ok`)."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    try:
        compiled = torch.compile(up, backend="inductor", dynamic=True)
        with torch.inference_mode():
            for h, w in ((3, 4), (5, 6)):
                x = big[:, :, :h, :w]
                if not torch.equal(compiled(x), up(x)):
                    return False
    except Exception:
        return False
    return counters["stats"]["unique_graphs"] - graphs == 1


def inductor_decompositions() -> Optional[Dict[Any, Callable[..., Any]]]:
    """The decomposition table for Inductor's ``compile_fx``, or ``None`` for Inductor's own.

    Where Inductor's nearest-upsampling lowering was found wrong in this process
    (:func:`inductor_upsample_nearest_scale_factor_ok`, torch 2.2) or found to specialize symbolic sizes
    (:func:`_upsample_nearest_dynamic_ok`, torch 2.2-2.3), ``aten.upsample_nearest2d`` is decomposed
    with torch's own Python decomposition (``torch._decomp``: an index computation, which is what ``no_grad``
    runs and what takes symbolic sizes) instead of reaching that lowering."""
    if (
        inductor_upsample_nearest_scale_factor_ok(probe=False) is not False
        and _UPSAMPLE_NEAREST_OK.get("dynamic_ok") is not False
    ):
        return None
    from torch._decomp import decomposition_table
    from torch._inductor.decomposition import select_decomp_table

    table = dict(select_decomp_table())
    aten = torch.ops.aten
    for op in (aten.upsample_nearest2d.default, aten.upsample_nearest2d.vec):
        if op in decomposition_table:
            table[op] = decomposition_table[op]
    return table
