"""torchao as the quantization engine (``options.quant.engine = "torchao"``, nexfort.passes.quant.torchao_engine)
and the benchmark's torchao reference run (``--torchao TYPE``).

On the CPU torchao runs its int8 types and fp8 weight-only (its dynamic fp8 needs a GPU of compute capability
8.9+); each test checks that torchao's tensors replaced exactly the layers nexfort's type takes, the output against
the float model, and the memory report.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from nexfort.passes.quant import QuantizationError, config_for, quantize_
from nexfort.passes.quant.api import candidates

torchao_missing = importlib.util.find_spec("torchao") is None
needs_torchao = pytest.mark.skipif(torchao_missing, reason="torchao is not installed (pip install torchao)")


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.GELU(), torch.nn.Linear(512, 256),
                               torch.nn.Linear(256, 100)).to(dtype).eval()  # the last: not a multiple of 16


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@needs_torchao
@pytest.mark.parametrize("type_name,bound", [("int8_weightonly", 2e-2), ("int8_dynamic", 4e-2),
                                             ("fp8_e4m3_e4m3_weightonly", 8e-2)])
def test_torchao_quantizes_the_layers_nexfort_would(type_name, bound):
    from nexfort.passes.quant.torchao_engine import quantize_with_torchao

    model, x = mlp(), torch.randn(8, 512)
    ref = model(x)
    config = config_for(type_name)
    expected = sorted(fqn for fqn, _ in candidates(model, config))
    result = quantize_with_torchao(model, config)
    assert result.layers == expected == ["0", "2"] and int(result) == 2  # the 256 -> 100 layer: below min_features
    for fqn, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):  # torchao keeps nn.Linear and swaps the weight for its tensor
            assert (type(m.weight) is not torch.nn.Parameter) == (fqn in expected), fqn
    with torch.no_grad():
        err = rel(model(x), ref)
    assert 0 < err < bound, err
    assert result.weight_bytes_after < result.weight_bytes_before / 2
    assert "(torchao)" in result.summary()


@needs_torchao
def test_fp16_row_wise_fp8_is_refused_before_anything_changes():
    from nexfort.passes.quant.torchao_engine import quantize_with_torchao

    model = mlp(torch.float16)
    with pytest.raises(QuantizationError, match="takes bfloat16 weights; 2 layers are float16.*engine 'nexfort'"):
        quantize_with_torchao(model, config_for("fp8"))
    assert all(type(m.weight) is torch.nn.Parameter for m in model.modules() if isinstance(m, torch.nn.Linear))


@needs_torchao
def test_dynamic_fp8_off_a_fp8_gpu_is_refused_naming_what_runs():
    from nexfort.passes.quant.torchao_engine import quantize_with_torchao

    model = mlp(torch.bfloat16)
    with pytest.raises(QuantizationError, match="compute capability 8.9.*on cpu.*int8_dynamic, int8_weightonly"):
        quantize_with_torchao(model, config_for("fp8_e4m3_e4m3_dynamic_per_tensor"))
    assert all(type(m.weight) is torch.nn.Parameter for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_bad_engine_is_an_error_before_compiling():
    from nexfort.compilers import nexfort_compile

    with pytest.raises(Exception, match="quant.engine' must be one of nexfort, torchao, got 'tao'"):
        nexfort_compile(mlp(), mode="quant", options={"quant.engine": "tao"})


@needs_torchao
def test_compile_with_the_torchao_engine_matches_nexforts_layers():
    from nexfort.compilers import nexfort_compile

    model, x = mlp(), torch.randn(8, 512)
    ours = mlp()
    quantize_(ours, config_for("int8_weightonly"))
    with torch.no_grad():
        ref, by_ours = model(x), ours(x)
        torch._dynamo.reset()
        out = nexfort_compile(model, mode="quant", options={"quant.type": "int8_weightonly",
                                                             "quant.engine": "torchao"})(x)
    assert type(model[0].weight).__name__ != "Parameter"
    # the same layers at the same precision: both engines' errors are of one size, and not zero
    assert 0 < rel(out, ref) < 2e-2 and 0 < rel(by_ours, ref) < 2e-2


def test_benchmark_rejects_a_bad_torchao_run_before_loading():
    from tests.helpers import load_script

    bench = load_script("benchmarks/text_to_image.py")
    with pytest.raises(SystemExit, match="reference run of --compiler all"):
        bench.main(["--model", "/does/not/exist", "--compiler", "nexfort", "--torchao", "int8_dynamic"])
    with pytest.raises(SystemExit, match="--torchao int9: Unknown quantization type 'int9'"):
        bench.main(["--model", "/does/not/exist", "--compiler", "all", "--torchao", "int9"])


def test_summary_reports_the_torchao_run():
    from tests.helpers import load_script

    load_script("benchmarks/text_to_image.py")
    from nexfort_bench.report import summary, summary_line

    s = summary({"inductor": {"step_ms_median": 40.0}, "torchao:fp8": {"step_ms_median": 30.0},
                 "nexfort": {"step_ms_median": 25.0}})
    assert s["torchao"] == 30.0 and s["speedup_vs_torchao"] == 1.2 and s["torchao_run"] == "torchao:fp8"
    assert "1.200x torchao:fp8 + torch.compile (30.000 ms)" in summary_line(s)


@needs_torchao
def test_benchmark_torchao_regional_run(tmp_path):
    """``--torchao TYPE --torchao-regional``: the torchao run compiles the quantized denoiser's repeated blocks (named
    so in the run), matches eager within the type's error, and leaves the original denoiser for the nexfort run."""
    import json

    from tests.benchmarks.conftest import SIZE
    from tests.helpers import load_script

    bench = load_script("benchmarks/text_to_image.py")
    out = tmp_path / "result.json"
    rc = bench.main(["--output-json", str(out), "--model", "tiny-sd3", "--compiler", "all", "--denoiser-only",
                     "--skip", "inductor", "--torchao", "int8_dynamic", "--torchao-regional",
                     "--compiler-config", '{"mode": ""}', *SIZE])
    data = json.loads(out.read_text())
    assert rc == 0 and list(data["runs"]) == ["eager", "torchao:int8_dynamic:regional", "nexfort"]
    run = data["runs"]["torchao:int8_dynamic:regional"]
    assert "error" not in run, run
    assert data["model"]["torchao_regional_blocks"] >= 2
    assert run["recompiles_in_timed_runs"]["dynamo_graphs"] == 0
    assert 0 < run["rel_l2_vs_eager"] < 5e-2
    assert data["runs"]["nexfort"]["rel_l2_vs_eager"] < 1e-4  # the original denoiser, untouched
    with pytest.raises(SystemExit, match="--torchao-regional: the way the --torchao run compiles"):
        bench.main(["--model", "/does/not/exist", "--compiler", "all", "--torchao-regional"])
