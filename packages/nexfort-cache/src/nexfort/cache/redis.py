"""The ``redis`` store: entries shared between machines through one Redis server (redis-py).

Used when ``$NEXFORT_CACHE_REDIS_URL`` or ``options.cache_store.redis_url`` names a server; the local
directory stays in front of it (:class:`TieredStore`): hits are filled into the local store, writes go to
both. A shared store REQUIRES ``$NEXFORT_CACHE_SECRET`` (the same on every machine): entries of a store other
machines can write are code and pickles, and are only used when their HMAC verifies.

Layout: ``<prefix><key>`` holds the envelope; the sorted set ``<prefix>__atime__`` holds each key's last
access time, for listing and least-recently-used pruning (``python -m nexfort.cache --redis URL prune
--max-size 50G``; or let Redis evict by itself with ``maxmemory`` and ``maxmemory-policy allkeys-lru``).
An entry that fails verification is ignored with one warning, not deleted (another machine's misconfigured
secret must not wipe the shared store).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

from nexfort.cache.local import local_store
from nexfort.cache.store import EntryInfo, NexfortCacheConfigError, SignedStore, env_secret
from nexfort.core import hookimpl

URL_ENV = "NEXFORT_CACHE_REDIS_URL"
PREFIX = "nexfort:cache:v1:"
INSTALL_HINT = "pip install nexfort-cache[redis]"


def _redis_module() -> Any:
    try:
        import redis as redis_py  # the redis-py package (this module is nexfort.cache.redis)
    except ImportError as e:
        raise ImportError(f"nexfort's Redis cache store needs redis-py: {INSTALL_HINT}") from e
    return redis_py


class RedisStore(SignedStore):
    name = "redis"
    discard_invalid = False

    def __init__(self, url: str, secret: Optional[bytes] = None, prefix: str = PREFIX, client: Any = None) -> None:
        secret = secret or env_secret()
        if not secret:
            raise NexfortCacheConfigError(
                f"nexfort cache: the Redis store {url} is shared between machines, so its entries must be signed: "
                "set NEXFORT_CACHE_SECRET to the same random value on every machine that uses it "
                "(e.g. `python -c \"import secrets; print(secrets.token_hex(32))\"`).")
        self.secret = secret
        self.url = url
        self.prefix = prefix
        self.atime_key = prefix + "__atime__"
        self.client = client if client is not None else _redis_module().Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=30)

    def describe(self) -> str:
        return f"the Redis cache {self.url}"

    def _read(self, key: str) -> Optional[bytes]:
        blob = self.client.get(self.prefix + key)
        if blob is not None:
            self.client.zadd(self.atime_key, {key: time.time()})
        return blob

    def _write(self, key: str, blob: bytes) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.prefix + key, blob)
        pipe.zadd(self.atime_key, {key: time.time()})
        pipe.execute()

    def _remove(self, key: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.prefix + key)
        pipe.zrem(self.atime_key, key)
        n, _ = pipe.execute()
        return bool(n)

    def entries(self) -> List[EntryInfo]:
        pairs = self.client.zrange(self.atime_key, 0, -1, withscores=True)
        keys = [k.decode() if isinstance(k, bytes) else k for k, _ in pairs]
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(self.prefix + k)
        sizes = pipe.execute() if keys else []
        stale = [k for k, s in zip(keys, sizes) if not s]  # evicted by Redis itself (maxmemory policy)
        if stale:
            self.client.zrem(self.atime_key, *stale)
        return [EntryInfo(key=k, size=int(s), atime=float(t)) for k, (_, t), s in zip(keys, pairs, sizes) if s]

    def clear(self) -> int:
        n = 0
        atime = self.atime_key.encode()
        for name in self.client.scan_iter(match=self.prefix + "*", count=500):
            deleted = self.client.delete(name)
            n += deleted if name not in (atime, self.atime_key) else 0
        return n


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

    def put(self, key: str, payload: bytes) -> None:
        self.local.put(key, payload)
        self.remote.put(key, payload)

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


def redis_url(config: Any = None) -> Optional[str]:
    import os

    if config is not None:
        try:
            url = config.options.cache_store.redis_url
            if url:
                return str(url)
        except Exception:  # noqa: BLE001 - a config without the plugin namespace
            pass
    return os.environ.get(URL_ENV) or None


_stores: Dict[tuple, TieredStore] = {}
_lock = threading.Lock()


def tiered_store(config: Any = None, url: Optional[str] = None) -> TieredStore:
    url = url or redis_url(config)
    if not url:
        raise ValueError(f"no Redis URL: set {URL_ENV} or options.cache_store.redis_url")
    local = local_store(config)
    ident = (url, env_secret(), local.root)
    with _lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = TieredStore(local, RedisStore(url))
        return store


@hookimpl(tryfirst=True)
def nexfort_cache_store(config: Any) -> Optional[TieredStore]:
    """The shared store when a Redis URL is configured, else ``None`` (the local store answers)."""
    if not redis_url(config):
        return None
    return tiered_store(config)
