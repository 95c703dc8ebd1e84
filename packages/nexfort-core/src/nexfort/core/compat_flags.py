"""torch's global backend flags (TF32, reduced-precision reductions, cuDNN benchmark) by nexfort's override names:
read, set, scoped to a block, and whether Dynamo's global-state guard covers each (feature-detected: a flag the
running torch lacks reads as absent). Part of :mod:`nexfort.core.compat`, which re-exports every name."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict, Optional, Sequence

import torch


def _flag_target(name: str) -> Optional[tuple]:
    """``(object, attribute, on value, off value)`` of one of torch's global backend flags, or ``None`` when
    the running torch lacks it. TF32 goes through the ``fp32_precision`` API where torch has it (newer torch
    raises when the legacy and new APIs are mixed)."""
    if name not in _BACKEND_FLAGS:
        raise KeyError(name)
    if name == "matmul_allow_tf32" and _F32_MATMUL.usable():
        return _F32_MATMUL, "precision", "high", "highest"
    precision = _FP32_PRECISION.get(name)
    if precision is not None:
        obj = precision()
        if obj is not None and _safe_hasattr(obj, "fp32_precision"):
            return obj, "fp32_precision", "tf32", "ieee"
    obj, attr = _BACKEND_FLAGS[name]()
    if obj is None or not _safe_hasattr(obj, attr):
        return None
    return obj, attr, True, False


def _safe_hasattr(obj: Any, attr: str) -> bool:
    """``hasattr`` that survives torch < 2.5's ``torch.backends.cuda.matmul``, which raises AssertionError
    ("Unknown attribute ...") instead of AttributeError for a flag it lacks."""
    try:
        return hasattr(obj, attr)
    except Exception:  # noqa: BLE001
        return False


def set_backend_flag(name: str, value: bool) -> Optional[bool]:
    """Set one of torch's global backend flags by nexfort's override name; return the previous value.

    Returns ``None`` (and sets nothing) when the running torch lacks the flag."""
    target = _flag_target(name)
    if target is None:
        return None
    obj, attr, on, off = target
    old = getattr(obj, attr) == on
    setattr(obj, attr, on if value else off)
    return old


def get_backend_flag(name: str) -> Optional[bool]:
    """The current value of a backend flag by nexfort's override name (``None`` when torch lacks it)."""
    target = _flag_target(name)
    if target is None:
        return None
    obj, attr, on, _ = target
    return getattr(obj, attr) == on


def has_backend_flag(name: str) -> bool:
    return _flag_target(name) is not None


@contextlib.contextmanager
def backend_flags(values: Dict[str, bool]):
    """Set backend flags (``{override name: value}``) for the duration of the block; restore the exact previous
    values (``fp32_precision`` included) after it. Flags the running torch lacks are ignored."""
    saved = []
    try:
        for name, value in values.items():
            target = _flag_target(name)
            if target is None:
                continue
            obj, attr, on, off = target
            want, cur = (on if value else off), getattr(obj, attr)
            if cur != want:
                saved.append((obj, attr, cur))
                setattr(obj, attr, want)
        yield
    finally:
        for obj, attr, cur in reversed(saved):
            setattr(obj, attr, cur)


@functools.lru_cache(maxsize=None)
def dynamo_guards_backend_flag(name: str) -> bool:
    """Whether Dynamo's global-state guard covers this backend flag (probed, not versioned).

    A backend must not change such a flag while Dynamo traces: torch 2.2-2.4 then fail the frame ("Global state
    changed while dynamo tracing"), newer torch silently restores it (the TF32 ``fp32_precision``). The matmul
    TF32 / reduced-precision-reduction flags are covered from torch 2.2 (``GlobalStateGuard``); cuDNN's are not;
    torch 2.1 has no such guard."""
    target = _flag_target(name)
    if target is None:
        return False
    guards = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
    guard_cls = getattr(guards, "GlobalStateGuard", None)
    if guard_cls is None:  # torch 2.1: Dynamo guards no global backend state
        return False
    obj, attr, on, off = target
    cur = getattr(obj, attr)
    guard = guard_cls()
    setattr(obj, attr, off if cur == on else on)
    try:
        return not guard.check()
    finally:
        setattr(obj, attr, cur)


class _Float32MatmulPrecision:
    """``torch.set/get_float32_matmul_precision`` as one attribute.

    TF32 for matmuls is set through this API where it can be: it keeps torch's legacy state and the newer
    ``fp32_precision`` state in agreement. Setting only ``torch.backends.cuda.matmul.fp32_precision`` leaves them
    disagreeing, and then ``torch.get_float32_matmul_precision()``, which Inductor's GEMM autotuning calls, raises
    "PyTorch is checking the matmul precision without a specific backend name ... mix of the legacy and new APIs"
    (seen with ``max-autotune:low-precision`` on an H100, torch 2.11).
    """

    @property
    def precision(self) -> str:
        return torch.get_float32_matmul_precision()

    @precision.setter
    def precision(self, value: str) -> None:
        torch.set_float32_matmul_precision(value)

    def usable(self) -> bool:
        """False where torch lacks the API, or where the process already mixed the two APIs (the getter raises):
        then the ``fp32_precision`` attribute is used, as that process chose."""
        if not hasattr(torch, "set_float32_matmul_precision"):
            return False
        try:
            torch.get_float32_matmul_precision()
        except RuntimeError:
            return False
        return True


_F32_MATMUL = _Float32MatmulPrecision()

_FP32_PRECISION: Dict[str, Callable[[], Any]] = {
    "matmul_allow_tf32": lambda: torch.backends.cuda.matmul,
    "conv_allow_tf32": lambda: getattr(torch.backends.cudnn, "conv", None),
}

_BACKEND_FLAGS: Dict[str, Callable[[], Any]] = {
    "conv_benchmark": lambda: (torch.backends.cudnn, "benchmark"),
    "conv_allow_tf32": lambda: (torch.backends.cudnn, "allow_tf32"),
    "matmul_allow_tf32": lambda: (torch.backends.cuda.matmul, "allow_tf32"),
    "matmul_allow_fp16_reduction": lambda: (torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction"),
    "matmul_allow_bf16_reduction": lambda: (torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction"),
    # torch 2.7+
    "matmul_allow_fp16_accumulation": lambda: (torch.backends.cuda.matmul, "allow_fp16_accumulation"),
}


def backend_flag_names() -> Sequence[str]:
    return tuple(_BACKEND_FLAGS)
