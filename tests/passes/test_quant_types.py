"""The named quantization types on the CPU: each one's layers, its exact quantized math, its error bound, its
near misses, the weight memory it reports, the compile path, and the errors for bad types and devices.

fp8 runs where this torch has a CPU fp8 GEMM (``torch._scaled_mm``; skipped with the reason where not); int8
dynamic runs ``torch._int_mm`` where this torch has it on the CPU, else the int32 product (both tested)."""

from __future__ import annotations

import copy

import pytest
import torch

from nexfort.passes import quant
from nexfort.passes.quant import QuantizationError, api, config_for, fp8, int8, quantize_, supported_types

from ..helpers import rel_l2

LAYER = {"fp8_e4m3_e4m3_dynamic": quant.Float8Linear, "fp8_e4m3_e4m3_dynamic_per_tensor": quant.Float8PerTensorLinear,
         "fp8_e4m3_e4m3_weightonly": quant.Float8WeightOnlyLinear, "int8_dynamic": quant.Int8DynamicLinear,
         "int8_weightonly": quant.Int8WeightOnlyLinear}
# rel L2 of one layer on random data (float32): (lower, upper); lower > 0 shows the rounding happened
BOUND = {"fp8_e4m3_e4m3_dynamic": (1e-3, 0.06), "fp8_e4m3_e4m3_dynamic_per_tensor": (1e-3, 0.08),
         "fp8_e4m3_e4m3_weightonly": (1e-3, 0.05), "int8_dynamic": (1e-4, 0.02), "int8_weightonly": (1e-5, 0.01)}
WEIGHT_ONLY = {"fp8_e4m3_e4m3_weightonly", "int8_weightonly"}
TYPES = sorted(LAYER)


