"""Mode flags: each one defined once, by core's configuration tree or by the plugin that brings it.

A flag is a :class:`ModeFlag`: its name (what a mode string names), a one-paragraph description, the values it
picks (a Hydra config node: ``options`` to set, ``defaults`` for a preset of other flags) and whether only an
installed plugin can implement it. Core's flags are the files ``mode/<flag>.yaml`` of its configuration tree (the
package data ``nexfort.core.conf``, read with :mod:`importlib.resources`); plugins add theirs through the
``nexfort_mode_flags`` hook. Every flag that is not a preset gets one switch, ``config.flags.<name with _>``, in the
structured schema (:func:`switches`), set by composing it: nothing else lists the flags.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from nexfort.core.errors import NexfortConfigError, unknown_message
from nexfort.core.errors import shown as quote

#: The longest mode string and the most flags one may name: far above any real mode (every flag once is ~120
#: characters), far below what would keep the composition lock for minutes (10,000 flags: 59 s).
MAX_MODE_CHARS = 1000
MAX_MODE_FLAGS = 32
#: A flag's name: letters, digits, '-' and '_' (':' separates flags in a mode string).
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
#: The keys a flag's values may have.
VALUE_KEYS = ("defaults", "options")
#: The comment line by which a flag file of core's says that only a plugin can implement the flag.
NEEDS_PLUGIN_MARK = "# @needs-plugin"
CORE = "nexfort-core"


@dataclass(frozen=True)
class ModeFlag:
    """One mode flag.

    - ``name``: what a mode string names (``"max-optimize"``); its switch is ``config.flags.<name with '-' -> '_'>``
      (``config.flags.max_optimize``), True when the flag was composed, directly or through a preset.
    - ``description``: what it turns on, starting with ``"<name>: "`` (``python -m nexfort.config --list-flags``).
    - ``values``: what it picks, as a Hydra config node: ``{"options": {"<namespace>": {"<knob>": value}}}`` (any
      option namespace, core's or a plugin's; checked like a user's options) and, for a preset, ``{"defaults":
      ["<flag>", ..., "_self_"]}``: the flags it stands for, composed first.
    - ``preset``: a flag that stands for others (``O3``) has no switch of its own.
    - ``needs_plugin``: only plugin code implements it (its values alone do not): turning it on when no installed
      plugin claims it (``nexfort_claims_feature``) is an error, so that a flag is never accepted and ignored.
      A plugin that declares a flag and implements it itself leaves this False.
    """

    name: str
    description: str
    values: Mapping[str, Any] = field(default_factory=dict)
    preset: bool = False
    needs_plugin: bool = False

    @property
    def switch(self) -> Optional[str]:
        """The field of ``config.flags`` this flag turns on (``None`` for a preset)."""
        return None if self.preset else self.name.replace("-", "_")

    def node(self) -> Dict[str, Any]:
        """The Hydra config node that composing this flag merges (its values, and its switch turned on)."""
        import copy

        node = copy.deepcopy(dict(self.values))
        if self.switch is not None:
            node["flags"] = {self.switch: True}
        return node

    @classmethod
    def from_yaml(cls, name: str, text: str) -> "ModeFlag":
        """A flag from the text of its YAML file: the leading comment lines are its description (a line
        ``# @needs-plugin`` marks ``needs_plugin``), the rest its values; a file with ``defaults`` is a preset."""
        from omegaconf import OmegaConf

        desc: List[str] = []
        needs_plugin = False
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            if line.startswith(NEEDS_PLUGIN_MARK):
                needs_plugin = True
                continue
            desc.append(line.lstrip("# ").rstrip())
        values = OmegaConf.to_container(OmegaConf.create(text)) or {}
        if not isinstance(values, dict):
            raise NexfortConfigError(f"Mode flag {name!r}: its file must be a mapping, got {quote(values)}.")
        return cls(name=name, description=" ".join(d for d in desc if d), values=values,
                   preset=bool(values.get("defaults")), needs_plugin=needs_plugin)


def _conf() -> Any:
    """Core's configuration tree: the package data ``nexfort/core/conf`` (in a wheel and in a checkout alike)."""
    return importlib.resources.files("nexfort.core").joinpath("conf")


def root_config() -> Dict[str, Any]:
    """Hydra's primary config (``conf/config.yaml``): the defaults list that selects the mode group."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(_conf().joinpath("config.yaml").read_text()))


@functools.lru_cache(maxsize=None)
def core_flags() -> Tuple[ModeFlag, ...]:
    """Core's own flags, one per file ``conf/mode/<flag>.yaml``."""
    entries = sorted(e.name for e in _conf().joinpath("mode").iterdir() if e.name.endswith(".yaml"))
    return tuple(ModeFlag.from_yaml(e[: -len(".yaml")], _conf().joinpath("mode", e).read_text()) for e in entries)


@functools.lru_cache(maxsize=None)
def mode_flags() -> Dict[str, ModeFlag]:
    """Every flag, core's and the loaded plugins' (``nexfort_mode_flags``), by name; each one checked."""
    from nexfort.core.plugins import get_plugin_manager

    flags: Dict[str, ModeFlag] = {}
    owners: Dict[str, str] = {}
    switches: Dict[str, str] = {}
    declared = [(CORE, f) for f in core_flags()]
    for impl in get_plugin_manager().hook.nexfort_mode_flags.get_hookimpls():
        for flag in impl.function() or ():
            declared.append((impl.plugin_name, flag))
    for owner, flag in declared:
        _check_flag(owner, flag)
        if flag.name in flags:
            raise NexfortConfigError(f"Mode flag {flag.name!r} is declared twice: by {owners[flag.name]!r} and by "
                                     f"{owner!r}.")
        if flag.switch is not None and flag.switch in switches:
            raise NexfortConfigError(f"Mode flags {switches[flag.switch]!r} and {flag.name!r} (of {owner!r}) would "
                                     f"share the switch flags.{flag.switch}: rename one.")
        flags[flag.name] = flag
        owners[flag.name] = owner
        if flag.switch is not None:
            switches[flag.switch] = flag.name
    for flag in flags.values():
        for d in flag.values.get("defaults") or ():
            if d != "_self_" and d not in flags:
                raise NexfortConfigError(f"Mode flag {flag.name!r} (of {owners[flag.name]!r}) stands for an unknown "
                                         f"flag {quote(d)}; valid flags: {', '.join(sorted(flags))}.")
    return dict(sorted(flags.items()))


def _check_flag(owner: str, flag: Any) -> None:
    where = f"from {owner!r}"
    if not isinstance(flag, ModeFlag):
        raise NexfortConfigError(f"nexfort_mode_flags ({where}) must return ModeFlag objects, got {quote(flag)}.")
    if not isinstance(flag.name, str) or not NAME_RE.match(flag.name):
        raise NexfortConfigError(f"Mode flag name {quote(flag.name)} ({where}) must start with a letter and have "
                                 "only letters, digits, '-' and '_'.")
    if not isinstance(flag.description, str) or not flag.description.startswith(flag.name + ":"):
        raise NexfortConfigError(f"Mode flag {flag.name!r} ({where}): its description must start with "
                                 f"'{flag.name}: ' and say what it turns on, got {quote(flag.description)}.")
    if not isinstance(flag.values, Mapping) or set(flag.values) - set(VALUE_KEYS):
        bad = sorted(set(flag.values) - set(VALUE_KEYS)) if isinstance(flag.values, Mapping) else flag.values
        raise NexfortConfigError(f"Mode flag {flag.name!r} ({where}): its values may only have the keys "
                                 f"{', '.join(VALUE_KEYS)}, got {quote(bad)}.")
    defaults = flag.values.get("defaults")
    if flag.preset != bool(defaults) or (defaults is not None and not isinstance(defaults, (list, tuple))):
        raise NexfortConfigError(f"Mode flag {flag.name!r} ({where}): a preset (and only a preset) has a list "
                                 f"'defaults' of the flags it stands for, got preset={flag.preset!r} and "
                                 f"defaults={quote(defaults)}.")


def available_flags() -> Tuple[str, ...]:
    """The names of the mode flags, sorted."""
    return tuple(mode_flags())


def flag_descriptions() -> Dict[str, str]:
    """``{flag: what it turns on}``."""
    return {name: flag.description for name, flag in mode_flags().items()}


def switches() -> Tuple[str, ...]:
    """The fields of ``config.flags``: one per flag that is not a preset."""
    return tuple(f.switch for f in mode_flags().values() if f.switch is not None)


def flags_schema() -> type:
    """The dataclass of ``config.flags`` (every switch off by default)."""
    return dataclasses.make_dataclass("Flags", [(s, bool, field(default=False)) for s in switches()])


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
            raise NexfortConfigError(unknown_message(
                "mode flag", f, valid, hint="(Flags come from nexfort-core and the installed nexfort plugins: "
                "`python -m nexfort.config --list-flags` lists them.)"))
    return flags


def flags_turned_on(cfg: Any) -> List[str]:
    """The switches of ``cfg.flags`` that are on."""
    return [s for s in switches() if bool(cfg.flags.get(s, False))]


def check_features(cfg: Any) -> None:
    """Every flag that is on and that only a plugin can implement (``needs_plugin``) is claimed by an installed
    plugin (``nexfort_claims_feature``); raises :class:`NexfortConfigError` otherwise."""
    from nexfort.core import plugins

    pm = plugins.get_plugin_manager()
    on = set(flags_turned_on(cfg))
    for flag in mode_flags().values():
        if not flag.needs_plugin or flag.switch not in on:
            continue
        if not any(pm.hook.nexfort_claims_feature(feature=flag.switch, config=cfg)):
            loaded = ", ".join(pm.get_name(p) for p in pm.get_plugins()) or "none"
            raise NexfortConfigError(
                f"Mode flag {flag.name!r} is on but no installed nexfort plugin implements it (loaded plugins: "
                f"{loaded}). Install one that does, or check NEXFORT_DISABLE_PLUGIN_AUTOLOAD / "
                "NEXFORT_DISABLED_PLUGINS.")


def clear_caches() -> None:
    mode_flags.cache_clear()
