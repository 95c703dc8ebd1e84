"""The compiled-artifact cache plugin: hooks, feature claim, and a warm start in a second process."""

from __future__ import annotations

import json
import os
import subprocess
import warnings

import pytest
import torch

from nexfort.cache import bundle, plugin
from nexfort.cache.local import LocalStore
from nexfort.core.config import resolve_config
from nexfort.core.plugins import get_plugin_manager

from .conftest import FLEET_SECRET, PYTHON, child_env

CHILD = os.path.join(os.path.dirname(__file__), "_compile_child.py")
needs_artifacts = pytest.mark.skipif(not plugin.has_artifact_api(),
                                     reason="torch.compiler.save_cache_artifacts needs torch 2.7+")


def run_child(**env) -> dict:
    proc = subprocess.run([PYTHON, CHILD], env=child_env(**env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _graph():
    gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    return gm, [torch.randn(2, 4)]


def test_plugins_are_registered_and_bring_cache_all(cache_env):
    from nexfort.core.flags import mode_flags
    from nexfort.core.plugins import plugin_names

    assert {"cache", "cache-local", "cache-redis"} <= set(plugin_names())
    assert mode_flags()["cache-all"] is plugin.CACHE_ALL  # the flag and options.cache are this plugin's
    cfg = resolve_config({"mode": "cache-all"})
    assert cfg.flags.cache_all and cfg.options.cache.enabled and not resolve_config({}).options.cache.enabled
    pm = get_plugin_manager()
    assert str(cache_env) in [d for dirs in pm.hook.nexfort_cache_dirs() for d in (dirs or ())]


def test_store_hook_picks_local_or_redis(cache_env, monkeypatch):
    from nexfort.cache.redis import TieredStore
    from nexfort.cache.store import NexfortCacheConfigError

    pm = get_plugin_manager()
    cfg = resolve_config({"mode": "cache-all"})
    assert isinstance(pm.hook.nexfort_cache_store(config=cfg), LocalStore)
    monkeypatch.setenv("NEXFORT_CACHE_REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(NexfortCacheConfigError, match="NEXFORT_CACHE_SECRET"):
        pm.hook.nexfort_cache_store(config=cfg)
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    assert isinstance(pm.hook.nexfort_cache_store(config=cfg), TieredStore)


def test_enabled_by_flag_or_env(cache_env, monkeypatch):
    assert plugin.enabled(resolve_config({"mode": "cache-all"}))
    off = resolve_config({})
    assert not plugin.enabled(off)
    gm, inputs = _graph()
    plugin.nexfort_pre_compile(gm=gm, example_inputs=inputs, config=off, pass_fingerprint=())
    assert not os.path.exists(cache_env)  # disabled: the store is never even opened
    monkeypatch.setenv("NEXFORT_GRAPH_CACHE", "1")
    assert plugin.enabled(off)


@needs_artifacts
def test_passes_are_built_once_per_graph_and_key_its_entry(cache_env, counters):
    """Core builds a graph's passes once and hands their fingerprint to nexfort_pre_compile; the cache keys the entry
    on it (it used to ask every pass plugin again: the passes were built twice per graph)."""
    from nexfort.core.api import GraphPass, hookimpl

    built = []

    class Noop(GraphPass):
        name = "noop_for_test"
        stage = "post_grad"

        def apply(self, graph):
            return 0

    class Counting:
        version = "v1"

        @hookimpl
        def nexfort_graph_passes(self, config):
            built.append(self.version)
            return [Noop({"version": self.version})]  # another version, another uuid

    counting = Counting()
    pm = get_plugin_manager()
    pm.register(counting, name="counting-test")
    try:
        model, x = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU()), torch.randn(3, 5)
        for version in ("v1", "v2"):
            counting.version = version
            torch._dynamo.reset()
            torch.compile(model, backend="nexfort", options={"mode": "cache-all"})(x)
    finally:
        pm.unregister(counting)
    torch._dynamo.reset()
    assert built == ["v1", "v2"] and counters["backend"]["graphs"] == 2  # once per graph
    assert counters["cache"]["misses"] == 2 and len(LocalStore().keys()) == 2  # the changed pass: a new key


def test_old_torch_falls_back_without_failing(cache_env, monkeypatch, counters, caplog):
    from nexfort.core.compat import has_inductor_knob

    monkeypatch.setattr(plugin, "has_artifact_api", lambda: False)
    gm, inputs = _graph()
    # torch 2.2-2.6: cache-all falls back to Inductor's FX graph cache silently, a plain config warns to turn it
    # on; torch 2.1 has no FX graph cache (inductor.fx_graph_cache): one warning says nothing persists
    expected = (0, 1) if has_inductor_knob("fx_graph_cache") else (1, 0)
    for cfg, n_warnings in zip((resolve_config({"mode": "cache-all"}), resolve_config({})), expected):
        monkeypatch.setenv("NEXFORT_GRAPH_CACHE", "1")
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for _ in range(2):
                plugin.nexfort_pre_compile(gm=gm, example_inputs=inputs, config=cfg, pass_fingerprint=())
                plugin.nexfort_post_compile(gm=gm, example_inputs=inputs, config=cfg, compiled=None)
        msgs = [str(w.message) for w in record if "nexfort cache" in str(w.message)]
        assert len(msgs) == n_warnings and all("fx_graph_cache" in m for m in msgs)
    assert not counters["cache"] and not os.path.exists(cache_env)


@needs_artifacts
def test_signed_but_unusable_entry_is_a_miss(cache_env, counters):
    from nexfort.cache.key import cache_key

    cfg = resolve_config({"mode": "cache-all"})
    gm, inputs = _graph()
    key = cache_key(gm, inputs, cfg)
    LocalStore().put(key, b"NXB1 not really a bundle")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plugin.nexfort_pre_compile(gm=gm, example_inputs=inputs, config=cfg, pass_fingerprint=())
    assert counters["cache"]["misses"] == 1 and not counters["cache"]["loaded"]
    assert len([w for w in record if "could not load" in str(w.message)]) == 1


def test_bundle_format_round_trip_and_rejects_bad_paths():
    files = {"ab/cabc.so": b"\x7fELF", "ab/cabc.cpp": b"int x;"}
    packed = bundle.pack(b"torch-bytes", files)
    assert bundle.unpack(packed) == (b"torch-bytes", files)
    evil = bundle.pack(b"", {"../../etc/passwd": b"x"})
    with pytest.raises(bundle.BundleError, match="unexpected path"):
        bundle.unpack(evil)
    with pytest.raises(bundle.BundleError):
        bundle.unpack(packed[:-3])


@needs_artifacts
def test_second_process_loads_from_shared_local_dir(tmp_path):
    shared = tmp_path / "shared-cache"
    first = run_child(NEXFORT_CACHE_DIR=shared, TORCHINDUCTOR_CACHE_DIR=tmp_path / "inductor-1")
    assert first["cache"].get("saved", 0) >= 1 and not first["cache"].get("loaded")
    assert first["max_abs_diff"] < 1e-5 and not first["warnings"]
    second = run_child(NEXFORT_CACHE_DIR=shared, TORCHINDUCTOR_CACHE_DIR=tmp_path / "inductor-2")
    assert second["cache"].get("loaded", 0) >= 1 and second["cache"].get("hits", 0) >= 1, second
    hits = second["aot_autograd"].get("autograd_cache_hit", 0) + second["inductor"].get("fxgraph_cache_hit", 0)
    assert hits >= 1, second  # Inductor used what nexfort loaded, in a fresh TORCHINDUCTOR_CACHE_DIR
    assert second["max_abs_diff"] < 1e-5 and not second["warnings"]
    assert second["backend"].get("fallbacks", 0) == 0

    # a tampered entry: one warning, a miss, a correct result, and a good entry stored again
    (entry,) = (shared / "entries").iterdir()
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    entry.write_bytes(bytes(blob))
    third = run_child(NEXFORT_CACHE_DIR=shared, TORCHINDUCTOR_CACHE_DIR=tmp_path / "inductor-3")
    assert len(third["warnings"]) == 1 and "bad signature" in third["warnings"][0]
    assert not third["cache"].get("loaded") and third["cache"].get("saved", 0) >= 1
    assert third["max_abs_diff"] < 1e-5


@needs_artifacts
def test_loaded_entry_that_inductor_could_not_use_is_replaced(cache_env, monkeypatch, counters):
    from nexfort.cache.key import cache_key

    cfg = resolve_config({"mode": "cache-all"})
    gm, inputs = _graph()
    key = cache_key(gm, inputs, cfg)
    LocalStore().put(key, b"old entry")
    misses = iter([0, 2])
    monkeypatch.setattr(plugin, "_load", lambda key, payload: True)
    monkeypatch.setattr(plugin, "_inductor_misses", lambda: next(misses))
    monkeypatch.setattr(plugin, "artifacts_since", lambda mark: b"new torch bundle")
    plugin.nexfort_pre_compile(gm=gm, example_inputs=inputs, config=cfg, pass_fingerprint=())
    plugin.nexfort_post_compile(gm=gm, example_inputs=inputs, config=cfg, compiled=None)
    assert counters["cache"]["stale"] == 1 and counters["cache"]["saved"] == 1
    assert bundle.unpack(LocalStore().get(key))[0] == b"new torch bundle"


def _compile_with_first_call_recording(monkeypatch, artifact, width, during_first_call=None):
    """Compile a small model with cache-all; its first call records ``artifact`` (``(type, key, content)``) as
    Inductor's GPU kernels record their autotuning results on their first run (None: records nothing), and runs
    ``during_first_call``."""
    from torch.compiler._cache import CacheArtifactManager

    from nexfort.core import backend

    real = backend._after_first_call

    def first_call_records(compiled, callbacks):
        def run(*args, **kwargs):
            out = compiled(*args, **kwargs)
            if artifact is not None:
                CacheArtifactManager.record_artifact(*artifact)
            if during_first_call is not None:
                during_first_call()
            return out

        return real(backend._copy_attrs(run, compiled), callbacks)

    monkeypatch.setattr(backend, "_after_first_call", first_call_records)
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())  # a graph of its own per test
    x = torch.randn(3, width)
    out = torch.compile(model, backend="nexfort", options={"mode": "cache-all"})(x)
    torch._dynamo.reset()
    return out, model(x)


@needs_artifacts
def test_autotuning_recorded_by_the_first_call_updates_the_entry(cache_env, counters, monkeypatch, assert_close):
    import uuid

    from torch._inductor.runtime.autotune_cache import AutotuneCacheArtifact
    from torch.compiler._cache import CacheArtifactManager

    name = f"zz/nexfort{uuid.uuid4().hex}.best_config"
    tuned = {"XBLOCK": 64, "num_warps": 4, "num_stages": 1, "found_by_coordesc": True}
    out, ref = _compile_with_first_call_recording(monkeypatch, (AutotuneCacheArtifact.type(), name, tuned), 8)
    assert_close(out, ref, tol=1e-5)
    assert counters["cache"]["saved"] == 1 and counters["cache"]["updated"] == 1
    (key,) = LocalStore().keys()
    artifacts = CacheArtifactManager.deserialize(bundle.unpack(LocalStore().get(key))[0])
    autotune = [a for a in artifacts.get(AutotuneCacheArtifact.type(), []) if a.key == name]
    assert len(autotune) == 1, "the first call's autotuning result must be in the stored entry"
    assert artifacts.get("inductor"), "and the compiled graph still is"


@needs_artifacts
def test_first_call_that_records_nothing_leaves_the_entry(cache_env, counters, monkeypatch, assert_close):
    out, ref = _compile_with_first_call_recording(monkeypatch, None, 6)
    assert_close(out, ref, tol=1e-5)
    assert counters["cache"]["saved"] == 1 and counters["cache"]["updated"] == 0


@needs_artifacts
def test_triton_kernels_compiled_by_the_first_call_travel_with_the_entry(cache_env, counters, monkeypatch,
                                                                          assert_close, tmp_path):
    import time
    import uuid

    from torch._inductor.runtime.autotune_cache import AutotuneCacheArtifact

    from nexfort.core import compat_autotune

    from .test_triton_kernels import HASH_NEW, HASH_OLD, _kernel_dir

    cold = tmp_path / "triton-cold"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cold))
    _kernel_dir(cold, HASH_OLD, mtime=time.time() - 3600)  # compiled before: in torch's bundle, not shipped again
    tuned = (AutotuneCacheArtifact.type(), f"zz/nexfort{uuid.uuid4().hex}.best_config",
             {"XBLOCK": 128, "num_warps": 4, "num_stages": 1, "found_by_coordesc": True})
    candidate = "C3" * 26  # compiled by the first call's tuning but not chosen: not shipped

    recording = []

    def first_call_tunes():
        _kernel_dir(cold, HASH_NEW)
        _kernel_dir(cold, candidate)
        compat_autotune._tuned_dirs.add(HASH_NEW)
        recording.append(compat_autotune.tuned_kernel_dirs())

    monkeypatch.setattr(compat_autotune, "_tuned_dirs", set())
    out, ref = _compile_with_first_call_recording(monkeypatch, tuned, 10, first_call_tunes)
    # the cache held the recording patch through the first call, and let go of it after
    assert recording == [{HASH_NEW}] and compat_autotune.tuned_kernel_dirs() is None
    assert_close(out, ref, tol=1e-5)
    assert counters["cache"]["updated"] == 1
    (key,) = LocalStore().keys()
    payload = LocalStore().get(key)
    shipped = {p.split("/")[1] for p in bundle.unpack(payload)[1] if p.startswith("triton/")}
    assert shipped == {HASH_NEW}

    warm = tmp_path / "triton-warm"  # another process: its own Triton cache
    monkeypatch.setenv("TRITON_CACHE_DIR", str(warm))
    plugin.reset()
    assert plugin._load(key, payload)
    assert counters["cache"]["triton_kernels"] == 1
    assert sorted(p.name for p in (warm / HASH_NEW).iterdir()) == sorted(p.name for p in (cold / HASH_NEW).iterdir())
