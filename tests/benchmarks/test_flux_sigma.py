"""The text-to-image benchmark on FLUX.1 and PixArt-Σ: the built-in tiny variants end to end on the CPU (FLUX's packed
latents, RoPE ids and distilled guidance; PixArt-Σ's 300 text tokens, no micro-conditions), compiled by nexfort
against eager, and the published architectures checked on the meta device (nothing allocated, nothing downloaded)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from .conftest import SIZE, check_timings, run_bench

diffusers = pytest.importorskip("diffusers")


_run = run_bench
#: before diffusers 0.32 FLUX differs from what the benchmark's FLUX inputs and tiny pipeline follow: 0.30 (its first
#: release, tests-torch21's) takes RoPE ids with a batch dimension (a broadcast error in the RoPE, 516 vs 528); 0.31
#: (tests-torch23's) sets FluxPipeline.vae_scale_factor to 2 ** len(block_out_channels), the 2x2 packing included
#: (0.32: 2 ** (len - 1)), so the latents have a quarter of the tokens (6 instead of 24 at 64x96)
old_flux = pytest.mark.skipif(tuple(int(p) for p in diffusers.__version__.split(".")[:2]) < (0, 32),
                              reason=f"diffusers {diffusers.__version__}'s FLUX takes RoPE ids with a batch dimension "
                                     "(0.30) or counts the 2x2 packing in vae_scale_factor (0.31); the benchmark's "
                                     "FLUX inputs follow diffusers 0.32+")


def _close(x, tol=1e-4):
    return isinstance(x, float) and math.isfinite(x) and x < tol


@old_flux
def test_tiny_flux_pipeline_matches_eager(bench, tmp_path, one_thread):
    """compile_pipe on the tiny FLUX pipeline (its packed latents, RoPE ids and distilled guidance; the denoiser
    compiled, the VAE eager): eager's images, one graph, no fallback."""
    config = '{"mode": "max-optimize", "ignores": ["vae"]}'
    with torch.backends.mkldnn.flags(enabled=False):
        rc, data = _run(bench, tmp_path, "--model", "tiny-flux", "--compiler", "nexfort", "--inductor-cache",
                        "shared", "--compiler-config", config, *SIZE)
    assert rc == 0
    assert data["model"]["pipeline"] == "FluxPipeline" and data["model"]["denoiser"] == "FluxTransformer2DModel"
    r = data["runs"]["nexfort"]
    check_timings(r, steps=int(SIZE[SIZE.index("--steps") + 1]))
    warm = r["compiled_in_warmup"]
    assert warm["nexfort_graphs"] >= 1 and warm["nexfort_fallbacks"] == 0
    assert r["recompiles_in_timed_runs"]["dynamo_graphs"] == 0


@old_flux
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NEXFORT_SLOW") != "1",
                    reason="compiles the tiny FLUX transformer with dynamic shapes: ~10 min on 2 loaded CPU cores; "
                           "run with NEXFORT_SLOW=1")
def test_tiny_flux_pipeline_over_resolutions_matches_eager(bench, tmp_path, monkeypatch, one_thread):
    """compile_pipe on the tiny FLUX pipeline, dynamic: eager's images at 64x64 (batch 2), at two more sizes (RoPE
    ids and packed latents change with the size) and at batch 4, with no compilation after the first call.
    Measured (2026-12-01, torch 2.13, 2 loaded cores): every size within 5e-7 of eager; started at batch 1, the
    batch-4 call compiled once more (Dynamo specialises size 1), hence batch 2."""
    monkeypatch.setattr(bench.cli, "RARE_RESOLUTIONS", [(96, 64), (128, 160)])
    config = '{"mode": "max-optimize", "dynamic": true, "ignores": ["vae"]}'
    with torch.backends.mkldnn.flags(enabled=False):
        rc, data = _run(bench, tmp_path, "--model", "tiny-flux", "--compiler", "nexfort", "--inductor-cache",
                        "shared", "--compiler-config", config, "--run_rare_resolutions", "1", "--batch-size", "2",
                        *SIZE)
    assert rc == 0
    assert list(data["runs"]) == ["eager", "nexfort"]
    r = data["runs"]["nexfort"]
    assert _close(r["rel_l2_vs_eager"]), r["rel_l2_vs_eager"]
    assert r["compiled_in_warmup"]["nexfort_fallbacks"] == 0
    assert [x["resolution"] for x in r["resolutions"]] == ["96x64", "128x160", "64x64 b4"]
    assert all(_close(x["rel_l2_vs_eager"]) for x in r["resolutions"]), r["resolutions"]
    assert r["sweep"]["compilations"] == 0, r["sweep"]


def test_tiny_sigma_denoiser_only_all_compilers(bench, tmp_path, one_thread):
    """--denoiser-only, --compiler all on the tiny PixArt-Σ (300 text tokens, no micro-conditions): torch.compile
    and nexfort against eager, and the summary's ratios."""
    rc, data = _run(bench, tmp_path, "--model", "tiny-pixart-sigma", "--denoiser-only", "--compiler", "all",
                    "--compiler-config", '{"mode": "max-optimize"}', *SIZE[:4], "--warmups", "1", "--iters", "1")
    assert rc == 0
    assert data["model"]["pipeline"] == "PixArtSigmaPipeline"
    assert list(data["runs"]) == ["eager", "inductor", "nexfort"]  # on the CPU no torch.compile modes besides
    for name in ("inductor", "nexfort"):
        assert _close(data["runs"][name]["rel_l2_vs_eager"]), (name, data["runs"][name]["rel_l2_vs_eager"])
    s = data["summary"]
    runs = data["runs"]
    for name in ("eager", "inductor", "nexfort"):
        check_timings(runs[name])
    assert s["nexfort_mode"] == "max-optimize"  # the ratios are those of the runs' own medians
    assert s["speedup_vs_torch_compile"] == pytest.approx(
        runs["inductor"]["step_ms_median"] / runs["nexfort"]["step_ms_median"], rel=1e-3)
    assert s["speedup_vs_eager"] == pytest.approx(
        runs["eager"]["step_ms_median"] / runs["nexfort"]["step_ms_median"], rel=1e-3)
    assert "torch_compile_best_run" in s and s["torch_compile_best_run"] == "inductor"


