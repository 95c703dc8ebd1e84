"""One-pass row-wise fp8 quantization of an activation (``torch.ops.nexfort.fp8_quantize_rows``).

The fp8 linears scale each row of their input by its absolute maximum. Left to Inductor, that quantization is fused
into the kernel that produces the activation (LayerNorm + modulation, GELU after the previous GEMM), which then
reduces the row twice (its norm, then the amax of the result) in one looped kernel: measured on an H200 (PixArt-α
1024², ``benchmarks/results/archive/2026-12-02-h200-issue18-fp8-one-pass/``) those kernels took 11.4 ms per forward
against 1.8 ms for the same producers in fp16, more than the fp8 GEMMs saved. This op reads the activation once and
writes the fp8 rows and their scales in the same pass (the row kept in registers), so the producer stays the cheap
fp16 kernel it is without ``quant``:

    scale = max(rowmax|x|, 1e-12) / 448;  q = clamp(x / scale, -448, 448) -> float8_e4m3fn

On CUDA it is a Triton kernel (:mod:`nexfort.passes.quant.triton_kernels`); elsewhere (and as the reference the
tests compare with) the same formula in torch ops. Registered with ``torch.library.custom_op`` (torch 2.4+) with a
fake implementation, so Dynamo and Inductor keep it as one call; :func:`available` says whether this torch/device has
it. ``torch.ops.nexfort.int8_quantize_rows`` is the same pass for the int8 linears (symmetric, ``rowmax|x| / 127``,
rounded half to even as ``torch.round``).

``torch.ops.nexfort.fp8_quantize_rows_fused(a, b, act_a, act_b)`` quantizes the row-wise concatenation
``cat([act_a(a), act_b(b)], 1)`` (``b`` may be ``None``; ``act``: ``"none"`` or ``"gelu_tanh"``) in the same one
pass, computing the activation in float32 in registers: what the producer of a GEMM's input would otherwise write
to memory for this op to read back (GELU over fc1's output before fc2; Flux's single blocks, whose ``proj_out``
reads ``cat([attention, gelu(mlp)])``). ``torch.ops.nexfort.fp8_quantize_rows_ln_modulate(x, scale, shift, tokens,
eps)`` does the same for adaLN's ``layer_norm(x) * (1 + scale) + shift`` (the input of every attention and
feed-forward of PixArt, SD3 and Flux; ``scale``/``shift`` one row per sample of ``tokens`` rows, or one for all).
``int8_quantize_rows_fused`` and ``int8_quantize_rows_ln_modulate`` are the same for the int8 linears (the kernels'
``INT8`` form). :mod:`nexfort.passes.quant.prologue` rewrites those graphs to them.
"""

from __future__ import annotations

import importlib.util
from typing import Tuple

import torch

from nexfort.passes.quant.triton_kernels import ACTIVATIONS, _launch, _launch_fused, _launch_ln  # noqa: F401

FP8_MAX = 448.0
INT8_MAX = 127.0
_OP = "nexfort::fp8_quantize_rows"
_INT8_OP = "nexfort::int8_quantize_rows"
_FUSED_OP = "nexfort::fp8_quantize_rows_fused"
_LN_OP = "nexfort::fp8_quantize_rows_ln_modulate"
_INT8_FUSED_OP = "nexfort::int8_quantize_rows_fused"
_INT8_LN_OP = "nexfort::int8_quantize_rows_ln_modulate"


