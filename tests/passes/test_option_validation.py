"""The pass plugins' options, validated when the configuration is resolved (``nexfort_validate_config``), before
anything compiles: the quant and attention_kernel namespaces."""

from __future__ import annotations

import pytest

from nexfort.core.config import resolve_config
from nexfort.core.errors import NexfortConfigError


@pytest.mark.parametrize("options, words", [
    ({"quant.min_features": -1}, ["'quant.min_features' must be >= 0", "got -1"]),
    ({"quant.exclude": [1, 2]}, ["'quant.exclude' must be a list of str; item 0 is int 1"]),
    ({"quant.exclude": 5}, ["'quant.exclude' must be a list of str, got int 5"]),
    ({"quant.exclude": ["proj_out", ""]}, ["'quant.exclude' has an empty name"]),
    ({"quant.type": "fp9"}, ["Unknown quantization type 'fp9'", "did you mean 'fp8'", "Valid types on cpu: "]),
    ({"attention_kernel.kernels": ["fa3"]}, ["Unknown attention kernel 'fa3'; did you mean 'fa4'?",
                                             "Valid kernels:"]),
    ({"attention_kernel.kernels": "fa5"}, ["Unknown attention kernel 'fa5'"]),
    ({"attention_kernel.kernels": [3]}, ["'attention_kernel.kernels' must be a list of str; item 0 is int 3"]),
    ({"attention_kernel.min_speedup": float("nan")}, ["'attention_kernel.min_speedup' must be a number > 0",
                                                      "got nan"]),
    ({"attention_kernel.min_speedup": -1.0}, ["'attention_kernel.min_speedup' must be a number > 0", "got -1.0"]),
    ({"attention_kernel.max_rel_l2": float("nan")}, ["'attention_kernel.max_rel_l2' must be a number >= 0",
                                                     "got nan"]),
    ({"attention_kernel.max_rel_l2": -0.5}, ["'attention_kernel.max_rel_l2' must be a number >= 0"]),
])
def test_bad_plugin_options_fail_when_resolved(options, words):
    with pytest.raises(NexfortConfigError) as e:
        resolve_config({"options": options})  # no mode flag: wrong is wrong, whether the pass runs or not
    for w in words:
        assert w in str(e.value), str(e.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(NexfortConfigError) as e:
        resolve_config({"options": {"attention_kernel.min_speedup": 0, "attention_kernel.max_rel_l2": -1,
                                    "quant.min_features": -3}})
    message = str(e.value)
    assert message.startswith("Invalid options:")
    for w in ("min_speedup", "max_rel_l2", "quant.min_features"):
        assert w in message, message


@pytest.mark.parametrize("key, value, stored", [
    ("quant.exclude", "proj_out", ["proj_out"]),
    ("quant.exclude", ("proj_out", "norm"), ["proj_out", "norm"]),
    ("attention_kernel.kernels", "fa4", ["fa4"]),
])
def test_a_lone_string_is_a_one_item_list(key, value, stored):
    ns, knob = key.split(".")
    cfg = resolve_config({"options": {key: value}})
    assert list(cfg.options[ns][knob]) == stored


def test_bad_quant_options_stop_nexfort_compile_before_the_module_changes():
    import torch

    from nexfort.compilers import nexfort_compile

    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    with pytest.raises(NexfortConfigError, match="'quant.min_features' must be >= 0"):
        nexfort_compile(model, mode="quant", options={"quant.min_features": -1})
    assert type(model[0]) is torch.nn.Linear
