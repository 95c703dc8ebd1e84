"""The local store and the signed envelope: hits, misses, bad entries, concurrent writers, eviction."""

from __future__ import annotations

import multiprocessing
import os
import stat
import warnings

import pytest

from nexfort.cache.local import LocalStore, default_dir
from nexfort.cache.store import FORMAT_VERSION, CacheStore, InvalidEntry, parse_size, seal, unseal

from .conftest import FLEET_SECRET, OTHER_SECRET


def _bad_entry_warnings(record) -> list:
    return [w for w in record if "nexfort cache" in str(w.message)]


def test_round_trip_hit_and_miss(cache_env):
    store = LocalStore()
    assert store.root == str(cache_env)
    assert store.get("k1") is None
    store.put("k1", b"payload-1")
    store.put("k/2 with odd chars", b"payload-2" * 100)
    assert store.get("k1") == b"payload-1"
    assert store.get("k/2 with odd chars") == b"payload-2" * 100
    infos = {e.key: e for e in store.entries()}
    assert set(infos) == {"k1", "k/2 with odd chars"}
    assert infos["k1"].size > len(b"payload-1") and infos["k1"].atime > 0
    assert store.total_size() == sum(e.size for e in infos.values())
    assert sorted(store.keys()) == sorted(infos)
    assert isinstance(store, CacheStore)
    assert store.delete("k1") and not store.delete("k1")
    assert store.get("k1") is None
    assert store.clear() == 1 and store.entries() == []


def test_directory_resolution(cache_env, tmp_path, monkeypatch):
    assert default_dir() == str(cache_env)

    class Cfg:
        class options:
            class cache:
                dir = str(tmp_path / "from-options")

    assert default_dir(Cfg) == str(tmp_path / "from-options")
    monkeypatch.delenv("NEXFORT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == str(tmp_path / "xdg" / "nexfort")


def test_per_directory_secret_is_private_and_shared(cache_env, monkeypatch):
    a = LocalStore()
    mode = stat.S_IMODE(os.stat(cache_env / "secret.key").st_mode)
    assert mode == 0o600
    b = LocalStore()
    assert a.secret == b.secret and len(a.secret) >= 32
    a.put("k", b"v")
    assert b.get("k") == b"v"
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", OTHER_SECRET)
    c = LocalStore()
    assert c.secret == OTHER_SECRET.encode()
    with pytest.warns(RuntimeWarning, match="bad signature"):
        assert c.get("k") is None  # signed with the directory's key, not the shared one


@pytest.mark.parametrize("damage", ["flip-payload", "flip-signature", "truncate", "truncate-header", "empty",
                                    "other-version", "other-key"])
def test_bad_entry_is_one_warning_and_a_miss(cache_env, damage):
    store = LocalStore()
    store.put("key", b"x" * 1000)
    path = store.path("key")
    blob = bytearray(open(path, "rb").read())
    if damage == "flip-payload":
        blob[-10] ^= 0x01
    elif damage == "flip-signature":
        blob[len(blob) - 1000 - 5] ^= 0x80
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "truncate-header":
        blob = blob[:5]
    elif damage == "empty":
        blob = bytearray()
    elif damage == "other-version":
        blob = bytearray(seal("key", b"x" * 1000, store.secret, version=FORMAT_VERSION + 1))
    elif damage == "other-key":
        blob = bytearray(seal("another", b"x" * 1000, store.secret))
    with open(path, "wb") as f:
        f.write(blob)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.get("key") is None
        assert store.get("key") is None
    assert len(_bad_entry_warnings(record)) == 1, [str(w.message) for w in record]
    if damage == "other-version":
        assert "format version" in str(_bad_entry_warnings(record)[0].message)
    assert not os.path.exists(path)  # discarded: the next compile stores a good one
    store.put("key", b"fresh")
    assert store.get("key") == b"fresh"


def test_unseal_checks_everything():
    blob = seal("k", b"data", b"s1")
    assert unseal(blob, b"s1", "k") == b"data"
    for bad in (blob[:-1], blob + b"!", b"XXXX" + blob[4:]):
        with pytest.raises(InvalidEntry):
            unseal(bad, b"s1", "k")
    with pytest.raises(InvalidEntry, match="signature"):
        unseal(blob, b"s2", "k")


N_WRITERS, N_ROUNDS, SIZE = 6, 15, 256 * 1024


def _writer(root: str, i: int) -> None:
    store = LocalStore(root)
    payload = bytes([i]) * SIZE
    for _ in range(N_ROUNDS):
        store.put("same-key", payload)


def _reader(root: str, queue) -> None:
    store = LocalStore(root)
    seen, bad = 0, 0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(20000):
            got = store.get("same-key")
            if got is None:
                continue
            if seen >= 200:
                break
            seen += 1
            if len(got) != SIZE or got != got[:1] * SIZE:
                bad += 1
    queue.put((seen, bad, len(record)))


def test_concurrent_writers_same_key(cache_env):
    LocalStore()  # create the directory key once, as the first compile of a process would
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(cache_env), i + 1)) for i in range(N_WRITERS)]
    procs.append(ctx.Process(target=_reader, args=(str(cache_env), queue)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seen, bad, n_warnings = queue.get(timeout=10)
    assert seen > 0 and bad == 0 and n_warnings == 0
    got = LocalStore(str(cache_env)).get("same-key")
    assert got is not None and len(got) == SIZE and got[0] in range(1, N_WRITERS + 1)
    leftovers = [n for n in os.listdir(cache_env / "entries") if n.startswith(".tmp-")]
    assert leftovers == []


def test_concurrent_first_use_agrees_on_secret(cache_env):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(cache_env), i + 1)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert LocalStore(str(cache_env)).get("same-key") is not None


def test_lru_eviction_at_size_limit(cache_env):
    store = LocalStore(max_size=10**9)
    for k in "abc":
        store.put(k, b"." * 1000)
    size = store.path("a")
    one = os.path.getsize(size)
    for t, k in zip((100, 200, 300), "abc"):
        os.utime(store.path(k), (t, t))
    assert store.get("a") is not None  # a is now the most recently used
    store.max_size = int(3.5 * one)
    store.put("d", b"." * 1000)  # 4 entries > 3.5: the least recently used (b) goes
    assert {e.key for e in store.entries()} == {"a", "c", "d"}
    assert store.total_size() <= store.max_size
    assert store.prune(int(1.5 * one)) == ["c", "a"]
    assert {e.key for e in store.entries()} == {"d"}


def test_parse_size():
    assert parse_size("1024") == 1024
    assert parse_size("2K") == 2048
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("500MiB") == 500 * 1024**2
    with pytest.raises(ValueError, match="Invalid size"):
        parse_size("lots")


def test_redis_store_needs_a_secret_and_names_the_extra(monkeypatch):
    import sys

    from nexfort.cache.redis import RedisStore
    from nexfort.cache.store import NexfortCacheConfigError

    with pytest.raises(NexfortCacheConfigError, match="NEXFORT_CACHE_SECRET"):
        RedisStore("redis://127.0.0.1:1/0")
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    with pytest.raises(ImportError, match=r"pip install nexfort-cache\[redis\]"):
        RedisStore("redis://127.0.0.1:1/0")
