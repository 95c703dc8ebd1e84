"""What the cache trusts: the secret's strength (issue 19 item 4), redacted Redis URLs (6), URL schemes (13)."""

from __future__ import annotations

import warnings

import pytest

from nexfort.cache.cli import main
from nexfort.cache.local import LocalStore
from nexfort.cache.security import (
    MAKE_SECRET,
    NexfortCacheConfigError,
    check_redis_url,
    check_secret,
    estimated_bits,
    redact,
    scrub,
)
from nexfort.cache.store import NexfortCacheConfigError as FromStore
from nexfort.cache.store import seal, unseal
from nexfort.core.errors import NexfortConfigError

from .conftest import FLEET_SECRET

WEAK = ["abc", "x" * 31, "a" * 64, "passwordpasswordpasswordpassword", "01" * 40, "abcdefg" * 10, "abcdefgh" * 4,
        "0123456789abcdef" * 4]


def test_error_types_are_the_projects():
    assert FromStore is NexfortCacheConfigError and issubclass(NexfortCacheConfigError, NexfortConfigError)


@pytest.mark.parametrize("weak", WEAK)
def test_weak_secrets_are_refused_with_the_command_that_makes_one(weak, monkeypatch):
    with pytest.raises(NexfortCacheConfigError) as info:
        check_secret(weak.encode())
    msg = str(info.value)
    assert MAKE_SECRET in msg and "NEXFORT_CACHE_SECRET" in msg and "32 bytes" in msg
    if len(weak) < 32:
        assert f"is {len(weak)} bytes" in msg
    else:
        assert "low entropy" in msg
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", weak)
    with pytest.raises(NexfortCacheConfigError, match="NEXFORT_CACHE_SECRET"):
        LocalStore()  # a store never signs with it


def test_random_secrets_are_accepted():
    import secrets

    for _ in range(50):
        for s in (secrets.token_hex(32), secrets.token_hex(16), secrets.token_urlsafe(32)):
            assert check_secret(s.encode()) == s.encode()
    assert estimated_bits(FLEET_SECRET.encode()) > 200


def test_the_three_character_secret_of_the_report_is_refused_everywhere(monkeypatch, tmp_path, capsys):
    """Item 4: a 3-character secret was recovered from one entry offline and used to forge one."""
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", "abc")
    from nexfort.cache.redis import RedisStore

    with pytest.raises(NexfortCacheConfigError, match="is 3 bytes"):
        RedisStore("redis://127.0.0.1:1/0")
    with pytest.raises(NexfortCacheConfigError, match="is 3 bytes"):
        RedisStore("redis://127.0.0.1:1/0", secret=b"abc")
    assert main(["--dir", str(tmp_path / "d"), "stats"]) == 2
    err = capsys.readouterr().err
    assert "is 3 bytes" in err and MAKE_SECRET in err


def test_a_valid_secret_still_signs_and_verifies(monkeypatch):
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    store = LocalStore()
    assert store.secret == FLEET_SECRET.encode()
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert unseal(seal("k", b"v", store.secret), FLEET_SECRET.encode(), "k") == b"v"


URLS = [
    ("redis://:hunter2pw@cache.example:6379/0", "hunter2pw", "redis://:***@cache.example:6379/0"),
    ("redis://alice:hunter2pw@cache.example/1", "hunter2pw", "redis://alice:***@cache.example/1"),
    ("rediss://hunter2pw@cache.example", "hunter2pw", "rediss://***@cache.example"),
    ("redis://cache.example/0?password=hunter2pw&db=2", "hunter2pw", "redis://cache.example/0?password=***&db=2"),
    ("unix://:hunter2pw@/run/redis.sock?db=0", "hunter2pw", "unix://:***@/run/redis.sock?db=0"),
]


@pytest.mark.parametrize("url,password,shown", URLS)
def test_redact(url, password, shown):
    assert redact(url) == shown and password not in redact(url)
    assert password not in scrub(f"connecting to {url} failed; auth {password} rejected", url)
    assert redact("redis://cache.example:6379/0") == "redis://cache.example:6379/0"  # nothing to hide


