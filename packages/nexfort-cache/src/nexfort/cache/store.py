"""The storage contract of nexfort's cache: a small key -> bytes protocol and the signed entry envelope.

Every entry a store holds is an *envelope*::

    MAGIC (4 bytes) | format version (uint16 BE) | key length (uint16 BE) | key (utf-8) | HMAC-SHA256 (32) | payload

The HMAC covers magic, version, key and payload, so an entry cannot be altered, truncated, or moved to
another key without the signature failing. Stores check it in :meth:`SignedStore.get` *before* returning
the payload to anyone, so nothing a store returns has been unpickled or imported yet. An entry that fails
(bad signature, truncated, corrupt, another format version) is discarded with one warning and reads as a
miss: never a crash, never a wrong result.

The secret is checked (:func:`nexfort.cache.security.check_secret`: 32+ bytes, not guessable). What a read may
allocate before verification is bounded: an envelope over the entry size limit (``$NEXFORT_CACHE_MAX_ENTRY_SIZE``,
1 GiB, and the store's size limit) is refused before it is read, and files are verified as they are read
(:func:`unseal_stream`). ``put`` returns ``False`` when nothing was stored (a full disk, an entry over the limit).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Protocol, Set, Tuple, runtime_checkable

from nexfort.cache.fsio import atomic_write  # noqa: F401 - re-exported (nexfort.cache.bundle, older imports)
from nexfort.cache.security import NexfortCacheConfigError, check_secret  # noqa: F401 - re-exported
from nexfort.cache.sizes import format_size, parse_size  # noqa: F401 - re-exported
from nexfort.core.api import counters

logger = logging.getLogger("nexfort.cache")

MAGIC = b"NXFC"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sHH")
_SIG_LEN = 32
SECRET_ENV = "NEXFORT_CACHE_SECRET"
MAX_SIZE_ENV = "NEXFORT_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 20 * 1024**3
MAX_ENTRY_ENV = "NEXFORT_CACHE_MAX_ENTRY_SIZE"
DEFAULT_MAX_ENTRY = 1024**3  # no compiled graph's entry comes near; bounds what one read may allocate


class InvalidEntry(Exception):
    """An envelope that must not be used (the message says why)."""


class BadSignature(InvalidEntry):
    """An envelope whose HMAC does not verify with this machine's secret."""


@dataclass(frozen=True)
class EntryInfo:
    """One stored entry: its key, its size in bytes and when it was last read or written (epoch seconds)."""

    key: str
    size: int
    atime: float


@runtime_checkable
class CacheStore(Protocol):
    """What nexfort's cache needs from a storage backend (what ``nexfort_cache_store`` returns).

    ``get`` returns a *verified* payload or ``None`` (miss, or an entry that failed verification); ``put``
    signs and stores atomically. Implementations never raise on a bad entry or an unreachable backend
    during ``get``/``put``: they warn and behave as a miss.
    """

    def get(self, key: str) -> Optional[bytes]: ...

    def put(self, key: str, payload: bytes) -> Optional[bool]:
        """``False`` when nothing was stored (a failed write, an entry over the size limit)."""

    def delete(self, key: str) -> bool: ...

    def entries(self) -> List[EntryInfo]:
        """Every entry with its size and last access time."""

    def keys(self) -> List[str]: ...

    def clear(self) -> int: ...

    def total_size(self) -> int: ...


# --------------------------------------------------------------------------------------------- envelope
def _mac(secret: bytes, header: bytes, key: bytes, payload: "bytes | memoryview") -> bytes:
    mac = hmac.new(secret, header, hashlib.sha256)
    mac.update(key)
    mac.update(payload)
    return mac.digest()


