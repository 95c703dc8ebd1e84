"""compile_pipe with dynamic=True: one denoiser graph for every resolution, batch size, text length and scheduler
(counted with Dynamo's own counters), a clear error for a resolution the model cannot take. The SDXL UNet's
resolution grid is tested through the example script (tests/benchmarks)."""

from __future__ import annotations

import pytest
import torch
from tiny_pixart import TRANSFORMER, pipe_inputs, tiny_pixart_pipe

from nexfort.diffusers import UnsupportedResolutionError, compile_pipe, dynamic

pytest.importorskip("diffusers")


def _graphs() -> int:
    """Graphs Dynamo compiled so far (``torch._dynamo.reset()`` does not reset this counter: use differences)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _inputs(seed: int, h: int, w: int, batch: int = 1, seq: int = 12, steps: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    kw = pipe_inputs(seed, steps=steps)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[:, seq // 2 :] = 0
    kw.update(
        prompt_embeds=torch.randn(batch, seq, 32, generator=g),
        prompt_attention_mask=mask,
        negative_prompt_embeds=torch.randn(batch, seq, 32, generator=g),
        negative_prompt_attention_mask=mask.clone(),
        latents=torch.randn(batch, 4, h // 8, w // 8, generator=g),
        height=h,
        width=w,
    )
    return kw


def test_patch_embed_patch_is_numerically_diffusers():
    """The branch-free PatchEmbed gives exactly diffusers' result at the config's size and at every other."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    ref = PixArtTransformer2DModel(**TRANSFORMER).pos_embed
    new = PixArtTransformer2DModel(**TRANSFORMER).pos_embed
    new.load_state_dict(ref.state_dict())
    assert dynamic.make_patch_embeds_dynamic(new) == 1
    assert dynamic.make_patch_embeds_dynamic(new) == 0  # only once
    for h, w in [(8, 8), (8, 12), (14, 6), (32, 32)]:
        x = torch.randn(2, 4, h, w)
        assert torch.equal(new(x), ref(x)), (h, w)


def test_pixart_any_resolution_batch_and_text_length_one_graph(counters, assert_close):
    """The first size is square (the duck-sizing trap) and the config's own size (PatchEmbed's branch)."""
    pipe, eager = tiny_pixart_pipe(), tiny_pixart_pipe()
    compile_pipe(pipe, mode="jit", dynamic=True, ignores=["vae"])
    g0 = _graphs()
    cases = [(64, 64, 1, 12), (64, 96, 1, 12), (128, 48, 1, 12), (96, 96, 4, 12), (48, 80, 2, 20)]
    with torch.inference_mode():
        for i, (h, w, batch, seq) in enumerate(cases):
            kw = _inputs(10 + i, h, w, batch, seq)
            out, ref = pipe(**kw).images, eager(**kw).images
            assert out.shape == (batch, 3, h, w)
            assert_close(out, ref, tol=1e-4)
            assert _graphs() - g0 == 1, f"{h}x{w} batch {batch} text {seq} recompiled the transformer"
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["dynamic_graphs"] == 1
    assert counters["backend"]["fallbacks"] == 0


def test_vae_decodes_per_sample_so_a_batch_change_never_recompiles_it(assert_close):
    """The compiled VAE decoder sees batch 1 only (Dynamo would specialise a first batch of 1 and compile
    again for batch 3): one graph for batches 1, 3 and 2, each output equal to eager's batched decode."""
    pipe, eager = tiny_pixart_pipe(), tiny_pixart_pipe()
    compile_pipe(pipe, mode="jit", dynamic=True, ignores=["transformer"])
    g0 = _graphs()
    with torch.inference_mode():
        for i, batch in enumerate((1, 3, 2)):
            z = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(30 + i))
            out, ref = pipe.vae.decode(z).sample, eager.vae.decode(z).sample
            assert out.shape == ref.shape == (batch, 3, 64, 64)
            assert_close(out, ref, tol=1e-5)
            assert _graphs() - g0 == 1, f"batch {batch} recompiled the VAE decoder"


def test_per_sample_splits_batched_arguments_only():
    """Near miss: arguments whose first dimension is not the batch are passed whole; tuples are concatenated."""
    seen = []

    def fn(x, scale, emb=None):
        seen.append((x.shape[0], scale.shape, None if emb is None else emb.shape[0]))
        return x * scale, x + 1

    x, scale, emb = torch.randn(3, 2), torch.randn(2), torch.randn(3, 5)
    out = dynamic._per_sample(fn, (x, scale), {"emb": emb})
    assert seen == [(1, torch.Size([2]), 1)] * 3
    assert isinstance(out, tuple) and torch.equal(out[0], x * scale) and torch.equal(out[1], x + 1)


