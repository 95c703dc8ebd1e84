"""Selective quantization on the CPU: per-layer errors on calibration inputs, the worst layers kept in high
precision, the choice saved and loaded (checked to be this model's), and every bad input a clear error."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from nexfort.passes import quant
from nexfort.passes.quant import (
    Int8DynamicConfig,
    Int8WeightOnlyConfig,
    QuantizationError,
    Selection,
    quantize_,
    quantize_selected,
    select_layers,
)

from ..helpers import rel_l2

CFG = Int8DynamicConfig(min_features=16)


class Chain(torch.nn.Module):
    """Five 64x64 layers in a chain; ``l2``'s weight has one huge column, so int8 rounds the rest of each row to a
    few levels: the layer that quantizes worst. ``unused`` never runs."""

    def __init__(self, n: int = 5, d: int = 64) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(n))
        with torch.no_grad():
            self.layers[2].weight[:, 0] = 40.0
        self.unused = torch.nn.Linear(d, d)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x)) + x
        return x


class Other(Chain):
    pass


def _calib(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 64, generator=g) for _ in range(n)]


def test_the_worst_layer_stays_in_high_precision_and_the_output_is_closer():
    torch.manual_seed(0)
    model = Chain()
    sel = select_layers(model, CFG, _calib(), top_percentage=80)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))  # unchanged
    errs = {k: v for k, v in sel.errors.items() if v is not None}
    assert set(errs) == {f"layers.{i}" for i in range(5)} and all(0 < v < 1 for v in errs.values())
    others = max(v for k, v in errs.items() if k != "layers.2")
    assert max(errs, key=errs.get) == "layers.2" and errs["layers.2"] > 3 * others
    assert sel.keep == ["layers.2", "unused"] and sel.unmeasured == ["unused"]
    assert sel.quantize == ["layers.0", "layers.1", "layers.3", "layers.4"]

    x = torch.randn(6, 64)  # fresh: not a calibration input
    ref = model(x).detach()
    everything = Chain()
    everything.load_state_dict(model.state_dict())
    quantize_(everything, CFG)
    result = quantize_selected(model, CFG, sel)
    assert result == 4 and result.kept == ["layers.2", "unused"]
    assert type(model.layers[2]) is torch.nn.Linear and type(model.layers[0]) is quant.Int8DynamicLinear
    assert result.weight_bytes_after < result.weight_bytes_before
    err_sel, err_all = rel_l2(model(x), ref), rel_l2(everything(x), ref)
    print(f"selective rel L2 {err_sel:.2e}, all layers {err_all:.2e}")
    assert 0 < err_sel < err_all / 2


def test_top_percentage_100_quantizes_every_measured_layer_and_callables_calibrate():
    model = Chain()
    calls = []
    sel = select_layers(model, CFG, lambda m: calls.append(m(torch.randn(2, 64))), top_percentage=100)
    assert len(calls) == 1 and sel.quantize == [f"layers.{i}" for i in range(5)] and sel.keep == ["unused"]
    sel = select_layers(model, CFG, [{"x": torch.randn(2, 64)}], top_percentage=1)  # kwargs dicts
    assert len(sel.quantize) == 1 and len(sel.keep) == 5  # floor(5 * 0.99) = 4 of 5 kept, and the unused one


def test_unmeasured_layers_are_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="nexfort"):
        select_layers(Chain(), CFG, _calib(1), top_percentage=50)
    assert "never ran 'unused'" in caplog.text


def test_the_choice_saves_and_loads_for_the_same_model(tmp_path):
    torch.manual_seed(1)
    model = Chain()
    sel = select_layers(model, CFG, _calib(), top_percentage=80)
    path = tmp_path / "sel.json"
    sel.save(path)
    d = json.loads(path.read_text())
    assert d["format"] == "nexfort.quant.selection" and d["type"] == "int8_dynamic" and d["top_percentage"] == 80
    assert d["model"]["class"] == "Chain" and d["model"]["layers"]["layers.0"] == [64, 64]
    assert d["errors"]["unused"] is None and d["keep"] == ["layers.2", "unused"]
    loaded = Selection.load(path, model, CFG)
    assert loaded.quantize == sel.quantize and loaded.errors == pytest.approx(sel.errors)
    assert loaded.reselect(model, CFG, 100).quantize == [f"layers.{i}" for i in range(5)]
    assert quantize_selected(model, CFG, loaded) == 4


def test_files_for_another_model_or_type_are_errors(tmp_path):
    model = Chain()
    path = tmp_path / "sel.json"
    select_layers(model, CFG, _calib(1), top_percentage=80).save(path)
    with pytest.raises(QuantizationError, match=r"is for a 'Chain' model, not this 'Other'"):
        Selection.load(path, Other(), CFG)
    with pytest.raises(QuantizationError, match=r"linear layers differ: missing from this model: 'layers.4'"):
        Selection.load(path, Chain(n=4), CFG)
    with pytest.raises(QuantizationError, match=r"not in the file: 'layers.5'"):
        Selection.load(path, Chain(n=6), CFG)
    with pytest.raises(QuantizationError, match=r"with other shapes: 'layers.0'.*measure again"):
        wide = Chain()
        wide.layers[0] = torch.nn.Linear(64, 64 * 2)
        Selection.load(path, wide, CFG)
    with pytest.raises(QuantizationError, match=r"measured for quantization type 'int8_dynamic', not "
                                                r"'int8_weightonly'"):
        Selection.load(path, model, Int8WeightOnlyConfig(min_features=16))
    narrow = tmp_path / "narrow.json"  # measured with min_features=128: none of these layers was a candidate
    select_layers(model, Int8DynamicConfig(min_features=128), _calib(1), top_percentage=80).save(narrow)
    with pytest.raises(QuantizationError, match=r"does not cover the layers 'layers.0'.*min_features, ignores"):
        Selection.load(narrow, model, CFG)
    with pytest.raises(QuantizationError, match=r"does not exist"):
        Selection.load(tmp_path / "nope.json", model, CFG)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(QuantizationError, match=r"cannot be read as JSON"):
        Selection.load(tmp_path / "bad.json", model, CFG)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(QuantizationError, match=r"is not a nexfort quantization selection"):
        Selection.load(tmp_path / "other.json", model, CFG)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("bad", [0, -5, 100.5, 150, float("nan"), "50", True, None])
def test_top_percentage_outside_0_100_is_an_error(bad):
    model = Chain()
    with pytest.raises(QuantizationError, match=r"top_percentage must be a number in \(0, 100\]"):
        select_layers(model, CFG, _calib(1), top_percentage=bad)


def test_empty_calibration_is_an_error():
    with pytest.raises(QuantizationError, match="calibration inputs are empty"):
        select_layers(Chain(), CFG, [], top_percentage=50)


def test_fused_layers_and_their_row_views_are_chosen_together():
    torch.manual_seed(2)
    model = torch.nn.Module()
    model.to_qkv = torch.nn.Linear(64, 192)
    for i, name in enumerate("qkv"):  # what nexfort.diffusers.fused makes of the unfused projections
        lin = torch.nn.Linear(64, 64)
        lin.weight = torch.nn.Parameter(model.to_qkv.weight.data[64 * i:64 * (i + 1)])
        setattr(model, f"to_{name}", lin)
    model.out = torch.nn.Linear(64, 64)
    with torch.no_grad():
        model.to_qkv.weight[:, 0] = 40.0  # the fused group quantizes worst
    model.forward = lambda x: model.out(model.to_qkv(x)[:, :64])  # the unfused views never run
    sel = select_layers(model, CFG, _calib(2), top_percentage=50)
    assert sel.errors["to_q"] is None and sel.errors["to_qkv"] is not None
    assert sel.keep == ["to_k", "to_q", "to_qkv", "to_v"] and sel.quantize == ["out"] and sel.unmeasured == []
