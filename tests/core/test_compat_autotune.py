"""nexfort.core.compat_autotune: torch's fix for coordinate descent re-running on a warm cache (pytorch#173391),
installed only where the installed torch lacks it, and the kernel path of autotuners loaded from another cache.
Both are checked on fake autotuners (the GPU path they serve cannot run here)."""

from __future__ import annotations

import os
import types

import pytest

from nexfort.core import compat_autotune

th = pytest.importorskip("torch._inductor.runtime.triton_heuristics",
                         reason="torch without torch._inductor.runtime (2.1)")
if not hasattr(getattr(th, "CachingAutotuner", None), "recheck_autotune_cache"):
    pytest.skip("this torch's CachingAutotuner has no recheck_autotune_cache (before 2.8): nothing to fix",
                allow_module_level=True)


def buggy_recheck_autotune_cache(self, reload_kernel_from_src):  # torch 2.11's text, abridged
    configs = [result.config for result in self.compile_results]
    (cached_configs, _, autotune_cache_info) = th.check_autotune_cache(configs, self.filename, self.inductor_meta)
    if len(cached_configs) == 1 and len(configs) > 1:
        best_config = cached_configs[0]
        for compile_result in self.compile_results:
            if th.triton_config_to_hashable(compile_result.config) == th.triton_config_to_hashable(best_config):
                self.compile_results = [compile_result]
                return
        if best_config.found_by_coordesc:
            self.compile_results = [self._precompile_config(best_config)]


def test_the_bug_is_recognised_from_the_source():
    assert compat_autotune.needs_fix(buggy_recheck_autotune_cache)
    assert not compat_autotune.needs_fix(compat_autotune.recheck_autotune_cache)
    assert not compat_autotune.needs_fix(len)  # no source: torch is left alone


class _Config:
    def __init__(self, block: int, coordesc: bool = False) -> None:
        self.block = block
        if coordesc:
            self.found_by_coordesc = True


def _autotuner(monkeypatch, compiled_blocks, cached):
    """A fake statically launchable autotuner with compile results of these block sizes; the autotune cache
    returns ``cached`` (a config found by coordinate descent) or misses (None)."""
    monkeypatch.setattr(th, "triton_config_to_hashable", lambda c: ("block", c.block))
    monkeypatch.setattr(th, "check_autotune_cache",
                        lambda configs, filename, meta: ([cached] if cached else configs, None, {"hit": bool(cached)}))
    results = [types.SimpleNamespace(config=_Config(b)) for b in compiled_blocks]
    tuner = types.SimpleNamespace(compile_results=list(results), filename="k.py", inductor_meta={},
                                  is_statically_launchable=lambda: True, fn=types.SimpleNamespace(fn=object()),
                                  precompiled=[])
    tuner._precompile_config = lambda cfg: tuner.precompiled.append(cfg) or types.SimpleNamespace(config=cfg)
    return tuner, results


@pytest.mark.parametrize("compiled", [[32, 64], [64]], ids=["several-configs", "one-config"])
def test_cached_coordesc_config_is_marked_on_the_compiled_result(monkeypatch, compiled):
    tuner, results = _autotuner(monkeypatch, compiled, _Config(64, coordesc=True))
    compat_autotune.recheck_autotune_cache(tuner, lambda: None)
    (kept,) = tuner.compile_results
    assert kept is results[-1] and kept.config.found_by_coordesc is True  # run() will not tune it again
    assert tuner.precompiled == []
    if len(compiled) == 1:  # torch 2.11 skipped this case entirely
        buggy, _ = _autotuner(monkeypatch, compiled, _Config(64, coordesc=True))
        buggy_recheck_autotune_cache(buggy, lambda: None)
        assert not hasattr(buggy.compile_results[0].config, "found_by_coordesc")


