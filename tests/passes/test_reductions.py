"""The ``reductions`` plugin (nexfort-passes): persistent row reductions up to ``options.reductions.persistent_max``.

CPU: the option's validation, one class per limit (picklable by name, its own ``uuid``: the FX-graph cache key),
the heuristic itself on stand-in features, and that the handler and config are installed only during nexfort's
compile. GPU: a LayerNorm over 1152 columns becomes a persistent Triton reduction (Inductor's default: looped), a
row wider than the limit stays looped, and both give eager's output.
"""

from __future__ import annotations

import pickle
import types

import pytest
import torch

from nexfort.core import compat
from nexfort.passes import reductions

MISSING = reductions.missing_pieces()
needs_choices = pytest.mark.skipif(bool(MISSING), reason=f"torch {torch.__version__} lacks {', '.join(MISSING)} "
                                   "(Inductor's choices handler, torch 2.6+): the option is refused there")


def test_option_refused_where_torch_lacks_the_choices_handler(monkeypatch):
    """On a torch without the pieces the option is a configuration error naming them, before anything compiles;
    where they exist it is accepted."""
    model, x = torch.nn.LayerNorm(8), torch.randn(2, 8)
    opts = {"options": {"reductions": {"persistent_max": 4096}}}
    monkeypatch.setattr(reductions, "missing_pieces", lambda: ["torch._inductor.choices.InductorChoices"])
    with pytest.raises(Exception, match=r"persistent_max' \(4096\) needs Inductor's choices handler .*lacks "
                                        r"torch._inductor.choices.InductorChoices"):
        torch.compile(model, backend="nexfort", options=opts)(x)
    monkeypatch.undo()
    torch._dynamo.reset()
    if not MISSING:
        assert torch.allclose(torch.compile(model, backend="nexfort", options=opts)(x), model(x), atol=1e-5)


@needs_choices
def test_one_class_per_limit_picklable_by_name():
    a, b = reductions.choices_class(4096), reductions.choices_class(8192)
    assert a is reductions.choices_class(4096) and a is not b
    assert pickle.loads(pickle.dumps(a)) is a
    assert a().uuid() != b().uuid()


def test_bad_limit_is_an_error_naming_the_range():
    with pytest.raises(Exception, match=r"reductions.persistent_max' must be 0 .* or between 1024 and 65536.*got 7"):
        torch.compile(torch.nn.LayerNorm(8), backend="nexfort",
                      options={"options": {"reductions": {"persistent_max": 7}}})(torch.randn(2, 8))


@needs_choices
def test_heuristic_on_stand_in_features(monkeypatch):
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    cls = reductions.choices_class(8192)
    graph = types.SimpleNamespace(sizevars=types.SimpleNamespace(statically_known_leq=lambda a, b: a <= b))

    def features(n, hint=ReductionHint.INNER):
        return types.SimpleNamespace(reduction_numel=n, get_reduction_hint=lambda: hint)

    with V.set_graph_handler(graph):
        assert cls.should_use_persistent_reduction(features(1152), False)
        assert cls.should_use_persistent_reduction(features(8192), False)
        # near misses: wider than the limit, or a cooperative reduction: Inductor's own rule decides (looped here)
        base = torch._inductor.choices.InductorChoices.should_use_persistent_reduction
        calls = []
        monkeypatch.setattr(torch._inductor.choices.InductorChoices, "should_use_persistent_reduction",
                            staticmethod(lambda f, c: calls.append(f.reduction_numel) or False))
        assert not cls.should_use_persistent_reduction(features(16384), False)
        assert not cls.should_use_persistent_reduction(features(1152), True)
        assert calls == [16384, 1152] and base is not None


@needs_choices
def test_installed_only_while_nexfort_compiles(monkeypatch):
    from torch._inductor import config as inductor_config
    from torch._inductor.virtualized import V

    seen = []
    real = compat.compile_fx

    def recording(gm, example_inputs, patches, *args, **kwargs):
        seen.append((type(V.choices).__name__, patches.get("inductor_choices_class")))
        return real(gm, example_inputs, patches, *args, **kwargs)

    monkeypatch.setattr(compat, "compile_fx", recording)
    model, x = torch.nn.LayerNorm(1152), torch.randn(4, 1152)
    torch._dynamo.reset()
    out = torch.compile(model, backend="nexfort", options={"options": {"reductions": {"persistent_max": 4096}}})(x)
    assert seen == [("PersistentReductionsUpTo4096", reductions.choices_class(4096))]
    assert torch.allclose(out, model(x), atol=1e-5)
    assert type(V.choices).__name__ == "InductorChoices" and inductor_config.inductor_choices_class is None
    seen.clear()
    torch._dynamo.reset()
    torch.compile(model, backend="nexfort")(x)  # off by default
    assert seen == [("InductorChoices", None)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton reductions)")
@needs_choices
@pytest.mark.parametrize("width,persistent", [(1152, True), (16384, False)])
def test_gpu_layer_norm_kernel_kind(width, persistent):
    from torch._inductor.utils import run_and_get_code

    model = torch.nn.LayerNorm(width).cuda().half()
    x = torch.randn(512, width, device="cuda", dtype=torch.float16)
    torch._dynamo.reset()
    out, code = run_and_get_code(torch.compile(model, backend="nexfort",
                                               options={"options": {"reductions": {"persistent_max": 8192}}}), x)
    src = "\n".join(code)
    assert ("triton_per_" in src) == persistent and ("triton_red_" in src) == (not persistent)
    ref = torch.nn.functional.layer_norm(x.float(), (width,), model.weight.float(), model.bias.float())
    assert float((out.float() - ref).norm() / ref.norm()) < 2e-3
