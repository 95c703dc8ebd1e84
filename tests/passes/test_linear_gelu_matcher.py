"""``linear_gelu`` through Inductor's pattern matcher on the ATen graph (nexfort.passes.linear_gelu_matcher), the
form ``linear_gelu.implementation="auto"`` picks where torch has it; end to end through the nexfort backend on the
CPU (exact GELU there: the tanh form is CUDA's and is left alone on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nexfort.passes import linear_gelu_matcher
from tests.passes.test_linear_gelu import NEAR_MISSES, FeedForward

pytestmark = pytest.mark.skipif(not linear_gelu_matcher.available(),
                                reason=f"torch {torch.__version__}: the matcher form is used from torch 2.13 (it "
                                       "needs post_grad_custom_pre_pass and register_replacement(search_fn_pattern=)"
                                       "; on 2.4 its patterns matched nothing): linear_gelu uses its fx form")

ON = {"mode": "max-optimize", "linear_gelu.enabled": True}


@pytest.fixture
def early_graphs(monkeypatch):
    """The ATen graphs after the matcher pass ran (as text), with Inductor's FX graph cache off so that every
    compile runs the passes."""
    import torch._inductor.config as inductor_config

    graphs = []
    real = linear_gelu_matcher.LinearGeluMatcherPass.apply

    def recording(self, graph):
        count = real(self, graph)
        graphs.append(str(graph))
        return count

    monkeypatch.setattr(linear_gelu_matcher.LinearGeluMatcherPass, "apply", recording)
    with inductor_config.patch(fx_graph_cache=False):
        yield graphs


def _fused(graphs):
    return sum(g.count("aten._addmm_activation") for g in graphs)


class Functional(torch.nn.Module):
    """``F.linear`` + ``F.gelu`` on plain parameters (no modules)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, 16) / 4)
        self.b = torch.nn.Parameter(torch.randn(64))

    def forward(self, x):
        return F.gelu(F.linear(x, self.w, self.b)).sum(-1)


@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("module_gelu", [True, False])
def test_fires_and_matches_eager(rank, module_gelu, early_graphs, counters, assert_close):
    torch.manual_seed(0)
    model = FeedForward(module_gelu=module_gelu).eval()
    x = torch.randn(*(2, 3, 5)[: rank - 1], 32)
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options=ON)(x)
        assert_close(out, model(x), tol=1e-5)
    assert counters["pass"]["linear_gelu"] == 1 and _fused(early_graphs) == 1
    assert "aten.erf" not in early_graphs[-1]  # the GELU is gone from the graph, into the GEMM's epilogue
    assert counters["backend"]["fallbacks"] == 0


def test_functional_spelling(early_graphs, counters, assert_close):
    torch.manual_seed(0)
    model = Functional().eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options=ON)(x)
        assert_close(out, model(x), tol=1e-5)
    assert counters["pass"]["linear_gelu"] == 1 and _fused(early_graphs) == 1


def test_dynamic_shapes_one_graph(early_graphs, counters, assert_close):
    """Two dynamic dims (batch and tokens): matched, and a new size runs the same graph."""
    torch.manual_seed(0)
    model = FeedForward().eval()
    compiled = torch.compile(model, backend="nexfort", options=ON, dynamic=True)
    with torch.no_grad():
        for b, n in ((2, 7), (3, 11), (4, 5)):  # not 1: Dynamo specialises size-1 dims
            x = torch.randn(b, n, 32)
            assert_close(compiled(x), model(x), tol=1e-5)
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["dynamic_graphs"] == 1
    assert counters["pass"]["linear_gelu"] == 1 and _fused(early_graphs) == 1


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_leaves_near_misses_alone(name, early_graphs, counters, assert_close):
    """The hand-written form's near misses (tanh GELU on the CPU, no bias, the linear's output used twice, ReLU, an
    op between): nothing replaced, eager's output."""
    torch.manual_seed(0)
    model = NEAR_MISSES[name]().eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options=ON)(x)
        assert_close(out, model(x), tol=1e-5)
    assert early_graphs, "the matcher pass did not run"
    assert counters["pass"]["linear_gelu"] == 0 and _fused(early_graphs) == 0


def test_cpu_graphs_left_alone_unless_asked(early_graphs, counters, assert_close):
    """max-optimize's default (linear_gelu.enabled unset) rewrites CUDA graphs only (measured to pay there)."""
    torch.manual_seed(0)
    model = FeedForward().eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options={"mode": "max-optimize"})(x)
        assert_close(out, model(x), tol=1e-5)
    assert early_graphs and counters["pass"]["linear_gelu"] == 0 and _fused(early_graphs) == 0


def test_guard_never_raises():
    class Broken:
        @property
        def kwargs(self):
            raise RuntimeError("no kwargs")

    assert linear_gelu_matcher.guard(Broken(), "none", cpu=True) is False
    assert linear_gelu_matcher.guard(type("M", (), {"kwargs": {}})(), "none", cpu=True) is False