def test_config_found_at_run_time_is_compiled(monkeypatch):
    best = _Config(128, coordesc=True)
    tuner, _ = _autotuner(monkeypatch, [32, 64], best)
    compat_autotune.recheck_autotune_cache(tuner, lambda: None)
    assert tuner.precompiled == [best] and tuner.compile_results[0].config is best


def test_cache_miss_leaves_the_autotuner_alone(monkeypatch):
    tuner, results = _autotuner(monkeypatch, [32, 64], None)
    compat_autotune.recheck_autotune_cache(tuner, lambda: None)
    assert tuner.compile_results == results
    assert not any(hasattr(r.config, "found_by_coordesc") for r in results)


def _install_with(monkeypatch, method):
    """Apply the registry's patch over ``method``: ``(fixes, what was installed)``, undone again."""
    from nexfort.core import patches

    monkeypatch.setattr(th.CachingAutotuner, "recheck_autotune_cache", method)
    fixes, _ = compat_autotune.warm_autotune_method(method)
    with patches.applied("torch.inductor.recheck_autotune_cache"):
        installed = th.CachingAutotuner.recheck_autotune_cache
    assert th.CachingAutotuner.recheck_autotune_cache is method  # undone when the block ends
    return fixes, installed


def test_coordesc_fix_installed_only_where_torch_has_the_bug(monkeypatch):
    original = th.CachingAutotuner.__dict__["recheck_autotune_cache"]
    assert not getattr(original, "nexfort_local_filename", False)  # torch's own: nothing left installed
    fixes, installed = _install_with(monkeypatch, original)  # this torch's own method
    assert fixes[-1] == "local-filename" and ("coordesc" in fixes) is compat_autotune.needs_fix(original)
    fixes, installed = _install_with(monkeypatch, buggy_recheck_autotune_cache)
    assert fixes == ("coordesc", "local-filename")
    assert installed.__wrapped__ is compat_autotune.recheck_autotune_cache

    def upstream(self, reload_kernel_from_src):  # a torch with the fix: its method stays, wrapped
        return compat_autotune.FIX_MARK

    fixes, installed = _install_with(monkeypatch, upstream)
    assert fixes == ("local-filename",) and installed.__wrapped__ is upstream
    # a method that is nexfort's already is not wrapped twice
    monkeypatch.setattr(th.CachingAutotuner, "recheck_autotune_cache", installed)
    assert compat_autotune.install_warm_autotune_fix() is None


def test_warm_autotune_fix_only_while_a_graph_compiles_with_the_fx_graph_cache(monkeypatch):
    """The backend holds the patch around Inductor's compilation when the FX graph cache is on, not otherwise,
    and torch's method is back after each compilation."""
    import torch

    from nexfort.compilers import nexfort_compile
    from nexfort.core import compat, patches

    original = th.CachingAutotuner.__dict__["recheck_autotune_cache"]
    during = []
    real = compat.compile_fx

    def spy(*args, **kwargs):
        during.append(patches.is_applied("torch.inductor.recheck_autotune_cache"))
        return real(*args, **kwargs)

    monkeypatch.setattr(compat, "compile_fx", spy)
    for i, fx_cache in enumerate((True, False)):
        fn = nexfort_compile(lambda x, i=i: torch.sin(x) + i, options={"inductor.fx_graph_cache": fx_cache})
        fn(torch.randn(4))
        assert th.CachingAutotuner.__dict__["recheck_autotune_cache"] is original
    assert during == [True, False]


def test_kernel_path_is_mapped_into_this_cache(tmp_path):
    here, there = str(tmp_path / "warm"), "/elsewhere/ind-cold/nu/cnu6ez.py"
    assert compat_autotune.local_kernel_path(there, here) == os.path.join(here, "nu", "cnu6ez.py")
    local = os.path.join(here, "nu", "cnu6ez.py")
    assert compat_autotune.local_kernel_path(local, here) == local  # already here: unchanged
    for odd in ("/elsewhere/kernels/k.py", "/elsewhere/nu/k.cpp", None, ""):  # not Inductor's layout: unchanged
        assert compat_autotune.local_kernel_path(odd, here) == odd


