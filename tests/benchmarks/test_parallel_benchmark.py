"""``benchmarks/text_to_image.py --parallel`` under ``torchrun`` with 2 gloo ranks on the tiny PixArt-α (eager:
cheap): rank 0 writes the JSON, image and chart, the image is the single-process run's, and a bad ``--parallel``
or launch fails before any model is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

from .conftest import SIZE, run_bench

pytest.importorskip("diffusers")
try:
    from diffusers import ContextParallelConfig  # noqa: F401
except ImportError:  # diffusers < 0.36
    pytest.skip("this diffusers has no context parallelism (ContextParallelConfig, diffusers 0.36+), which "
                "parallelize_pipe builds on", allow_module_level=True)

ARGS = ["--model", "tiny-pixart", "--compiler", "none", *SIZE[:6], "--warmups", "0", "--iters", "1"]


def _png(path):
    from PIL import Image

    return torch.tensor(list(Image.open(path).getdata()), dtype=torch.int16)


def test_torchrun_cfg2_rank0_writes_the_single_process_image(bench, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no torch.distributed with gloo")
    out = tmp_path / "par"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(ROOT, "benchmarks", "text_to_image.py"), *ARGS, "--parallel", "cfg=2",
           "--output-json", str(out / "r.json"), "--output-image", str(out / "r.png"),
           "--output-chart", str(out / "r_chart.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        env.pop(k, None)  # the benchmark sets them itself
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("step ms") == 1  # one table: rank 0's
    assert sorted(os.listdir(out)) == ["r.json", "r.png", "r_chart.png"]
    data = json.loads((out / "r.json").read_text())
    assert data["parallel"] == {"cfg": 2, "ulysses": 1, "ring": 1, "world_size": 2, "rank": 0, "backend": "gloo",
                                "nvls_env": {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                             "NVSHMEM_DISABLE_NVLS": "1"}}
    assert data["runs"]["eager"]["e2e_s_median"] > 0
    # the same image as one process (unchanged single-process path), to the PNG's 8 bits
    rc, single = run_bench(bench, tmp_path, *ARGS, "--output-image", str(tmp_path / "one.png"))
    assert rc == 0 and "parallel" not in single
    assert (_png(out / "r.png") - _png(tmp_path / "one.png")).abs().max() <= 1


def test_bad_parallel_fails_before_loading(bench, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="WORLD_SIZE is 1.*torchrun --nproc-per-node 4"):
        bench.main(["--model", "/does/not/exist", "--parallel", "cfg=2,ulysses=2"])
    with pytest.raises(SystemExit, match="--parallel: bad entry 'tp=2'"):
        bench.main(["--model", "/does/not/exist", "--parallel", "cfg=2,tp=2"])
