"""compile_pipe on a tiny PixArt-α pipeline built from a config: correctness, ignores, shared parameters."""

from __future__ import annotations

import pytest
import torch
from tiny_pixart import pipe_inputs, tiny_pixart_pipe

from nexfort.core.errors import NexfortConfigError
from nexfort.diffusers import compile_pipe, resolve_pipe_config, uncompile_pipe, upcast_vae_once

pytest.importorskip("diffusers")


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compiled_pipe_matches_eager_and_shares_parameters(counters, assert_close):
    pipe, eager = tiny_pixart_pipe(), tiny_pixart_pipe()
    keys = list(pipe.transformer.state_dict())
    with torch.inference_mode():
        compile_pipe(pipe, mode="jit")
        # compiled in place: same classes, same state_dict keys, components still registered
        assert type(pipe.transformer).__name__ == "PixArtTransformer2DModel"
        assert list(pipe.transformer.state_dict()) == keys
        assert _compiled(pipe.transformer) and _compiled(pipe.vae.decoder) and _compiled(pipe.vae.encoder)
        kw = pipe_inputs(seed=1)
        assert_close(pipe(**kw).images, eager(**kw).images, tol=1e-4)
        graphs = counters["backend"]["graphs"]
        assert graphs == 2, graphs  # transformer and VAE decoder (the encoder is never called)
        assert counters["backend"]["fallbacks"] == 0

        # in-place weight changes (what LoRA fusing does) and load_state_dict reach the compiled pipeline
        for p in (pipe, eager):
            p.transformer.proj_out.weight.mul_(1.5)
            p.transformer.transformer_blocks[0].attn1.to_q.weight.add_(0.05)
        new_dec = {k: v * 0.9 for k, v in eager.vae.decoder.state_dict().items()}
        eager.vae.decoder.load_state_dict(new_dec)
        pipe.vae.decoder.load_state_dict(new_dec)
        kw = pipe_inputs(seed=2)  # fresh inputs, same shapes
        out, ref = pipe(**kw).images, eager(**kw).images
        assert_close(out, ref, tol=1e-4)
        assert counters["backend"]["graphs"] == graphs, "weight updates must not recompile"

    uncompile_pipe(pipe)
    assert not _compiled(pipe.transformer) and not _compiled(pipe.vae.decoder)


def test_ignores_skip_components():
    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, ignores=["vae"])
    assert _compiled(pipe.transformer)
    assert not _compiled(pipe.vae.decoder) and not _compiled(pipe.vae.encoder)
    assert pipe._nexfort_compiled["components"] == ["transformer"]

    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, ignores=("transformer", "vae.encoder"), backend="inductor")
    assert not _compiled(pipe.transformer) and not _compiled(pipe.vae.encoder)
    assert _compiled(pipe.vae.decoder)


def test_unknown_ignore_name_lists_the_valid_ones():
    pipe = tiny_pixart_pipe()
    with pytest.raises(NexfortConfigError) as e:
        compile_pipe(pipe, ignores=["unet"])
    msg = str(e.value)
    assert "'unet'" in msg and "transformer" in msg and "vae.decoder" in msg
    assert not _compiled(pipe.transformer), "nothing may be compiled when the arguments are wrong"


@pytest.mark.parametrize("kwargs, needle", [
    ({"mode": "max-speed"}, "max-speed"),
    ({"options": {"inductor.no_such_knob": 1}}, "no_such_knob"),
    ({"memory_format": "channels_first"}, "channels_first"),
    ({"options": '{"inductor": '}, "JSON"),
    ({"backend": "tensorrt"}, "tensorrt"),
])
def test_bad_configuration_fails_before_any_work(kwargs, needle):
    pipe = tiny_pixart_pipe()
    with pytest.raises(NexfortConfigError, match=needle):
        compile_pipe(pipe, **kwargs)
    assert not _compiled(pipe.transformer) and not _compiled(pipe.vae.decoder)


def test_memory_format_channels_last_only_for_conv_models():
    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, memory_format="channels_last")
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.transformer.pos_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)  # a conv too