def test_autotuner_from_another_cache_looks_up_and_saves_in_this_one(tmp_path, monkeypatch):
    autotune_cache = pytest.importorskip("torch._inductor.runtime.autotune_cache",
                                         reason="torch without Inductor's autotune cache")
    here = tmp_path / "warm"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(here))
    meta = {"autotune_local_cache": True}
    foreign = str(tmp_path / "cold" / "nu" / "cnu6ez.py")
    old = autotune_cache.AutotuneCache.create(meta, foreign, "confighash")
    seen = []

    def recheck(self, reload_kernel_from_src):
        seen.append(self.filename)

    tuner = types.SimpleNamespace(filename=foreign, inductor_meta=meta, save_cache_hook=old.save)
    compat_autotune.with_local_filename(recheck)(tuner, lambda: None)
    assert seen == [str(here / "nu" / "cnu6ez.py")] and tuner.filename == seen[0]
    new = tuner.save_cache_hook.__self__
    assert new.configs_hash == "confighash"
    assert new.local_cache[1].startswith(str(here / "nu") + os.sep)
    assert old.local_cache[1].startswith(str(tmp_path / "cold"))
    # near miss: an autotuner already in this cache keeps its path and its cache
    hook = new.save
    tuner.save_cache_hook = hook
    compat_autotune.with_local_filename(recheck)(tuner, lambda: None)
    assert seen[-1] == seen[0] and tuner.save_cache_hook is hook


@pytest.mark.parametrize("coordesc", [True, False], ids=["coordesc-config", "heuristic-config"])
def test_block_halving_is_skipped_only_for_a_config_found_by_coordesc(coordesc):
    meta = {"coordinate_descent_tuning": True}

    def recheck(self, reload_kernel_from_src):
        self.compile_results = [types.SimpleNamespace(config=_Config(64, coordesc=coordesc))]

    tuner = types.SimpleNamespace(filename=None, inductor_meta=meta, compile_results=[])
    compat_autotune.with_local_filename(recheck)(tuner, lambda: None)
    assert tuner.inductor_meta.get("dynamic_scale_rblock", True) is (not coordesc)
    assert tuner.inductor_meta["coordinate_descent_tuning"] is True
    assert meta == {"coordinate_descent_tuning": True}  # the shared dict is not changed


def test_kernels_chosen_by_run_time_tuning_are_recorded(monkeypatch):
    from nexfort.core import patches

    monkeypatch.setattr(compat_autotune, "_tuned_dirs", set())
    chosen, other, kept = (types.SimpleNamespace(cache_hash=h) for h in ("BEST", "CANDIDATE", "KEPT"))

    def coordesc(self, launcher, *args, **kwargs):  # tried ``other`` on the way, returns ``chosen``
        return chosen

    def autotune(self, *args, **kwargs):
        self.launchers = [kept]

    tuner = types.SimpleNamespace(launchers=[chosen, other])
    torchs = th.CachingAutotuner.__dict__["coordinate_descent_tuning"]
    assert compat_autotune.tuned_kernel_dirs() is None  # not recording: the cache ships every new kernel
    with patches.applied("torch.inductor.record_tuned_kernels"):
        assert compat_autotune.recording_coordesc(coordesc)(tuner, other) is chosen
        compat_autotune.recording_autotune(autotune)(tuner)
        compat_autotune.recording_coordesc(lambda self, launcher: types.SimpleNamespace())(tuner, other)  # no hash
        assert th.CachingAutotuner.__dict__["coordinate_descent_tuning"].__wrapped__ is torchs  # torch's, wrapped
        assert compat_autotune.tuned_kernel_dirs() == {"BEST", "KEPT"}
    assert th.CachingAutotuner.__dict__["coordinate_descent_tuning"] is torchs  # torch's own again
    assert compat_autotune.tuned_kernel_dirs() is None
