"""nexfort.core.compat: torch's differences told by feature detection. What other tests do not reach already
(upsampling probe: tests/diffusers; dynamic recompiles: test_late_options; backend flags under Dynamo:
test_backend), checked without compiling."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from nexfort.core import compat


def test_inductor_values_take_the_running_torchs_types():
    from omegaconf import OmegaConf

    tuple_keys = [k for k, v in compat.inductor_config_defaults().items() if isinstance(v, tuple)]
    assert tuple_keys, "this torch's Inductor has no tuple-valued knob to check against"
    assert compat.inductor_value(tuple_keys[0], ["a", "b"]) == ("a", "b")  # JSON/YAML have no tuples
    assert compat.inductor_value("max_autotune", [1]) == [1]  # not a tuple knob: left as it is
    nested = OmegaConf.create({"a": [1, {"b": 2}]})
    assert compat.inductor_value("no_such_knob", nested) == {"a": [1, {"b": 2}]}
    assert type(compat.inductor_value("no_such_knob", nested)) is dict


def test_every_knob_said_to_be_newer_exists_from_that_torch_on():
    for key, since in compat.INDUCTOR_KNOB_SINCE.items():
        if torch.__version__ >= since:
            assert compat.has_inductor_knob(key), f"{key} (since {since}) is missing in torch {torch.__version__}"
    assert not compat.has_inductor_knob("no_such_knob")


def test_post_grad_pass_is_keyed_on_its_uuid():
    seen = []
    first = compat.make_post_grad_pass(seen.append, "uuid-a")
    graph = torch.fx.Graph()
    first(graph)
    assert seen == [graph]
    if compat.has_custom_graph_pass():  # torch 2.6+: Inductor asks the pass for its uuid
        from torch._inductor.custom_graph_pass import CustomGraphPass

        assert isinstance(first, CustomGraphPass) and first.uuid() == "uuid-a"
    else:  # torch 2.2-2.5: the pass is pickled into the cache key; it pickles as its uuid
        other = compat.make_post_grad_pass(seen.append, "uuid-b")
        assert pickle.loads(pickle.dumps(first)) == "nexfort-post-grad-pass-uuid-a"
        assert pickle.dumps(first) != pickle.dumps(other)


def test_backend_flags_are_restored_exactly():
    names = [n for n in compat.backend_flag_names() if compat.has_backend_flag(n)]
    assert "conv_benchmark" in names
    before = {n: compat.get_backend_flag(n) for n in names}
    with compat.backend_flags({n: not v for n, v in before.items()}):
        assert {n: compat.get_backend_flag(n) for n in names} == {n: not v for n, v in before.items()}
    assert {n: compat.get_backend_flag(n) for n in names} == before
    old = compat.set_backend_flag("conv_benchmark", not before["conv_benchmark"])
    try:
        assert old is before["conv_benchmark"] and compat.get_backend_flag("conv_benchmark") is (not old)
    finally:
        compat.set_backend_flag("conv_benchmark", old)
    with pytest.raises(KeyError):
        compat.get_backend_flag("no_such_flag")


def test_mark_dynamic_takes_bounds_where_torch_does():
    t = torch.randn(4, 6)
    compat.mark_dynamic(t, 1, min=2, max=64)
    assert 1 in getattr(t, "_dynamo_dynamic_indices", set())


def test_sdpa_kernel_selects_the_math_backend():
    try:
        from torch.nn.attention import SDPBackend

        math_backend = SDPBackend.MATH
    except ImportError:  # torch < 2.3: the older API, told by name
        math_backend = "MATH"
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    with compat.sdpa_kernel([math_backend]):
        out = F.scaled_dot_product_attention(q, k, v)
    ref = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_inductor_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "here"))
    assert compat.inductor_cache_dir() == str(tmp_path / "here")
    assert not (tmp_path / "here").exists()  # not created
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert os.path.isabs(compat.inductor_cache_dir())


def test_only_dynamos_signals_pass_through_a_backend():
    import torch._dynamo.exc as exc

    passing = compat.dynamo_control_flow_exceptions()
    assert exc.SkipFrame in passing and exc.RestartAnalysis in passing
    assert not issubclass(exc.BackendCompilerFailed, passing)  # a compiler failure: fallen back from


def test_no_dynamic_recompile_outside_dynamo():
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    assert compat.request_dynamic_recompile(gm) is None