def test_scheduler_and_step_count_never_recompile(counters, assert_close):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    pipe, eager = tiny_pixart_pipe(), tiny_pixart_pipe()
    compile_pipe(pipe, mode="jit", ignores=["vae"])  # static shapes: the scheduler must not matter either
    g0 = _graphs()
    with torch.inference_mode():
        for i, (sched, steps) in enumerate([(None, 2), (None, 3), (EulerDiscreteScheduler, 2), (DDIMScheduler, 4)]):
            if sched is not None:  # int64 (DPM-Solver, DDIM) and float32 (Euler) timesteps
                for p in (pipe, eager):
                    p.scheduler = sched.from_config(p.scheduler.config)
            kw = _inputs(20 + i, 64, 64, steps=steps)
            assert_close(pipe(**kw).images, eager(**kw).images, tol=1e-4)
            assert _graphs() - g0 == 1, (sched, steps)
    assert counters["backend"]["graphs"] == 1


def test_unsupported_resolution_names_the_nearest_valid_sizes():
    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, mode="jit", dynamic=True, ignores=["vae"])
    g0 = _graphs()
    with torch.inference_mode(), pytest.raises(UnsupportedResolutionError) as e:
        pipe(**_inputs(0, 72, 64))  # a multiple of the VAE's 8, not of 8 x the patch size 2
    msg = str(e.value)
    assert "72x64" in msg and "multiples of 16 pixels" in msg and "64x64, 80x64" in msg, msg
    assert _graphs() - g0 == 0, "the check runs before Dynamo"


def test_unsupported_resolution_sd3_position_embedding_limit():
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=12,
    )
    check = dynamic.shape_check(model, vae_scale_factor=8)
    check(hidden_states=torch.zeros(1, 4, 24, 12))  # 12 patches: the limit
    with pytest.raises(UnsupportedResolutionError, match=r"at most 192 pixels.*Nearest valid sizes: 192x96"):
        check(hidden_states=torch.zeros(1, 4, 26, 12))
    assert dynamic.valid_sizes_hint(model) == (16, 192)
    unet_like = torch.nn.Conv2d(4, 4, 1)
    assert dynamic.shape_check(unet_like) is None


class _IntAttrs(torch.nn.Module):
    """A module whose int attributes meet the batch size in shape arithmetic (as the SDXL UNet's
    ``time_proj.num_channels`` does): ``cat`` of a ``(batch, 4)`` input with ``n`` rows of ones."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 8
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.new_ones(self.n, x.shape[1])
        return self.lin(torch.cat([x, ones])) * self.n


def test_module_int_attributes_stay_constants_under_dynamic(assert_close):
    """A module compiled in place is traced with ``self`` as a local: torch 2.1-2.4's Dynamo made its int
    attributes symbols under dynamic=True (torch 2.4 then compiled the tiny SDXL UNet again when the batch
    equalled one of them). Through compile_pipe's compiled call they are constants on every torch: the graph's
    inputs are the tensors and their sizes only, and a batch equal to the attribute does not recompile."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    m = _IntAttrs().eval()
    ref = _IntAttrs().eval()
    ref.load_state_dict(m.state_dict())
    m.compile(backend=backend, dynamic=True)
    assert dynamic.wrap_compiled_call(m, dynamic=True)
    with torch.no_grad():
        for batch in (2, 8, 3):
            x = torch.randn(batch, 4)
            assert_close(m(x), ref(x))
    assert len(graphs) == 1
    placeholders = [n.name for n in graphs[0].graph.nodes if n.op == "placeholder"]
    assert not [p for p in placeholders if "self_n" in p], placeholders
    assert dynamic.dynamo_patches() == (
        {} if hasattr(torch._dynamo.config, "allow_unspec_int_on_nn_module") else {"specialize_int": True}
    )


def test_unet_forwards_upsample_sizes_at_every_size_one_graph(assert_close):
    """diffusers' UNet upsamples by 2x where the latent is a multiple of 2**num_upsamplers and to the skip
    connection's size elsewhere: two graphs under dynamic shapes. Under compile_pipe's compiled call it takes
    the second path at every size (equal to eager at both kinds of size, one graph) and its attribute is back
    after the call; a look-alike that is not a diffusers model is left alone."""
    from nexfort.core import patches
    from tests.core.models import tiny_unet, unet_inputs

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    unet, ref = tiny_unet(), tiny_unet()
    assert dynamic.forwards_upsample_sizes(unet) and unet.num_upsamplers == 1
    unet.compile(backend=backend, dynamic=True)
    assert dynamic.wrap_compiled_call(unet, dynamic=True)
    # as the nexfort backend does while Dynamo compiles (torch 2.4: ToFloat in the size guards)
    with torch.no_grad(), patches.applied("torch.guard_namespace"):
        for batch, size in ((2, 8), (2, 7), (3, 10), (2, 9)):
            kw = unet_inputs(batch=batch, size=size, seed=size)
            assert_close(unet(**kw)[0], ref(**kw)[0])
    assert len(graphs) == 1 and unet.num_upsamplers == 1

    class LookAlike(torch.nn.Module):
        num_upsamplers = 2

    assert not dynamic.forwards_upsample_sizes(LookAlike())
    assert not dynamic.forwards_upsample_sizes(ref.up_blocks[0])  # no num_upsamplers
