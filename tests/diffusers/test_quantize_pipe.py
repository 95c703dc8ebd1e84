"""quantize_pipe and compile_pipe's quant flag on a tiny PixArt-α pipeline (float8 linears on the CPU's fp8 GEMM)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from tiny_pixart import pipe_inputs, tiny_pixart_pipe  # noqa: E402

from nexfort.diffusers import compile_pipe, quantize_pipe  # noqa: E402
from nexfort.passes.quant import Float8Linear, QuantizationError, fp8  # noqa: E402
from tests.helpers import rel_l2  # noqa: E402

pytestmark = pytest.mark.skipif(not fp8.cpu_fp8_gemm(),
                                reason=f"torch {torch.__version__} has no fp8 GEMM (torch._scaled_mm) on the CPU")


def _image(pipe, seed=0):
    with torch.inference_mode():
        return pipe(**pipe_inputs(seed)).images


def test_quantize_pipe_quantizes_the_denoiser_once_fused(counters):
    pipe = tiny_pixart_pipe()
    ref = _image(pipe)
    done = quantize_pipe(pipe, "fp8", min_features=16)
    blocks = pipe.transformer.transformer_blocks[0]
    assert done["transformer"] == counters["quant"]["fp8_e4m3_e4m3_dynamic"] > 0
    attn = blocks.attn1
    assert isinstance(attn.to_qkv, Float8Linear) and isinstance(attn.to_q, Float8Linear)
    assert attn.to_q.weight.untyped_storage().data_ptr() == attn.to_qkv.weight.untyped_storage().data_ptr()
    assert not any(isinstance(m, Float8Linear) for m in pipe.vae.modules())  # only the denoiser by default
    out = _image(pipe)
    err = rel_l2(out, ref)
    assert 0 < err < 0.1, err


def test_bad_requests_fail_before_anything_changes():
    pipe = tiny_pixart_pipe()
    with pytest.raises(QuantizationError, match="Unknown quantization type 'fp16'"):
        quantize_pipe(pipe, "fp16", min_features=16)
    with pytest.raises(ValueError, match="'unet' to quantize in PixArtAlphaPipeline; valid components: .*transformer"):
        quantize_pipe(pipe, components=["transformer", "unet"], min_features=16)
    assert not any(isinstance(m, Float8Linear) for m in pipe.transformer.modules())
    assert quantize_pipe(pipe, min_features=16, exclude=["attn", "ff", "proj", "caption", "adaln", "emb"]) == {
        "transformer": 0}


def test_compile_pipe_quant_flag_matches_the_eager_quantized_pipeline(counters):
    eager = tiny_pixart_pipe()
    quantize_pipe(eager, "fp8", min_features=16)
    ref = _image(eager, seed=3)
    pipe = tiny_pixart_pipe()
    pipe.vae.decoder.probe = torch.nn.Linear(16, 16)  # a linear the flag could take, outside the denoiser
    compile_pipe(pipe, mode="max-optimize:quant", options={"quant.min_features": 16})
    assert isinstance(pipe.transformer.transformer_blocks[0].attn1.to_qkv, Float8Linear)
    assert type(pipe.vae.decoder.probe) is torch.nn.Linear  # the flag quantizes the denoisers only
    # what compile_pipe did to each component, the quantized layers' weight memory before and after included
    prepared = pipe._nexfort_compiled["prepared"]
    n = counters["quant"]["fp8_e4m3_e4m3_dynamic"] // 2  # the eager pipeline's quantize_pipe counted the same layers
    assert f"quantized {n} linear layers in fp8_e4m3_e4m3_dynamic: weights 0.04 MiB -> 0.01 MiB" in \
        prepared["transformer"], prepared
    assert not any("quantized" in line for comp, lines in prepared.items() if comp != "transformer" for line in lines)
    out = _image(pipe, seed=3)
    assert rel_l2(out, ref) < 2e-3


def test_lora_on_a_quantized_pipeline_is_a_clear_error():
    import os
    import sys

    from nexfort.diffusers import fuse_lora

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    from nexfort_bench import models

    pipe = models.load_pipeline("tiny-sd3", torch.float32, "cpu").pipe  # a pipeline that loads LoRA weights
    assert quantize_pipe(pipe, min_features=16)["transformer"] > 0
    with pytest.raises(RuntimeError, match="transformer is quantized .* fuse the LoRA first, then quantize"):
        fuse_lora(pipe, {})


def test_quantize_pipe_int8_reports_the_weight_memory(counters):
    from nexfort.passes.quant import Int8DynamicLinear

    pipe = tiny_pixart_pipe()
    ref = _image(pipe)
    done = quantize_pipe(pipe, quant_type="int8_dynamic", ignores=["proj_out"], min_features=16)
    result = done["transformer"]
    assert result == counters["quant"]["int8_dynamic"] > 0 and result.type == "int8_dynamic"
    assert isinstance(pipe.transformer.transformer_blocks[0].attn1.to_qkv, Int8DynamicLinear)
    assert type(pipe.transformer.proj_out) is torch.nn.Linear  # ignored by name
    assert result.weight_bytes_after < result.weight_bytes_before / 2
    err = rel_l2(_image(pipe), ref)
    assert 0 < err < 0.05, err


def test_quantize_pipe_selective_saves_and_loads_its_choice(tmp_path):
    from nexfort.passes.quant import Int8DynamicLinear

    path = tmp_path / "sel.json"
    pipe = tiny_pixart_pipe()
    done = quantize_pipe(pipe, quant_type="int8_dynamic", top_percentage=50, calibration=[pipe_inputs(1)],
                         selection_file=str(path), min_features=16)["transformer"]
    assert path.exists() and done.kept and done > 0
    for fqn in done.kept:
        assert type(pipe.transformer.get_submodule(fqn)) is torch.nn.Linear  # kept in high precision
    again = tiny_pixart_pipe(seed=1)  # same architecture, other weights: the saved choice applies
    loaded = quantize_pipe(again, quant_type="int8_dynamic", selection_file=str(path), min_features=16)
    assert loaded["transformer"].layers == done.layers
    assert isinstance(again.transformer.get_submodule(done.layers[0]), Int8DynamicLinear)


def test_quantize_pipe_selective_bad_inputs_fail_before_anything_changes(tmp_path):
    path = tmp_path / "sel.json"
    quantize_pipe(tiny_pixart_pipe(), quant_type="int8_dynamic", top_percentage=50, calibration=[pipe_inputs(1)],
                  selection_file=str(path), min_features=16)
    pipe = tiny_pixart_pipe()
    with pytest.raises(QuantizationError, match=r"top_percentage must be a number in \(0, 100\] .*got 0\."):
        quantize_pipe(pipe, "int8_dynamic", top_percentage=0, calibration=[pipe_inputs(1)])
    with pytest.raises(QuantizationError, match=r"top_percentage=50 needs calibration inputs"):
        quantize_pipe(pipe, "int8_dynamic", top_percentage=50)
    with pytest.raises(QuantizationError, match=r"nope.json' does not exist"):
        quantize_pipe(pipe, "int8_dynamic", selection_file=str(tmp_path / "nope.json"))
    with pytest.raises(QuantizationError, match=r"measured for quantization type 'int8_dynamic', not 'int8_weigh"):
        quantize_pipe(pipe, "int8_weightonly", selection_file=str(path), min_features=16)
    assert not any(type(m).__name__.startswith(("Int8", "Float8")) for m in pipe.transformer.modules())
    deeper = tiny_pixart_pipe(num_layers=2)  # another model: a second block the file does not know
    with pytest.raises(QuantizationError, match=r"linear layers differ: not in the file: 'transformer_blocks.1"):
        quantize_pipe(deeper, "int8_dynamic", selection_file=str(path), min_features=16)
    assert not any(type(m).__name__.startswith("Int8") for m in deeper.transformer.modules())
    assert not getattr(deeper.transformer.transformer_blocks[0].attn1, "fused_projections", False)  # not even fused


def test_lora_guard_sees_every_quantized_type():
    """fuse_lora refuses a pipeline quantized with any type (not only fp8's layer class)."""
    from nexfort.diffusers.lora import _is_quantized
    from nexfort.passes.quant import config_for, quantize_

    for name in ("int8_weightonly", "int8_dynamic"):
        m = torch.nn.Sequential(torch.nn.Linear(256, 256))
        assert quantize_(m, config_for(name)) == 1
        assert _is_quantized(m[0]), name
    assert not _is_quantized(torch.nn.Linear(4, 4))