@pytest.mark.parametrize("url,password,shown", URLS[:2])
def test_password_never_printed(url, password, shown, monkeypatch, tmp_path, capsys):
    """Item 6: the URL, password included, was printed in warnings, errors and ``stats``."""
    pytest.importorskip("redis", reason="needs redis-py: pip install nexfort-cache[redis]")
    from nexfort.cache.redis import RedisStore

    with pytest.raises(NexfortCacheConfigError) as info:  # no secret: the error names the store
        RedisStore(url)
    assert password not in str(info.value) and shown in str(info.value)
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    dead = url.replace("cache.example:6379", "cache.example").replace("cache.example", "127.0.0.1:1")
    store = RedisStore(dead, timeout=0.5)
    assert password not in store.describe()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.get("k") is None and store.put("k", b"v") is False
    text = " ".join(str(w.message) for w in record)
    assert "nexfort cache" in text and password not in text
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rc = main(["--dir", str(tmp_path / "d"), "--redis", dead, "stats"])
    out = capsys.readouterr()
    assert rc == 2 and password not in out.out + out.err and "***" in out.err
    assert record and not [w for w in record if password in str(w.message)]


def test_stats_shows_the_redacted_url(monkeypatch, tmp_path, capsys, redis_url):
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    with_pw = redis_url.replace("redis://", "redis://nexfort:hunter2pw@")
    import redis

    client = redis.Redis.from_url(redis_url)
    client.execute_command("ACL", "SETUSER", "nexfort", "on", ">hunter2pw", "~*", "+@all")
    try:
        assert main(["--dir", str(tmp_path / "d"), "--redis", with_pw, "stats"]) == 0
    finally:
        client.execute_command("ACL", "DELUSER", "nexfort")
    out = capsys.readouterr().out
    assert "hunter2pw" not in out and "nexfort:***@" in out and "entries: 0" in out


@pytest.mark.parametrize("bad", ["http://cache.example:6379", "cache.example:6379", "tcp://h:1", ""])
def test_redis_url_scheme_is_checked(bad):
    """Item 13: ``http://...`` was accepted (and the error later blamed the secret)."""
    with pytest.raises(NexfortCacheConfigError) as info:
        check_redis_url(bad)
    msg = str(info.value)
    assert repr(bad) in msg and "redis://" in msg and "rediss://" in msg and "unix://" in msg
    for good in ("redis://h:6379/0", "rediss://h", "unix:///run/redis.sock", "REDIS://h"):
        assert check_redis_url(good) == good


def test_bad_scheme_with_a_password_is_redacted_in_the_error():
    with pytest.raises(NexfortCacheConfigError) as info:
        check_redis_url("http://:hunter2pw@cache.example:6379")
    assert "hunter2pw" not in str(info.value) and "http://:***@cache.example:6379" in str(info.value)


@pytest.mark.skipif(not __import__("nexfort.cache.plugin", fromlist=["x"]).has_artifact_api(),
                    reason="the cache's compile path needs torch.compiler.save_cache_artifacts (torch 2.7+)")
def test_bad_url_is_an_error_before_compiling(monkeypatch, counters):
    """The option and the environment variable are both checked when the first graph would compile (the secret
    is fine: the error is about the URL), and no compilation happens."""
    import torch

    from nexfort.core.config import resolve_config

    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    graphs, fallbacks = counters["backend"]["graphs"], counters["backend"]["fallbacks"]
    model = torch.nn.Linear(4, 4)
    cfg = {"mode": "cache-all", "options": {"cache_store.redis_url": "http://:hunter2pw@cache.example:6379"}}
    resolve_config(cfg)  # resolves (core knows nothing of URLs) ...
    compiled = torch.compile(model, backend="nexfort", options=cfg)
    with pytest.raises(Exception) as info:  # ... and the first compile raises the cache's error
        compiled(torch.randn(2, 4))
    err = info.value
    while not isinstance(err, NexfortCacheConfigError) and (err.__cause__ or getattr(err, "inner_exception", None)):
        err = err.__cause__ or err.inner_exception
    assert isinstance(err, NexfortCacheConfigError), repr(info.value)
    assert "options.cache_store.redis_url" in str(err) and "hunter2pw" not in str(err)
    assert "secret" not in str(err).lower()
    assert (counters["backend"]["graphs"], counters["backend"]["fallbacks"]) == (graphs, fallbacks)
    torch._dynamo.reset()
    monkeypatch.setenv("NEXFORT_CACHE_REDIS_URL", "http://cache.example:6379")
    with pytest.raises(Exception, match="NEXFORT_CACHE_REDIS_URL"):
        torch.compile(model, backend="nexfort", options={"mode": "cache-all"})(torch.randn(2, 4))
    torch._dynamo.reset()
