"""Fault injection against a real redis-server (issue 19): 8 concurrent writers, a tampered entry, a full disk,
a read-only directory, the server paused (SIGSTOP), killed mid-run and stopped, one after the other on the same
fleet. After every fault: no crash, no wrong result (a read is the payload last stored under its key, or a
miss), no lost entry (everything ``put`` reported stored reads back, from the local store or from Redis)."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import tempfile
import time
import warnings

from nexfort.cache import local as local_mod
from nexfort.cache import redis as redis_mod
from nexfort.cache.local import LocalStore
from nexfort.cache.redis import RedisStore, TieredStore, tiered_store

from .conftest import FLEET_SECRET

N_WRITERS, OWN_KEYS, SHARED_KEYS = 8, 6, 6


def payload(key: str) -> bytes:
    """What every machine stores under ``key`` (the same graph compiles to the same artifacts)."""
    return hashlib.sha256(key.encode()).digest() * (64 + len(key))


def machine(root, url: str) -> TieredStore:
    return TieredStore(LocalStore(str(root)), RedisStore(url))


def check(store, keys, must_hit: bool = True) -> int:
    """No wrong result: every read is the key's payload, or a miss (``must_hit``: no miss either)."""
    hits = 0
    for k in keys:
        got = store.get(k)
        assert got is None or got == payload(k), f"wrong result for {k}"
        assert got is not None or not must_hit, f"lost entry {k}"
        hits += got is not None
    return hits


def _writer(root: str, url: str, i: int, queue) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = machine(root, url)
        keys = [f"w{i}-{j}" for j in range(OWN_KEYS)] + [f"shared-{j}" for j in range(SHARED_KEYS)]
        stored = [k for k in keys if store.put(k, payload(k))]
        wrong = [k for k in keys if store.get(k) not in (None, payload(k))]
    queue.put((i, stored, wrong))


def _loop_writer(root: str, url: str, n: int, queue) -> None:
    """Writes ``n`` keys slowly (the server is killed meanwhile); reports what ``put`` said was stored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = machine(root, url)
        stored = []
        for j in range(n):
            k = f"loop-{j}"
            if store.put(k, payload(k)):
                stored.append(k)
            time.sleep(0.02)
        lost = [k for k in stored if store.get(k) != payload(k)]
    from nexfort.core import counters

    queue.put((stored, lost, counters["cache"]["remote_errors"]))


def test_fault_injection(own_redis, tmp_path, monkeypatch, counters):
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    url = own_redis.url
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    all_keys = [f"w{i}-{j}" for i in range(N_WRITERS) for j in range(OWN_KEYS)] + \
               [f"shared-{j}" for j in range(SHARED_KEYS)]

    # 1. eight machines write at once (their own keys and the same shared ones)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / f"m{i}"), url, i, queue)) for i in range(N_WRITERS)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for i, stored, wrong in results:
        assert wrong == [] and len(stored) == OWN_KEYS + SHARED_KEYS, (i, stored, wrong)
    newcomer = machine(tmp_path / "newcomer", url)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert check(newcomer, all_keys) == len(all_keys)  # every entry of every writer, verified
    assert not record

    # 2. a tampered entry: a miss (one warning) for whoever lacks it, never a wrong result, nothing else lost
    raw = bytearray(newcomer.remote.client.get(newcomer.remote.prefix + "w3-1"))
    raw[-7] ^= 0x20
    newcomer.remote.client.set(newcomer.remote.prefix + "w3-1", bytes(raw))
    fresh = machine(tmp_path / "fresh", url)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert fresh.get("w3-1") is None
        assert check(fresh, [k for k in all_keys if k != "w3-1"]) == len(all_keys) - 1
        assert fresh.put("w3-1", payload("w3-1")) is True  # stored locally; the shared entry is not replaced
        assert fresh.get("w3-1") == payload("w3-1")
    assert any("bad signature" in str(w.message) for w in record)
    assert machine(tmp_path / "m3", url).get("w3-1") == payload("w3-1")  # its writer still has it locally

    # 3. a full disk on one machine: Redis still takes the entry, another machine reads it
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m, warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        m.setattr(local_mod, "atomic_write", no_space)
        full = machine(tmp_path / "full", url)
        assert full.put("on-full-disk", payload("on-full-disk")) is True
        assert full.local.put("local-only", payload("local-only")) is False  # said, not counted as stored
    assert any("No space left" in str(w.message) for w in record)
    assert check(fresh, ["on-full-disk"]) == 1

    # 4. a read-only cache directory: Redis alone, with one warning
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    monkeypatch.setenv("NEXFORT_CACHE_DIR", str(readonly / "nexfort"))
    monkeypatch.setenv("NEXFORT_CACHE_REDIS_URL", url)
    try:
        with monkeypatch.context() as m, warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            if os.geteuid() == 0:  # root writes anywhere: refuse as a read-only mount would
                def erofs(*args, **kwargs):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

                m.setattr(local_mod, "private_dir", erofs)
                m.setattr(tempfile, "mkstemp", erofs)
            ro = tiered_store()
            assert isinstance(ro, RedisStore)
            assert check(ro, ["w0-0", "shared-1", "on-full-disk"]) == 3
            assert ro.put("from-readonly", payload("from-readonly")) is True
        assert len([w for w in record if "cannot be used" in str(w.message)]) == 1
    finally:
        os.chmod(readonly, 0o755)
        redis_mod._stores.clear()
    assert check(fresh, ["from-readonly"]) == 1

    # 5. the server paused: a bounded wait once, then the local store alone; nothing wrong, nothing lost
    writer = machine(tmp_path / "m0", url)
    own_redis.pause()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            assert writer.put("while-paused", payload("while-paused")) is True
            assert check(writer, ["while-paused"] + [f"w0-{j}" for j in range(OWN_KEYS)]) == OWN_KEYS + 1
            assert check(fresh, ["w5-5", "not-there"], must_hit=False) <= 1
            assert time.perf_counter() - t0 < 5.0
        assert len([w for w in record if "not using it" in str(w.message)]) == 2  # one per machine
    finally:
        own_redis.resume()

    # 6. the server killed while a machine writes: it finishes, and everything it stored reads back
    loop = ctx.Process(target=_loop_writer, args=(str(tmp_path / "loop"), url, 40, queue))
    loop.start()
    time.sleep(0.3)
    own_redis.kill()
    stored, lost, remote_errors = queue.get(timeout=120)
    loop.join(60)
    assert loop.exitcode == 0 and lost == [] and len(stored) == 40
    assert remote_errors >= 1  # it did lose the server mid-run

    # 7. stopped, then started again (empty): entries stored meanwhile are local; Redis is used again
    own_redis.start()
    own_redis.stop()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert writer.put("while-stopped", payload("while-stopped")) is True
        assert check(writer, ["while-stopped", "while-paused"]) == 2
    own_redis.start()
    time.sleep(1.1)  # the cool-down (1 s in these tests)
    assert writer.put("back", payload("back")) is True
    assert check(machine(tmp_path / "late", url), ["back"]) == 1
    assert counters["cache"]["remote_errors"] >= 2
