"""int8 linear layers: ``int8_dynamic`` and ``int8_weightonly`` (A100-class GPUs, compute capability 8.0+, and
the CPU).

``int8_dynamic``: weights quantized once, symmetric, one scale per output row (per channel); activations per row
(per token) at each call; the product in integers (``torch._int_mm``, int32 accumulation, exact), rescaled:

    y = (round(x / sx) @ round(W / sw)^T) * sx * sw^T + b,   sx = rowmax|x| / 127,  sw = rowmax|W| / 127

Where this torch has no ``torch._int_mm`` on the CPU (:func:`cpu_int_mm`), the CPU multiplies the same int8 values
as int32 tensors (same result, slower). On CUDA ``_int_mm`` needs more than 16 rows: fewer are padded.
``gemm_kernel="triton"`` (opt-in) replaces ``_int_mm`` + the rescale pass by one GEMM with the rescale and the bias
in its epilogue (``torch.ops.nexfort.int8_scaled_mm``, :mod:`.int8_gemm`; its torch-ops form off CUDA).
``int8_weightonly``: int8 weights with row scales, dequantized to the input's dtype before an ordinary GEMM (a
quarter of the fp32 weight memory, half of bf16's; under ``torch.compile`` Inductor fuses the dequantization).
Error: the int8 rounding, about 1 % relative L2 per layer on random data for the dynamic type, well under for
weight-only (tests/passes/test_quant_types.py). Left alone: layers whose ``in_features`` or ``out_features`` is not a
multiple of 8 (int8 dynamic only: what the int8 GEMM needs), smaller than ``min_features``, or not fp16/bf16/fp32.
Row scales make the Q/K/V row views of a fused projection views of its int8 rows, as for fp8.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from nexfort.passes.quant import api
from nexfort.passes.quant.api import QuantConfig, QuantizedLinear, register_handler, replace_rowwise


def int8_unsupported(device: torch.device, int_mm: bool = True) -> Optional[str]:
    """Why the int8 types cannot run on ``device`` (``None``: they can); ``int_mm=False``: a type that needs no
    integer GEMM (weight-only)."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if int_mm and not hasattr(torch, "_int_mm"):
            return f"torch {torch.__version__} has no torch._int_mm"
        cap = api.cuda_capability(device)
        if tuple(cap) < (8, 0):
            return (f"int8 needs an A100-class GPU (compute capability 8.0+); {api.device_name(device)} is "
                    f"{cap[0]}.{cap[1]}")
        return None
    return f"no int8 kernels for {device.type} devices"


@functools.lru_cache(maxsize=None)
def cpu_int_mm() -> bool:
    """Whether this torch runs ``torch._int_mm`` (int8 x int8 -> int32) on the CPU."""
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.ones(17, 16, dtype=torch.int8)
        return bool(torch._int_mm(a, a.t()[:, :8].contiguous())[0, 0] == 16)
    except Exception:  # noqa: BLE001 - not implemented for the CPU in this torch
        return False


#: :func:`cpu_int_mm`, found eagerly when layers are quantized (:func:`Int8DynamicLinear.from_linear`): a traced
#: forward reads this bool (a constant to Dynamo) instead of running the probe, whose ``bool(tensor)`` was a graph
#: break at every int8 linear on the CPU
_CPU_INT_MM: Optional[bool] = None


