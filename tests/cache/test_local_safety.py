"""The local store's trust and storage (issue 19 items 5, 9, 10, 11): private files, a key file only its owner
controls, entries over the limit, bounded reads, failed writes, FIFOs and stale temporary files."""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import tarfile
import threading
import time
import tracemalloc
import warnings

import pytest

from nexfort.cache import plugin
from nexfort.cache.cli import main
from nexfort.cache.local import LocalStore
from nexfort.cache.store import NexfortCacheConfigError, seal

from .conftest import FLEET_SECRET


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(old)


def _cache_warnings(record) -> list:
    return [str(w.message) for w in record if "nexfort cache" in str(w.message)]


# ------------------------------------------------------------------------------------------------- item 5
@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_directory_and_entries_are_private_whatever_the_umask(cache_env, umask, mask):
    umask(mask)
    store = LocalStore()
    store.put("k", b"v")
    assert _mode(cache_env) == 0o700 and _mode(cache_env / "entries") == 0o700
    assert _mode(store.path("k")) == 0o600 and _mode(cache_env / "secret.key") == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o622])
def test_key_file_readable_or_writable_by_others_is_refused(cache_env, mode):
    LocalStore().put("k", b"v")
    key = cache_env / "secret.key"
    os.chmod(key, mode)
    with pytest.raises(NexfortCacheConfigError) as info:
        LocalStore()
    msg = str(info.value)
    assert str(key) in msg and f"{mode:04o}" in msg and "chmod 600" in msg and "NEXFORT_CACHE_SECRET" in msg
    os.chmod(key, 0o600)
    assert LocalStore().get("k") == b"v"  # fixed as the message says: the cache works again


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_key_file_of_another_user_is_refused(cache_env):
    LocalStore()
    key = cache_env / "secret.key"
    os.chown(key, 4321, 4321)
    with pytest.raises(NexfortCacheConfigError, match="belongs to uid 4321"):
        LocalStore()


def test_key_file_must_not_be_a_symlink(cache_env, tmp_path):
    LocalStore()
    key = cache_env / "secret.key"
    elsewhere = tmp_path / "planted.key"
    elsewhere.write_bytes(b"k" * 64)
    os.chmod(elsewhere, 0o600)
    key.unlink()
    key.symlink_to(elsewhere)
    with pytest.raises(NexfortCacheConfigError, match="signing key"):
        LocalStore()


def test_guessable_key_file_is_refused(cache_env):
    LocalStore()
    key = cache_env / "secret.key"
    key.write_bytes(b"a" * 64)
    with pytest.raises(NexfortCacheConfigError, match="low entropy"):
        LocalStore()
    key.unlink()
    assert len(LocalStore().secret) == 64  # deleted, as the message says: a random one is made


def test_env_secret_needs_no_key_file(cache_env, monkeypatch):
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    LocalStore().put("k", b"v")
    assert not (cache_env / "secret.key").exists()


# ------------------------------------------------------------------------------------------------- item 9
def test_entry_over_the_size_limit_is_refused_and_the_rest_kept(cache_env, counters):
    store = LocalStore(max_size=64 * 1024)
    for k in "abc":
        assert store.put(k, b"." * 1000) is True
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.put("huge", b"x" * (128 * 1024)) is False
        assert store.put("huge2", b"x" * (128 * 1024)) is False
    msgs = _cache_warnings(record)
    assert len(msgs) == 1 and "larger than the limit" in msgs[0] and "other entries are kept" in msgs[0]
    assert {e.key for e in store.entries()} == {"a", "b", "c"}
    assert store.get("huge") is None and counters["cache"]["too_large"] == 2


def test_plugin_does_not_count_an_entry_that_was_not_stored(cache_env, counters, caplog, monkeypatch):
    """Items 9 and 11: the "stored" line and the saved counters only for what was stored."""
    store = LocalStore(max_size=1024)
    monkeypatch.setattr(plugin, "artifacts_since", lambda mark: b"z" * 4096)
    with caplog.at_level(logging.INFO, logger="nexfort.cache"), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert plugin._save("key", store, None, time.time()) is False
    assert counters["cache"]["saved"] == 0 and counters["cache"]["bytes_stored"] == 0
    assert not [r for r in caplog.records if "stored" in r.getMessage()]
    assert store.entries() == []


