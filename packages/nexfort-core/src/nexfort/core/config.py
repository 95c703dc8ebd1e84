"""Turn what users pass (a dict, keyword arguments or one JSON string) into the resolved configuration.

The mode string ``a:b:c`` becomes a Hydra composition of ``conf/mode/a.yaml``, ``b.yaml``, ``c.yaml`` (merged
in that order) over the structured schema of :mod:`nexfort.core.schema`; the user's ``options`` are merged
on top. Everything is validated first, so a bad value is reported before any compilation starts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
import threading
from typing import Any, Dict, List, Mapping, Tuple

from nexfort.core import compat
from nexfort.core.errors import NexfortConfigError, suggest, unknown_message
from nexfort.core.schema import CORE_NAMESPACES, MEMORY_FORMATS, ON_ERROR, Flags, build_schema

TOP_LEVEL_KEYS = ("mode", "dynamic", "fullgraph", "memory_format", "options")
_lock = threading.Lock()


# ----------------------------------------------------------------------------------------------- conf
def _conf_location() -> Tuple[str, str]:
    """``("module", "nexfort.core.conf")`` in an installed wheel, ``("dir", path)`` in a source checkout."""
    try:
        shipped = importlib.resources.files("nexfort.core") / "conf"
        if shipped.is_dir() and (shipped / "config.yaml").is_file():
            return "module", "nexfort.core.conf"
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for _ in range(6):  # packages/nexfort-core/src/nexfort/core -> repository root
        here = os.path.dirname(here)
        if os.path.isfile(os.path.join(here, "conf", "config.yaml")):
            return "dir", os.path.join(here, "conf")
    raise RuntimeError("nexfort's configuration tree (conf/) is missing: reinstall nexfort-core")


@functools.lru_cache(maxsize=None)
def available_flags() -> Tuple[str, ...]:
    """The mode flags: one YAML file each under ``conf/mode``."""
    kind, where = _conf_location()
    if kind == "module":
        entries = [e.name for e in (importlib.resources.files("nexfort.core") / "conf" / "mode").iterdir()]
    else:
        entries = os.listdir(os.path.join(where, "mode"))
    return tuple(sorted(e[: -len(".yaml")] for e in entries if e.endswith(".yaml")))


def parse_mode(mode: Any) -> List[str]:
    """``"max-optimize:max-autotune"`` -> ``["max-optimize", "max-autotune"]``, every flag checked."""
    if mode is None:
        return []
    if not isinstance(mode, str):
        raise NexfortConfigError(
            f"'mode' must be a string of colon-separated flags like 'max-optimize:max-autotune', "
            f"got {type(mode).__name__} {mode!r}")
    flags = [f.strip() for f in mode.split(":")] if mode.strip() else []
    valid = available_flags()
    for f in flags:
        if not f:
            raise NexfortConfigError(f"Empty mode flag in {mode!r}. Valid flags: {', '.join(valid)}.")
        if f not in valid:
            raise NexfortConfigError(unknown_message("mode flag", f, valid))
    return flags


# ------------------------------------------------------------------------------------- plugin schema
def plugin_namespaces() -> Dict[str, type]:
    from nexfort.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    namespaces: Dict[str, type] = {}
    owners: Dict[str, str] = {}
    for impl in pm.hook.nexfort_config_schema.get_hookimpls():
        result = impl.function()
        if not result:
            continue
        for ns, cls in result.items():
            owner = impl.plugin_name
            if ns in CORE_NAMESPACES or ns in TOP_LEVEL_KEYS or ns == "flags":
                raise NexfortConfigError(f"Plugin {owner!r} declares option namespace {ns!r}, which is core's.")
            if ns in namespaces and namespaces[ns] is not cls:
                raise NexfortConfigError(
                    f"Plugins {owners[ns]!r} and {owner!r} both declare option namespace {ns!r}.")
            if not dataclasses.is_dataclass(cls):
                raise NexfortConfigError(f"Plugin {owner!r}: the schema of namespace {ns!r} must be a dataclass.")
            namespaces[ns] = cls
            owners[ns] = owner
    return dict(sorted(namespaces.items()))


# ---------------------------------------------------------------------------------------- validation
def _parse_spec(spec: Any) -> Dict[str, Any]:
    if spec is None:
        return {}
    if isinstance(spec, (bytes, bytearray)):
        spec = spec.decode()
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise NexfortConfigError(
                f"Invalid JSON in the compiler config {spec!r}: {e.msg} at line {e.lineno} column {e.colno}. "
                'Expected an object like {"mode": "max-optimize:max-autotune", "dynamic": true}.') from None
    if not isinstance(spec, Mapping):
        raise NexfortConfigError(
            f"The compiler config must be a mapping (or a JSON object), got {type(spec).__name__} {spec!r}.")
    return dict(spec)


def _flatten(prefix: str, value: Any, out: Dict[str, Any]) -> None:
    """``{"inductor": {"triton": {"cudagraphs": True}}}`` -> ``{"inductor.triton.cudagraphs": True}``."""
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            if not isinstance(k, str):
                raise NexfortConfigError(f"Option keys must be strings, got {k!r} under {prefix or 'options'!r}.")
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def _namespaces(plugin_ns: Mapping[str, type]) -> Dict[str, Any]:
    ns = dict(CORE_NAMESPACES)
    ns.update(plugin_ns)
    return ns


def _check_type(key: str, value: Any, expected: Any) -> None:
    """Raise unless ``value`` fits the annotation ``expected`` (bool/int/float/str, Optional of those)."""
    import typing

    allowed: Tuple[type, ...]
    optional = False
    origin = typing.get_origin(expected)
    if origin is typing.Union:
        args = [a for a in typing.get_args(expected) if a is not type(None)]
        optional = len(args) < len(typing.get_args(expected))
        if any(not isinstance(a, type) for a in args):  # Optional[List[str]] and such: containers are accepted
            return
        allowed = tuple(args)
    elif isinstance(expected, type):
        allowed = (expected,)
    else:  # Any / containers: accept
        return
    if value is None and optional:
        return
    ok = any(_fits(value, t) for t in allowed)
    if not ok:
        names = " or ".join(t.__name__ for t in allowed) + (" or null" if optional else "")
        raise NexfortConfigError(f"Option {key!r} must be {names}, got {type(value).__name__} {value!r}.")


def _fits(value: Any, t: type) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t)


def _check_inductor_key(key: str, value: Any, shown: str) -> None:
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
        msg = f"Unknown Inductor option {shown!r}"
        msg += ("; did you mean " + " or ".join(repr(prefix + c) for c in close) + "?") if close else "."
        msg += " " + hint + " See torch._inductor.config for the valid keys."
        raise NexfortConfigError(msg)
    default = defaults[key]
    if isinstance(default, bool):
        _check_type(shown, value, bool)
    elif isinstance(default, int) and value is not None and not isinstance(default, bool):
        _check_type(shown, value, int)
    elif isinstance(default, float) and value is not None:
        _check_type(shown, value, float)


def _normalize_options(raw: Any, plugin_ns: Mapping[str, type]) -> Dict[str, Dict[str, Any]]:
    """Flatten ``options`` into ``{namespace: {key: value}}``, checking every key and value."""
    if raw is None:
        return {}
    raw = _parse_spec(raw) if isinstance(raw, (str, bytes)) else raw
    if not isinstance(raw, Mapping):
        raise NexfortConfigError(f"'options' must be a mapping of namespaced knobs, got {type(raw).__name__}.")
    namespaces = _namespaces(plugin_ns)
    flat: Dict[str, Any] = {}
    for k, v in raw.items():
        if not isinstance(k, str):
            raise NexfortConfigError(f"Option keys must be strings, got {k!r}.")
        _flatten(k, v, flat)
    out: Dict[str, Dict[str, Any]] = {}
    for key, value in flat.items():
        ns, _, rest = key.partition(".")
        if ns not in namespaces:
            hint = None
            if key in compat.inductor_config_defaults():
                hint = f"Inductor settings go under 'inductor.': did you mean 'inductor.{key}'?"
            raise NexfortConfigError(unknown_message(
                "option namespace", ns, namespaces, hint=hint) + f" (in option {key!r})")
        if not rest:
            raise NexfortConfigError(f"Option {key!r} names a namespace, not a knob; use '{ns}.<knob>'.")
        if ns == "inductor":
            _check_inductor_key(rest, value, key)
        elif ns == "triton":
            _check_inductor_key("triton." + rest, value, key)
        else:
            cls = namespaces[ns]
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if rest not in fields:
                raise NexfortConfigError(unknown_message(f"option of '{ns}'", rest, fields,
                                                         hint=None, list_valid=True).replace(
                    f"Unknown option of '{ns}' {rest!r}", f"Unknown option {key!r}"))
            _check_type(key, value, _resolve_annotation(cls, fields[rest]))
            if ns == "compiler" and rest == "on_error" and value not in ON_ERROR:
                raise NexfortConfigError(unknown_message("value of 'compiler.on_error'", str(value), ON_ERROR))
        out.setdefault(ns, {})[rest] = value
    return out


def _resolve_annotation(cls: type, f: dataclasses.Field) -> Any:
    import typing

    try:
        return typing.get_type_hints(cls)[f.name]
    except Exception:  # pragma: no cover
        return f.type


def _normalize_top(spec: Dict[str, Any], plugin_ns: Mapping[str, type]) -> Dict[str, Any]:
    """Check top-level keys; move namespaced knobs given at the top level under ``options``."""
    namespaces = _namespaces(plugin_ns)
    options = spec.pop("options", None)
    if options is not None and isinstance(options, (str, bytes)):
        options = _parse_spec(options)
    if options is not None and not isinstance(options, Mapping):
        raise NexfortConfigError(
            f"'options' must be a mapping of namespaced knobs like {{'inductor.max_autotune': True}}, "
            f"got {type(options).__name__} {options!r}.")
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
        if flag in available_flags():
            hint = f"{key!r} is a mode flag: add it to 'mode' (e.g. mode='{flag}')."
        elif key in compat.inductor_config_defaults():
            hint = f"Inductor settings go under options: options={{'inductor.{key}': {value!r}}}."
        raise NexfortConfigError(unknown_message("option", key, TOP_LEVEL_KEYS, hint=hint)
                                 .replace("Valid options:", "Valid top-level keys:"))
    top["options"] = options
    dyn = top.get("dynamic")
    if dyn is not None and not isinstance(dyn, bool):
        raise NexfortConfigError(f"'dynamic' must be true, false or null, got {type(dyn).__name__} {dyn!r}.")
    if "fullgraph" in top and not isinstance(top["fullgraph"], bool):
        raise NexfortConfigError(
            f"'fullgraph' must be true or false, got {type(top['fullgraph']).__name__} {top['fullgraph']!r}.")
    if "memory_format" in top:
        mf = top["memory_format"]
        if mf is None:
            mf = "preserve"
        if not isinstance(mf, str):  # torch.channels_last and friends
            mf = str(mf).replace("torch.", "").replace("_format", "") if "format" in str(mf) else mf
            mf = {"channels_last": "channels_last", "contiguous": "contiguous", "preserve": "preserve"}.get(mf, mf)
        if mf not in MEMORY_FORMATS:
            raise NexfortConfigError(unknown_message("memory_format", str(mf), MEMORY_FORMATS))
        top["memory_format"] = mf
    return top


# ------------------------------------------------------------------------------------------ resolve
def resolve_config(spec: Any = None, /, **kwargs: Any):
    """Resolve a nexfort configuration.

    ``spec`` is a mapping or a JSON string with the keys ``mode``, ``dynamic``, ``fullgraph``,
    ``memory_format`` and ``options``; keyword arguments are merged over it. Returns a read-only
    ``omegaconf.DictConfig`` (see :mod:`nexfort.core.schema`). Raises :class:`NexfortConfigError`.
    """
    merged = _parse_spec(spec)
    for k, v in kwargs.items():
        if v is None and k in merged:
            continue
        if k == "options" and isinstance(v, Mapping) and isinstance(merged.get("options"), Mapping):
            merged["options"] = {**merged["options"], **v}
        else:
            merged[k] = v
    key = json.dumps(merged, sort_keys=True, default=repr)
    return _resolve_cached(key, _Frozen(merged))


class _Frozen:
    """Carries the parsed spec through lru_cache (which keys on the JSON text only)."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen)


