"""The int8 dynamic linears' GEMM with its rescale in the epilogue (``torch.ops.nexfort.int8_scaled_mm``).

``torch._int_mm`` returns the int32 accumulator, which the linear then rescales in a second pass (int32 written and
read back: 8 bytes per output element beyond the GEMM, ~12 GB per PixArt-α 1024² forward), and on CUDA it calls
cuBLASLt with no workspace and no algorithm choice, which on newer GPUs lands on Ampere-era kernels
(pytorch/pytorch#187094: 6-13x slower than TF32 on sm_103; on the H200 nexfort's int8 PixArt-α forward was 1.21x
slower than not quantizing, ``docs/perf-notes.md`` 2026-12-04). This op multiplies int8 rows by int8 weights with
int32 accumulation and writes the finished output:

    out = (acc(a @ w^T) * a_scale * w_scale^T + bias).to(out_dtype)    (the epilogue in float32)

On CUDA it is a Triton GEMM (Hopper's int8 tensor-core instructions, tiles chosen by ``triton.autotune`` per shape
bucket, group-ordered programs); elsewhere, and as the reference the tests compare with, the same formula in torch
ops over :func:`nexfort.passes.quant.int8.int8_matmul`. Opt-in (``Int8DynamicConfig(gemm_kernel="triton")``,
option ``quant.gemm_kernel``) until it is timed on a GPU: ``python benchmarks/gpu/int8_gemm.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from typing import Any, Dict, Optional

import torch

_OP = "nexfort::int8_scaled_mm"
#: ``out_dtype`` codes of the op's schema (an int: torch 2.4's custom_op has no ScalarType argument type we can rely on)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def reference(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """The op's formula in torch ops: ``a`` int8 ``(m, k)``, ``w`` int8 ``(n, k)``, ``a_scale`` float32 ``(m, 1)``,
    ``w_scale`` float32 ``(n, 1)``, ``bias`` ``(n,)`` or ``None``; the epilogue in float32."""
    from nexfort.passes.quant.int8 import int8_matmul

    y = int8_matmul(a, w.t()).to(torch.float32) * a_scale * w_scale.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


def check(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
          bias: Optional[torch.Tensor], out_dtype: int) -> None:
    """Raise ``ValueError`` naming what is wrong with the op's arguments."""
    m = a.shape[0] if a.dim() == 2 else -1
    n = w.shape[0] if w.dim() == 2 else -1
    problems = []
    if a.dim() != 2 or w.dim() != 2 or a.shape[1] != w.shape[1]:
        problems.append(f"a (m, k) and w (n, k) 2-D with the same k, got {tuple(a.shape)} and {tuple(w.shape)}")
    if a.dtype != torch.int8 or w.dtype != torch.int8:
        problems.append(f"a and w int8, got {a.dtype} and {w.dtype}")
    if tuple(a_scale.shape) != (m, 1) or tuple(w_scale.shape) != (n, 1) or \
            a_scale.dtype != torch.float32 or w_scale.dtype != torch.float32:
        problems.append(f"a_scale float32 ({m}, 1) and w_scale float32 ({n}, 1), got {a_scale.dtype} "
                        f"{tuple(a_scale.shape)} and {w_scale.dtype} {tuple(w_scale.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        problems.append(f"bias ({n},) or None, got {tuple(bias.shape)}")
    if not 0 <= int(out_dtype) < len(OUT_DTYPES):
        problems.append(f"out_dtype a code of {', '.join(f'{i} ({d})' for i, d in enumerate(OUT_DTYPES))}, "
                        f"got {out_dtype}")
    devices = {t.device for t in (a, w, a_scale, w_scale) + (() if bias is None else (bias,))}
    if len(devices) > 1:
        problems.append(f"all on one device, got {sorted(str(d) for d in devices)}")
    if problems:
        raise ValueError(f"{_OP}: " + "; ".join(problems))


#: Tile shapes tried by ``triton.autotune`` on CUDA (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): Hopper-sized
#: tiles (int8 rows of 128 bytes per K step), smaller ones for narrow outputs and few rows
CONFIGS = ((128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 128, 4, 4),
           (128, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 3), (32, 64, 128, 4, 4))


@functools.lru_cache(maxsize=None)
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def int8_scaled_mm(a_ptr, w_ptr, as_ptr, ws_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET, stride_am, stride_wn,
                       stride_cm, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
        # programs in groups of GROUP_M row tiles, so a group's weight tiles are read from L2 (M_BUCKET: the
        # autotuning key only)
        pid = tl.program_id(0)
        n_m = tl.cdiv(M, BLOCK_M)
        n_n = tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * n_n
        first_m = (pid // in_group) * GROUP_M
        group_m = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % group_m
        pid_n = (pid % in_group) // group_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :]
        w_ptrs = w_ptr + rn[None, :] * stride_wn + rk[:, None]  # (BLOCK_K, BLOCK_N): w^T's tile
        in_m = rm[:, None] < M
        in_n = rn[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=in_m, other=0)
                b = tl.load(w_ptrs, mask=in_n, other=0)
            else:
                left = K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=in_m & (rk[None, :] < left), other=0)
                b = tl.load(w_ptrs, mask=in_n & (rk[:, None] < left), other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        sa = tl.load(as_ptr + rm, mask=rm < M, other=0.0)
        sw = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
        c = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        if HAS_BIAS:
            c += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], c.to(c_ptr.dtype.element_ty), mask=in_m & in_n)

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=nw, num_stages=ns)
               for bm, bn, bk, nw, ns in CONFIGS]
    # the choice per shape bucket kept on disk (Triton's cache directory) where this Triton can: a warm start does
    # not time the tiles again
    cache = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    tuned = triton.autotune(configs=configs, key=["M_BUCKET", "N", "K", "HAS_BIAS", "EVEN_K"], **cache)(int8_scaled_mm)
    return int8_scaled_mm, tuned, triton


