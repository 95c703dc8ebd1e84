"""The storage contract of nexfort's cache: a small key -> bytes protocol and the signed entry envelope.

Every entry a store holds is an *envelope*::

    MAGIC (4 bytes) | format version (uint16 BE) | key length (uint16 BE) | key (utf-8) | HMAC-SHA256 (32) | payload

The HMAC covers magic, version, key and payload, so an entry cannot be altered, truncated, or moved to
another key without the signature failing. Stores check it in :meth:`SignedStore.get` *before* returning
the payload to anyone, so nothing a store returns has been unpickled or imported yet. An entry that fails
(bad signature, truncated, corrupt, another format version) is discarded with one warning and reads as a
miss: never a crash, never a wrong result.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import struct
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import List, Optional, Protocol, runtime_checkable

from nexfort.core.errors import NexfortConfigError

logger = logging.getLogger("nexfort.cache")

MAGIC = b"NXFC"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sHH")
_SIG_LEN = 32
SECRET_ENV = "NEXFORT_CACHE_SECRET"
MAX_SIZE_ENV = "NEXFORT_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 20 * 1024**3


class InvalidEntry(Exception):
    """An envelope that must not be used (the message says why)."""


class NexfortCacheConfigError(NexfortConfigError):
    """A cache configuration nexfort cannot honour safely (e.g. a shared store without a secret)."""


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

    def put(self, key: str, payload: bytes) -> None: ...

    def delete(self, key: str) -> bool: ...

    def entries(self) -> List[EntryInfo]:
        """Every entry with its size and last access time."""

    def keys(self) -> List[str]: ...

    def clear(self) -> int: ...

    def total_size(self) -> int: ...


# --------------------------------------------------------------------------------------------- envelope
def _signed_part(key: bytes, payload: bytes, version: int) -> bytes:
    return _HEADER.pack(MAGIC, version, len(key)) + key + payload


def seal(key: str, payload: bytes, secret: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Wrap ``payload`` stored under ``key`` in a signed envelope."""
    k = key.encode()
    if len(k) > 0xFFFF:
        raise ValueError("cache key too long")
    sig = hmac.new(secret, _signed_part(k, payload, version), hashlib.sha256).digest()
    return _HEADER.pack(MAGIC, version, len(k)) + k + sig + payload


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


def unseal(blob: bytes, secret: bytes, key: Optional[str] = None) -> bytes:
    """Verify an envelope and return its payload; :class:`InvalidEntry` names what is wrong."""
    if len(blob) < _HEADER.size:
        raise InvalidEntry(f"truncated entry ({len(blob)} bytes)")
    magic, version, n = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise InvalidEntry("not a nexfort cache entry (bad magic)")
    if version != FORMAT_VERSION:
        raise InvalidEntry(f"entry format version {version}, this nexfort-cache reads version {FORMAT_VERSION}")
    start = _HEADER.size + n
    if len(blob) < start + _SIG_LEN:
        raise InvalidEntry(f"truncated entry ({len(blob)} bytes)")
    k = blob[_HEADER.size:start]
    if key is not None and k != key.encode():
        raise InvalidEntry("entry was stored under another key")
    sig, payload = blob[start:start + _SIG_LEN], blob[start + _SIG_LEN:]
    expected = hmac.new(secret, _signed_part(k, payload, version), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise InvalidEntry("bad signature (tampered, truncated, or written with another secret)")
    return payload


def env_secret() -> Optional[bytes]:
    value = os.environ.get(SECRET_ENV)
    return value.encode() if value else None


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


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: "str | int") -> int:
    """``"500M"``, ``"2GiB"``, ``"1.5g"``, ``"1024"`` -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"Invalid size {text!r}: expected a number with an optional unit K, M, G or T "
                         "(e.g. 500M, 2G)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def default_max_size() -> int:
    value = os.environ.get(MAX_SIZE_ENV)
    return parse_size(value) if value else DEFAULT_MAX_SIZE


class SignedStore:
    """Base of the stores: signing on ``put`` and verification on ``get`` around raw blob storage.

    Subclasses implement ``_read(key) -> bytes | None``, ``_write(key, blob)``, ``_remove(key) -> bool``,
    ``entries()``, ``clear()``, and set :attr:`secret`. ``discard_invalid``: delete an entry that fails
    verification (a private store) or only skip it (a shared one, where another machine's secret may differ).
    """

    secret: bytes = b""
    discard_invalid = True
    name = "store"

    def get(self, key: str) -> Optional[bytes]:
        try:
            blob = self._read(key)
        except Exception as e:  # noqa: BLE001 - an unreachable store is a miss
            warn_once(f"read-{self.name}", f"nexfort cache: reading from {self.describe()} failed "
                      f"({type(e).__name__}: {e}); continuing without the cache.")
            return None
        if blob is None:
            return None
        try:
            return unseal(blob, self.secret, key)
        except InvalidEntry as e:
            self.reject(key, str(e))
            return None

    def put(self, key: str, payload: bytes) -> None:
        blob = seal(key, payload, self.secret)
        try:
            self._write(key, blob)
        except Exception as e:  # noqa: BLE001 - a cache that cannot store is not an error of the model
            warn_once(f"write-{self.name}", f"nexfort cache: writing to {self.describe()} failed "
                      f"({type(e).__name__}: {e}); continuing without storing.")

    def delete(self, key: str) -> bool:
        return self._remove(key)

    def reject(self, key: str, why: str) -> None:
        action = "discarded" if self.discard_invalid else "ignored"
        warn_once(f"bad-{self.name}-{key}", f"nexfort cache: entry {key[:16]}... in {self.describe()} {action}: "
                  f"{why}. Compiling without it.")
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

    def _write(self, key: str, blob: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def _remove(self, key: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def entries(self) -> List[EntryInfo]:  # pragma: no cover
        raise NotImplementedError

    def clear(self) -> int:  # pragma: no cover
        raise NotImplementedError



def atomic_write(path: str, data: bytes, mode: int = 0o644, prefix: str = ".tmp-", suffix: str = "",
                 fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees part of it: a temporary file in the same
    directory, then ``os.replace`` (atomic on POSIX; the last of several concurrent writers wins whole)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
