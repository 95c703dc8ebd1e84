"""What users pass, read once: a mapping, keyword arguments or one JSON string (bytes: UTF-8 JSON) becomes one
plain ``dict`` with string keys (:func:`parse_spec`), and its top level is sorted into the top-level keys and the
namespaced knobs (:func:`normalize_top`). Every public entry point (``torch.compile``'s ``options``,
``nexfort_compile``, ``compile_pipe``, ``python -m nexfort.config``) hands what it got to :func:`parse_spec` once."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping

from nexfort.core import compat
from nexfort.core.errors import NexfortConfigError, unknown_message
from nexfort.core.errors import shown as quote
from nexfort.core.schema import MEMORY_FORMATS

TOP_LEVEL_KEYS = ("mode", "dynamic", "fullgraph", "memory_format", "options")


def _decode(spec: Any) -> Any:
    """A JSON string or UTF-8 bytes decoded (anything else as it is)."""
    if isinstance(spec, (bytes, bytearray)):
        try:
            spec = bytes(spec).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NexfortConfigError(
                f"The compiler config {quote(bytes(spec))} is bytes that are not UTF-8 ({e.reason} at byte "
                f"{e.start}): pass a str, a mapping, or UTF-8 JSON.") from None
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise NexfortConfigError(
                f"Invalid JSON in the compiler config {quote(spec)}: {e.msg} at line {e.lineno} column {e.colno}. "
                'Expected an object like {"mode": "max-optimize:max-autotune", "dynamic": true}.') from None
    return spec


def parse_spec(spec: Any) -> Dict[str, Any]:
    """``spec`` (``None``, a mapping, a JSON object as str or UTF-8 bytes) as a new ``dict``; an ``options`` value
    given as JSON text is decoded too, and every key at any depth is checked to be a string. Raises
    :class:`NexfortConfigError` naming the bad value."""
    if spec is None:
        return {}
    spec = _decode(spec)
    if not isinstance(spec, Mapping):
        raise NexfortConfigError(
            f"The compiler config must be a mapping (or a JSON object), got {type(spec).__name__} {quote(spec)}.")
    out = dict(spec)
    if isinstance(out.get("options"), (str, bytes, bytearray)):
        out["options"] = _decode(out["options"])
    check_keys(out)
    return out


def parse_options(options: Any) -> Dict[str, Any]:
    """``options`` alone (``None``, a mapping or a JSON object as text) as a new ``dict``."""
    if options is None:
        return {}
    options = parse_spec({"options": options})["options"]
    if not isinstance(options, Mapping):
        raise NexfortConfigError(
            f"'options' must be a mapping of namespaced knobs like {{'inductor.max_autotune': True}}, "
            f"got {type(options).__name__} {quote(options)}.")
    return dict(options)


def check_keys(spec: Mapping[str, Any], where: str = "") -> None:
    """Every key of the spec, at any depth, is a string (before anything sorts or serializes the keys)."""
    for k, v in spec.items():
        if not isinstance(k, str):
            place = (f" under {quote(where)}." if where
                     else f" at the top level (valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}).")
            raise NexfortConfigError(f"Option keys must be strings, got {type(k).__name__} {quote(k)}{place}")
        if isinstance(v, Mapping):
            check_keys(v, f"{where}.{k}" if where else k)


def normalize_top(spec: Dict[str, Any], namespaces: Mapping[str, Any], flags: Any) -> Dict[str, Any]:
    """Check the top-level keys of a parsed spec; move namespaced knobs given at the top level under ``options``.
    ``namespaces``: the valid option namespaces; ``flags``: the valid mode flags (for hints)."""
    options = spec.pop("options", None)
    if options is not None and not isinstance(options, Mapping):
        raise NexfortConfigError(
            f"'options' must be a mapping of namespaced knobs like {{'inductor.max_autotune': True}}, "
            f"got {type(options).__name__} {quote(options)}.")
    options = dict(options or {})
    top: Dict[str, Any] = {}
    for key, value in spec.items():
        if key in TOP_LEVEL_KEYS:
            top[key] = value
            continue
        ns = key.split(".", 1)[0]
        if ns in namespaces:  # a namespaced knob at the top level: accepted, it belongs under options
            options[key] = value
            continue
        hint = None
        flag = key.replace("_", "-")
        if flag in flags:
            hint = f"{quote(key)} is a mode flag: add it to 'mode' (e.g. mode='{flag}')."
        elif key in compat.inductor_config_defaults():
            hint = f"Inductor settings go under options: options={{'inductor.{key}': {quote(value)}}}."
        raise NexfortConfigError(unknown_message("option", key, TOP_LEVEL_KEYS, hint=hint)
                                 .replace("Valid options:", "Valid top-level keys:"))
    top["options"] = options
    dyn = top.get("dynamic")
    if dyn is not None and not isinstance(dyn, bool):
        raise NexfortConfigError(f"'dynamic' must be true, false or null, got {type(dyn).__name__} {quote(dyn)}.")
    if "fullgraph" in top and not isinstance(top["fullgraph"], bool):
        raise NexfortConfigError(
            f"'fullgraph' must be true or false, got {type(top['fullgraph']).__name__} {quote(top['fullgraph'])}.")
    if "memory_format" in top:
        top["memory_format"] = memory_format(top["memory_format"])
    return top


def memory_format(mf: Any) -> str:
    """``"channels_last"``/``"contiguous"``/``"preserve"`` (or ``None``: preserve), or the torch memory format of the
    same meaning (``torch.channels_last``, ``torch.contiguous_format``, ``torch.preserve_format``)."""
    if mf is None:
        return "preserve"
    if isinstance(mf, str):
        if mf not in MEMORY_FORMATS:
            raise NexfortConfigError(unknown_message("memory_format", mf, MEMORY_FORMATS))
        return mf
    import torch

    by_torch = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous",
                torch.preserve_format: "preserve"}
    if isinstance(mf, torch.memory_format):
        if mf in by_torch:
            return by_torch[mf]
        raise NexfortConfigError(f"memory_format {mf} is not supported (2-D convolutions' layouts only): use "
                                 f"{', '.join(MEMORY_FORMATS)} or {', '.join(map(str, by_torch))}.")
    raise NexfortConfigError(
        f"memory_format must be one of {', '.join(map(repr, MEMORY_FORMATS))} or a torch memory format "
        f"({', '.join(map(str, by_torch))}), got {type(mf).__name__} {quote(mf)}.")
