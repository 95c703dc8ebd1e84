"""Shared by the benchmark-script tests: loading a script of the repository as a module, the ``bench`` fixture
(``benchmarks/text_to_image.py`` with its helper package), the small default size."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_script

SIZE = ["--height", "64", "--width", "64", "--steps", "2", "--warmups", "1", "--iters", "2"]


@pytest.fixture(scope="module")
def bench():
    mod = load_script("benchmarks/text_to_image.py")
    from nexfort_bench import models

    mod.models = models
    return mod


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small machine shared with other test processes, OpenMP threads waiting for each
    other make every tiny forward cost hundreds of milliseconds (the sweeps run about 70 of them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_bench(bench, tmp_path, *argv):
    """``(exit code, the JSON it wrote)`` of the benchmark's ``main`` with ``argv``."""
    out = tmp_path / "result.json"
    rc = bench.main(["--output-json", str(out), *argv])
    return rc, json.loads(out.read_text())


def check_timings(r, steps=None):
    """The timings of one run agree with each other: the fastest step is not slower than the median, a
    denoiser's iterations per second are the inverse of its median step, and in a pipeline run of ``steps`` steps
    the steps timed in a call (from the first step's end to the last's: ``steps - 1``) fit in that call's
    end-to-end time and it/s is ``steps`` over that time."""
    assert 0 < r["step_ms_min"] <= r["step_ms_median"], r
    assert r["denoiser_it_per_s"] == pytest.approx(1e3 / r["step_ms_median"], rel=1e-2), r
    if steps is not None:
        assert r["step_ms_median"] * (steps - 1) <= r["e2e_s_median"] * 1e3 * 1.01 + 1.0, r
        assert r["it_per_s"] == pytest.approx(steps / r["e2e_s_median"], rel=1e-2), r
