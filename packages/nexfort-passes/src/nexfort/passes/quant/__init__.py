"""Quantization of a model's linear layers: one verb, ``quantize_(model, config)``, and a config per method.

    from nexfort.passes.quant import Int8DynamicConfig, config_for, quantize_
    quantize_(transformer, Int8DynamicConfig())            # in place; returns what it did (a QuantResult)
    quantize_(transformer, config_for("fp8"))              # by name: options.quant.type, quantize_pipe(quant_type=)

Each config dataclass sits next to the handler it selects (:func:`register_handler`), as in torchao. Types
(:func:`supported_types` lists those of a device):

- ``fp8_e4m3_e4m3_dynamic`` (alias ``fp8``, :class:`Float8DynamicConfig`, :mod:`.fp8`): float8 e4m3 weights with
  a scale per output channel, activations per token at run time, ``torch._scaled_mm`` (GPUs of compute capability
  8.9+, and the CPU where this torch has the kernel).
- ``fp8_e4m3_e4m3_dynamic_per_tensor`` (:class:`Float8DynamicPerTensorConfig`): one scale per tensor.
- ``fp8_e4m3_e4m3_weightonly`` (:class:`Float8WeightOnlyConfig`): fp8 weights dequantized for an ordinary GEMM.
- ``int8_dynamic`` (:class:`Int8DynamicConfig`, :mod:`.int8`): int8 weights per channel, activations per token,
  ``torch._int_mm`` (GPUs of compute capability 8.0+, and the CPU).
- ``int8_weightonly`` (:class:`Int8WeightOnlyConfig`): int8 weights dequantized for an ordinary GEMM.

Selective quantization (:mod:`.selective`): measure each layer's error on calibration inputs and keep the worst in
high precision (``select_layers``, ``Selection.save``/``load``, ``quantize_selected``).

The ``quant`` mode flag applies the method named by ``options.quant.type`` to a module compiled through
``nexfort_compile``/``compile_pipe`` (:mod:`.plugin`); ``nexfort.diffusers.quantize_pipe`` does it to a pipeline.
"""

from __future__ import annotations

from nexfort.passes.quant.api import (
    ALIASES,
    QuantConfig,
    QuantizationError,
    QuantizedLinear,
    QuantResult,
    all_types,
    canonical_type,
    config_for,
    excluding,
    quantize_,
    register_handler,
    supported_types,
)
from nexfort.passes.quant.fp8 import (
                                      Float8DynamicConfig,
                                      Float8DynamicPerTensorConfig,
                                      Float8Linear,
                                      Float8PerTensorLinear,
                                      Float8WeightOnlyConfig,
                                      Float8WeightOnlyLinear,
)
from nexfort.passes.quant.int8 import Int8DynamicConfig, Int8DynamicLinear, Int8WeightOnlyConfig, Int8WeightOnlyLinear
from nexfort.passes.quant.selective import (
    Selection,
    check_top_percentage,
    fingerprint,
    measure_errors,
    quantize_selected,
    select_layers,
)

__all__ = ["ALIASES", "QuantConfig", "QuantizationError", "QuantizedLinear", "QuantResult", "all_types",
           "canonical_type", "config_for", "excluding", "quantize_", "register_handler", "supported_types",
           "Float8DynamicConfig", "Float8DynamicPerTensorConfig", "Float8Linear", "Float8PerTensorLinear",
           "Float8WeightOnlyConfig", "Float8WeightOnlyLinear", "Int8DynamicConfig", "Int8DynamicLinear",
           "Int8WeightOnlyConfig", "Int8WeightOnlyLinear", "Selection", "check_top_percentage", "fingerprint",
           "measure_errors", "quantize_selected", "select_layers"]
