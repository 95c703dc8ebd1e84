"""Attention kernels beyond SDPA's, the op that picks one at run time, and the kernels' registry.

``torch.ops.nexfort.attention(q, k, v, scale, attn_mask=m)`` computes ``scaled_dot_product_attention(q, k, v,
attn_mask=m, scale=scale)`` (an optional additive mask, no dropout, not causal; q/k/v ``(batch, heads, tokens,
head_dim)`` as SDPA takes them; with a mask only kernels that take one are candidates: :mod:`.short_kv`). The first call
for a shape times SDPA (whatever backend torch picks, cuDNN on Hopper) and every registered kernel that supports
the inputs, checks each one's output against SDPA's (relative L2 ``<= max_rel_l2``, finite), and keeps the
fastest for that shape for the rest of the process; a kernel must beat SDPA by ``min_speedup`` to be chosen
(``kernels``, ``min_speedup`` and ``max_rel_l2`` are the op's arguments: each graph carries its own options). A
chosen kernel that fails on a later call falls back to SDPA for that shape, with a warning. While
a CUDA graph is being captured nothing is timed: an unchosen shape runs SDPA (CUDA-graph trees run each graph
eagerly before they capture it, so the choice is normally made by then). With nexfort's cache on (``cache-all``), the
choices are also kept as facts in its store (:func:`remember_choices_with`; the signature, the GPU's name and the
installed kernels' versions name each one), so a warm process recalls them instead of timing the kernels again.

The output always has the strides of a ``(batch, tokens, heads, head_dim)`` tensor seen through ``transpose(1, 2)``
(what FlashAttention and cuDNN write, and what the meta kernel tells the compiler).

Kernels (:func:`register_kernel`): ``fa4`` is FlashAttention-4's CuTe-DSL forward (``pip install --pre
flash-attn-4``), on Hopper (sm90) and Blackwell (sm100) GPUs for fp16/bf16 and head dims that are multiples of 8 up
to 256. Measured on an H100 (``benchmarks/results/archive/2026-11-26g-attention-kernels/``), calls queued back to
back: 1.25x cuDNN on SD3's joint attention (24 heads of 64, 4429 tokens), 1.09x on PixArt's heads of 72 at 1024²
(1.01x when the inputs are contiguous in (B, H, S, D)); at PixArt 512x768 and on SDXL's 64x64 latents cuDNN was
faster (timed one call at a time, not again queued): hence the choice per shape at run time, not a rule. Timed one
call at a time FA4 looks slower than it is on a slow host (its launch path is Python), so candidates are timed with
their calls queued.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nexfort.core.api import counters
from nexfort.passes.attention_kernel.timing import MAX_SLEEP_MS, SLEEP_MARGIN, _clock_khz, _time, sleep_cycles  # noqa: F401

logger = logging.getLogger("nexfort")
SDPA = "sdpa"


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
    """One attention kernel. ``run(q, k, v, scale)`` takes SDPA's ``(B, H, S, D)`` tensors and returns
    ``(B, H, Sq, Dv)``; ``supports(q, k, v)`` is its run-time check (shapes, dtypes, strides, GPU); ``available(
    device_type)`` says, at compile time, whether it is installed and usable for that device type at all;
    ``dtypes`` are the ones it takes at all (the pass rewrites no graph of another dtype); ``install`` is the command
    that installs it (for the error when one is asked for by name); ``suits(device)`` says whether the hardware is
    one it is made for (installed or not: where it suits and is missing, the backend says how to install it);
    ``describe()`` names it and its version for the one-line report. A ``lossy`` kernel (quantized arithmetic,
    :mod:`.int8_qk`) is a candidate only where the options name it, never among "every registered kernel".
    A kernel that ``takes_mask`` is also a candidate for calls with an additive ``attn_mask``: it is then called as
    ``run(q, k, v, scale, attn_mask=m)`` and ``supports(q, k, v, attn_mask=m)`` (:mod:`.short_kv`); ``fits(q, k, v,
    attn_mask)``, if given, is the pass's compile-time check on fake tensors (False: the call cannot suit it)."""

    name: str
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[float]], torch.Tensor]
    supports: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool]
    available: Callable[[str], bool]
    dtypes: Tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
    install: str = ""
    suits: Optional[Callable[[torch.device], bool]] = None
    describe: Optional[Callable[[], str]] = None
    lossy: bool = False
    takes_mask: bool = False
    fits: Optional[Callable[..., bool]] = None


