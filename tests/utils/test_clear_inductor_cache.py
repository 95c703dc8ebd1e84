"""python3 -m nexfort.utils.clear_inductor_cache removes the caches and says what it removed."""

from __future__ import annotations

import os
import subprocess
import sys


def test_clears_inductor_and_triton_caches(tmp_path):
    inductor, triton = tmp_path / "inductor", tmp_path / "triton"
    for d in (inductor, triton):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "blob").write_bytes(os.urandom(2048))
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(inductor), TRITON_CACHE_DIR=str(triton))
    cmd = [sys.executable, "-m", "nexfort.utils.clear_inductor_cache"]
    dry = subprocess.run(cmd + ["--dry-run"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"would remove {inductor}" in dry and inductor.exists()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert f"removed  {inductor}" in out and f"removed  {triton}" in out and "total" in out
    assert not inductor.exists() and not triton.exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert f"absent   {inductor}" in again
