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