def _runs_here(name: str) -> None:
    reason = api._BY_NAME[name].unsupported(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{name} cannot run on this CPU: {reason}")


class Block(torch.nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(d, 4 * d)
        self.proj_out = torch.nn.Linear(4 * d, d, bias=False)
        self.odd = torch.nn.Linear(d, 30)  # 30 outputs: no fp8/int8 GEMM takes it (weight-only types do)
        self.small = torch.nn.Linear(8, 16)  # below min_features: left alone by every type

    def forward(self, x):
        h = self.proj_out(torch.nn.functional.gelu(self.proj_in(x)))
        return h, self.odd(x), self.small(x[..., :8])


def _emulated(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the quantized layer computes, in float64 from its quantized operands."""
    x2 = x.reshape(-1, x.shape[-1])
    w = layer.weight.double() * layer.weight_scale.double()
    if isinstance(layer, (quant.Float8WeightOnlyLinear, quant.Int8WeightOnlyLinear)):
        xd = x2.double()
    elif isinstance(layer, quant.Float8PerTensorLinear):
        xq, xs = fp8.quantize_tensor(x2)
        xd = xq.double() * xs.double()
    elif isinstance(layer, quant.Float8Linear):
        xq, xs = fp8.quantize_rows(x2)
        xd = xq.double() * xs.double()
    else:
        xq, xs = int8.quantize_rows_int8(x2)
        xd = xq.double() * xs.double()
    y = xd @ w.t()
    if layer.bias is not None:
        y = y + layer.bias.double()
    return y.reshape(*x.shape[:-1], layer.out_features)


@pytest.mark.parametrize("name", TYPES)
def test_each_type_computes_its_quantized_math_within_its_bound(name):
    _runs_here(name)
    torch.manual_seed(10)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)  # fresh: not the weights' draw
    box = torch.nn.Sequential(lin)
    ref = lin(x).detach()
    assert quantize_(box, config_for(name, min_features=16)) == 1
    layer = box[0]
    assert type(layer) is LAYER[name] and layer.weight.dtype in (torch.int8, fp8.FP8)
    out = layer(x)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert rel_l2(out, _emulated(layer, x)) < 1e-5  # the kernel computes exactly the quantized product
    lo, hi = BOUND[name]
    err = rel_l2(out, ref)
    print(f"{name}: rel L2 {err:.2e} (bound {lo:g}..{hi:g})")
    assert lo < err < hi, err


@pytest.mark.parametrize("name", TYPES)
def test_each_type_replaces_what_it_can_and_reports_the_memory(name, counters):
    _runs_here(name)
    torch.manual_seed(11)
    model = Block()
    x = torch.randn(2, 7, 64)
    ref = [t.detach() for t in model(x)]
    result = quantize_(model, config_for(name, min_features=16))
    expect = {"proj_in", "proj_out"} | ({"odd"} if name in WEIGHT_ONLY else set())
    assert set(result.layers) == expect and result == len(expect) == counters["quant"][name]
    assert type(model.small) is torch.nn.Linear  # near miss: below min_features
    if name not in WEIGHT_ONLY:
        assert type(model.odd) is torch.nn.Linear  # near miss: 30 outputs, no GEMM for it
    for fqn in expect:
        assert type(model.get_submodule(fqn)) is LAYER[name]
    floats = sum(model.get_submodule(f).weight.numel() for f in expect) * 4
    assert result.weight_bytes_before == floats
    assert floats / 4 <= result.weight_bytes_after < floats / 3  # 1-byte weights plus float32 row scales
    assert "MiB" in result.summary() and copy.deepcopy(result).layers == result.layers
    out = model(x)
    assert rel_l2(out[0], ref[0]) < 2 * BOUND[name][1]
    assert torch.equal(out[2], ref[2])


@pytest.mark.parametrize("name", TYPES)
def test_each_type_in_bfloat16(name):
    _runs_here(name)
    torch.manual_seed(12)
    lin = torch.nn.Linear(128, 64).to(torch.bfloat16)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    ref = lin(x).detach()
    box = torch.nn.Sequential(lin)
    quantize_(box, config_for(name, min_features=16))
    out = box(x)
    assert out.dtype == torch.bfloat16 and type(box[0]) is LAYER[name]
    assert 0 < rel_l2(out, ref) < BOUND[name][1] + 0.02  # + bf16's own rounding


def test_int8_dynamic_without_int_mm_gives_the_same_integers(monkeypatch):
    if not int8.cpu_int_mm():
        pytest.skip(f"torch {torch.__version__} has no torch._int_mm on the CPU: only the int32 product runs")
    torch.manual_seed(13)
    layer = quant.Int8DynamicLinear.from_linear(torch.nn.Linear(64, 32))
    x = torch.randn(5, 64)
    fast = layer(x)
    monkeypatch.setattr(int8, "cpu_int_mm", lambda: False)
    assert torch.equal(layer(x), fast)


def test_alias_fp8_is_the_per_channel_dynamic_type():
    cfg = config_for("fp8", min_features=32)
    assert type(cfg) is quant.Float8DynamicConfig and cfg.name == "fp8_e4m3_e4m3_dynamic" and cfg.min_features == 32
    assert quant.canonical_type("fp8") == "fp8_e4m3_e4m3_dynamic"
    assert set(TYPES) == set(quant.all_types())
    assert api._BY_NAME["fp8"] is quant.Float8DynamicConfig  # the alias resolves where plugin.py's validation looks


def test_unknown_types_name_the_close_ones_and_the_valid_ones():
    valid = ", ".join(supported_types("cpu"))
    with pytest.raises(QuantizationError, match=r"Unknown quantization type 'fp8_dyn'; did you mean "
                                                r"'fp8_e4m3_e4m3_dynamic' or .*Valid types on cpu: ") as e:
        config_for("fp8_dyn")
    assert valid in str(e.value) and "fp8=fp8_e4m3_e4m3_dynamic" in str(e.value)
    with pytest.raises(QuantizationError, match=r"'int8'; did you mean 'int8_dynamic' or 'int8_weightonly'\?"):
        config_for("int8")
    with pytest.raises(QuantizationError, match=r"Unknown quantization type 'int4'\. Valid types on cpu"):
        config_for("int4")
    with pytest.raises(QuantizationError, match="Unknown quantization type None"):
        config_for(None)


def test_fp8_on_a_gpu_without_fp8_tensor_cores_names_what_it_supports(monkeypatch):
    monkeypatch.setattr(api, "cuda_capability", lambda device: (8, 0))  # an A100
    assert supported_types("cuda") == ["int8_dynamic", "int8_weightonly"]
    with pytest.raises(QuantizationError, match=r"'fp8_e4m3_e4m3_dynamic' cannot run on cuda: fp8 needs a GPU with "
                                                r"fp8 tensor cores \(compute capability 8.9\+.* is 8.0\. Valid types "
                                                r"on cuda: int8_dynamic, int8_weightonly\."):
        config_for("fp8", device="cuda")
    monkeypatch.setattr(api, "cuda_capability", lambda device: (7, 5))  # a T4: nothing
    assert supported_types("cuda") == []
    with pytest.raises(QuantizationError, match=r"int8 needs an A100-class GPU .*Valid types on cuda: none"):
        config_for("int8_weightonly", device="cuda")
    monkeypatch.setattr(api, "cuda_capability", lambda device: (9, 0))  # an H100: all
    assert supported_types("cuda") == TYPES


def test_fp8_on_a_cpu_without_an_fp8_gemm_fails_before_anything_changes(monkeypatch):
    monkeypatch.setattr(fp8, "cpu_fp8_gemm", lambda per_tensor=False: False)
    assert "fp8_e4m3_e4m3_dynamic" not in supported_types("cpu")
    assert "fp8_e4m3_e4m3_weightonly" in supported_types("cpu")  # no fp8 GEMM needed
    model = Block()
    with pytest.raises(QuantizationError, match=r"'fp8_e4m3_e4m3_dynamic_per_tensor' cannot run on cpu: .*no "
                                                r"tensorwise fp8 GEMM.*Valid types on cpu: .*int8_dynamic"):
        quantize_(model, config_for("fp8_e4m3_e4m3_dynamic_per_tensor", min_features=16))
    assert all(type(m) is torch.nn.Linear for m in model.children())


def test_quant_flag_takes_the_named_types(counters):
    from nexfort.compilers import nexfort_compile

    model = Block()
    nexfort_compile(model, mode="quant", options={"quant.type": "int8_weightonly", "quant.min_features": 16,
                                                  "quant.exclude": ["odd"]})
    assert type(model.proj_in) is quant.Int8WeightOnlyLinear and counters["quant"]["int8_weightonly"] == 2
    assert type(model.odd) is torch.nn.Linear  # excluded by name
    other = Block()
    # QuantizationError from config_for, or NexfortConfigError where plugin.py validates the option first (both
    # ValueErrors)
    with pytest.raises(ValueError, match="Unknown quantization type 'int8_dyn'; did you mean 'int8_dynamic'"):
        nexfort_compile(other, mode="quant", options={"quant.type": "int8_dyn"})
    assert type(other.proj_in) is torch.nn.Linear


def test_compiled_int8_layers_match_their_eager_selves():
    torch.manual_seed(14)
    model = Block()
    x = torch.randn(2, 7, 64)
    full = model(x)[0].detach()
    assert quantize_(model, config_for("int8_dynamic", min_features=16), filter_fn=quant.excluding(["proj_out"])) == 1
    assert quantize_(model, config_for("int8_weightonly", min_features=16),
                     filter_fn=quant.excluding(["odd"])) == 1  # proj_out: the two int8 types in one graph
    eager = model(x)[0].detach()
    out = torch.compile(model, backend="nexfort")(x)[0]
    assert rel_l2(out, eager) < 1e-4  # compiled = eager on the same quantized layers
    assert 1e-4 < rel_l2(out, full) < 0.03