def reference(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The formula in torch ops: ``(q, scale)`` with ``scale`` float32 of shape ``(rows, 1)``."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """``act`` applied to ``x`` in float32 (:data:`ACTIVATIONS`)."""
    x = x.float()
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    if act != "none":
        raise ValueError(f"Unknown activation {act!r} for {_FUSED_OP}; valid: {', '.join(ACTIVATIONS)}")
    return x


def reference_fused(a: torch.Tensor, b, act_a: str = "none", act_b: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`reference` of ``cat([act_a(a), act_b(b)], 1)`` with the activations in float32 (``b``: ``None`` for
    ``act_a(a)`` alone)."""
    parts = [_activation(a, act_a)] + ([] if b is None else [_activation(b, act_b)])
    return reference(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


def reference_fused_int8(a: torch.Tensor, b, act_a: str = "none",
                         act_b: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`reference_int8` of ``cat([act_a(a), act_b(b)], 1)`` (the activations in float32)."""
    parts = [_activation(a, act_a)] + ([] if b is None else [_activation(b, act_b)])
    return reference_int8(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


def _per_row(t: torch.Tensor, rows: int, tokens: int) -> torch.Tensor:
    """``t`` (one row per sample, or one row) repeated for each of the samples' ``tokens`` rows."""
    return t.float().expand(rows, -1) if t.shape[0] == 1 else t.float().repeat_interleave(tokens, dim=0)


def reference_ln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                          eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`reference` of ``layer_norm(x) * (1 + scale) + shift`` in float32 (``x``: ``(samples * tokens, D)``;
    ``scale``, ``shift``: ``(samples, D)`` or ``(1, D)``)."""
    return reference(_ln_modulated(x, scale, shift, tokens, eps))


def _ln_modulated(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                  eps: float) -> torch.Tensor:
    rows = x.shape[0]
    y = torch.nn.functional.layer_norm(x.float(), (x.shape[1],), eps=eps)
    return y * (1 + _per_row(scale, rows, tokens)) + _per_row(shift, rows, tokens)


def reference_ln_modulate_int8(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                               eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`reference_int8` of ``layer_norm(x) * (1 + scale) + shift`` in float32."""
    return reference_int8(_ln_modulated(x, scale, shift, tokens, eps))


def reference_int8(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The int8 formula in torch ops (``nexfort.passes.quant.int8.quantize_rows_int8`` calls it): symmetric,
    ``scale = max(rowmax|x|, 1e-12) / 127``, ``q = clamp(round(x / scale), -127, 127)``."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / INT8_MAX
    q = (x.float() / scale).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
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

    @torch.library.custom_op(_FUSED_OP, mutates_args=(),
                             schema="(Tensor a, Tensor? b, str act_a, str act_b) -> (Tensor, Tensor)")
    def fp8_quantize_rows_fused(a: torch.Tensor, b, act_a: str, act_b: str) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_fused(a, b, act_a, act_b)
        if a.is_cuda and HAS_TRITON:
            return _launch_fused(a, b, act_a, act_b)
        return reference_fused(a, b, act_a, act_b)

    @fp8_quantize_rows_fused.register_fake
    def _(a: torch.Tensor, b, act_a: str, act_b: str) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_fused(a, b, act_a, act_b)
        cols = a.shape[1] + (0 if b is None else b.shape[1])
        return (a.new_empty((a.shape[0], cols), dtype=torch.float8_e4m3fn),
                a.new_empty((a.shape[0], 1), dtype=torch.float32))

    @torch.library.custom_op(_INT8_OP, mutates_args=(), schema="(Tensor x) -> (Tensor, Tensor)")
    def int8_quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.is_cuda and HAS_TRITON:
            return _launch(x, int8=True)
        return reference_int8(x)

    @int8_quantize_rows.register_fake
    def _(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0], 1), dtype=torch.float32)

    @torch.library.custom_op(_INT8_FUSED_OP, mutates_args=(),
                             schema="(Tensor a, Tensor? b, str act_a, str act_b) -> (Tensor, Tensor)")
    def int8_quantize_rows_fused(a: torch.Tensor, b, act_a: str, act_b: str) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_fused(a, b, act_a, act_b)
        if a.is_cuda and HAS_TRITON:
            return _launch_fused(a, b, act_a, act_b, int8=True)
        return reference_fused_int8(a, b, act_a, act_b)

    @int8_quantize_rows_fused.register_fake
    def _(a: torch.Tensor, b, act_a: str, act_b: str) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_fused(a, b, act_a, act_b)
        cols = a.shape[1] + (0 if b is None else b.shape[1])
        return a.new_empty((a.shape[0], cols), dtype=torch.int8), a.new_empty((a.shape[0], 1), dtype=torch.float32)

    ln_schema = "(Tensor x, Tensor scale, Tensor shift, SymInt tokens, float eps) -> (Tensor, Tensor)"

    @torch.library.custom_op(_INT8_LN_OP, mutates_args=(), schema=ln_schema)
    def int8_quantize_rows_ln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                                       eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_ln(x, scale, shift, tokens)
        if x.is_cuda and HAS_TRITON:
            return _launch_ln(x, scale, shift, tokens, eps, int8=True)
        return reference_ln_modulate_int8(x, scale, shift, tokens, eps)

    @int8_quantize_rows_ln_modulate.register_fake
    def _(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
          eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0], 1), dtype=torch.float32)

    @torch.library.custom_op(_LN_OP, mutates_args=(), schema=ln_schema)
    def fp8_quantize_rows_ln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                                      eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_ln(x, scale, shift, tokens)
        if x.is_cuda and HAS_TRITON:
            return _launch_ln(x, scale, shift, tokens, eps)
        return reference_ln_modulate(x, scale, shift, tokens, eps)

    @fp8_quantize_rows_ln_modulate.register_fake
    def _(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
          eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], 1), dtype=torch.float32))

    return True


