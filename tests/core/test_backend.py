"""The backend end to end on small diffusers models, on the CPU through Inductor's C++ backend."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from nexfort.compilers import nexfort_compile
from nexfort.core import GraphPass, get_plugin_manager, hookimpl
from nexfort.core.errors import NexfortConfigError

from .models import pixart_inputs, tiny_pixart, tiny_unet, unet_inputs


@pytest.mark.parametrize("mode", ["", "jit:disable-runtime-fusion", "max-autotune:low-precision", "O3"])
def test_pixart_transformer_matches_eager(mode, counters, assert_close):
    model = tiny_pixart()
    inputs = pixart_inputs()
    with torch.no_grad():
        ref = model(**inputs)[0]
        compiled = torch.compile(model, backend="nexfort", options={"mode": mode})
        out = compiled(**inputs)[0]
    assert_close(out, ref, tol=1e-4)
    assert counters["backend"]["graphs"] >= 1
    assert counters["backend"]["fallbacks"] == 0


def test_unet_freezing_channels_last_matches_eager(counters, assert_close):
    model = tiny_unet()
    inputs = unet_inputs()
    with torch.no_grad():
        ref = model(**inputs)[0]
        compiled = nexfort_compile(model, mode="freezing:benchmark", memory_format="channels_last")
        out = compiled(**inputs)[0]
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, ref, tol=1e-4)
    assert counters["backend"]["fallbacks"] == 0


def test_nexfort_compile_dynamic_serves_new_batch_sizes_without_recompiling(counters, assert_close):
    # (new resolutions of diffusers' PixArt still recompile once: its PatchEmbed guards on the size; issue 6)
    model = tiny_pixart()
    compiled = nexfort_compile(model, mode="jit", dynamic=True)
    with torch.no_grad():
        for batch in (2, 3, 5):
            inputs = pixart_inputs(batch=batch, seed=batch)
            assert_close(compiled(**inputs)[0], model(**inputs)[0], tol=1e-4)
    assert counters["backend"]["graphs"] == 1
    assert counters["backend"]["dynamic_graphs"] == 1


def test_bad_options_fail_before_compiling(counters):
    model = tiny_pixart()
    with pytest.raises(NexfortConfigError, match="did you mean 'max-autotune'"):
        nexfort_compile(model, mode="max-autotun")
    with pytest.raises(Exception, match="Unknown mode flag 'max-autotun'"):
        torch.compile(model, backend="nexfort", options={"mode": "max-autotun"})(**pixart_inputs())
    assert counters["backend"]["graphs"] == 0


class _BrokenPass(GraphPass):
    name = "broken_for_test"
    stage = "pre_grad"

    def apply(self, gm):
        raise RuntimeError("deliberately broken pass")


class _BrokenPlugin:
    @hookimpl
    def nexfort_graph_passes(self, config):
        return [_BrokenPass()]


@pytest.fixture
def broken_plugin():
    pm = get_plugin_manager()
    plugin = _BrokenPlugin()
    pm.register(plugin, name="broken-for-test")
    yield
    pm.unregister(plugin)


def test_failed_graph_falls_back_to_eager_with_one_warning(broken_plugin, counters, assert_close):
    fn = torch.compile(lambda x: torch.relu(x) * 2, backend="nexfort")
    x = torch.randn(5)
    with pytest.warns(UserWarning, match="running that graph eagerly") as record:
        out = fn(x)
    assert len([w for w in record if "nexfort" in str(w.message)]) == 1
    assert_close(out, torch.relu(x) * 2, tol=0)
    assert counters["backend"]["fallbacks"] == 1
    assert counters["backend"]["graphs"] == 0


def test_on_error_raise(broken_plugin):
    fn = torch.compile(lambda x: x + 1, backend="nexfort", options={"options": {"compiler.on_error": "raise"}})
    with pytest.raises(Exception, match="deliberately broken pass"):
        fn(torch.randn(3))


def test_feature_without_a_plugin_is_an_error_not_ignored(monkeypatch):
    import pluggy

    from nexfort.core import backend, hookspecs, plugins
    from nexfort.core.config import resolve_config

    cfg = resolve_config({"mode": "max-optimize"})  # a flag of core's that only plugin code implements
    empty = pluggy.PluginManager("nexfort")
    empty.add_hookspecs(hookspecs)
    monkeypatch.setattr(plugins, "get_plugin_manager", lambda: empty)
    with pytest.raises(NexfortConfigError, match="Mode flag 'max-optimize' is on but no installed nexfort plugin "
                                                 r"implements it \(loaded plugins: none\)"):
        backend.check_features(cfg)


def test_overrides_set_torch_flags():
    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        torch.compile(lambda x: x * 3, backend="nexfort", options={"mode": "benchmark"})(torch.randn(2))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = old


def test_dynamo_guarded_overrides_apply_to_the_compiled_graph(monkeypatch, counters, assert_close):
    """Matmul TF32: compiled and run under the override. Where Dynamo's global-state guard covers it (2.2+) it is
    never changed mid-trace (2.2-2.4 would fail the frame, newer torch would silently undo it) and the process's
    value is left alone; torch 2.1 has no such guard and sets it process-wide, like the cuDNN flags."""
    from nexfort.core import compat

    guarded = compat.dynamo_guards_backend_flag("matmul_allow_tf32")
    seen = []
    real = compat.compile_fx

    def spy(*args, **kwargs):
        seen.append(("compile", compat.get_backend_flag("matmul_allow_tf32")))
        compiled = real(*args, **kwargs)

        def run(*a, **k):
            seen.append(("run", compat.get_backend_flag("matmul_allow_tf32")))
            return compiled(*a, **k)

        run._boxed_call = getattr(compiled, "_boxed_call", False)
        return run

    monkeypatch.setattr(compat, "compile_fx", spy)
    before = compat.get_backend_flag("matmul_allow_tf32")
    fn = torch.compile(lambda x: x @ x + 1, backend="nexfort",
                       options={"overrides.matmul_allow_tf32": not before})
    x = torch.randn(4, 4)
    for _ in range(3):
        assert_close(fn(x), x @ x + 1, tol=1e-5)
    if guarded:
        assert compat.get_backend_flag("matmul_allow_tf32") == before  # the process's value is left alone
    else:
        compat.set_backend_flag("matmul_allow_tf32", before)
    assert seen == [("compile", not before)] + [("run", not before)] * 3
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["fallbacks"] == 0


def test_tf32_override_keeps_torchs_legacy_and_new_precision_apis_in_agreement():
    """While nexfort's TF32 override is on, every way torch (and Inductor's GEMM autotuning) reads the matmul
    precision answers, and answers the same: on torch with the ``fp32_precision`` API, setting only that API made
    ``torch.get_float32_matmul_precision()`` raise ("mix of the legacy and new APIs"), which failed
    ``max-autotune:low-precision`` compiles on the H100."""
    from nexfort.core import compat

    before = torch.get_float32_matmul_precision()
    for value in (True, False):
        with compat.backend_flags({"matmul_allow_tf32": value}):
            assert compat.get_backend_flag("matmul_allow_tf32") is value
            assert torch.get_float32_matmul_precision() == ("high" if value else "highest")
            assert torch.backends.cuda.matmul.allow_tf32 is value
            # (compat's hasattr: torch 2.1's cuBLAS module raises AssertionError for an unknown attribute)
            if compat._safe_hasattr(torch.backends.cuda.matmul, "fp32_precision"):
                assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if value else "ieee")
        assert torch.get_float32_matmul_precision() == before


def test_graph_rewritten_by_pre_grad_passes_keeps_dynamos_metadata(monkeypatch, counters, assert_close):
    """max-optimize's pre_grad passes rewrite a copy of Dynamo's graph module. The copy must keep what Dynamo
    attached to the original: AOTAutograd reads ``meta["dynamo_compile_id"]`` and ``_param_name_to_source`` to mark
    the parameters as static inputs; without them a CUDA graph copied every weight on every replay (H100)."""
    from nexfort.core import backend, compat
    from nexfort.core.config import resolve_config

    originals, compiled_gms = [], []

    def spy_backend(gm, example_inputs):
        originals.append((dict(gm.meta), getattr(gm, "_param_name_to_source", None)))
        return backend.compile_graph(gm, example_inputs, resolve_config({"mode": "max-optimize"}))

    real = compat.compile_fx
    monkeypatch.setattr(compat, "compile_fx", lambda gm, *a, **k: compiled_gms.append(gm) or real(gm, *a, **k))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert_close(torch.compile(m, backend=spy_backend)(x), m(x), tol=1e-5)
    (meta, sources), (gm,) = originals[0], compiled_gms
    assert sources  # what Dynamo handed over ...
    if "dynamo_compile_id" in meta:  # (torch 2.1-2.4's Dynamo attaches no compile id to the graph module)
        assert gm.meta.get("dynamo_compile_id") == meta["dynamo_compile_id"]  # ... reaches Inductor with the copy
    assert gm._param_name_to_source is sources
    assert all(hasattr(n, "_dynamo_source") for n in gm.graph.nodes if n.op == "placeholder")
    assert counters["backend"]["fallbacks"] == 0 and counters["backend"]["graphs"] == 1


def test_backend_is_found_through_its_entry_point_without_importing_nexfort():
    code = ("import sys, torch\n"
            "f = torch.compile(lambda x: x.cos() * 2, backend='nexfort', options={'mode': 'jit'})\n"
            "x = torch.randn(4)\n"
            "assert torch.allclose(f(x), x.cos() * 2)\n"
            "assert 'nexfort.core.backend' in sys.modules\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"


def test_no_warning_on_clean_compile(counters):
    """A graph nexfort compiles without trouble gives eager's result, through nexfort, and not one warning."""
    x = torch.randn(3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = torch.compile(lambda t: t * 2 + 1, backend="nexfort", options={"mode": "jit"})(x)
    assert torch.allclose(out, x * 2 + 1)
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["fallbacks"] == 0
    assert [str(w.message) for w in record if issubclass(w.category, UserWarning)] == []


class _PowerOfTwoAligned(torch.nn.Module):
    """The SDXL UNet's check, reduced: ``2 ** self.n`` of an int attribute (a symbol under dynamic=True on torch
    2.4, whose guard code then called an undefined ``PowByNatural`` and failed on every call)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 2
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.lin(x)
        if x.shape[-2] % (2 ** self.n) != 0:  # (no any(<generator>): a graph break on torch 2.1)
            return y + 1
        return y * 2


def test_symbolic_power_guards_do_not_recompile_every_call(counters, assert_close):
    """The guards' namespace lacks functions of torch's sympy layer (torch 2.4: PowByNatural): the backend adds them
    while Dynamo compiles (the patch torch.guard_namespace), the guards keep their copy, the frame compiles once,
    and the namespace is torch's own again after every compilation."""
    from torch._dynamo.utils import counters as dynamo_counters
    from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

    from nexfort.core import patches, torch_patches

    missing = sorted(torch_patches.missing_guard_names())
    before = dict(SYMPY_INTERP)
    seen = []

    class Spy:  # a plugin that looks at the namespace while the backend compiles
        @hookimpl
        def nexfort_post_compile(self, gm, example_inputs, config, compiled):
            seen.append(sorted(n for n in missing if n in SYMPY_INTERP))

    pm = get_plugin_manager()
    pm.register(Spy(), name="guard-namespace-spy")
    try:
        model = _PowerOfTwoAligned().eval()
        compiled = nexfort_compile(model, mode="jit", dynamic=True)
        g0 = dynamo_counters["stats"]["unique_graphs"]
        with torch.no_grad():
            for i, rows in enumerate((12, 12, 20, 12)):
                x = torch.randn(3, rows, 8, generator=torch.Generator().manual_seed(i))
                assert_close(compiled(x), model(x), tol=1e-5)
                assert SYMPY_INTERP == before and not patches.is_applied(torch_patches.GUARD_NAMESPACE)
    finally:
        pm.unregister(name="guard-namespace-spy")
    assert dynamo_counters["stats"]["unique_graphs"] - g0 == 1
    assert seen and all(names == missing for names in seen)  # applied during each compilation


class _AfterFirstCallPlugin:
    def __init__(self, fail: bool) -> None:
        self.calls, self.fail = 0, fail

    @hookimpl
    def nexfort_post_compile(self, gm, example_inputs, config, compiled):
        def after_first_call():
            self.calls += 1
            if self.fail:
                raise RuntimeError("deliberately failing follow-up")

        return after_first_call


@pytest.mark.parametrize("fail", [False, True])
def test_post_compile_follow_up_runs_once_after_the_first_call(fail, assert_close):
    """A plugin's nexfort_post_compile may return a function core calls once after the graph's first call (a
    cache stores the autotuning that call recorded); its failure is one warning, never the caller's error."""
    pm = get_plugin_manager()
    plugin = _AfterFirstCallPlugin(fail)
    pm.register(plugin, name="after-first-call-test")
    try:
        torch._dynamo.reset()
        fn = torch.compile(lambda x: torch.tanh(x) * 3 + (1 if fail else 2), backend="nexfort")
        x = torch.randn(6)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            outs = [fn(x) for _ in range(3)]
        for out in outs:
            assert_close(out, torch.tanh(x) * 3 + (1 if fail else 2), tol=1e-6)
        assert plugin.calls == 1
        failed = [w for w in record if "after-first-call step failed" in str(w.message)]
        assert len(failed) == (1 if fail else 0)
    finally:
        pm.unregister(plugin)
        torch._dynamo.reset()
