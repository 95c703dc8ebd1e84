"""nexfort-diffusers' patches of diffusers' internals, registered in nexfort's patch registry
(:mod:`nexfort.core.patches`; listed in ``docs/patches.md``).

All are instance patches: they change attributes of one model's modules, are recorded on those modules, and
``uncompile_pipe(pipe)`` (or ``nexfort.core.patches.restore(module)``) restores the originals. A module that is
garbage-collected takes its patches with it.
"""

from __future__ import annotations

from nexfort.core.api import patches

Patch, register = patches.Patch, patches.register

OWNER = "nexfort-diffusers"
PATCH_EMBED = "diffusers.PatchEmbed.forward"
UPSAMPLE_SIZE = "diffusers.Upsample2D.forward"
UNET_UPSAMPLERS = "diffusers.UNet2DConditionModel.num_upsamplers"
ATTENTION_MASK = "diffusers.Attention.prepare_attention_mask"
VAE_UPCAST = "diffusers.AutoencoderKL.upcast_once"
COG_PATCH_EMBED = "diffusers.CogVideoXPatchEmbed.forward"
VIDEO_VAE_SLICING = "diffusers.video_vae.use_slicing"
HUNYUAN_UPSAMPLE = "diffusers.HunyuanVideoUpsampleCausal3D.forward"
COG_SPATIAL_NORM = "diffusers.CogVideoXSpatialNorm3D.forward"

register(Patch(
    name=PATCH_EMBED,
    target="forward of diffusers' PatchEmbed instances (PixArt, DiT), and one entry per instance in "
           "nexfort.diffusers.dynamic.patch_embed._CONSTANTS (the ints its forward reads through a global)",
    detects="diffusers' own PatchEmbed.forward that recomputes a sin-cos embedding per size (read from its code), "
            "a (1, N, dim) pos_embed, an int patch size, a Conv2d projection; anything else is left alone "
            "(SD3's cropped embedding is branch-free already)",
    needed="dynamic=True (the diffusers plugin's module transform, options.diffusers.dynamic_transforms): diffusers "
           "branches on the size (if self.height != height ...), a guard that recompiles at the second size",
    undo="uncompile_pipe / patches.restore(module): the instance forward and marks deleted (the class's forward "
         "applies again) and the _CONSTANTS entry deleted; the entry also goes when the module is collected",
    versions="every supported diffusers (0.30-0.42) and torch",
    owner=OWNER,
))

register(Patch(
    name=UPSAMPLE_SIZE,
    target="forward of diffusers' Upsample2D instances (nearest interpolation, no transposed conv)",
    detects="Inductor's nearest upsampling by scale_factor=2.0 under inference mode compared with eager once per "
            "process on a small CPU tensor (nexfort.core.compat.inductor_upsample_nearest_scale_factor_ok), "
            "remembered through the cache's facts",
    needed="compile_pipe where that check fails (or cannot run): the lowering reads input index 2*i, out of bounds "
           "(NaN/garbage in VAE decoders and UNets); the patched forward passes the 2x output size instead",
    undo="uncompile_pipe / patches.restore(module): the instance forward and mark deleted",
    versions="torch 2.2 (fixed in 2.3; every other torch passes the check: nothing patched)",
    upstream="https://github.com/pytorch/pytorch/issues/116848",
    owner=OWNER,
))

register(Patch(
    name=UNET_UPSAMPLERS,
    target="num_upsamplers of a diffusers UNet (UNet2DConditionModel and look-alikes from diffusers)",
    detects="an int num_upsamplers > 0 on a diffusers model",
    needed="dynamic=True in compile_pipe: reads 2 ** 40 during each compiled call, so that the UNet forwards "
           "explicit upsample sizes at every resolution (one graph instead of one for multiples of "
           "2 ** num_upsamplers and one for the others; the same values)",
    undo="restored when each compiled call returns (try/finally in always_forward_upsample_sizes): never left set",
    versions="every supported diffusers and torch",
    owner=OWNER,
))

register(Patch(
    name=ATTENTION_MASK,
    target="prepare_attention_mask of diffusers' Attention instances",
    detects="diffusers' own Attention.prepare_attention_mask / AttentionModuleMixin.prepare_attention_mask with "
            "its parameters (attention_mask, target_length, batch_size, out_dim) and an int heads",
    needed="dynamic=True (the diffusers plugin's module transform): repeat_interleave(heads, output_size=...) "
           "becomes a guard on heads * batch, so every new batch size recompiled; unsqueeze+expand+reshape gives "
           "the same values without it",
    undo="uncompile_pipe / patches.restore(module): the instance method and mark deleted",
    versions="needed on torch 2.11 (measured; 2.13 keeps the size symbolic); applied on every torch with dynamic=True",
    owner=OWNER,
))

