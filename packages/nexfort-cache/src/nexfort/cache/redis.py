"""The ``redis`` store: entries shared between machines through one Redis server (redis-py).

Used when ``$NEXFORT_CACHE_REDIS_URL`` or ``options.cache_store.redis_url`` names a server; the local
directory stays in front of it (:class:`TieredStore`): hits are filled into the local store, writes go to
both. A shared store REQUIRES ``$NEXFORT_CACHE_SECRET`` (the same on every machine): entries of a store other
machines can write are code and pickles, and are only used when their HMAC verifies.

Layout: ``<prefix><key>`` holds the envelope; the sorted set ``<prefix>__atime__`` holds each key's last
access time, for listing and least-recently-used pruning (``python -m nexfort.cache --redis URL prune
--max-size 50G``; or let Redis evict by itself with ``maxmemory`` and ``maxmemory-policy allkeys-lru``).
An entry that fails verification is ignored with one warning, not deleted, and never overwritten (a machine
with a wrong secret must neither wipe the shared store nor re-sign its entries: the fleet would thrash);
``counters["cache"]["signature_failures"]`` / ``["overwrites_refused"]`` count them.

Failures are bounded: the secret must be strong (:mod:`nexfort.cache.security`), the URL's scheme is checked and
its password never shown, every call has short timeouts (``$NEXFORT_CACHE_REDIS_TIMEOUT_S``, 2 s) and no retries,
and a failure marks the store down for a while (:mod:`nexfort.cache.breaker`) with one warning. A read transfers
at most the entry size limit (``GETRANGE``), whatever a key holds.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from nexfort.cache.breaker import CircuitBreaker
from nexfort.cache.local import default_dir, local_store
from nexfort.cache.security import MAKE_SECRET, check_redis_url, check_secret, redact, scrub
from nexfort.cache.store import (
    MAX_ENTRY_ENV,
    SECRET_ENV,
    BadSignature,
    EntryInfo,
    InvalidEntry,
    NexfortCacheConfigError,
    SignedStore,
    env_secret,
    format_size,
    unseal,
    warn_once,
)
from nexfort.cache.tiered import TieredStore  # noqa: F401 - re-exported
from nexfort.core.api import counters, hookimpl

URL_ENV = "NEXFORT_CACHE_REDIS_URL"
PREFIX = "nexfort:cache:v1:"
INSTALL_HINT = "pip install nexfort-cache[redis]"


def _redis_module() -> Any:
    try:
        import redis as redis_py  # the redis-py package (this module is nexfort.cache.redis)
    except ImportError as e:
        raise ImportError(f"nexfort's Redis cache store needs redis-py: {INSTALL_HINT}") from e
    return redis_py


TIMEOUT_ENV = "NEXFORT_CACHE_REDIS_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 2.0
_SIG_END = 4 + 2 + 2 + 32  # header and signature of an envelope, past its key
REDIS_MAX_VALUE = 512 * 1024**2


class RemoteDown(ConnectionError):
    """The store is skipped (its breaker is open) or just failed (and said so)."""


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _client(url: str, timeout: float) -> Any:
    redis_py = _redis_module()
    kwargs: Dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout,
                              "retry_on_timeout": False}
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs["retry"] = Retry(NoBackoff(), 0)  # redis-py 6+ retries 3 times by default: one bounded try
    except ImportError:  # pragma: no cover - old redis-py: no retries by default
        pass
    return redis_py.Redis.from_url(url, **kwargs)


class RedisStore(SignedStore):
    name = "redis"
    discard_invalid = False

    def __init__(self, url: str, secret: Optional[bytes] = None, prefix: str = PREFIX, client: Any = None,
                 timeout: Optional[float] = None) -> None:
        super().__init__()
        self.url = check_redis_url(url)
        secret = secret or env_secret()
        if not secret:
            raise NexfortCacheConfigError(
                f"nexfort cache: the Redis store {redact(url)} is shared between machines, so its entries must be "
                f"signed: set NEXFORT_CACHE_SECRET to the same random value on every machine that uses it "
                f"(at least 32 bytes; make one with: {MAKE_SECRET}).")
        self.secret = check_secret(secret)
        self.prefix = prefix
        self.atime_key = prefix + "__atime__"
        self.timeout = _timeout() if timeout is None else float(timeout)
        self.client = client if client is not None else _client(url, self.timeout)
        self.breaker = CircuitBreaker(self.describe)
        self._signatures: Dict[str, bytes] = {}  # key -> signature of the entry this process wrote or verified

    def describe(self) -> str:
        return self.describe_url(self.url)

    @staticmethod
    def describe_url(url: str) -> str:
        return f"the Redis cache {redact(url)}"

    def scrub(self, text: str) -> str:
        return scrub(text, self.url)

    def entry_limit(self) -> int:
        """Also at most Redis's default ``proto-max-bulk-len`` (512 MiB): a larger SET would drop the connection."""
        return min(super().entry_limit(), REDIS_MAX_VALUE)

    # ------------------------------------------------------------------------------ guarded calls
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.breaker.allow():
            raise RemoteDown(f"{self.describe()} is skipped after a failure (retried in at most "
                             f"{self.breaker.cooldown:g} s)")
        try:
            out = fn()
        except InvalidEntry:  # the server answered: a bad entry, not an outage
            self.breaker.success()
            raise
        except Exception as e:  # noqa: BLE001 - every failure of the server opens the breaker
            if "WRONGTYPE" in str(e):
                raise InvalidEntry("not a string value (another program's key under nexfort's prefix)") from None
            self.breaker.failure(e, what, self.scrub)
            raise RemoteDown(f"{what} {self.describe()} failed ({type(e).__name__}: {self.scrub(str(e))})") from None
        self.breaker.success()
        return out

    def read_failed(self, e: BaseException) -> None:
        if not isinstance(e, RemoteDown):
            super().read_failed(RuntimeError(self.scrub(f"{type(e).__name__}: {e}")))

    def write_failed(self, e: BaseException) -> None:
        if not isinstance(e, RemoteDown):
            super().write_failed(RuntimeError(self.scrub(f"{type(e).__name__}: {e}")))

    # ---------------------------------------------------------------------------------- raw io
    def _bounded(self, name: str) -> Optional[bytes]:
        """The value under ``name`` (``None``: absent), refused before transfer when over the entry limit."""
        limit = self.entry_limit()
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(name)
        pipe.getrange(name, 0, limit)  # at most limit + 1 bytes: one more than any entry may have
        exists, blob = pipe.execute()
        if not exists:
            return None
        if len(blob) > limit:
            raise InvalidEntry(f"larger than the entry size limit {format_size(limit)} ({MAX_ENTRY_ENV}); not read")
        return blob

    def _fetch(self, key: str) -> Optional[bytes]:
        blob = self._call("reading from", lambda: self._bounded(self.prefix + key))
        if blob is None:
            return None
        payload = unseal(blob, self.secret, key)
        self._signatures[key] = _signature(blob)
        try:
            self._call("reading from", lambda: self.client.zadd(self.atime_key, {key: time.time()}))
        except RemoteDown:
            pass  # the entry verified; its access time is only for listing
        return payload

    def _read(self, key: str) -> Optional[bytes]:
        return self._call("reading from", lambda: self._bounded(self.prefix + key))

    def _write(self, key: str, blob: bytes) -> bool:
        if key in self.unverified:
            return self._refuse(key)
        name = self.prefix + key
        head_len = _SIG_END + len(key.encode())

        def write() -> Optional[bool]:
            """``True``: written; ``False``: an entry that does not verify is there; ``None``: another machine
            wrote the key while this one checked it (its entry stays)."""
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(name)  # the entry checked below is the one replaced, or nothing is
                head = pipe.getrange(name, 0, head_len - 1)
                if head and head[-32:] != self._signatures.get(key):
                    try:
                        existing = self._bounded(name)
                        if existing is not None:
                            unseal(existing, self.secret, key)
                    except InvalidEntry as e:
                        if isinstance(e, BadSignature):
                            counters["cache"]["signature_failures"] += 1
                        return False
                pipe.multi()
                pipe.set(name, blob)
                pipe.zadd(self.atime_key, {key: time.time()})
                try:
                    pipe.execute()
                except _redis_module().WatchError:
                    return None
                return True

        written = self._call("writing to", write)
        if written is False:
            self.unverified.add(key)
            return self._refuse(key)
        if written:
            self._signatures[key] = _signature(blob)
        return True  # written, or (None) another machine's entry for the key was stored meanwhile

    def _refuse(self, key: str) -> bool:
        counters["cache"]["overwrites_refused"] += 1
        warn_once(f"no-overwrite-{self.name}", f"nexfort cache: not overwriting entry {key[:16]}... in "
                  f"{self.describe()}: the entry there does not verify with this machine's {SECRET_ENV} "
                  f"({counters['cache']['signature_failures']} signature failures, "
                  f"{counters['cache']['overwrites_refused']} overwrites refused in this process). If this "
                  "machine's secret is the wrong one, fix it; the fleet's entries are left alone.")
        return False

    def _remove(self, key: str) -> bool:
        def remove() -> bool:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.prefix + key)
            pipe.zrem(self.atime_key, key)
            n, _ = pipe.execute()
            return bool(n)

        self._signatures.pop(key, None)
        return self._call("deleting from", remove)

    def entries(self) -> List[EntryInfo]:
        def listing() -> List[EntryInfo]:
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

        return self._call("listing", listing)

    def clear(self) -> int:
        def clear() -> int:
            n = 0
            atime = self.atime_key.encode()
            for name in self.client.scan_iter(match=self.prefix + "*", count=500):
                deleted = self.client.delete(name)
                n += deleted if name not in (atime, self.atime_key) else 0
            return n

        self._signatures.clear()
        return self._call("clearing", clear)


