"""q/k RMSNorm and rotary embedding in one pass (``torch.ops.nexfort.rms_norm_rope``).

Flux's attention (diffusers' ``FluxAttnProcessor``) normalizes each head of q and k (``torch.nn.RMSNorm`` over the
head dim, with a weight), concatenates the text tokens' q/k before the image tokens' (the joint blocks: each part
with its own norm weight) and applies the rotary embedding (``apply_rotary_emb(x, (cos, sin), sequence_dim=1)``,
interleaved pairs). Inductor writes that as one or more kernels over the q/k activations; in the profile of FLUX.1-dev
1024² on an H200 (``benchmarks/results/issue18_flux_fp8_fa4_profile_gaps_h200.jsonl``) they took ~6 ms per forward,
the single blocks' kernel at about a third of the memory bandwidth. This op reads q (or k) once and writes the
rotated result once:

    y = (x.float() * rsqrt(mean(x.float()^2, -1) + eps) * w).to(x.dtype)          # torch.rms_norm
    out[..., 2i]   = (y[2i] * cos[s, 2i]     - y[2i+1] * sin[s, 2i]).to(x.dtype)    # apply_rotary_emb
    out[..., 2i+1] = (y[2i+1] * cos[s, 2i+1] + y[2i] * sin[s, 2i+1]).to(x.dtype)

``rms_norm_rope(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim)``: ``a`` (and ``b``, the part concatenated
after it along the tokens, or ``None``) of shape ``(batch, tokens, heads, head_dim)`` (``sequence_dim=1``: diffusers
0.35+) or ``(batch, heads, tokens, head_dim)`` (``sequence_dim=2``: older diffusers' Flux, which transposes q/k
first), any strides but a contiguous last dim (a view of a fused QKV projection's output); ``cos``/``sin`` of
``tokens`` rows (all parts') of ``head_dim`` (any shape that reshapes so, e.g. diffusers' ``cos[None, :, None, :]``);
weights ``(head_dim,)`` or both ``None``. Returns the result, contiguous, in ``a``'s layout and dtype. The norm is
``torch.rms_norm``'s; the kernel rounds its output to the dtype before rotating it, as eager writes it, so it
differs from eager only in the order of the norm's sum (and, on torch < 2.9, whose CPU ``rms_norm`` rounds before the
weight, in that rounding).

On CUDA it is a Triton kernel; elsewhere (and as the reference the tests compare with) the same formula in torch ops.
Registered with ``torch.library.custom_op`` (torch 2.4+) with a fake implementation, so Dynamo and Inductor keep it as
one call. :mod:`nexfort.passes.qk_norm_rope.plugin` rewrites the graphs to it.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch

_OP = "nexfort::rms_norm_rope"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _norm(x: torch.Tensor, w: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    if hasattr(torch, "rms_norm"):  # the function the model calls, with this torch's rounding
        return torch.rms_norm(x, (x.shape[-1],), w, eps)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y if w is None else y * w.float()).to(x.dtype)


def reference(a: torch.Tensor, b: Optional[torch.Tensor], weight_a: Optional[torch.Tensor],
              weight_b: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, eps: float,
              sequence_dim: int = 1) -> torch.Tensor:
    """The formula in torch ops (the functions eager Flux calls, in its order)."""
    _check(a, b, weight_a, weight_b, cos, sin, sequence_dim)
    x = _norm(a, weight_a, eps)
    if b is not None:
        x = torch.cat([x, _norm(b, weight_b, eps)], dim=sequence_dim)
    d = x.shape[-1]
    shape = (1, -1, 1, d) if sequence_dim == 1 else (1, 1, -1, d)
    cos = cos.reshape(shape)
    sin = sin.reshape(shape)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype).contiguous()


#: the layouts of q/k the op takes, by ``sequence_dim``
LAYOUTS = {1: "(batch, tokens, heads, head_dim)", 2: "(batch, heads, tokens, head_dim)"}
SEQUENCE_DIMS = tuple(LAYOUTS)


def _check(a: torch.Tensor, b: Optional[torch.Tensor], weight_a: Optional[torch.Tensor],
           weight_b: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, sequence_dim: int) -> None:
    if sequence_dim not in SEQUENCE_DIMS:
        raise ValueError(f"{_OP}: sequence_dim must be 1 ((batch, tokens, heads, head_dim)) or 2 ((batch, heads, "
                         f"tokens, head_dim)), got {sequence_dim!r}")
    heads_dim = 3 - sequence_dim
    layout = LAYOUTS[sequence_dim]
    if a.dim() != 4 or a.shape[-1] % 2 or a.dtype not in DTYPES:
        raise ValueError(f"{_OP}: a must be {layout} with an even head_dim in one of "
                         f"{', '.join(map(str, DTYPES))}, got {tuple(a.shape)} {a.dtype}")
    if b is not None and (b.dim() != 4 or b.shape[0] != a.shape[0] or b.shape[heads_dim] != a.shape[heads_dim] or
                          b.shape[3] != a.shape[3] or b.dtype != a.dtype or b.device != a.device):
        raise ValueError(f"{_OP}: b must be {layout} like a {tuple(a.shape)} {a.dtype} on "
                         f"{a.device} but for its tokens, got {tuple(b.shape)} {b.dtype} on {b.device}")
    d = a.shape[-1]
    if (b is None and weight_b is not None) or (b is not None and (weight_a is None) != (weight_b is None)):
        raise ValueError(f"{_OP}: give a weight for every part or for none (weight_b only with b)")
    for name, w in (("weight_a", weight_a), ("weight_b", weight_b)):
        if w is not None and (tuple(w.shape) != (d,) or w.device != a.device):
            raise ValueError(f"{_OP}: {name} must be ({d},) on {a.device}, got {tuple(w.shape)} on {w.device}")
    tokens = a.shape[sequence_dim] + (0 if b is None else b.shape[sequence_dim])
    for name, t in (("cos", cos), ("sin", sin)):
        if t.numel() != tokens * d or t.shape[-1] != d or t.device != a.device or not t.is_floating_point():
            raise ValueError(f"{_OP}: {name} must hold {tokens} rows of {d} floats on {a.device} (the tokens of "
                             f"all parts), got {tuple(t.shape)} {t.dtype} on {t.device}")


@functools.lru_cache(maxsize=None)
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_rope(a_ptr, b_ptr, wa_ptr, wb_ptr, cos_ptr, sin_ptr, out_ptr, tokens, tokens_a, heads,
                      sab, sas, sah, sbb, sbs, sbh, sob, sos, soh, s_cos, s_sin, eps,
                      DIM: tl.constexpr, HEADS: tl.constexpr, HAS_B: tl.constexpr, HAS_W: tl.constexpr):
        # one program = one (sample, token): all its heads (HEADS: the head count padded to a power of two) as rows
        # of DIM contiguous values, loaded and stored whole; the pairs (2i, 2i+1) split apart in registers. The
        # token's cos/sin row is read once for all heads.
        pid = tl.program_id(0)
        token = pid % tokens
        sample = pid // tokens
        head = tl.arange(0, HEADS)[:, None]
        col = tl.arange(0, DIM)[None, :]
        in_heads = head < heads
        in_a = in_heads & (token < tokens_a)
        x = tl.load(a_ptr + sample * sab + token * sas + head * sah + col, mask=in_a, other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(wa_ptr + col).to(tl.float32)
        if HAS_B:
            in_b = in_heads & (token >= tokens_a)
            xb = tl.load(b_ptr + sample * sbb + (token - tokens_a) * sbs + head * sbh + col, mask=in_b, other=0.0)
            x = tl.where(in_b, xb.to(tl.float32), x)
            if HAS_W:
                if token >= tokens_a:
                    w = tl.load(wb_ptr + col).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, axis=1)[:, None] / DIM + eps)
        y = x * r
        if HAS_W:
            y = y * w
        # the norm's output rounded to the tensor's dtype, as eager writes it, before the rotation reads it
        y = y.to(out_ptr.dtype.element_ty).to(tl.float32)
        c = tl.load(cos_ptr + token * s_cos + col).to(tl.float32)
        s = tl.load(sin_ptr + token * s_sin + col).to(tl.float32)
        ye, yo = tl.split(tl.reshape(y, (HEADS, DIM // 2, 2)))
        ce, co = tl.split(tl.reshape(c, (1, DIM // 2, 2)))
        se, so = tl.split(tl.reshape(s, (1, DIM // 2, 2)))
        out = tl.reshape(tl.join(ye * ce - yo * se, yo * co + ye * so), (HEADS, DIM))
        tl.store(out_ptr + sample * sob + token * sos + head * soh + col, out.to(out_ptr.dtype.element_ty),
                 mask=in_heads)

    return rms_norm_rope, triton


def _launch(a: torch.Tensor, b: Optional[torch.Tensor], weight_a: Optional[torch.Tensor],
            weight_b: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, eps: float,
            sequence_dim: int = 1) -> torch.Tensor:
    kernel, triton = _triton_kernel()
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = None if b is None else b if b.stride(-1) == 1 else b.contiguous()
    d = a.shape[-1]
    cos, sin = (t.reshape(-1, d) for t in (cos, sin))
    cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (cos, sin))
    weight_a, weight_b = (None if w is None else w.contiguous() for w in (weight_a, weight_b))
    if triton.next_power_of_2(d) != d:  # Triton blocks are powers of two (diffusion DiTs' head dims: 64, 128)
        return reference(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim)
    tokens, heads_dim = cos.shape[0], 3 - sequence_dim
    batch, tokens_a, heads = a.shape[0], a.shape[sequence_dim], a.shape[heads_dim]
    shape = [batch, heads, heads, d]
    shape[sequence_dim] = tokens
    out = torch.empty(shape, device=a.device, dtype=a.dtype)
    bb = a if b is None else b
    # (sample, token, head) strides of each tensor, whichever its layout
    strides = [s for t in (a, bb, out) for s in (t.stride(0), t.stride(sequence_dim), t.stride(heads_dim))]
    block = triton.next_power_of_2(heads) * d
    kernel[(batch * tokens,)](
        a, bb, a if weight_a is None else weight_a, a if weight_b is None else weight_b, cos, sin, out,
        tokens, tokens_a, heads, *strides, cos.stride(0), sin.stride(0), float(eps), DIM=d,
        HEADS=triton.next_power_of_2(heads), HAS_B=b is not None, HAS_W=weight_a is not None,
        num_warps=4 if block <= 2048 else 8)
    return out


def _register() -> bool:
    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):
        return False

    # the schema spelled out: torch 2.4's schema inference cannot read this module's string annotations
    schema = "(Tensor a, Tensor? b, Tensor? weight_a, Tensor? weight_b, Tensor cos, Tensor sin, float eps, " \
             "int sequence_dim) -> Tensor"

    @torch.library.custom_op(_OP, mutates_args=(), schema=schema)
    def rms_norm_rope(a: torch.Tensor, b: Optional[torch.Tensor], weight_a: Optional[torch.Tensor],
                      weight_b: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, eps: float,
                      sequence_dim: int) -> torch.Tensor:
        _check(a, b, weight_a, weight_b, cos, sin, sequence_dim)
        if a.is_cuda and HAS_TRITON:
            return _launch(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim)
        return reference(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim)

    @rms_norm_rope.register_fake
    def _(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim):
        _check(a, b, weight_a, weight_b, cos, sin, sequence_dim)
        shape = list(a.shape)
        if b is not None:
            shape[sequence_dim] = a.shape[sequence_dim] + b.shape[sequence_dim]
        return a.new_empty(shape)  # contiguous, as the kernel and the torch-ops form return it

    return True


HAS_TRITON = importlib.util.find_spec("triton") is not None
REGISTERED = _register()  # once, at import (not inside a traced function)


def rms_norm_rope(a: torch.Tensor, b: Optional[torch.Tensor], weight_a: Optional[torch.Tensor],
                  weight_b: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, eps: float,
                  sequence_dim: int = 1) -> torch.Tensor:
    """RMSNorm of ``a`` (and ``b``, concatenated after it along the tokens), then the rotary embedding, in one pass
    (``torch.ops.nexfort.rms_norm_rope``; see the module)."""
    if not REGISTERED:
        return reference(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim)
    return torch.ops.nexfort.rms_norm_rope(a, b, weight_a, weight_b, cos, sin, eps, sequence_dim)
