"""``quantize_``: replace a model's ``nn.Linear`` layers in place with the quantized layers a config selects.

The registry maps each type name (``options.quant.type``, ``quantize_pipe(quant_type=...)``) and its aliases to a
config dataclass; each config says on which devices it runs (:meth:`QuantConfig.unsupported`), which drives
:func:`supported_types` and every error message. Everything is checked before anything changes.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

import torch

logger = logging.getLogger("nexfort")
DeviceLike = Union[str, torch.device, None]


class QuantizationError(ValueError):
    """A quantization config or model that cannot be quantized as asked (raised before anything changes)."""


class QuantConfig:
    """Base of the quantization configs: each subclass is a dataclass with a ``name`` (``options.quant.type``)."""

    name = ""
    # layers with fewer input or output features are left alone (every config takes it: options.quant.min_features)
    min_features: int = 256

    @classmethod
    def unsupported(cls, device: torch.device) -> Optional[str]:
        """Why this method cannot run on ``device`` (``None``: it can)."""
        return None

    def check(self, model: torch.nn.Module) -> None:
        """Raise :class:`QuantizationError` where this method cannot run for ``model`` (before anything changes)."""
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        reason = self.unsupported(device)
        if reason is not None:
            raise QuantizationError(f"Quantization type {self.name!r} cannot run on {device}: {reason}. "
                                    f"Valid types on {device}: {', '.join(supported_types(device)) or 'none'}.")

    def accepts(self, linear: torch.nn.Linear) -> bool:
        """Whether this method can quantize ``linear`` (a layer it cannot take is left alone)."""
        return True


# handler(model, [(fqn, linear)], config) -> number of layers replaced
Handler = Callable[[torch.nn.Module, List[Any], QuantConfig], int]
_HANDLERS: Dict[Type[QuantConfig], Handler] = {}
_BY_NAME: Dict[str, Type[QuantConfig]] = {}  # every accepted name (canonical names and aliases) -> config
ALIASES: Dict[str, str] = {}  # alias -> canonical name


def register_handler(config_cls: Type[QuantConfig], aliases: Iterable[str] = ()) -> Callable[[Handler], Handler]:
    """Register the handler that applies ``config_cls`` (a decorator); ``aliases`` name the same type."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = fn
        _BY_NAME[config_cls.name] = config_cls
        for alias in aliases:  # an alias resolves through _BY_NAME too (what plugin.py's validation reads)
            ALIASES[alias] = config_cls.name
            _BY_NAME[alias] = config_cls
        return fn

    return deco


