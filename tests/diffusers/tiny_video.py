"""Tiny video pipelines (Wan, HunyuanVideo, LTX, CogVideoX) built from the configurations of diffusers' own
pipeline tests (huggingface/diffusers ``tests/pipelines/{wan,hunyuan_video,ltx,cogvideo}``, commit 58eb52c080:
``get_dummy_components``/``get_dummy_inputs``), with random weights, and everything built locally: where diffusers'
tests download ``hf-internal-testing/tiny-random-t5`` (or a tiny Llama/CLIP tokenizer) the text encoders here are
built from a ``T5Config``/``LlamaConfig``/``CLIPTextConfig`` and the tokenizer is a word-level ``tokenizers``
tokenizer over a small vocabulary written here (no download, no files)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

WORDS = ("a", "an", "the", "dance", "monkey", "cat", "dog", "runs", "on", "beach", "red", "blue", "negative",
         "video", "of", "in", "snow", "slowly")


def tiny_tokenizer(vocab_size: int = 1000, model_max_length: int = 77, bos: bool = False) -> Any:
    """A word-level fast tokenizer (``<pad>``=0 or 1, ``</s>``, ``<unk>``) that pads/truncates like the real ones."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"] if bos else ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS))}
    assert len(vocab) <= vocab_size
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[
            ("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length, **({"bos_token": "<s>"} if bos else {}))


def tiny_t5(d_model: int = 32) -> Any:
    """tiny-random-t5's shape (d_model 32, 2 layers, 4 heads), built from a config."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=1000, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _wan() -> Dict[str, Any]:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    return dict(cls=WanPipeline, components=dict(transformer=transformer, vae=vae, text_encoder=tiny_t5(),
                                                 tokenizer=tiny_tokenizer(), transformer_2=None,
                                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))


def _hunyuan() -> Dict[str, Any]:
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=10, num_layers=1, num_single_layers=1,
                                                 num_refiner_layers=1, patch_size=1, patch_size_t=1,
                                                 guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
                                                 rope_axes_dim=(2, 4, 4))
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                    layers_per_block=1, act_fn="silu", norm_num_groups=4, scaling_factor=0.476986,
                                    spatial_compression_ratio=8, temporal_compression_ratio=4,
                                    mid_block_add_attention=True)
    common = dict(bos_token_id=0, eos_token_id=2, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  pad_token_id=1, vocab_size=1000, hidden_act="gelu")
    torch.manual_seed(0)
    text_encoder = LlamaModel(LlamaConfig(hidden_size=16, rms_norm_eps=1e-05, **common)).eval()
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(hidden_size=8, layer_norm_eps=1e-05, projection_dim=32,
                                                  **common)).eval()
    return dict(cls=HunyuanVideoPipeline, components=dict(
        transformer=transformer, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tiny_tokenizer(bos=True, model_max_length=256), tokenizer_2=tiny_tokenizer(bos=True),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))


def _ltx() -> Dict[str, Any]:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                             num_layers=1, caption_channels=32)
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False, False, False, False, False),
                                upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
                                timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
                                decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return dict(cls=LTXPipeline, components=dict(transformer=transformer, vae=vae, text_encoder=tiny_t5(),
                                                 tokenizer=tiny_tokenizer(),
                                                 scheduler=FlowMatchEulerDiscreteScheduler()))


def _cogvideox() -> Dict[str, Any]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel, DDIMScheduler

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                              out_channels=4, time_embed_dim=2, text_embed_dim=32, num_layers=1,
                                              sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
                                              temporal_compression_ratio=4, max_text_seq_length=16)
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4)
    return dict(cls=CogVideoXPipeline, components=dict(transformer=transformer, vae=vae, text_encoder=tiny_t5(),
                                                       tokenizer=tiny_tokenizer(), scheduler=DDIMScheduler()))


#: name -> (builder, diffusers' test inputs but the size, three (frames, height, width) for the tests: diffusers tests
#: at 16x16 (LTX 32x32) and 8 or 9 frames; these keep at least 2 patches per side and 2 latent frames (Dynamo
#: specialises sizes of 1), valid frame counts (Wan/HunyuanVideo 4k+1, LTX 8k+1, CogVideoX 4k), and the first has
#: enough latent frames that a chunked VAE decoder meets every state of its cache at the first call (Wan: 3,
#: CogVideoX: 4 latent frames, two chunks); HunyuanVideo stays at <= 4 latent frames (no frame-wise tiling)
PIPES: Dict[str, Tuple[Callable[[], Dict[str, Any]], Dict[str, Any], Tuple[Tuple[int, int, int], ...]]] = {
    "wan": (_wan, dict(guidance_scale=6.0, max_sequence_length=16), ((9, 32, 32), (5, 48, 32), (13, 32, 48))),
    "hunyuan_video": (
        _hunyuan,
        dict(guidance_scale=4.5, max_sequence_length=16, prompt_template={"template": "{}", "crop_start": 0}),
        ((9, 16, 16), (5, 32, 16), (13, 16, 32)),
    ),
    "ltx": (_ltx, dict(guidance_scale=3.0, max_sequence_length=16), ((9, 32, 32), (17, 64, 32), (9, 32, 64))),
    "cogvideox": (_cogvideox, dict(guidance_scale=6.0, max_sequence_length=16),
                  ((16, 32, 32), (12, 48, 32), (20, 32, 48), (24, 48, 48))),
}


def tiny_video_pipe(name: str) -> Any:
    spec = PIPES[name][0]()
    pipe = spec["cls"](**spec["components"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def video_inputs(name: str, frames: int, height: int, width: int, seed: int = 0, steps: int = 2) -> Dict[str, Any]:
    kw = dict(PIPES[name][1], prompt="a cat runs on the beach", num_inference_steps=steps, num_frames=frames,
              height=height, width=width, output_type="pt", generator=torch.Generator().manual_seed(seed))
    if name != "hunyuan_video":
        kw["negative_prompt"] = "negative"
    return kw
