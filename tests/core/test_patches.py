"""nexfort.core.patches: the registry of patches of torch's and diffusers' internals. Process-wide patches are
applied by their first holder and undone by the last; instance patches are recorded on their objects and restored;
every registered patch is documented in docs/patches.md."""

from __future__ import annotations

import gc
import pathlib
import types

import pytest
import torch

from nexfort.core import patches

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture
def toy(monkeypatch):
    """A process-wide patch of a toy namespace, registered for one test."""
    target = types.SimpleNamespace(value="original", applied=0)

    def apply():
        target.applied += 1
        target.value = "patched"

        def undo():
            target.value = "original"

        return undo

    monkeypatch.setitem(patches._registry, "test.toy", patches.Patch(
        name="test.toy", target="target.value", detects="-", needed="-", undo="-", versions="-", apply=apply))
    monkeypatch.setitem(patches._registry, "test.not_needed", patches.Patch(
        name="test.not_needed", target="-", detects="-", needed="-", undo="-", versions="-", apply=lambda: None))
    monkeypatch.setitem(patches._registry, "test.instance", patches.Patch(
        name="test.instance", target="obj.attr", detects="-", needed="-", undo="-", versions="-"))
    return target


def test_first_holder_applies_last_one_undoes(toy):
    assert patches.hold("test.toy", "a") and patches.hold("test.toy", "b") and patches.hold("test.toy", "b")
    assert toy.value == "patched" and toy.applied == 1 and patches.is_applied("test.toy")
    assert any(line.startswith("test.toy (held by a, b)") for line in patches.leftovers())
    assert patches.release("a") == [] and toy.value == "patched"
    assert patches.release("b") == ["test.toy"] and toy.value == "original"
    assert not patches.is_applied("test.toy") and patches.leftovers() == []
    with patches.applied("test.toy"):
        assert toy.value == "patched" and toy.applied == 2
    assert toy.value == "original"


def test_a_patch_the_running_version_does_not_need_changes_nothing(toy):
    assert patches.hold("test.not_needed", "a") is False
    assert not patches.is_applied("test.not_needed") and patches.leftovers() == []
    patches.release("a")


def test_a_collected_holder_lets_go(toy):
    class Holder:
        pass

    holder = Holder()
    patches.hold("test.toy", holder)
    assert toy.value == "patched"
    del holder
    gc.collect()
    assert toy.value == "original" and patches.leftovers() == []


def test_restore_all_undoes_everything(toy):
    obj = Obj(attr=1)
    patches.hold("test.toy", "a")
    patches.set_attr(obj, "attr", 2, "test.instance")
    assert patches.restore_all() == ["test.toy", "test.instance"]
    assert toy.value == "original" and obj.attr == 1 and patches.leftovers() == []


def test_instance_patches_are_restored_newest_first(toy):
    m = torch.nn.Sequential(torch.nn.Linear(2, 2))
    inner = m[0]
    forward = inner.forward
    log = []
    patches.on_restore(inner, "test.instance", lambda: log.append("undo"), when_collected=lambda: log.append("gc"))
    patches.set_attr(inner, "forward", "patched", "test.instance")
    patches.set_attr(inner, "forward", "again", "test.instance")  # the first original is kept
    patches.set_attr(inner, "in_features", 5, "test.instance")  # an attribute the object has
    assert patches.patches_of(inner) == ["test.instance"] and patches.patches_of(m) == []
    assert "test.instance (on 1 live object(s): Linear)" in patches.leftovers()
    assert patches.restore(m) == ["test.instance"]  # a module: its submodules too
    assert "forward" not in inner.__dict__ and inner.forward == forward and inner.in_features == 2
    assert log == ["undo"] and patches.leftovers() == [] and patches.restore(m) == []