@functools.lru_cache(maxsize=256)
def _resolve_cached(key: str, frozen: _Frozen):
    from omegaconf import OmegaConf, open_dict

    spec = dict(frozen.spec)
    plugin_ns = plugin_namespaces()
    top = _normalize_top(spec, plugin_ns)
    flags = parse_mode(top.get("mode"))
    options = _normalize_options(top.pop("options"), plugin_ns)

    schema = OmegaConf.structured(build_schema(plugin_ns))
    composed = compose_flags(flags)
    cfg = OmegaConf.merge(schema, composed)
    user: Dict[str, Any] = {k: v for k, v in top.items() if k != "mode"}
    user["options"] = {ns: dict(knobs) for ns, knobs in options.items() if ns not in ("inductor", "triton")}
    cfg = OmegaConf.merge(cfg, user)
    # Inductor's keys may contain dots ("triton.cudagraphs"): merged here as plain dicts. triton.* knobs are
    # Inductor's "triton.<key>", folded into the one Inductor mapping.
    inductor = {}
    from_flags = {**OmegaConf.to_container(cfg.options.inductor, resolve=True),
                  **{"triton." + k: v for k, v in OmegaConf.to_container(cfg.options.triton, resolve=True).items()}}
    for k in list(from_flags):
        # a flag's knob that only newer torch has (cache-all's fx_graph_cache on torch 2.1) is left out: the flag
        # does what the running torch can. A user's knob stays strict (below), and so does a misspelled one.
        if k in compat.INDUCTOR_KNOB_SINCE and not compat.has_inductor_knob(k):
            _note_missing_knob(k, flags)
            del from_flags[k]
    for source in (from_flags,
                   options.get("inductor", {}),
                   {"triton." + k: v for k, v in options.get("triton", {}).items()}):
        inductor.update(source)
    with open_dict(cfg):
        cfg.options.inductor = inductor
        cfg.options.triton = {}
    cfg.mode = ":".join(flags)
    for k, v in cfg.options.inductor.items():  # flag files are checked as strictly as users
        _check_inductor_key(k, v, f"inductor.{k}")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _note_missing_knob(key: str, flags: List[str]) -> None:
    import logging

    import torch

    logging.getLogger("nexfort").info(
        "nexfort: mode %r: inductor.%s needs torch >= %s (installed: %s); left out", ":".join(flags), key,
        compat.INDUCTOR_KNOB_SINCE[key], torch.__version__)


