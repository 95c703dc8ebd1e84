"""``compiler.on_error``: a graph that fails to compile runs eagerly with one warning (``"fallback"``, the default) or
raises (``"raise"``), whatever fails: nexfort's passes, Inductor's lowering, the C++ compiler. Only Dynamo's own
signals (restart the analysis, skip the frame) go through the backend untouched."""

from __future__ import annotations

import pytest
import torch

from nexfort.core import GraphPass, get_plugin_manager, hookimpl


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """nexfort warns once per process and kind of failure: each test starts with none warned yet."""
    from nexfort.core import backend

    monkeypatch.setattr(backend, "_warned", set())


def _model(x, w):
    return torch.relu(x @ w) + 1


class _BrokenPostGradPass(GraphPass):
    """Raises inside Inductor (on the ATen graph), where Inductor wraps it into its own error."""

    name = "broken_post_grad_for_test"
    stage = "post_grad"

    def apply(self, graph):
        raise RuntimeError("deliberately broken post-grad pass")


class _BrokenPostGradPlugin:
    @hookimpl
    def nexfort_graph_passes(self, config):
        return [_BrokenPostGradPass()]


@pytest.fixture
def broken_post_grad():
    pm = get_plugin_manager()
    plugin = _BrokenPostGradPlugin()
    pm.register(plugin, name="broken-post-grad-for-test")
    yield {}
    pm.unregister(plugin)


@pytest.fixture
def bogus_gemm_backends():
    # Inductor's GEMM lowering finds no kernel to choose (NoValidChoicesError / "No choices to select")
    knobs = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "BOGUS"}
    torch._dynamo.reset()
    try:  # plain Inductor first: where it takes these knobs without failing, there is no failure to fall back from
        torch.compile(torch.nn.Linear(8, 8), backend="inductor", options=knobs)(torch.randn(4, 8))
    except Exception:  # noqa: BLE001 - the failure the test is about
        pass
    else:
        pytest.skip(f"torch {torch.__version__}'s CPU Inductor compiles a linear layer with "
                    "max_autotune_gemm_backends='BOGUS' without failing (no GEMM template choice on the CPU)")
    finally:
        torch._dynamo.reset()
    return {f"inductor.{k}": v for k, v in knobs.items()}


@pytest.fixture
def missing_cxx():
    # Inductor's C++ backend cannot find its compiler (InvalidCxxCompiler)
    return {"inductor.cpp.cxx": ["/nonexistent/bin/c++-for-nexfort-test"]}


FAILURES = ["bogus_gemm_backends", "missing_cxx", "broken_post_grad"]


@pytest.mark.parametrize("failure", FAILURES)
def test_a_real_compiler_failure_falls_back_with_one_warning(failure, request, counters, assert_close):
    options = request.getfixturevalue(failure)
    fn = torch.compile(_model, backend="nexfort", options=options)
    x, w = torch.randn(8, 8), torch.randn(8, 8)
    with pytest.warns(UserWarning, match="running that graph eagerly") as record:
        out = fn(x, w)
        out2 = fn(x, w)  # the eager graph stays installed: no second compile, no second warning
    assert len([r for r in record if "nexfort" in str(r.message)]) == 1
    assert_close(out, _model(x, w), tol=1e-6)
    assert_close(out2, _model(x, w), tol=1e-6)
    assert counters["backend"]["fallbacks"] == 1
    assert counters["backend"]["graphs"] == 0


@pytest.mark.parametrize("failure", FAILURES)
def test_a_real_compiler_failure_raises_with_on_error_raise(failure, request):
    options = {**request.getfixturevalue(failure), "compiler.on_error": "raise"}
    fn = torch.compile(_model, backend="nexfort", options=options)
    with pytest.raises(Exception) as e:
        fn(torch.randn(8, 8), torch.randn(8, 8))
    assert "NexfortConfigError" not in type(e.value).__name__