_KERNELS: Dict[str, AttentionKernel] = {}


def register_kernel(kernel: AttentionKernel) -> Callable[[], None]:
    """Add (or replace) a kernel; returns a function that removes it again."""
    _KERNELS[kernel.name] = kernel
    clear_choices()

    def unregister() -> None:
        if _KERNELS.get(kernel.name) is kernel:
            del _KERNELS[kernel.name]
            clear_choices()

    return unregister


def registered_kernels() -> Dict[str, AttentionKernel]:
    return dict(_KERNELS)


# ------------------------------------------------------------------------------------------------ fa4
def _fa4_available(device_type: str) -> bool:
    if device_type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability()[0] not in (9, 10):
        return False
    try:
        return importlib.util.find_spec("flash_attn") is not None and \
            importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):
        return False


def _fa4_suits(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and \
        torch.cuda.get_device_capability(device)[0] in (9, 10)


def _fa4_describe() -> str:
    try:
        from importlib.metadata import version

        return f"fa4 (flash-attn-4 {version('flash-attn-4')})"
    except Exception:  # noqa: BLE001 - installed without metadata (a --target install)
        return "fa4 (flash-attn-4)"


def _aligned(t: torch.Tensor) -> bool:
    """TMA's rules: last dim contiguous, the other strides and the base address 16-byte aligned."""
    elems = 16 // t.element_size()
    return t.stride(-1) == 1 and all(s % elems == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0


def _fa4_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype):
        return False
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or torch.cuda.get_device_capability(q.device)[0] not in (9, 10):
        return False
    (b, h, _, d), (bk, hk, sk, dk), (bv, hv, sv, dv) = q.shape, k.shape, v.shape
    if not (b == bk == bv and h == hk == hv and sk == sv and d == dk):
        return False
    return d % 8 == 0 and dv % 8 == 0 and 8 <= d <= 256 and 8 <= dv <= 256 and all(map(_aligned, (q, k, v)))


def _fa4_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
    from flash_attn.cute.interface import flash_attn_func

    with torch.no_grad():
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    out = out[0] if isinstance(out, tuple) else out
    return out.transpose(1, 2)


# ------------------------------------------------------------------------------------------------ choice
ALL = "*"  # the op's ``kernels`` argument: every registered kernel (else comma-separated names)
_choices: Dict[tuple, str] = {}
_lock = threading.Lock()


def clear_choices() -> None:
    _choices.clear()


def choices() -> Dict[tuple, str]:
    """The kernel chosen per input signature so far (for tests and logs)."""
    return dict(_choices)


def _signature(q, k, v, scale, policy, mask=None) -> tuple:
    """What the choice depends on: the inputs' device, dtype, sizes, strides and 16-byte alignment, the scale and the
    graph's options (``policy``); with a mask, its dtype, sizes and strides too (a mask-less key is unchanged)."""
    key = (q.device, q.dtype, scale) + tuple((tuple(t.shape), tuple(t.stride()), t.data_ptr() % 16 == 0)
                                             for t in (q, k, v)) + policy
    if mask is not None:
        key += (("mask", str(mask.dtype), tuple(mask.shape), tuple(mask.stride())),)
    return key


def _sdpa(q, k, v, scale, mask=None):
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _run(kernel: "AttentionKernel", q, k, v, scale, mask=None):
    return kernel.run(q, k, v, scale) if mask is None else kernel.run(q, k, v, scale, attn_mask=mask)


def _candidate(kernel: "AttentionKernel", q, k, v, mask=None) -> bool:
    if not kernel.available(q.device.type):
        return False
    if mask is None:
        return kernel.supports(q, k, v)
    return kernel.takes_mask and kernel.supports(q, k, v, attn_mask=mask)


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if out.shape != ref.shape or not bool(torch.isfinite(out).all()):
        return float("inf")
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _choose(q, k, v, scale, policy, mask=None) -> str:
    key = _signature(q, k, v, scale, policy, mask)
    name = _choices.get(key)
    if name is not None:
        return name
    if _capturing(q.device):
        return SDPA  # not chosen before the capture: the safe default, chosen again on the next eager call
    with _lock:
        name = _choices.get(key)
        if name is None:
            name = _choices[key] = _recalled_or_benchmarked(key, q, k, v, scale, policy, mask)
    return name


# ------------------------------------------------------------------------------------------------ warm start
_fact_config: Any = None  # the configuration whose fact store keeps the choices (the last graph's that had one)


def remember_choices_with(config: Any) -> None:
    """Keep this process's choices in ``config``'s fact store (``nexfort_record_fact``: the cache plugin's store,
    keyed by torch build and devices) and look them up there first, so a warm process does not time the kernels
    again. Called by the pass for each graph it rewrites."""
    global _fact_config
    _fact_config = config


def _fact_name(key: tuple) -> str:
    """The fact a choice is kept under: the signature (device kind and name, dtype, sizes, strides, alignment,
    scale, policy) and the versions of the kernels that could be chosen."""
    device = key[0]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    kernels = tuple(sorted(k.describe() if k.describe else k.name for k in _KERNELS.values()
                          if k.available(device.type)))
    text = repr((gpu, str(key[1]), key[2:], kernels))
    return "attention_kernel.choice." + hashlib.sha256(text.encode()).hexdigest()[:32]


def _usable(name: str, q, k, v, mask=None) -> bool:
    if name == SDPA:
        return True
    kernel = _KERNELS.get(name)
    return kernel is not None and _candidate(kernel, q, k, v, mask)


def _recalled_or_benchmarked(key: tuple, q, k, v, scale, policy, mask=None) -> str:
    config = _fact_config
    if config is None:
        return _benchmark(q, k, v, scale, *policy, mask=mask)
    from nexfort.core.api import remembered_fact

    timed: List[str] = []

    def probe() -> Dict[str, str]:
        timed.append(_benchmark(q, k, v, scale, *policy, mask=mask))
        return {"kernel": timed[-1]}

    try:
        name = remembered_fact(_fact_name(key), {"kernel": str}, probe, config)["kernel"]
    except Exception as exc:  # noqa: BLE001 - a store that fails must not fail the model: time the kernels here
        logger.info("nexfort attention_kernel: choice not recalled (%s: %s)", type(exc).__name__, exc)
        return timed[-1] if timed else _benchmark(q, k, v, scale, *policy, mask=mask)
    if timed:
        return name
    if not _usable(name, q, k, v, mask):  # recorded for a kernel this process cannot run: choose again
        return _benchmark(q, k, v, scale, *policy, mask=mask)
    counters["attention_kernel"]["recalled"] += 1
    return name


def _benchmark(q, k, v, scale, kernels: str, min_speedup: float, max_rel_l2: float, mask=None) -> str:
    reps = 10 if q.is_cuda else 3
    names = (tuple(n for n, k in _KERNELS.items() if not k.lossy) if kernels == ALL
             else tuple(n for n in kernels.split(",") if n))
    candidates = [_KERNELS[n] for n in names if n in _KERNELS and n != SDPA]
    candidates = [c for c in candidates if _candidate(c, q, k, v, mask)]
    if not candidates:
        return SDPA
    ref = _sdpa(q, k, v, scale, mask)
    best, best_ms = SDPA, _time(lambda: _sdpa(q, k, v, scale, mask), q.device, reps)
    timings = {SDPA: round(best_ms, 4)}
    for kernel in candidates:
        try:
            err = _rel_l2(_run(kernel, q, k, v, scale, mask), ref)
            if not err <= max_rel_l2:
                logger.warning("nexfort attention_kernel: %s is off for %s: relative L2 %.3g against SDPA > %g",
                               kernel.name, tuple(q.shape), err, max_rel_l2)
                continue
            ms = _time(lambda kernel=kernel: _run(kernel, q, k, v, scale, mask), q.device, reps)
        except Exception as exc:  # noqa: BLE001 - a kernel that fails on these inputs is not chosen
            logger.warning("nexfort attention_kernel: %s failed on %s: %s", kernel.name, tuple(q.shape), exc)
            continue
        timings[kernel.name] = round(ms, 4)
        if ms * min_speedup < best_ms:
            best, best_ms = kernel.name, ms
    counters["attention_kernel"][best] += 1
    logger.info("nexfort attention_kernel: q %s k %s %s%s: %s (ms: %s)", tuple(q.shape), tuple(k.shape), q.dtype,
                "" if mask is None else f" mask {tuple(mask.shape)}", best, timings)
    return best


def _out_strides(q: torch.Tensor, v: torch.Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    b, h, s, _ = q.shape
    dv = v.shape[-1]
    return (b, h, s, dv), (s * h * dv, dv, h * dv, 1)


def attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                   kernels: str = ALL, min_speedup: float = 1.03, max_rel_l2: float = 1e-2,
                   attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    policy = (kernels, min_speedup, max_rel_l2)
    name = _choose(q, k, v, scale, policy, attn_mask)
    out = None
    if name != SDPA:
        try:
            out = _run(_KERNELS[name], q, k, v, scale, attn_mask)
        except Exception as exc:  # noqa: BLE001 - a kernel that fails later (or was unregistered) falls back to SDPA
            logger.warning("nexfort attention_kernel: %s failed on %s (%s); SDPA from now on", name, tuple(q.shape),
                           exc)
            _choices[_signature(q, k, v, scale, policy, attn_mask)] = SDPA
    if out is None:
        out = _sdpa(q, k, v, scale, attn_mask)
    size, stride = _out_strides(q, v)
    if tuple(out.stride()) != stride:  # the layout the meta kernel promised the compiler
        out = torch.empty_strided(size, stride, dtype=out.dtype, device=out.device).copy_(out)
    return out


def attention_meta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                   kernels: str = ALL, min_speedup: float = 1.03, max_rel_l2: float = 1e-2,
                   attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    size, stride = _out_strides(q, v)
    return torch.empty_strided(size, stride, dtype=q.dtype, device=q.device)


_LIBRARY: List[torch.library.Library] = []  # the op's definition lives as long as its Library object


@functools.lru_cache(maxsize=None)
def op() -> Callable[..., torch.Tensor]:
    """``torch.ops.nexfort.attention`` (defined once per process, through the Library API of every torch)."""
    lib = torch.library.Library("nexfort", "FRAGMENT")
    lib.define('attention(Tensor q, Tensor k, Tensor v, float? scale=None, str kernels="*", float min_speedup=1.03, '
               'float max_rel_l2=0.01, Tensor? attn_mask=None) -> Tensor')
    lib.impl("attention", attention_impl, "CompositeExplicitAutograd")
    lib.impl("attention", attention_meta, "Meta")
    _LIBRARY.append(lib)
    return torch.ops.nexfort.attention.default


def available_kernels(device_type: str, names: Optional[Sequence[str]] = None) -> List[str]:
    """The registered kernels (of ``names``, if given; else every lossless one) installed and usable for
    ``device_type``."""
    pool = names if names is not None else [n for n, k in _KERNELS.items() if not k.lossy]
    return [n for n in pool if n in _KERNELS and _KERNELS[n].available(device_type)]


def kernel_report(device: torch.device) -> str:
    """One line: the attention kernels found for ``device`` and, where a kernel made for it is missing, how to
    install it."""
    found = [k.describe() if k.describe else k.name for n, k in _KERNELS.items() if k.available(device.type)
             and (k.suits is None or k.suits(device)) and not k.lossy]
    opt_in = [n for n, k in _KERNELS.items() if k.lossy and k.available(device.type)]
    missing = [k for n, k in _KERNELS.items() if k.suits is not None and k.suits(device)
               and not k.available(device.type)]
    where = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)} (sm{major}{minor})"
    line = f"nexfort: attention kernels on {where}: SDPA" + "".join(f", {d}" for d in found)
    line += "; each attention shape keeps the fastest on its first call" if found else ""
    for k in missing:
        line += f"; {k.name} is made for this GPU and not installed: {k.install}"
    if opt_in:
        line += f"; lossy, where options.attention_kernel.kernels names them: {', '.join(opt_in)}"
    return line


_reported: set = set()


def report_kernels(device: torch.device) -> Optional[str]:
    """Log :func:`kernel_report` once per process and device, at WARNING so that it shows without any logging set
    up (Python's last-resort handler); returns the line when it was logged now."""
    key = (str(device), tuple(sorted(_KERNELS)))
    if key in _reported:
        return None
    _reported.add(key)
    line = kernel_report(device)
    logger.warning(line)
    return line


register_kernel(AttentionKernel("fa4", _fa4_run, _fa4_supports, _fa4_available,
                                install='pip install "nexfort-passes[cuda]" (FlashAttention-4: flash-attn-4)',
                                suits=_fa4_suits, describe=_fa4_describe))

from nexfort.passes.attention_kernel import int8_qk as _int8_qk  # noqa: E402 - its kernel needs the registry above

_int8_qk.register()

from nexfort.passes.attention_kernel import short_kv as _short_kv  # noqa: E402

_short_kv.register()
