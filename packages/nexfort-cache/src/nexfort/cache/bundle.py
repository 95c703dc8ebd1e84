"""The payload of a compiled-graph entry: torch's artifact bundle plus the CPU kernels it does not carry.

``torch.compiler.save_cache_artifacts`` bundles Inductor's compiled graphs (with their Triton kernels on GPU),
AOTAutograd entries and autotuning results, but not the shared objects of C++ (CPU) kernels: a fresh
``TORCHINDUCTOR_CACHE_DIR`` recompiles each of them with the C++ compiler. Inductor names those files by a hash
of their source and compile command (the same in every cache directory), so nexfort ships the ones built while
a graph compiled and writes them back under the same names before Inductor looks for them.

Format (no pickle): ``b"NXB1" | u64 len | torch bundle | u32 n | n x (u16 len | relative path | u64 len | data)``.
Callers only parse payloads whose signature verified; the parser still bounds-checks everything and accepts
only plain relative paths of the shape Inductor uses (``ab/cab...so``), and ``triton/<hash>/<file>`` for the
Triton kernels compiled after the graph compiled (:mod:`nexfort.cache.triton_kernels`).
"""

from __future__ import annotations

import os
import re
import struct
import time
from typing import Dict, List, Tuple

from nexfort.cache import triton_kernels
from nexfort.cache.fsio import atomic_write, umask

MAGIC = b"NXB1"
_PATH = re.compile(r"^[a-z0-9]{2}/[A-Za-z0-9_]+(\.main)?\.(so|cpp|h)$")
_KERNEL_SUFFIXES = (".so", ".cpp")
MAX_KERNEL_FILES = 16384


class BundleError(ValueError):
    pass


def pack(torch_bundle: bytes, files: Dict[str, bytes]) -> bytes:
    parts = [MAGIC, struct.pack(">Q", len(torch_bundle)), torch_bundle, struct.pack(">I", len(files))]
    for rel, data in sorted(files.items()):
        name = rel.encode()
        parts += [struct.pack(">H", len(name)), name, struct.pack(">Q", len(data)), data]
    return b"".join(parts)


def unpack(payload: bytes) -> Tuple[bytes, Dict[str, bytes]]:
    view = memoryview(payload)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise BundleError("truncated bundle")
        out = bytes(view[pos:pos + n])
        pos += n
        return out

    if take(4) != MAGIC:
        raise BundleError("not a nexfort artifact bundle")
    (n,) = struct.unpack(">Q", take(8))
    torch_bundle = take(n)
    (count,) = struct.unpack(">I", take(4))
    if count > MAX_KERNEL_FILES:
        raise BundleError(f"bundle names {count} files")
    files: Dict[str, bytes] = {}
    for _ in range(count):
        (ln,) = struct.unpack(">H", take(2))
        rel = take(ln).decode()
        if not (_PATH.match(rel) or triton_kernels.PATH.match(rel)):
            raise BundleError(f"bundle names an unexpected path {rel!r}")
        (size,) = struct.unpack(">Q", take(8))
        files[rel] = take(size)
    if pos != len(view):
        raise BundleError("trailing data after bundle")
    return torch_bundle, files


def kernel_files_since(root: str, since: float) -> Dict[str, bytes]:
    """C++ kernel sources and shared objects under ``root`` written at or after ``since``."""
    out: Dict[str, bytes] = {}
    try:
        subdirs = [e for e in os.scandir(root) if e.is_dir() and len(e.name) == 2]
    except FileNotFoundError:
        return out
    for d in subdirs:
        try:
            files = list(os.scandir(d.path))
        except OSError:
            continue
        for f in files:
            rel = f"{d.name}/{f.name}"
            if not f.name.endswith(_KERNEL_SUFFIXES) or not _PATH.match(rel):
                continue
            try:
                if f.stat().st_mtime < since:
                    continue
                with open(f.path, "rb") as fh:
                    out[rel] = fh.read()
            except OSError:
                continue
            if len(out) >= MAX_KERNEL_FILES:
                return out
    return out


def install_kernel_files(root: str, files: Dict[str, bytes]) -> List[str]:
    """Write ``files`` under ``root`` where absent (atomically); return the paths written."""
    written = []
    for rel, data in files.items():
        if not _PATH.match(rel):
            continue
        path = os.path.join(root, *rel.split("/"))
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = (0o755 if rel.endswith(".so") else 0o644) & ~umask()  # as Inductor's own files: the umask holds
        atomic_write(path, data, mode=mode, prefix=".nexfort-tmp-")
        written.append(rel)
    return written


def now() -> float:
    """A timestamp safely before any file written from now on (coarse file systems round mtimes down)."""
    return time.time() - 2.0

