"""``short_kv``: attention over a short key sequence (cross-attention to text), with an additive key mask.

PixArt's cross-attention attends 4096 image tokens (1024²) to its text: 120 T5 tokens, ~32 once the text padding
is trimmed (:mod:`nexfort.diffusers.text_padding`), the padding still masked by an additive bias of shape
``(B, H, 1, keys)``; SDXL's attends to CLIP's 77 tokens. With so few keys the work is reading the queries and
writing the output (~38 MB per PixArt call), yet cuDNN's masked kernel took 41 µs per call on an H200 (1.15 ms of a
28 ms forward, ``benchmarks/results/archive/2026-12-02b-h200-timeline-flux-sigma``), ~4x that traffic's time at the
card's bandwidth. Here every key fits one block: one program computes ``BLOCK_M`` queries of one head against all
the keys in a single pass (no online softmax), the scores and the softmax in float32, ``P`` rounded to ``v``'s dtype
for ``P·V`` as the flash kernels do; the heads are the grid's fastest axis, so programs running side by side read
the same query rows' cache lines.

    s = (q @ kᵀ) * scale + mask            # float32; mask broadcast over the queries (and, where 1, batch/heads)
    out = softmax(s) @ v                   # exp2, P in v's dtype, float32 sums

Exact as SDPA is (lossless: the same arithmetic, a different order of the sums). A candidate of
``torch.ops.nexfort.attention`` for keys up to :data:`MAX_KEYS` and head dims up to :data:`MAX_DIM`, fp16/bf16,
CUDA with Triton; the op times it against SDPA per shape and keeps it only where it is faster. The mask: a floating
tensor of shape ``(1 or B, 1 or H, 1, keys)`` (what diffusers' ``prepare_attention_mask`` makes of a key padding
mask); any other mask (boolean, per query) leaves the call to SDPA. :func:`reference` is the same arithmetic in
torch ops (what the tests compare the kernel with, on any device).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any, Optional

import torch

NAME = "short_kv"
MAX_KEYS = 128  # every key in one block
MAX_DIM = 128  # q/k and v head dims
LOG2E = 1.4426950408889634
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
              attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kernel's arithmetic in torch ops: float32 scores and softmax, P rounded to v's dtype."""
    s = (q.float() @ k.float().transpose(-1, -2)) * _scale(q, scale)
    if attn_mask is not None:
        s = s + attn_mask.float()
    p = torch.softmax(s, dim=-1)
    return (p.to(v.dtype).float() @ v.float()).to(v.dtype)


def mask_fits(attn_mask: Any, b: Any, h: Any, nk: Any) -> bool:
    """Whether ``attn_mask`` (a tensor, a fake tensor, or sizes' hints) is one the kernel reads: floating, 4-D,
    ``(1 or b, 1 or h, 1, nk)``."""
    if attn_mask is None:
        return True
    if not torch.is_tensor(attn_mask) or not attn_mask.is_floating_point() or attn_mask.dim() != 4:
        return False
    mb, mh, mq, mk = (_hint(s) for s in attn_mask.shape)
    return mq == 1 and mk == _hint(nk) and mb in (1, _hint(b)) and mh in (1, _hint(h))


def _hint(size: Any) -> Any:
    """An int for a size (a SymInt's example value where it has one, without adding a guard), else None."""
    if isinstance(size, int):
        return size
    node = getattr(size, "node", None)
    hint = getattr(node, "hint", None)
    return int(hint) if hint is not None else None


def fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> bool:
    """At compile time, on fake tensors: the call may suit the kernel (few keys, small heads, a mask it reads)."""
    nk, d, dv = _hint(k.shape[2]), _hint(q.shape[-1]), _hint(v.shape[-1])
    if nk is None or d is None or dv is None:
        return True  # unknown here: the op checks the real inputs
    return nk <= MAX_KEYS and d <= MAX_DIM and dv <= MAX_DIM and mask_fits(attn_mask, q.shape[0], q.shape[1],
                                                                             k.shape[2])


