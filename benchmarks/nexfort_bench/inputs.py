"""The same inputs for every compiler: seeded latents and prompt embeddings (random when there is no text
encoder), pipeline call arguments, and the denoiser's own arguments for ``--denoiser-only``."""

from __future__ import annotations

from typing import Any, Dict

import torch

from nexfort_bench.models import CLIP_SEQ_LEN, PIXART_SEQ_LEN, SD3_SEQ_LEN, Loaded

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed, 8k"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _randn(shape, seed: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float32).to(device=device, dtype=dtype)


def vae_scale(pipe: Any) -> int:
    return int(getattr(pipe, "vae_scale_factor", 8) or 8)


def latent_shape(loaded: Loaded, batch: int, height: int, width: int) -> tuple:
    pipe = loaded.pipe
    s = vae_scale(pipe)
    channels = loaded.denoiser.config.in_channels
    return (batch, channels, height // s, width // s)


def prompt_kwargs(loaded: Loaded, batch: int, seed: int, dtype: torch.dtype, device: str) -> Dict[str, Any]:
    """Text conditioning: real prompts with a text encoder, else random embeddings of the encoder's shape."""
    pipe = loaded.pipe
    if getattr(pipe, "text_encoder", None) is not None or loaded.kind == "generic":
        return {"prompt": [PROMPT] * batch}
    if loaded.kind == "pixart":
        dim = pipe.transformer.config.caption_channels
        mask = torch.ones(batch, PIXART_SEQ_LEN, dtype=torch.long, device=device)
        mask[:, PIXART_SEQ_LEN // 4:] = 0  # a realistic prompt is shorter than the padded length
        return {"prompt": None, "negative_prompt": None,
                "prompt_embeds": _randn((batch, PIXART_SEQ_LEN, dim), seed + 1, dtype, device),
                "prompt_attention_mask": mask,
                "negative_prompt_embeds": _randn((batch, PIXART_SEQ_LEN, dim), seed + 2, dtype, device),
                "negative_prompt_attention_mask": mask.clone()}
    if loaded.kind == "sd3":  # CLIP-L/G + T5 tokens (joint_attention_dim), pooled CLIP-L + CLIP-G
        cfg = pipe.transformer.config
        text, pooled = (SD3_SEQ_LEN, cfg.joint_attention_dim), cfg.pooled_projection_dim
        return {"prompt": None, "prompt_embeds": _randn((batch, *text), seed + 1, dtype, device),
                "negative_prompt_embeds": _randn((batch, *text), seed + 2, dtype, device),
                "pooled_prompt_embeds": _randn((batch, pooled), seed + 3, dtype, device),
                "negative_pooled_prompt_embeds": _randn((batch, pooled), seed + 4, dtype, device)}
    unet = pipe.unet.config
    pooled = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
    dim = unet.cross_attention_dim
    return {"prompt": None, "prompt_embeds": _randn((batch, CLIP_SEQ_LEN, dim), seed + 1, dtype, device),
            "negative_prompt_embeds": _randn((batch, CLIP_SEQ_LEN, dim), seed + 2, dtype, device),
            "pooled_prompt_embeds": _randn((batch, pooled), seed + 3, dtype, device),
            "negative_pooled_prompt_embeds": _randn((batch, pooled), seed + 4, dtype, device)}


def pipeline_kwargs(loaded: Loaded, *, batch: int, height: int, width: int, steps: int, seed: int,
                    dtype: torch.dtype, device: str, guidance_scale: float = 4.5) -> Dict[str, Any]:
    """Arguments of ``pipe(**kwargs)``: identical tensors for every compiler (fixed latents)."""
    kw = prompt_kwargs(loaded, batch, seed, dtype, device)
    kw.update(height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
              latents=_randn(latent_shape(loaded, batch, height, width), seed, dtype, device),
              output_type="pt", num_images_per_prompt=1)
    if loaded.kind == "pixart":
        kw["use_resolution_binning"] = False  # time the asked resolution, not the nearest aspect-ratio bin
    return kw


def denoiser_kwargs(loaded: Loaded, *, batch: int, height: int, width: int, seed: int, dtype: torch.dtype,
                    device: str) -> Dict[str, Any]:
    """One denoiser forward as the pipeline calls it with classifier-free guidance (batch ``2 * batch``)."""
    b = 2 * batch
    s = vae_scale(loaded.pipe)
    den = loaded.denoiser
    x = _randn((b, den.config.in_channels, height // s, width // s), seed, dtype, device)
    t = torch.full((b,), 500, dtype=torch.long, device=device)
    if loaded.kind == "pixart":
        dim = den.config.caption_channels
        mask = torch.ones(b, PIXART_SEQ_LEN, dtype=torch.long, device=device)
        mask[:, PIXART_SEQ_LEN // 4:] = 0
        added = {"resolution": None, "aspect_ratio": None}
        if den.config.sample_size == 128:
            added = {"resolution": torch.tensor([[height, width]] * b, dtype=dtype, device=device),
                     "aspect_ratio": torch.tensor([[height / width]] * b, dtype=dtype, device=device)}
        return {"hidden_states": x, "encoder_hidden_states": _randn((b, PIXART_SEQ_LEN, dim), seed + 1, dtype, device),
                "encoder_attention_mask": mask, "timestep": t, "added_cond_kwargs": added, "return_dict": False}
    if loaded.kind == "sdxl":
        cfg = den.config
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * b, dtype=dtype, device=device)
        text = _randn((b, CLIP_SEQ_LEN, cfg.cross_attention_dim), seed + 1, dtype, device)
        added = {"text_embeds": _randn((b, pooled), seed + 3, dtype, device), "time_ids": time_ids}
        return {"sample": x, "timestep": t, "encoder_hidden_states": text, "added_cond_kwargs": added,
                "return_dict": False}
    if loaded.kind == "sd3":  # flow matching: the pipeline passes float timesteps (sigma x 1000)
        cfg = den.config
        return {"hidden_states": x, "timestep": torch.full((b,), 500.0, dtype=torch.float32, device=device),
                "encoder_hidden_states": _randn((b, SD3_SEQ_LEN, cfg.joint_attention_dim), seed + 1, dtype, device),
                "pooled_projections": _randn((b, cfg.pooled_projection_dim), seed + 3, dtype, device),
                "return_dict": False}
    raise ValueError(f"--denoiser-only does not know how to call a {type(den).__name__}; "
                     "it supports PixArt and SD3 transformers and SDXL-style UNets")
