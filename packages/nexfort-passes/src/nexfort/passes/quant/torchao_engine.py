"""torchao as the engine behind nexfort's quantization types (``options.quant.engine = "torchao"``).

nexfort's own layers (:mod:`.fp8`, :mod:`.int8`) are the default engine; torchao's tensor subclasses are the
reference the issue measures against and the better tool where they measure faster. This module maps each nexfort
type to the torchao config that does the same thing and applies it to the same layers nexfort would take (the
type's size rules, ``min_features``, the caller's filter), so the two engines are compared layer for layer:

| nexfort type | torchao config |
|---|---|
| ``fp8_e4m3_e4m3_dynamic`` | ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` |
| ``fp8_e4m3_e4m3_dynamic_per_tensor`` | ``Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())`` |
| ``fp8_e4m3_e4m3_weightonly`` | ``Float8WeightOnlyConfig()`` |
| ``int8_dynamic`` | ``Int8DynamicActivationInt8WeightConfig()`` |
| ``int8_weightonly`` | ``Int8WeightOnlyConfig()`` |

torchao's row-wise fp8 takes bfloat16 weights only: an fp16 model with that type is an error here, before anything
changes, that names the ways out. Needs ``pip install torchao`` (tested with 0.18).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

import torch

from nexfort.passes.quant import api

ENGINES = ("nexfort", "torchao")
DYNAMIC_FP8 = ("fp8_e4m3_e4m3_dynamic", "fp8_e4m3_e4m3_dynamic_per_tensor")
ELSEWHERE = ("int8_dynamic", "int8_weightonly", "fp8_e4m3_e4m3_weightonly")  # what torchao runs off fp8 GPUs
INSTALL = "pip install torchao"


def _configs() -> Dict[str, Callable[[], Any]]:
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            PerRow,
            PerTensor,
        )
    except ImportError as e:
        raise ImportError(f"options.quant.engine='torchao' needs torchao: {INSTALL} ({e})") from e
    return {
        "fp8_e4m3_e4m3_dynamic": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        "fp8_e4m3_e4m3_dynamic_per_tensor": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()),
        "fp8_e4m3_e4m3_weightonly": lambda: Float8WeightOnlyConfig(),
        "int8_dynamic": lambda: Int8DynamicActivationInt8WeightConfig(),
        "int8_weightonly": lambda: Int8WeightOnlyConfig(),
    }


def torchao_config(type_name: str) -> Any:
    """The torchao config that does what the nexfort type ``type_name`` (or its alias) does."""
    name = api.canonical_type(type_name)
    configs = _configs()
    if name not in configs:
        raise api.QuantizationError(api.unknown_type_message(type_name))
    return configs[name]()


def _inner_tensors(t: torch.Tensor) -> Iterable[torch.Tensor]:
    """The plain tensors behind ``t`` (a torchao tensor subclass holds its data and scales as inner tensors)."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is None or type(t) in (torch.Tensor, torch.nn.Parameter):
        yield t
        return
    names, _ = t.__tensor_flatten__()
    for n in names:
        inner = getattr(t, n)
        if isinstance(inner, torch.Tensor):
            yield from _inner_tensors(inner)


def quantize_with_torchao(model: torch.nn.Module, config: api.QuantConfig,
                          filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> api.QuantResult:
    """Quantize the layers of ``model`` that ``config`` (a nexfort type's config) would take, with torchao's
    config for that type; the same :class:`~nexfort.passes.quant.api.QuantResult` as :func:`quantize_`."""
    config.check(model)
    tao_config = torchao_config(config.name)
    layers = api.candidates(model, config, filter_fn)
    if config.name == "fp8_e4m3_e4m3_dynamic":
        fp16 = [fqn for fqn, m in layers if m.weight.dtype == torch.float16]
        if fp16:
            raise api.QuantizationError(
                f"torchao's row-wise fp8 (Float8DynamicActivationFloat8WeightConfig(PerRow())) takes bfloat16 weights; "
                f"{len(fp16)} layers are float16 (e.g. {fp16[0]!r}). Use engine 'nexfort' (options.quant.engine), "
                f"a bfloat16 model, or type 'fp8_e4m3_e4m3_dynamic_per_tensor'.")
    device = layers[0][1].weight.device if layers else torch.device("cpu")
    if config.name in DYNAMIC_FP8 and not (device.type == "cuda" and api.cuda_capability(device) >= (8, 9)):
        raise api.QuantizationError(
            f"torchao's dynamic fp8 ({config.name}) needs a CUDA GPU of compute capability 8.9+; on {device.type} use "
            f"engine 'nexfort' (options.quant.engine) or one of torchao's types there: {', '.join(ELSEWHERE)}.")
    chosen = {fqn for fqn, _ in layers}
    before = api._storage_bytes(m.weight for _, m in layers)
    if chosen:
        from torchao.quantization import quantize_ as tao_quantize_

        tao_quantize_(model, tao_config, filter_fn=lambda m, fqn: fqn in chosen)
    after = sum(t.untyped_storage().nbytes() for fqn in chosen
                for t in _inner_tensors(model.get_submodule(fqn).weight))
    from nexfort.core.api import counters

    counters["quant"][f"torchao:{config.name}"] += len(chosen)
    return api.QuantResult(sorted(chosen), f"{config.name} (torchao)", before, after)