def _check_ln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int) -> None:
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dim() != 2 or t.shape[1] != x.shape[1] or t.shape[0] not in (1, x.shape[0] // max(int(tokens), 1)) or \
                t.device != x.device:
            raise ValueError(f"{_LN_OP}: {name} must be (samples, {x.shape[1]}) or (1, {x.shape[1]}) on {x.device} "
                             f"for x {tuple(x.shape)} of {tokens} rows per sample, got {tuple(t.shape)}")
    if x.dim() != 2 or int(tokens) < 1 or x.shape[0] % int(tokens):
        raise ValueError(f"{_LN_OP}: x must be 2-D with a whole number of samples of {tokens} rows, got "
                         f"{tuple(x.shape)}")


def _check_fused(a: torch.Tensor, b, act_a: str, act_b: str) -> None:
    for name, act in (("act_a", act_a), ("act_b", act_b)):
        if act not in ACTIVATIONS:
            raise ValueError(f"Unknown {name} {act!r} for {_FUSED_OP}; valid: {', '.join(ACTIVATIONS)}")
    if a.dim() != 2 or (b is not None and (b.dim() != 2 or b.shape[0] != a.shape[0] or b.device != a.device)):
        raise ValueError(f"{_FUSED_OP} takes 2-D parts with the same rows on one device, got "
                         f"{tuple(a.shape)} and {None if b is None else tuple(b.shape)}")


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


def quantize_rows_int8(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x`` (2-D) in int8 with a float32 scale per row, in one pass (``torch.ops.nexfort.int8_quantize_rows``; the
    int8 linears' activations with ``activation_kernel="triton"``)."""
    if not REGISTERED:
        return reference_int8(x)
    return torch.ops.nexfort.int8_quantize_rows(x)


def quantize_rows_fused(a: torch.Tensor, b=None, act_a: str = "none",
                        act_b: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """``cat([act_a(a), act_b(b)], 1)`` in float8 e4m3 with a float32 scale per row, in one pass
    (``torch.ops.nexfort.fp8_quantize_rows_fused``; ``b`` may be ``None``)."""
    if not REGISTERED:
        return reference_fused(a, b, act_a, act_b)
    return torch.ops.nexfort.fp8_quantize_rows_fused(a, b, act_a, act_b)


def quantize_rows_ln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                              eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """``layer_norm(x) * (1 + scale) + shift`` (per sample of ``tokens`` rows) in float8 e4m3 with a float32 scale
    per row, in one pass (``torch.ops.nexfort.fp8_quantize_rows_ln_modulate``)."""
    if not REGISTERED:
        return reference_ln_modulate(x, scale, shift, tokens, eps)
    return torch.ops.nexfort.fp8_quantize_rows_ln_modulate(x, scale, shift, tokens, eps)


def quantize_rows_fused_int8(a: torch.Tensor, b=None, act_a: str = "none",
                             act_b: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_fused` in int8 (``torch.ops.nexfort.int8_quantize_rows_fused``)."""
    if not REGISTERED:
        return reference_fused_int8(a, b, act_a, act_b)
    return torch.ops.nexfort.int8_quantize_rows_fused(a, b, act_a, act_b)


def quantize_rows_ln_modulate_int8(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tokens: int,
                                   eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_ln_modulate` in int8 (``torch.ops.nexfort.int8_quantize_rows_ln_modulate``)."""
    if not REGISTERED:
        return reference_ln_modulate_int8(x, scale, shift, tokens, eps)
    return torch.ops.nexfort.int8_quantize_rows_ln_modulate(x, scale, shift, tokens, eps)
