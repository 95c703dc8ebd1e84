"""The Triton kernels of the quantize ops (:mod:`nexfort.passes.quant.kernels` registers the ops and holds their
torch-ops references): the one-pass row-wise quantization (fp8 e4m3, or int8 with ``INT8``), its fused form (an
activation and a concatenation computed in registers) and its adaLN form (LayerNorm + modulation). Each kernel is
defined on first use, where Triton is imported (CPU-only installs never import it); ``_launch*`` allocate the outputs
and launch them.
"""

from __future__ import annotations

import functools
from typing import Tuple

import torch

#: the activations the fused kernel applies to a part (its ``ACT_*`` constexprs index this)
ACTIVATIONS = ("none", "gelu_tanh")


@functools.lru_cache(maxsize=None)
def _triton_ln_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows_ln_modulate(x_ptr, sc_ptr, sh_ptr, q_ptr, s_ptr, n_rows, n_cols, tokens, eps, stride_x,
                                  stride_sc, stride_sh, stride_q, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                                  INT8: tl.constexpr = False):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        in_rows = rows < n_rows
        mask = in_rows & (cols < n_cols)
        x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1)[:, None] / n_cols
        xc = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1)[:, None] / n_cols + eps)
        sample = rows // tokens  # the strides are 0 for one row of scale/shift shared by all
        sc = tl.load(sc_ptr + sample * stride_sc + cols, mask=mask, other=0.0).to(tl.float32)
        sh = tl.load(sh_ptr + sample * stride_sh + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.where(mask, xc * rstd * (1.0 + sc) + sh, 0.0)
        amax = tl.max(tl.abs(y), axis=1)[:, None]
        if INT8:  # symmetric int8, rounded half to even (as the plain kernel)
            scale = tl.maximum(amax, 1e-12) / 127.0
            q = tl.clamp((y / scale + 12582912.0) - 12582912.0, -127.0, 127.0)
        else:
            scale = tl.maximum(amax, 1e-12) / 448.0
            q = tl.clamp(y / scale, -448.0, 448.0)
        tl.store(q_ptr + rows * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + rows, scale, mask=in_rows)

    return quantize_rows_ln_modulate, triton


def _launch_ln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
               eps: float, int8: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    kernel, triton = _triton_ln_kernel()
    x, scale, shift = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, scale, shift))
    n_rows, n_cols = x.shape
    q = torch.empty((n_rows, n_cols), device=x.device, dtype=torch.int8 if int8 else torch.float8_e4m3fn)
    s = torch.empty((n_rows, 1), device=x.device, dtype=torch.float32)
    block, rows, warps = _grid_shape(triton, n_cols)
    kernel[(triton.cdiv(n_rows, rows),)](
        x, scale, shift, q, s, n_rows, n_cols, max(int(tokens), 1), float(eps), x.stride(0),
        0 if scale.shape[0] == 1 else scale.stride(0), 0 if shift.shape[0] == 1 else shift.stride(0), q.stride(0),
        ROWS=rows, BLOCK=block, INT8=int8, num_warps=warps)
    return q, s


@functools.lru_cache(maxsize=None)
def _triton_fused_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows_fused(a_ptr, b_ptr, q_ptr, s_ptr, n_rows, n_a, n_b, stride_a, stride_b, stride_q,
                            ACT_A: tl.constexpr, ACT_B: tl.constexpr, HAS_B: tl.constexpr,
                            ROWS: tl.constexpr, BLOCK: tl.constexpr, INT8: tl.constexpr = False):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        in_rows = rows < n_rows
        in_a = cols < n_a
        # GELU (tanh approximation) written out: x * sigmoid(2 * sqrt(2/pi) * (x + 0.044715 x^3)) (one kernel body:
        # the interpreter does not see jit helpers defined beside it in this function)
        x = tl.load(a_ptr + rows * stride_a + cols, mask=in_rows & in_a, other=0.0).to(tl.float32)
        if ACT_A == 1:
            x = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
        n_cols = n_a
        if HAS_B:
            n_cols = n_a + n_b
            in_b = (cols >= n_a) & (cols < n_cols)
            xb = tl.load(b_ptr + rows * stride_b + (cols - n_a), mask=in_rows & in_b, other=0.0).to(tl.float32)
            if ACT_B == 1:
                xb = xb * tl.sigmoid(1.5957691216057308 * (xb + 0.044715 * xb * xb * xb))
            x = tl.where(in_a, x, xb)
        x = tl.where(in_rows & (cols < n_cols), x, 0.0)  # padding columns: 0 whatever the activation makes of it
        amax = tl.max(tl.abs(x), axis=1)[:, None]
        if INT8:  # symmetric int8, rounded half to even (as the plain kernel)
            scale = tl.maximum(amax, 1e-12) / 127.0
            q = tl.clamp((x / scale + 12582912.0) - 12582912.0, -127.0, 127.0)
        else:
            scale = tl.maximum(amax, 1e-12) / 448.0
            q = tl.clamp(x / scale, -448.0, 448.0)
        tl.store(q_ptr + rows * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=in_rows & (cols < n_cols))
        tl.store(s_ptr + rows, scale, mask=in_rows)

    return quantize_rows_fused, triton


