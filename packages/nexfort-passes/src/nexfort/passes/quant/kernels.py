"""One-pass row-wise fp8 quantization of an activation (``torch.ops.nexfort.fp8_quantize_rows``).

The fp8 linears scale each row of their input by its absolute maximum. Left to Inductor, that quantization is fused
into the kernel that produces the activation (LayerNorm + modulation, GELU after the previous GEMM), which then
reduces the row twice (its norm, then the amax of the result) in one looped kernel: measured on an H200 (PixArt-α
1024², ``benchmarks/results/archive/2026-12-02-h200-issue18-fp8-one-pass/``) those kernels took 11.4 ms per forward
against 1.8 ms for the same producers in fp16, more than the fp8 GEMMs saved. This op reads the activation once and
writes the fp8 rows and their scales in the same pass (the row kept in registers), so the producer stays the cheap
fp16 kernel it is without ``quant``:

    scale = max(rowmax|x|, 1e-12) / 448;  q = clamp(x / scale, -448, 448) -> float8_e4m3fn

On CUDA it is a Triton kernel; elsewhere (and as the reference the tests compare with) the same formula in torch
ops. Registered with ``torch.library.custom_op`` (torch 2.4+) with a fake implementation, so Dynamo and Inductor
keep it as one call; :func:`available` says whether this torch/device has it.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Tuple

import torch

FP8_MAX = 448.0
_OP = "nexfort::fp8_quantize_rows"


def reference(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The formula in torch ops: ``(q, scale)`` with ``scale`` float32 of shape ``(rows, 1)``."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


@functools.lru_cache(maxsize=None)
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows(x_ptr, q_ptr, s_ptr, n_rows, n_cols, stride_x, stride_q,
                      ROWS: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        mask = (rows < n_rows) & (cols < n_cols)
        x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)[:, None]
        scale = tl.maximum(amax, 1e-12) / 448.0
        q = tl.clamp(x / scale, -448.0, 448.0)
        tl.store(q_ptr + rows * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + rows, scale, mask=rows < n_rows)

    return quantize_rows, triton


def _launch(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    kernel, triton = _triton_kernel()
    x = x if x.stride(-1) == 1 else x.contiguous()
    n_rows, n_cols = x.shape
    q = torch.empty((n_rows, n_cols), device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((n_rows, 1), device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(n_cols)
    # about 4-8K elements per program: several short rows, or one long row over more warps
    rows = max(1, min(16, 4096 // block))
    warps = 4 if block * rows <= 2048 else 8 if block * rows <= 8192 else 16
    grid = (triton.cdiv(n_rows, rows),)
    kernel[grid](x, q, scale, n_rows, n_cols, x.stride(0), q.stride(0), ROWS=rows, BLOCK=block, num_warps=warps)
    return q, scale


def _register() -> bool:
    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op") or \
            getattr(torch, "float8_e4m3fn", None) is None:
        return False

    # the schema spelled out: torch 2.4's schema inference cannot read this module's string annotations
    @torch.library.custom_op(_OP, mutates_args=(), schema="(Tensor x) -> (Tensor, Tensor)")
    def fp8_quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.is_cuda and HAS_TRITON:
            return _launch(x)
        return reference(x)

    @fp8_quantize_rows.register_fake
    def _(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
                x.new_empty((x.shape[0], 1), dtype=torch.float32))

    return True


HAS_TRITON = importlib.util.find_spec("triton") is not None
REGISTERED = _register()  # once, at import (not inside a traced function)


def available(device: torch.device) -> bool:
    """Whether :func:`quantize_rows` runs as one Triton pass on ``device`` (CUDA with Triton, torch 2.4+)."""
    return device.type == "cuda" and HAS_TRITON and REGISTERED


def quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x`` (2-D) in float8 e4m3 with a float32 scale per row, by ``torch.ops.nexfort.fp8_quantize_rows``."""
    if not REGISTERED:
        return reference(x)
    return torch.ops.nexfort.fp8_quantize_rows(x)