def launch(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
           bias: Optional[torch.Tensor], out_dtype: torch.dtype,
           config: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """Run the Triton kernel (``config``: fixed ``BLOCK_M``/``BLOCK_N``/``BLOCK_K``/``GROUP_M``/``num_warps``
    instead of autotuning, for tests and the interpreter)."""
    kernel, tuned, triton = _triton_kernel()
    a = a if a.stride(-1) == 1 else a.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    a_scale, w_scale = a_scale.contiguous(), w_scale.contiguous()
    m, k = a.shape
    n = w.shape[0]
    out = torch.empty((m, n), device=a.device, dtype=out_dtype)
    if m == 0 or n == 0:
        return out
    args = (a, w, a_scale, w_scale, a_scale if bias is None else bias.contiguous(), out, m, n, k,
            triton.next_power_of_2(m), a.stride(0), w.stride(0), out.stride(0))
    if config is None:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        tuned[grid](*args, HAS_BIAS=bias is not None, EVEN_K=k % 128 == 0)
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        kernel[grid](*args, HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, num_warps=warps, **cfg)
    return out


def _register() -> bool:
    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):
        return False
    schema = "(Tensor a, Tensor w, Tensor a_scale, Tensor w_scale, Tensor? bias, int out_dtype) -> Tensor"

    @torch.library.custom_op(_OP, mutates_args=(), schema=schema)
    def int8_scaled_mm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor, bias,
                       out_dtype: int) -> torch.Tensor:
        check(a, w, a_scale, w_scale, bias, out_dtype)
        if a.is_cuda and HAS_TRITON:
            return launch(a, w, a_scale, w_scale, bias, OUT_DTYPES[out_dtype])
        return reference(a, w, a_scale, w_scale, bias, OUT_DTYPES[out_dtype])

    @int8_scaled_mm.register_fake
    def _(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor, bias,
          out_dtype: int) -> torch.Tensor:
        check(a, w, a_scale, w_scale, bias, out_dtype)
        return a.new_empty((a.shape[0], w.shape[0]), dtype=OUT_DTYPES[out_dtype])

    return True


HAS_TRITON = importlib.util.find_spec("triton") is not None
REGISTERED = _register()  # once, at import (not inside a traced function)


def available(device: torch.device) -> bool:
    """Whether :func:`scaled_mm` runs the Triton GEMM on ``device`` (CUDA with Triton, torch 2.4+)."""
    return device.type == "cuda" and HAS_TRITON and REGISTERED


def scaled_mm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """``(a @ w^T) * a_scale * w_scale^T + bias`` in ``out_dtype``, by ``torch.ops.nexfort.int8_scaled_mm`` (its
    torch-ops :func:`reference` where the op is not registered)."""
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"{_OP}: out_dtype {out_dtype} is not one of {', '.join(map(str, OUT_DTYPES))}")
    if not REGISTERED:
        return reference(a, w, a_scale, w_scale, bias, out_dtype)
    return torch.ops.nexfort.int8_scaled_mm(a, w, a_scale, w_scale, bias, OUT_DTYPES.index(out_dtype))