# ------------------------------------------------------------------------------------------------ item 10
def test_oversized_file_is_refused_before_it_is_read(cache_env, monkeypatch):
    monkeypatch.setenv("NEXFORT_CACHE_MAX_ENTRY_SIZE", "1M")
    store = LocalStore()
    store.put("k", b"v")
    with open(store.path("k"), "r+b") as f:
        f.truncate(512 * 1024**2)  # a sparse 512 MiB file: reading it would allocate that much
    tracemalloc.start()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert store.get("k") is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024**2, peak
    assert any("larger than the entry size limit" in m for m in _cache_warnings(record))
    assert not os.path.exists(store.path("k"))  # a private store discards it


def test_import_bounds_a_member_before_decompressing_it(cache_env, tmp_path, monkeypatch, capsys):
    """A 509 KiB archive with a 512 MiB member took 1.8 GB on import; members over the limit are skipped unread."""
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    monkeypatch.setenv("NEXFORT_CACHE_MAX_ENTRY_SIZE", "1M")
    archive = tmp_path / "bomb.tar.gz"
    good = seal("small", b"ok", FLEET_SECRET.encode())
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("nexfort-cache/000000.nxc", good),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("nexfort-cache/000001.nxc")
        info.size = 64 * 1024**2
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    assert os.path.getsize(archive) < 1024**2
    tracemalloc.start()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert main(["--dir", str(tmp_path / "dst"), "import", str(archive)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, peak
    assert "imported 1 entries" in capsys.readouterr().out
    assert any("larger than the entry size limit" in m for m in _cache_warnings(record))
    assert LocalStore(str(tmp_path / "dst")).get("small") == b"ok"


# ------------------------------------------------------------------------------------------------ item 11
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_a_failed_put_not_a_stored_entry(cache_env, counters, monkeypatch, caplog):
    store = LocalStore()
    store.put("old", b"kept")
    real_fdopen = os.fdopen

    class FullFile(io.RawIOBase):
        def __init__(self, fd):
            self.f = real_fdopen(fd, "wb")

        def write(self, b):
            _enospc()

        def close(self):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FullFile(fd) if "w" in mode
                        else real_fdopen(fd, mode, *a, **k))
    monkeypatch.setattr(plugin, "artifacts_since", lambda mark: b"artifacts")
    with caplog.at_level(logging.INFO, logger="nexfort.cache"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.put("new", b"payload") is False
        assert plugin._save("graph", store, None, time.time()) is False
    msgs = _cache_warnings(record)
    assert len(msgs) == 1 and "No space left" in msgs[0], msgs
    assert counters["cache"]["saved"] == 0 and counters["cache"]["write_errors"] == 2
    assert not [r for r in caplog.records if "stored" in r.getMessage()]
    monkeypatch.undo()
    assert os.listdir(cache_env / "entries") == [os.path.basename(store.path("old"))]  # no temporary left
    assert store.get("old") == b"kept" and store.get("new") is None


def _bounded(fn, seconds: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} hung"
    return out.get("value")


def test_a_fifo_in_entries_never_hangs(cache_env, capsys):
    store = LocalStore()
    store.put("real", b"v")
    for name in ("h-" + "0" * 64 + ".nxc", "k-fifo.nxc"):
        os.mkfifo(cache_env / "entries" / name)
    assert [e.key for e in _bounded(store.entries)] == ["real"]
    assert _bounded(lambda: store.prune(0)) == ["real"]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert _bounded(lambda: store.get("fifo")) is None
    assert _bounded(lambda: main(["--dir", str(cache_env), "list"])) == 0
    assert _bounded(lambda: main(["--dir", str(cache_env), "stats"])) == 0
    assert "entries: 0" in capsys.readouterr().out


def test_stale_temporary_files_are_cleaned_on_start_and_never_counted(cache_env):
    store = LocalStore()
    store.put("k", b"v" * 100)
    size = store.total_size()
    entries = cache_env / "entries"
    stale = [entries / ".tmp-killed1.nxc", entries / ".tmp-killed2", cache_env / ".secret-killed"]
    fresh = entries / ".tmp-writing-now"
    for p in stale + [fresh]:
        p.write_bytes(b"x" * 10000)
    old = time.time() - 3 * 3600
    for p in stale:
        os.utime(p, (old, old))
    assert store.total_size() == size and [e.key for e in store.entries()] == ["k"]
    LocalStore()  # a new process opens the directory
    assert not any(p.exists() for p in stale)
    assert fresh.exists()  # it may belong to a writer that is still running