register(Patch(
    name=VAE_UPCAST,
    target="decode/encode/tiled_decode/tiled_encode of an fp16 VAE with config.force_upcast, and its dtype (fp32)",
    detects="an fp16 VAE with force_upcast in a pipeline that upcasts it around every decode (SDXL-style: "
            "upcast_vae, or force_upcast in the pipeline's __call__)",
    needed="compile_pipe (unless the VAE is ignored): the pipeline would move the VAE between fp16 and fp32 at "
           "every call (a recompile of the VAE each time); it is moved to fp32 once and its inputs cast instead",
    undo="uncompile_pipe / patches.restore(vae): the instance methods deleted and the VAE moved back to fp16 "
         "(exact: fp16 -> fp32 -> fp16 round-trips)",
    versions="every supported diffusers and torch",
    owner=OWNER,
))

register(Patch(
    name=COG_PATCH_EMBED,
    target="forward of diffusers' CogVideoXPatchEmbed instances (CogVideoX, ConsisID)",
    detects="diffusers' own CogVideoXPatchEmbed.forward (its qualified name and module), which rebuilds its position "
            "embedding when the latent size differs from the config's sample sizes (read from its code); anything "
            "else is left alone (nexfort.diffusers.video)",
    needed="dynamic=True (the diffusers plugin's module transform): the branch on the size is a guard that recompiles "
           "at the second frame count or resolution; the patched forward sets the sample sizes to -1 for the call",
    undo="uncompile_pipe / patches.restore(module): the instance forward and mark deleted",
    versions="diffusers with CogVideoX (0.30-0.42), every torch",
    owner=OWNER,
))

register(Patch(
    name=VIDEO_VAE_SLICING,
    target="use_slicing of a video VAE whose parts cannot be split per sample (a feature cache, folded frames)",
    detects="compile_pipe(dynamic=True) on a VAE part that decodes chunk by chunk with a cache (Wan, CogVideoX, "
            "Mochi) or folds frames into the batch (SVD) (nexfort.diffusers.video.vae_part_splits)",
    needed="dynamic=True: one sample per decode/encode (diffusers' own slicing, the same result) instead of nexfort's "
           "per-sample split, so that a batch-size change compiles nothing new",
    undo="uncompile_pipe / patches.restore(vae): the previous use_slicing",
    versions="every supported diffusers with video VAEs, every torch",
    owner=OWNER,
))

register(Patch(
    name=HUNYUAN_UPSAMPLE,
    target="forward of diffusers' HunyuanVideoUpsampleCausal3D instances (the HunyuanVideo VAE's decoder upsamplers)",
    detects="diffusers' own HunyuanVideoUpsampleCausal3D.forward (its qualified name, module and code: split off the "
            "first frame, interpolate the rest) with three integer upsample factors; anything else is left alone "
            "(nexfort.diffusers.video)",
    needed="compile_pipe with dynamic=True: the interpolation of the frames after the first guards that they are "
           "more than one, so 2 latent frames compiled another decoder graph; the patched forward upsamples every "
           "frame in space and picks the frames in time with one index (the same values)",
    undo="uncompile_pipe / patches.restore(module): the instance forward and mark deleted",
    versions="diffusers with HunyuanVideo (0.32-0.42), every torch",
    owner=OWNER,
))

register(Patch(
    name=COG_SPATIAL_NORM,
    target="forward of diffusers' CogVideoXSpatialNorm3D and CogVideoXUpsample3D (compress_time) instances (the "
           "CogVideoX VAE decoder's spatial norms and temporal upsamplers)",
    detects="diffusers' own forwards in their known forms (the spatial norm with the conv cache, 0.31-0.42, or "
            "without, 0.30; the upsampler's one form: their parameters and the names their code uses); anything "
            "else is left alone (nexfort.diffusers.video)",
    needed="compile_pipe with dynamic=True: both forwards branch on an odd frame count (the first frame handled "
           "apart), so the decoder compiled another graph the first time an odd latent frame count followed an "
           "even one; the patched forwards resize space for every frame and pick the frames with one index, the "
           "odd case chosen by a tensor (the same values)",
    undo="uncompile_pipe / patches.restore(module): the instance forward and mark deleted",
    versions="diffusers with CogVideoX (0.30-0.42), every torch",
    owner=OWNER,
))