def test_implementation_option_picks_the_form():
    from nexfort.core.backend import collect_passes
    from nexfort.core.config import resolve_config
    from nexfort.passes.linear_gelu import LinearGeluPass

    def forms(implementation):
        spec = {"mode": "max-optimize", "options": {"linear_gelu.implementation": implementation}}
        return [type(p) for p in collect_passes(resolve_config(spec)) if p.name == "linear_gelu"]

    assert forms("auto") == [linear_gelu_matcher.LinearGeluMatcherPass]
    assert forms("matcher") == [linear_gelu_matcher.LinearGeluMatcherPass]
    assert forms("fx") == [LinearGeluPass]
    assert linear_gelu_matcher.LinearGeluMatcherPass.stage == "post_grad_early"


def test_fx_form_on_request_still_fires(captured, counters, assert_close):
    torch.manual_seed(0)
    model = FeedForward().eval()
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options={**ON, "linear_gelu.implementation": "fx"})(x)
        assert_close(out, model(x), tol=1e-5)
    assert counters["pass"]["linear_gelu"] == 1
    assert any(n.target is torch._addmm_activation for gm in captured for n in gm.graph.nodes)


def test_bad_implementation_is_a_clear_error():
    from nexfort.core.api import NexfortConfigError
    from nexfort.core.config import resolve_config

    with pytest.raises(NexfortConfigError, match="Unknown linear_gelu.implementation 'matchr'; did you mean "
                                                 "'matcher'\\?.*auto.*fx.*matcher"):
        resolve_config({"mode": "max-optimize", "options": {"linear_gelu.implementation": "matchr"}})


def test_matcher_unavailable_is_a_clear_error(monkeypatch):
    from nexfort.core.api import NexfortConfigError
    from nexfort.core.config import clear_caches, resolve_config

    monkeypatch.setattr(linear_gelu_matcher, "available", lambda: False)
    clear_caches()
    try:
        with pytest.raises(NexfortConfigError, match="'matcher', which needs Inductor's pattern matcher.*'auto' or "
                                                     "'fx'"):
            resolve_config({"mode": "max-optimize", "options": {"linear_gelu.implementation": "matcher"}})
    finally:
        clear_caches()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tanh_gelu_in_half_precision(dtype, early_graphs, counters):
    """diffusers' ``GELU(approximate="tanh")`` feed-forward in half precision on CUDA (max-optimize's default):
    replaced, and no further from the float32 result than eager's half-precision forward."""
    import copy

    torch.manual_seed(0)
    model = FeedForward(dim=256, approximate="tanh").cuda().eval()
    half = copy.deepcopy(model).to(dtype)
    x = torch.randn(2, 300, 256, device="cuda")
    with torch.no_grad():
        ref = model(x)
        eager = half(x.to(dtype))
        out = torch.compile(half, backend="nexfort", options={"mode": "max-optimize"})(x.to(dtype))

    def err(t):
        return float((t.double() - ref.double()).norm() / ref.double().norm())

    assert counters["pass"]["linear_gelu"] == 1 and _fused(early_graphs) == 1
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert err(out) <= 2 * err(eager) + 1e-3, (err(out), err(eager))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_the_cpu(dtype, early_graphs, counters):
    """Half precision: the decomposed GELU runs in float32 between two casts, a pattern of its own (the one CUDA
    graphs have); the output within half-precision rounding of eager's."""
    torch.manual_seed(0)
    model = FeedForward().eval()
    half = FeedForward().to(dtype).eval()
    half.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()})
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        ref = model(x)
        eager = half(x.to(dtype))
        out = torch.compile(half, backend="nexfort", options=ON)(x.to(dtype))
    assert counters["pass"]["linear_gelu"] == 1 and _fused(early_graphs) == 1
    err = float((out.double() - ref.double()).norm() / ref.double().norm())
    err_eager = float((eager.double() - ref.double()).norm() / ref.double().norm())
    assert out.dtype == dtype and err <= 2 * err_eager + 1e-3, (err, err_eager)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tanh_patterns_match(dtype, early_graphs, counters, monkeypatch):
    """The tanh GELU's patterns (CUDA's), matched on a CPU graph by declaring the CPU's fused GELU the tanh one for
    this test (only the match is checked: the CPU's fused op computes the exact GELU)."""
    monkeypatch.setattr(linear_gelu_matcher, "APPROXIMATE", {"cpu": "tanh"})
    torch.manual_seed(0)
    model = FeedForward(approximate="tanh").to(dtype).eval()
    with torch.no_grad():
        torch.compile(model, backend="nexfort", options=ON)(torch.randn(2, 9, 32, dtype=dtype))
    assert counters["pass"]["linear_gelu"] == 1 and _fused(early_graphs) == 1
    assert "aten.tanh" not in early_graphs[-1]
