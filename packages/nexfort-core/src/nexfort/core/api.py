"""What a nexfort plugin may use of core: the one module plugins import (``from nexfort.core import api``).

Everything else of nexfort-core (``nexfort.core.backend``, ``.config``, ``.compat``, ...) is its own business and
may change; ``tests/core/test_plugin_boundary.py`` checks that the project's plugins (and the example third-party
plugin) import nothing else of it. The hooks a plugin implements are specified in :mod:`nexfort.core.hookspecs`.

- writing a plugin: :data:`hookimpl`, :class:`GraphPass`, :class:`ModeFlag`, :data:`counters`;
- its errors: :class:`NexfortConfigError` and the message helpers :func:`shown`, :func:`suggest`,
  :func:`unknown_message` (a bad value quoted, the valid ones listed);
- the configuration it is handed: :func:`options_of` (its namespace as a frozen dataclass instance),
  :func:`flag_on`, :func:`with_switches` (a copy with some flags' switches changed), and, for a plugin with a
  public entry point of its own (``compile_pipe``), :func:`parse_spec`, :func:`parse_options`,
  :func:`resolve_config`, :func:`check_features`, :func:`backend_for`, :func:`prepare_module`;
- the plugin manager: :func:`plugin_manager`, :func:`register_plugin`, :func:`clear_caches`;
- facts about the environment, remembered between processes through the plugins: :func:`remembered_fact`;
- facts about the running torch, feature-detected: :func:`has_inductor_knob`, :func:`inductor_cache_dir`,
  :func:`inductor_upsample_nearest_ok`, and the run-time tuned Triton kernels: :func:`tuned_kernel_dirs`;
- the registry of patches of torch/diffusers internals (:mod:`nexfort.core.patches`, as :data:`patches`): a plugin
  registers its own, holds one while it needs it (``patches.hold``/``release``/``applied``) and records the
  instance patches it makes (``patches.set_attr``), which ``patches.restore`` undoes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Type, TypeVar

from nexfort.core import (
    hookimpl,  # noqa: F401 - the decorator for hook implementations
    patches,  # noqa: F401 - the patch registry (nexfort.core.patches)
)
from nexfort.core.config import clear_caches, parse_options, parse_spec, resolve_config
from nexfort.core.counters import counters
from nexfort.core.errors import NexfortConfigError, shown, suggest, unknown_message
from nexfort.core.flags import ModeFlag, check_features
from nexfort.core.graph_pass import GraphPass
from nexfort.core.plugins import get_plugin_manager as plugin_manager

T = TypeVar("T")

__all__ = [
    "hookimpl", "GraphPass", "ModeFlag", "counters", "NexfortConfigError", "shown", "suggest", "unknown_message",
    "options_of", "flag_on", "with_switches", "parse_spec", "parse_options", "resolve_config", "check_features",
    "backend_for", "prepare_module", "plugin_manager", "register_plugin", "clear_caches", "has_inductor_knob",
    "inductor_cache_dir", "inductor_upsample_nearest_ok", "patches", "tuned_kernel_dirs",
    "remembered_fact",
]


# ------------------------------------------------------------------------------------------ the configuration
def options_of(config: Any, namespace: str, cls: Optional[Type[T]] = None) -> T:
    """``config.options.<namespace>`` as a frozen instance of its dataclass (``cls``, else the namespace's schema):
    typed attributes, lists as tuples (mapping-valued fields stay dicts), assigning to a field raises
    ``dataclasses.FrozenInstanceError``; hashable (where its values are) and
    ``isinstance(..., cls)``. A namespace the configuration lacks (its plugin registered after it was resolved) gives
    ``cls``'s defaults."""
    from omegaconf import DictConfig, OmegaConf

    node = None
    try:
        node = config.options[namespace]
    except Exception:  # noqa: BLE001 - no such namespace in this configuration
        node = None
    if cls is None:
        if not isinstance(node, DictConfig):
            raise KeyError(f"options_of: the configuration has no option namespace {namespace!r}")
        cls = OmegaConf.get_type(node)
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return _freeze_instance(cls, {k: v for k, v in values.items() if k in names})  # absent fields: their defaults


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=None)
def _frozen_class(cls: type) -> type:
    """A subclass of the dataclass ``cls`` whose instances cannot change (``cls`` itself is left as it is)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        made = cls(*args, **kwargs)  # cls's own defaults and __post_init__
        for f in dataclasses.fields(cls):
            object.__setattr__(self, f.name, _freeze(getattr(made, f.name)))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: a plugin's options are read-only")

    def __delattr__(self: Any, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}: a plugin's options are read-only")

    def _values(self: Any) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __hash__(self: Any) -> int:
        return hash((cls, _values(self)))

    def __eq__(self: Any, other: Any) -> bool:
        return isinstance(other, cls) and _values(self) == tuple(_freeze(v) for v in _values(other))

    ns = {"__init__": __init__, "__setattr__": __setattr__, "__delattr__": __delattr__, "__hash__": __hash__,
          "__eq__": __eq__, "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls,), ns)


def _freeze_instance(cls: type, values: dict) -> Any:
    return _frozen_class(cls)(**values)


def flag_on(config: Any, switch: str) -> bool:
    """Whether the mode flag with the switch ``switch`` (``"max_optimize"``) is on; False where no installed
    flag has that switch."""
    try:
        return bool(config.flags.get(switch, False))
    except Exception:  # noqa: BLE001 - not a resolved configuration
        return False


def with_switches(config: Any, **switches: bool) -> Any:
    """A frozen copy of ``config`` with these flags' switches set (``with_switches(cfg, quant=False)``);
    ``config`` itself where nothing changes. A switch the configuration lacks is an error."""
    import copy

    from omegaconf import OmegaConf

    for name in switches:
        if name not in config.flags:
            raise NexfortConfigError(unknown_message("flag switch", name, list(config.flags)))
    if all(bool(config.flags[n]) == bool(v) for n, v in switches.items()):
        return config
    out = copy.deepcopy(config)
    OmegaConf.set_readonly(out, False)
    for name, value in switches.items():
        out.flags[name] = bool(value)
    OmegaConf.set_readonly(out, True)
    return out


def backend_for(config: Any) -> Callable:
    """The nexfort backend bound to a resolved ``config`` (what ``nexfort_compile`` gives ``torch.compile``)."""
    from nexfort.core.backend import NexfortBackend

    return NexfortBackend(config)


def prepare_module(module: Any, config: Any) -> list:
    """What ``nexfort_compile`` does to a module before compiling it: the memory format and the plugins' module
    transforms (``nexfort_transform_module``), in place; returns what was done."""
    from nexfort.compilers import prepare_module as _prepare

    return _prepare(module, config)


# ------------------------------------------------------------------------------------------ plugins
def register_plugin(plugin: Any, name: str) -> bool:
    """Register ``plugin`` under ``name`` where entry points did not (autoload off); False where that name is blocked
    (``NEXFORT_DISABLED_PLUGINS``) or taken by another object. Forgets resolved configurations when it registers."""
    pm = plugin_manager()
    if pm.is_registered(plugin):
        return True
    if pm.is_blocked(name) or pm.get_plugin(name) is not None:
        return False
    pm.register(plugin, name=name)
    clear_caches()
    return True


# ------------------------------------------------------------------------------------------ facts
def remembered_fact(name: str, schema: Mapping[str, type], probe: Callable[[], Optional[Dict[str, Any]]],
                    config: Any = None) -> Optional[Dict[str, Any]]:
    """A fact about this environment that is costly to find out (a probe that compiles or times kernels): recalled
    through the plugins for ``config`` (``nexfort_recall_fact``: the cache's store when its cache is on), else
    ``probe()`` and recorded (``nexfort_record_fact``). The value is a dict matching ``schema`` (key -> exact
    type): anything else recalled reads as unknown and the probe runs; ``probe()`` returning ``None`` (cannot be told
    here) is not recorded. See :mod:`nexfort.core.facts`."""
    from nexfort.core import facts

    return facts.remembered(name, schema, probe, config)


# ------------------------------------------------------------------------------------------ the running torch
def has_inductor_knob(key: str) -> bool:
    """Whether the running torch's Inductor config has ``key`` (dotted for sub-configs: ``triton.cudagraphs``)."""
    from nexfort.core import compat

    return compat.has_inductor_knob(key)


def inductor_cache_dir() -> str:
    """Inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR`` or its default), without creating it."""
    from nexfort.core import compat

    return compat.inductor_cache_dir()


def inductor_upsample_nearest_ok(config: Any = None) -> Optional[bool]:
    """Whether Inductor's nearest upsampling by a scale factor is right on this torch (probed once per process,
    remembered through the plugins' facts for ``config``; ``None``: cannot be told here)."""
    from nexfort.core import compat

    return compat.inductor_upsample_nearest_scale_factor_ok(config=config)


def tuned_kernel_dirs() -> Optional[FrozenSet[str]]:
    """The Triton cache directories of the kernels run-time tuning chose in this process since
    the ``torch.inductor.record_tuned_kernels`` patch was first held (:data:`patches`; ``None``: not recording)."""
    from nexfort.core import compat_autotune

    return compat_autotune.tuned_kernel_dirs()