def default_device() -> torch.device:
    """The device a type name is checked against when none is given: the current GPU where there is one."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _device(device: DeviceLike) -> torch.device:
    return default_device() if device is None else torch.device(device)


def supported_types(device: DeviceLike = None) -> List[str]:
    """The canonical type names that run on ``device`` (default: the current GPU, else the CPU)."""
    dev = _device(device)
    return [n for n in all_types() if _BY_NAME[n].unsupported(dev) is None]


def all_types() -> List[str]:
    """Every canonical type name, whatever the device."""
    return sorted(n for n in _BY_NAME if n not in ALIASES)


def canonical_type(name: str) -> str:
    """``name`` or the type its alias names (``"fp8"`` -> ``"fp8_e4m3_e4m3_dynamic"``); unknown names are kept."""
    return ALIASES.get(name, name)


def _suggestions(name: str) -> List[str]:
    # "fp8_dyn" -> the names whose tokens start with each of its tokens ("fp8", "dyn..."), then difflib's
    tokens = [t for t in name.lower().replace("-", "_").split("_") if t]
    close = [n for n in all_types() if tokens and all(any(p.startswith(t) for p in n.split("_")) for t in tokens)]
    for n in difflib.get_close_matches(name, list(_BY_NAME), n=3, cutoff=0.6):
        if n not in close and ALIASES.get(n) not in close:
            close.append(n)
    return close[:3]


def unknown_type_message(name: Any, device: DeviceLike = None) -> str:
    dev = _device(device)
    close = _suggestions(str(name))
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    valid = supported_types(dev)
    others = [n for n in all_types() if n not in valid]
    msg = f"Unknown quantization type {name!r}{hint} Valid types on {dev.type}: {', '.join(valid) or 'none'}"
    if ALIASES:
        msg += f" (aliases: {', '.join(f'{a}={c}' for a, c in sorted(ALIASES.items()))})"
    if others:
        msg += f". Types for other devices: {', '.join(others)}"
    return msg + "."


def config_for(name: str, device: DeviceLike = None, **kwargs: Any) -> QuantConfig:
    """The config of the method called ``name`` or its alias (``options.quant.type``), with ``kwargs``. With
    ``device`` given, a type that cannot run there is an error here too (otherwise :func:`quantize_` checks the
    model's device)."""
    cls = _BY_NAME.get(canonical_type(name)) if isinstance(name, str) else None
    if cls is None:
        raise QuantizationError(unknown_type_message(name, device))
    config = cls(**kwargs)
    if device is not None:
        dev = torch.device(device)
        reason = cls.unsupported(dev)
        if reason is not None:
            raise QuantizationError(f"Quantization type {cls.name!r} cannot run on {dev}: {reason}. "
                                    f"Valid types on {dev}: {', '.join(supported_types(dev)) or 'none'}.")
    return config


def excluding(names: Iterable[str]) -> Callable[[torch.nn.Module, str], bool]:
    """A ``filter_fn`` for :func:`quantize_` that leaves alone the layers whose qualified name contains one of
    ``names``."""
    names = [str(s) for s in names]
    return lambda linear, fqn: not any(s in fqn for s in names)


class QuantResult(int):
    """What :func:`quantize_` did: an ``int`` (the number of layers replaced, as before) that also carries the
    layer names and the weight memory of those layers before and after (bytes; shared storages counted once)."""

    def __new__(cls, layers: List[str], type_name: str, bytes_before: int, bytes_after: int,
                kept: Iterable[str] = ()) -> "QuantResult":
        self = super().__new__(cls, len(layers))
        self.layers, self.type, self.kept = list(layers), type_name, list(kept)
        self.weight_bytes_before, self.weight_bytes_after = int(bytes_before), int(bytes_after)
        return self

    def __reduce__(self) -> Any:  # copy/pickle: int's would call QuantResult(n)
        return (QuantResult, (self.layers, self.type, self.weight_bytes_before, self.weight_bytes_after, self.kept))

    def summary(self) -> str:
        mib = 1 << 20
        kept = f", {len(self.kept)} kept in high precision" if self.kept else ""
        return (f"{int(self)} linear layers in {self.type}{kept}: weights {self.weight_bytes_before / mib:.2f} MiB "
                f"-> {self.weight_bytes_after / mib:.2f} MiB")


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: Dict[Tuple[torch.device, int], int] = {}
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        st = t.untyped_storage()
        seen[(t.device, st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def quantize_(model: torch.nn.Module, config: QuantConfig,
              filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> QuantResult:
    """Replace, in place, the ``nn.Linear`` layers of ``model`` that ``config`` accepts (and ``filter_fn(linear,
    fqn)`` keeps, where given) with quantized layers; return a :class:`QuantResult` (an ``int``: how many were
    replaced, with the weight memory before and after). ``model`` itself may not be a bare ``nn.Linear`` (it
    cannot replace itself in place: wrap it)."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise QuantizationError(f"quantize_: no handler for {type(config).__name__}; registered configs: "
                                f"{', '.join(sorted(c.__name__ for c in _HANDLERS))}.")
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.nn.Linear):
        raise QuantizationError(f"quantize_: expected a module containing nn.Linear layers, got "
                                f"{type(model).__name__}.")
    config.check(model)
    layers = candidates(model, config, filter_fn)
    before = _storage_bytes(m.weight for _, m in layers)
    n = handler(model, layers, config) if layers else 0
    after = _storage_bytes(b for fqn, _ in layers for b in model.get_submodule(fqn).buffers(recurse=False))
    from nexfort.core.api import counters

    counters["quant"][config.name] += n
    result = QuantResult([fqn for fqn, _ in layers], config.name, before, after)
    if n:
        logger.info("nexfort: quantize_(%s): %s", type(model).__name__, result.summary())
    return result


def candidates(model: torch.nn.Module, config: QuantConfig,
               filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> List[Tuple[str, Any]]:
    """The ``(fqn, nn.Linear)`` layers of ``model`` that ``config`` would quantize."""
    return [(fqn, m) for fqn, m in model.named_modules()
            if type(m) is torch.nn.Linear and config.accepts(m) and (filter_fn is None or filter_fn(m, fqn))]


#: the weight dtypes the quantization types take
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def takes_linear(config: QuantConfig, linear: torch.nn.Linear, multiple: int = 1) -> bool:
    """Whether a type can quantize ``linear``: a float weight (:data:`FLOAT_DTYPES`), both sizes multiples of
    ``multiple`` (what its GEMM needs; 1: any) and at least ``config.min_features``."""
    w = linear.weight
    return (w.dtype in FLOAT_DTYPES and w.dim() == 2 and linear.in_features % multiple == 0
            and linear.out_features % multiple == 0 and min(w.shape) >= config.min_features)


def cuda_capability(device: torch.device) -> Tuple[int, int]:
    """The compute capability of a CUDA ``device`` (one place, so that tests can stand in another GPU)."""
    return torch.cuda.get_device_capability(device)


def device_name(device: torch.device) -> str:
    try:
        return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    except Exception:  # noqa: BLE001 - no CUDA here (a test standing in a GPU)
        return str(device)


class QuantizedLinear(torch.nn.Module):
    """Base of the quantized linears: ``weight`` (quantized, ``(out, in)``) and ``weight_scale`` (float32) are
    buffers that ``.to(dtype)``/``.half()`` leave as they are (device moves only); the bias follows the model."""

    kind = ""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = torch.nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    def _apply(self, fn: Any, recurse: bool = True) -> "QuantizedLinear":
        kept = {"weight": self.weight, "weight_scale": self.weight_scale}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                setattr(self, name, old.to(new.device))
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.kind}")


def set_submodule(model: torch.nn.Module, fqn: str, new: torch.nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


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


def replace_rowwise(model: torch.nn.Module, layers: List[Any], cls: Any) -> int:
    """Replace ``layers`` with ``cls.from_linear(linear)``, where ``cls(weight, weight_scale, bias)`` holds a
    quantized weight with one scale per output row. A layer whose weight is a block of rows of another layer's
    (the unfused Q/K/V projections after ``fuse_qkv_projections``) becomes a view of that layer's quantized rows."""
    # the largest weight of each storage first: the others may be row views of it (fused projections)
    layers = sorted(layers, key=lambda fl: -fl[1].weight.numel())
    owners: Dict[int, List[Tuple[torch.Tensor, Any]]] = {}
    for fqn, linear in layers:
        w = linear.weight
        new = None
        for owner_w, owner_q in owners.get(w.untyped_storage().data_ptr(), []):
            row = row_view_of(w, owner_w)
            if row is not None:
                rows = slice(row, row + w.shape[0])
                new = cls(owner_q.weight[rows], owner_q.weight_scale[rows], linear.bias)
                break
        if new is None:
            new = cls.from_linear(linear)
            owners.setdefault(w.untyped_storage().data_ptr(), []).append((w, new))
        set_submodule(model, fqn, new)
    return len(layers)


row_view_of = _row_view_of
