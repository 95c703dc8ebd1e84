"""The plugin system: entry-point discovery, a third-party pass changing a compiled graph, cache safety."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from nexfort.core import GraphPass, get_plugin_manager, hookimpl
from nexfort.core.config import clear_caches, resolve_config
from nexfort.core.errors import NexfortConfigError
from nexfort.core.plugins import plugin_names


def _example_installed() -> None:
    eps = [ep for ep in importlib.metadata.entry_points(group="nexfort") if ep.name == "example"]
    assert eps, ("the example plugin is not installed: pip install tests/plugins/nexfort-example-plugin "
                 "(the test command installs it)")


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def test_example_plugin_is_loaded_from_its_entry_point():
    _example_installed()
    assert "example" in plugin_names()
    cfg = resolve_config({"options": {"example.relu_floor": 0.25}})
    assert cfg.options.example.relu_floor == 0.25


def test_example_plugin_changes_the_compiled_graph(counters, assert_close):
    _example_installed()
    m, x = _mlp(), torch.randn(8, 16)
    with torch.no_grad():
        same = torch.compile(m, backend="nexfort", options={"example.relu_floor": 0.0})(x)
        assert counters["pass"]["example_relu_floor"] == 1
        assert_close(same, m(x), tol=1e-5)  # relu == clamp_min(x, 0): numerics kept
        torch._dynamo.reset()
        changed = torch.compile(m, backend="nexfort", options={"example.relu_floor": 0.5})(x)
        assert counters["pass"]["example_relu_floor"] == 2
        assert_close(changed, m[2](torch.clamp_min(m[0](x), 0.5)), tol=1e-5)
        assert (changed - m(x)).abs().max() > 1e-3  # the graph really changed


def test_example_plugin_brings_a_mode_flag(assert_close):
    """A third party adds a flag (nexfort_mode_flags): it is a mode flag like core's, with its own switch, and its
    values lose to the user's options."""
    _example_installed()
    from nexfort.config import available_flags

    assert "relu-floor" in available_flags()
    cfg = resolve_config({"mode": "jit:relu-floor"})
    assert cfg.flags.relu_floor and cfg.flags.jit and cfg.options.example.relu_floor == 0.0
    assert not resolve_config({}).flags.relu_floor and resolve_config({}).options.example.relu_floor is None
    m, x = _mlp(), torch.randn(8, 16)
    with torch.no_grad():
        out = torch.compile(m, backend="nexfort", options={"mode": "relu-floor", "example.relu_floor": 0.5})(x)
    # (the pass may have run in an earlier test's compile of this graph, which Inductor's FX graph cache returns)
    assert_close(out, m[2](torch.clamp_min(m[0](x), 0.5)), tol=1e-5)
    assert (out - m(x)).abs().max() > 1e-3


def test_example_plugin_flag_is_listed_by_the_cli():
    _example_installed()
    out = subprocess.run([sys.executable, "-m", "nexfort.config", "--list-flags"], capture_output=True, text=True,
                         check=True).stdout
    assert any(line.startswith("relu-floor ") and "clamp_min" in line for line in out.splitlines()), out


def test_near_miss_graph_without_relu_is_left_alone(counters, assert_close):
    _example_installed()
    m = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.GELU())
    x = torch.randn(4, 16)
    with torch.no_grad():
        out = torch.compile(m, backend="nexfort", options={"example.relu_floor": 0.5})(x)
    assert counters["pass"]["example_relu_floor"] == 0
    assert_close(out, m(x), tol=1e-5)


def test_changed_pass_options_never_hit_a_stale_inductor_cache(tmp_path, monkeypatch, assert_close):
    """The same graph compiled with a changed post-grad pass must be a cache miss (torch-compat.md's trap)."""
    _example_installed()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    m, x = _mlp(), torch.randn(8, 16)
    with torch.no_grad():
        for floor in (0.1, 0.7, 0.1):
            torch._dynamo.reset()
            out = torch.compile(m, backend="nexfort", options={"example.relu_floor": floor})(x)
            assert_close(out, m[2](torch.clamp_min(m[0](x), floor)), tol=1e-5)


def test_pass_uuid_covers_options_and_source():
    from nexfort_example_plugin import ExampleOptions, ReluFloorPass

    a, b = ReluFloorPass(ExampleOptions(0.0)), ReluFloorPass(ExampleOptions(0.5))
    assert a.uuid() != b.uuid() and a.uuid() == ReluFloorPass(ExampleOptions(0.0)).uuid()

    class Edited(ReluFloorPass):  # another source file in the MRO: another uuid
        pass

    assert Edited(ExampleOptions(0.0)).uuid() != a.uuid()


def test_disable_autoload_env_loads_no_plugin():
    env = dict(os.environ, NEXFORT_DISABLE_PLUGIN_AUTOLOAD="1")
    code = "from nexfort.core.plugins import plugin_names; print(plugin_names())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_disabled_plugins_env_blocks_one_plugin():
    _example_installed()
    env = dict(os.environ, NEXFORT_DISABLED_PLUGINS="example")
    code = "from nexfort.core.plugins import plugin_names; print('example' in plugin_names())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@dataclass
class _Opts:
    level: int = 1


class _SchemaPlugin:
    def __init__(self, ns):
        self.ns = ns

    @hookimpl
    def nexfort_config_schema(self):
        return {self.ns: _Opts}


def _with_plugin(plugin, name):
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    clear_caches()
    return pm


def test_plugin_namespace_gets_typed_options():
    pm = _with_plugin(_SchemaPlugin("mytool"), "mytool-test")
    try:
        assert resolve_config({"options": {"mytool.level": 3}}).options.mytool.level == 3
        with pytest.raises(NexfortConfigError, match="'mytool.level' must be int"):
            resolve_config({"options": {"mytool.level": "high"}})
    finally:
        pm.unregister(name="mytool-test")
        clear_caches()


def test_plugin_cannot_take_a_core_namespace():
    pm = _with_plugin(_SchemaPlugin("inductor"), "bad-test")
    try:
        with pytest.raises(NexfortConfigError, match="declares option namespace 'inductor', which is core's"):
            resolve_config({})
    finally:
        pm.unregister(name="bad-test")
        clear_caches()


def test_graph_pass_checks_its_definition():
    class NoName(GraphPass):
        def apply(self, target):
            return 0

    with pytest.raises(TypeError, match="must set a non-empty 'name'"):
        NoName()

    class BadStage(GraphPass):
        name = "x"
        stage = "post-grad"

        def apply(self, target):
            return 0

    with pytest.raises(TypeError, match="valid stages: pre_grad, post_grad_early, post_grad"):
        BadStage()
