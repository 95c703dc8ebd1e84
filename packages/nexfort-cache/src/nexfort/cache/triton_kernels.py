"""Triton kernels compiled at run time, shipped with a graph's entry so a warm process loads instead of compiling.

Inductor's own bundle (``TritonBundler``, inside ``save_cache_artifacts``) carries the Triton kernels compiled
while a graph compiles. Kernels compiled later are not in it: on its first call a graph's kernels tune (coordinate
descent, occupancy-driven block halving) and compile the configs they pick. A warm process that reads those picks
from the autotune cache must then compile them from source (measured on an H100, PixArt-alpha 1024x1024,
torch 2.11: ~40 kernels, 10-15 s of the warm first image). nexfort therefore adds, when it stores an entry again
after the graph's first call, the Triton cache directories written since the compile-time save, and writes them
back into the warm process's Triton cache before Inductor looks for them: only the directories of the kernels that
tuning chose (:func:`nexfort.core.api.tuned_kernel_dirs`), not every candidate it compiled.

A Triton cache directory is ``<triton cache>/<hash>/`` with the kernel's files and a ``__grp__<name>.json`` that
lists them by absolute path. Paths travel as ``triton/<hash>/<file>``; the group file's paths are rewritten to a
placeholder on the way out and to the local directory on the way in (as ``TritonBundler`` does). A directory is
written to a temporary name and renamed, so Triton never sees half of one; an existing directory is left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from typing import AbstractSet, Dict, List, Optional

PREFIX = "triton/"
PATH = re.compile(r"^triton/([A-Za-z0-9]{32,128})/([A-Za-z0-9_][A-Za-z0-9_.\-]{0,250})$")
_HASH = re.compile(r"^[A-Za-z0-9]{32,128}$")
PLACEHOLDER = "[NEXFORT_TRITON_DIR]"
GROUP = "__grp__"


def cache_dir() -> Optional[str]:
    """The Triton cache directory Inductor compiles into in this process (None where there is no Triton)."""
    env = os.environ.get("TRITON_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    try:
        import torch
        from torch._inductor.runtime.cache_dir_utils import triton_cache_dir
    except ImportError:  # torch before 2.3, or no Inductor runtime
        return None
    device = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return os.path.abspath(triton_cache_dir(device))


def _group_out(data: bytes, directory: str, names: set) -> Optional[bytes]:
    """A group file with its paths made relative (None if it names a file outside its directory)."""
    try:
        group = json.loads(data)
        paths = group["child_paths"]
        out = {}
        for child, path in paths.items():
            if os.path.dirname(path) != directory or os.path.basename(path) not in names:
                return None
            out[child] = f"{PLACEHOLDER}/{os.path.basename(path)}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return json.dumps({"child_paths": out}).encode()


def _group_in(data: bytes, directory: str, names: set) -> Optional[bytes]:
    try:
        paths = json.loads(data)["child_paths"]
        out = {}
        for child, path in paths.items():
            head, _, name = path.partition("/")
            if head != PLACEHOLDER or name not in names:
                return None
            out[child] = os.path.join(directory, name)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return json.dumps({"child_paths": out}).encode()


def files_since(root: Optional[str], since: float, limit: int,
                only: Optional[AbstractSet[str]] = None) -> Dict[str, bytes]:
    """The Triton cache directories under ``root`` whose group file was written at or after ``since`` (and whose
    name is in ``only``, where given)."""
    out: Dict[str, bytes] = {}
    if not root:
        return out
    try:
        dirs = [e for e in os.scandir(root)
                if e.is_dir() and _HASH.match(e.name) and (only is None or e.name in only)]
    except OSError:
        return out
    for d in dirs:
        try:
            entries = [f for f in os.scandir(d.path) if f.is_file()]
            if not any(f.name.startswith(GROUP) and f.stat().st_mtime >= since for f in entries):
                continue
            names = {f.name for f in entries}
            files = {}
            for f in entries:
                rel = f"{PREFIX}{d.name}/{f.name}"
                if not PATH.match(rel):
                    break
                with open(f.path, "rb") as fh:
                    data = fh.read()
                if f.name.startswith(GROUP) and (data := _group_out(data, d.path, names)) is None:
                    break
                files[rel] = data
            else:
                if len(out) + len(files) > limit:
                    return out
                out.update(files)
        except OSError:
            continue
    return out


def install(root: Optional[str], files: Dict[str, bytes]) -> List[str]:
    """Write the ``triton/`` entries of ``files`` under ``root``, a directory at a time; the directories written."""
    by_dir: Dict[str, Dict[str, bytes]] = {}
    for rel, data in files.items():
        m = PATH.match(rel)
        if m:
            by_dir.setdefault(m.group(1), {})[m.group(2)] = data
    if not root or not by_dir:
        return []
    written = []
    for name, content in by_dir.items():
        final = os.path.join(root, name)
        if os.path.isdir(final) and os.listdir(final):
            continue
        names = set(content)
        groups = {f: _group_in(d, final, names) for f, d in content.items() if f.startswith(GROUP)}
        if not groups or any(v is None for v in groups.values()):
            continue  # no group file, or one naming files it does not ship: Triton could not use it
        tmp = os.path.join(root, f"tmp.nexfort.{uuid.uuid4().hex}")
        try:
            os.makedirs(tmp)
            for f, data in content.items():
                with open(os.path.join(tmp, f), "wb") as fh:
                    fh.write(groups.get(f, data))
            os.replace(tmp, final)
            written.append(name)
        except OSError:  # another process wrote it first, or the disk refused: Triton compiles instead
            shutil.rmtree(tmp, ignore_errors=True)
    return written
