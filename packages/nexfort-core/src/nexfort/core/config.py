"""Turn what users pass (a dict, keyword arguments or one JSON string) into the resolved configuration.

The mode string ``a:b:c`` becomes a Hydra composition of ``conf/mode/a.yaml``, ``b.yaml``, ``c.yaml`` (merged
in that order) over the structured schema of :mod:`nexfort.core.schema`; the user's ``options`` are merged
on top. Everything is validated first, so a bad value is reported before any compilation starts.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import functools
import importlib.resources
import json
import os
import threading
from typing import Any, Dict, Iterator, List, Mapping, Tuple

from nexfort.core import compat
from nexfort.core.errors import NexfortConfigError, suggest, unknown_message
from nexfort.core.errors import shown as quote
from nexfort.core.schema import CORE_NAMESPACES, MEMORY_FORMATS, ON_ERROR, Flags, build_schema

TOP_LEVEL_KEYS = ("mode", "dynamic", "fullgraph", "memory_format", "options")
#: The longest mode string and the most flags one may name: far above any real mode (every flag once is ~120
#: characters), far below what would keep the composition lock for minutes (10,000 flags: 59 s).
MAX_MODE_CHARS = 1000
MAX_MODE_FLAGS = 32
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
            f"got {type(mode).__name__} {quote(mode)}")
    valid = available_flags()
    n = mode.count(":") + 1
    if len(mode) > MAX_MODE_CHARS or n > MAX_MODE_FLAGS:
        raise NexfortConfigError(
            f"'mode' is too long ({len(mode)} characters, {n} flags; at most {MAX_MODE_CHARS} characters and "
            f"{MAX_MODE_FLAGS} flags): {quote(mode)}. Name each flag once; valid flags: {', '.join(valid)}.")
    flags = [f.strip() for f in mode.split(":")] if mode.strip() else []
    for f in flags:
        if not f:
            raise NexfortConfigError(f"Empty mode flag in {quote(mode)}. Valid flags: {', '.join(valid)}.")
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
    if not isinstance(spec, Mapping):
        raise NexfortConfigError(
            f"The compiler config must be a mapping (or a JSON object), got {type(spec).__name__} {quote(spec)}.")
    return dict(spec)


def _check_keys(spec: Mapping[str, Any], where: str = "") -> None:
    """Every key of the spec, at any depth, is a string (before anything sorts or serializes the keys)."""
    for k, v in spec.items():
        if not isinstance(k, str):
            place = (f" under {quote(where)}." if where
                     else f" at the top level (valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}).")
            raise NexfortConfigError(f"Option keys must be strings, got {type(k).__name__} {quote(k)}{place}")
        if isinstance(v, Mapping):
            _check_keys(v, f"{where}.{k}" if where else k)


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


def _namespaces(plugin_ns: Mapping[str, type]) -> Dict[str, Any]:
    ns = dict(CORE_NAMESPACES)
    ns.update(plugin_ns)
    return ns


def _check_type(key: str, value: Any, expected: Any) -> Any:
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
        msg = f"Unknown Inductor option {quote(shown)}"
        msg += ("; did you mean " + " or ".join(repr(prefix + c) for c in close) + "?") if close else "."
        msg += " " + hint + " See torch._inductor.config for the valid keys."
        raise NexfortConfigError(msg)
    default = defaults[key]
    if isinstance(default, bool):
        _check_type(shown, value, bool)
    elif isinstance(default, int) and value is not None and not isinstance(default, bool):
        _check_type(shown, value, int)
    elif isinstance(default, dict) and value is not None and not isinstance(value, Mapping):
        raise NexfortConfigError(f"Option {quote(shown)} must be a mapping (like its default, {quote(default)}), "
                                 f"got {type(value).__name__} {quote(value)}.")
    elif isinstance(default, float) and value is not None:
        _check_type(shown, value, float)
        if value != value:
            raise NexfortConfigError(f"Option {quote(shown)} must be a number, got NaN.")
    lo, hi = INDUCTOR_RANGES.get(key, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (lo is not None and value < lo) or (hi is not None and value > hi)):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"between {lo} and {hi}"
        raise NexfortConfigError(f"Option {quote(shown)} must be {bounds}, got {quote(value)}.")


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
            raise NexfortConfigError(f"Option keys must be strings, got {quote(k)}.")
        _flatten(k, v, flat)
    out: Dict[str, Dict[str, Any]] = {}
    for key, value in flat.items():
        ns, _, rest = key.partition(".")
        if ns not in namespaces:
            hint = None
            if key in compat.inductor_config_defaults():
                hint = f"Inductor settings go under 'inductor.': did you mean 'inductor.{key}'?"
            raise NexfortConfigError(unknown_message(
                "option namespace", ns, namespaces, hint=hint) + f" (in option {quote(key)})")
        if not rest:
            raise NexfortConfigError(f"Option {quote(key)} names a namespace, not a knob; use '{ns}.<knob>'.")
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
                    f"Unknown option of '{ns}' {quote(rest)}", f"Unknown option {quote(key)}"))
            value = _check_type(key, value, _resolve_annotation(cls, fields[rest]))
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


def _normalize_top(spec: Dict[str, Any], plugin_ns: Mapping[str, type]) -> Dict[str, Any]:
    """Check top-level keys; move namespaced knobs given at the top level under ``options``."""
    namespaces = _namespaces(plugin_ns)
    options = spec.pop("options", None)
    if options is not None and isinstance(options, (str, bytes)):
        options = _parse_spec(options)
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
        if flag in available_flags():
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
        top["memory_format"] = _memory_format(top["memory_format"])
    return top


def _memory_format(mf: Any) -> str:
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


# ------------------------------------------------------------------------------------------ resolve
def resolve_config(spec: Any = None, /, **kwargs: Any):
    """Resolve a nexfort configuration.

    ``spec`` is a mapping or a JSON string with the keys ``mode``, ``dynamic``, ``fullgraph``,
    ``memory_format`` and ``options``; keyword arguments are merged over it. Returns a read-only
    ``omegaconf.DictConfig`` (see :mod:`nexfort.core.schema`). Raises :class:`NexfortConfigError`.
    """
    merged = _parse_spec(spec)
    _check_keys(merged)
    for k, v in kwargs.items():
        if v is None and k in merged:
            continue
        if k == "options" and isinstance(v, Mapping) and isinstance(merged.get("options"), Mapping):
            merged["options"] = {**merged["options"], **v}
        else:
            merged[k] = v
    _check_keys(merged)
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
    _validate_with_plugins(cfg)
    return cfg


def _validate_with_plugins(cfg: Any) -> None:
    """The plugins' own checks of their options (``nexfort_validate_config``): every problem in one error."""
    from nexfort.core.plugins import get_plugin_manager

    problems: List[str] = []
    for result in get_plugin_manager().hook.nexfort_validate_config(config=cfg):
        if not result:
            continue
        problems.extend([result] if isinstance(result, str) else [str(m) for m in result])
    if problems:
        raise NexfortConfigError(problems[0] if len(problems) == 1 else
                                 "Invalid options:\n" + "\n".join(f"- {m}" for m in problems))


