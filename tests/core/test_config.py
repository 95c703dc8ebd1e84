"""The mode-string parser and the configuration schema: every flag, presets, merging order, and the errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nexfort.core import compat
from nexfort.core.config import available_flags, flag_descriptions, resolve_config
from nexfort.core.errors import NexfortConfigError

DOCUMENTED_FLAGS = {"max-optimize", "max-autotune", "low-precision", "cudagraphs", "freezing", "benchmark",
                    "cache-all", "jit", "disable-runtime-fusion", "quant", "O2", "O3"}
#: the example third-party plugin's (tests/plugins/nexfort-example-plugin, installed by the test command)
EXAMPLE_PLUGIN_FLAGS = {"relu-floor"}


def test_every_documented_flag_exists_and_says_what_it_does():
    assert set(available_flags()) - EXAMPLE_PLUGIN_FLAGS == DOCUMENTED_FLAGS
    for flag, desc in flag_descriptions().items():
        assert desc.startswith(flag + ":") and len(desc) > 40, f"mode flag {flag} must say what it turns on"


@pytest.mark.parametrize("flag", sorted(DOCUMENTED_FLAGS))
def test_each_flag_turns_something_on(flag):
    base = resolve_config({})
    cfg = resolve_config({"mode": flag})
    assert cfg.mode == flag
    changed = [k for k in ("flags", "options") if cfg[k] != base[k]]
    assert changed, f"flag {flag!r} changes nothing"
    for key in cfg.options.inductor:  # every Inductor key a flag sets exists in the running torch
        assert compat.has_inductor_knob(key), (flag, key)


def test_flags_merge_in_order_later_wins():
    a = resolve_config({"mode": "max-autotune:jit"})
    assert a.flags.max_autotune and a.flags.jit
    assert a.options.inductor["coordinate_descent_tuning"] is False
    b = resolve_config({"mode": "jit:max-autotune"})
    assert b.options.inductor["coordinate_descent_tuning"] is True


def test_max_autotune_is_bounded():
    """max-autotune tunes the generated kernels but leaves Inductor's GEMM template search to an explicit option
    (measured on an H100: 5-7x the compile time and a slower step, conf/mode/max-autotune.yaml)."""
    cfg = resolve_config({"mode": "max-optimize:max-autotune:low-precision"})
    assert cfg.options.inductor["coordinate_descent_tuning"] is True
    assert "max_autotune_gemm" not in cfg.options.inductor and "max_autotune" not in cfg.options.inductor
    opted = resolve_config({"mode": "max-autotune", "options": {"inductor.max_autotune_gemm": True}})
    assert opted.options.inductor["max_autotune_gemm"] is True


def test_presets_expand():
    o3 = resolve_config({"mode": "O3"})
    assert o3.flags.max_optimize and o3.flags.max_autotune and o3.flags.low_precision
    assert o3.options.overrides.matmul_allow_fp16_reduction is True
    o2 = resolve_config({"mode": "O2"})
    assert o2.flags.max_optimize and o2.flags.max_autotune and not o2.flags.low_precision
    assert o2.options.overrides.matmul_allow_fp16_reduction is False


def test_user_options_override_flags_and_nested_forms_agree():
    flat = resolve_config({"mode": "max-autotune", "options": {"inductor.coordinate_descent_tuning": False,
                                                                 "triton.cudagraphs": True}})
    nested = resolve_config({"mode": "max-autotune", "options": {"inductor": {"coordinate_descent_tuning": False},
                                                                   "triton": {"cudagraphs": True}}})
    assert flat.options.inductor == nested.options.inductor
    assert flat.options.inductor["coordinate_descent_tuning"] is False
    assert flat.options.inductor["triton.cudagraphs"] is True


def test_json_string_and_keywords():
    spec = json.dumps({"mode": "max-autotune:low-precision", "memory_format": "channels_last", "dynamic": True,
                       "options": {"overrides.conv_benchmark": True}})
    cfg = resolve_config(spec)
    assert cfg.dynamic is True and cfg.memory_format == "channels_last"
    assert cfg.options.overrides.conv_benchmark is True
    assert resolve_config(spec, dynamic=False).dynamic is False


def test_config_is_read_only():
    cfg = resolve_config({"mode": "jit"})
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.flags.jit = False


def test_namespaced_knob_at_top_level_is_accepted():
    cfg = resolve_config({"inductor.max_autotune_gemm": True, "overrides": {"conv_benchmark": True}})
    assert cfg.options.inductor["max_autotune_gemm"] is True
    assert cfg.options.overrides.conv_benchmark is True


@pytest.mark.parametrize("spec, words", [
    ({"mode": "max-optimise"}, ["Unknown mode flag 'max-optimise'", "did you mean 'max-optimize'", "Valid flags:"]),
    ({"mode": "jit::max-autotune"}, ["Empty mode flag"]),
    ({"mode": 3}, ["'mode' must be a string"]),
    ({"modes": "jit"}, ["Unknown option 'modes'", "did you mean 'mode'", "Valid top-level keys:"]),
    ({"max_autotune": True}, ["'max_autotune' is a mode flag", "mode='max-autotune'"]),
    ({"epilogue_fusion": False}, ["options={'inductor.epilogue_fusion': False}"]),
    ({"dynamic": "yes"}, ["'dynamic' must be true, false or null", "'yes'"]),
    ({"fullgraph": 1}, ["'fullgraph' must be true or false"]),
    ({"memory_format": "nhwc"}, ["Unknown memory_format 'nhwc'", "channels_last"]),
    ({"options": {"inductor.max_autotun": True}}, ["Unknown Inductor option 'inductor.max_autotun'",
                                                    "did you mean 'inductor.max_autotune'"]),
    ({"options": {"inductor.max_autotune": "yes"}}, ["'inductor.max_autotune' must be bool", "'yes'"]),
    ({"options": {"overrides.conv_benchmark": "true"}}, ["'overrides.conv_benchmark' must be bool or null"]),
    ({"options": {"overrides.conv_bench": True}}, ["Unknown option 'overrides.conv_bench'",
                                                    "did you mean 'conv_benchmark'"]),
    ({"options": {"inductr.max_autotune": True}}, ["Unknown option namespace 'inductr'", "'inductor'"]),
    ({"options": {"compiler.on_error": "ignore"}}, ["Unknown value of 'compiler.on_error' 'ignore'", "fallback"]),
    ({"options": {"inductor": 5}}, ["names a namespace, not a knob"]),
    ({"options": [1, 2]}, ["'options' must be a mapping"]),
])
def test_bad_input_names_the_bad_value_and_the_valid_ones(spec, words):
    with pytest.raises(NexfortConfigError) as e:
        resolve_config(spec)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_invalid_json():
    with pytest.raises(NexfortConfigError, match="Invalid JSON in the compiler config"):
        resolve_config('{"mode": "jit",}')


def test_inductor_knob_missing_in_this_torch_names_the_version(monkeypatch):
    defaults = dict(compat.inductor_config_defaults())
    defaults.pop("emulate_precision_casts", None)
    monkeypatch.setattr(compat, "inductor_config_defaults", lambda: defaults)
    with pytest.raises(NexfortConfigError, match=r"exists in torch >= 2\.5; the installed torch is"):
        resolve_config({"options": {"inductor.emulate_precision_casts": True}})


def test_cli_prints_resolved_configuration():
    out = subprocess.run([sys.executable, "-m", "nexfort.config", "max-autotune:low-precision"],
                         capture_output=True, text=True, check=True).stdout
    assert "mode: max-autotune:low-precision" in out
    assert "coordinate_descent_tuning: true" in out and "matmul_allow_fp16_reduction: true" in out


def test_cli_reports_errors_with_exit_code_2():
    r = subprocess.run([sys.executable, "-m", "nexfort.config", "max-optimise"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "did you mean 'max-optimize'" in r.stderr


def test_resolution_is_cached_by_the_spec_itself():
    """The cache key hashes and compares the parsed spec's canonical JSON (its hash was a constant: every entry
    collided), so equal specs, however given, resolve once and different ones never share an entry."""
    from nexfort.core.config import _Frozen, _resolve_cached

    a, b = _Frozen({"mode": "jit", "dynamic": True}), _Frozen({"dynamic": True, "mode": "jit"})
    c = _Frozen({"mode": "jit", "dynamic": False})
    assert a == b and hash(a) == hash(b) and a != c and hash(a) != hash(c)
    _resolve_cached.cache_clear()
    first = resolve_config({"mode": "jit", "dynamic": True})
    assert resolve_config('{"dynamic": true, "mode": "jit"}') is first  # the same spec as JSON text
    assert resolve_config({"mode": "jit"}, dynamic=True) is first  # ... as keywords
    assert resolve_config({"mode": "jit", "dynamic": False}) is not first
    info = _resolve_cached.cache_info()
    assert (info.hits, info.misses) == (2, 2)


def test_options_are_parsed_once_and_checked_at_the_boundary():
    from nexfort.core.config import parse_options, parse_spec

    assert parse_spec(b'{"mode": "jit", "options": "{\\"inductor.max_autotune\\": false}"}') == {
        "mode": "jit", "options": {"inductor.max_autotune": False}}
    assert parse_options('{"compiler.on_error": "raise"}') == {"compiler.on_error": "raise"}
    with pytest.raises(NexfortConfigError, match="'options' must be a mapping of namespaced knobs"):
        parse_options("[1, 2]")
    with pytest.raises(NexfortConfigError, match="Option keys must be strings, got int 3 under 'options.inductor'"):
        parse_spec({"options": {"inductor": {3: True}}})
