"""The ``local`` store: one directory on this machine (the default store; nothing to start).

Layout: ``<dir>/entries/<name>.nxc`` (one signed envelope per key) and ``<dir>/secret.key``.

- Directory: ``options.cache.dir``, else ``$NEXFORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nexfort`` (by default
  ``~/.cache/nexfort``).
- The directory and ``entries/`` are created private (0700, whatever the umask); entries are written 0600.
- Writes go to a temporary file in the same directory, then ``os.replace``: a reader sees the old entry or
  the new one, never half of one, however many processes write the same key at once. Temporary files left by a
  killed writer are removed when a store opens the directory (and on prune/clear) once they are 10 minutes old,
  and never count toward the size.
- Signing key: ``$NEXFORT_CACHE_SECRET`` when set, else a random per-directory key in ``secret.key``, created
  once (mode 0600) with an atomic link, so concurrent first users agree on it. A ``secret.key`` owned by another
  user, or readable or writable by others, is refused with an error that says what to do (whoever can write it
  can forge entries that run code).
- Reads open regular files only, without blocking (a FIFO in ``entries/`` never hangs ``get``/``list``/
  ``prune``), and refuse an entry over the size limit before reading it.
- Last access is the file's mtime (touched on every hit); when the directory grows past the size limit
  (``$NEXFORT_CACHE_MAX_SIZE``, default 20 GiB) the least recently used entries are evicted.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from nexfort.cache.fsio import TMP_PREFIX, atomic_write, is_regular, open_regular, private_dir
from nexfort.cache.security import check_secret
from nexfort.cache.store import (
    EntryInfo,
    InvalidEntry,
    NexfortCacheConfigError,
    SignedStore,
    default_max_size,
    env_secret,
    envelope_key,
    logger,
    unseal_stream,
)
from nexfort.core.api import hookimpl

DIR_ENV = "NEXFORT_CACHE_DIR"
SUFFIX = ".nxc"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
STALE_TMP_S = 600  # a temporary file untouched this long belongs to a killed writer


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
        super().__init__()
        self.root = os.path.abspath(os.path.expanduser(root or default_dir()))
        self.entries_dir = os.path.join(self.root, "entries")
        self.max_size = default_max_size() if max_size is None else int(max_size)
        private_dir(self.root)
        private_dir(self.entries_dir)
        self.secret = secret or env_secret() or self._dir_secret()
        self.clean_stale_temporaries()

    def describe(self) -> str:
        return f"the local cache {self.root}"

    # ------------------------------------------------------------------------------------ secret
    def _dir_secret(self) -> bytes:
        path = os.path.join(self.root, "secret.key")
        for _ in range(3):
            data = _read_key_file(path)
            if data is not None and len(data) >= 32:
                return check_secret(data, f"the signing key {path} (delete it to get a random one)")
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
        raise NexfortCacheConfigError(f"nexfort cache: could not create or read the signing key {path} (it is "
                                      "shorter than 32 bytes): delete it, or set NEXFORT_CACHE_SECRET.")

    # -------------------------------------------------------------------------------------- raw io
    def path(self, key: str) -> str:
        return os.path.join(self.entries_dir, _filename(key))

    def _fetch(self, key: str) -> Optional[bytes]:
        path = self.path(key)
        try:
            opened = open_regular(path)
        except ValueError as e:
            raise InvalidEntry(str(e)) from None
        if opened is None:
            return None
        f, size = opened
        with f:
            payload = unseal_stream(f, size, self.secret, key, limit=self.entry_limit())
        try:
            os.utime(path, None)  # last access, for LRU eviction
        except OSError:
            pass
        return payload

    def _write(self, key: str, blob: bytes) -> bool:
        atomic_write(self.path(key), blob, mode=0o600, prefix=TMP_PREFIX, fsync=True)
        if self.max_size and self.total_size() > self.max_size:
            evicted = self.prune(self.max_size)
            if evicted:
                logger.info("nexfort cache: evicted %d least recently used entries from %s", len(evicted),
                            self.root)
        return True

    def _remove(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
            return True
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------------------------- listing
    def _files(self) -> List[os.DirEntry]:
        """The entry files (regular files only: a FIFO or device in ``entries/`` is never opened)."""
        try:
            return [e for e in os.scandir(self.entries_dir)
                    if e.name.endswith(SUFFIX) and not e.name.startswith(".") and is_regular(e)]
        except FileNotFoundError:
            return []

    def clean_stale_temporaries(self, max_age: float = STALE_TMP_S) -> int:
        """Remove the temporary files of writers that were killed (older than ``max_age``); how many."""
        n, now = 0, time.time()
        for d, prefix in ((self.entries_dir, TMP_PREFIX), (self.root, ".secret-")):
            try:
                found = [e for e in os.scandir(d) if e.name.startswith(prefix) and is_regular(e)]
            except OSError:
                continue
            for e in found:
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(e.path)
                        n += 1
                except OSError:
                    pass
        return n

    def entries(self) -> List[EntryInfo]:
        out = []
        for e in self._files():
            try:
                st = e.stat(follow_symlinks=False)
                if e.name.startswith("h-"):
                    opened = open_regular(e.path)
                    if opened is None:
                        continue
                    with opened[0] as f:
                        key = envelope_key(f.read(4 + 2 + 2 + 0xFFFF))
                else:
                    key = e.name[2:-len(SUFFIX)]
            except (OSError, ValueError, InvalidEntry):
                continue
            out.append(EntryInfo(key=key, size=st.st_size, atime=st.st_mtime))
        return out

    def total_size(self) -> int:
        total = 0
        for e in self._files():
            try:
                total += e.stat(follow_symlinks=False).st_size
            except OSError:
                pass
        return total

    def prune(self, max_size: int) -> List[str]:
        self.clean_stale_temporaries()
        return super().prune(max_size)

    def clear(self) -> int:
        n = 0
        for e in self._files():
            try:
                os.unlink(e.path)
                n += 1
            except FileNotFoundError:
                pass
        self.clean_stale_temporaries()
        return n


def _read_key_file(path: str) -> Optional[bytes]:
    """The directory key, or ``None`` where there is none; :class:`NexfortCacheConfigError` for a key this user
    must not trust (another owner, writable by others) or must not keep (readable by others)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise NexfortCacheConfigError(f"nexfort cache: cannot open the signing key {path} ({e}); it must be a "
                                      "regular file of this user, mode 0600 (delete it to get a new one, or set "
                                      "NEXFORT_CACHE_SECRET).") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        fix = ("delete it (a new one is made) and the entries signed with it, or set NEXFORT_CACHE_SECRET; "
               f"a key of your own must be mode 0600 (chmod 600 {path})")
        if not stat.S_ISREG(st.st_mode):
            raise NexfortCacheConfigError(f"nexfort cache: the signing key {path} is not a regular file; {fix}.")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise NexfortCacheConfigError(
                f"nexfort cache: the signing key {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
                f"whoever wrote it can forge entries that run code in your process; {fix}.")
        if st.st_mode & 0o077:
            raise NexfortCacheConfigError(
                f"nexfort cache: the signing key {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users can "
                f"read or change it, and forge entries that run code in your process; {fix}.")
        return f.read(4096)


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
