"""``quantize_pipe``: quantize a diffusers pipeline's denoiser(s) in place (nexfort-passes' ``quantize_``).

    quantize_pipe(pipe, "fp8")                    # the transformer/UNet's linear layers in float8
    compile_pipe(pipe, mode="max-optimize:max-autotune:low-precision")

Same result as the ``quant`` mode flag of ``compile_pipe``; as a separate step it can run before saving, on a
pipeline compiled otherwise, or on some components only. The QKV projections are fused first (as max-optimize
does, without a second copy of the weights: :mod:`nexfort.diffusers.fused`) so the fused layers are quantized once.
Quantizing is one-way: fuse LoRA weights before, not after.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Optional

import torch

from nexfort.diffusers.fused import fuse_projections
from nexfort.diffusers.pipe import DENOISERS, _components

logger = logging.getLogger("nexfort")


def _quant_api() -> Any:
    try:
        from nexfort.passes import quant
    except ImportError as e:  # pragma: no cover - nexfort-diffusers installed without nexfort-passes
        raise ImportError("quantize_pipe needs nexfort-passes: pip install nexfort-passes") from e
    return quant


def quantize_pipe(pipe: Any, method: str = "fp8", *, components: Optional[Iterable[str]] = None,
                  min_features: int = 256, exclude: Iterable[str] = (), fuse_qkv_projections: bool = True
                  ) -> Dict[str, int]:
    """Quantize the linear layers of ``components`` (default: the pipeline's denoisers) with the method ``method``
    (``"fp8"``); layers whose name contains a string of ``exclude`` or with fewer than ``min_features`` input or
    output features are left alone. Everything is checked before anything changes. Returns the number of layers
    quantized per component."""
    quant = _quant_api()
    config = quant.config_for(method, min_features=min_features)  # an unknown type fails here
    comps = _components(pipe)
    modules = {n: m for n, m in comps.items() if isinstance(m, torch.nn.Module)}
    names = [n for n in DENOISERS if n in modules] if components is None else list(components)
    bad = [n for n in names if n not in modules]
    if bad or not names:
        raise ValueError(f"quantize_pipe: {', '.join(map(repr, bad)) or 'nothing'} to quantize in "
                         f"{pipe.__class__.__name__}; valid components: "
                         f"{', '.join(modules)}.")
    keep = quant.excluding(exclude)
    for name in names:
        config.check(modules[name])
    done: Dict[str, int] = {}
    for name in names:
        module = modules[name]
        if fuse_qkv_projections:
            fuse_projections(module)
        done[name] = quant.quantize_(module, config, filter_fn=keep)
    logger.info("nexfort: quantize_pipe(%s, %r) quantized %s", pipe.__class__.__name__, method,
                ", ".join(f"{n}: {k} layers" for n, k in done.items()))
    return done
