"""float8 (e4m3) linear layers: weights quantized once with a scale per output row, activations per row at run time.

    y = (round8(x / sx) @ round8(W / sw)^T) * sx * sw^T + b,   sx = rowmax|x| / 448,  sw = rowmax|W| / 448

``torch._scaled_mm`` runs the product on fp8 tensor cores (Hopper/Ada: twice the fp16 peak rate) and on the CPU.
Under ``torch.compile`` the activation's row maximum, scaling and rounding are ordinary ops Inductor can fuse
(what it makes of them on the GPU, and the speed, are not measured yet: ``benchmarks/gpu/quant_fp8.sh``). Error: the
e4m3 rounding of both operands, about 2-4 % relative L2 per layer on random data (tests/passes/test_quant.py):
this is a speed-for-accuracy trade, off unless asked for (the ``quant`` flag or ``quantize_``).

Left alone: layers whose ``in_features`` or ``out_features`` is not a multiple of 16 (what the fp8 GEMM needs),
smaller than ``min_features``, or not fp16/bf16/fp32. Row scales make a slice of rows of a quantized weight exactly
the quantized slice, so layers whose weights are row views of another layer's (the unfused Q/K/V projections
after ``fuse_qkv_projections``, :mod:`nexfort.diffusers.fused`) become views of the fused layer's fp8 rows:
quantizing adds no copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from nexfort.passes.quant.api import QuantConfig, QuantizationError, register_handler, set_submodule

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class Float8DynamicConfig(QuantConfig):
    """float8 e4m3 weights (one scale per output row) and activations (one scale per row, computed per call)."""

    name = "fp8"
    # layers with fewer input or output features than this are left alone (quantizing the activations costs
    # a pass over them that a small GEMM does not repay)
    min_features: int = 256

    def check(self, model: torch.nn.Module) -> None:
        if FP8 is None or not hasattr(torch, "_scaled_mm"):
            raise QuantizationError(f"quant type 'fp8' needs torch.float8_e4m3fn and torch._scaled_mm "
                                    f"(torch 2.1+ with fp8 support); this is torch {torch.__version__}.")
        p = next(model.parameters(), None)
        if p is not None and p.is_cuda:
            cap = torch.cuda.get_device_capability(p.device)
            if cap < (8, 9):
                raise QuantizationError(
                    f"quant type 'fp8' needs a GPU with fp8 tensor cores (compute capability 8.9+: H100, "
                    f"L40, RTX 4090); {torch.cuda.get_device_name(p.device)} is {cap[0]}.{cap[1]}.")
        elif p is not None and p.device.type == "cpu" and not cpu_fp8_gemm():
            raise QuantizationError(f"quant type 'fp8': torch {torch.__version__} has no fp8 GEMM on the CPU "
                                    "(torch._scaled_mm); move the model to an fp8 GPU (H100, L40, RTX 4090) first.")

    def accepts(self, linear: torch.nn.Linear) -> bool:
        w = linear.weight
        return (w.dtype in FLOAT_DTYPES and w.dim() == 2 and linear.in_features % 16 == 0
                and linear.out_features % 16 == 0
                and min(linear.in_features, linear.out_features) >= self.min_features)


@functools.lru_cache(maxsize=None)
def cpu_fp8_gemm() -> bool:
    """Whether this torch runs ``torch._scaled_mm`` with row scales on the CPU (2.13 does; old releases do not)."""
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        return False
    try:
        a = torch.ones(16, 16).to(FP8)
        one = torch.ones(16, 1)
        out = torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.float32)
        return bool(out[0, 0] == 16)
    except Exception:  # noqa: BLE001 - not implemented for the CPU, or another signature
        return False


def quantize_rows(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``t`` (2-D) in float8 e4m3 and its float32 scale per row (``t ~= q.float() * scale``)."""
    scale = t.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    q = (t.detach().float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


class Float8Linear(torch.nn.Module):
    """``nn.Linear`` with a float8 weight (``weight``, e4m3, ``(out, in)``) and its row scales (``weight_scale``,
    float32, ``(out, 1)``); activations are quantized per row at each call; the output has the input's dtype."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = torch.nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Float8Linear":
        q, scale = quantize_rows(linear.weight)
        return cls(q, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xq, xs = quantize_rows(x2)
        # row-wise scaled fp8 GEMMs on CUDA produce bf16 (fp16 is not offered); the CPU gives any float dtype
        mm_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale.t(), out_dtype=mm_dtype)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn: Any, recurse: bool = True) -> "Float8Linear":
        # .to(dtype)/.half() convert every floating buffer: keep the quantized ones as they are (device moves only)
        kept = {"weight": self.weight, "weight_scale": self.weight_scale}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                setattr(self, name, old.to(new.device))
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def _row_view_of(w: torch.Tensor, owner: torch.Tensor) -> Optional[int]:
    """The first row of ``owner`` that ``w`` starts at, where ``w`` is a block of whole rows of ``owner``."""
    if w is owner or w.dim() != 2 or owner.dim() != 2 or w.shape[1] != owner.shape[1] or w.dtype != owner.dtype:
        return None
    if not (w.is_contiguous() and owner.is_contiguous()) or w.device != owner.device:
        return None
    if w.untyped_storage().data_ptr() != owner.untyped_storage().data_ptr():
        return None
    offset = w.storage_offset() - owner.storage_offset()
    if offset < 0 or offset % owner.shape[1]:
        return None
    row = offset // owner.shape[1]
    return row if row + w.shape[0] <= owner.shape[0] else None


@register_handler(Float8DynamicConfig)
def _quantize_fp8(model: torch.nn.Module, layers: List[Any], config: Float8DynamicConfig) -> int:
    # the largest weight of each storage first: the others may be row views of it (fused projections)
    layers = sorted(layers, key=lambda fl: -fl[1].weight.numel())
    owners: Dict[int, List[Tuple[torch.Tensor, Float8Linear]]] = {}
    for fqn, linear in layers:
        w = linear.weight
        new = None
        for owner_w, owner_q in owners.get(w.untyped_storage().data_ptr(), []):
            row = _row_view_of(w, owner_w)
            if row is not None:
                rows = slice(row, row + w.shape[0])
                new = Float8Linear(owner_q.weight[rows], owner_q.weight_scale[rows], linear.bias)
                break
        if new is None:
            new = Float8Linear.from_linear(linear)
            owners.setdefault(w.untyped_storage().data_ptr(), []).append((w, new))
        set_submodule(model, fqn, new)
    return len(layers)
