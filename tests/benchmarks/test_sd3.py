"""The text-to-image benchmark on Stable Diffusion 3: the built-in tiny-sd3 end to end on the CPU, and the
SD3-medium architecture checked on the meta device (nothing allocated, nothing downloaded)."""

from __future__ import annotations

import math

import pytest
import torch

from .conftest import SIZE, check_timings, run_bench

pytest.importorskip("diffusers")

# one compilation serves every size: the eager reference (which the resolution sweeps add) costs no compile
JIT = ["--compiler", "nexfort", "--inductor-cache", "shared"]


_run = run_bench


def _close(x):
    return isinstance(x, float) and math.isfinite(x) and x < 1e-4


def _check_sd3(data):
    assert data["model"]["pipeline"] == "StableDiffusion3Pipeline"
    assert data["model"]["denoiser"] == "SD3Transformer2DModel"
    assert data["model"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert data["model"]["text_encoder"] is False  # random CLIP+T5-shaped embeddings, nothing downloaded


def _jit_graphs() -> int:
    """Graphs of the tiny SD3 transformer in mode jit: regional (two: the first block and the others) where torch
    shares a compiled graph between blocks (2.5+), else the whole model (one)."""
    from nexfort.diffusers import resolve_pipe_config
    from nexfort.diffusers.pipe import regional
    from nexfort.diffusers.regional import blocks_share_graphs

    return 2 if regional(resolve_pipe_config("jit")) and blocks_share_graphs() else 1



def test_tiny_sd3_pipeline_nexfort_matches_eager(bench, tmp_path, monkeypatch, one_thread):
    """The whole pipeline (prompt and pooled embeddings, flow-matching scheduler, 16-channel VAE with shift factor)
    compiled by nexfort in mode "jit", checked against eager at 64x64, one more size (200x136 runs as 192x128:
    multiples of 16 pixels) and batch 4. Dynamic shapes: one compilation of the transformer's blocks for all of them
    (jit compiles regionally on torch 2.5+: the first block and the others, two graphs); the
    VAE stays eager and mkldnn is off (on the CPU PyTorch picks a convolution kernel by input size, and Dynamo
    turns that choice into size guards)."""
    monkeypatch.setattr(bench.cli, "RARE_RESOLUTIONS", [(200, 136)])
    config = '{"mode": "jit", "dynamic": true, "ignores": ["vae"]}'
    with torch.backends.mkldnn.flags(enabled=False):
        rc, data = _run(bench, tmp_path, "--model", "tiny-sd3", *JIT, "--compiler-config", config,
                        "--run_rare_resolutions", "1", *SIZE)
    assert rc == 0
    _check_sd3(data)
    assert data["compiler_config"]["mode"] == "jit"
    assert list(data["runs"]) == ["eager", "nexfort"]  # eager: the reference of every size
    r = data["runs"]["nexfort"]
    assert r["resolution"] == "64x64"
    check_timings(r, steps=int(SIZE[SIZE.index("--steps") + 1]))
    assert _close(r["rel_l2_vs_eager"]), r["rel_l2_vs_eager"]
    warm = r["compiled_in_warmup"]
    assert warm["nexfort_graphs"] == _jit_graphs() and warm["nexfort_fallbacks"] == 0
    assert r["recompiles_in_timed_runs"]["dynamo_graphs"] == 0
    assert [x["resolution"] for x in r["resolutions"]] == ["192x128", "64x64 b4"]
    assert all(_close(x["rel_l2_vs_eager"]) for x in r["resolutions"]), r["resolutions"]
    assert r["sweep"]["compilations"] == 0


def test_tiny_sd3_denoiser_only_resolution_grid(bench, tmp_path, one_thread):
    """--denoiser-only: one SD3 transformer forward with CFG batch 2 (float timesteps, pooled projections), over
    the 16-size grid up to 1024x1024 and batch 4, nexfort (mode "jit", dynamic, so regional: two graphs for the
    blocks) against eager at every size."""
    with torch.backends.mkldnn.flags(enabled=False):
        rc, data = _run(bench, tmp_path, "--model", "tiny-sd3", "--denoiser-only", *JIT, "--compiler-config",
                        '{"mode": "jit", "dynamic": true}', "--run_multiple_resolutions", "1", *SIZE[:4],
                        "--warmups", "1", "--iters", "1")
    assert rc == 0
    _check_sd3(data)
    assert data["benchmark"] == "text_to_image_denoiser_only"
    r = data["runs"]["nexfort"]
    check_timings(r)
    assert _close(r["rel_l2_vs_eager"]), r["rel_l2_vs_eager"]
    warm = r["compiled_in_warmup"]
    assert warm["dynamo_graphs"] == _jit_graphs() and warm["nexfort_fallbacks"] == 0
    assert len(r["resolutions"]) == 16 + 1 and r["resolutions"][0]["resolution"] == "1024x1024"
    assert r["sweep"]["compilations"] == 0, [(x["resolution"], x["compiled"]) for x in r["resolutions"]]
    assert all(_close(x["rel_l2_vs_eager"]) for x in r["resolutions"]), r["resolutions"]


def test_sd3_position_table_limits_sizes(bench, tmp_path, capsys):
    """SD3 takes at most pos_embed_max_size x patch x 8 pixels a side (tiny-sd3: 96 x 2 x 8 = 1536): larger sweep
    sizes are skipped with a note, a larger --height/--width fails before anything runs."""
    cli, models = bench.cli, bench.models
    loaded = models.load_pipeline("tiny-sd3", torch.float32, "cpu")
    assert loaded.kind == "sd3" and loaded.denoiser_name == "transformer"
    assert cli.size_limits(loaded) == (16, 1536)
    assert cli.aligned(loaded, [(1536, 1024), (1552, 512), (1000, 2048)]) == [(1536, 1024)]
    assert "at most 1536 pixels" in capsys.readouterr().err
    assert cli.aligned(loaded, cli.multiple_resolutions()) == cli.multiple_resolutions()
    with pytest.raises(SystemExit, match="at most 1536 pixels"):
        bench.main(["--model", "tiny-sd3", "--compiler", "none", "--height", "1600", "--width", "512"])
    # a lone SD3 transformer folder runs in a built-in SD3 pipeline
    path = tmp_path / "sd3-transformer"
    loaded.pipe.transformer.save_pretrained(str(path))
    lone = models.load_pipeline(str(path), torch.float32, "cpu")
    assert lone.kind == "sd3" and lone.info["pipeline"] == "StableDiffusion3Pipeline"


def test_sd3_medium_architecture_on_meta(bench):
    """sd3-medium is the published SD3-medium MMDiT (2.03 B parameters) and VAE; built on the meta device. The
    GPU command line ``--model sd3-medium --denoiser-only --compiler all --height 1024 --width 1024`` parses."""
    cli, models, inputs = bench.cli, bench.models, bench.cli.inputs
    args = cli.parser("", "").parse_args(["--model", "sd3-medium", "--denoiser-only", "--compiler", "all",
                                          "--height", "1024", "--width", "1024"])
    assert args.model in models.BUILTIN and args.denoiser_only and args.compiler == "all"
    loaded = models.load_pipeline("sd3-medium", torch.float16, "meta")
    assert loaded.kind == "sd3" and loaded.denoiser_name == "transformer"
    assert loaded.info["denoiser_params_M"] == pytest.approx(2028.33, abs=0.01)
    cfg, vae = loaded.denoiser.config, loaded.pipe.vae.config
    assert (cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim, cfg.pos_embed_max_size) == (24, 1536, 192)
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 1.5305, 0.0609)
    assert not vae.use_quant_conv and not vae.use_post_quant_conv
    assert cli.size_limits(loaded) == (16, 3072)
    dkw = inputs.denoiser_kwargs(loaded, batch=1, height=1024, width=1024, seed=0, dtype=torch.float16,
                                 device="meta")
    assert dkw["hidden_states"].shape == (2, 16, 128, 128)
    assert dkw["encoder_hidden_states"].shape == (2, 77 + 256, 4096)
    assert dkw["pooled_projections"].shape == (2, 2048)
    pkw = inputs.pipeline_kwargs(loaded, batch=1, height=1024, width=1024, steps=1, seed=0, dtype=torch.float16,
                                 device="meta")
    assert pkw["prompt_embeds"].shape == pkw["negative_prompt_embeds"].shape == (1, 333, 4096)
    assert pkw["pooled_prompt_embeds"].shape == pkw["negative_pooled_prompt_embeds"].shape == (1, 2048)
    assert pkw["latents"].shape == (1, 16, 128, 128)
