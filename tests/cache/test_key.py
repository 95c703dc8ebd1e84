"""The compiled-graph key: a change in any part that can change the result is a different key (a miss)."""

from __future__ import annotations

import pytest
import torch

from nexfort.cache import key as keymod
from nexfort.core.config import resolve_config
from nexfort.core.graph_pass import GraphPass


def capture(fn, *inputs, dynamic=None):
    """The (GraphModule, example inputs) Dynamo hands a backend for ``fn(*inputs)`` (no Inductor)."""
    seen = []

    def backend(gm, example_inputs, **kwargs):
        seen.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, dynamic=dynamic, fullgraph=True)(*inputs)
    assert len(seen) == 1
    return seen[0]


def f(x, y):
    return torch.relu(x @ y) + 1


def g(x, y):
    return torch.gelu(x @ y) + 1 if hasattr(torch, "gelu") else torch.nn.functional.gelu(x @ y) + 1


@pytest.fixture
def base():
    gm, inputs = capture(f, torch.randn(4, 8), torch.randn(8, 3))
    cfg = resolve_config({"mode": "cache-all"})
    return gm, inputs, cfg


def test_same_everything_same_key(base):
    gm, inputs, cfg = base
    k = keymod.cache_key(gm, inputs, cfg)
    gm2, inputs2 = capture(f, torch.randn(4, 8), torch.randn(8, 3))
    assert keymod.cache_key(gm2, inputs2, resolve_config({"mode": "cache-all"})) == k
    assert len(k) == 64


def test_graph_changes_key(base):
    gm, inputs, cfg = base
    gm2, inputs2 = capture(g, torch.randn(4, 8), torch.randn(8, 3))
    assert keymod.cache_key(gm2, inputs2, cfg) != keymod.cache_key(gm, inputs, cfg)


@pytest.mark.parametrize("change", ["shape", "dtype", "stride", "requires_grad"])
def test_inputs_change_key(base, change):
    gm, inputs, cfg = base
    x, y = inputs
    if change == "shape":
        x = torch.randn(5, 8)
    elif change == "dtype":
        x = x.to(torch.float64)
    elif change == "stride":
        x = torch.randn(8, 4).t()
    elif change == "requires_grad":
        x = x.clone().requires_grad_(True)
    assert keymod.cache_key(gm, [x, y], cfg) != keymod.cache_key(gm, inputs, cfg)


def test_symbolic_dims_change_key():
    gm_s, in_s = capture(f, torch.randn(4, 8), torch.randn(8, 3))
    gm_d, in_d = capture(f, torch.randn(4, 8), torch.randn(8, 3), dynamic=True)
    cfg = resolve_config({})
    shapes = keymod.key_parts(gm_d, in_d, cfg)["inputs"]
    assert any(isinstance(d, str) and d.startswith("sym:") for s in shapes if "shape" in s for d in s["shape"])
    assert keymod.cache_key(gm_d, in_d, cfg) != keymod.cache_key(gm_s, in_s, cfg)


def test_config_changes_key_but_cache_location_does_not(base, tmp_path):
    gm, inputs, cfg = base
    k = keymod.cache_key(gm, inputs, cfg)
    assert keymod.cache_key(gm, inputs, resolve_config({"mode": "cache-all:freezing"})) != k
    assert keymod.cache_key(gm, inputs, resolve_config(
        {"mode": "cache-all", "options": {"inductor.epilogue_fusion": False}})) != k
    same = resolve_config({"mode": "cache-all", "options": {"cache.dir": str(tmp_path)}})
    assert keymod.cache_key(gm, inputs, same) == k


class _FakePass(GraphPass):
    name = "fake-pass"
    stage = "post_grad"

    def __init__(self, uuid):
        super().__init__()
        self._uuid = uuid

    def apply(self, target):
        return 0

    def uuid(self):
        return self._uuid


def test_pass_uuid_changes_key(base):
    from nexfort.core.graph_pass import fingerprint

    gm, inputs, cfg = base
    k1 = keymod.cache_key(gm, inputs, cfg, fingerprint([_FakePass("v1")]))
    assert keymod.cache_key(gm, inputs, cfg, fingerprint([_FakePass("v1")])) == k1
    assert keymod.cache_key(gm, inputs, cfg, fingerprint([_FakePass("v2")])) != k1
    assert keymod.cache_key(gm, inputs, cfg) != k1  # no passes


@pytest.mark.parametrize("where", ["torch", "cuda", "nexfort", "triton"])
def test_versions_change_key(base, monkeypatch, where):
    gm, inputs, cfg = base
    k = keymod.cache_key(gm, inputs, cfg)
    if where == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif where == "cuda":
        monkeypatch.setattr(torch.version, "cuda", "99.0")
    else:
        real = keymod._dist_version
        target = "nexfort-core" if where == "nexfort" else "triton"
        monkeypatch.setattr(keymod, "_dist_version", lambda name: "9.9" if name == target else real(name))
    assert keymod.cache_key(gm, inputs, cfg) != k


def test_gpu_model_changes_key(base, monkeypatch):
    gm, inputs, cfg = base
    k = keymod.cache_key(gm, inputs, cfg)
    monkeypatch.setattr(keymod, "devices", lambda example_inputs: ["NVIDIA H100 80GB HBM3 sm90"])
    assert keymod.cache_key(gm, inputs, cfg) != k


class _WithParam(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, n))

    def forward(self, x):
        return x @ self.w


def test_get_attr_parameters_change_key():
    cfg = resolve_config({})
    x = [torch.randn(2, 8)]
    a, b = torch.fx.symbolic_trace(_WithParam(3)), torch.fx.symbolic_trace(_WithParam(4))
    assert a.code == b.code
    assert keymod.cache_key(a, x, cfg) != keymod.cache_key(b, x, cfg)
