"""float8 (e4m3) linear layers: the three fp8 types.

``fp8_e4m3_e4m3_dynamic`` (alias ``fp8``): weights quantized once with a scale per output row (per channel),
activations per row (per token) at run time:

    y = (round8(x / sx) @ round8(W / sw)^T) * sx * sw^T + b,   sx = rowmax|x| / 448,  sw = rowmax|W| / 448

``fp8_e4m3_e4m3_dynamic_per_tensor``: the same with one scale for the whole weight and one for the whole activation
(the cheapest scaling; an outlier row costs every row precision). ``fp8_e4m3_e4m3_weightonly``: fp8 weights with row
scales, dequantized to the activation's dtype before an ordinary GEMM (halves the weight memory of bf16, no fp8
GEMM needed; under ``torch.compile`` Inductor fuses the dequantization).

``torch._scaled_mm`` runs the dynamic products on fp8 tensor cores (Hopper/Ada: twice the fp16 peak rate) and on the
CPU where this torch has the kernel (:func:`cpu_fp8_gemm`). fp8 types need a GPU of compute capability 8.9+ (H100,
L40, RTX 4090); on another GPU they are an error that names the types it supports. Error: the e4m3 rounding, about
2-4 % relative L2 per layer on random data (tests/passes/test_quant*.py): a speed-for-accuracy trade, off unless
asked for.

Left alone: layers whose ``in_features`` or ``out_features`` is not a multiple of 16 (what the fp8 GEMM needs),
smaller than ``min_features``, or not fp16/bf16/fp32. Row scales make a slice of rows of a quantized weight exactly
the quantized slice, so layers whose weights are row views of another layer's (the unfused Q/K/V projections after
``fuse_qkv_projections``, :mod:`nexfort.diffusers.fused`) become views of the fused layer's fp8 rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from nexfort.passes.quant import api, kernels
from nexfort.passes.quant.api import QuantConfig, QuantizedLinear, register_handler, replace_rowwise, set_submodule

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0
ACTIVATION_KERNELS = ("auto", "triton", "inductor")


def fp8_unsupported(device: torch.device, gemm: str = "rowwise") -> Optional[str]:
    """Why the fp8 types cannot run on ``device`` (``gemm``: the scaling of the fp8 GEMM needed, or ``None``)."""
    if FP8 is None:
        return f"torch {torch.__version__} has no torch.float8_e4m3fn"
    if gemm is not None and not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    if device.type == "cuda":
        cap = api.cuda_capability(device)
        if tuple(cap) < (8, 9):
            return (f"fp8 needs a GPU with fp8 tensor cores (compute capability 8.9+: H100, L40, RTX 4090); "
                    f"{api.device_name(device)} is {cap[0]}.{cap[1]}")
        return None
    if device.type == "cpu":
        if gemm is not None and not cpu_fp8_gemm(gemm == "tensorwise"):
            return f"torch {torch.__version__} has no {gemm} fp8 GEMM (torch._scaled_mm) on the CPU"
        return None
    return f"no fp8 kernels for {device.type} devices"


@functools.lru_cache(maxsize=None)
def cpu_fp8_gemm(per_tensor: bool = False) -> bool:
    """Whether this torch runs ``torch._scaled_mm`` with row (or whole-tensor) scales on the CPU (2.13 does; old
    releases do not)."""
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        return False
    try:
        a = torch.ones(16, 16).to(FP8)
        sa, sb = (torch.tensor(1.0), torch.tensor(1.0)) if per_tensor else (torch.ones(16, 1), torch.ones(1, 16))
        out = torch._scaled_mm(a, a.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
        return bool(out[0, 0] == 16)
    except Exception:  # noqa: BLE001 - not implemented for the CPU, or another signature
        return False


@dataclass
class Float8DynamicConfig(QuantConfig):
    """float8 e4m3 weights (one scale per output row) and activations (one scale per row, computed per call)."""

    name = "fp8_e4m3_e4m3_dynamic"
    # layers with fewer input or output features than this are left alone (quantizing the activations costs
    # a pass over them that a small GEMM does not repay)
    min_features: int = 256
    # how activations are quantized on CUDA: "triton" (one pass, nexfort.passes.quant.kernels), "inductor" (torch
    # ops that Inductor fuses into the producing kernel), "auto" (triton where available); on the CPU "triton" is the
    # op with its torch-ops implementation (the GPU's graph, for tests), "auto" the torch ops
    activation_kernel: str = "auto"
    # CUDA: let the fp8 tensor cores accumulate in their fast mode (``torch._scaled_mm(use_fast_accum=True)``,
    # torchao's inference default; Hopper promotes the partial sums to float32 periodically). False: full-precision
    # accumulation, a slower GEMM. The CPU's kernel has one mode.
    fast_accum: bool = True

    def __post_init__(self) -> None:
        if self.activation_kernel not in ACTIVATION_KERNELS:
            raise api.QuantizationError(f"Unknown activation_kernel {self.activation_kernel!r} for {self.name}; "
                                        f"valid: {', '.join(ACTIVATION_KERNELS)}.")
        if not isinstance(self.fast_accum, bool):
            raise api.QuantizationError(f"fast_accum must be True or False for {self.name}, got "
                                        f"{self.fast_accum!r}.")

    @classmethod
    def unsupported(cls, device: torch.device) -> Optional[str]:
        return fp8_unsupported(device, "rowwise")

    def accepts(self, linear: torch.nn.Linear) -> bool:
        return api.takes_linear(self, linear, 16)


@dataclass
class Float8DynamicPerTensorConfig(Float8DynamicConfig):
    """float8 e4m3 weights and activations, one scale per tensor (the activation's computed per call)."""

    name = "fp8_e4m3_e4m3_dynamic_per_tensor"
    min_features: int = 256

    @classmethod
    def unsupported(cls, device: torch.device) -> Optional[str]:
        return fp8_unsupported(device, "tensorwise")


@dataclass
class Float8WeightOnlyConfig(Float8DynamicConfig):
    """float8 e4m3 weights (one scale per output row), dequantized for an ordinary GEMM in the input's dtype."""

    name = "fp8_e4m3_e4m3_weightonly"
    min_features: int = 256

    @classmethod
    def unsupported(cls, device: torch.device) -> Optional[str]:
        return fp8_unsupported(device, None)

    def accepts(self, linear: torch.nn.Linear) -> bool:  # no fp8 GEMM: any shape
        return api.takes_linear(self, linear)


def quantize_rows(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``t`` (2-D) in float8 e4m3 and its float32 scale per row (``t ~= q.float() * scale``), in torch ops (the
    formula of ``torch.ops.nexfort.fp8_quantize_rows``: :func:`nexfort.passes.quant.kernels.reference`)."""
    return kernels.reference(t.detach())


def quantize_tensor(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``t`` in float8 e4m3 and its float32 scale (0-d, one for the whole tensor)."""
    scale = t.detach().abs().amax().float().clamp(min=1e-12) / FP8_MAX
    q = (t.detach().float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


class Float8Linear(QuantizedLinear):
    """``nn.Linear`` with a float8 weight (``weight``, e4m3, ``(out, in)``) and its row scales (``weight_scale``,
    float32, ``(out, 1)``); activations are quantized per row at each call; the output has the input's dtype."""

    kind = "fp8"
    activation_kernel = "auto"  # Float8DynamicConfig.activation_kernel
    fast_accum = True  # Float8DynamicConfig.fast_accum

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Float8Linear":
        q, scale = quantize_rows(linear.weight)
        return cls(q, scale, linear.bias)

    def _quantize_input(self, x2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        kernel = self.activation_kernel
        # "triton" on the CPU: the op with its torch-ops implementation (what the prologue pass fuses, as on the GPU)
        if (kernel != "inductor" and kernels.available(x2.device)) or \
                (kernel == "triton" and kernels.REGISTERED and not x2.is_cuda):
            return kernels.quantize_rows(x2)
        if kernel == "triton" and x2.is_cuda:
            raise api.QuantizationError("activation_kernel='triton' needs Triton and torch >= 2.4 "
                                        "(pip install triton); use 'auto' or 'inductor'")
        return quantize_rows(x2)

    def _weight_scale_for_mm(self) -> torch.Tensor:
        return self.weight_scale.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xq, xs = self._quantize_input(x2)
        # row-wise scaled fp8 GEMMs on CUDA produce bf16 (fp16 is not offered) and add a bf16 bias in their epilogue
        # (no pass over the output for it); the CPU gives any float dtype, the bias added after
        rowwise_cuda = bool(x.is_cuda and self.weight_scale.dim())
        mm_dtype = torch.bfloat16 if rowwise_cuda else x.dtype
        epilogue_bias = self.bias.to(mm_dtype) if rowwise_cuda and self.bias is not None else None
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self._weight_scale_for_mm(), bias=epilogue_bias,
                             out_dtype=mm_dtype, use_fast_accum=bool(self.fast_accum and x.is_cuda))
        y = y.to(x.dtype)
        if self.bias is not None and epilogue_bias is None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)


class Float8PerTensorLinear(Float8Linear):
    """:class:`Float8Linear` with one scale for the weight (``weight_scale``, 0-d) and one per activation."""

    kind = "fp8 per-tensor"

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Float8PerTensorLinear":
        q, scale = quantize_tensor(linear.weight)
        return cls(q, scale, linear.bias)

    def _quantize_input(self, x2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return quantize_tensor(x2)

    def _weight_scale_for_mm(self) -> torch.Tensor:
        return self.weight_scale


class Float8WeightOnlyLinear(Float8Linear):
    """fp8 weight with row scales, dequantized to the input's dtype at each call (an ordinary GEMM)."""

    kind = "fp8 weight-only"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight.to(torch.float32) * self.weight_scale).to(x.dtype)
        return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


@register_handler(Float8DynamicConfig, aliases=("fp8",))
def _quantize_fp8(model: torch.nn.Module, layers: List[Any], config: Float8DynamicConfig) -> int:
    n = replace_rowwise(model, layers, Float8Linear)
    for fqn, _ in layers:
        layer = model.get_submodule(fqn)
        layer.activation_kernel, layer.fast_accum = config.activation_kernel, config.fast_accum
    return n


@register_handler(Float8WeightOnlyConfig)
def _quantize_fp8_weightonly(model: torch.nn.Module, layers: List[Any], config: Float8WeightOnlyConfig) -> int:
    return replace_rowwise(model, layers, Float8WeightOnlyLinear)


@register_handler(Float8DynamicPerTensorConfig)
def _quantize_fp8_per_tensor(model: torch.nn.Module, layers: List[Any], config: QuantConfig) -> int:
    # one scale per weight: a row view of a fused weight gets its own scale (no sharing of the fused fp8 rows)
    for fqn, linear in layers:
        layer = Float8PerTensorLinear.from_linear(linear)
        layer.fast_accum = config.fast_accum
        set_submodule(model, fqn, layer)
    return len(layers)
