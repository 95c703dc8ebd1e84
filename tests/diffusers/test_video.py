"""compile_pipe on video pipelines (Wan, HunyuanVideo, LTX, CogVideoX; tiny ones built from diffusers' test
configs, tests/diffusers/tiny_video.py): it compiles the denoiser and the VAE's decoder/encoder as for images;
with dynamic=True a second call at another frame count and resolution compiles nothing new, and the output
matches eager. Graphs are counted with Dynamo's own counter (as in test_dynamic.py).

In CI: the module-level checks and the Wan pipeline through compile_pipe with Dynamo's tracing and guards but no
Inductor (``_dynamo_only``: the recompilation behaviour is Dynamo's; Inductor's C++ compile of the tiny Wan VAE
decoder takes minutes per graph on the CPU): about 100 s of CPU time. ``NEXFORT_SLOW=1``: the LTX denoiser with
Inductor, and each of the four pipelines whole (denoiser and VAE) with Inductor."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from tiny_video import PIPES, tiny_video_pipe, video_inputs

from nexfort.diffusers import compile_pipe, uncompile_pipe, video

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SLOW = os.environ.get("NEXFORT_SLOW") == "1"


def _pipe(name):
    """The tiny ``name`` pipeline; a skip where this diffusers lacks one of its classes (Wan: diffusers 0.33+)."""
    import diffusers

    try:
        return tiny_video_pipe(name)
    except ImportError as e:
        pytest.skip(f"diffusers {diffusers.__version__} lacks a class of the tiny {name} pipeline: {e}")


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def _dynamo_only(monkeypatch):
    """The nexfort backend returns Dynamo's graph as it is (no Inductor): Dynamo still traces, guards and
    recompiles exactly as it does for the real backend; only the kernels are not generated."""
    from nexfort.core.backend import NexfortBackend

    monkeypatch.setattr(NexfortBackend, "__call__", lambda self, gm, example_inputs, **kw: gm.forward)


def _frames(out) -> torch.Tensor:
    return out.frames if hasattr(out, "frames") else out[0]


def _check_pipe(name, assert_close, sizes, ignores=(), tol=1e-4):
    """compile_pipe(dynamic=True) on the tiny ``name`` pipeline; each (frames, height, width[, videos per prompt])
    of ``sizes`` vs eager; after the first, no new graph. Returns the pipeline, its eager twin and the graphs that
    the first call compiled."""
    pipe, eager = _pipe(name), _pipe(name)
    compile_pipe(pipe, mode="", dynamic=True, ignores=list(ignores))
    g0 = _graphs()
    try:
        for i, size in enumerate(sizes):
            _run(pipe, eager, name, size, i, assert_close, tol)
            if i == 0:
                first = _graphs() - g0
            assert _graphs() - g0 == first, f"{name} at {size} compiled again"
    except BaseException:
        uncompile_pipe(pipe)  # the failure is the test's; no leftover patches on top of it
        raise
    return pipe, eager, first


def _run(pipe, eager, name, size, seed, assert_close, tol):
    f, h, w, batch = (*size, 1)[:4]
    kw = dict(num_videos_per_prompt=batch) if batch > 1 else {}
    with torch.inference_mode():
        out = _frames(pipe(**video_inputs(name, f, h, w, seed=seed), **kw))
        ref = _frames(eager(**video_inputs(name, f, h, w, seed=seed), **kw))
    assert out.shape == ref.shape and out.shape[0] == batch and out.shape[-2:] == (h, w), out.shape
    assert_close(out, ref, tol=tol)


def test_vae_parts_with_a_cache_or_folded_frames_are_not_split_per_sample():
    """Splitting a chunked decoder's calls per sample would hand the second sample the first one's cache."""
    from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

    wan, cog, ltx, hy = (_pipe(n).vae for n in ("wan", "cogvideox", "ltx", "hunyuan_video"))
    assert "feat_cache" in video.vae_part_splits(wan.decoder) and "feat_cache" in video.vae_part_splits(wan.encoder)
    assert "conv_cache" in video.vae_part_splits(cog.decoder)
    svd = AutoencoderKLTemporalDecoder(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                                       latent_channels=4, layers_per_block=1)
    assert "num_frames" in video.vae_part_splits(svd.decoder)
    # near misses: a temb argument (LTX), plain decoders (HunyuanVideo, the image VAE) are split
    for part in (ltx.decoder, ltx.encoder, hy.decoder, AutoencoderKL().decoder):
        assert video.vae_part_splits(part) is None, type(part).__name__
    assert video.prepare_vae(wan, ["decoder", "encoder"], dynamic=True) == {"decoder": False, "encoder": False}
    assert wan.use_slicing is True
    video.restore_vae(wan)
    assert wan.use_slicing is False and "_nexfort_use_slicing" not in wan.__dict__
    assert video.prepare_vae(ltx, ["decoder"], dynamic=True) == {"decoder": True} and ltx.use_slicing is False
    assert video.prepare_vae(cog, ["decoder"], dynamic=False) == {"decoder": False} and cog.use_slicing is False


def _cog_embed(**kw):
    from diffusers.models.embeddings import CogVideoXPatchEmbed

    torch.manual_seed(0)
    args = dict(patch_size=2, in_channels=4, embed_dim=32, text_embed_dim=32, sample_width=4, sample_height=4,
                sample_frames=9, temporal_compression_ratio=4, max_text_seq_length=16,
                use_learned_positional_embeddings=False)
    return CogVideoXPatchEmbed(**{**args, **kw}).eval()


def test_cogvideox_patch_embed_is_diffusers_at_every_size_in_one_graph():
    """At the config's size (latents 4x4, 3 latent frames) diffusers adds its stored buffer, elsewhere a freshly
    computed one: the patched instance computes it always, with the same values, and one graph serves both."""
    from nexfort.diffusers import dynamic

    ref, new = _cog_embed(), _cog_embed()
    assert video.make_video_embeds_dynamic(new) == 1 and video.make_video_embeds_dynamic(new) == 0
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    new.compile(backend=backend, dynamic=True)  # as compile_pipe does: in place, its compiled call wrapped
    assert dynamic.wrap_compiled_call(new, dynamic=True)
    with torch.no_grad():
        for f, h, w in ((2, 4, 6), (3, 4, 4), (4, 6, 4), (3, 4, 4)):  # the config's size second
            text, x = torch.randn(2, 16, 32), torch.randn(2, f, 4, h, w)
            assert torch.equal(new(text, x), ref(text, x)), (f, h, w)
            assert torch.equal(new.forward(text, x), ref(text, x))  # eager, too
    # torch < 2.3's Dynamo specializes the embedding's token count (guards like Eq(6, (h // p) * (w // p)), seen
    # on torch 2.2): there at least one graph per distinct size (2.2: 3, 2.1: 6); one graph on newer torch
    old_dynamo = torch.__version__ < (2, 3)
    assert len(graphs) >= 3 if old_dynamo else len(graphs) == 1
    assert (new.sample_height, new.sample_width, new.sample_frames) == (4, 4, 9)  # restored after each call


def test_cogvideox_patch_embed_it_does_not_know_is_left_alone(caplog):
    from diffusers.models.embeddings import CogVideoXPatchEmbed

    class Own(CogVideoXPatchEmbed):
        def forward(self, text_embeds, image_embeds):
            return super().forward(text_embeds, image_embeds)

    learned = _cog_embed(use_learned_positional_embeddings=True)
    own = Own(patch_size=2, in_channels=4, embed_dim=32, text_embed_dim=32, sample_width=4, sample_height=4,
              sample_frames=9, max_text_seq_length=16, use_learned_positional_embeddings=False)
    none = _cog_embed(use_positional_embeddings=False)
    with caplog.at_level(logging.DEBUG, logger="nexfort.diffusers.video"):
        for m in (learned, own, none):
            assert video.make_video_embeds_dynamic(m) == 0
            assert "forward" not in m.__dict__
    assert len([r for r in caplog.records if "left alone" in r.getMessage()]) == 3
    text = [r.getMessage() for r in caplog.records]
    assert any("learned" in t for t in text) and any("Own.forward" in t for t in text), text


def test_wan_pipe_any_frame_count_resolution_and_batch_without_recompiling(_dynamo_only, assert_close):
    """Denoiser and VAE decoder compiled; the chunked VAE decoder compiles a fixed number of graphs (first chunk,
    a cache of 1 frame, of 2 frames) at the first call and none after it, at another frame count and resolution;
    two videos per prompt decode right (per sample through the VAE's own slicing, not the cache-blind split)."""
    pipe, eager, first = _check_pipe("wan", assert_close, PIPES["wan"][2], tol=1e-5)  # 3 sizes
    assert pipe._nexfort_compiled["components"] == ["transformer", "vae.decoder", "vae.encoder"]
    assert first == 4, first  # the transformer, three decoder graphs
    assert pipe.vae.use_slicing is True
    g = _graphs()
    _run(pipe, eager, "wan", (5, 32, 32, 2), 7, assert_close, 1e-5)
    # the transformer once more (a first batch of 1, then 2: Dynamo specialises 1), the VAE decoder not
    assert _graphs() - g == 1
    uncompile_pipe(pipe)
    assert pipe.vae.use_slicing is False


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="compiles the tiny LTX denoiser with Inductor (about 2 min on 2 CPU cores; the "
                                     "CI zoo subset compiles a video DiT already): run with NEXFORT_SLOW=1")
def test_ltx_pipe_transformer_any_frame_count_and_resolution_one_graph(assert_close):
    """With Inductor: the LTX denoiser (its rotary embedding from the frame count and size given as ints) at
    another frame count and resolution, no new graph (the VAE: test_video_pipes_slow)."""
    _, _, first = _check_pipe("ltx", assert_close, PIPES["ltx"][2][:2], ignores=["vae"])
    assert first == 1


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="compiles four tiny video pipelines with Inductor (about 10 min each on 2 CPU "
                                     "cores): run with NEXFORT_SLOW=1")
@pytest.mark.parametrize("name", sorted(PIPES))
def test_video_pipes_slow(name, assert_close):
    """Each pipeline whole (denoiser and VAE) with Inductor: eager's output, and a second and third call at other
    frame counts and resolutions compile nothing new."""
    pipe, _, first = _check_pipe(name, assert_close, PIPES[name][2])
    assert {"transformer", "vae.decoder"} <= set(pipe._nexfort_compiled["components"])
