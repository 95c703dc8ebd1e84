"""``dynamic``/``fullgraph`` given in ``torch.compile(backend="nexfort", options={...})`` (the README's first
example), where Dynamo has decided both before the backend sees a graph."""

from __future__ import annotations

import warnings

import pytest
import torch

# every step changes a different dimension: Dynamo's automatic dynamic shapes alone recompile at each of the first
# two changes (dimension 0, then dimension 1), three graphs in all
SHAPES = [(2, 3, 8), (3, 3, 8), (3, 5, 8), (4, 6, 8), (6, 2, 8)]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    from nexfort.core import backend

    monkeypatch.setattr(backend, "_warned", set())


@pytest.fixture
def no_inductor(monkeypatch):
    """The backend's decisions without Inductor's compile time: the graph runs as Dynamo captured it."""
    from nexfort.core import compat

    monkeypatch.setattr(compat, "compile_fx", lambda gm, *args, **kwargs: gm.forward)


def _run_grid(compiled, model):
    with torch.no_grad():
        for i, shape in enumerate(SHAPES):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(i))
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_dynamic_true_in_options_recompiles_at_most_once_over_a_grid_of_shapes(counters):
    model = _model()
    compiled = torch.compile(model, backend="nexfort", options={"dynamic": True})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _run_grid(compiled, model)
    unable = [w for w in record if "gives a backend no way" in str(w.message)]
    if unable:  # a torch without the API (see compat.request_dynamic_recompile): said so precisely, once
        assert len(unable) == 1 and "torch.compile(m, backend='nexfort', dynamic=True)" in str(unable[0].message)
        return
    assert counters["backend"]["graphs"] <= 2, dict(counters["backend"])  # the static first graph + one dynamic
    assert counters["backend"]["dynamic_graphs"] == 1
    assert counters["backend"]["fallbacks"] == 0
    assert not [w for w in record if "nexfort" in str(w.message)]


def test_without_dynamic_the_same_grid_recompiles_per_changed_dimension(counters, no_inductor):
    """What the option changes: without it, the grid above costs more than one recompile."""
    model = _model()
    _run_grid(torch.compile(model, backend="nexfort"), model)
    assert counters["backend"]["graphs"] >= 3


def test_dynamic_true_given_to_torch_compile_itself_compiles_one_graph(counters, no_inductor):
    model = _model()
    _run_grid(torch.compile(model, backend="nexfort", dynamic=True, options={"dynamic": True}), model)
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["dynamic_graphs"] == 1


def test_the_frame_state_change_is_forgotten_by_dynamo_reset(counters, no_inductor):
    model = _model()
    _run_grid(torch.compile(model, backend="nexfort", options={"dynamic": True}), model)
    torch._dynamo.reset()
    counters.clear()
    _run_grid(torch.compile(model, backend="nexfort"), model)
    assert counters["backend"]["graphs"] >= 3  # no dynamic request left behind for a later compile


@pytest.mark.parametrize("options, words", [
    ({"dynamic": False}, ["{'dynamic': False} cannot be applied by a backend",
                          "torch.compile(m, backend='nexfort', dynamic=False)"]),
    ({"fullgraph": True}, ["{'fullgraph': True} cannot be applied by a backend", "graph breaks",
                           "torch.compile(m, backend='nexfort', fullgraph=True)"]),
])
def test_what_a_backend_cannot_apply_is_explained_once(options, words, no_inductor):
    fn = torch.compile(lambda x: x.sin() + 1, backend="nexfort", options=options)
    with pytest.warns(UserWarning) as record:
        fn(torch.randn(3))
        fn(torch.randn(3))
    messages = [str(w.message) for w in record if "nexfort" in str(w.message)]
    assert len(messages) == 1
    for w in words:
        assert w in messages[0], messages[0]


def test_dynamic_true_in_options_says_when_dynamo_will_not_listen(no_inductor):
    """With Dynamo's automatic dynamic shapes off, no backend can make a recompile dynamic: said precisely.
    (torch's own config.patch: pytest's monkeypatch deletes a torch config entry when it undoes.)"""
    # (created inside the patch too: torch < 2.3 compiles under the config saved when torch.compile was called)
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        fn = torch.compile(lambda x: x.sin() + 1, backend="nexfort", options={"dynamic": True})
        with pytest.warns(UserWarning, match="automatic_dynamic_shapes is off") as record:
            fn(torch.randn(3))
    assert torch._dynamo.config.automatic_dynamic_shapes is True
    message = str([w for w in record if "nexfort" in str(w.message)][0].message)
    assert "torch.compile(m, backend='nexfort', dynamic=True)" in message


def test_the_older_torch_frame_state_layout_is_marked_too(monkeypatch):
    """torch 2.1-2.5 keep automatic-dynamic state as ``tx.output.frame_state[name].size``, a list in which ``None``
    marks a dynamic dimension (no ``torch._dynamo.pgo``). Exercised on any torch with that layout simulated: the
    caller's tensors are marked in every dimension, the module's parameters and non-tensors are not."""
    import types

    from torch._dynamo import symbolic_convert

    from nexfort.core import compat

    class Source:
        def __init__(self, name, nn_module=False):
            self._name, self._nn = name, nn_module

        def name(self):  # a method on older torch
            return self._name

        def guard_source(self):
            return types.SimpleNamespace(is_nn_module=lambda: self._nn)

    gm = torch.fx.symbolic_trace(lambda x, w, n: x * n + w.sum())
    args = {"x": (Source("L['x']"), torch.randn(2, 3)), "w": (Source("L['self'].w", True), torch.randn(3)),
            "n": (Source("L['n']"), 3)}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            source, example = args[node.target]
            node.meta["grapharg"] = types.SimpleNamespace(source=source, example=example)
    frame_state = {"_id": 0, "L['x']": types.SimpleNamespace(size=[2, 3]),
                   "L['self'].w": types.SimpleNamespace(size=[3])}
    tx = types.SimpleNamespace(output=types.SimpleNamespace(frame_state=frame_state))
    monkeypatch.setattr(torch._dynamo, "pgo", None, raising=False)  # `from torch._dynamo import pgo` -> None
    # (raising=False: torch 2.1 has no current_tx at all, and compat then reports no way to mark; simulated here)
    monkeypatch.setattr(symbolic_convert.InstructionTranslator, "current_tx", staticmethod(lambda: tx), raising=False)
    assert compat.request_dynamic_recompile(gm) == 1
    assert frame_state["L['x']"].size == [None, None]
    assert frame_state["L['self'].w"].size == [3]