@old_flux
def test_tiny_flux_denoiser_inputs(bench):
    """The FLUX denoiser's own inputs (packed latents, RoPE ids, guidance; batch 1, no CFG) run it in eager."""
    loaded = bench.models.load_pipeline("tiny-flux", torch.float32, "cpu")
    from nexfort_bench import inputs

    kw = inputs.denoiser_kwargs(loaded, batch=1, height=64, width=96, seed=0, dtype=torch.float32, device="cpu")
    assert kw["hidden_states"].shape == (1, (64 // 16) * (96 // 16), 16) and kw["img_ids"].shape == (24, 3)
    with torch.inference_mode():
        out = loaded.denoiser(**kw)[0]
    assert out.shape == kw["hidden_states"].shape and torch.isfinite(out).all()


def test_published_flux_and_sigma_architectures_on_meta(bench):
    """FLUX.1-dev's 11.9 B-parameter transformer and PixArt-Σ's 0.6 B one, built on the meta device from the built-in
    configs."""
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

    models = bench.models
    with torch.device("meta"):
        flux = FluxTransformer2DModel(**models.known_config(FluxTransformer2DModel, models.FLUX_DEV))
        sigma = PixArtTransformer2DModel(**models.PIXART_SIGMA_XL2_1024)
    n = sum(p.numel() for p in flux.parameters())
    assert 11.8e9 < n < 12.0e9, n
    assert len(flux.transformer_blocks) == 19 and len(flux.single_transformer_blocks) == 38
    assert 0.6e9 < sum(p.numel() for p in sigma.parameters()) < 0.62e9
    assert sigma.config.use_additional_conditions is False and sigma.pos_embed.interpolation_scale == 2


def test_inductor_modes_flag(bench):
    cli = bench.cli
    args = cli.parser("", "").parse_args(["--compiler", "all", "--device", "cpu"])
    cli.setup(args, "pixart")
    assert args.inductor_mode_list == []  # the CPU: torch.compile's modes only differ on GPUs
    args = cli.parser("", "").parse_args(["--compiler", "all", "--device", "cpu", "--inductor-modes",
                                          "reduce-overhead,max-autotune-no-cudagraphs"])
    cli.setup(args, "pixart")
    assert args.inductor_mode_list == ["reduce-overhead", "max-autotune-no-cudagraphs"]
    args = cli.parser("", "").parse_args(["--inductor-modes", "max-autotune-fast"])
    with pytest.raises(SystemExit, match="unknown torch.compile mode.*'max-autotune-fast'.*valid: .*reduce-overhead"):
        cli.setup(args, "pixart")


def test_summary_ratios(bench):
    summary, summary_line = bench.cli.report.summary, bench.cli.report.summary_line

    runs = {"eager": {"step_ms_median": 40.0}, "inductor": {"step_ms_median": 34.0},
            "inductor:reduce-overhead": {"step_ms_median": 33.0}, "inductor:max-autotune-no-cudagraphs":
            {"error": "timeout"}, "nexfort": {"step_ms_median": 28.0, "nexfort_mode": "m"}}
    s = summary(runs)
    assert s["speedup_vs_eager"] == round(40 / 28, 4) and s["speedup_vs_torch_compile"] == round(34 / 28, 4)
    assert s["torch_compile_best_run"] == "inductor:reduce-overhead" and s["torch_compile_best"] == 33.0
    assert "1.179x torch.compile best (inductor:reduce-overhead)" in summary_line(s)
    assert summary({"eager": {"step_ms_median": 1.0}}) == {}


def test_skip_flag(bench, tmp_path, one_thread):
    """--skip inductor leaves torch.compile's default run out of --compiler all (eager and nexfort still run, the
    summary then has no torch.compile ratio); anything else, or --skip without --compiler all, is an error before a
    model is built."""
    cli = bench.cli
    for argv, msg in ((["--compiler", "all", "--skip", "eager"], "only these runs: inductor"),
                      (["--compiler", "all", "--skip", "nexfort"], "only these runs: inductor"),
                      (["--compiler", "nexfort", "--skip", "inductor"], "only with --compiler all")):
        args = cli.parser("", "").parse_args([*argv, "--device", "cpu"])
        with pytest.raises(SystemExit, match=msg):
            cli.setup(args, "pixart")
    rc, data = _run(bench, tmp_path, "--model", "tiny-pixart-sigma", "--denoiser-only", "--compiler", "all",
                    "--skip", "inductor", *SIZE[:4], "--warmups", "1", "--iters", "1")
    assert rc == 0 and list(data["runs"]) == ["eager", "nexfort"]
    assert "speedup_vs_torch_compile" not in data["summary"] and "speedup_vs_eager" in data["summary"]
    assert _close(data["runs"]["nexfort"]["rel_l2_vs_eager"])
