"""Input validation at the public boundary: every bad value is a ``NexfortConfigError`` that names it (quoting at most
~200 characters of it) before anything compiles; the values meant to be accepted are."""

from __future__ import annotations

import json
import time

import pytest
import torch

from nexfort.core import get_plugin_manager, hookimpl
from nexfort.core.config import resolve_config
from nexfort.core.errors import NexfortConfigError


@pytest.mark.parametrize("spec, words", [
    ({"memory_format": ["channels_last"]}, ["memory_format must be one of", "got list ['channels_last']"]),
    ({"memory_format": 3}, ["memory_format must be one of", "torch.channels_last", "got int 3"]),
    ({"memory_format": torch.channels_last_3d}, ["memory_format torch.channels_last_3d is not supported"]),
    ({1: True}, ["Option keys must be strings, got int 1 at the top level", "valid top-level keys: mode"]),
    ({"options": {"inductor": {2: True}}}, ["Option keys must be strings, got int 2 under 'options.inductor'"]),
    ({"options": {(1, 2): True}}, ["Option keys must be strings, got tuple (1, 2) under 'options'"]),
    (b'{"mode": "\xff"}', ["bytes that are not UTF-8", "invalid start byte"]),
    ({"options": {"inductor.compile_threads": -5}}, ["'inductor.compile_threads' must be >= 1, got -5"]),
    ({"options": {"inductor.compile_threads": 0}}, ["'inductor.compile_threads' must be >= 1, got 0"]),
    ({"options": {"inductor.cpp.threads": -2}}, ["'inductor.cpp.threads' must be >= -1, got -2"]),
    ({"mode": ":".join(["jit"] * 10_000)}, ["'mode' is too long (39999 characters, 10000 flags", "at most 1000",
                                            "valid flags: "]),
])
def test_bad_values_are_named_before_anything_compiles(spec, words):
    with pytest.raises(NexfortConfigError) as e:
        resolve_config(spec)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_a_mode_of_ten_thousand_flags_is_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(NexfortConfigError, match="'mode' is too long"):
        resolve_config({"mode": ":".join(["jit"] * 10_000)})
    assert time.perf_counter() - start < 2.0  # (59 s under the composition lock before the cap)


@pytest.mark.parametrize("spec", [
    {"mode": "x" * 5000},
    {"mode": "jit:" + "y" * 900},
    {"options": {"inductor." + "z" * 5000: True}},
    {"options": {"inductor.max_autotune": "w" * 5000}},
    {"memory_format": "v" * 5000},
    {"options": {"compiler.on_error": "u" * 5000}},
    {"dynamic": "t" * 5000},
    '{"mode": "' + "s" * 5000,
    {"options": {"overrides.conv_benchmark": list(range(5000))}},
])
def test_errors_quote_at_most_about_200_characters_of_a_bad_value(spec):
    with pytest.raises(NexfortConfigError) as e:
        resolve_config(spec)
    message = str(e.value)
    assert "characters)" in message, message[:400]  # says the value was cut, and how long it was
    longest_run = max(len(run) for run in message.replace("'", " ").replace(",", " ").split())
    assert longest_run <= 220, message[:400]
    assert len(message) < 1500, len(message)


@pytest.mark.parametrize("given, expected", [
    (torch.channels_last, "channels_last"),
    (torch.contiguous_format, "contiguous"),
    (torch.preserve_format, "preserve"),
    ("channels_last", "channels_last"),
    (None, "preserve"),
])
def test_torch_memory_formats_are_accepted(given, expected):
    assert resolve_config({"memory_format": given}).memory_format == expected


def test_nexfort_compile_takes_torch_channels_last():
    from nexfort.compilers import nexfort_compile

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    nexfort_compile(model, memory_format=torch.channels_last)  # compiles lazily: nothing runs here
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_tuple_valued_inductor_knob_from_json():
    from nexfort.core import backend, compat

    default = compat.inductor_config_defaults()["cpp.cxx"]
    cfg = resolve_config(json.dumps({"options": {"inductor.cpp.cxx": list(default)}}))
    assert backend.inductor_patches(cfg)["cpp.cxx"] == tuple(default)


# ---------------------------------------------------------------------------- the plugins' validation hook
class _Strict:
    """A plugin whose option ``strict.level`` must be 1-3 (checked by ``nexfort_validate_config``)."""

    @hookimpl
    def nexfort_config_schema(self):
        import dataclasses

        @dataclasses.dataclass
        class StrictOptions:
            level: int = 1
            note: str = ""

        return {"strict": StrictOptions}

    @hookimpl
    def nexfort_validate_config(self, config):
        problems = []
        if not 1 <= config.options.strict.level <= 3:
            problems.append(f"Option 'strict.level' must be 1, 2 or 3, got {config.options.strict.level!r}.")
        if config.options.strict.note == "bad":
            problems.append("Option 'strict.note' must not be 'bad'.")
        return problems


@pytest.fixture
def strict_plugin():
    from nexfort.core.config import clear_caches

    pm = get_plugin_manager()
    plugin = _Strict()
    pm.register(plugin, name="strict-for-test")
    clear_caches()
    yield
    pm.unregister(plugin)
    clear_caches()


def test_plugin_validation_runs_when_the_configuration_is_resolved(strict_plugin, counters):
    from nexfort.compilers import nexfort_compile

    assert resolve_config({"options": {"strict.level": 2}}).options.strict.level == 2
    with pytest.raises(NexfortConfigError, match=r"^Option 'strict.level' must be 1, 2 or 3, got 7\.$"):
        resolve_config({"options": {"strict.level": 7}})
    with pytest.raises(NexfortConfigError) as e:
        nexfort_compile(torch.nn.Linear(2, 2), options={"strict.level": 0, "strict.note": "bad"})
    assert "Invalid options:" in str(e.value)
    assert "'strict.level' must be 1, 2 or 3, got 0" in str(e.value) and "'strict.note'" in str(e.value)
    assert counters["backend"]["graphs"] == 0


def test_plugin_validation_through_torch_compile_fails_before_any_graph_compiles(strict_plugin, counters):
    fn = torch.compile(lambda x: x + 1, backend="nexfort", options={"strict.level": 9})
    with pytest.raises(Exception, match="'strict.level' must be 1, 2 or 3, got 9"):
        fn(torch.randn(2))
    assert counters["backend"]["graphs"] == 0 and counters["backend"]["fallbacks"] == 0