def seal(key: str, payload: bytes, secret: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Wrap ``payload`` stored under ``key`` in a signed envelope."""
    k = key.encode()
    if len(k) > 0xFFFF:
        raise ValueError("cache key too long")
    header = _HEADER.pack(MAGIC, version, len(k))
    return header + k + _mac(secret, header, k, payload) + payload


def envelope_key(blob: bytes) -> str:
    """The key named in an envelope's header (unverified: for listing only)."""
    if len(blob) < _HEADER.size or blob[:4] != MAGIC:
        raise InvalidEntry("not a nexfort cache entry (bad magic)")
    _, _, n = _HEADER.unpack_from(blob)
    if len(blob) < _HEADER.size + n:
        raise InvalidEntry("truncated entry")
    try:
        return blob[_HEADER.size:_HEADER.size + n].decode()
    except UnicodeDecodeError:
        raise InvalidEntry("corrupt key in entry header") from None


def _check_header(header: bytes, size: int) -> int:
    """The key length of a valid envelope header; :class:`InvalidEntry` otherwise."""
    if len(header) < _HEADER.size:
        raise InvalidEntry(f"truncated entry ({size} bytes)")
    magic, version, n = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise InvalidEntry("not a nexfort cache entry (bad magic)")
    if version != FORMAT_VERSION:
        raise InvalidEntry(f"entry format version {version}, this nexfort-cache reads version {FORMAT_VERSION}")
    if size < _HEADER.size + n + _SIG_LEN:
        raise InvalidEntry(f"truncated entry ({size} bytes)")
    return n


def _verify(secret: bytes, header: bytes, k: bytes, sig: bytes, payload: "bytes | memoryview",
            key: Optional[str]) -> None:
    if key is not None and k != key.encode():
        raise InvalidEntry("entry was stored under another key")
    if not hmac.compare_digest(sig, _mac(secret, header, k, payload)):
        raise BadSignature("bad signature (tampered, truncated, or written with another secret)")


def unseal(blob: bytes, secret: bytes, key: Optional[str] = None) -> bytes:
    """Verify an envelope and return its payload; :class:`InvalidEntry` names what is wrong."""
    view = memoryview(blob)
    n = _check_header(bytes(view[:_HEADER.size]), len(blob))
    start = _HEADER.size + n
    payload = view[start + _SIG_LEN:]
    _verify(secret, bytes(view[:_HEADER.size]), bytes(view[_HEADER.size:start]), bytes(view[start:start + _SIG_LEN]),
            payload, key)
    return bytes(payload)


def unseal_stream(f: BinaryIO, size: int, secret: bytes, key: Optional[str] = None,
                  limit: Optional[int] = None) -> bytes:
    """:func:`unseal` of the ``size`` bytes an open file holds, read once (the payload is the only copy held);
    an envelope larger than ``limit`` is refused before anything but its header is read."""
    return read_envelope(f, size, secret, limit, key)[1]


def read_envelope(f: BinaryIO, size: int, secret: bytes, limit: Optional[int] = None,
                  key: Optional[str] = None) -> Tuple[str, bytes]:
    """``(key, payload)`` of the verified envelope in ``f`` (see :func:`unseal_stream`)."""
    if limit is not None and size > limit:
        raise InvalidEntry(f"entry of {format_size(size)} is larger than the entry size limit "
                           f"{format_size(limit)} ({MAX_ENTRY_ENV})")
    header = f.read(_HEADER.size)
    n = _check_header(header, size)
    k, sig = f.read(n), f.read(_SIG_LEN)
    payload = f.read(size - _HEADER.size - n - _SIG_LEN)
    if len(k) != n or len(sig) != _SIG_LEN or len(header) + n + _SIG_LEN + len(payload) != size or f.read(1):
        raise InvalidEntry("entry changed size while being read")
    _verify(secret, header, k, sig, payload, key)
    try:
        return k.decode(), payload
    except UnicodeDecodeError:  # pragma: no cover - signed keys are utf-8
        raise InvalidEntry("corrupt key in entry header") from None


def env_secret() -> Optional[bytes]:
    """``$NEXFORT_CACHE_SECRET``, checked (:func:`nexfort.cache.security.check_secret`), or ``None``."""
    value = os.environ.get(SECRET_ENV)
    return check_secret(value.encode()) if value else None


# ---------------------------------------------------------------------------------------------- helpers
_warned: set = set()
_warn_lock = threading.Lock()


def warn_once(tag: str, message: str) -> None:
    """One warning per ``tag`` per process (a bad entry warns once, however often it is read)."""
    with _warn_lock:
        if tag in _warned:
            return
        _warned.add(tag)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def default_max_size() -> int:
    value = os.environ.get(MAX_SIZE_ENV)
    return parse_size(value) if value else DEFAULT_MAX_SIZE


def max_entry_size() -> int:
    value = os.environ.get(MAX_ENTRY_ENV)
    return parse_size(value) if value else DEFAULT_MAX_ENTRY


class SignedStore:
    """Base of the stores: signing on ``put`` and verification on ``get`` around raw blob storage.

    Subclasses implement ``_read(key) -> bytes | None`` (or ``_fetch``: read and verify; both bounded by
    :meth:`entry_limit`, raising :class:`InvalidEntry` for what cannot be an entry), ``_write(key, blob)``
    (returning ``False`` when it refused), ``_remove(key) -> bool``, ``entries()``, ``clear()``, and set
    :attr:`secret`. ``discard_invalid``: delete an entry that fails verification (a private store) or only skip
    it (a shared one, where another machine's secret may differ: then it is never overwritten either, see
    :attr:`unverified`).
    """

    secret: bytes = b""
    discard_invalid = True
    name = "store"
    max_size: int = 0

    def __init__(self) -> None:
        self.unverified: Set[str] = set()  # keys whose entry failed verification in this process

    def entry_limit(self) -> int:
        """The largest envelope this store reads or writes: the entry limit, and the store's size limit."""
        limit = max_entry_size()
        return min(limit, self.max_size) if self.max_size else limit

    def get(self, key: str) -> Optional[bytes]:
        try:
            payload = self._fetch(key)
            if payload is None:
                return None
        except InvalidEntry as e:
            self.reject(key, e)
            return None
        except Exception as e:  # noqa: BLE001 - an unreachable store is a miss
            self.read_failed(e)
            return None
        self.unverified.discard(key)
        return payload

    def _fetch(self, key: str) -> Optional[bytes]:
        """The verified payload under ``key`` (``None``: absent); a store that can stream overrides this."""
        blob = self._read(key)
        return None if blob is None else unseal(blob, self.secret, key)

    def put(self, key: str, payload: bytes) -> bool:
        """Sign and store; ``False`` (with one warning) when nothing was stored."""
        blob = seal(key, payload, self.secret)
        if len(blob) > self.entry_limit():
            counters["cache"]["too_large"] += 1
            warn_once(f"too-large-{self.name}", f"nexfort cache: not storing an entry of {format_size(len(blob))} "
                      f"in {self.describe()}: it is larger than the limit of {format_size(self.entry_limit())} "
                      f"({MAX_ENTRY_ENV}, {MAX_SIZE_ENV}); the other entries are kept.")
            return False
        try:
            return self._write(key, blob) is not False
        except Exception as e:  # noqa: BLE001 - a cache that cannot store is not an error of the model
            counters["cache"]["write_errors"] += 1
            self.write_failed(e)
            return False

    def read_failed(self, e: BaseException) -> None:
        warn_once(f"read-{self.name}", f"nexfort cache: reading from {self.describe()} failed "
                  f"({type(e).__name__}: {e}); continuing without the cache.")

    def write_failed(self, e: BaseException) -> None:
        warn_once(f"write-{self.name}", f"nexfort cache: writing to {self.describe()} failed "
                  f"({type(e).__name__}: {e}); continuing without storing.")

    def delete(self, key: str) -> bool:
        return self._remove(key)

    def reject(self, key: str, why: "InvalidEntry | str") -> None:
        action = "discarded" if self.discard_invalid else "ignored (and never overwritten)"
        hint = ""
        if isinstance(why, BadSignature):
            counters["cache"]["signature_failures"] += 1
            hint = (f" ({counters['cache']['signature_failures']} signature failures in this process: check that "
                    f"every machine sharing this store has the same {SECRET_ENV})")
        if not self.discard_invalid:
            self.unverified.add(key)
        warn_once(f"bad-{self.name}-{key}", f"nexfort cache: entry {key[:16]}... in {self.describe()} {action}: "
                  f"{why}{hint}. Compiling without it.")
        if self.discard_invalid:
            try:
                self._remove(key)
            except Exception:  # noqa: BLE001
                logger.debug("removing a bad entry failed", exc_info=True)

    def keys(self) -> List[str]:
        return [e.key for e in self.entries()]

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())

    def prune(self, max_size: int) -> List[str]:
        """Evict least-recently-used entries until the total is at most ``max_size``; return evicted keys."""
        entries = sorted(self.entries(), key=lambda e: e.atime)
        total = sum(e.size for e in entries)
        evicted = []
        for e in entries:
            if total <= max_size:
                break
            if self._remove(e.key):
                evicted.append(e.key)
            total -= e.size
        return evicted

    def describe(self) -> str:
        return self.name

    # subclasses
    def _read(self, key: str) -> Optional[bytes]:  # pragma: no cover
        raise NotImplementedError

    def _write(self, key: str, blob: bytes) -> Optional[bool]:  # pragma: no cover
        raise NotImplementedError

    def _remove(self, key: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def entries(self) -> List[EntryInfo]:  # pragma: no cover
        raise NotImplementedError

    def clear(self) -> int:  # pragma: no cover
        raise NotImplementedError