@functools.lru_cache(maxsize=None)
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def short_kv_attention(Q, K, V, M, Out, NQ, NK, D, DV, qk_scale,
                           sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, smb, smh, smk, sob, soh, sos,
                           HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
        h = tl.program_id(0)  # heads fastest: neighbouring programs read the same query rows
        pid_m = tl.program_id(1)
        b = tl.program_id(2)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        keys = tl.arange(0, BLOCK_N)
        dq = tl.arange(0, BLOCK_D)
        dv = tl.arange(0, BLOCK_DV)
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqs + dq[None, :],
                    mask=(rows[:, None] < NQ) & (dq[None, :] < D), other=0.0)
        kt = tl.load(K + b * skb + h * skh + keys[None, :] * sks + dq[:, None],
                     mask=(keys[None, :] < NK) & (dq[:, None] < D), other=0.0)
        s = tl.dot(q, kt).to(tl.float32) * qk_scale  # scale * log2(e): the softmax in exp2
        if HAS_MASK:
            bias = tl.load(M + b * smb + h * smh + keys * smk, mask=keys < NK, other=0.0).to(tl.float32)
            s = s + bias[None, :] * 1.4426950408889634
        s = tl.where(keys[None, :] < NK, s, float("-inf"))
        m = tl.max(s, 1)
        p = tl.math.exp2(s - m[:, None])
        total = tl.sum(p, 1)
        vals = tl.load(V + b * svb + h * svh + keys[:, None] * svs + dv[None, :],
                       mask=(keys[:, None] < NK) & (dv[None, :] < DV), other=0.0)
        acc = tl.dot(p.to(vals.dtype), vals) / total[:, None]
        tl.store(Out + b * sob + h * soh + rows[:, None] * sos + dv[None, :], acc.to(Out.dtype.element_ty),
                 mask=(rows[:, None] < NQ) & (dv[None, :] < DV))

    return short_kv_attention, triton


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
           attn_mask: Optional[torch.Tensor] = None, block_m: int = 64, num_warps: Optional[int] = None
           ) -> torch.Tensor:
    """The Triton kernel with a given tile (for tuning by hand; no benchmark sweeps it yet): ``(B, H, Sq, Dv)``
    with the strides of ``(B, Sq, H, Dv)`` seen through ``transpose(1, 2)``."""
    b, h, nq, d = q.shape
    nk, dvn = k.shape[2], v.shape[-1]
    if nk > MAX_KEYS or d > MAX_DIM or dvn > MAX_DIM:
        raise ValueError(f"short_kv takes at most {MAX_KEYS} keys and head dims up to {MAX_DIM}; got {nk} keys, "
                         f"head dims {d}/{dvn}")
    if not mask_fits(attn_mask, b, h, nk):
        raise ValueError(f"short_kv reads a floating mask of shape (1 or {b}, 1 or {h}, 1, {nk}); got "
                         f"{None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.dtype)}")
    kernel, triton = _triton_kernel()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty((b, nq, h, dvn), device=q.device, dtype=v.dtype).transpose(1, 2)
    if attn_mask is not None:
        mask = attn_mask.expand(b, h, 1, nk)
        mstrides = (mask.stride(0), mask.stride(1), mask.stride(3))
    else:
        mask, mstrides = q, (0, 0, 0)  # not read
    block_d = max(16, triton.next_power_of_2(d))
    block_dv = max(16, triton.next_power_of_2(dvn))
    block_n = max(16, triton.next_power_of_2(nk))
    warps = num_warps or (8 if block_m >= 128 and max(block_d, block_dv) >= 128 else 4)
    grid = (h, triton.cdiv(nq, block_m), b)
    kernel[grid](q, k, v, mask, out, nq, nk, d, dvn, _scale(q, scale) * LOG2E,
                 q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                 v.stride(0), v.stride(1), v.stride(2), *mstrides, out.stride(0), out.stride(1), out.stride(2),
                 HAS_MASK=attn_mask is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                 BLOCK_DV=block_dv, num_warps=warps, num_stages=1)
    return out


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
        attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The op's entry: :func:`launch` with the default tile."""
    with torch.no_grad():
        return launch(q, k, v, scale, attn_mask)


def available(device_type: str) -> bool:
    return device_type == "cuda" and HAS_TRITON and torch.cuda.is_available()


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> bool:
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype):
        return False
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    (b, h, _, d), (bk, hk, sk, dk), (bv, hv, sv, dv) = q.shape, k.shape, v.shape
    if not (b == bk == bv and h == hk == hv and sk == sv and d == dk):
        return False
    if attn_mask is not None and attn_mask.device != q.device:
        return False
    return 1 <= sk <= MAX_KEYS and 1 <= d <= MAX_DIM and 1 <= dv <= MAX_DIM and mask_fits(attn_mask, b, h, sk)


def register() -> None:
    from nexfort.passes.attention_kernel.kernels import AttentionKernel, register_kernel

    register_kernel(AttentionKernel(NAME, run, supports, available, install="pip install triton (and a CUDA GPU)",
                                    describe=lambda: f"{NAME} (Triton)", takes_mask=True, fits=fits))
