"""The same inputs for every compiler: seeded latents and prompt embeddings (random when there is no text
encoder), pipeline call arguments, and the denoiser's own arguments for ``--denoiser-only``."""

from __future__ import annotations

from typing import Any, Dict

import torch

from nexfort_bench.models import (
    CLIP_SEQ_LEN,
    FLUX_GUIDANCE,
    FLUX_SEQ_LEN,
    PIXART_SEQ_LEN,
    PIXART_SIGMA_SEQ_LEN,
    SD3_SEQ_LEN,
    Loaded,
)

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
    if loaded.kind == "flux":  # packed latents: 2x2 patches of the VAE's latent, one token each
        return (batch, (height // (2 * s)) * (width // (2 * s)), channels)
    return (batch, channels, height // s, width // s)


def pixart_seq_len(loaded: Loaded) -> int:
    return PIXART_SIGMA_SEQ_LEN if type(loaded.pipe).__name__ == "PixArtSigmaPipeline" else PIXART_SEQ_LEN


def _pixart_micro_conditions(den: Any) -> bool:
    """Whether a PixArt transformer takes resolution/aspect-ratio conditions (diffusers: unset means 1024-MS)."""
    use = getattr(den.config, "use_additional_conditions", None)
    return bool(den.config.sample_size == 128 if use is None else use)


def prompt_kwargs(loaded: Loaded, batch: int, seed: int, dtype: torch.dtype, device: str) -> Dict[str, Any]:
    """Text conditioning: real prompts with a text encoder, else random embeddings of the encoder's shape."""
    pipe = loaded.pipe
    if getattr(pipe, "text_encoder", None) is not None or loaded.kind == "generic":
        return {"prompt": [PROMPT] * batch}
    if loaded.kind == "pixart":
        dim, seq = pipe.transformer.config.caption_channels, pixart_seq_len(loaded)
        mask = torch.ones(batch, seq, dtype=torch.long, device=device)
        mask[:, PIXART_SEQ_LEN // 4:] = 0  # a realistic prompt (30 tokens) is shorter than the padded length
        return {"prompt": None, "negative_prompt": None,
                "prompt_embeds": _randn((batch, seq, dim), seed + 1, dtype, device),
                "prompt_attention_mask": mask,
                "negative_prompt_embeds": _randn((batch, seq, dim), seed + 2, dtype, device),
                "negative_prompt_attention_mask": mask.clone()}
    if loaded.kind == "flux":  # guidance-distilled: no negative prompt, T5 tokens + pooled CLIP-L
        cfg = pipe.transformer.config
        return {"prompt": None, "prompt_embeds": _randn((batch, FLUX_SEQ_LEN, cfg.joint_attention_dim), seed + 1,
                                                        dtype, device),
                "pooled_prompt_embeds": _randn((batch, cfg.pooled_projection_dim), seed + 3, dtype, device)}
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
    if loaded.kind == "flux":
        kw["guidance_scale"] = FLUX_GUIDANCE  # the distilled guidance, an input of the transformer (no CFG batch)
    return kw


def denoiser_kwargs(loaded: Loaded, *, batch: int, height: int, width: int, seed: int, dtype: torch.dtype,
                    device: str) -> Dict[str, Any]:
    """One denoiser forward as the pipeline calls it with classifier-free guidance (batch ``2 * batch``; Flux,
    guidance-distilled: ``batch``, with its packed latents, RoPE ids and guidance)."""
    b = batch if loaded.kind == "flux" else 2 * batch
    s = vae_scale(loaded.pipe)
    den = loaded.denoiser
    x = None if loaded.kind == "flux" else _randn((b, den.config.in_channels, height // s, width // s), seed, dtype,
                                                  device)
    t = torch.full((b,), 500, dtype=torch.long, device=device)
    if loaded.kind == "flux":
        cfg = den.config
        lh, lw = height // (2 * s), width // (2 * s)
        img_ids = torch.zeros(lh, lw, 3, device=device, dtype=dtype)
        img_ids[..., 1] += torch.arange(lh, device=device, dtype=dtype)[:, None]
        img_ids[..., 2] += torch.arange(lw, device=device, dtype=dtype)[None, :]
        return {"hidden_states": _randn((b, lh * lw, cfg.in_channels), seed, dtype, device),
                "encoder_hidden_states": _randn((b, FLUX_SEQ_LEN, cfg.joint_attention_dim), seed + 1, dtype, device),
                "pooled_projections": _randn((b, cfg.pooled_projection_dim), seed + 3, dtype, device),
                "timestep": torch.full((b,), 0.5, dtype=dtype, device=device),
                "guidance": torch.full((b,), FLUX_GUIDANCE, dtype=torch.float32, device=device),
                "img_ids": img_ids.reshape(lh * lw, 3),
                "txt_ids": torch.zeros(FLUX_SEQ_LEN, 3, device=device, dtype=dtype), "return_dict": False}
    if loaded.kind == "pixart":
        dim, seq = den.config.caption_channels, pixart_seq_len(loaded)
        mask = torch.ones(b, seq, dtype=torch.long, device=device)
        mask[:, PIXART_SEQ_LEN // 4:] = 0
        added = {"resolution": None, "aspect_ratio": None}
        if _pixart_micro_conditions(den):
            added = {"resolution": torch.tensor([[height, width]] * b, dtype=dtype, device=device),
                     "aspect_ratio": torch.tensor([[height / width]] * b, dtype=dtype, device=device)}
        return {"hidden_states": x, "encoder_hidden_states": _randn((b, seq, dim), seed + 1, dtype, device),
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
                     "it supports PixArt, SD3 and Flux transformers and SDXL-style UNets")
