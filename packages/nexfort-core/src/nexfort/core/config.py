"""Turn what users pass (a dict, keyword arguments or one JSON string) into the resolved configuration.

The mode string ``a:b:c`` becomes a Hydra composition of the flags ``a``, ``b``, ``c`` (merged in that order:
:mod:`nexfort.core.compose`; the flags themselves: :mod:`nexfort.core.flags`) over the structured schema of
:mod:`nexfort.core.schema`; the user's ``options`` are merged on top. What users pass is read once
(:mod:`nexfort.core.options`) and checked once (:mod:`nexfort.core.validate`, then the plugins'
``nexfort_validate_config``), so a bad value is reported before any compilation starts. The result is frozen
(read-only: no key can be set, and, as a structured config, none added) and typed (each namespace is backed by its
dataclass: ``OmegaConf.get_type(config.options.<namespace>)``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any, Dict, List, Mapping

from nexfort.core import compat
from nexfort.core import flags as flagmod
from nexfort.core.compose import compose_flags, isolated_hydra  # noqa: F401 - re-exported
from nexfort.core.errors import NexfortConfigError
from nexfort.core.flags import (  # noqa: F401 - re-exported
    MAX_MODE_CHARS,
    MAX_MODE_FLAGS,
    available_flags,
    flag_descriptions,
    flags_turned_on,
    parse_mode,
)
from nexfort.core.options import TOP_LEVEL_KEYS, normalize_top, parse_options, parse_spec  # noqa: F401
from nexfort.core.schema import CORE_NAMESPACES, build_schema
from nexfort.core.validate import INDUCTOR_RANGES, check_inductor_key, namespaces, normalize_options  # noqa: F401

# the names of the single module this was (kept importable)
_parse_spec = parse_spec
_check_inductor_key = check_inductor_key
logger = logging.getLogger("nexfort")


# ------------------------------------------------------------------------------------- plugin schema
@functools.lru_cache(maxsize=None)
def plugin_namespaces() -> Dict[str, type]:
    """``{namespace: dataclass}`` the loaded plugins declare (``nexfort_config_schema``), each one checked."""
    from nexfort.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    found: Dict[str, type] = {}
    owners: Dict[str, str] = {}
    for impl in pm.hook.nexfort_config_schema.get_hookimpls():
        result = impl.function()
        if not result:
            continue
        for ns, cls in result.items():
            owner = impl.plugin_name
            if ns in CORE_NAMESPACES or ns in TOP_LEVEL_KEYS or ns == "flags":
                raise NexfortConfigError(f"Plugin {owner!r} declares option namespace {ns!r}, which is core's.")
            if ns in found and found[ns] is not cls:
                raise NexfortConfigError(
                    f"Plugins {owners[ns]!r} and {owner!r} both declare option namespace {ns!r}.")
            if not dataclasses.is_dataclass(cls):
                raise NexfortConfigError(f"Plugin {owner!r}: the schema of namespace {ns!r} must be a dataclass.")
            found[ns] = cls
            owners[ns] = owner
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=None)
def checked_flags() -> Dict[str, flagmod.ModeFlag]:
    """The mode flags, their option values checked like a user's (Inductor's: once composed)."""
    registry = flagmod.mode_flags()
    plugin_ns = plugin_namespaces()
    for flag in registry.values():
        try:
            normalize_options(flag.values.get("options"), plugin_ns, check_inductor=False)
        except NexfortConfigError as e:
            raise NexfortConfigError(f"Mode flag {flag.name!r}: {e}") from None
    return registry


# ------------------------------------------------------------------------------------------ resolve
def resolve_config(spec: Any = None, /, **kwargs: Any):
    """Resolve a nexfort configuration.

    ``spec`` is a mapping or a JSON string with the keys ``mode``, ``dynamic``, ``fullgraph``,
    ``memory_format`` and ``options``; keyword arguments are merged over it. Returns a read-only
    ``omegaconf.DictConfig`` (see :mod:`nexfort.core.schema`). Raises :class:`NexfortConfigError`.
    """
    merged = parse_spec(spec)
    extra = parse_spec(kwargs)
    for k, v in extra.items():
        if v is None and k in merged:
            continue
        if k == "options" and isinstance(v, Mapping) and isinstance(merged.get("options"), Mapping):
            merged["options"] = {**merged["options"], **v}
        else:
            merged[k] = v
    return _resolve_cached(_Frozen(merged))


class _Frozen:
    """The parsed spec as an ``lru_cache`` key: hashed and compared by its canonical JSON text (values JSON cannot
    write, such as a ``torch.memory_format``, by their ``repr``), carrying the spec itself to the resolution."""

    __slots__ = ("key", "spec")

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.key = json.dumps(spec, sort_keys=True, default=repr)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and other.key == self.key


@functools.lru_cache(maxsize=256)
def _resolve_cached(frozen: _Frozen):
    from omegaconf import OmegaConf, open_dict

    spec = dict(frozen.spec)
    plugin_ns = plugin_namespaces()
    registry = checked_flags()
    top = normalize_top(spec, namespaces(plugin_ns), registry)
    flags = parse_mode(top.get("mode"))
    options = normalize_options(top.pop("options"), plugin_ns)

    schema = OmegaConf.structured(build_schema(plugin_ns, flagmod.flags_schema()))
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
        # a flag's knob that only newer torch has (a flag's fx_graph_cache on torch 2.1) is left out: the flag
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
    for k, v in cfg.options.inductor.items():  # flags' values are checked as strictly as users'
        check_inductor_key(k, v, f"inductor.{k}")
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
    import torch

    logger.info("nexfort: mode %r: inductor.%s needs torch >= %s (installed: %s); left out", ":".join(flags), key,
                compat.INDUCTOR_KNOB_SINCE[key], torch.__version__)


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def clear_caches() -> None:
    """Forget resolved configurations, flags and namespaces (after registering or unregistering plugins)."""
    _resolve_cached.cache_clear()
    checked_flags.cache_clear()
    plugin_namespaces.cache_clear()
    flagmod.clear_caches()
