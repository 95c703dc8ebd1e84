"""Facts about this environment that are costly to find out (a feature probe that compiles a kernel), told
once and remembered through the plugins (``nexfort_recall_fact`` / ``nexfort_record_fact``: the cache plugin
keeps them in its store, keyed by the torch build and devices), so that a warm process skips the probe.

A recalled fact is only used if it has the expected keys and types; anything else reads as unknown and the
probe runs again. Without a config, or with no plugin answering, the probe runs (once per process: the
callers keep their own in-process result).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, Mapping, Optional

from nexfort.core.counters import counters

logger = logging.getLogger("nexfort")


def _valid(value: Any, schema: Mapping[str, type]) -> bool:
    return isinstance(value, dict) and set(value) == set(schema) and all(
        type(value[k]) is t for k, t in schema.items())


def remembered(name: str, schema: Mapping[str, type], probe: Callable[[], Optional[Dict[str, Any]]],
               config: Any = None) -> Optional[Dict[str, Any]]:
    """The fact ``name`` (a dict matching ``schema``: key -> exact type): recalled through the plugins for
    ``config``, else ``probe()`` (``None``: cannot be told here, not recorded) and recorded."""
    pm = None
    if config is not None:
        from nexfort.core.plugins import get_plugin_manager

        pm = get_plugin_manager()
        try:
            text = pm.hook.nexfort_recall_fact(name=name, config=config)
            value = json.loads(text) if text is not None else None
        except Exception as e:  # noqa: BLE001 - an unreadable fact is an unknown one
            logger.info("nexfort: fact %r unreadable (%s: %s); probing again", name, type(e).__name__, e)
            value = None
        if _valid(value, schema):
            counters["facts"]["recalled"] += 1
            return value
    value = probe()
    counters["facts"]["probed"] += 1
    if value is not None and pm is not None and _valid(value, schema):
        pm.hook.nexfort_record_fact(name=name, value=json.dumps(value, sort_keys=True), config=config)
    return value
