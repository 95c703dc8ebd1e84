"""nexfort.core.schema: the root dataclass holds core's option namespaces first and the plugins' after them, each
with its own defaults; the names it accepts for memory_format and compiler.on_error."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from nexfort.core import schema


@dataclasses.dataclass
class _Mine:
    knob: int = 3
    name: str = "x"


def test_plugin_namespaces_come_after_cores_with_their_defaults():
    root = schema.build_schema({"mine": _Mine})
    cfg = root()
    assert cfg.mode == "" and cfg.dynamic is None and cfg.fullgraph is False and cfg.memory_format == "preserve"
    assert cfg.options.mine == _Mine() and cfg.options.compiler.on_error == "fallback"
    names = [f.name for f in dataclasses.fields(type(cfg.options))]
    assert names[:2] == ["inductor", "triton"] and names[-1] == "mine"
    a, b = root(), root()  # no default shared between configurations
    a.options.inductor["max_autotune"] = True
    a.options.mine.knob = 4
    assert b.options.inductor == {} and b.options.mine.knob == 3


def test_the_schema_types_what_omegaconf_accepts():
    cfg = OmegaConf.structured(schema.build_schema({"mine": _Mine}))
    cfg.options.mine.knob = 5
    with pytest.raises(ValidationError):
        cfg.options.mine.knob = "five"
    with pytest.raises(ValidationError):
        cfg.options.compiler.warn_once = "sometimes"
    assert OmegaConf.to_object(cfg).options.mine == _Mine(knob=5)


def test_accepted_names():
    assert schema.MEMORY_FORMATS == ("preserve", "channels_last", "contiguous")
    assert schema.ON_ERROR == ("fallback", "raise")
    assert schema.CompilerOptions().on_error in schema.ON_ERROR
