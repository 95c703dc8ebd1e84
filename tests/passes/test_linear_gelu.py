"""The ``linear_gelu`` pass (nexfort-passes): ``gelu(linear(x, W, b))`` -> ``torch._addmm_activation``, its
hand-written form on the torch-level graph (``linear_gelu.implementation="fx"``; the pattern-matcher form is
tests/passes/test_linear_gelu_matcher.py).

On the CPU the fused op computes the exact GELU, so the CPU tests use ``approximate="none"`` (and check that the
tanh form, which is CUDA's, is left alone there); the GPU test runs the tanh form in half precision.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nexfort.passes.linear_gelu import LinearGeluOptions, LinearGeluPass

FUSED = torch._addmm_activation


def run_pass(fn, *args, dynamic=False):
    """Compile ``fn`` with a backend that applies the pass and runs the rewritten graph eagerly."""
    graphs = []

    def backend(gm, example_inputs):
        work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        LinearGeluPass(LinearGeluOptions(enabled=True))(work)
        graphs.append(work)
        return work.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, dynamic=dynamic)(*args)
    return out, graphs


def fused_count(graphs):
    return sum(1 for gm in graphs for n in gm.graph.nodes if n.op == "call_function" and n.target is FUSED)


def gelu_count(graphs):
    return sum(1 for gm in graphs for n in gm.graph.nodes if "gelu" in str(n.target).lower())


class FeedForward(torch.nn.Module):
    """diffusers' ``FeedForward`` shape: ``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim=32, mult=4, approximate="none", bias=True, module_gelu=True):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, dim * mult, bias=bias)
        self.act = torch.nn.GELU(approximate=approximate)
        self.module_gelu = module_gelu
        self.approximate = approximate
        self.fc2 = torch.nn.Linear(dim * mult, dim)

    def forward(self, x):
        h = self.fc1(x)
        h = self.act(h) if self.module_gelu else F.gelu(h, approximate=self.approximate)
        return self.fc2(h)


@pytest.mark.parametrize("module_gelu", [True, False])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_rewrites_linear_then_gelu(module_gelu, rank, counters, assert_close):
    torch.manual_seed(0)
    model = FeedForward(module_gelu=module_gelu).eval()
    x = torch.randn(*(2, 3, 5)[: rank - 1], 32)
    with torch.no_grad():
        out, graphs = run_pass(model, x)
        assert_close(out, model(x), tol=1e-5)
    assert counters["pass"]["linear_gelu"] == 1 and fused_count(graphs) == 1 and gelu_count(graphs) == 0


def test_dynamic_shapes(counters, assert_close):
    torch.manual_seed(0)
    model = FeedForward().eval()
    with torch.no_grad():
        for n in (7, 11):
            x = torch.randn(2, n, 32)
            out, graphs = run_pass(model, x, dynamic=True)
            assert_close(out, model(x), tol=1e-5)
            assert fused_count(graphs) == 1


class TwoUsers(FeedForward):
    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self.act(h)) + h.sum(-1, keepdim=True)


class Relu(FeedForward):
    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class GeluOfSum(FeedForward):
    def forward(self, x):
        return self.fc2(self.act(self.fc1(x) + 1.0))


NEAR_MISSES = {
    # CPU's fused op computes the exact GELU: the tanh approximation is left alone on the CPU
    "tanh-on-cpu": lambda: FeedForward(approximate="tanh"),
    "tanh-on-cpu-functional": lambda: FeedForward(approximate="tanh", module_gelu=False),
    "no-bias": lambda: FeedForward(bias=False),
    "linear-output-used-twice": lambda: TwoUsers(),
    "relu": lambda: Relu(),
    "op-between": lambda: GeluOfSum(),
}


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_leaves_near_misses_alone(name, counters, assert_close):
    torch.manual_seed(0)
    model = NEAR_MISSES[name]().eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, graphs = run_pass(model, x)
        assert_close(out, model(x), tol=1e-6)
    assert counters["pass"]["linear_gelu"] == 0 and fused_count(graphs) == 0


def test_mixed_dtypes_are_left_alone(counters):
    torch.manual_seed(0)
    model = FeedForward().eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, graphs = run_pass(model, x)
        ref = model(x)
    assert counters["pass"]["linear_gelu"] == 0 and fused_count(graphs) == 0
    assert torch.equal(out, ref)


def test_graph_without_metadata_is_left_alone(counters):
    gm = torch.fx.symbolic_trace(FeedForward(module_gelu=False))  # no fake tensors recorded
    assert LinearGeluPass(LinearGeluOptions(enabled=True))(gm) == 0 and counters["pass"]["linear_gelu"] == 0


@pytest.mark.parametrize("enabled, rewrites", [
    (True, 1),  # asked for: CPU graphs too
    (None, 0),  # max-optimize's default: measured to pay on CUDA only, so CPU graphs are left alone
    (False, 0),  # switched off
])
def test_end_to_end_through_inductor_on_the_cpu(enabled, rewrites, captured, counters, assert_close):
    torch.manual_seed(0)
    model = FeedForward().eval()
    x = torch.randn(2, 16, 32)
    options = {"mode": "max-optimize", "linear_gelu.implementation": "fx"}  # this file's form (auto: the matcher's)
    if enabled is not None:
        options["linear_gelu.enabled"] = enabled
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options=options)(x)
        assert_close(out, model(x), tol=1e-5)
    assert captured and counters["backend"]["fallbacks"] == 0
    assert counters["pass"]["linear_gelu"] == rewrites and fused_count(captured) == rewrites
    if rewrites:
        assert gelu_count(captured) == 0


def test_plugin_configuration():
    from nexfort.core.backend import collect_passes
    from nexfort.core.config import resolve_config
    from nexfort.core.plugins import plugin_names

    assert "linear_gelu" in plugin_names()

    def names(**spec):
        return [p.name for p in collect_passes(resolve_config(spec))]

    assert "linear_gelu" in names(mode="max-optimize")
    assert "linear_gelu" not in names(mode="")
    assert "linear_gelu" not in names(mode="max-optimize", options={"linear_gelu.enabled": False})
    assert "linear_gelu" in names(mode="", options={"linear_gelu.enabled": True})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tanh_gelu_in_half_precision(dtype, captured, counters):
    """diffusers' ``GELU(approximate="tanh")`` feed-forward in half precision on CUDA, through Inductor."""
    torch.manual_seed(0)
    model = FeedForward(dim=256, approximate="tanh").cuda().eval()
    half = copy.deepcopy(model).to(dtype)
    x = torch.randn(2, 300, 256, device="cuda")
    with torch.no_grad():
        ref = model(x)
        eager = half(x.to(dtype))
        out = torch.compile(half, backend="nexfort",
                            options={"mode": "max-optimize", "linear_gelu.implementation": "fx"})(x.to(dtype))

    def err(t):
        return float((t.double() - ref.double()).norm() / ref.double().norm())

    assert counters["pass"]["linear_gelu"] == 1 and fused_count(captured) == 1
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert err(out) <= 2 * err(eager) + 1e-3, (err(out), err(eager))
