"""A local store in front of a shared one (:class:`TieredStore`)."""

from __future__ import annotations

from typing import List, Optional

from nexfort.cache.store import EntryInfo, SignedStore


class TieredStore:
    """A local store in front of a shared one: read local first, fill it from the shared store on a hit."""

    def __init__(self, local: SignedStore, remote: SignedStore) -> None:
        self.local, self.remote = local, remote
        self.name = f"{local.name}+{remote.name}"

    def describe(self) -> str:
        return f"{self.local.describe()} in front of {self.remote.describe()}"

    def get(self, key: str) -> Optional[bytes]:
        payload = self.local.get(key)
        if payload is None:
            payload = self.remote.get(key)
            if payload is not None:
                self.local.put(key, payload)
        return payload

    def put(self, key: str, payload: bytes) -> bool:
        """Store in both; ``True`` when at least one of them stored it."""
        stored_local = self.local.put(key, payload) is not False
        stored_remote = self.remote.put(key, payload) is not False
        return stored_local or stored_remote

    def delete(self, key: str) -> bool:
        a, b = self.local.delete(key), self.remote.delete(key)
        return a or b

    def entries(self) -> List[EntryInfo]:
        return self.remote.entries()

    def keys(self) -> List[str]:
        return self.remote.keys()

    def clear(self) -> int:
        self.local.clear()
        return self.remote.clear()

    def total_size(self) -> int:
        return self.remote.total_size()

    def prune(self, max_size: int) -> List[str]:
        self.local.prune(max_size)
        return self.remote.prune(max_size)
