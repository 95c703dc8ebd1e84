"""The Hydra composition of a mode: the flags' config nodes merged in order, without touching the caller's Hydra.

Every flag (:mod:`nexfort.core.flags`: core's files and the plugins' declarations) is one config of the group
``mode`` in a Hydra ``ConfigStore`` private to the composition; the primary config (``conf/config.yaml``)
selects ``mode=[a,b,c]``, and Hydra merges them in that order (later flags win, a preset's ``defaults`` first).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, List

from nexfort.core import flags as flagmod

#: The name of nexfort's primary config in the private ConfigStore (not the caller's "config").
ROOT = "nexfort_config"
_lock = threading.Lock()


@contextlib.contextmanager
def isolated_hydra() -> Iterator[Any]:
    """Hydra's process-wide state as the caller had it, before and after: nexfort is a library and may run inside a
    program that is itself a Hydra application (``@hydra.main``), whose ``GlobalHydra`` is initialized (Hydra's
    ``initialize_*`` would raise "GlobalHydra is already initialized") and whose version base is its own.

    Inside, Hydra's singletons ``GlobalHydra`` and ``VersionBase`` are fresh, and so is the ``ConfigStore`` (yielded):
    it starts with the caller's entries (Hydra's own schema is among them) and an empty group ``mode``, so that what
    nexfort stores there never reaches the caller's. The others (Hydra's plugin registry, the caller's
    ``HydraConfig``) are shared, as composing only reads them. Afterwards the registry of singletons is exactly
    what it was: the caller's own objects back, nothing of nexfort's left."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    base = ConfigStore.instance()
    saved = dict(Singleton._instances)
    for key in (GlobalHydra, VersionBase):
        Singleton._instances.pop(key, None)
    store = ConfigStore.__new__(ConfigStore)
    store.repo = {**base.repo, "mode": {}}  # a new top level: nothing stored here reaches the caller's mapping
    Singleton._instances[ConfigStore] = store
    try:
        yield store
    finally:
        Singleton._instances.clear()
        Singleton._instances.update(saved)


def compose_flags(flags: List[str]) -> Any:
    """Compose the primary config with the mode flags ``flags`` selected, in order (Hydra), without touching the
    caller's Hydra state (:func:`isolated_hydra`). Returns Hydra's ``DictConfig`` (``flags`` and ``options`` only:
    the structured schema is merged under it by the caller)."""
    from hydra import compose, initialize

    registry = flagmod.mode_flags()
    root = flagmod.root_config()
    with _lock, isolated_hydra() as store:
        store.store(name=ROOT, node=root)
        for flag in registry.values():
            store.store(group="mode", name=flag.name, node=flag.node(), package="_global_")
        with initialize(config_path=None, version_base=None):
            return compose(config_name=ROOT, overrides=[f"mode=[{','.join(flags)}]"])
