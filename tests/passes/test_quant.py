"""nexfort.passes.quant: ``quantize_`` with float8 linears, the ``quant`` mode flag and its plugin.

Each check runs the real ``torch._scaled_mm`` (the CPU has an fp8 kernel); the speed is the GPU benchmark's."""

from __future__ import annotations

import warnings

import pytest
import torch

from nexfort.passes.quant import Float8DynamicConfig, Float8Linear, QuantizationError, config_for, fp8, quantize_

from ..helpers import rel_l2

needs_cpu_fp8 = pytest.mark.skipif(not fp8.cpu_fp8_gemm(),
                                   reason=f"torch {torch.__version__} has no fp8 GEMM (torch._scaled_mm) on the CPU")
CFG = Float8DynamicConfig(min_features=16)


class Block(torch.nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(d, 4 * d)
        self.proj_out = torch.nn.Linear(4 * d, d, bias=False)
        self.odd = torch.nn.Linear(d, 30)  # 30 outputs: not a multiple of 16, left alone
        self.small = torch.nn.Linear(8, 16)  # below min_features, left alone

    def forward(self, x):
        h = self.proj_out(torch.nn.functional.gelu(self.proj_in(x)))
        return h, self.odd(x), self.small(x[..., :8])


def _emulated(lin: Float8Linear, x: torch.Tensor) -> torch.Tensor:
    """What the fp8 layer computes, in float64 from its quantized operands (checks the kernel path exactly)."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, xs = fp8.quantize_rows(x2)
    y = (xq.double() * xs.double()) @ (lin.weight.double() * lin.weight_scale.double()).t()
    if lin.bias is not None:
        y = y + lin.bias.double()
    return y.reshape(*x.shape[:-1], lin.out_features)


@needs_cpu_fp8
def test_fp8_linear_matches_its_quantized_math_and_stays_near_full_precision():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    q = Float8Linear.from_linear(lin)
    assert q.weight.dtype == fp8.FP8 and q.weight_scale.shape == (48, 1)
    out = q(x)
    assert out.dtype == x.dtype and out.shape == (3, 5, 48)
    assert rel_l2(out, _emulated(q, x)) < 1e-5  # the fp8 GEMM computes exactly the quantized product
    err = rel_l2(out, lin(x).detach())
    assert 1e-4 < err < 0.06, err  # fp8 rounding: visible, bounded


@needs_cpu_fp8
def test_quantize_replaces_what_it_can_and_leaves_the_rest(counters):
    torch.manual_seed(1)
    model = Block()
    x = torch.randn(2, 7, 64)
    ref = [t.detach() for t in model(x)]
    assert quantize_(model, CFG) == 2
    assert counters["quant"]["fp8_e4m3_e4m3_dynamic"] == 2
    assert isinstance(model.proj_in, Float8Linear) and isinstance(model.proj_out, Float8Linear)
    assert type(model.odd) is torch.nn.Linear and type(model.small) is torch.nn.Linear  # near misses
    out = model(x)
    assert rel_l2(out[0], ref[0]) < 0.08
    assert torch.equal(out[1], ref[1]) and torch.equal(out[2], ref[2])


@needs_cpu_fp8
def test_filter_and_default_size_threshold_leave_layers_alone():
    model = Block()
    assert quantize_(model, CFG, filter_fn=lambda m, fqn: "proj_out" not in fqn) == 1
    assert type(model.proj_out) is torch.nn.Linear
    assert quantize_(Block(), Float8DynamicConfig()) == 0  # default min_features=256: all of these are small


@needs_cpu_fp8
def test_row_views_of_a_fused_layer_become_views_of_its_fp8_rows():
    torch.manual_seed(2)
    model = torch.nn.Module()
    model.to_qkv = torch.nn.Linear(64, 192)
    for i, name in enumerate("qkv"):  # what nexfort.diffusers.fused makes of the unfused projections
        lin = torch.nn.Linear(64, 64)
        lin.weight = torch.nn.Parameter(model.to_qkv.weight.data[64 * i:64 * (i + 1)])
        lin.bias = torch.nn.Parameter(model.to_qkv.bias.data[64 * i:64 * (i + 1)].clone())
        setattr(model, f"to_{name}", lin)
    x = torch.randn(4, 64)
    assert quantize_(model, CFG) == 4
    fused = model.to_qkv(x)
    for i, name in enumerate("qkv"):
        layer = getattr(model, f"to_{name}")
        assert layer.weight.untyped_storage().data_ptr() == model.to_qkv.weight.untyped_storage().data_ptr()
        assert torch.equal(layer(x), fused[:, 64 * i:64 * (i + 1)])
    storages = {b.untyped_storage().data_ptr() for m in model.modules() for b in m.buffers(recurse=False)}
    assert len(storages) == 2  # one fp8 weight and one scale tensor for all four layers


@needs_cpu_fp8
def test_dtype_moves_keep_the_quantized_weights():
    q = Float8Linear.from_linear(torch.nn.Linear(32, 32))
    q.to(torch.float16)
    assert q.weight.dtype == fp8.FP8 and q.weight_scale.dtype == torch.float32 and q.bias.dtype == torch.float16
    x = torch.randn(2, 32, dtype=torch.float16)
    assert q(x).dtype == torch.float16 and torch.isfinite(q(x)).all()


def test_bad_requests_are_clear_errors():
    with pytest.raises(QuantizationError, match=r"Unknown quantization type 'fp9'; did you mean 'fp8'\? Valid"):
        config_for("fp9")
    with pytest.raises(QuantizationError, match="expected a module containing nn.Linear"):
        quantize_(torch.nn.Linear(32, 32), CFG)


@needs_cpu_fp8
def test_quant_flag_quantizes_through_nexfort_compile(counters):
    from nexfort.compilers import nexfort_compile

    torch.manual_seed(3)
    model = Block()
    x = torch.randn(2, 7, 64)
    full = model(x)[0].detach()
    compiled = nexfort_compile(model, mode="quant", options={"quant.min_features": 16,
                                                             "quant.exclude": ["proj_out"]})
    assert isinstance(model.proj_in, Float8Linear) and counters["quant"]["fp8_e4m3_e4m3_dynamic"] == 1
    assert type(model.proj_out) is torch.nn.Linear  # excluded by name
    eager_quantized = model(x)[0]
    out = compiled(x)[0]
    assert rel_l2(out, eager_quantized) < 1e-3  # compiled = eager on the same quantized layers
    assert rel_l2(out, full) < 0.08


def test_unknown_type_fails_before_compiling():
    from nexfort.compilers import nexfort_compile
    from nexfort.core.errors import NexfortConfigError

    model = Block()
    # an option's value: reported when the configuration is resolved (nexfort_validate_config), as every bad option
    with pytest.raises(NexfortConfigError, match="Unknown quantization type 'int3'"):
        nexfort_compile(model, mode="quant", options={"quant.type": "int3"})
    assert type(model.proj_in) is torch.nn.Linear


def test_graph_level_backend_says_nothing_was_quantized():
    model = Block()
    compiled = torch.compile(model, backend="nexfort", options={"mode": "quant"})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compiled(torch.randn(2, 64))
    assert any("cannot quantize the module" in str(w.message) for w in record)
    assert type(model.proj_in) is torch.nn.Linear


@pytest.mark.gpu
def test_fp8_linear_on_the_gpu_matches_its_quantized_math():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor cores need compute capability 8.9+")
    torch.manual_seed(4)
    lin = torch.nn.Linear(256, 512).cuda().half()
    x = torch.randn(4, 77, 256, device="cuda", dtype=torch.float16)
    q = Float8Linear.from_linear(lin)
    out = q(x)
    assert out.dtype == torch.float16
    assert rel_l2(out, _emulated(q, x)) < 5e-3  # bf16 GEMM output
    assert rel_l2(out, lin(x)) < 0.06
