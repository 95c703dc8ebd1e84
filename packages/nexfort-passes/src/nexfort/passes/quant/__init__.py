"""Quantization of a model's linear layers: one verb, ``quantize_(model, config)``, and a config per method.

    from nexfort.passes.quant import Float8DynamicConfig, quantize_
    quantize_(transformer, Float8DynamicConfig())          # in place; returns what it did

Each config dataclass sits next to the handler it selects (:func:`register_handler`), as in torchao. Methods:

- ``Float8DynamicConfig`` (:mod:`.fp8`): weights in float8 e4m3 with a scale per output row, activations
  quantized per row at run time, ``torch._scaled_mm`` (Hopper/Ada GPUs, compute capability 8.9+, and the CPU).

The ``quant`` mode flag applies the method named by ``options.quant.type`` to a module compiled through
``nexfort_compile``/``compile_pipe`` (:mod:`.plugin`); ``nexfort.diffusers.quantize_pipe`` does it to a pipeline.
"""

from __future__ import annotations

from nexfort.passes.quant.api import QuantConfig, QuantizationError, config_for, excluding, quantize_, register_handler
from nexfort.passes.quant.fp8 import Float8DynamicConfig, Float8Linear

__all__ = ["QuantConfig", "QuantizationError", "config_for", "excluding", "quantize_", "register_handler",
           "Float8DynamicConfig", "Float8Linear"]
