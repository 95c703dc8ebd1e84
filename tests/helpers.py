"""Helpers shared by the tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(rel: str):
    """The script at ``rel`` (relative to the repository root), imported as a module of its own."""
    path = os.path.join(ROOT, rel)
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_").replace(".py", ""), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error; NaN/inf anywhere gives inf so it never passes a tolerance."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def interpreter_missing() -> Optional[str]:
    """Why Triton's interpreter cannot run nexfort's kernels here (``None``: it can)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton): its interpreter runs the kernel on the CPU"
    from importlib.metadata import version

    import numpy

    tv, nv = version("triton"), numpy.__version__
    if tuple(int(p) for p in tv.split(".")[:2]) < (3, 6):
        return (f"Triton {tv}'s interpreter (older than 3.6) wants triton.language among the kernel's globals; the "
                f"kernel is defined where Triton is imported lazily")
    if tuple(int(p) for p in nv.split(".")[:2]) >= (2, 3):
        return f"Triton {tv}'s interpreter calls int() on one-element arrays, which numpy {nv} refuses (needs < 2.3)"
    return None


NO_INTERPRETER = interpreter_missing()


def run_interpreted(script: str, timeout: int = 600) -> Any:
    """Run ``script`` under Triton's interpreter (``TRITON_INTERPRET=1``, in a process of its own: the interpreter is
    chosen when triton.language is first imported) and return the JSON its last line printed."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