def _note_missing_knob(key: str, flags: List[str]) -> None:
    import logging

    import torch

    logging.getLogger("nexfort").info(
        "nexfort: mode %r: inductor.%s needs torch >= %s (installed: %s); left out", ":".join(flags), key,
        compat.INDUCTOR_KNOB_SINCE[key], torch.__version__)


@contextlib.contextmanager
def isolated_hydra() -> Iterator[None]:
    """Hydra's process-wide state as the caller had it, before and after: nexfort is a library and may run inside a
    program that is itself a Hydra application (``@hydra.main``), whose ``GlobalHydra`` is initialized (Hydra's
    ``initialize_*`` would raise "GlobalHydra is already initialized") and whose version base is its own.

    Inside, Hydra's singletons ``GlobalHydra`` and ``VersionBase`` are fresh; the others (its plugin registry, the
    caller's ``HydraConfig``) are shared, as composing only reads them. Afterwards the registry of singletons is
    exactly what it was: the caller's own objects back, nothing of nexfort's left."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    saved = dict(Singleton._instances)
    for key in (GlobalHydra, VersionBase):
        Singleton._instances.pop(key, None)
    try:
        yield
    finally:
        Singleton._instances.clear()
        Singleton._instances.update(saved)


def compose_flags(flags: List[str]):
    """Compose ``conf/config.yaml`` with the mode flags selected, in order (Hydra), without touching the caller's
    Hydra state (:func:`isolated_hydra`)."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    kind, where = _conf_location()
    with _lock, isolated_hydra():
        init = (initialize_config_module(config_module=where, version_base=None) if kind == "module"
                else initialize_config_dir(config_dir=where, version_base=None))
        with init:
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
