"""nexfort core: the backend, the configuration and the plugin system."""

from __future__ import annotations

import pluggy

#: Decorator for plugin hook implementations (``@hookimpl def nexfort_graph_passes(config): ...``).
hookimpl = pluggy.HookimplMarker("nexfort")

from nexfort.core.counters import counters  # noqa: E402
from nexfort.core.errors import NexfortConfigError  # noqa: E402
from nexfort.core.graph_pass import GraphPass  # noqa: E402
from nexfort.core.plugins import get_plugin_manager  # noqa: E402

__all__ = ["hookimpl", "counters", "NexfortConfigError", "GraphPass", "get_plugin_manager"]
__version__ = "0.1.0"
