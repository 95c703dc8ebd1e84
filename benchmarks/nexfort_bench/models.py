"""Pipelines for the benchmarks: real ``from_pretrained`` loading, or built-in architectures with random weights.

Nothing here downloads anything unless ``--model`` names a hub id. The built-in defaults are the published
architecture configs (PixArt-α XL-2 1024-MS; SDXL base UNet; Stable Diffusion 3 medium's MMDiT and 16-channel
VAE) with random weights, or small variants of the same architectures for machines without a GPU. Pipelines without
a text encoder get ready random prompt embeddings of the shape their text encoder would produce.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

BUILTIN = ("pixart-alpha", "pixart-alpha-small", "pixart-sigma", "sdxl", "sdxl-small", "sd3-medium", "flux-dev",
           "tiny-pixart", "tiny-pixart-sigma", "tiny-sdxl", "tiny-sd3", "tiny-flux")

# --------------------------------------------------------------------------------------- architectures
PIXART_ALPHA_XL2_1024 = dict(  # PixArt-alpha/PixArt-XL-2-1024-MS transformer/config.json
    sample_size=128, num_layers=28, num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
    patch_size=2, cross_attention_dim=1152, caption_channels=4096, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, activation_fn="gelu-approximate",
    attention_bias=True, dropout=0.0, upcast_attention=False, use_additional_conditions=True)
PIXART_SMALL = {**PIXART_ALPHA_XL2_1024, "num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 48,
                "cross_attention_dim": 192, "caption_channels": 256}  # hidden divisible by 3 (micro-conditions)
PIXART_TINY = {**PIXART_ALPHA_XL2_1024, "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8,
               "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 8,
               "use_additional_conditions": False}

# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/config.json: PixArt-α's blocks without the micro-conditions,
# 300 T5 tokens, position embedding at interpolation scale 2 (what diffusers derives from sample_size 128)
PIXART_SIGMA_XL2_1024 = {**PIXART_ALPHA_XL2_1024, "use_additional_conditions": False, "interpolation_scale": 2}
PIXART_SIGMA_TINY = {**PIXART_TINY, "interpolation_scale": 2}

SD_VAE = dict(  # stabilityai/sd-vae-ft-ema (PixArt-α's VAE); SDXL's differs in scaling_factor
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215, sample_size=1024)
VAE_SMALL = {**SD_VAE, "layers_per_block": 1, "norm_num_groups": 8, "block_out_channels": (16, 32, 32, 32)}
VAE_TINY = {**SD_VAE, "layers_per_block": 1, "norm_num_groups": 4, "block_out_channels": (4, 8, 8, 8)}

SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32)
SDXL_SMALL = {**SDXL_UNET, "layers_per_block": 1, "block_out_channels": (32, 64, 64), "attention_head_dim": (2, 4, 4),
              "transformer_layers_per_block": (1, 1, 1), "cross_attention_dim": 64, "addition_time_embed_dim": 8,
              "projection_class_embeddings_input_dim": 6 * 8 + 32, "norm_num_groups": 8}
SDXL_TINY = {**SDXL_SMALL, "block_out_channels": (8, 16, 16), "attention_head_dim": (2, 2, 2),
             "cross_attention_dim": 16, "addition_time_embed_dim": 4, "norm_num_groups": 4, "sample_size": 8,
             "projection_class_embeddings_input_dim": 6 * 4 + 8}
SDXL_VAE = {**SD_VAE, "scaling_factor": 0.13025, "force_upcast": True}

SD3_MEDIUM = dict(  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json (2.03 B parameters):
    # hidden 24 x 64 = 1536 (diffusers' single-file loader: adaLN bias 6 x 1536 = 9216), position table 192 x 192
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192)
# two blocks (the last one is context_pre_only); position table 96 x 96 (diffusers' default): at most
# 96 x 2 x 8 = 1536 pixels a side, so the resolution grid (up to 1024) stays inside it as it does for SD3-medium
SD3_TINY = {**SD3_MEDIUM, "sample_size": 8, "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
            "joint_attention_dim": 32, "caption_projection_dim": 16, "pooled_projection_dim": 32,
            "pos_embed_max_size": 96}
SD3_VAE_CHANGES = dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                       use_post_quant_conv=False)
SD3_VAE = {**SD_VAE, **SD3_VAE_CHANGES}  # stable-diffusion-3-medium-diffusers vae/config.json
SD3_VAE_TINY = {**VAE_TINY, **SD3_VAE_CHANGES}

FLUX_DEV = dict(  # black-forest-labs/FLUX.1-dev transformer/config.json (11.9 B parameters; guidance-distilled)
    patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56))
FLUX_TINY = {**FLUX_DEV, "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
             "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
             "axes_dims_rope": (4, 6, 6)}
FLUX_VAE_CHANGES = dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
FLUX_VAE = {**SD_VAE, **FLUX_VAE_CHANGES}  # FLUX.1-dev vae/config.json
FLUX_VAE_TINY = {**VAE_TINY, **FLUX_VAE_CHANGES, "latent_channels": 4}  # 4 x 2 x 2 = the tiny transformer's 16

PIXART_SCHEDULER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
                        prediction_type="epsilon", solver_order=2, algorithm_type="dpmsolver++",
                        lower_order_final=True)
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # FlowMatchEulerDiscreteScheduler
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)  # FLUX.1-dev scheduler_config.json

SCHEDULERS = {"none": None, "dpmsolver": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
              "ddim": "DDIMScheduler", "euler_a": "EulerAncestralDiscreteScheduler"}
PIXART_SEQ_LEN = 120  # T5 tokens PixArt-α was trained with
PIXART_SIGMA_SEQ_LEN = 300  # PixArt-Σ's max_sequence_length
FLUX_SEQ_LEN = 512  # FLUX.1-dev's T5 max_sequence_length
FLUX_GUIDANCE = 3.5
CLIP_SEQ_LEN = 77
SD3_SEQ_LEN = CLIP_SEQ_LEN + 256  # SD3: CLIP-L/G tokens, then T5 (max_sequence_length 256), concatenated


@dataclass
class Loaded:
    pipe: Any
    name: str
    kind: str  # "pixart" | "sdxl" | "sd3" | "flux" | "generic"
    denoiser_name: str
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)


def default_model(family: str = "pixart") -> str:
    small = not torch.cuda.is_available()
    return {"pixart": "pixart-alpha", "sdxl": "sdxl"}[family] + ("-small" if small else "")


def build_pixart(variant: str = "pixart-alpha", seed: int = 0) -> Any:
    import diffusers
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

    tcfg, vcfg = {"pixart-alpha": (PIXART_ALPHA_XL2_1024, SD_VAE), "pixart-alpha-small": (PIXART_SMALL, VAE_SMALL),
                  "tiny-pixart": (PIXART_TINY, VAE_TINY),
                  "pixart-sigma": (PIXART_SIGMA_XL2_1024, SDXL_VAE),  # PixArt-Σ decodes with SDXL's VAE
                  "tiny-pixart-sigma": (PIXART_SIGMA_TINY, VAE_TINY)}[variant]
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(**tcfg)
    vae = AutoencoderKL(**vcfg)
    scheduler = DPMSolverMultistepScheduler(**PIXART_SCHEDULER)
    cls = diffusers.PixArtSigmaPipeline if "sigma" in variant else diffusers.PixArtAlphaPipeline
    return cls(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


def known_config(cls: type, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` without the keys that ``cls`` (an older diffusers) does not take and that only restate the newer
    default (None); any other unknown key is an error, as diffusers would raise."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(cfg)
    unknown = {k: v for k, v in cfg.items() if k not in params}
    bad = {k: v for k, v in unknown.items() if v is not None}
    if bad:
        raise TypeError(f"{cls.__name__} of this diffusers takes none of {sorted(bad)}")
    return {k: v for k, v in cfg.items() if k in params}


def build_flux(variant: str = "flux-dev", seed: int = 0) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tcfg, vcfg = {"flux-dev": (FLUX_DEV, FLUX_VAE), "tiny-flux": (FLUX_TINY, FLUX_VAE_TINY)}[variant]
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**known_config(FluxTransformer2DModel, tcfg))
    vae = AutoencoderKL(**vcfg)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)


def build_sdxl(variant: str = "sdxl", seed: int = 0) -> Any:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    ucfg, vcfg = {"sdxl": (SDXL_UNET, SDXL_VAE), "sdxl-small": (SDXL_SMALL, {**VAE_SMALL, "force_upcast": True}),
                  "tiny-sdxl": (SDXL_TINY, {**VAE_TINY, "force_upcast": True})}[variant]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**ucfg)
    vae = AutoencoderKL(**vcfg)
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=scheduler, add_watermarker=False)


def build_sd3(variant: str = "sd3-medium", seed: int = 0) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tcfg, vcfg = {"sd3-medium": (SD3_MEDIUM, SD3_VAE), "tiny-sd3": (SD3_TINY, SD3_VAE_TINY)}[variant]
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**tcfg)
    vae = AutoencoderKL(**vcfg)
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)


def _is_sd3(config: Any) -> bool:
    """SD3's MMDiT (SD3Transformer2DModel): pooled text projection and caption projection (Flux has no caption
    projection, AuraFlow no pooled projection)."""
    return all(k in config for k in ("joint_attention_dim", "caption_projection_dim", "pooled_projection_dim"))


def _is_flux(config: Any) -> bool:
    """Flux's MMDiT (FluxTransformer2DModel): RoPE axes and single-stream blocks."""
    return all(k in config for k in ("axes_dims_rope", "num_single_layers"))


