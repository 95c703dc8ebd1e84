"""The text-to-image benchmark on FLUX.1 and PixArt-Σ: the built-in tiny variants end to end on the CPU (FLUX's packed
latents, RoPE ids and distilled guidance; PixArt-Σ's 300 text tokens, no micro-conditions), compiled by nexfort
against eager, and the published architectures checked on the meta device (nothing allocated, nothing downloaded)."""

from __future__ import annotations

import math

import pytest
import torch

from .conftest import SIZE, run_bench

pytest.importorskip("diffusers")


_run = run_bench


def _close(x, tol=1e-4):
    return isinstance(x, float) and math.isfinite(x) and x < tol


def test_tiny_flux_pipeline_over_resolutions_matches_eager(bench, tmp_path, monkeypatch, one_thread):
    """compile_pipe on the tiny FLUX pipeline (denoiser only compiled, dynamic): eager's images at 64x64, at two more
    sizes (RoPE ids and packed latents change with the size) and at batch 4, with no compilation after the first
    size."""
    monkeypatch.setattr(bench.cli, "RARE_RESOLUTIONS", [(96, 64), (128, 160)])
    config = '{"mode": "max-optimize", "dynamic": true, "ignores": ["vae"]}'
    with torch.backends.mkldnn.flags(enabled=False):
        rc, data = _run(bench, tmp_path, "--model", "tiny-flux", "--compiler", "nexfort", "--inductor-cache",
                        "shared", "--compiler-config", config, "--run_rare_resolutions", "1", *SIZE)
    assert rc == 0
    assert data["model"]["pipeline"] == "FluxPipeline" and data["model"]["denoiser"] == "FluxTransformer2DModel"
    assert list(data["runs"]) == ["eager", "nexfort"]
    r = data["runs"]["nexfort"]
    assert _close(r["rel_l2_vs_eager"]), r["rel_l2_vs_eager"]
    assert r["compiled_in_warmup"]["nexfort_graphs"] >= 1 and r["compiled_in_warmup"]["nexfort_fallbacks"] == 0
    assert [x["resolution"] for x in r["resolutions"]] == ["96x64", "128x160", "64x64 b4"]
    assert all(_close(x["rel_l2_vs_eager"]) for x in r["resolutions"]), r["resolutions"]
    assert r["sweep"]["compilations"] == 0, r["sweep"]


def test_tiny_flux_and_sigma_denoiser_only(bench, tmp_path, one_thread):
    """--denoiser-only: FLUX's one forward (batch 1, guidance) and PixArt-Σ's CFG forward, nexfort against eager."""
    for model, denoiser in (("tiny-flux", "FluxTransformer2DModel"), ("tiny-pixart-sigma", "PixArtTransformer2DModel")):
        rc, data = _run(bench, tmp_path, "--model", model, "--denoiser-only", "--compiler", "all", "--compiler-config",
                        '{"mode": "max-optimize"}', *SIZE[:4], "--warmups", "1", "--iters", "1")
        assert rc == 0, model
        assert data["model"]["denoiser"] == denoiser
        assert list(data["runs"]) == ["eager", "inductor", "nexfort"]  # on the CPU no torch.compile modes besides
        for name in ("inductor", "nexfort"):
            assert _close(data["runs"][name]["rel_l2_vs_eager"]), (model, name, data["runs"][name]["rel_l2_vs_eager"])
        s = data["summary"]
        assert s["nexfort_mode"] == "max-optimize" and s["speedup_vs_torch_compile"] > 0
        assert s["torch_compile_best_run"] == "inductor"


def test_published_flux_and_sigma_architectures_on_meta(bench):
    """FLUX.1-dev's 11.9 B-parameter transformer and PixArt-Σ's 0.6 B one, built on the meta device from the built-in
    configs."""
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

    models = bench.models
    with torch.device("meta"):
        flux = FluxTransformer2DModel(**models.FLUX_DEV)
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
