"""LoRA on a compiled SDXL pipeline (tiny UNet): nexfort's fuse_lora/unfuse_lora and swaps never recompile; the
diffusers API's calls that do are counted. Every output is compared with eager carrying the same LoRA."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from nexfort.diffusers import compile_pipe, lora  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from nexfort_bench import inputs, models  # noqa: E402


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _save_lora(seed: int, path: str) -> str:
    """A random rank-2 LoRA of the tiny SDXL UNet's attention projections, saved as diffusers does."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = models.load_pipeline("tiny-sdxl", torch.float32, "cpu").pipe.unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    StableDiffusionXLPipeline.save_lora_weights(path, unet_lora_layers=get_peft_model_state_dict(unet),
                                                safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return _save_lora(1, str(d / "a")), _save_lora(2, str(d / "b"))


def _pipes(mode: str = "jit"):
    compiled = models.load_pipeline("tiny-sdxl", torch.float32, "cpu")
    eager = models.load_pipeline("tiny-sdxl", torch.float32, "cpu")
    compile_pipe(compiled.pipe, mode=mode, ignores=["vae"])
    return compiled, eager


def _check(compiled, eager, seed, assert_close):
    kw = inputs.pipeline_kwargs(compiled, batch=1, height=64, width=64, steps=2, seed=seed, dtype=torch.float32,
                                device="cpu")
    with torch.inference_mode():
        out, ref = compiled.pipe(**kw).images, eager.pipe(**kw).images
    assert_close(out, ref, tol=1e-4)
    return out


def test_fuse_swap_unfuse_never_recompile(loras, assert_close):
    compiled, eager = _pipes()
    base = _check(compiled, eager, 0, assert_close)
    g0 = _graphs()
    a, b = loras
    changed = None
    for step, (weights, scale) in enumerate([(a, 1.0), (b, 0.5), (a, 0.7)]):  # fuse, then two swaps
        for p in (compiled.pipe, eager.pipe):
            changed = lora.fuse_lora(p, weights, lora_scale=scale)
        out = _check(compiled, eager, 1 + step, assert_close)
        assert _graphs() == g0, f"fusing LoRA {step} recompiled"
    assert changed and all(n.startswith("unet.") for n in changed)
    for p in (compiled.pipe, eager.pipe):
        assert lora.unfuse_lora(p)
    assert not lora.unfuse_lora(compiled.pipe)  # nothing left
    out = _check(compiled, eager, 0, assert_close)
    assert torch.equal(out, base), "unfuse_lora restores the weights exactly"
    assert _graphs() == g0


def test_lora_reaches_fused_qkv_projections(loras, assert_close):
    """max-optimize fuses QKV projections (``to_qkv``/``to_kv``: copies of ``to_q``/``to_k``/``to_v``): the fused
    LoRA is copied into them in place (eager, so no compile time: the compiled graph reads the same tensors)."""
    fused, plain = (models.load_pipeline("tiny-sdxl", torch.float32, "cpu") for _ in range(2))
    fused.pipe.unet.fuse_qkv_projections()
    qkv = [m.to_qkv.weight for m in fused.pipe.unet.modules() if hasattr(m, "to_qkv")]
    assert qkv
    before = [w.clone() for w in qkv]
    for p in (fused.pipe, plain.pipe):
        lora.fuse_lora(p, loras[0], lora_scale=0.8)
    assert all(not torch.equal(w, b) for w, b in zip(qkv, before)), "the LoRA must reach the fused copies"
    kw = inputs.denoiser_kwargs(fused, batch=1, height=64, width=64, seed=3, dtype=torch.float32, device="cpu")
    with torch.inference_mode():
        assert_close(fused.pipe.unet(**kw)[0], plain.pipe.unet(**kw)[0], tol=1e-5)
    lora.unfuse_lora(fused.pipe)
    assert all(torch.equal(w, b) for w, b in zip(qkv, before))
