"""nexfort.core.api, the one module plugins import: the typed, frozen view of a plugin's options and the copy of a
configuration with some switches changed."""

from __future__ import annotations

import dataclasses

import pytest

from nexfort.core import api
from nexfort.core.config import resolve_config


def test_options_of_is_a_frozen_typed_instance_of_the_namespace_dataclass():
    from omegaconf import OmegaConf

    cfg = resolve_config({"options": {"compiler.on_error": "raise"}})
    cls = OmegaConf.get_type(cfg.options.compiler)
    opts = api.options_of(cfg, "compiler")
    assert isinstance(opts, cls) and dataclasses.is_dataclass(opts)
    assert opts.on_error == "raise" and opts.warn_once is True
    with pytest.raises(dataclasses.FrozenInstanceError, match="read-only"):
        opts.on_error = "fallback"
    assert opts == api.options_of(cfg, "compiler") and hash(opts) == hash(api.options_of(cfg, "compiler"))
    changed = dataclasses.replace(opts, warn_once=False)  # a changed copy is frozen too
    assert changed.warn_once is False and opts.warn_once is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.warn_once = True
    with pytest.raises(KeyError, match="no option namespace 'nope'"):
        api.options_of(cfg, "nope")


def test_options_of_freezes_lists_and_keeps_defaults_for_a_missing_namespace():
    @dataclasses.dataclass
    class Opts:
        names: list = dataclasses.field(default_factory=lambda: ["a"])
        level: int = 2

    cfg = resolve_config({})
    opts = api.options_of(cfg, "not-there", Opts)  # a plugin registered after the config was resolved
    assert opts.names == ("a",) and opts.level == 2 and isinstance(opts, Opts)
    assert dataclasses.asdict(opts) == {"names": ("a",), "level": 2}


def test_with_switches_copies_and_keeps_the_original():
    cfg = resolve_config({"mode": "jit"})
    off = api.with_switches(cfg, jit=False)
    assert off is not cfg and off.flags.jit is False and cfg.flags.jit is True
    assert off.options.inductor == cfg.options.inductor  # the flag's values stay: only the switch changes
    assert api.with_switches(cfg, jit=True) is cfg
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        off.flags.jit = True
    with pytest.raises(api.NexfortConfigError, match="Unknown flag switch 'jitt'; did you mean 'jit'"):
        api.with_switches(cfg, jitt=False)
    assert api.flag_on(cfg, "jit") and not api.flag_on(cfg, "no_such_switch")
