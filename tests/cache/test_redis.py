"""The Redis store against a real redis-server on a loopback port (skipped, with the reason, without one)."""

from __future__ import annotations

import warnings

import pytest

from nexfort.cache.cli import main
from nexfort.cache.local import LocalStore
from nexfort.cache.redis import RedisStore, TieredStore, tiered_store
from nexfort.cache.store import CacheStore, NexfortCacheConfigError

from .conftest import FLEET_SECRET
from .test_plugin import needs_artifacts, run_child


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    return FLEET_SECRET.encode()


def test_round_trip_listing_and_prune(redis_url, secret):
    store = RedisStore(redis_url)
    assert store.get("a") is None
    store.put("a", b"1" * 100)
    store.put("b", b"2" * 100)
    assert store.get("a") == b"1" * 100  # a is now the most recently used
    infos = {e.key: e for e in store.entries()}
    assert set(infos) == {"a", "b"} and infos["a"].size > 100 and infos["a"].atime >= infos["b"].atime
    assert store.prune(infos["a"].size) == ["b"]
    assert store.delete("a") and store.entries() == []
    store.put("c", b"3")
    assert store.clear() == 1 and store.get("c") is None


def test_missing_secret_is_an_error(redis_url):
    with pytest.raises(NexfortCacheConfigError, match="NEXFORT_CACHE_SECRET"):
        RedisStore(redis_url)


def test_second_machine_gets_the_entry(redis_url, secret, tmp_path):
    machine_a = TieredStore(LocalStore(str(tmp_path / "a")), RedisStore(redis_url))
    machine_b = TieredStore(LocalStore(str(tmp_path / "b")), RedisStore(redis_url))
    assert isinstance(machine_a, CacheStore)
    machine_a.put("graph", b"artifacts")
    assert machine_b.local.get("graph") is None
    assert machine_b.get("graph") == b"artifacts"
    assert machine_b.local.get("graph") == b"artifacts"  # filled on the way


def test_tampered_shared_entry_is_ignored_not_deleted(redis_url, secret):
    store = RedisStore(redis_url)
    store.put("k", b"payload")
    raw = bytearray(store.client.get(store.prefix + "k"))
    raw[-1] ^= 0x01
    store.client.set(store.prefix + "k", bytes(raw))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.get("k") is None and store.get("k") is None
    assert len([w for w in record if "bad signature" in str(w.message)]) == 1
    assert store.client.exists(store.prefix + "k")  # another machine's secret must not wipe the shared store


def test_unreachable_server_is_a_miss(secret, tmp_path, counters):
    pytest.importorskip("redis", reason="needs redis-py: pip install nexfort-cache[redis]")
    from .conftest import _free_port

    store = RedisStore(f"redis://127.0.0.1:{_free_port()}/0")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.get("k") is None
        assert store.put("k", b"v") is False
        assert store.get("k") is None
    msgs = [str(w.message) for w in record if "nexfort cache" in str(w.message)]
    assert len(msgs) == 1 and "not using it for the next" in msgs[0], msgs  # the outage is said once
    assert counters["cache"]["remote_errors"] == 1 and counters["cache"]["remote_skipped"] == 2


def test_hook_and_cli(redis_url, secret, monkeypatch, capsys):
    monkeypatch.setenv("NEXFORT_CACHE_REDIS_URL", redis_url)
    store = tiered_store()
    store.put("x", b"y")
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "Redis" in out and "entries: 1" in out
    assert main(["--redis", redis_url, "clear"]) == 0
    assert RedisStore(redis_url).get("x") is None


@needs_artifacts
def test_second_machine_process_loads_from_redis(redis_url, tmp_path):
    common = {"NEXFORT_CACHE_REDIS_URL": redis_url, "NEXFORT_CACHE_SECRET": FLEET_SECRET}
    first = run_child(NEXFORT_CACHE_DIR=tmp_path / "machine-a", TORCHINDUCTOR_CACHE_DIR=tmp_path / "ind-a", **common)
    assert first["cache"].get("saved", 0) >= 1
    second = run_child(NEXFORT_CACHE_DIR=tmp_path / "machine-b", TORCHINDUCTOR_CACHE_DIR=tmp_path / "ind-b", **common)
    assert second["cache"].get("loaded", 0) >= 1, second
    assert second["max_abs_diff"] < 1e-5 and not second["warnings"]
    assert list((tmp_path / "machine-b" / "entries").iterdir())  # filled from Redis