def _signature(blob: bytes) -> bytes:
    _, _, n = struct.unpack_from(">4sHH", blob)
    return bytes(blob[8 + n:8 + n + 32])


def redis_url(config: Any = None) -> Optional[str]:
    """The configured Redis URL (``options.cache_store.redis_url``, else ``$NEXFORT_CACHE_REDIS_URL``), checked."""
    if config is not None:
        try:
            url = config.options.cache_store.redis_url
        except Exception:  # noqa: BLE001 - a config without the plugin namespace
            url = None
        if url:
            return check_redis_url(str(url), "options.cache_store.redis_url")
    url = os.environ.get(URL_ENV)
    return check_redis_url(url, URL_ENV) if url else None


_stores: Dict[tuple, Any] = {}
_lock = threading.Lock()


def tiered_store(config: Any = None, url: Optional[str] = None) -> "TieredStore | RedisStore":
    """The local store in front of Redis; Redis alone (with one warning) where the local directory cannot be
    used (read-only, not creatable): the shared entries still load."""
    url = url or redis_url(config)
    if not url:
        raise ValueError(f"no Redis URL: set {URL_ENV} or options.cache_store.redis_url")
    try:
        local: Optional[Any] = local_store(config)
    except NexfortCacheConfigError:
        raise
    except OSError as e:
        local = None
        warn_once(f"no-local-{url}", f"nexfort cache: the local cache {default_dir(config)} cannot be used "
                  f"({type(e).__name__}: {e}); using {RedisStore.describe_url(url)} alone.")
    ident = (url, env_secret(), local.root if local is not None else None)
    with _lock:
        store = _stores.get(ident)
        if store is None:
            remote = RedisStore(url)
            store = _stores[ident] = remote if local is None else TieredStore(local, remote)
        return store


@hookimpl(tryfirst=True)
def nexfort_cache_store(config: Any) -> Optional[TieredStore]:
    """The shared store when a Redis URL is configured, else ``None`` (the local store answers)."""
    if not redis_url(config):
        return None
    return tiered_store(config)