def _kind(pipe: Any) -> str:
    tr = getattr(pipe, "transformer", None)
    if tr is not None and _is_flux(getattr(tr, "config", {})):
        return "flux"
    if tr is not None and "caption_channels" in getattr(tr, "config", {}):
        return "pixart"
    if tr is not None and _is_sd3(getattr(tr, "config", {})):
        return "sd3"
    unet = getattr(pipe, "unet", None)
    if unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "generic"


def _denoiser_name(pipe: Any) -> str:
    for name in ("transformer", "unet", "prior", "decoder"):
        if isinstance(getattr(pipe, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(pipe).__name__} has no transformer/unet/prior/decoder to benchmark")


def _load_model_folder(path: str, torch_dtype: torch.dtype) -> Optional[Any]:
    """A folder holding one denoiser (``config.json`` with ``_class_name``): wrap it in a built-in pipeline."""
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        return None
    with open(cfg_file) as f:
        cls_name = json.load(f).get("_class_name", "")
    import diffusers

    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise ValueError(f"{cfg_file}: unknown diffusers class {cls_name!r}")
    model = cls.from_pretrained(path, torch_dtype=torch_dtype)
    if "caption_channels" in model.config:
        pipe = build_pixart("pixart-alpha" if torch.cuda.is_available() else "pixart-alpha-small")
        pipe.transformer = model
    elif getattr(model.config, "addition_embed_type", None) == "text_time":
        pipe = build_sdxl("sdxl" if torch.cuda.is_available() else "sdxl-small")
        pipe.unet = model
    elif _is_sd3(model.config):
        pipe = build_sd3("tiny-sd3")  # its transformer is replaced: no 2 B random one built for nothing
        if torch.cuda.is_available():
            from diffusers import AutoencoderKL

            pipe.vae = AutoencoderKL(**SD3_VAE)
        pipe.transformer = model
    else:
        raise ValueError(f"{path}: a lone {cls_name} is not supported; save the whole pipeline (model_index.json)")
    return pipe


def load_pipeline(model: Optional[str], dtype: torch.dtype, device: str, scheduler: str = "none",
                  seed: int = 0, family: str = "pixart") -> Loaded:
    """``model``: a built-in name (see :data:`BUILTIN`), a local folder or a hub id; None: the default."""
    model = model or default_model(family)
    if model in BUILTIN:
        with torch.device(device):  # random init on the GPU: seconds instead of minutes for SDXL's UNet
            build = (build_pixart if "pixart" in model else build_sd3 if "sd3" in model else
                     build_flux if "flux" in model else build_sdxl)
            pipe = build(model, seed)
        # the scheduler keeps its tables on the CPU (diffusers converts them to numpy): built outside that context
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    elif os.path.isdir(model) and not os.path.isfile(os.path.join(model, "model_index.json")):
        pipe = _load_model_folder(model, dtype)
        if pipe is None:
            raise ValueError(f"{model}: neither a pipeline (model_index.json) nor a model folder (config.json)")
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype)
    pipe.to(device=device, dtype=dtype)
    if SCHEDULERS.get(scheduler, "?") is None:
        pass
    elif scheduler in SCHEDULERS:
        import diffusers

        pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    pipe.set_progress_bar_config(disable=True)
    name = _denoiser_name(pipe)
    den = getattr(pipe, name)
    info = {"model": model, "pipeline": type(pipe).__name__, "denoiser": type(den).__name__,
            "denoiser_params_M": round(sum(p.numel() for p in den.parameters()) / 1e6, 2),
            "scheduler": type(pipe.scheduler).__name__, "text_encoder": getattr(pipe, "text_encoder", None) is not None}
    return Loaded(pipe, model, _kind(pipe), name, info)
