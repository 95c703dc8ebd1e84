"""nexfort.core.facts: a probe's outcome recalled through the plugins instead of probing again; anything
recalled that does not have the expected shape is ignored (probe again), never used."""

from __future__ import annotations

import json

import pytest

from nexfort.core import counters, facts, hookimpl
from nexfort.core.config import resolve_config
from nexfort.core.plugins import get_plugin_manager

SCHEMA = {"ok": bool, "dynamic_ok": bool}


class _Memory:
    """A plugin that remembers facts in a dict (as the cache plugin does in its store)."""

    def __init__(self, preset=None):
        self.facts = dict(preset or {})

    @hookimpl(tryfirst=True)
    def nexfort_recall_fact(self, name, config):
        return self.facts.get(name)

    @hookimpl
    def nexfort_record_fact(self, name, value, config):
        self.facts[name] = value


@pytest.fixture
def memory():
    pm = get_plugin_manager()
    plugin = _Memory()
    pm.register(plugin, name="facts-memory-test")
    counters.clear()
    yield plugin
    pm.unregister(name="facts-memory-test")


def _probe(calls):
    def probe():
        calls.append(1)
        return {"ok": True, "dynamic_ok": False}
    return probe


def test_probed_once_then_recalled(memory):
    cfg, calls = resolve_config({}), []
    assert facts.remembered("x", SCHEMA, _probe(calls), cfg) == {"ok": True, "dynamic_ok": False}
    assert json.loads(memory.facts["x"]) == {"ok": True, "dynamic_ok": False}
    assert facts.remembered("x", SCHEMA, _probe(calls), cfg) == {"ok": True, "dynamic_ok": False}
    assert len(calls) == 1
    assert counters["facts"]["probed"] == 1 and counters["facts"]["recalled"] == 1


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", '{"ok": true}', '{"ok": 1, "dynamic_ok": false}',
                                 '{"ok": true, "dynamic_ok": false, "extra": 1}'])
def test_a_malformed_fact_is_probed_again_and_replaced(memory, bad):
    cfg, calls = resolve_config({}), []
    memory.facts["x"] = bad
    assert facts.remembered("x", SCHEMA, _probe(calls), cfg) == {"ok": True, "dynamic_ok": False}
    assert len(calls) == 1 and json.loads(memory.facts["x"]) == {"ok": True, "dynamic_ok": False}


def test_no_config_or_untold_probe_is_not_recorded(memory):
    calls = []
    assert facts.remembered("x", SCHEMA, _probe(calls)) == {"ok": True, "dynamic_ok": False}
    assert "x" not in memory.facts  # no config: nothing to remember it for
    assert facts.remembered("y", SCHEMA, lambda: None, resolve_config({})) is None
    assert "y" not in memory.facts  # could not be told here: not a fact
