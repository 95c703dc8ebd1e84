"""nexfort.diffusers.patches: what compile_pipe changes in diffusers' modules is recorded, and uncompile_pipe gives
the modules back as diffusers made them (nothing compiled here: compile_pipe is lazy, and the checks are on the
modules)."""

from __future__ import annotations

import gc

import pytest
import torch
from tiny_pixart import pipe_inputs, tiny_pixart_pipe

from nexfort.core import patches
from nexfort.diffusers import compile_pipe, uncompile_pipe, upcast_vae_once
from nexfort.diffusers.dynamic import make_patch_embeds_dynamic, make_upsample_sizes_explicit, patch_embed

pytest.importorskip("diffusers")


def _own(module: torch.nn.Module, attr: str) -> bool:
    return attr in module.__dict__


def test_uncompile_pipe_restores_diffusers_modules(assert_close):
    pipe, eager = tiny_pixart_pipe(), tiny_pixart_pipe()
    entries = set(vars(patch_embed._CONSTANTS))
    compile_pipe(pipe, mode="", dynamic=True, ignores=["vae"])  # (the VAE: test_the_fp16_vae_goes_back_to_fp16)
    pe = pipe.transformer.pos_embed
    attns = [m for m in pipe.transformer.modules() if type(m).__name__ == "Attention"]
    assert _own(pe, "forward") and patches.patches_of(pe) == ["diffusers.PatchEmbed.forward"]
    assert attns and all(_own(m, "prepare_attention_mask") for m in attns)
    assert len(vars(patch_embed._CONSTANTS)) == len(entries) + 1
    assert any(line.startswith("diffusers.Attention.prepare_attention_mask") for line in patches.leftovers())

    uncompile_pipe(pipe)
    assert not _own(pe, "forward") and not hasattr(pe, "_nexfort_dynamic") and not hasattr(pe, "_nexfort_constants")
    assert not any(_own(m, "prepare_attention_mask") or hasattr(m, "_nexfort_mask") for m in attns)
    assert set(vars(patch_embed._CONSTANTS)) == entries
    assert getattr(pipe.transformer, "_compiled_call_impl", None) is None
    assert patches.leftovers() == []
    with torch.inference_mode():  # diffusers' own modules again: eager's result exactly
        kw = pipe_inputs(seed=3)
        assert torch.equal(pipe(**kw).images, eager(**kw).images)


def test_patched_modules_take_their_constants_with_them():
    """The PatchEmbed patch keeps the ints its forward reads in a module-level namespace: one entry per live
    patched module, never more (it grew with every compiled model before)."""
    from diffusers import PixArtTransformer2DModel
    from tiny_pixart import TRANSFORMER

    entries = len(vars(patch_embed._CONSTANTS))
    for _ in range(3):
        model = PixArtTransformer2DModel(**TRANSFORMER)
        assert make_patch_embeds_dynamic(model) == 1
        assert len(vars(patch_embed._CONSTANTS)) == entries + 1
        del model
        gc.collect()
        assert len(vars(patch_embed._CONSTANTS)) == entries
    assert patches.leftovers() == []


def test_upsample_sizes_are_restored():
    dec = tiny_pixart_pipe().vae.decoder
    ups = [m for m in dec.modules() if type(m).__name__ == "Upsample2D"]
    assert make_upsample_sizes_explicit(dec, force=True) == len(ups) > 0
    assert all(_own(m, "forward") for m in ups)
    assert patches.restore(dec) == ["diffusers.Upsample2D.forward"]
    assert not any(_own(m, "forward") or hasattr(m, "_nexfort_explicit") for m in ups)


def test_the_fp16_vae_goes_back_to_fp16():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from tiny_pixart import VAE

    from tests.core.models import tiny_unet

    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(**VAE, force_upcast=True), text_encoder=None,
                                     text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=tiny_unet(),
                                     scheduler=EulerDiscreteScheduler(), add_watermarker=False)
    pipe.to(dtype=torch.float16)
    weight = pipe.vae.decoder.conv_in.weight.clone()
    assert upcast_vae_once(pipe)  # what compile_pipe does first
    assert pipe.vae.dtype == torch.float32 and _own(pipe.vae, "decode")
    uncompile_pipe(pipe)
    assert pipe.vae.dtype == torch.float16 and not _own(pipe.vae, "decode") and not _own(pipe.vae, "encode")
    assert torch.equal(pipe.vae.decoder.conv_in.weight, weight)  # fp16 -> fp32 -> fp16 is exact
    assert patches.leftovers() == []
