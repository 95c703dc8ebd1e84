"""File helpers of the cache: atomic writes, private directories, bounded reads of regular files only."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import BinaryIO, Optional, Tuple

TMP_PREFIX = ".tmp-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def umask() -> int:
    """The process's umask (from /proc where it is, so no other thread sees it change)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: str, data: bytes, mode: Optional[int] = None, prefix: str = TMP_PREFIX, suffix: str = "",
                 fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees part of it: a temporary file in the same
    directory, then ``os.replace`` (atomic on POSIX; the last of several concurrent writers wins whole).

    ``mode``: the file's permissions (e.g. 0o600 for a private entry); ``None``: 0o644 as the umask allows."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, (0o644 & ~umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def private_dir(path: str) -> None:
    """Create ``path`` (and its missing parents) with the leaf private to this user (0700, whatever the umask)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; 0700 is never wider than asked


def open_regular(path: str) -> Optional[Tuple[BinaryIO, int]]:
    """``(file, size)`` for a regular file (not following a symlink), ``None`` when absent; ``ValueError`` for a
    FIFO, device, directory or symlink (opened without blocking, so a FIFO never hangs the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise ValueError("a symbolic link, not a cache entry") from None
        raise e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    return os.fdopen(fd, "rb"), st.st_size


def is_regular(entry: "os.DirEntry") -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False
