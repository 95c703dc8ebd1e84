"""The ``local`` store: one directory on this machine (the default store; nothing to start).

Layout: ``<dir>/entries/<name>.nxc`` (one signed envelope per key) and ``<dir>/secret.key``.

- Directory: ``options.cache.dir``, else ``$NEXFORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nexfort`` (by default
  ``~/.cache/nexfort``).
- Writes go to a temporary file in the same directory, then ``os.replace``: a reader sees the old entry or
  the new one, never half of one, however many processes write the same key at once.
- Signing key: ``$NEXFORT_CACHE_SECRET`` when set, else a random per-directory key in ``secret.key``, created
  once (mode 0600) with an atomic link, so concurrent first users agree on it.
- Last access is the file's mtime (touched on every hit); when the directory grows past the size limit
  (``$NEXFORT_CACHE_MAX_SIZE``, default 20 GiB) the least recently used entries are evicted.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from nexfort.cache.store import (
    EntryInfo,
    InvalidEntry,
    SignedStore,
    atomic_write,
    default_max_size,
    env_secret,
    envelope_key,
    logger,
    warn_once,
)
from nexfort.core import hookimpl

DIR_ENV = "NEXFORT_CACHE_DIR"
SUFFIX = ".nxc"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_STALE_TMP_S = 3600


def default_dir(config: Any = None) -> str:
    configured = None
    if config is not None:
        try:
            configured = config.options.cache.dir
        except Exception:  # noqa: BLE001 - a config without the cache namespace
            configured = None
    if configured:
        return os.path.abspath(os.path.expanduser(str(configured)))
    env = os.environ.get(DIR_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nexfort")


def _filename(key: str) -> str:
    if _SAFE.match(key) and not key.startswith("."):
        return "k-" + key + SUFFIX
    return "h-" + hashlib.sha256(key.encode()).hexdigest() + SUFFIX


class LocalStore(SignedStore):
    """A cache directory; see the module docstring."""

    name = "local"
    discard_invalid = True

    def __init__(self, root: Optional[str] = None, max_size: Optional[int] = None,
                 secret: Optional[bytes] = None) -> None:
        self.root = os.path.abspath(os.path.expanduser(root or default_dir()))
        self.entries_dir = os.path.join(self.root, "entries")
        self.max_size = default_max_size() if max_size is None else int(max_size)
        os.makedirs(self.entries_dir, exist_ok=True)
        self.secret = secret or env_secret() or self._dir_secret()

    def describe(self) -> str:
        return f"the local cache {self.root}"

    # ------------------------------------------------------------------------------------ secret
    def _dir_secret(self) -> bytes:
        path = os.path.join(self.root, "secret.key")
        for _ in range(3):
            try:
                with open(path, "rb") as f:
                    data = f.read()
                if len(data) >= 32:
                    if os.stat(path).st_mode & 0o077:
                        warn_once(f"secret-mode-{path}", f"nexfort cache: {path} is readable by other users; "
                                  "anyone who can read it can forge cache entries (chmod 600 it).")
                    return data
            except FileNotFoundError:
                pass
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".secret-")  # mkstemp creates it 0600
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.close(fd)
                try:
                    os.link(tmp, path)  # atomic create-if-absent: the first writer's key wins
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
        raise RuntimeError(f"nexfort cache: could not create or read the signing key {path}")

    # -------------------------------------------------------------------------------------- raw io
    def path(self, key: str) -> str:
        return os.path.join(self.entries_dir, _filename(key))

    def _read(self, key: str) -> Optional[bytes]:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        try:
            os.utime(path, None)  # last access, for LRU eviction
        except OSError:
            pass
        return blob

    def _write(self, key: str, blob: bytes) -> None:
        atomic_write(self.path(key), blob, prefix=".tmp-", suffix=SUFFIX, fsync=True)
        if self.max_size and self.total_size() > self.max_size:
            evicted = self.prune(self.max_size)
            if evicted:
                logger.info("nexfort cache: evicted %d least recently used entries from %s", len(evicted),
                            self.root)

    def _remove(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
            return True
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------------------------- listing
    def _files(self) -> List[os.DirEntry]:
        try:
            return [e for e in os.scandir(self.entries_dir) if e.name.endswith(SUFFIX)]
        except FileNotFoundError:
            return []

    def entries(self) -> List[EntryInfo]:
        out = []
        now = time.time()
        for e in self._files():
            try:
                st = e.stat()
                if e.name.startswith(".tmp-"):
                    if now - st.st_mtime > _STALE_TMP_S:  # left by a killed writer
                        os.unlink(e.path)
                    continue
                with open(e.path, "rb") as f:
                    head = f.read(4 + 2 + 2 + 0xFFFF)
                key = envelope_key(head) if e.name.startswith("h-") else e.name[2:-len(SUFFIX)]
            except (OSError, InvalidEntry):
                continue
            out.append(EntryInfo(key=key, size=st.st_size, atime=st.st_mtime))
        return out

    def total_size(self) -> int:
        total = 0
        for e in self._files():
            try:
                total += e.stat().st_size
            except OSError:
                pass
        return total

    def clear(self) -> int:
        n = 0
        for e in self._files():
            try:
                os.unlink(e.path)
                n += not e.name.startswith(".tmp-")
            except FileNotFoundError:
                pass
        return n


_stores: Dict[tuple, LocalStore] = {}
_lock = threading.Lock()


def local_store(config: Any = None) -> LocalStore:
    """The process's store for this configuration's directory (one instance per directory and secret)."""
    root = default_dir(config)
    ident = (root, env_secret(), os.environ.get("NEXFORT_CACHE_MAX_SIZE"))
    with _lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = LocalStore(root)
        return store


@hookimpl(trylast=True)
def nexfort_cache_store(config: Any) -> Optional[LocalStore]:
    return local_store(config)


@hookimpl
def nexfort_cache_dirs() -> List[str]:
    return [default_dir()]
