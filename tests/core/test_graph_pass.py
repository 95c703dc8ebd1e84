"""nexfort.core.graph_pass: a pass's name and stage are checked, its uuid changes with what defines it (so
Inductor's caches never return code of another version of a pass), passes run by priority and count rewrites."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nexfort.core.graph_pass import GraphPass, combined_uuid, run_passes


class _Log(GraphPass):
    name = "log"

    def __init__(self, options=None, log=None, rewrites=1):
        super().__init__(options)
        self.log, self.rewrites = log if log is not None else [], rewrites

    def apply(self, target):
        self.log.append(self.name)
        return self.rewrites


class _Late(_Log):
    name = "late"
    priority = 200


class _Early(_Log):
    name = "early"
    priority = 10


def test_name_and_stage_are_checked():
    class NoName(_Log):
        name = ""

    class BadStage(_Log):
        stage = "mid_grad"

    with pytest.raises(TypeError, match="must set a non-empty 'name'"):
        NoName()
    with pytest.raises(TypeError, match="'mid_grad'; valid stages: pre_grad, post_grad_early, post_grad"):
        BadStage()


def test_uuid_changes_with_the_options_and_not_with_their_order():
    @dataclasses.dataclass
    class Opts:
        a: int = 1
        b: str = "x"

    assert _Log({"a": 1, "b": 2}).uuid() == _Log({"b": 2, "a": 1}).uuid()
    assert _Log({"a": 1}).uuid() != _Log({"a": 2}).uuid()
    assert _Log(Opts()).uuid() == _Log({"a": 1, "b": "x"}).uuid()  # a dataclass hashes as its fields
    assert _Log(None).uuid() != _Log({}).uuid()
    assert _Late().uuid() != _Log().uuid()  # the name (and the class's own source file) enter it


def test_uuid_hashes_the_source_files(tmp_path, monkeypatch):
    src = tmp_path / "my_pass.py"
    src.write_text("v1")
    monkeypatch.setattr(_Log, "source_files", lambda self: [str(src)])
    before = _Log().uuid()
    src.write_text("v2")
    assert _Log().uuid() != before


def test_source_files_are_the_modules_of_the_pass_and_its_bases():
    assert _Log().source_files() == [__file__]


def test_passes_run_by_priority_and_count_their_rewrites(counters):
    log = []
    passes = [_Late(log=log, rewrites=2), _Log(log=log), _Early(log=log, rewrites=0)]
    assert run_passes(passes, torch.fx.Graph()) == 3
    assert log == ["early", "log", "late"]
    assert counters["pass"]["late"] == 2 and counters["pass"]["log"] == 1 and counters["pass"]["early"] == 0
    assert combined_uuid(passes) == combined_uuid(list(reversed(passes)))  # run order, not list order
    assert combined_uuid(passes) != combined_uuid(passes[:2])
    assert combined_uuid([]) is None