def test_a_collected_object_takes_its_patches_with_it(toy):
    log = []
    obj = torch.nn.Linear(2, 2)
    patches.on_restore(obj, "test.instance", lambda: log.append("undo"), when_collected=lambda: log.append("gc"))
    assert patches.leftovers()
    del obj
    gc.collect()
    assert log == ["gc"] and patches.leftovers() == []


def test_kinds_and_names_are_checked(toy):
    with pytest.raises(KeyError, match="no nexfort patch named 'test.nope'; registered: .*test.toy"):
        patches.hold("test.nope", "a")
    with pytest.raises(ValueError, match="instance patch"):
        patches.hold("test.instance", "a")
    with pytest.raises(ValueError, match="process-wide"):
        patches.set_attr(Obj(), "x", 1, "test.toy")
    with pytest.raises(TypeError, match="weakly referenced"):
        patches.set_attr(types.SimpleNamespace(), "x", 1, "test.instance")
    with pytest.raises(ValueError, match="a different patch named 'test.toy'"):
        patches.register(patches.Patch(name="test.toy", target="x", detects="-", needed="-", undo="-",
                                       versions="-"))
    assert patches.register(patches._registry["test.toy"]) is patches._registry["test.toy"]  # the same: a no-op


def test_held_until_the_dynamo_compilation_ends(toy):
    """Outside a compilation nothing is applied; inside one (a backend's call) the patch stays until Dynamo is
    done with the frame, its guards included, and is undone then."""
    assert patches.hold_until_compiled("test.toy") is False and toy.value == "original"
    seen = []

    def backend(gm, example_inputs):
        seen.append(patches.hold_until_compiled("test.toy"))
        seen.append(toy.value)
        let_go = patches.compilation_holds()  # None where torch's compile-end callback lets go
        seen.append(let_go is None)
        if let_go is None:
            return gm.forward

        def first_call(*args):  # what nexfort's backend does on torch < 2.3
            seen.append(toy.value)  # Dynamo has built the guards by now, with the patch still in effect
            out = gm.forward(*args)
            let_go()
            return out

        return first_call

    fn = torch.compile(lambda x: x * 2, backend=backend)
    assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
    callback = hasattr(getattr(torch._dynamo, "callback_handler", None), "register_end_callback")
    assert seen == ([True, "patched", True] if callback else [True, "patched", False, "patched"])
    assert toy.value == "original" and patches.leftovers() == []
    assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0)) and toy.value == "original"


def test_compilation_holds_let_go_when_the_graph_is_never_called(toy, monkeypatch):
    """On a torch without the compile-end callback, a hold whose graph is collected uncalled is let go of too."""
    import gc
    import types

    monkeypatch.setattr(torch._dynamo, "callback_handler", types.SimpleNamespace(), raising=False)
    monkeypatch.setattr(patches, "_in_dynamo_compilation", lambda: True)
    assert patches.hold_until_compiled("test.toy") is True and toy.value == "patched"
    assert "a Dynamo compilation (until its graph's first call)" in patches.leftovers()[0]
    let_go = patches.compilation_holds()
    assert let_go is not None and patches.compilation_holds() is None  # taken once
    del let_go
    gc.collect()
    assert toy.value == "original" and patches.leftovers() == []


def test_every_registered_patch_is_documented():
    """Each entry says what it detects, when it is needed, how it is undone and for which versions, and
    docs/patches.md lists it."""
    pytest.importorskip("diffusers")
    import nexfort.diffusers.patches  # noqa: F401 - the diffusers plugin's entries register on import

    docs = (ROOT / "docs" / "patches.md").read_text()
    entries = patches.registered()
    assert {"torch.guard_namespace", "torch.inductor.recheck_autotune_cache", "torch.inductor.record_tuned_kernels",
            "diffusers.PatchEmbed.forward", "diffusers.Attention.prepare_attention_mask"} <= {p.name for p in entries}
    for p in entries:
        assert all((p.target, p.detects, p.needed, p.undo, p.versions)), p.name
        assert f"`{p.name}`" in docs, f"docs/patches.md does not list {p.name}"