def compose_flags(flags: List[str]):
    """Compose ``conf/config.yaml`` with the mode flags selected, in order (Hydra)."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    kind, where = _conf_location()
    init = (initialize_config_module(config_module=where, version_base=None) if kind == "module"
            else initialize_config_dir(config_dir=where, version_base=None))
    with _lock, init:
        return compose(config_name="config", overrides=[f"mode=[{','.join(flags)}]"])


def flags_turned_on(cfg: Any) -> List[str]:
    return [f.name for f in dataclasses.fields(Flags) if bool(cfg.flags[f.name])]


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def clear_caches() -> None:
    """Forget resolved configurations (after registering or unregistering plugins)."""
    _resolve_cached.cache_clear()
    available_flags.cache_clear()


def flag_descriptions() -> Dict[str, str]:
    """``{flag: first comment line of its YAML file}``."""
    kind, where = _conf_location()
    out = {}
    for flag in available_flags():
        if kind == "module":
            text = (importlib.resources.files("nexfort.core") / "conf" / "mode" / f"{flag}.yaml").read_text()
        else:
            with open(os.path.join(where, "mode", f"{flag}.yaml")) as f:
                text = f.read()
        lines = [ln.lstrip("# ").rstrip() for ln in text.splitlines()
                 if ln.startswith("#") and not ln.startswith("# @package")]
        out[flag] = " ".join(lines)
    return out