def test_dynamos_control_flow_exceptions_are_its_signals_only():
    """Let through: RestartAnalysis and SkipFrame (and their subclasses). Never the failure kinds, which torch 2.13
    also derives from TorchDynamoException (InductorError < BackendCompilerFailed < ShortenTraceback)."""
    import torch._dynamo.exc as exc

    from nexfort.core import compat

    signals = compat.dynamo_control_flow_exceptions()
    assert exc.RestartAnalysis in signals and exc.SkipFrame in signals
    assert not issubclass(exc.BackendCompilerFailed, signals)
    assert not issubclass(exc.TorchDynamoException, signals)
    try:
        from torch._inductor.exc import InductorError  # newer torch only
    except ImportError:
        InductorError = None
    if InductorError is not None:
        assert not issubclass(InductorError, signals)


class _SkipFramePass(GraphPass):
    name = "skip_frame_for_test"
    stage = "pre_grad"

    def apply(self, gm):
        raise torch._dynamo.exc.SkipFrame("a backend asks Dynamo to run this frame eagerly")


class _SkipFramePlugin:
    @hookimpl
    def nexfort_graph_passes(self, config):
        return [_SkipFramePass()]


def test_skip_frame_from_inside_the_backend_reaches_dynamo(counters, assert_close):
    pm = get_plugin_manager()
    plugin = _SkipFramePlugin()
    pm.register(plugin, name="skip-frame-for-test")
    try:
        fn = torch.compile(_model, backend="nexfort")
        x, w = torch.randn(4, 4), torch.randn(4, 4)
        assert_close(fn(x, w), _model(x, w), tol=1e-6)
    finally:
        pm.unregister(plugin)
    assert counters["backend"]["fallbacks"] == 0  # not taken for a compile failure
    from nexfort.core import compat

    # torch 2.1's Dynamo cannot skip a frame from a backend: the graph runs eagerly instead (newer: Dynamo skips it)
    assert counters["backend"]["eager_graphs"] == (0 if compat.dynamo_passes_skip_frame() else 1)


def test_list_valued_inductor_knob_reaches_inductor_as_plain_python(counters, assert_close, monkeypatch):
    """``inductor.cpp.cxx`` given as its own default (a list in JSON/YAML, a tuple in Inductor) compiles, and what
    Inductor receives is plain Python: no OmegaConf container (which it can neither use nor pickle into its FX graph
    cache key), a tuple where its default is a tuple."""
    import pickle

    from nexfort.core import backend, compat
    from nexfort.core.config import resolve_config

    default = compat.inductor_config_defaults()["cpp.cxx"]
    patches = backend.inductor_patches(resolve_config({"options": {"inductor.cpp.cxx": list(default)}}))
    assert patches["cpp.cxx"] == default and type(patches["cpp.cxx"]) is type(default)
    pickle.dumps(patches["cpp.cxx"])
    fn = torch.compile(_model, backend="nexfort", options={"inductor.cpp.cxx": list(default)})
    x, w = torch.randn(8, 8), torch.randn(8, 8)
    assert_close(fn(x, w), _model(x, w), tol=1e-5)
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["fallbacks"] == 0


@pytest.mark.parametrize("options", [
    {"inductor.pre_grad_fusion_options": {"batch_linear": {}}},
    {"inductor": {"pre_grad_fusion_options": {"batch_linear": {}}}},
])
def test_mapping_valued_inductor_knob_is_one_value_and_reaches_inductor_as_a_dict(options):
    from nexfort.core import backend, compat
    from nexfort.core.config import resolve_config

    if not isinstance(compat.inductor_config_defaults().get("pre_grad_fusion_options"), dict):
        pytest.skip("this torch's Inductor has no mapping-valued pre_grad_fusion_options")
    patches = backend.inductor_patches(resolve_config({"options": options}))
    assert patches["pre_grad_fusion_options"] == {"batch_linear": {}}
    assert type(patches["pre_grad_fusion_options"]) is dict
    assert type(patches["pre_grad_fusion_options"]["batch_linear"]) is dict
