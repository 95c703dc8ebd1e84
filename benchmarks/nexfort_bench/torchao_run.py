"""The benchmark's torchao reference run (``--torchao TYPE``): torchao's quantization of the same layers that
nexfort's type takes (``nexfort.passes.quant.torchao_engine``), then ``torch.compile`` in its default mode, in the
same process and on the same inputs as the other runs (issue 18 compares nexfort's quantized mode with it).

The run quantizes a copy of the denoiser; the original waits on the CPU meanwhile (so the run's peak memory is its
own) and is put back afterwards, untouched, for the runs that follow.

``--torchao-regional`` (run ``torchao:TYPE:regional``) compiles the quantized denoiser's repeated blocks instead of
the whole model (diffusers' ``compile_repeated_blocks`` practice, :func:`nexfort.diffusers.regional.compile_regions`):
torchao's whole-model compile of FLUX.1-dev had not finished after ~500 s on an H200, longer than one call of the
device tool; the regional compile is about one block's. Its figure is then the regional one, named so in the run.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

PREFIX = "torchao:"
REGIONAL = ":regional"


def run_name(type_name: str, regional: bool) -> str:
    """The run's name: ``torchao:TYPE`` (``torchao:TYPE:regional`` with ``--torchao-regional``)."""
    return PREFIX + type_name + (REGIONAL if regional else "")


def parse(compiler: str) -> "tuple[str, bool]":
    """``(type_name, regional)`` of a run name from :func:`run_name`."""
    rest = compiler[len(PREFIX):]
    return (rest[:-len(REGIONAL)], True) if rest.endswith(REGIONAL) else (rest, False)


def compile_regions(loaded: Any) -> int:
    """Compile the denoiser's repeated blocks with ``torch.compile``'s default (each block in place); returns how
    many. A denoiser without repeated blocks is an error (the run would not be the one named)."""
    from nexfort.diffusers.regional import compile_regions as compile_blocks

    n = compile_blocks(loaded.denoiser, lambda block: block.compile())
    if not n:
        raise SystemExit(f"--torchao-regional: {type(loaded.denoiser).__name__} has no repeated blocks to compile")
    loaded.info.setdefault("torchao_regional_blocks", n)
    return n


def check_type(type_name: str) -> None:
    """A bad ``--torchao`` value, or torchao missing, is an error before any model is built."""
    from nexfort.passes.quant import config_for
    from nexfort.passes.quant.torchao_engine import torchao_config

    try:
        torchao_config(config_for(type_name).name)
    except (ImportError, ValueError) as e:
        raise SystemExit(f"--torchao {type_name}: {e}") from e


def swap_in_quantized(loaded: Any, type_name: str) -> Callable[[], None]:
    """Put a torchao-quantized copy of ``loaded``'s denoiser into its pipeline; returns what puts the original back."""
    from nexfort.passes.quant import config_for
    from nexfort.passes.quant.torchao_engine import quantize_with_torchao

    original = loaded.denoiser
    device = next(original.parameters()).device
    quantized = copy.deepcopy(original)
    result = quantize_with_torchao(quantized, config_for(type_name))
    original.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    setattr(loaded.pipe, loaded.denoiser_name, quantized)
    loaded.info.setdefault("torchao", {})[type_name] = result.summary()

    def restore() -> None:
        setattr(loaded.pipe, loaded.denoiser_name, original.to(device))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    return restore

