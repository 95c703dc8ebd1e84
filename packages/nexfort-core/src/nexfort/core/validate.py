"""Options checked against their schema: every key exists, every value has its field's type.

The option namespaces are core's (``inductor.*`` and ``triton.*``: the keys of the running torch's Inductor config,
checked against its defaults and :data:`INDUCTOR_RANGES`; ``overrides.*`` and ``compiler.*``: dataclasses of
:mod:`nexfort.core.schema`) and the plugins' (each a dataclass: its fields' annotations are the types checked here).
The errors name the option, the bad value and what is valid; nothing here knows any plugin.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from typing import Any, Dict, Mapping, Tuple

from nexfort.core import compat
from nexfort.core.errors import NexfortConfigError, suggest, unknown_message
from nexfort.core.errors import shown as quote
from nexfort.core.schema import CORE_NAMESPACES, ON_ERROR

#: Ranges of Inductor's numeric knobs where a value outside is meaningless ``{key: (min, max)}`` (``None``: open).
INDUCTOR_RANGES: Dict[str, Tuple[Any, Any]] = {
    "compile_threads": (1, None),  # worker processes for parallel compilation
    "cpp.threads": (-1, None),  # -1: as many as the machine has
    "max_fusion_size": (1, None),
    "coordinate_descent_search_radius": (1, None),
    "unroll_reductions_threshold": (0, None),
    "realize_reads_threshold": (0, None),
    "realize_opcount_threshold": (0, None),
    "realize_acc_reads_threshold": (0, None),
}


def _mapping_knob(prefix: str) -> bool:
    """Whether ``prefix`` (``inductor.<key>``/``triton.<key>``) names an Inductor knob whose value is a mapping
    (``pre_grad_fusion_options``): its value is the knob's, not more knobs."""
    ns, _, rest = prefix.partition(".")
    key = rest if ns == "inductor" else f"triton.{rest}" if ns == "triton" else None
    return bool(rest) and key is not None and isinstance(compat.inductor_config_defaults().get(key), dict)


def _flatten(prefix: str, value: Any, out: Dict[str, Any]) -> None:
    """``{"inductor": {"triton": {"cudagraphs": True}}}`` -> ``{"inductor.triton.cudagraphs": True}`` (a mapping
    given to a mapping-valued Inductor knob stays that knob's value)."""
    if isinstance(value, Mapping) and value and not _mapping_knob(prefix):
        for k, v in value.items():
            if not isinstance(k, str):
                raise NexfortConfigError(
                    f"Option keys must be strings, got {type(k).__name__} {quote(k)} under {prefix or 'options'!r}.")
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def namespaces(plugin_ns: Mapping[str, type]) -> Dict[str, Any]:
    ns = dict(CORE_NAMESPACES)
    ns.update(plugin_ns)
    return ns


def check_type(key: str, value: Any, expected: Any) -> Any:
    """``value`` checked against the annotation ``expected`` (bool/int/float/str, ``List[...]`` of those, Optional of
    those) and returned as the configuration stores it: a lone string where a list of strings is expected is a
    one-element list (``"quant.exclude": "proj_out"``). Raises :class:`NexfortConfigError` naming the bad value."""
    import typing

    optional = False
    origin = typing.get_origin(expected)
    if origin is typing.Union:
        args = [a for a in typing.get_args(expected) if a is not type(None)]
        optional = len(args) < len(typing.get_args(expected))
        if value is None and optional:
            return value
        if len(args) == 1:
            expected, origin = args[0], typing.get_origin(args[0])
        elif any(not isinstance(a, type) for a in args):  # a union of containers: left to the schema
            return value
        else:
            return _check_scalar(key, value, tuple(args), optional)
    if origin in (list, tuple, collections.abc.Sequence) or expected in (list, tuple):
        item = (typing.get_args(expected) or (Any,))[0]
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            want = f"a list of {item.__name__}" if isinstance(item, type) else "a list"
            raise NexfortConfigError(f"Option {quote(key)} must be {want}{' or null' if optional else ''}, got "
                                     f"{type(value).__name__} {quote(value)}.")
        if isinstance(item, type):
            for i, v in enumerate(value):
                if not _fits(v, item):
                    raise NexfortConfigError(f"Option {quote(key)} must be a list of {item.__name__}; item {i} is "
                                             f"{type(v).__name__} {quote(v)} (in {quote(value)}).")
        return list(value)
    if isinstance(expected, type):
        return _check_scalar(key, value, (expected,), optional)
    return value  # Any / mappings: accepted


