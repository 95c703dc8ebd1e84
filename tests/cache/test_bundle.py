"""nexfort.cache.bundle: the entry payload (torch's bundle plus C++ kernel files). Its parser bounds-checks
everything and takes only Inductor-shaped relative paths; kernel files are collected by time and written back
only where absent, with Inductor's permissions."""

from __future__ import annotations

import os
import stat
import struct
import time

import pytest

from nexfort.cache import bundle

SO, CPP = "ab/cabcdef.so", "ab/cabcdef.cpp"


def test_pack_is_deterministic_and_round_trips():
    files = {SO: b"\x7fELF", CPP: b"int x;", "cd/cmain.main.cpp": b""}
    packed = bundle.pack(b"torch", files)
    assert packed == bundle.pack(b"torch", dict(reversed(list(files.items()))))  # sorted: same bytes
    assert packed.startswith(bundle.MAGIC)
    assert bundle.unpack(packed) == (b"torch", files)
    assert bundle.unpack(bundle.pack(b"", {})) == (b"", {})


@pytest.mark.parametrize("mangle, message", [
    (lambda p: b"NXB0" + p[4:], "not a nexfort artifact bundle"),
    (lambda p: p + b"x", "trailing data"),
    (lambda p: p[:-1], "truncated"),
    (lambda p: p[:4] + struct.pack(">Q", 10**9) + p[12:], "truncated"),  # a length beyond the payload
])
def test_malformed_payloads_are_refused(mangle, message):
    with pytest.raises(bundle.BundleError, match=message):
        bundle.unpack(mangle(bundle.pack(b"torch", {SO: b"so"})))


def test_too_many_files_are_refused_before_reading_them():
    head = bundle.MAGIC + struct.pack(">Q", 0) + struct.pack(">I", bundle.MAX_KERNEL_FILES + 1)
    with pytest.raises(bundle.BundleError, match="names 16385 files"):
        bundle.unpack(head)


@pytest.mark.parametrize("path", ["../x.so", "/abs/cx.so", "ab/../../cx.so", "abc/cx.so", "ab/cx.py", "ab\\cx.so"])
def test_only_inductor_shaped_paths_are_taken(path):
    with pytest.raises(bundle.BundleError, match="unexpected path"):
        bundle.unpack(bundle.pack(b"", {path: b"x"}))


def test_kernel_files_since_takes_new_kernel_files_only(tmp_path):
    root = tmp_path / "inductor"
    (root / "ab").mkdir(parents=True)
    (root / "zz-not-a-kernel-dir").mkdir()
    old, new = root / "ab" / "cold.so", root / "ab" / "cnew.so"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    since = bundle.now()
    new.write_bytes(b"new")
    (root / "ab" / "cnew.cpp").write_text("src")
    (root / "ab" / "cnew.json").write_text("{}")  # not a kernel file
    assert bundle.kernel_files_since(str(root), since) == {"ab/cnew.so": b"new", "ab/cnew.cpp": b"src"}
    assert bundle.kernel_files_since(str(tmp_path / "missing"), since) == {}


def test_install_writes_only_what_is_absent_with_inductors_modes(tmp_path):
    root = tmp_path / "inductor"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "chave.so").write_bytes(b"mine")
    files = {"ab/chave.so": b"theirs", "cd/cnew.so": b"so", "cd/cnew.cpp": b"src", "triton/" + "a" * 32 + "/k": b"t"}
    assert sorted(bundle.install_kernel_files(str(root), files)) == ["cd/cnew.cpp", "cd/cnew.so"]
    assert (root / "ab" / "chave.so").read_bytes() == b"mine"  # never overwritten
    assert (root / "cd" / "cnew.so").read_bytes() == b"so"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(root / "cd" / "cnew.so").st_mode) == 0o755 & ~mask
    assert stat.S_IMODE(os.stat(root / "cd" / "cnew.cpp").st_mode) == 0o644 & ~mask
    assert not any(p.name.startswith(".nexfort-tmp-") for p in (root / "cd").iterdir())
