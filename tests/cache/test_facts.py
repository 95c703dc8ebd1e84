"""The cache plugin remembers environment facts (nexfort.core.facts) in its store: a warm process skips
compat's upsample probe (two compilations); another torch build, a tampered entry or a cache that is off
means probing again."""

from __future__ import annotations

import pytest

from nexfort.cache import key as keymod
from nexfort.cache import plugin
from nexfort.cache.local import local_store
from nexfort.core import compat, counters
from nexfort.core.config import resolve_config

NAME = "inductor_upsample_nearest2d"


@pytest.fixture
def fresh_probe(monkeypatch):
    """compat's in-process memory of the probe emptied (as in a new process), restored afterwards."""
    saved = dict(compat._UPSAMPLE_NEAREST_OK)
    compat._UPSAMPLE_NEAREST_OK.clear()
    counters.clear()
    yield
    compat._UPSAMPLE_NEAREST_OK.clear()
    compat._UPSAMPLE_NEAREST_OK.update(saved)


def _new_process():
    compat._UPSAMPLE_NEAREST_OK.clear()


def test_upsample_probe_is_remembered_in_the_store(cache_env, fresh_probe):
    cfg = resolve_config({"mode": "cache-all"})
    ok = compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    assert ok is not None  # this machine has a C++ compiler
    told = dict(compat._UPSAMPLE_NEAREST_OK)
    assert counters["facts"]["probed"] == 1 and counters["cache"]["facts_saved"] == 1
    assert local_store(cfg).get(plugin.fact_key(NAME)) is not None

    _new_process()
    assert compat.inductor_upsample_nearest_scale_factor_ok(config=cfg) is ok
    assert dict(compat._UPSAMPLE_NEAREST_OK) == told
    assert counters["facts"]["probed"] == 1 and counters["facts"]["recalled"] == 1


def test_another_torch_build_or_a_tampered_entry_probes_again(cache_env, fresh_probe, monkeypatch):
    cfg = resolve_config({"mode": "cache-all"})
    compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    key = plugin.fact_key(NAME)

    env = keymod.environment()
    with monkeypatch.context() as m:
        m.setattr(keymod, "environment", lambda: dict(env, torch="0.0.0+other"))
        assert plugin.fact_key(NAME) != key
        _new_process()
        compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    assert counters["facts"]["probed"] == 2 and counters["facts"]["recalled"] == 0

    path = next(p for p in cache_env.rglob("*") if p.is_file() and key in p.name)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # the JSON payload, under the signature
    path.write_bytes(bytes(data))
    _new_process()
    with pytest.warns(RuntimeWarning, match="discarded"):
        compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    assert counters["facts"]["probed"] == 3 and counters["facts"]["recalled"] == 0
    _new_process()  # the bad entry was replaced by the new probe's
    compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    assert counters["facts"]["probed"] == 3 and counters["facts"]["recalled"] == 1


def test_nothing_is_remembered_when_the_cache_is_off(cache_env, fresh_probe):
    cfg = resolve_config({})
    compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    _new_process()
    compat.inductor_upsample_nearest_scale_factor_ok(config=cfg)
    assert counters["facts"]["probed"] == 2 and counters["cache"]["facts_saved"] == 0
    assert not [p for p in cache_env.rglob("*") if p.is_file()]
