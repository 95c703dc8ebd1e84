"""The plugin manager: one per process, loading plugins from the ``nexfort`` entry-point group."""

from __future__ import annotations

import functools
import logging
import os

import pluggy

from nexfort.core import hookspecs

logger = logging.getLogger("nexfort")

ENTRY_POINT_GROUP = "nexfort"
#: Set to a non-empty value to load no plugin from entry points (register them yourself instead).
DISABLE_AUTOLOAD_ENV = "NEXFORT_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated plugin names (entry-point names) not to load.
DISABLED_PLUGINS_ENV = "NEXFORT_DISABLED_PLUGINS"


@functools.lru_cache(maxsize=None)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the entry-point plugins loaded (unless autoload is disabled)."""
    pm = pluggy.PluginManager("nexfort")
    pm.add_hookspecs(hookspecs)
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for name in filter(None, (n.strip() for n in os.environ.get(DISABLED_PLUGINS_ENV, "").split(","))):
            pm.set_blocked(name)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    logger.debug("nexfort plugins: %s", [pm.get_name(p) for p in pm.get_plugins()])
    return pm


def plugin_names() -> list:
    """Names of the loaded plugins, in registration order."""
    pm = get_plugin_manager()
    return [pm.get_name(p) for p in pm.get_plugins()]
