"""benchmarks/gpu/run.sh, the GPU runner, checked on the CPU through DRY=1 (it prints each command instead of
running it): the headline rows are the README table's, a measurement's extra arguments reach its script."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
import torch

from tests.helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the runner is a bash script; no bash here")


def _dry(tmp_path, *args, **env):
    out = subprocess.run(["bash", "benchmarks/gpu/run.sh", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DRY": "1", "RES": str(tmp_path), **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("python3 ")]


def _opt(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_default_rows_are_the_readme_tables(tmp_path):
    cmds = _dry(tmp_path, "rows")
    table = load_script("tools/results_table.py").ROWS
    assert len(cmds) == len(table) == 5
    expected = [("pixart-alpha", "1024", "1024"), ("pixart-alpha", "512", "768"), ("sd3-medium", "1024", "1024"),
                ("pixart-sigma", "1024", "1024"), ("flux-dev", "1024", "1024")]
    for cmd, (model, h, w) in zip(cmds, expected):
        assert cmd[:2] == ["python3", "benchmarks/text_to_image.py"]
        assert (_opt(cmd, "--model"), _opt(cmd, "--height"), _opt(cmd, "--width")) == (model, h, w)
        assert {"--denoiser-only", "--compiler"} <= set(cmd) and _opt(cmd, "--compiler") == "all"
        assert "--compiler-config" not in cmd  # nexfort in compile_pipe's recommended mode
        # FLUX.1-dev in its published dtype
        assert ("--dtype" in cmd and _opt(cmd, "--dtype") == "bf16") == (model == "flux-dev")
        assert _opt(cmd, "--output-json").startswith(str(tmp_path))


def test_mode_and_extra_arguments_reach_the_script(tmp_path):
    (cmd,) = _dry(tmp_path, "bench", "b", "sd3-medium", "512x768", "--", "--dtype", "bf16", MODE="jit", ITERS="7")
    assert _opt(cmd, "--compiler-config") == '{"mode": "jit"}' and _opt(cmd, "--dtype") == "bf16"
    assert (_opt(cmd, "--height"), _opt(cmd, "--width"), _opt(cmd, "--iters")) == ("512", "768", "7")
    (cmd,) = _dry(tmp_path, "warm-start", "w", "pixart-alpha", "1024x1024", REDIS="1")
    assert cmd[1] == "benchmarks/cache_warm_start.py" and _opt(cmd, "--redis-url").startswith("redis://")
    assert _opt(cmd, "--mode") == "max-optimize:low-precision:cache-all"
    (cmd,) = _dry(tmp_path, "grid", "g", "sdxl")
    assert cmd[1] == "examples/text_to_image_sdxl.py" and '"dynamic": true' in _opt(cmd, "--compiler-config")


def test_unknown_kind_and_row_are_errors(tmp_path):
    for args in (["nope"], ["rows", "px2048"]):
        out = subprocess.run(["bash", "benchmarks/gpu/run.sh", *args], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "DRY": "1", "RES": str(tmp_path)}, timeout=60)
        assert out.returncode == 2 and "unknown" in out.stdout


@pytest.mark.skipif(not hasattr(torch, "rms_norm") or not hasattr(torch.library, "custom_op"),
                    reason=f"torch {torch.__version__} has no torch.rms_norm or torch.library.custom_op (the op's "
                           f"torch 2.4+)")
def test_qk_norm_rope_script_smoke_run_on_the_cpu(monkeypatch, capsys):
    """benchmarks/gpu/qk_norm_rope.py end to end with --device cpu (tiny sizes): both forms, the op's error against
    eager's functions (0 on the CPU: the same functions) and Inductor's, so that a GPU call does not find a broken
    script."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks", "gpu"))
    script = load_script("benchmarks/gpu/qk_norm_rope.py")
    rows = script.main(["--device", "cpu", "--tokens", "8", "--text", "4", "--heads", "3", "--head-dim", "16"])
    assert [r["form"] for r in rows] == ["joint", "single"]
    for r in rows:
        assert r["op_rel_l2"] == 0.0 and r["inductor_rel_l2"] < 1e-2 and r["op_us"] > 0 and r["inductor_us"] > 0
    assert "speedup" in capsys.readouterr().out


def test_int8_gemm_script_smoke_run_on_the_cpu(monkeypatch, capsys):
    """benchmarks/gpu/int8_gemm.py end to end with --device cpu (tiny shapes): each GEMM timed, the op's error
    against the float GEMM within the int8 rounding and against the int_mm path within one output rounding."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks", "gpu"))
    script = load_script("benchmarks/gpu/int8_gemm.py")
    rows = script.main(["--device", "cpu", "--dtype", "bf16", "--shape", "40x64x48", "--shape", "17x256x32"])
    assert [r["shape"] for r in rows] == ["40x64x48", "17x256x32"]
    for r in rows:
        assert r["op_us"] > 0 and r["int_mm_us"] > 0 and r["fp16_us"] > 0 and "fp8_us" not in r
        assert 0 < r["op_rel_l2"] < 3e-2 and r["op_vs_int_mm_rel_l2"] < 1e-2
    assert "op/int_mm" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--device", "cpu", "--shape", "8192x1152"])


@pytest.mark.parametrize("call", ["call1.sh", "call2.sh", "call3.sh", "call4.sh"])
def test_plan_calls_configurations_resolve(tmp_path, call, bench):
    """benchmarks/gpu/plan's device calls with DRY=1: each benchmark command parses, and each nexfort configuration
    in it (--compiler-config, --also-nexfort) resolves as compile_pipe will resolve it (a typo in an option would
    otherwise cost a device call)."""
    pytest.importorskip("diffusers")
    from nexfort_bench import cli

    out = subprocess.run(["bash", f"benchmarks/gpu/plan/{call}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DRY": "1", "OUT": str(tmp_path)}, timeout=60)
    assert out.returncode == 0, out.stderr
    cmds = [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("python3 ")]
    benches = [c for c in cmds if c[1] == "benchmarks/text_to_image.py"]
    assert benches and all(os.path.exists(os.path.join(ROOT, c[1])) or c[1] == "-m" for c in cmds)
    for cmd in benches:
        cfg, kw = cli.parse_compiler_config(_opt(cmd, "--compiler-config"))
        cli._check_config(cfg, kw, "--compiler-config")
        extras = cli.parse_also_nexfort([cmd[i + 1] for i, a in enumerate(cmd) if a == "--also-nexfort"])
        assert extras
        for label, xcfg, xkw in extras:
            cli._check_config(xcfg, xkw, label)