def quantize_rows_int8(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``t`` (2-D) in int8 (symmetric, -127..127) and its float32 scale per row (``t ~= q.float() * scale``), in
    torch ops (the formula of ``torch.ops.nexfort.int8_quantize_rows``: ``kernels.reference_int8``)."""
    from nexfort.passes.quant import kernels

    return kernels.reference_int8(t.detach())


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a @ b_t`` for int8 ``a`` ``(m, k)`` and ``b_t`` ``(k, n)``, in int32."""
    if a.is_cuda:
        m = a.shape[0]
        if m <= 16:  # cuBLASLt's int8 GEMM needs more than 16 rows
            a = torch.nn.functional.pad(a, (0, 0, 0, 17 - m))
        return torch._int_mm(a, b_t)[:m]
    if _CPU_INT_MM if _CPU_INT_MM is not None else cpu_int_mm():
        return torch._int_mm(a, b_t)
    return a.to(torch.int32) @ b_t.to(torch.int32)


#: ``Int8DynamicConfig.gemm_kernel`` (option ``quant.gemm_kernel``)
GEMM_KERNELS = ("auto", "int_mm", "triton")


@dataclass
class Int8DynamicConfig(QuantConfig):
    """int8 weights (one scale per output row) and activations (one scale per row, computed per call)."""

    name = "int8_dynamic"
    min_features: int = 256
    # how activations are quantized: "auto" and "inductor" (torch ops that Inductor fuses into the producing
    # kernel: the measured default), "triton" (one pass, torch.ops.nexfort.int8_quantize_rows: Triton on CUDA, its
    # torch-ops implementation elsewhere; opt-in until measured on a GPU)
    activation_kernel: str = "auto"
    # the GEMM (GEMM_KERNELS): "auto" and "int_mm" (torch._int_mm, then the rescale as torch ops that Inductor
    # fuses with what follows: the measured default), "triton" (torch.ops.nexfort.int8_scaled_mm, the rescale and
    # bias in the GEMM's epilogue; opt-in until timed on a GPU)
    gemm_kernel: str = "auto"

    def __post_init__(self) -> None:
        from nexfort.passes.quant.fp8 import ACTIVATION_KERNELS

        if self.activation_kernel not in ACTIVATION_KERNELS:
            raise api.QuantizationError(f"Unknown activation_kernel {self.activation_kernel!r} for {self.name}; "
                                        f"valid: {', '.join(ACTIVATION_KERNELS)}.")
        if self.gemm_kernel not in GEMM_KERNELS:
            raise api.QuantizationError(f"Unknown gemm_kernel {self.gemm_kernel!r} for {self.name}; "
                                        f"valid: {', '.join(GEMM_KERNELS)}.")

    @classmethod
    def unsupported(cls, device: torch.device) -> Optional[str]:
        return int8_unsupported(device)

    def accepts(self, linear: torch.nn.Linear) -> bool:
        return api.takes_linear(self, linear, 8)


@dataclass
class Int8WeightOnlyConfig(QuantConfig):
    """int8 weights (one scale per output row), dequantized for an ordinary GEMM in the input's dtype."""

    name = "int8_weightonly"
    min_features: int = 256

    @classmethod
    def unsupported(cls, device: torch.device) -> Optional[str]:
        return int8_unsupported(device, int_mm=False)

    def accepts(self, linear: torch.nn.Linear) -> bool:
        return api.takes_linear(self, linear)


class Int8DynamicLinear(QuantizedLinear):
    """``nn.Linear`` with an int8 weight (``weight``, ``(out, in)``) and its row scales (``weight_scale``, float32,
    ``(out, 1)``); activations are quantized per row at each call; the output has the input's dtype."""

    kind = "int8 dynamic"
    activation_kernel = "auto"  # Int8DynamicConfig.activation_kernel
    gemm_kernel = "auto"  # Int8DynamicConfig.gemm_kernel

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Int8DynamicLinear":
        global _CPU_INT_MM
        if _CPU_INT_MM is None:
            _CPU_INT_MM = cpu_int_mm()
        q, scale = quantize_rows_int8(linear.weight)
        return cls(q, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xq, xs = self._quantize_input(x2)
        if self.gemm_kernel == "triton":
            from nexfort.passes.quant import int8_gemm

            if not int8_gemm.REGISTERED:
                raise api.QuantizationError("gemm_kernel='triton' needs torch >= 2.4 (torch.library.custom_op); "
                                            "use 'auto' or 'int_mm'")
            y = int8_gemm.scaled_mm(xq, self.weight, xs, self.weight_scale, self.bias, x.dtype)
            return y.reshape(*shape[:-1], self.out_features)
        acc = int8_matmul(xq, self.weight.t())
        y = (acc.to(torch.float32) * xs * self.weight_scale.t()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _quantize_input(self, x2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from nexfort.passes.quant import kernels

        if self.activation_kernel == "triton":
            if kernels.available(x2.device) or (kernels.REGISTERED and not x2.is_cuda):
                return kernels.quantize_rows_int8(x2)
            raise api.QuantizationError("activation_kernel='triton' needs Triton and torch >= 2.4 (pip install "
                                        "triton); use 'auto' or 'inductor'")
        return quantize_rows_int8(x2)


class Int8WeightOnlyLinear(Int8DynamicLinear):
    """int8 weight with row scales, dequantized to the input's dtype at each call (an ordinary GEMM)."""

    kind = "int8 weight-only"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight.to(torch.float32) * self.weight_scale).to(x.dtype)
        return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


@register_handler(Int8DynamicConfig)
def _quantize_int8_dynamic(model: torch.nn.Module, layers: List[Any], config: Int8DynamicConfig) -> int:
    n = replace_rowwise(model, layers, Int8DynamicLinear)
    for fqn, _ in layers:
        layer = model.get_submodule(fqn)
        layer.activation_kernel, layer.gemm_kernel = config.activation_kernel, config.gemm_kernel
    return n


@register_handler(Int8WeightOnlyConfig)
def _quantize_int8_weightonly(model: torch.nn.Module, layers: List[Any], config: Int8WeightOnlyConfig) -> int:
    return replace_rowwise(model, layers, Int8WeightOnlyLinear)
