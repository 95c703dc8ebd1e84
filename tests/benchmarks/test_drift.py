"""``--drift-seeds``: each run's latents after every step of whole pipeline runs, compared with eager's per step and
seed (nexfort_bench.drift), on the tiny PixArt-α (diffusers' old callback API) and the tiny SD3
(callback_on_step_end)."""

from __future__ import annotations

import math

import pytest
import torch

from .conftest import SIZE, run_bench

pytest.importorskip("diffusers")


def _drift_module(bench):
    from nexfort_bench import drift

    return drift


def test_drift_per_step_against_eager(bench, tmp_path, one_thread):
    rc, data = run_bench(bench, tmp_path, "--model", "tiny-pixart", "--compiler", "all", *SIZE, "--steps", "3",
                         "--drift-seeds", "2", "--drift-bound", "0.05", "--compiler-config", '{"mode": "max-optimize"}')
    assert rc == 0
    d = data["drift"]
    assert (d["reference"], d["seeds"], d["steps"], d["bound"]) == ("eager", 2, 3, 0.05)
    assert set(d["runs"]) == {"inductor", "nexfort"}
    for name, r in d["runs"].items():
        assert len(r["per_step_mean"]) == 3 and len(r["final_per_seed"]) == 2
        # float32 on the CPU: compiled code is eager's up to rounding, at every step and seed
        assert all(0 <= x < 1e-4 for x in r["per_step_mean"] + r["final_per_seed"]), (name, r)
        assert r["final_mean"] == pytest.approx(sum(r["final_per_seed"]) / 2) and r["within_bound"] is True


def test_collect_reads_the_newer_callback_api(bench, one_thread):
    """SD3's pipeline has callback_on_step_end (PixArt's, above, the older callback): one latent per step and seed,
    the seeds' runs different, the same seed's the same."""
    drift = _drift_module(bench)
    from nexfort_bench import inputs

    loaded = bench.models.load_pipeline("tiny-sd3", torch.float32, "cpu")
    kw = lambda seed: inputs.pipeline_kwargs(loaded, batch=1, height=64, width=64, steps=2, seed=seed,  # noqa: E731
                                             dtype=torch.float32, device="cpu")
    runs = drift.collect(loaded.pipe, kw, [0, 1, 0])
    assert [len(r) for r in runs] == [2, 2, 2] and runs[0][0].dtype == torch.float32
    assert torch.equal(runs[0][1], runs[2][1]) and not torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[0][1])  # a step changes the latents


def test_compare_flags_nan_a_missing_step_and_a_drift_over_the_bound(bench):
    drift = _drift_module(bench)
    torch.manual_seed(0)
    ref = [[torch.randn(4, 8) for _ in range(3)] for _ in range(2)]
    near = [[t + 1e-3 * torch.randn_like(t) for t in seed] for seed in ref]
    far = [[t + 0.5 * torch.randn_like(t) for t in seed] for seed in ref]
    nan = [[t.clone() for t in seed] for seed in ref]
    nan[1][2][0, 0] = float("nan")
    short = [seed[:2] for seed in ref]
    s = drift.compare({"eager": ref, "near": near, "far": far, "nan": nan, "short": short}, bound=0.05)
    assert s["runs"]["near"]["within_bound"] is True and s["runs"]["near"]["final_mean"] < 2e-3
    assert s["runs"]["far"]["within_bound"] is False and s["runs"]["far"]["final_mean"] > 0.3
    assert math.isinf(s["runs"]["nan"]["final_mean"]) and s["runs"]["nan"]["within_bound"] is False
    assert "error" in s["runs"]["short"]
    text = drift.table(s)
    assert "near: final" in text and "OVER the bound 0.05" in text and "short: " in text
    assert len([line for line in text.splitlines() if line[:4].strip().isdigit()]) == 3


def test_drift_arguments_are_checked_before_loading(bench):
    cli = bench.cli
    for argv, msg in ((["--compiler", "nexfort", "--drift-seeds", "2"], "with --compiler all"),
                      (["--compiler", "all", "--denoiser-only", "--drift-seeds", "2"], "not --denoiser-only"),
                      (["--compiler", "all", "--drift-seeds", "-1"], "a number of seeds >= 0"),
                      (["--compiler", "all", "--drift-bound", "0.05"], "with --drift-seeds"),
                      (["--compiler", "all", "--drift-seeds", "2", "--drift-bound", "nan"], "a positive number")):
        args = cli.parser("", "").parse_args([*argv, "--device", "cpu"])
        with pytest.raises(SystemExit, match=msg):
            cli.setup(args, "pixart")