def test_fuse_qkv_projections_hook():
    """The plugin's transform: fuses only with max-optimize on and the option on (fake configuration)."""
    from omegaconf import OmegaConf

    from nexfort.diffusers import plugin

    def cfg(max_optimize, fuse):
        return OmegaConf.create({"flags": {"max_optimize": max_optimize},
                                 "options": {"diffusers": {"fuse_qkv_projections": fuse}}})

    pipe = tiny_pixart_pipe()
    assert plugin.nexfort_transform_module(pipe.transformer, cfg(False, True)) is None
    assert plugin.nexfort_transform_module(pipe.transformer, cfg(True, False)) is None
    assert plugin.nexfort_transform_module(pipe.vae.decoder, cfg(True, True)) is None  # not a diffusers model
    assert not plugin.qkv_fused(pipe.transformer)
    assert "fused" in plugin.nexfort_transform_module(pipe.transformer, cfg(True, True))
    assert plugin.qkv_fused(pipe.transformer)
    assert plugin.nexfort_transform_module(pipe.transformer, cfg(True, True)) is None  # only once


def test_fuse_qkv_projections_with_max_optimize():
    """max-optimize is claimed by the pass plugins, which the test environment installs: a plugin that fails to
    load is this test's failure, not a skip."""
    from nexfort.diffusers.plugin import qkv_fused

    assert resolve_pipe_config(mode="max-optimize").flags.max_optimize
    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, mode="max-optimize", fuse_qkv_projections=False)
    assert getattr(pipe.transformer, "original_attn_processors", None) is None and not qkv_fused(pipe.transformer)
    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, mode="max-optimize")
    assert pipe.transformer.original_attn_processors is not None and qkv_fused(pipe.transformer)


def test_fp16_vae_that_needs_upcast_is_upcast_once():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from tiny_pixart import VAE

    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
                                cross_attention_dim=16, addition_embed_type="text_time", addition_time_embed_dim=4,
                                projection_class_embeddings_input_dim=32, sample_size=8)
    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(**VAE, force_upcast=True), text_encoder=None,
                                     text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
                                     scheduler=EulerDiscreteScheduler(), add_watermarker=False)
    pipe.to(dtype=torch.float16)
    assert upcast_vae_once(pipe)
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float16
    with torch.inference_mode():
        image = pipe.vae.decode(torch.randn(1, 4, 4, 4, dtype=torch.float16), return_dict=False)[0]
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert not upcast_vae_once(pipe)  # already done

    pixart = tiny_pixart_pipe(dtype=torch.float16)  # PixArt's pipeline runs its VAE in fp16: left alone
    assert not upcast_vae_once(pixart) and pixart.vae.dtype == torch.float16


def test_freezing_says_weight_updates_do_not_reach_the_compiled_pipe():
    pipe = tiny_pixart_pipe()
    with pytest.warns(UserWarning, match="freezing"):
        compile_pipe(pipe, mode="freezing")


def test_explicit_upsample_sizes_are_exact_and_only_where_torch_needs_them():
    """torch 2.2's Inductor misreads F.interpolate(scale_factor=2.0, mode="nearest") under inference mode
    (pytorch/pytorch#116848); compile_pipe then gives diffusers' Upsample2D explicit output sizes, which must be
    the same computation in eager."""
    from nexfort.core import compat
    from nexfort.diffusers import dynamic

    pipe, ref = tiny_pixart_pipe(), tiny_pixart_pipe()
    dec = pipe.vae.decoder
    n_up = sum(type(m).__name__ == "Upsample2D" for m in dec.modules())
    assert n_up == 3
    ok = compat.inductor_upsample_nearest_scale_factor_ok()
    assert ok in (True, False)  # this machine has a C++ compiler: the probe must decide
    assert dynamic.make_upsample_sizes_explicit(dec) == (0 if ok else n_up)
    assert dynamic.make_upsample_sizes_explicit(dec, force=True) == (n_up if ok else 0)
    assert dynamic.make_upsample_sizes_explicit(dec, force=True) == 0  # only once
    z = torch.randn(2, 4, 8, 6)
    with torch.inference_mode():
        assert torch.equal(dec(z), ref.vae.decoder(z))