def _check_scalar(key: str, value: Any, allowed: Tuple[type, ...], optional: bool) -> Any:
    if value is None and optional:
        return value
    if not any(_fits(value, t) for t in allowed):
        names = " or ".join(t.__name__ for t in allowed) + (" or null" if optional else "")
        raise NexfortConfigError(f"Option {quote(key)} must be {names}, got {type(value).__name__} {quote(value)}.")
    return value


def _fits(value: Any, t: type) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t)


def check_inductor_key(key: str, value: Any, shown: str) -> None:
    defaults = compat.inductor_config_defaults()
    if key not in defaults:
        import torch

        hint = None
        if key in compat.INDUCTOR_KNOB_SINCE:
            hint = (f"It exists in torch >= {compat.INDUCTOR_KNOB_SINCE[key]}; "
                    f"the installed torch is {torch.__version__}.")
        else:
            hint = f"The installed torch {torch.__version__} has no such Inductor setting."
        valid = [k for k in defaults if not k.startswith("_")]
        prefix = shown[: -len(key)]
        close = suggest(key, valid)
        msg = f"Unknown Inductor option {quote(shown)}"
        msg += ("; did you mean " + " or ".join(repr(prefix + c) for c in close) + "?") if close else "."
        msg += " " + hint + " See torch._inductor.config for the valid keys."
        raise NexfortConfigError(msg)
    default = defaults[key]
    if isinstance(default, bool):
        check_type(shown, value, bool)
    elif isinstance(default, int) and value is not None and not isinstance(default, bool):
        check_type(shown, value, int)
    elif isinstance(default, dict) and value is not None and not isinstance(value, Mapping):
        raise NexfortConfigError(f"Option {quote(shown)} must be a mapping (like its default, {quote(default)}), "
                                 f"got {type(value).__name__} {quote(value)}.")
    elif isinstance(default, float) and value is not None:
        check_type(shown, value, float)
        if value != value:
            raise NexfortConfigError(f"Option {quote(shown)} must be a number, got NaN.")
    lo, hi = INDUCTOR_RANGES.get(key, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (lo is not None and value < lo) or (hi is not None and value > hi)):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"between {lo} and {hi}"
        raise NexfortConfigError(f"Option {quote(shown)} must be {bounds}, got {quote(value)}.")


def normalize_options(raw: Any, plugin_ns: Mapping[str, type],
                      check_inductor: bool = True) -> Dict[str, Dict[str, Any]]:
    """Flatten ``options`` into ``{namespace: {key: value}}``, checking every key and value (``check_inductor``:
    Inductor's too; a mode flag's are checked once composed, where a knob that this torch lacks is left out)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise NexfortConfigError(f"'options' must be a mapping of namespaced knobs, got {type(raw).__name__}.")
    valid = namespaces(plugin_ns)
    flat: Dict[str, Any] = {}
    for k, v in raw.items():
        if not isinstance(k, str):
            raise NexfortConfigError(f"Option keys must be strings, got {quote(k)}.")
        _flatten(k, v, flat)
    out: Dict[str, Dict[str, Any]] = {}
    for key, value in flat.items():
        ns, _, rest = key.partition(".")
        if ns not in valid:
            hint = None
            if key in compat.inductor_config_defaults():
                hint = f"Inductor settings go under 'inductor.': did you mean 'inductor.{key}'?"
            raise NexfortConfigError(unknown_message(
                "option namespace", ns, valid, hint=hint) + f" (in option {quote(key)})")
        if not rest:
            raise NexfortConfigError(f"Option {quote(key)} names a namespace, not a knob; use '{ns}.<knob>'.")
        if ns in ("inductor", "triton"):
            if check_inductor:
                check_inductor_key(rest if ns == "inductor" else "triton." + rest, value, key)
        else:
            cls = valid[ns]
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if rest not in fields:
                raise NexfortConfigError(unknown_message(f"option of '{ns}'", rest, fields,
                                                         hint=None, list_valid=True).replace(
                    f"Unknown option of '{ns}' {quote(rest)}", f"Unknown option {quote(key)}"))
            value = check_type(key, value, _resolve_annotation(cls, fields[rest]))
            if ns == "compiler" and rest == "on_error" and value not in ON_ERROR:  # (a str: checked above)
                raise NexfortConfigError(unknown_message("value of 'compiler.on_error'", str(value), ON_ERROR))
        out.setdefault(ns, {})[rest] = value
    return out


def _resolve_annotation(cls: type, f: dataclasses.Field) -> Any:
    import typing

    try:
        return typing.get_type_hints(cls)[f.name]
    except Exception:  # pragma: no cover
        return f.type
