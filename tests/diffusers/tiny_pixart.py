"""A tiny PixArt-α pipeline built from a config (random weights, no text encoder) and its inputs."""

from __future__ import annotations

import torch

TRANSFORMER = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, sample_size=8, in_channels=4,
                   out_channels=8, patch_size=2, caption_channels=32, cross_attention_dim=16,
                   norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                   num_embeds_ada_norm=1000, activation_fn="gelu-approximate", attention_bias=True)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
           block_out_channels=(4, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
SEQ = 12


def tiny_pixart_pipe(seed: int = 0, dtype: torch.dtype = torch.float32, num_layers: int = 1):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=AutoencoderKL(**VAE),
                               transformer=PixArtTransformer2DModel(**{**TRANSFORMER, "num_layers": num_layers}),
                               scheduler=DPMSolverMultistepScheduler())
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_inputs(seed: int, size: int = 64, steps: int = 2, dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, SEQ, dtype=torch.long)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=torch.randn(1, SEQ, 32, generator=g, dtype=dtype),
                prompt_attention_mask=mask, negative_prompt_embeds=torch.randn(1, SEQ, 32, generator=g, dtype=dtype),
                negative_prompt_attention_mask=mask, latents=torch.randn(1, 4, size // 8, size // 8, generator=g,
                                                                        dtype=dtype),
                height=size, width=size, num_inference_steps=steps, output_type="pt", use_resolution_binning=False)
