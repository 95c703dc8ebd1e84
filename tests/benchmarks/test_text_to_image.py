"""The benchmark and example scripts end to end on a tiny pipeline saved with save_pretrained (CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from .conftest import SIZE, check_timings, load_script

pytest.importorskip("diffusers")



@pytest.fixture(scope="module")
def saved_pipe(tmp_path_factory, bench):
    path = tmp_path_factory.mktemp("tiny-pixart")
    # the same architecture as tests/diffusers' tiny pipeline: Inductor's cache serves both
    bench.models.build_pixart("tiny-pixart").save_pretrained(str(path))
    assert (path / "model_index.json").is_file()
    return str(path)


def _run(bench, tmp_path, *argv):
    out = tmp_path / "result.json"
    rc = bench.main(["--output-json", str(out), *argv])
    data = json.loads(out.read_text())
    return rc, data


def _check_run(r):
    for key in ("warmup_s", "step_ms_median", "e2e_s_per_image", "it_per_s", "peak_memory_mb",
                "compiled_in_warmup", "recompiles_in_timed_runs", "resolution"):
        assert key in r, key
    assert r["recompiles_in_timed_runs"]["dynamo_graphs"] == 0


def test_eager_from_saved_pipeline(bench, saved_pipe, tmp_path, capsys):
    image = tmp_path / "image.png"
    rc, data = _run(bench, tmp_path, "--model", saved_pipe, "--compiler", "none", "--output-image", str(image),
                    *SIZE)
    assert rc == 0
    assert set(data["runs"]) == {"eager"}
    _check_run(data["runs"]["eager"])
    assert data["runs"]["eager"]["compiled_in_warmup"]["dynamo_graphs"] == 0
    assert data["model"]["pipeline"] == "PixArtAlphaPipeline" and data["model"]["model"] == saved_pipe
    for key in ("torch", "diffusers", "triton", "device", "gpu"):
        assert key in data["env"]
    assert image.is_file()
    assert "step ms" in capsys.readouterr().out  # the terminal table


@pytest.mark.parametrize("compiler", ["inductor", "nexfort"])
def test_compiler(bench, saved_pipe, tmp_path, compiler):
    extra = ["--run_rare_resolutions", "1"] if compiler == "nexfort" else []
    rc, data = _run(bench, tmp_path, "--model", saved_pipe, "--compiler", compiler, "--inductor-cache", "shared",
                    *extra, *SIZE)
    assert rc == 0
    r = data["runs"][compiler]
    _check_run(r)
    if extra:  # a new resolution recompiles (counted), then runs without recompiling
        assert [x["resolution"] for x in r["resolutions"]] == ["544x400", "960x720", "64x64 b4"]
        assert "eager" in data["runs"]  # the reference of every resolution
        assert all(x["rel_l2_vs_eager"] < 1e-4 for x in r["resolutions"])
        assert r["resolutions"][0]["compiled"]["nexfort_graphs"] >= 1
        assert all(x["e2e_s_median"] > 0 for x in r["resolutions"])
    assert r["compiled_in_warmup"]["dynamo_graphs"] >= 2  # transformer + VAE decoder
    if compiler == "nexfort":
        assert r["compiled_in_warmup"]["nexfort_graphs"] >= 2
        assert r["compiled_in_warmup"]["nexfort_fallbacks"] == 0
        # the run's own counters (reset per run): its graphs, no fallback. torch 2.4's CPU code generation fails
        # on the dynamic VAE decoder of the rare resolutions (`std::max(0.0, long)` in a GroupNorm's count,
        # tests-torch24): that graph runs eagerly (its output still matches, above); newer torch compiles it
        counted = r["nexfort_counters"]["backend"]
        old_cpp = torch.__version__ < (2, 5)
        assert counted["graphs"] >= 2 and (old_cpp or counted.get("fallbacks", 0) == 0), counted
    else:
        assert r["compiled_in_warmup"]["nexfort_graphs"] == 0


def test_all_compilers_match_eager(bench, saved_pipe, tmp_path):
    rc, data = _run(bench, tmp_path, "--model", saved_pipe, "--compiler", "all", *SIZE)
    assert rc == 0
    runs = data["runs"]
    assert list(runs) == ["eager", "inductor", "nexfort"]
    for name in ("inductor", "nexfort"):
        _check_run(runs[name])
        err = runs[name]["rel_l2_vs_eager"]
        assert isinstance(err, float) and math.isfinite(err) and err < 1e-4, (name, err)
    assert data["chart"] and os.path.isfile(data["chart"]) and data["chart"].endswith(".png")
    # each compiler compiled cold into its own cache (no reuse of the other's kernels), since removed
    assert data["args"]["inductor_cache"] == "fresh"
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").find("nexfort-bench-inductor-") < 0


def test_denoiser_only_and_resolutions(bench, tmp_path):
    """--denoiser-only on the built-in tiny architecture, with the multiple-resolutions sweep (eager: cheap)."""
    cli = bench.cli
    cli_res = cli.multiple_resolutions()
    assert len(cli_res) == 16 and (1024, 256) in cli_res and cli.RARE_RESOLUTIONS == [(544, 408), (960, 720)]
    rc, data = _run(bench, tmp_path, "--model", "tiny-pixart", "--compiler", "none", "--denoiser-only",
                    "--run_rare_resolutions", "1", *SIZE)
    assert rc == 0
    r = data["runs"]["eager"]
    # PixArt's patch-2 transformer takes multiples of 16 pixels: 544x408 runs as 544x400
    check_timings(r)
    assert [x["resolution"] for x in r["resolutions"]] == ["544x400", "960x720", "64x64 b4"]
    assert data["benchmark"] == "text_to_image_denoiser_only"


def test_bad_compiler_config_fails_before_loading(bench, tmp_path):
    from nexfort.core.errors import NexfortConfigError

    with pytest.raises(NexfortConfigError, match="max-speed"):
        bench.main(["--model", "/does/not/exist", "--compiler", "nexfort", "--compiler-config",
                    '{"mode": "max-speed"}'])
    with pytest.raises(SystemExit):
        bench.main(["--model", "/does/not/exist", "--compiler-config", "{not json"])


def test_sdxl_example_eager_default_small_model(tmp_path):
    example = load_script("examples/text_to_image_sdxl.py")
    out = tmp_path / "sdxl.json"
    rc = example.main(["--model", "tiny-sdxl", "--compiler", "none", "--output-json", str(out), *SIZE])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["model"]["pipeline"] == "StableDiffusionXLPipeline"
    assert data["model"]["denoiser"] == "UNet2DConditionModel"
    assert torch.isfinite(torch.tensor(data["runs"]["eager"]["e2e_s_per_image"]))


def test_rel_l2_never_passes_nan(bench):
    from nexfort_bench import report

    ref = torch.ones(4)
    assert report.rel_l2(ref, ref) == 0.0
    assert report.rel_l2(torch.tensor([1.0, float("nan"), 1.0, 1.0]), ref) == float("inf")
    assert report.rel_l2(ref, torch.tensor([1.0, float("inf"), 1.0, 1.0])) == float("inf")
    assert report.rel_l2(torch.ones(3), ref) == float("inf")
    assert report.json_safe({"a": [float("inf"), float("nan"), 1.0]}) == {"a": ["inf", "nan", 1.0]}


# Compiling the SDXL UNet (even the tiny one) with dynamic shapes takes old Dynamo/Inductor minutes: torch 2.1 on a
# 2-core CPU machine, 107 s for the first graph and 74 s for the second (latents 68x51: diffusers' explicit-upsample-
# size path), while the 19 shapes themselves run in seconds; fewer shapes would not make it cheaper. The old
# sessions' per-test limit (noxfile.OLD_TORCH_ARGS, --timeout) is for hangs; this test gets more.
COMPILE_BOUND = pytest.mark.timeout(900) if importlib.util.find_spec("pytest_timeout") else (lambda f: f)
DYNAMIC = ["--compiler", "nexfort", "--compiler-config", '{"mode": "jit", "dynamic": true}', "--inductor-cache",
           "shared"]


def test_dynamic_rare_resolutions_and_batch_without_recompiling(bench, saved_pipe, tmp_path, capsys):
    """PixArt pipeline, dynamic=True: the transformer compiles once for 64x64, 544x400, 960x720 and batch 4, and
    every output matches eager. On the CPU, PyTorch picks a convolution kernel (mkldnn or not) by input size and
    Dynamo turns that choice into size guards (CUDA has no such guard): mkldnn is off here, and the VAE, whose
    first call has batch 1 (Dynamo specialises sizes 0/1: batch 4 compiles once more), is left eager."""
    config = '{"mode": "jit", "dynamic": true, "ignores": ["vae"]}'
    with torch.backends.mkldnn.flags(enabled=False):  # the CPU's size-dependent choice of convolution kernel
        rc, data = _run(bench, tmp_path, "--model", saved_pipe, "--run_rare_resolutions", "1", *DYNAMIC[:2],
                        "--compiler-config", config, *DYNAMIC[4:], *SIZE)
    assert rc == 0
    r = data["runs"]["nexfort"]
    assert [x["resolution"] for x in r["resolutions"]] == ["544x400", "960x720", "64x64 b4"]
    assert r["compiled_in_warmup"]["dynamo_graphs"] == 1
    assert [x["compiled"]["dynamo_graphs"] for x in r["resolutions"]] == [0, 0, 0]
    for x in r["resolutions"]:
        assert x["rel_l2_vs_eager"] < 1e-4, x
    assert r["sweep"]["compilations"] == 0 and r["sweep"]["shapes"] == 3
    assert "compilations after the first call" in capsys.readouterr().out


@pytest.mark.slow
@COMPILE_BOUND
def test_sdxl_example_multiple_and_rare_resolutions_denoiser(tmp_path):
    """The 16-resolution grid, 544x408, 960x720 and batch 1 -> 4 on the SDXL UNet (tiny), dynamic=True: no
    compilation after the first (latents 68x51 and 120x90 are not multiples of 4, where diffusers forwards
    explicit upsample sizes: compile_pipe makes the UNet forward them at every size), every output checked
    against eager. mkldnn is off: on the CPU, PyTorch picks a convolution
    kernel by input size and Dynamo turns that choice into size guards (no such guard on CUDA)."""
    example = load_script("examples/text_to_image_sdxl.py")
    out = tmp_path / "sdxl.json"
    with torch.backends.mkldnn.flags(enabled=False):
        rc = example.main(["--model", "tiny-sdxl", "--denoiser-only", "--run_multiple_resolutions", "1",
                           "--run_rare_resolutions", "1", *DYNAMIC, "--output-json", str(out), *SIZE[:4],
                           "--warmups", "1", "--iters", "1"])
    assert rc == 0
    data = json.loads(out.read_text())
    r = data["runs"]["nexfort"]
    assert len(r["resolutions"]) == 16 + 2 + 1
    assert r["compiled_in_warmup"]["dynamo_graphs"] == 1
    assert r["sweep"]["compilations"] == 0, [(x["resolution"], x["compiled"]) for x in r["resolutions"]]
    for x in r["resolutions"]:
        assert x["rel_l2_vs_eager"] < 1e-4, x


def test_also_nexfort_runs_a_variant_in_the_same_process(bench, tmp_path, capsys):
    """--also-nexfort: another nexfort configuration timed beside the references, on the model built again (same
    seed, so the same weights: its output matches eager like the main run's)."""
    rc, data = _run(bench, tmp_path, "--model", "tiny-pixart", "--compiler", "all", "--denoiser-only",
                    "--compiler-config", '{"mode": "max-optimize"}',
                    "--also-nexfort", 'plain={"mode": "", "options": {"attention.enabled": false}}', *SIZE)
    assert rc == 0
    runs = data["runs"]
    assert list(runs) == ["eager", "inductor", "nexfort", "nexfort:plain"]
    for name in ("nexfort", "nexfort:plain"):
        check_timings(runs[name])
        assert runs[name]["recompiles_in_timed_runs"]["dynamo_graphs"] == 0
        assert runs[name]["rel_l2_vs_eager"] < 1e-4, name
    assert runs["nexfort:plain"]["nexfort_mode"] != runs["nexfort"]["nexfort_mode"]
    variant = data["variants"]["nexfort:plain"]
    assert variant["compiler_config"] == {"mode": "", "options": {"attention.enabled": False}}
    s = variant["summary"]
    assert s["run"] == "nexfort:plain" and s["speedup_vs_main_nexfort"] == round(
        runs["nexfort"]["step_ms_median"] / runs["nexfort:plain"]["step_ms_median"], 4)
    assert "nexfort:plain (" in capsys.readouterr().out


def test_also_nexfort_is_checked_before_loading(bench, tmp_path):
    from nexfort.core.errors import NexfortConfigError

    with pytest.raises(SystemExit, match="LABEL=JSON"):
        bench.main(["--model", "/does/not/exist", "--compiler", "all", "--also-nexfort", '{"mode": ""}'])
    with pytest.raises(SystemExit, match="beside the references of --compiler all"):
        bench.main(["--model", "/does/not/exist", "--compiler", "nexfort", "--also-nexfort", 'a={"mode": ""}'])
    with pytest.raises(NexfortConfigError, match="max-speed"):
        bench.main(["--model", "/does/not/exist", "--compiler", "all", "--also-nexfort", 'a={"mode": "max-speed"}'])
