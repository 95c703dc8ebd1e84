"""Tiny diffusion models built from configs (random weights, nothing downloaded) and their inputs."""

from __future__ import annotations

import torch


def tiny_pixart(seed: int = 0) -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, caption_channels=32, cross_attention_dim=16, norm_type="ada_norm_single",
    ).eval()


def pixart_inputs(batch: int = 2, size: int = 8, tokens: int = 6, seed: int = 1, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    enc = torch.randn(batch, tokens, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    mask = torch.ones(batch, tokens)
    mask[0, tokens // 2:] = 0  # text padding in the first prompt
    return {"hidden_states": x.to(device), "encoder_hidden_states": enc.to(device), "timestep": t.to(device),
            "encoder_attention_mask": mask.to(device), "added_cond_kwargs": {"resolution": None,
                                                                              "aspect_ratio": None},
            "return_dict": False}


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    ).eval()


def unet_inputs(batch: int = 2, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(batch, 4, size, size, generator=g), "timestep": torch.tensor(500),
            "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g), "return_dict": False}


def pixart_alpha_xl2(device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0) -> torch.nn.Module:
    """The published PixArt-α XL-2 1024 architecture (610 M parameters), random weights."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, caption_channels=4096, sample_size=128, patch_size=2,
        norm_type="ada_norm_single", use_additional_conditions=True,
    )
    return model.to(device=device, dtype=dtype).eval()


def pixart_alpha_inputs(height: int = 1024, width: int = 1024, batch: int = 2, tokens: int = 120,
                        device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 1):
    """One CFG step's inputs (batch 2 = conditional + unconditional), random text embeddings with padding."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, 4, height // 8, width // 8, generator=g)
    enc = torch.randn(batch, tokens, 4096, generator=g)
    mask = torch.ones(batch, tokens)
    mask[1, 20:] = 0
    t = torch.full((batch,), 500)
    res = torch.tensor([[height, width]] * batch, dtype=torch.float32)
    ar = torch.tensor([[height / width]] * batch, dtype=torch.float32)
    to = dict(device=device)
    return {"hidden_states": x.to(dtype=dtype, **to), "encoder_hidden_states": enc.to(dtype=dtype, **to),
            "timestep": t.to(**to), "encoder_attention_mask": mask.to(**to),
            "added_cond_kwargs": {"resolution": res.to(dtype=dtype, **to), "aspect_ratio": ar.to(dtype=dtype, **to)},
            "return_dict": False}
