"""nexfort-cache: nexfort's compiled-artifact cache and its stores (a local directory, Redis).

``python -m nexfort.cache --help`` lists the commands (stats, list, clear, prune, export, import).
"""

from __future__ import annotations

from nexfort.cache.store import (
    CacheStore,
    EntryInfo,
    InvalidEntry,
    NexfortCacheConfigError,
    parse_size,
    seal,
    unseal,
)

__all__ = ["CacheStore", "EntryInfo", "InvalidEntry", "NexfortCacheConfigError", "parse_size", "seal", "unseal"]
__version__ = "0.1.0"
