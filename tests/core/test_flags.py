"""Mode flags defined once: core's from its files, a plugin's through ``nexfort_mode_flags``; each one's switch in
the schema, its values checked like a user's, and the errors for a malformed or clashing flag."""

from __future__ import annotations

import pytest

from nexfort.core import get_plugin_manager, hookimpl
from nexfort.core.api import ModeFlag
from nexfort.core.config import available_flags, clear_caches, flag_descriptions, resolve_config
from nexfort.core.errors import NexfortConfigError
from nexfort.core.flags import check_features, core_flags

SHINY = ModeFlag("shiny", "shiny: a test flag that turns the fallback warning into one per graph.",
                 values={"options": {"compiler": {"warn_once": False}}})
FASTEST = ModeFlag("fastest", "fastest: a test preset: jit and shiny.", preset=True,
                   values={"defaults": ["jit", "shiny", "_self_"], "options": {"overrides": {"conv_benchmark": True}}})


class _Flags:
    def __init__(self, *flags, claims=()):
        self.flags, self.claims = flags, claims

    @hookimpl
    def nexfort_mode_flags(self):
        return list(self.flags)

    @hookimpl
    def nexfort_claims_feature(self, feature, config):
        return True if feature in self.claims else None


@pytest.fixture
def with_flags():
    pm = get_plugin_manager()
    added = []

    def add(*flags, claims=()):
        plugin = _Flags(*flags, claims=claims)
        pm.register(plugin, name=f"flags-test-{len(added)}")
        added.append(plugin)
        clear_caches()
        return plugin

    yield add
    for plugin in added:
        pm.unregister(plugin)
    clear_caches()


def test_core_flags_come_from_their_files():
    flags = {f.name: f for f in core_flags()}
    assert flags["max-optimize"].needs_plugin and not flags["jit"].needs_plugin
    assert flags["O3"].preset and flags["O3"].switch is None and flags["max-optimize"].switch == "max_optimize"
    assert flags["jit"].values["options"]["inductor"]["max_autotune"] is False
    assert flags["jit"].description.startswith("jit: compile fast")


def test_a_plugin_brings_a_flag_with_a_switch_and_values(with_flags):
    with_flags(SHINY, FASTEST)
    assert {"shiny", "fastest"} <= set(available_flags())
    assert flag_descriptions()["shiny"] == SHINY.description
    assert resolve_config({}).flags.shiny is False and resolve_config({}).options.compiler.warn_once is True
    cfg = resolve_config({"mode": "jit:shiny"})
    assert cfg.flags.shiny and cfg.flags.jit and cfg.options.compiler.warn_once is False
    # a user's option wins over the flag's
    assert resolve_config({"mode": "shiny", "options": {"compiler.warn_once": True}}).options.compiler.warn_once
    preset = resolve_config({"mode": "fastest"})
    assert preset.flags.jit and preset.flags.shiny and "fastest" not in preset.flags
    assert preset.options.overrides.conv_benchmark is True


def test_a_plugin_flag_that_needs_an_implementation_must_be_claimed(with_flags):
    lonely = ModeFlag("lonely", "lonely: implemented by plugin code only.", needs_plugin=True)
    with_flags(lonely)
    with pytest.raises(NexfortConfigError, match="Mode flag 'lonely' is on but no installed nexfort plugin"):
        check_features(resolve_config({"mode": "lonely"}))
    with_flags(claims=("lonely",))
    check_features(resolve_config({"mode": "lonely"}))


@pytest.mark.parametrize("flag, words", [
    (ModeFlag("jit", "jit: again."), ["Mode flag 'jit' is declared twice", "'nexfort-core'", "'flags-test-0'"]),
    (ModeFlag("a:b", "a:b: no."), ["Mode flag name 'a:b'", "only letters, digits"]),
    (ModeFlag("quiet", "turns things off"), ["description must start with 'quiet: '"]),
    (ModeFlag("sets", "sets: a switch.", values={"flags": {"jit": True}}), ["may only have the keys", "'flags'"]),
    (ModeFlag("typo", "typo: a misspelled option.", values={"options": {"compiler": {"warn_onc": False}}}),
     ["Mode flag 'typo': Unknown option 'compiler.warn_onc'", "did you mean 'warn_once'"]),
    (ModeFlag("wrong", "wrong: a value of the wrong type.", values={"options": {"compiler": {"warn_once": "no"}}}),
     ["Mode flag 'wrong'", "'compiler.warn_once' must be bool"]),
    (ModeFlag("p", "p: a preset of nothing known.", preset=True, values={"defaults": ["jit", "nope"]}),
     ["Mode flag 'p' (of 'flags-test-0') stands for an unknown flag 'nope'"]),
    (ModeFlag("half", "half: defaults but no preset.", values={"defaults": ["jit"]}),
     ["a preset (and only a preset) has a list 'defaults'"]),
    ("not a flag", ["must return ModeFlag objects, got 'not a flag'"]),
])
def test_a_malformed_or_clashing_flag_is_an_error_naming_its_plugin(with_flags, flag, words):
    with_flags(flag)
    with pytest.raises(NexfortConfigError) as e:
        resolve_config({})
    for w in words:
        assert w in str(e.value), str(e.value)


def test_two_flags_with_one_switch_is_an_error(with_flags):
    with_flags(ModeFlag("max_optimize", "max_optimize: a second max-optimize switch."))
    with pytest.raises(NexfortConfigError, match="would share the switch flags.max_optimize"):
        resolve_config({})


def test_composing_leaves_the_callers_config_store_alone(with_flags):
    from hydra.core.config_store import ConfigStore

    with_flags(SHINY)
    repo = ConfigStore.instance().repo
    before = {k: (dict(v) if isinstance(v, dict) else v) for k, v in repo.items()}
    assert resolve_config({"mode": "jit:shiny"}).flags.shiny
    assert ConfigStore.instance().repo is repo
    assert {k: (dict(v) if isinstance(v, dict) else v) for k, v in repo.items()} == before
    assert "mode" not in repo and not any(k.startswith("nexfort") for k in repo)