def _grid_shape(triton, n_cols: int) -> Tuple[int, int, int]:
    """``(BLOCK, ROWS, num_warps)`` for rows of ``n_cols``: about 4-8K elements per program (several short rows,
    or one long row over more warps)."""
    block = triton.next_power_of_2(n_cols)
    rows = max(1, min(16, 4096 // block))
    warps = 4 if block * rows <= 2048 else 8 if block * rows <= 8192 else 16
    return block, rows, warps


def _launch_fused(a: torch.Tensor, b, act_a: str, act_b: str, int8: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    kernel, triton = _triton_fused_kernel()
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = None if b is None else b if b.stride(-1) == 1 else b.contiguous()
    n_rows, n_a = a.shape
    n_b = 0 if b is None else b.shape[1]
    q = torch.empty((n_rows, n_a + n_b), device=a.device, dtype=torch.int8 if int8 else torch.float8_e4m3fn)
    scale = torch.empty((n_rows, 1), device=a.device, dtype=torch.float32)
    block, rows, warps = _grid_shape(triton, n_a + n_b)
    kernel[(triton.cdiv(n_rows, rows),)](
        a, a if b is None else b, q, scale, n_rows, n_a, n_b, a.stride(0), a.stride(0) if b is None else b.stride(0),
        q.stride(0), ACT_A=ACTIVATIONS.index(act_a), ACT_B=ACTIVATIONS.index(act_b), HAS_B=b is not None,
        ROWS=rows, BLOCK=block, INT8=int8, num_warps=warps)
    return q, scale


@functools.lru_cache(maxsize=None)
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows(x_ptr, q_ptr, s_ptr, n_rows, n_cols, stride_x, stride_q,
                      ROWS: tl.constexpr, BLOCK: tl.constexpr, INT8: tl.constexpr = False):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        mask = (rows < n_rows) & (cols < n_cols)
        x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)[:, None]
        if INT8:  # symmetric int8: round half to even (1.5 * 2^23 added and taken away), as torch.round
            scale = tl.maximum(amax, 1e-12) / 127.0
            q = tl.clamp((x / scale + 12582912.0) - 12582912.0, -127.0, 127.0)
        else:
            scale = tl.maximum(amax, 1e-12) / 448.0
            q = tl.clamp(x / scale, -448.0, 448.0)
        tl.store(q_ptr + rows * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + rows, scale, mask=rows < n_rows)

    return quantize_rows, triton


def _launch(x: torch.Tensor, int8: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    kernel, triton = _triton_kernel()
    x = x if x.stride(-1) == 1 else x.contiguous()
    n_rows, n_cols = x.shape
    q = torch.empty((n_rows, n_cols), device=x.device, dtype=torch.int8 if int8 else torch.float8_e4m3fn)
    scale = torch.empty((n_rows, 1), device=x.device, dtype=torch.float32)
    block, rows, warps = _grid_shape(triton, n_cols)
    grid = (triton.cdiv(n_rows, rows),)
    kernel[grid](x, q, scale, n_rows, n_cols, x.stride(0), q.stride(0), ROWS=rows, BLOCK=block, INT8=int8,
                 num_warps=warps)
    return q, scale
